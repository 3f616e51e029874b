"""Nearest codeword by squared L2 distance.

    argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 x.c_k)      (|x|^2 is the same for every k)

The PyTorch reference materialises the N x K distance matrix. The Triton kernel streams the
codebook through one tile of rows at a time, keeping only a running (min, argmin) per row, so
the N x K matrix never reaches memory: at N = 1M, K = 4096 that is 16 GB not written.

Precision: bf16/fp16 inputs are multiplied exactly (their products fit in fp32) with fp32
accumulation. fp32 inputs are split as x = hi + lo with hi, lo in bf16 and multiplied as
hi.hi + hi.lo + lo.hi (three bf16 tensor-core products, ~16 mantissa bits), which keeps the
distances within ~1e-5 relative of fp64 -- plain tf32 (10 bits) flips the argmin too often.
"""

from __future__ import annotations

import torch

from var_st.kernels.dispatch import kernels_enabled, triton_available


def nearest_code_reference(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False):
    """x [N, D], codebook [K, D] -> idx [N] int64 (and squared distance [N] fp32).

    |x|^2 - 2 x.c + |c|^2 in fp32; the N x K matrix is materialised (the kernel avoids that).
    """
    x32, c32 = x.float(), codebook.float()
    dist = (x32 * x32).sum(1, keepdim=True) - 2 * x32 @ c32.t() + (c32 * c32).sum(1)[None]
    best, idx = dist.min(1)
    return (idx, best.clamp_min(0)) if return_dist else idx


# Below this many rows one matmul + argmin beats the kernel, whose few programs each sweep the
# whole codebook (H200, K = 4096, fp32: 0.03-0.05 vs 0.08 ms at N = 64..512; from N = 2048 the
# kernel wins, 0.08 vs 0.14 ms; benchmarks/results/kernels_h200.json). var-st's quantiser calls
# it once per scale with B x scale_size rows, so its coarse scales take the matmul path.
MIN_ROWS_FOR_KERNEL = 1024


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False):
    """x [N, D], codebook [K, D] -> idx [N] int64 (and squared distance [N] fp32 if return_dist)."""
    if torch.compiler.is_compiling():  # traced: inductor compiles the reference (no graph break at the dispatch)
        return nearest_code_reference(x, codebook, return_dist)
    if x.is_cuda and x.shape[0] >= MIN_ROWS_FOR_KERNEL and kernels_enabled() and triton_available():
        from var_st.kernels.triton_vq import nearest_code_triton

        return nearest_code_triton(x, codebook, return_dist)
    return nearest_code_reference(x, codebook, return_dist)
