"""Scale-block-causal attention: token i attends to token j when scale(j) <= scale(i).

Over VAR's token sequence (scales laid end to end, coarse to fine) that mask is a PREFIX per
query: token i of scale s sees exactly the keys j < end(s), the end of its own scale. The Triton
kernel takes that prefix length per query row (`kv_end`) and never loads keys beyond it; the
same kernel serves the KV-cached decode step (each new token of a scale sees the whole cache
and its own scale: kv_end = cache length).

Which path runs (measured on an H200, B=64, 8 heads, L=241, Dh=80, bf16; numbers and command
in benchmarks/results/, see its README):
* no gradient (inference, evaluation): the Triton kernel, 0.052 ms vs 0.125 ms for SDPA with a
  boolean mask and 0.109 ms for flex_attention (flash without any mask: 0.046 ms).
* gradients or dropout (training): SDPA with the boolean mask. Its forward+backward (0.41 ms)
  beat flex_attention's (0.70-1.04 ms over runs) and an exact split into a masked head plus an
  unmasked flash call for the last scale (0.75-1.17 ms: slicing and concatenation cost more
  than flash saves). No Triton backward: even flash without a mask (0.26 ms) would save < 5%
  of a stage-2 training step, which is launch-bound. Training keeps SDPA.
* decode step (KV cache): SDPA without a mask. The Triton kernel is faster per call on the
  short scales (0.010-0.012 vs 0.014-0.019 ms) but that is < 1% of a 241-token generation,
  which is bound by launch overhead and varied 27-50 ms between identical runs; one path.
The mask and the per-query key ends depend only on the scale sizes: built once per device.
Under torch.compile the path is chosen while tracing (SDPA with the mask as a graph constant), so
the dispatch never breaks the graph.

Shapes everywhere: q, k, v [B, H, L, Dh] -> [B, H, L, Dh].
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from var_st.kernels.dispatch import kernels_enabled, triton_available


def scale_ids(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L] int64: the scale index of every token."""
    return torch.repeat_interleave(torch.arange(len(scale_sizes)), torch.tensor(list(scale_sizes))).to(device)


def scale_causal_mask(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L, L] bool, True where attention is allowed (L = sum(scale_sizes)). Cached: do not modify."""
    return _scale_causal_mask(tuple(int(n) for n in scale_sizes), torch.device(device or "cpu"))


def scale_kv_end(scale_sizes: Sequence[int], device=None) -> torch.Tensor:
    """[L] int32: query i may attend to keys [0, kv_end[i]) -- the end of its own scale. Cached."""
    return _scale_kv_end(tuple(int(n) for n in scale_sizes), torch.device(device or "cpu"))


# Built on the CPU and copied once: repeat_interleave on the GPU waits for the device every call.
@functools.lru_cache(maxsize=64)
def _scale_causal_mask(scale_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    ids = scale_ids(scale_sizes)
    return (ids[None, :] <= ids[:, None]).to(device)


@functools.lru_cache(maxsize=64)
def _scale_kv_end(scale_sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    ends = torch.cumsum(torch.tensor(scale_sizes), 0)
    return ends[scale_ids(scale_sizes)].to(torch.int32).to(device)


def _traced_mask(scale_sizes: Sequence[int], device) -> torch.Tensor:
    """The same mask built from Python ints, for torch.compile: a constant of the graph (an lru_cache call
    would break the graph at every layer)."""
    ids = torch.tensor([s for s, n in enumerate(scale_sizes) for _ in range(int(n))], device=device)
    return ids[None, :] <= ids[:, None]


def scale_causal_attention_reference(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """SDPA with the boolean block-causal mask: the definition the fast paths are tested against."""
    if torch.compiler.is_compiling():
        mask = _traced_mask(scale_sizes, q.device)
    else:
        mask = scale_causal_mask(scale_sizes, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def scale_causal_attention(q, k, v, scale_sizes: Sequence[int], dropout_p: float = 0.0):
    """Block-causal attention over scales; the fastest measured exact path for the call.

    CUDA, no gradient, no dropout: the Triton prefix kernel. Otherwise (training, CPU, kernels
    off): SDPA with the boolean mask.
    """
    if torch.compiler.is_compiling():  # decided while tracing: the graph holds SDPA with a constant mask
        return scale_causal_attention_reference(q, k, v, scale_sizes, dropout_p)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not (q.is_cuda and kernels_enabled() and triton_available()) or needs_grad or dropout_p > 0:
        return scale_causal_attention_reference(q, k, v, scale_sizes, dropout_p)
    from var_st.kernels.triton_attention import prefix_attention_triton

    return prefix_attention_triton(q, k, v, scale_kv_end(scale_sizes, q.device))


def cached_scale_attention(q, k, v):
    """KV-cached decode step: q [B, H, Lnew, Dh] are the tokens of the scale being generated,
    k, v [B, H, Lcache, Dh] hold every token so far including these; all keys are visible, so
    this is attention without a mask (SDPA's flash kernel on CUDA: measured fastest end to end)."""
    return F.scaled_dot_product_attention(q, k, v)
