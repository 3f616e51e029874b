"""Triton prefix attention: row i of q attends to keys [0, kv_end[i]) (forward only).

Flash-attention style: one program per (query block, batch x head), online softmax in fp32,
key blocks past the block's largest kv_end are never loaded. Head dims that are not a power
of two (VAR-ST uses 80) are padded in registers by masked loads, not in memory.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _mma(a, b, UPCAST: tl.constexpr):
    # Triton's CPU interpreter multiplies bf16 tiles wrongly (3.9): there the fp32 product
    # of the same values stands in. On the GPU this is one tensor-core dot.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def prefix_attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, kv_end_ptr, sm_scale,
    H, Lq, Lk, Dh,
    sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < Lq
    dim_ok = dims < Dh
    q = tl.load(q_ptr + b * sqb + h * sqh + rows[:, None] * sql + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    # Rows past Lq get kv_end 1 so their (never stored) softmax stays finite.
    row_end = tl.load(kv_end_ptr + rows, mask=row_ok, other=1)
    block_end = tl.max(row_end, axis=0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # softmax in base 2
    k_base = k_ptr + b * skb + h * skh
    v_base = v_ptr + b * svb + h * svh
    for start in range(0, block_end, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < Lk
        kt = tl.load(k_base + cols[None, :] * skl + dims[:, None], mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
        s = _mma(q, kt, UPCAST) * qk_scale
        s = tl.where(cols[None, :] < row_end[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * svl + dims[None, :], mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + _mma(p.to(v.dtype), v, UPCAST)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(o_ptr + b * sob + h * soh + rows[:, None] * sol + dims[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dim_ok[None, :])


def prefix_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_end: torch.Tensor,
                            block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """q [B, H, Lq, Dh], k, v [B, H, Lk, Dh], kv_end [Lq] int32 -> [B, H, Lq, Dh]."""
    B, H, Lq, Dh = q.shape
    Lk = k.shape[2]
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    o = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(Dh))
    grid = (triton.cdiv(Lq, block_m), B * H)
    prefix_attention_fwd_kernel[grid](
        q, k, v, o, kv_end.to(torch.int32).contiguous(), Dh ** -0.5,
        H, Lq, Lk, Dh,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        UPCAST=os.environ.get("TRITON_INTERPRET", "0") == "1", num_warps=4, num_stages=2,
    )
    return o
