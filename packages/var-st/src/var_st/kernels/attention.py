"""Scale-block-causal attention: token i attends to token j when scale(j) <= scale(i).

Over VAR's token sequence (scales laid end to end, coarse to fine) that mask is a PREFIX per
query: token i of scale s sees exactly the keys j < end(s), the end of its own scale. The Triton
kernel takes that prefix length per query row (`kv_end`) and never loads keys beyond it; the
same kernel serves the KV-cached decode step (each new token of a scale sees the whole cache
and its own scale: kv_end = cache length).

Which path runs (measured on an H100, B=64, 8 heads, L=241, Dh=80, bf16; numbers and command
in benchmarks/results/kernels_h100.json):
* no gradient (inference, evaluation): the Triton kernel, ~2.3x faster than SDPA with a
  boolean mask and ~2x faster than flex_attention.
* gradients or dropout (training): SDPA with the boolean mask. Its forward+backward beat
  flex_attention's (about 2x) and an exact split into a masked head plus an unmasked flash call
  for the last scale (about 3x: the slicing and concatenation cost more than flash saves). A
  Triton backward was not written, so training keeps SDPA.
* decode step: the Triton kernel for short scales (<= 64 new tokens), SDPA's flash kernel for
  the long last scale, where it measured faster.

Shapes everywhere: q, k, v [B, H, L, Dh] -> [B, H, L, Dh].
"""

from __future__ import annotations

from collections.abc import Sequence

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


def scale_causal_attention(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """Block-causal attention over scales; the fastest measured exact path for the call.

    CUDA, no gradient, no dropout: the Triton prefix kernel. Otherwise (training, CPU, kernels
    off): SDPA with the boolean mask.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not (q.is_cuda and kernels_enabled() and triton_available()) or needs_grad or dropout_p > 0:
        return scale_causal_attention_reference(q, k, v, scale_sizes, dropout_p)
    from var_st.kernels.triton_attention import prefix_attention_triton

    return prefix_attention_triton(q, k, v, scale_kv_end(scale_sizes, q.device))


def cached_scale_attention(q, k, v):
    """KV-cached decode step: q [B, H, Lnew, Dh] are the tokens of the scale being generated,
    k, v [B, H, Lcache, Dh] hold every token so far including these; all keys are visible."""
    short_scale = q.shape[2] <= 64  # measured: Triton wins for 1..32 new tokens, flash at 200
    if short_scale and q.is_cuda and kernels_enabled() and triton_available() and not torch.is_grad_enabled():
        from var_st.kernels.triton_attention import prefix_attention_triton

        kv_end = torch.full((q.shape[2],), k.shape[2], dtype=torch.int32, device=q.device)
        return prefix_attention_triton(q, k, v, kv_end)
    return F.scaled_dot_product_attention(q, k, v)
