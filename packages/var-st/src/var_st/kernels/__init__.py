"""Kernels var-st uses at every step, each with a pure-PyTorch reference path.

Dispatch: on CUDA tensors the Triton kernel runs where it measured faster; on the CPU, or when forced off with `use_kernels(False)` / VAR_ST_KERNELS=0 at
start-up, the PyTorch reference runs. All paths compute the same function; the references are
what the tests compare against.

    nearest_code(x [N, D], codebook [K, D], return_dist=False) -> idx [N] (, dist [N])
    scale_causal_attention(q, k, v [B, H, L, Dh], scale_sizes) -> [B, H, L, Dh]
    cached_scale_attention(q_new [B, H, Ln, Dh], k, v [B, H, Lc, Dh]) -> [B, H, Ln, Dh]
"""

from var_st.kernels.attention import (
    cached_scale_attention,
    scale_causal_attention,
    scale_causal_attention_reference,
    scale_causal_mask,
    scale_kv_end,
)
from var_st.kernels.dispatch import kernels_enabled, triton_available, use_kernels
from var_st.kernels.vq import nearest_code, nearest_code_reference

__all__ = [
    "cached_scale_attention",
    "kernels_enabled",
    "nearest_code",
    "nearest_code_reference",
    "scale_causal_attention",
    "scale_causal_attention_reference",
    "scale_causal_mask",
    "scale_kv_end",
    "triton_available",
    "use_kernels",
]
