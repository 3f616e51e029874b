"""Triton prefix attention: row i of q attends to keys [0, kv_end[i]) (forward only).

Flash-attention style: one program per (query block, batch x head), online softmax in fp32,
key blocks past the block's largest kv_end are never loaded. Head dims that are not a power
of two (VAR-ST uses 80) are split into a main and a tail block, read by masked loads.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _mma(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    # Triton's CPU interpreter multiplies bf16 tiles wrongly (3.9): there the fp32 product
    # of the same values stands in. On the GPU this is one tensor-core dot; fp32 inputs are
    # multiplied in full fp32 (IEEE), as torch does by default, not in tf32.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32))
    elif IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def prefix_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, kv_end_ptr, sm_scale,
    H, Lq, Lk, Dh,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    # The head dim is covered by a power-of-two main part and an optional tail (80 = 64 + 16):
    # padding 80 to 128 would spend 60% more tensor-core work on zeros.
    HAS_TAIL: tl.constexpr = BLOCK_D1 > 0
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < Lq
    d0 = tl.arange(0, BLOCK_D0)
    d0_ok = d0 < Dh
    q_base = q_ptr + b * sqb + h * sqh
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    o_base = o_ptr + b * sob + h * soh
    q0 = tl.load(q_base + rows[:, None] * sql + d0[None, :], mask=row_ok[:, None] & d0_ok[None, :], other=0.0)
    acc0 = tl.zeros((BLOCK_M, BLOCK_D0), tl.float32)
    if HAS_TAIL:
        d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
        d1_ok = d1 < Dh
        q1 = tl.load(q_base + rows[:, None] * sql + d1[None, :], mask=row_ok[:, None] & d1_ok[None, :], other=0.0)
        acc1 = tl.zeros((BLOCK_M, BLOCK_D1), tl.float32)
    # Rows past Lq get kv_end 1 so their (never stored) softmax stays finite.
    row_end = tl.load(kv_end_ptr + rows, mask=row_ok, other=1)
    block_end = tl.max(row_end, axis=0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # softmax in base 2
    for start in range(0, block_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < Lk
        k0 = tl.load(k_base + cols[None, :] * skl + d0[:, None], mask=col_ok[None, :] & d0_ok[:, None], other=0.0)
        s = _mma(q0, k0, UPCAST, IEEE)
        if HAS_TAIL:
            k1 = tl.load(k_base + cols[None, :] * skl + d1[:, None], mask=col_ok[None, :] & d1_ok[:, None], other=0.0)
            s += _mma(q1, k1, UPCAST, IEEE)
        s = tl.where(cols[None, :] < row_end[:, None], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v0 = tl.load(v_base + cols[:, None] * svl + d0[None, :], mask=col_ok[:, None] & d0_ok[None, :], other=0.0)
        p = p.to(v0.dtype)
        acc0 = acc0 * alpha[:, None] + _mma(p, v0, UPCAST, IEEE)
        if HAS_TAIL:
            v1 = tl.load(v_base + cols[:, None] * svl + d1[None, :], mask=col_ok[:, None] & d1_ok[None, :], other=0.0)
            acc1 = acc1 * alpha[:, None] + _mma(p, v1, UPCAST, IEEE)
        m_i = m_new
    tl.store(o_base + rows[:, None] * sol + d0[None, :], (acc0 / l_i[:, None]).to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & d0_ok[None, :])
    if HAS_TAIL:
        tl.store(o_base + rows[:, None] * sol + d1[None, :], (acc1 / l_i[:, None]).to(o_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d1_ok[None, :])


def _head_dim_blocks(dh: int) -> tuple[int, int]:
    """Main power-of-two block <= dh (>= 16) and the tail block (0 when dh is covered)."""
    main = max(16, 1 << (dh.bit_length() - 1))
    rest = dh - main
    return main, (max(16, triton.next_power_of_2(rest)) if rest > 0 else 0)


def prefix_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_end: torch.Tensor,
                            block_m: int = 64, block_n: int = 64, num_warps: int = 4,
                            num_stages: int = 3) -> torch.Tensor:
    """q [B, H, Lq, Dh], k, v [B, H, Lk, Dh], kv_end [Lq] int32 -> [B, H, Lq, Dh]."""
    B, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    o = torch.empty_like(q)
    d0, d1 = _head_dim_blocks(Dh)
    grid = (triton.cdiv(Lq, block_m), B * H)
    prefix_attention_fwd_kernel[grid](
        q, k, v, o, kv_end.to(torch.int32).contiguous(), Dh ** -0.5,
        H, Lq, Lk, Dh,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D0=d0, BLOCK_D1=d1,
        UPCAST=os.environ.get("TRITON_INTERPRET", "0") == "1", IEEE=q.dtype == torch.float32,
        num_warps=num_warps, num_stages=num_stages,
    )
    return o
