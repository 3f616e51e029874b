"""Scale-block-causal attention: token i attends to token j when scale(j) <= scale(i)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def scale_causal_mask(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L, L] bool, True where attention is allowed (L = sum(scale_sizes))."""
    ids = torch.repeat_interleave(torch.arange(len(scale_sizes), device=device),
                                  torch.tensor(list(scale_sizes), device=device))
    return ids[None, :] <= ids[:, None]


def scale_causal_attention_reference(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """q, k, v [B, H, L, Dh] -> [B, H, L, Dh], SDPA with the boolean block-causal mask."""
    mask = scale_causal_mask(scale_sizes, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def scale_causal_attention(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    # The Triton path is added by the kernels work (issue 8); until then the reference runs everywhere.
    return scale_causal_attention_reference(q, k, v, scale_sizes, dropout_p)
