"""How much VAR-ST's fine scale adds on the demo: the saved stage-2 models of var_st_demo_probes.py, decoded
with (a) every scale's expected codes (the prediction), (b) the fine scale's code probabilities replaced by their
mean over the slide's spots (a condition-blind fine scale, the coarse scales the model's own), (c) no fine scale.

    PYTHONPATH=packages/var-st/src:shared/src OMP_NUM_THREADS=1 python benchmarks/var_st_demo_fine_scale.py \
        --data_dir build/probe --seed 0 --variant 'demo={}' [--variant NAME=JSON ...]

Reads build/probe/models/<stage-1 key>_<spec key>.ckpt as run_variant writes them (run the probes first);
prints one JSON line per variant: mean per-gene Pearson on the validation and test slides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import var_st_demo_probes as probes  # noqa: E402
from var_st.model import KVCache, TwoStageVARST  # noqa: E402


@torch.no_grad()
def decodings(model: TwoStageVARST, h, c) -> dict:
    q, var, K = model.vqvae.quantizer, model.var, len(model.scale_sizes)
    cond = var.condition(h, c)
    caches = [KVCache() for _ in var.blocks]
    f_hat, inputs = None, None
    for k in range(K):
        probs = var.step(cond, inputs, k, caches).float().softmax(-1)
        if k == K - 1:
            blind = probs.mean(0, keepdim=True).expand_as(probs)
            return {"expected": f_hat + q.contribution(probs @ q.codebook, k),
                    "fine_slide_mean": f_hat + q.contribution(blind @ q.codebook, k), "no_fine": f_hat}
        part = q.contribution(probs @ q.codebook, k)
        f_hat = part if f_hat is None else f_hat + part
        inputs = q.next_scale_input(f_hat, k + 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data_dir", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON as given to the probes")
    args = ap.parse_args()
    for name, spec in (v.split("=", 1) for v in args.variant or ["demo={}"]):
        m = probes.merged(json.loads(spec))
        s1 = hashlib.sha1(json.dumps([m["vq"], m["s1"], m["data"], args.seed, "cpu"], sort_keys=True).encode()).hexdigest()[:16]
        path = args.data_dir / "models" / f"{s1}_{hashlib.sha1(json.dumps(m, sort_keys=True).encode()).hexdigest()[:10]}.ckpt"
        if not path.exists():
            print(json.dumps({"variant": name, "missing": str(path)}), flush=True)
            continue
        data, _ = probes.load_data(m["data"], args.data_dir)
        model = TwoStageVARST.load_complete_model(path)
        out = {"variant": name, "seed": args.seed}
        for split in ("val", "test"):
            idx = data.split[split]
            dec = decodings(model, torch.as_tensor(data.histology[idx]), torch.as_tensor(data.coords[idx]))
            out[split] = {k: round(probes.pearson(model.vqvae.decode_f_hat(v).numpy(), data.expression[idx]), 4)
                          for k, v in dec.items()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
