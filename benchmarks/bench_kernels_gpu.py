"""GPU benchmark of var-st's kernels against their torch baselines, timed in the same run.

    PYTHONPATH=packages/var-st/src:shared/src python benchmarks/bench_kernels_gpu.py --out benchmarks/results/kernels_<device>.json

Every time is the median of triton.testing.do_bench (CUDA events, warm-up excluded, inputs
random, never zeros). Accuracy of each fast path is checked in the same run against fp64 (VQ)
or fp32 (attention) references, and recorded next to its time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench
from var_st.kernels import (
    cached_scale_attention,
    scale_causal_attention,
    scale_causal_attention_reference,
    scale_causal_mask,
    scale_kv_end,
)
from var_st.kernels.triton_attention import prefix_attention_triton
from var_st.kernels.triton_vq import nearest_code_triton, prepare_codebook

SCALES = (1, 8, 32, 200)


def med(fn, rep=200):
    return do_bench(fn, warmup=25, rep=rep, return_mode="median")


def argmin_agreement(idx, x, c, rows=16384, rel_gap=1e-4):
    """Fraction of rows whose index differs from fp64 outside near-ties (must be 0)."""
    sel = torch.arange(min(rows, x.shape[0]), device=x.device)
    d = torch.cdist(x[sel].double(), c.double()) ** 2
    two = d.topk(2, dim=1, largest=False)
    near = (two.values[:, 1] - two.values[:, 0]) <= rel_gap * two.values[:, 0]
    wrong = (idx[sel] != two.indices[:, 0]) & ~near
    return {"rows_checked": len(sel), "wrong_outside_near_ties": int(wrong.sum()),
            "near_ties": int(near.sum()), "differs_on_near_ties": int(((idx[sel] != two.indices[:, 0]) & near).sum())}


def split_attention(q, k, v, scales):
    """The exact alternative measured for training: masked head (coarse scales) + unmasked flash
    for the last scale, which sees every key."""
    head = sum(scales[:-1])
    out_head = scale_causal_attention_reference(q[:, :, :head], k[:, :, :head], v[:, :, :head], scales[:-1])
    out_last = F.scaled_dot_product_attention(q[:, :, head:], k, v)
    return torch.cat([out_head, out_last], dim=2)


def split_sdpa_attention(q, k, v, scales, mask):
    """The same split in bf16 throughout: the coarse scales' queries through SDPA with their (small) mask,
    the last scale's queries through unmasked flash (they see every key)."""
    head = sum(scales[:-1])
    out_head = F.scaled_dot_product_attention(q[:, :, :head], k[:, :, :head], v[:, :, :head],
                                              attn_mask=mask[:head, :head])
    out_last = F.scaled_dot_product_attention(q[:, :, head:], k, v)
    return torch.cat([out_head, out_last], dim=2)


def kernel_profile(fn, steps: int = 5) -> list[dict]:
    """Every CUDA kernel of `steps` calls of fn with its mean time per call (torch.profiler), largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = [{"kernel": e.key[:120], "calls_per_step": e.count / steps,
             "ms_per_step": getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) / 1000 / steps}
            for e in prof.key_averages() if getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) > 0]
    return sorted(rows, key=lambda r: -r["ms_per_step"])[:12]


def bench_vq(ns, results):
    K, D = 4096, 128
    for dtype in (torch.float32, torch.bfloat16):
        c = torch.randn(K, D, device="cuda").to(dtype)
        for n in ns:
            x = torch.randn(n, D, device="cuda").to(dtype)
            row = {"N": n, "K": K, "D": D, "dtype": str(dtype).replace("torch.", "")}
            cn = (c.float() ** 2).sum(1)

            def cdist_argmin(x=x, c=c):
                return torch.cdist(x, c).argmin(1)

            def matmul_argmin(x=x, c=c, cn=cn):
                return (cn[None] - 2 * (x @ c.t()).float()).argmin(1)

            try:
                row["cdist_argmin_ms"] = med(cdist_argmin)
            except Exception as e:  # bf16 cdist is not implemented on every build
                row["cdist_argmin_ms"] = None
                row["cdist_error"] = str(e).splitlines()[0][:120]
                x32, c32 = x.float(), c.float()
                row["cdist_fp32_upcast_ms"] = med(lambda x32=x32, c32=c32: torch.cdist(x32, c32).argmin(1))
            row["matmul_argmin_ms"] = med(matmul_argmin)
            row["triton_default_ms"] = med(lambda x=x, c=c: nearest_code_triton(x, c))
            if dtype == torch.float32:  # default hilo: three bf16 products per pair; refine: pick-then-refine
                from var_st.kernels import triton_vq

                row["triton_refine_ms"] = med(lambda x=x, c=c: nearest_code_triton(x, c, method="refine"))
                c_hi, _, cn_ = prepare_codebook(c, torch.float32)
                b_, i_ = torch.empty(n, device="cuda"), torch.empty(n, dtype=torch.int64, device="cuda")
                row["refine_unsure_fraction"] = float(triton_vq.refine_pass(x, c, c_hi, cn_, b_, i_).float().mean())
                # VQ-like inputs: each row near one code (a trained encoder's output next to its codeword)
                xn = c[torch.randint(0, K, (n,), device="cuda")] + 0.1 * torch.randn(n, D, device="cuda")
                row["near_codes_triton_default_ms"] = med(lambda xn=xn, c=c: nearest_code_triton(xn, c))
                row["near_codes_triton_refine_ms"] = med(lambda xn=xn, c=c: nearest_code_triton(xn, c, method="refine"))
                row["near_codes_cdist_argmin_ms"] = med(lambda xn=xn, c=c: torch.cdist(xn, c).argmin(1))
                row["near_codes_unsure_fraction"] = float(
                    triton_vq.refine_pass(xn, c, c_hi, cn_, b_, i_).float().mean())
                row["near_codes_accuracy"] = argmin_agreement(nearest_code_triton(xn, c), xn, c)
                row["refine_accuracy"] = argmin_agreement(nearest_code_triton(x, c, method="refine"), x, c)
            # part of the default time spent preparing the codebook (hi/lo split, norms): a profile line
            row["triton_codebook_prep_ms"] = med(lambda c=c, dt=x.dtype: prepare_codebook(c, dt))
            best = (row["triton_default_ms"], "default")
            for bn, bk, warps in [(64, 32, 4), (64, 64, 4), (128, 32, 4), (128, 64, 4), (128, 64, 8), (64, 128, 4),
                                  (128, 128, 8), (256, 32, 8), (256, 64, 8)]:
                name = f"triton_{bn}x{bk}_w{warps}"
                try:
                    t = med(lambda x=x, c=c, bn=bn, bk=bk, w=warps:
                            nearest_code_triton(x, c, block_n=bn, block_k=bk, num_warps=w))
                except triton.runtime.errors.OutOfResources as e:
                    row[f"{name}_error"] = str(e)[:100]
                    continue
                row[f"{name}_ms"] = t
                if t < best[0]:
                    best = (t, name)
            row["triton_best_ms"], row["triton_best_config"] = best
            base = row["cdist_argmin_ms"] or row.get("cdist_fp32_upcast_ms")
            if base:
                row["speedup_default_vs_cdist"] = base / row["triton_default_ms"]
            row["speedup_default_vs_matmul"] = row["matmul_argmin_ms"] / row["triton_default_ms"]
            idx = nearest_code_triton(x, c)
            row["accuracy"] = argmin_agreement(idx, x, c)
            results["vq"].append(row)
            print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()


def bench_attention(results):
    B, H, L, Dh = 64, 8, sum(SCALES), 80
    q, k, v = (torch.randn(B, H, L, Dh, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = scale_causal_mask(SCALES, "cuda")
    kv_end = scale_kv_end(SCALES, "cuda")
    ref = scale_causal_attention_reference(q.float(), k.float(), v.float(), SCALES)

    def rel(o):
        return float((o.float() - ref).norm() / ref.norm())

    row = {"B": B, "H": H, "L": L, "Dh": Dh, "dtype": "bfloat16", "scales": list(SCALES)}
    fwd = {
        "sdpa_bool_mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        "sdpa_no_mask_flash": lambda: F.scaled_dot_product_attention(q, k, v),
        "split_masked_head_plus_flash": lambda: split_attention(q, k, v, SCALES),
        "split_sdpa_head_plus_flash": lambda: split_sdpa_attention(q, k, v, SCALES, mask),
        "triton_prefix_default": lambda: prefix_attention_triton(q, k, v, kv_end),
        "dispatch_no_grad": lambda: scale_causal_attention(q, k, v, SCALES),
    }
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        ids = torch.repeat_interleave(torch.arange(len(SCALES), device="cuda"), torch.tensor(SCALES, device="cuda"))
        bm = create_block_mask(lambda b, h, qi, ki: ids[ki] <= ids[qi], None, None, L, L, device="cuda")
        flex = torch.compile(flex_attention)
        fwd["flex_attention"] = lambda: flex(q, k, v, block_mask=bm)
    except Exception as e:
        row["flex_error"] = str(e).splitlines()[0][:160]
    for bm_, bn_, w_, st_ in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3),
                              (128, 32, 8, 3), (128, 64, 4, 3), (64, 128, 4, 2), (64, 64, 8, 3)]:
        fwd[f"triton_prefix_{bm_}x{bn_}_w{w_}_s{st_}"] = (
            lambda a=bm_, b=bn_, w=w_, st=st_: prefix_attention_triton(q, k, v, kv_end, a, b, w, st))
    for name, fn in fwd.items():
        try:
            with torch.no_grad():
                row[f"fwd_{name}_ms"] = med(fn)
                if name != "sdpa_no_mask_flash":
                    row[f"fwd_{name}_rel_err"] = rel(fn())
        except Exception as e:
            row[f"fwd_{name}_error"] = str(e).splitlines()[0][:160]
    tri = {n: t for n, t in row.items() if n.startswith("fwd_triton_prefix") and n.endswith("_ms")}
    if tri:
        row["fwd_triton_best"] = min(tri, key=tri.get)

    # Forward + backward (training): gradients of a random projection of the output.
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    w = torch.randn_like(q)
    train = {
        "sdpa_bool_mask": lambda: F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask),
        "split_masked_head_plus_flash": lambda: split_attention(qg, kg, vg, SCALES),
        "split_sdpa_head_plus_flash": lambda: split_sdpa_attention(qg, kg, vg, SCALES, mask),
        "sdpa_no_mask_flash": lambda: F.scaled_dot_product_attention(qg, kg, vg),
    }
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for backend in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        def with_backend(b=getattr(SDPBackend, backend)):
            with sdpa_kernel(b):
                return F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask)
        train[f"sdpa_bool_mask_{backend.lower()}"] = with_backend
    if "flex_attention" in fwd:
        train["flex_attention"] = lambda: flex(qg, kg, vg, block_mask=bm)
    for name, fn in train.items():
        def step(fn=fn):
            out = fn()
            torch.autograd.grad((out * w).sum(), (qg, kg, vg))
        try:
            row[f"fwd_bwd_{name}_ms"] = med(step)
            if name in ("sdpa_bool_mask", "sdpa_no_mask_flash"):
                row[f"fwd_bwd_{name}_kernels"] = kernel_profile(step)
        except Exception as e:
            row[f"fwd_bwd_{name}_error"] = str(e).splitlines()[0][:160]

    # KV-cached decode step: the tokens of one scale against the cache so far.
    ends = torch.cumsum(torch.tensor(SCALES), 0).tolist()
    for s, end in zip(SCALES, ends):
        qn = torch.randn(B, H, s, Dh, device="cuda", dtype=torch.bfloat16)
        kc, vc = k[:, :, :end].contiguous(), v[:, :, :end].contiguous()
        kv = torch.full((s,), end, dtype=torch.int32, device="cuda")
        with torch.no_grad():
            row[f"decode_scale{s}_sdpa_ms"] = med(lambda qn=qn, kc=kc, vc=vc: F.scaled_dot_product_attention(qn, kc, vc))
            row[f"decode_scale{s}_triton_ms"] = med(lambda qn=qn, kc=kc, vc=vc, kv=kv: prefix_attention_triton(qn, kc, vc, kv))
            row[f"decode_scale{s}_dispatch_ms"] = med(lambda qn=qn, kc=kc, vc=vc: cached_scale_attention(qn, kc, vc))
            r = F.scaled_dot_product_attention(qn.float(), kc.float(), vc.float())
            o = prefix_attention_triton(qn, kc, vc, kv)
            row[f"decode_scale{s}_triton_rel_err"] = float((o.float() - r).norm() / r.norm())
    results["attention"].append(row)
    print(json.dumps(row, indent=1), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    # 64 .. 12800: the per-scale calls of var-st's quantiser at batch 64 (scales 1, 8, 32, 200);
    # 15424 = 64 x 241 (all scales at once) and up to 1M: the sizes
    ap.add_argument("--vq-n", type=int, nargs="+", default=[64, 512, 2048, 12800, 15424, 65536, 262144, 1048576])
    ap.add_argument("--skip-vq", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "command": " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "timing": "triton.testing.do_bench median, warmup 25 ms, rep 200 ms",
        "vq": [], "attention": [],
    }
    if not args.skip_vq:
        bench_vq(args.vq_n, results)
    if not args.skip_attention:
        bench_attention(results)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
