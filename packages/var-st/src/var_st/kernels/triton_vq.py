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
    x_ptr, chi_ptr, clo_ptr, cnorm_ptr, best_ptr, idx_ptr, unsure_ptr, c_ptr,
    N, K, D, stride_x, stride_c, stride_c32,
    HILO: tl.constexpr, UPCAST: tl.constexpr, ONLY_UNSURE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Program i: rows [i*BLOCK_N, ...) against the whole codebook ->
    best[rows] = min_k |c_k|^2 - 2 x.c_k and idx[rows] = its k.
    ONLY_UNSURE: only rows with unsure[row] = 1 (the refine kernel's), with best = the exact fp32
    |x - c|^2 of the chosen code (c_ptr: the fp32 codebook), as the refine kernel writes it; a program
    with none of them sweeps nothing."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    k_end = K
    if ONLY_UNSURE:
        row_ok = row_ok & (tl.load(unsure_ptr + rows, mask=row_ok, other=0) != 0)
        k_end = tl.where(tl.max(row_ok.to(tl.int32), axis=0) > 0, K, 0)
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
    for k0 in range(0, k_end, BLOCK_K):
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
    if ONLY_UNSURE:
        c = tl.load(c_ptr + row_idx[:, None] * stride_c32 + dims[None, :], mask=row_ok[:, None] & (dims[None, :] < D),
                    other=0.0).to(tl.float32)
        row_best = tl.sum((x - c) * (x - c), axis=1)
    tl.store(best_ptr + rows, row_best, mask=row_ok)
    tl.store(idx_ptr + rows, row_idx.to(tl.int64), mask=row_ok)


@triton.jit
def vq_refine_kernel(
    x_ptr, c_ptr, chi_ptr, cnorm_ptr, best_ptr, idx_ptr, unsure_ptr,
    N, K, D, stride_x, stride_c, stride_chi,
    UPCAST: tl.constexpr, TOP: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """fp32 inputs, pick-then-refine (FAISS's refine idea): ONE bf16 product per pair ranks the codes,
    each column slot keeping its best two; the TOP best of those per row are then re-scored exactly,
    |x - c|^2 in fp32 from the fp32 codebook, and the smallest wins (lowest index on ties).
    best[rows] = that exact squared distance (|x|^2 included), idx[rows] = its code.

    Certified, not hoped: a bf16 product is within E = 2^-7 |x| max|c| of the exact x.c, so no code left
    out can beat the winner if winner <= |x|^2 + L - 2E, L the smallest ranked value of what was left out
    (for a slot whose two were both taken, its unseen codes rank at least as high as its second).
    Rows not certified get unsure[row] = 1 and are swept again with three products per pair."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    dim_ok = dims[None, :] < D
    x = tl.load(x_ptr + rows[:, None] * stride_x + dims[None, :], mask=row_ok[:, None] & dim_ok, other=0.0)
    x_hi = x.to(tl.bfloat16)
    b1 = tl.full((BLOCK_N, BLOCK_K), float("inf"), tl.float32)
    b2 = tl.full((BLOCK_N, BLOCK_K), float("inf"), tl.float32)
    i1 = tl.zeros((BLOCK_N, BLOCK_K), tl.int32)
    i2 = tl.zeros((BLOCK_N, BLOCK_K), tl.int32)
    cmax = tl.zeros((BLOCK_K,), tl.float32)  # running max of |c|^2, for the error bound
    for k0 in range(0, K, BLOCK_K):
        codes = k0 + tl.arange(0, BLOCK_K)
        code_ok = codes < K
        c_hi = tl.load(chi_ptr + codes[None, :] * stride_chi + dims[:, None],
                       mask=code_ok[None, :] & (dims[:, None] < D), other=0.0)  # [D, BK]
        cn = tl.load(cnorm_ptr + codes, mask=code_ok, other=float("inf"))
        cmax = tl.maximum(cmax, tl.where(code_ok, cn, 0.0))
        dist = cn[None, :] - 2.0 * mma(x_hi, c_hi, UPCAST)
        first = dist < b1
        second = dist < b2
        b2 = tl.where(first, b1, tl.where(second, dist, b2))
        i2 = tl.where(first, i1, tl.where(second, codes[None, :], i2))
        b1 = tl.where(first, dist, b1)
        i1 = tl.where(first, codes[None, :], i1)
    best = tl.full((BLOCK_N,), float("inf"), tl.float32)
    best_idx = tl.full((BLOCK_N,), K, tl.int32)
    drained = tl.full((BLOCK_N,), float("inf"), tl.float32)  # lowest second taken from an emptied slot
    for _ in tl.static_range(TOP):
        m = tl.minimum(tl.min(b1, axis=1), tl.min(b2, axis=1))
        cand = tl.minimum(tl.min(tl.where(b1 == m[:, None], i1, K), axis=1),
                          tl.min(tl.where(b2 == m[:, None], i2, K), axis=1))
        emptied = tl.max(tl.where((i2 == cand[:, None]) & (b1 == float("inf")), 1, 0), axis=1)
        drained = tl.where(emptied > 0, tl.minimum(drained, m), drained)
        b1 = tl.where(i1 == cand[:, None], float("inf"), b1)
        b2 = tl.where(i2 == cand[:, None], float("inf"), b2)
        ok = (cand < K) & (m < float("inf"))
        c = tl.load(c_ptr + cand[:, None] * stride_c + dims[None, :], mask=(row_ok & ok)[:, None] & dim_ok,
                    other=0.0).to(tl.float32)
        diff = x - c
        d = tl.where(ok, tl.sum(diff * diff, axis=1), float("inf"))
        better = (d < best) | ((d == best) & (cand < best_idx))
        best = tl.where(better, d, best)
        best_idx = tl.where(better, cand, best_idx)
    left = tl.minimum(tl.minimum(tl.min(b1, axis=1), tl.min(b2, axis=1)), drained)
    xsq = tl.sum(x * x, axis=1)
    err = 0.0079 * tl.sqrt(xsq * tl.max(cmax, axis=0)) + 1e-6 * (xsq + tl.max(cmax, axis=0))
    unsure = best > xsq + left - 2.0 * err
    tl.store(best_ptr + rows, best, mask=row_ok)
    tl.store(idx_ptr + rows, best_idx.to(tl.int64), mask=row_ok)
    tl.store(unsure_ptr + rows, unsure.to(tl.int8), mask=row_ok)


def _default_config(n: int, hilo: bool) -> tuple[int, int, int]:
    """(block_n, block_k, num_warps), the best of the sweep in benchmarks/results/kernels_h200.json
    (H200, K = 4096, D = 128). Splitting the codebook across programs to fill the GPU at small N
    was measured too (H100) and lost to its combine step."""
    if hilo:  # fp32: three products per tile; few rows -> small tiles, so more programs share the sweep
        return (64, 128, 4) if n <= 4096 else (128, 64, 8)
    return (64, 64, 4) if n <= 65536 else (128, 32, 4)


def _refine_config(n: int) -> tuple[int, int, int]:
    """(block_n, block_k, num_warps) of the refine kernel: two running candidates per slot double the
    elementwise state, so its tiles are those of the bf16 path (placeholder until the H200 sweep)."""
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


def refine_pass(x, codebook, c_hi, cnorm, best, idx, block_n=None, block_k=None, num_warps=None) -> torch.Tensor:
    """The refine kernel alone (x fp32 contiguous; c_hi, cnorm from prepare_codebook): fills best and idx,
    returns unsure [N] int8 (1 = the row still needs the three-product sweep)."""
    n, d = x.shape
    k = codebook.shape[0]
    unsure = torch.empty(n, dtype=torch.int8, device=x.device)
    bn, bk, warps = _refine_config(n)
    bn, bk, warps = block_n or bn, block_k or bk, num_warps or warps
    vq_refine_kernel[(triton.cdiv(n, bn),)](
        x, codebook, c_hi, cnorm, best, idx, unsure, n, k, d, x.stride(0), codebook.stride(0), c_hi.stride(0),
        UPCAST=_interpreting(), TOP=min(REFINE_TOP, k), BLOCK_N=bn, BLOCK_K=bk,
        BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=warps)
    return unsure


# fp32 pick-then-refine: candidates re-scored exactly per row (the true nearest code is lost only if TOP
# codes rank above it in bf16, i.e. lie within bf16's ~1e-3 relative error of it)
REFINE_TOP = 4


def nearest_code_triton(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False,
                        block_n: int | None = None, block_k: int | None = None,
                        num_warps: int | None = None, method: str = "hilo"):
    """Fused nearest codeword; same contract as nearest_code_reference.

    fp32 inputs: method "hilo" (default: three bf16 products for every pair) or "refine" (one bf16
    product ranks, the best REFINE_TOP per row are re-scored in exact fp32, uncertified rows get the
    hilo sweep). refine was measured SLOWER on an H200 and is kept only for benchmarks/bench_kernels_gpu.py:
    at 1M rows 9.8 ms even when every row certifies (two running candidates per slot double the
    kernel's live state) against 7.1 for hilo, and 16.4 ms on random inputs, where ~3% of rows do not
    certify and so nearly every tile is swept again (benchmarks/results/kernels_h200.json)."""
    if x.dim() != 2 or codebook.dim() != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(f"expected x [N, D] and codebook [K, D], got {tuple(x.shape)} and {tuple(codebook.shape)}")
    n, d = x.shape
    k = codebook.shape[0]
    block_d = max(16, triton.next_power_of_2(d))
    if block_d > 256:  # a tile of x per program must fit in registers
        return nearest_code_reference(x, codebook, return_dist)
    if x.dtype == torch.float64:
        x = x.float()
    if method not in ("refine", "hilo"):
        raise ValueError(f"unknown method {method!r}; choose refine or hilo")
    x = x.contiguous()
    codebook = codebook.contiguous()
    best = torch.empty(n, dtype=torch.float32, device=x.device)
    idx = torch.empty(n, dtype=torch.int64, device=x.device)
    hilo = x.dtype == torch.float32  # fp32: bf16 hi/lo products (see vq.py)
    c_hi, c_lo, cnorm = prepare_codebook(codebook, x.dtype)
    if hilo and method == "refine":
        unsure = refine_pass(x, codebook, c_hi, cnorm, best, idx, block_n, block_k, num_warps)
        # the rows the bf16 ranking could not certify, swept again with three products (no host sync:
        # programs whose rows are all certain sweep nothing)
        bn, bk, warps = _default_config(n, True)
        vq_argmin_kernel[(triton.cdiv(n, bn),)](
            x, c_hi, c_lo, cnorm, best, idx, unsure, codebook, n, k, d, x.stride(0), c_hi.stride(0), codebook.stride(0),
            HILO=True, UPCAST=_interpreting(), ONLY_UNSURE=True, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d,
            num_warps=warps)
        return (idx, best.clamp_min(0)) if return_dist else idx
    bn, bk, warps = _default_config(n, hilo)
    bn, bk, warps = block_n or bn, block_k or bk, num_warps or warps
    vq_argmin_kernel[(triton.cdiv(n, bn),)](
        x, c_hi, c_lo, cnorm, best, idx, idx, codebook, n, k, d, x.stride(0), c_hi.stride(0), codebook.stride(0),
        HILO=hilo, UPCAST=_interpreting(), ONLY_UNSURE=False, BLOCK_N=bn, BLOCK_K=bk, BLOCK_D=block_d, num_warps=warps,
    )
    if not return_dist:
        return idx
    xf = x.float()
    return idx, (best + (xf * xf).sum(1)).clamp_min(0)
