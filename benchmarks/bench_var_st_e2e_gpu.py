"""var-st end to end on the GPU, with and without the Triton kernels, in the same run.

    PYTHONPATH=packages/var-st/src:shared/src python benchmarks/bench_var_st_e2e_gpu.py --out benchmarks/results/var_st_e2e_<device>.json

Model: the user's guide sizes (G = 200 genes -> 241 tokens, codebook 4096 x 128; VAR 640 wide,
8 heads, 12 layers, ffn 2560), batch 64 spots, bf16 autocast, AdamW. Timed (median of
triton.testing.do_bench): a stage-1 training step, a stage-2 training step, a stage-2
evaluation forward (teacher forcing, no gradients: where the attention kernel runs), stage-1
tokens of 4096 spots (what stage 2 trains on: the VQ lookup at large N), and a full
241-token generation with the KV cache, both with top-k 50 / top-p 0.9 sampling and with the
CLI's default expected-code decoding. "kernels off" is var_st.kernels.use_kernels(False): the
PyTorch references everywhere. On and off alternate over several rounds and each reports the
median; measurements whose code path the switch does not change are kept as controls, so
their on/off ratio shows how much of a difference is noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from var_st.kernels import use_kernels
from var_st.model import TwoStageVARST

ROUNDS = 5


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
               "tokens": sum(model.scale_sizes), "timing": "do_bench median ms per sample; median of the rounds"}

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

    x_big = torch.randn(4096, G, device=dev).abs()

    def encode_4096_spots():  # the frozen stage-1 tokens stage 2 trains on (VQ at 4096 x 1..200 rows per scale)
        with torch.no_grad():
            return model.vqvae.encode_tokens(x_big)

    def stage2_eval_forward():  # validation / evaluate: teacher forcing without gradients
        model.var.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(hist, coords, tokens)

    def generate():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.inference(hist, coords, top_k=50, top_p=0.9, seed=0)

    def generate_expected():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.inference(hist, coords, expected=True)

    # Which code paths the switch changes (the rest are controls: their on/off ratio is the noise).
    benches = {  # name: (fn, training stage, path the kernels change)
        "stage1_train_step_ms": (stage1_step, 1, "VQ lookup at 64 x 1/8/32/200 rows (kernel from 1024 rows)"),
        "stage2_train_step_ms": (stage2_step, 2, "none: training attention is SDPA with the mask either way"),
        "encode_tokens_4096_spots_ms": (encode_4096_spots, 2, "VQ lookup at 4096 x 1/8/32/200 rows"),
        "stage2_eval_forward_ms": (stage2_eval_forward, 2, "attention: Triton prefix kernel vs SDPA with the mask"),
        "generate_241_tokens_ms": (generate, 2, "none: decode attention is SDPA either way"),
        "generate_241_tokens_expected_ms": (generate_expected, 2, "none: decode attention is SDPA either way"),
    }
    results["paths_changed"] = {name: b[2] for name, b in benches.items()}
    results["rounds"] = ROUNDS
    samples = {name: {"on": [], "off": []} for name in benches}
    for r in range(ROUNDS):  # interleaved on/off rounds: a drift of the machine hits both alike
        for name, (fn, stage, _) in benches.items():
            model.set_training_stage(stage)
            if stage == 1:
                model.vqvae.train()
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                use_kernels(mode == "on")
                samples[name][mode].append(do_bench(fn, warmup=50, rep=300, return_mode="median"))
        print(f"round {r + 1}/{ROUNDS}", json.dumps({n: v["on"][-1] / v["off"][-1] for n, v in samples.items()}),
              flush=True)
    results["samples_ms"] = samples
    results["median_ms"] = {n: {m: statistics.median(v[m]) for m in ("on", "off")} for n, v in samples.items()}
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
    results["speedup_on_vs_off"] = {n: m["off"] / m["on"] for n, m in results["median_ms"].items()}
    print(json.dumps(results["speedup_on_vs_off"]), "agreement", results["generation_token_agreement_on_vs_off"])
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
