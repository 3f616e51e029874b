"""var-st end to end on the GPU, with and without the Triton kernels, in the same run.

    PYTHONPATH=packages/var-st/src:shared/src python benchmarks/bench_var_st_e2e_gpu.py --out benchmarks/results/var_st_e2e_<device>.json

Model: the user's guide sizes (G = 200 genes -> 241 tokens, codebook 4096 x 128; VAR 640 wide,
8 heads, 12 layers, ffn 2560), batch 64 spots, bf16 autocast, AdamW. Timed (median of
triton.testing.do_bench): a stage-1 training step, a stage-2 training step, and a full
241-token generation with the KV cache, both with top-k 50 / top-p 0.9 sampling and with the
CLI's default expected-code decoding. "kernels off" is
var_st.kernels.use_kernels(False): the PyTorch references everywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from var_st.kernels import use_kernels
from var_st.model import TwoStageVARST


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    B, G = args.batch, 200
    model = TwoStageVARST(num_genes=G).to(dev)
    x = torch.randn(B, G, device=dev).abs()
    hist, coords = torch.randn(B, 1024, device=dev), torch.rand(B, 2, device=dev)
    model.vqvae.fit_gene_stats(x)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "batch": B, "num_genes": G,
               "tokens": sum(model.scale_sizes), "timing": "do_bench median ms", "rows": {}}

    model.set_training_stage(1)
    model.vqvae.train()
    opt1 = torch.optim.AdamW([p for p in model.vqvae.parameters() if p.requires_grad], lr=1e-4)

    def stage1_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.vqvae(x)["loss"]
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    model.set_training_stage(2)
    with torch.no_grad():
        tokens = model.vqvae.encode_tokens(x)
    opt2 = torch.optim.AdamW([p for p in model.var.parameters() if p.requires_grad], lr=1e-4)
    V = model.var_config.vocab_size

    def stage2_step():
        model.var.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(hist, coords, tokens)
        loss = F.cross_entropy(logits.reshape(-1, V).float(), tokens.reshape(-1))
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    def generate():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.inference(hist, coords, top_k=50, top_p=0.9, seed=0)

    def generate_expected():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.inference(hist, coords, expected=True)

    for label, on in (("kernels_on", True), ("kernels_off", False), ("kernels_on_again", True)):
        use_kernels(on)
        model.set_training_stage(1)
        model.vqvae.train()
        row = {"stage1_train_step_ms": do_bench(stage1_step, warmup=50, rep=500, return_mode="median")}
        model.set_training_stage(2)
        row["stage2_train_step_ms"] = do_bench(stage2_step, warmup=50, rep=500, return_mode="median")
        row["generate_241_tokens_ms"] = do_bench(generate, warmup=50, rep=500, return_mode="median")
        row["generate_241_tokens_expected_ms"] = do_bench(generate_expected, warmup=50, rep=500, return_mode="median")
        results["rows"][label] = row
        print(label, json.dumps(row), flush=True)
    # Same seed, both paths: the generated tokens agree except where bf16 rounding flips a sample.
    use_kernels(True)
    a = generate()["tokens"]
    use_kernels(False)
    b = generate()["tokens"]
    results["generation_token_agreement_on_vs_off"] = float((a == b).float().mean())
    use_kernels(True)
    ea = generate_expected()["predicted_gene_expression"].float()
    use_kernels(False)
    eb = generate_expected()["predicted_gene_expression"].float()
    results["expected_decoding_max_abs_diff_on_vs_off"] = float((ea - eb).abs().max())
    on, off = results["rows"]["kernels_on"], results["rows"]["kernels_off"]
    results["speedup_on_vs_off"] = {k: off[k] / on[k] for k in on}
    print(json.dumps(results["speedup_on_vs_off"]), "agreement", results["generation_token_agreement_on_vs_off"])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
