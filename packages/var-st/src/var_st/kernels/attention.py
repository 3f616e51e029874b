"""Scale-block-causal attention: token i attends to token j when scale(j) <= scale(i).

Over VAR's token sequence (scales s_1 < s_2 < ... laid end to end) that mask is a PREFIX per
query: token i of scale s sees exactly the keys j < end(s), the end of its own scale. Two
consequences drive the fast paths here:

* training: the last (and by far largest) scale sees every key, so its queries need no mask at
  all and go to the flash kernel; only the short head of coarser scales needs a masked call.
  `scale_causal_attention_split` is therefore exact, keeps flash's fast backward, and drops
  the L x L mask (SDPA with a boolean mask falls back to a slower kernel for the whole sequence).
* inference: a Triton kernel takes the prefix length per query row (`kv_end`) and never touches
  keys beyond it; the same kernel serves the KV-cached decode step (every new token of a scale
  sees the whole cache and its own scale, i.e. kv_end = cache length).

Shapes everywhere: q, k, v [B, H, L, Dh] -> [B, H, L, Dh].
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from var_st.kernels.dispatch import kernels_enabled, triton_available


def scale_ids(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L] int64: the scale index of every token."""
    return torch.repeat_interleave(torch.arange(len(scale_sizes), device=device),
                                   torch.tensor(list(scale_sizes), device=device))


def scale_causal_mask(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L, L] bool, True where attention is allowed (L = sum(scale_sizes))."""
    ids = scale_ids(scale_sizes, device)
    return ids[None, :] <= ids[:, None]


def scale_kv_end(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L] int32: query i may attend to keys [0, kv_end[i]) -- the end of its own scale."""
    ends = torch.cumsum(torch.tensor(list(scale_sizes), device=device), 0)
    return ends[scale_ids(scale_sizes, device)].to(torch.int32)


def scale_causal_attention_reference(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """SDPA with the boolean block-causal mask: the definition the fast paths are tested against."""
    mask = scale_causal_mask(scale_sizes, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def scale_causal_attention_split(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """Exact block-causal attention as two calls: masked head (coarse scales), unmasked last scale."""
    head = sum(scale_sizes[:-1])
    if head == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    out_head = scale_causal_attention_reference(q[:, :, :head], k[:, :, :head], v[:, :, :head],
                                                scale_sizes[:-1], dropout_p)
    out_last = F.scaled_dot_product_attention(q[:, :, head:], k, v, dropout_p=dropout_p)
    return torch.cat([out_head, out_last], dim=2)


def scale_causal_attention(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """Block-causal attention over scales; picks the fastest exact path for the device.

    CUDA + gradients or dropout: the split path (flash forward and backward). CUDA, no gradient,
    no dropout: the Triton prefix kernel. CPU or kernels off: the masked SDPA reference.
    """
    if not q.is_cuda or not kernels_enabled():
        return scale_causal_attention_reference(q, k, v, scale_sizes, dropout_p)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad or dropout_p > 0 or not triton_available():
        return scale_causal_attention_split(q, k, v, scale_sizes, dropout_p)
    from var_st.kernels.triton_attention import prefix_attention_triton

    return prefix_attention_triton(q, k, v, scale_kv_end(scale_sizes, q.device))


def cached_scale_attention(q, k, v):
    """KV-cached decode step: q [B, H, Lnew, Dh] are the tokens of the scale being generated,
    k, v [B, H, Lcache, Dh] hold every token so far including these; all keys are visible."""
    if q.is_cuda and kernels_enabled() and triton_available() and not torch.is_grad_enabled():
        from var_st.kernels.triton_attention import prefix_attention_triton

        kv_end = torch.full((q.shape[2],), k.shape[2], dtype=torch.int32, device=q.device)
        return prefix_attention_triton(q, k, v, kv_end)
    return F.scaled_dot_product_attention(q, k, v)
