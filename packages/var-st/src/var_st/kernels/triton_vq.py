"""Triton kernel for the nearest codeword (see var_st.kernels.vq for the maths and precision)."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from var_st.kernels.vq import nearest_code_reference


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def mma(a, b, UPCAST: tl.constexpr):
    # Triton's CPU interpreter multiplies bf16 tiles wrongly (3.9); there the exact fp32
    # product of the same bf16 values stands in. On the GPU this is one tensor-core dot.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        out = tl.dot(a, b)
    return out

@triton.jit
def vq_argmin_kernel(
    x_ptr, chi_ptr, clo_ptr, cnorm_ptr, best_ptr, idx_ptr,
    N, K, D, stride_x, stride_c,
    HILO: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program i: rows [i*BLOCK_N, ...) against the whole codebook ->
    best[rows] = min_k |c_k|^2 - 2 x.c_k and idx[rows] = its k."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    # One tile of x stays in registers for the whole codebook sweep (D <= BLOCK_D).
    x = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :],
                mask=row_ok[:, None] & (dims[None, :] < D), other=0.0)
    if HILO:
        x_hi = x.to(tl.bfloat16)
        x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
    else:
        x_hi = x
    # Running (min, argmin) per row AND column slot: elementwise work per tile, no cross-thread
    # reduction until the end (two reductions per tile made the epilogue, not the dot, the cost).
    best = tl.full((BLOCK_N, BLOCK_K), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_N, BLOCK_K), tl.int32)
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_ok = codes < K
        cmask = code_ok[None, :] & (dims[:, None] < D)
        c_hi = tl.load(chi_ptr + codes[None, :] * stride_c + dims[:, None], mask=cmask, other=0.0)  # [D, BK]
        dot = mma(x_hi, c_hi, UPCAST)
        if HILO:
            c_lo = tl.load(clo_ptr + codes[None, :] * stride_c + dims[:, None], mask=cmask, other=0.0)
            dot += mma(x_hi, c_lo, UPCAST)
            dot += mma(x_lo, c_hi, UPCAST)
        cn = tl.load(cnorm_ptr + codes, mask=code_ok, other=float("inf"))
        dist = cn[None, :] - 2.0 * dot  # [BN, BK]
        # Strict '<': each slot keeps its lowest code index on ties.
        better = dist < best
        best = tl.where(better, dist, best)
        best_idx = tl.where(better, codes[None, :], best_idx)
    row_best = tl.min(best, axis=1)
    # lowest code index among the slots holding the row minimum: torch.argmin's tie rule
    row_idx = tl.min(tl.where(best == row_best[:, None], best_idx, K), axis=1)
    tl.store(best_ptr + rows, row_best, mask=row_ok)
    tl.store(idx_ptr + rows, row_idx.to(tl.int64), mask=row_ok)


def _default_config(n: int, hilo: bool) -> tuple[int, int, int]:
    """(block_n, block_k, num_warps), the best of the sweep in benchmarks/results/kernels_h200.json
    (H200, K = 4096, D = 128). Splitting the codebook across programs to fill the GPU at small N
    was measured too (H100) and lost to its combine step."""
    if hilo:  # fp32: three products per tile; few rows -> small tiles, so more programs share the sweep
        return (64, 128, 4) if n <= 4096 else (128, 64, 8)
    return (64, 64, 4) if n <= 65536 else (128, 32, 4)


@triton.jit
def codebook_prep_kernel(c_ptr, hi_ptr, lo_ptr, norm_ptr, K, D, stride_c,
                         HILO: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program i: codes [i*BLOCK_K, ...) -> |c|^2 (fp32) and the operand(s) the argmin kernel reads."""
    codes = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    dims = tl.arange(0, BLOCK_D)
    ok = (codes[:, None] < K) & (dims[None, :] < D)
    c = tl.load(c_ptr + codes[:, None] * stride_c + dims[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(norm_ptr + codes, tl.sum(c * c, axis=1), mask=codes < K)
    out = codes[:, None] * D + dims[None, :]
    # Compiled, these downcasts round to nearest even like torch (the CPU interpreter truncates).
    hi = c.to(hi_ptr.dtype.element_ty)
    tl.store(hi_ptr + out, hi, mask=ok)
    if HILO:
        tl.store(lo_ptr + out, (c - hi.to(tl.float32)).to(tl.bfloat16), mask=ok)


def prepare_codebook(codebook: torch.Tensor, x_dtype: torch.dtype):
    """(c_hi, c_lo, |c|^2) as the argmin kernel reads them, in one launch: for fp32 inputs the
    bf16 hi/lo split of the codebook, otherwise the codebook in the inputs' dtype (c_lo is c_hi).
    Measured: five small torch ops took 0.02-0.04 ms on an H200, up to a quarter of a call."""
    k, d = codebook.shape
    hilo = x_dtype == torch.float32
    c_hi = torch.empty(k, d, dtype=torch.bfloat16 if hilo else x_dtype, device=codebook.device)
    c_lo = torch.empty_like(c_hi) if hilo else c_hi
    cnorm = torch.empty(k, dtype=torch.float32, device=codebook.device)
    block_k = 32
    codebook_prep_kernel[(triton.cdiv(k, block_k),)](
        codebook, c_hi, c_lo, cnorm, k, d, codebook.stride(0),
        HILO=hilo, BLOCK_K=block_k, BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4)
    return c_hi, c_lo, cnorm


def nearest_code_triton(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False,
                        block_n: int | None = None, block_k: int | None = None,
                        num_warps: int | None = None):
    """Fused nearest codeword; same contract as nearest_code_reference."""
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected x [N, D] and codebook [K, D], got {tuple(x.shape)} and {tuple(codebook.shape)}")
    n, d = x.shape
    k = codebook.shape[0]
    block_d = max(16, triton.next_power_of_2(d))
    if block_d > 256:  # a tile of x per program must fit in registers
        return nearest_code_reference(x, codebook, return_dist)
    if x.dtype == torch.float64:
        x = x.float()
    hilo = x.dtype == torch.float32  # fp32: bf16 hi/lo products (see vq.py)
    x = x.contiguous()
    c_hi, c_lo, cnorm = prepare_codebook(codebook.contiguous(), x.dtype)
    bn, bk, warps = _default_config(n, hilo)
    bn, bk, warps = block_n or bn, block_k or bk, num_warps or warps
    best = torch.empty(n, dtype=torch.float32, device=x.device)
    idx = torch.empty(n, dtype=torch.int64, device=x.device)
    vq_argmin_kernel[(triton.cdiv(n, bn),)](
        x, c_hi, c_lo, cnorm, best, idx, n, k, d, x.stride(0), c_hi.stride(0),
        HILO=hilo, UPCAST=_interpreting(), BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d, num_warps=warps,
    )
    if not return_dist:
        return idx
    xf = x.float()
    return idx, (best + (xf * xf).sum(1)).clamp_min(0)
