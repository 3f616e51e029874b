"""Kernels var-st uses at every step, each with a pure-PyTorch reference path.

Dispatch: on CUDA tensors the Triton kernel runs when available; on the CPU (or when forced
off with `use_kernels(False)` / VAR_ST_KERNELS=0 at start-up) the PyTorch path runs. Both
compute the same function; the PyTorch path is the reference the tests compare against.

    nearest_code(x [N, D], codebook [K, D], return_dist=False) -> idx [N] (, dist [N])
    scale_causal_attention(q, k, v [B, H, L, Dh], scale_sizes) -> [B, H, L, Dh]
"""

from var_st.kernels.dispatch import use_kernels, kernels_enabled
from var_st.kernels.vq import nearest_code, nearest_code_reference
from var_st.kernels.attention import scale_causal_attention, scale_causal_attention_reference, scale_causal_mask

__all__ = [
    "use_kernels",
    "kernels_enabled",
    "nearest_code",
    "nearest_code_reference",
    "scale_causal_attention",
    "scale_causal_attention_reference",
    "scale_causal_mask",
]
