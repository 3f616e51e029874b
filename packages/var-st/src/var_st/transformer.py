"""Stage 2 of var-st: the next-scale VAR transformer conditioned on histology and coordinates.

    KVCache, ScaleCausalSelfAttention, AdaLNBlock     the transformer block (attention math = kernels only)
    GeneVARTransformer                                condition -> next-scale token logits, KV-cached steps
    sample_tokens                                     temperature / top-k / top-p sampling of one scale
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ftcore.errors import UserError
from var_st.config import VARConfig
from var_st.kernels import cached_scale_attention, scale_causal_attention


class KVCache:
    """Keys and values of the scales generated so far, per layer ([B, H, L_so_far, Dh])."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None


class ScaleCausalSelfAttention(nn.Module):
    """Multi-head self-attention whose only attention math is the two calls below:

    training / full sequence: kernels.scale_causal_attention (a token sees its scale and coarser)
    cached decoding of one new scale: kernels.cached_scale_attention, no mask (its queries see every
    cached token of coarser scales and all tokens of their own scale: exactly the block-causal rule).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, scale_sizes: Sequence[int] | None = None, cache: KVCache | None = None):
        B, L, E = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, E // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = scale_causal_attention(q, k, v, scale_sizes, self.dropout if self.training else 0.0)
        else:
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
            cache.k, cache.v = k, v
            y = cached_scale_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, L, E))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are scaled/shifted/gated by the condition (AdaLN-Zero)."""

    def __init__(self, cfg: VARConfig):
        super().__init__()
        E = cfg.embed_dim
        self.norm1 = nn.LayerNorm(E, elementwise_affine=False)
        self.attn = ScaleCausalSelfAttention(E, cfg.num_heads, cfg.attention_dropout)
        self.norm2 = nn.LayerNorm(E, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(E, cfg.feedforward_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.feedforward_dim, E))
        self.drop = nn.Dropout(cfg.dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(cfg.condition_embed_dim, 6 * E))
        if cfg.adaln_init_std > 0:  # the condition modulates every block from the first step
            nn.init.normal_(self.ada[1].weight, std=cfg.adaln_init_std)
        else:
            nn.init.zeros_(self.ada[1].weight)  # AdaLN-Zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, cond, scale_sizes=None, cache=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[:, None].chunk(6, -1)
        x = x + gate1 * self.drop(self.attn(self.norm1(x) * (1 + scale1) + shift1, scale_sizes, cache))
        return x + gate2 * self.drop(self.ffn(self.norm2(x) * (1 + scale2) + shift2))


class GeneVARTransformer(nn.Module):
    """Condition (histology [B, F] + coords [B, 2]) and next-scale inputs -> logits [B, L, V].

    Position 0 is a start token made from the condition; the input of scale k > 0 is the stage-1
    f_hat of scales < k pooled to n_k positions (teacher forcing in training, the model's own
    samples at inference), plus a scale (level) embedding and a position embedding.
    """

    def __init__(self, cfg: VARConfig, token_dim: int, scale_sizes: Sequence[int]):
        super().__init__()
        self.cfg, self.scale_sizes = cfg, tuple(scale_sizes)
        L, E, C = sum(scale_sizes), cfg.embed_dim, cfg.condition_embed_dim
        if L > cfg.max_sequence_length:
            raise UserError(f"{L} tokens per spot exceed max_sequence_length {cfg.max_sequence_length}; raise it in var_config")
        self.histology_drop = nn.Dropout(cfg.histology_dropout)  # no weights: checkpoints keep their keys
        self.histology_embed = nn.Sequential(nn.LayerNorm(cfg.histology_dim), nn.Linear(cfg.histology_dim, C))
        self.coord_embed = nn.Sequential(nn.Linear(cfg.coord_dim, C), nn.GELU(), nn.Linear(C, C))
        self.condition_mlp = nn.Sequential(*[m for _ in range(cfg.condition_layers) for m in (nn.GELU(), nn.Linear(C, C))])
        if cfg.histology_standardise:  # set from the training spots by fit_histology_scaler; saved with the weights
            self.register_buffer("histology_mean", torch.zeros(cfg.histology_dim))
            self.register_buffer("histology_scale", torch.ones(cfg.histology_dim))
        # the condition added to every token's embedding (None: only the start token and the norms see it)
        self.condition_tokens = nn.Linear(C, E) if cfg.condition_to_tokens else None
        self.start_token = nn.Linear(C, E)
        self.word_embed = nn.Linear(token_dim, E)
        self.level_embed = nn.Embedding(len(scale_sizes), E)
        self.pos_embed = nn.Parameter(torch.randn(cfg.max_sequence_length, E) * 0.02)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg) for _ in range(cfg.num_layers))
        self.head_norm = nn.LayerNorm(E, elementwise_affine=False)
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * E))
        self.head = nn.Linear(E, cfg.vocab_size)
        levels = torch.repeat_interleave(torch.arange(len(scale_sizes)), torch.tensor(scale_sizes))
        self.register_buffer("levels", levels, persistent=False)

    @torch.no_grad()
    def fit_histology_pca(self, histology: torch.Tensor) -> None:
        """Histology projection = the top-C principal directions of the (layer-normed) training features,
        one scale so the projected features have unit variance on average; frozen with the norm.
        Like ridge's penalty it keeps the directions the features vary most in and drops the rest,
        where per-spot noise would let the transformer tell training spots apart."""
        norm, proj = self.histology_embed
        norm.reset_parameters()
        if self.cfg.histology_standardise:  # the directions of the features the condition sees
            histology = (histology.to(self.histology_mean) - self.histology_mean) / self.histology_scale
        z = norm(histology.float().to(proj.weight.device)).double()
        mean = z.mean(0)
        _, s, vh = torch.linalg.svd(z - mean, full_matrices=False)
        C = proj.out_features
        k = min(C, len(s))
        scale = (s[:k].pow(2).mean() / max(len(z) - 1, 1)).sqrt().clamp_min(1e-12)
        w = torch.zeros(C, z.shape[1], dtype=torch.float64, device=z.device)
        w[:k] = vh[:k] / scale
        proj.weight.copy_(w.to(proj.weight.dtype))
        proj.bias.copy_((-(w @ mean)).to(proj.bias.dtype))
        self.histology_embed.requires_grad_(False)

    @torch.no_grad()
    def fit_histology_scaler(self, histology: torch.Tensor) -> None:
        """histology_standardise: each feature's mean and sd over the training spots (sd 0 -> 1)."""
        h = histology.double()
        sd = h.std(0)
        self.histology_mean.copy_(h.mean(0).to(self.histology_mean))
        self.histology_scale.copy_(torch.where(sd > 0, sd, torch.ones_like(sd)).to(self.histology_scale))

    def condition(self, histology: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """[B, F] + [B, 2] -> condition embedding [B, C]."""
        if self.cfg.histology_standardise:
            histology = (histology - self.histology_mean) / self.histology_scale
        xy = self.coord_embed(coords)
        if self.cfg.coord_dropout >= 1:  # histology alone; kept in the graph (DDP expects every weight's gradient)
            xy = xy * 0
        elif self.training and self.cfg.coord_dropout > 0:
            xy = xy * (torch.rand(len(xy), 1, device=xy.device) >= self.cfg.coord_dropout).to(xy.dtype)
        return self.condition_mlp(self.histology_embed(self.histology_drop(histology)) + xy)

    def _embed(self, cond, next_inputs, start: int, length: int) -> torch.Tensor:
        """Token embeddings of positions start..start+length ([B, length, E])."""
        parts = []
        if start == 0:
            parts.append(self.start_token(cond)[:, None])
        if next_inputs is not None:
            parts.append(self.word_embed(next_inputs))
        x = torch.cat(parts, 1)
        if self.condition_tokens is not None:
            x = x + self.condition_tokens(cond)[:, None]
        pos = slice(start, start + length)
        return x + self.pos_embed[pos] + self.level_embed(self.levels[pos])

    def _logits(self, x, cond):
        shift, scale = self.head_ada(cond)[:, None].chunk(2, -1)
        return self.head(self.head_norm(x) * (1 + scale) + shift)

    def forward(self, histology, coords, next_inputs) -> torch.Tensor:
        """Teacher-forced: next_inputs [B, L - 1, D] -> logits [B, L, V]."""
        cond = self.condition(histology, coords)
        x = self._embed(cond, next_inputs, 0, sum(self.scale_sizes))
        for block in self.blocks:
            x = block(x, cond, self.scale_sizes)
        return self._logits(x, cond)

    def step(self, cond, next_inputs, k: int, caches: list[KVCache]) -> torch.Tensor:
        """One scale with the KV cache: inputs of scale k [B, n_k, D] (None for k = 0) -> logits [B, n_k, V]."""
        start = sum(self.scale_sizes[:k])
        x = self._embed(cond, next_inputs, start, self.scale_sizes[k])
        for block, cache in zip(self.blocks, caches):
            x = block(x, cond, cache=cache)
        return self._logits(x, cond)


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None):
    """logits [B, n, V] -> token ids [B, n] (argmax when greedy, else filtered multinomial)."""
    if greedy:
        return logits.argmax(-1)
    if temperature <= 0:
        raise UserError(f"temperature must be > 0 (got {temperature}); use greedy decoding for argmax")
    logits = logits.float() / temperature
    V = logits.shape[-1]
    if top_k is not None and 0 < top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set with mass >= top_p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    probs = logits.softmax(-1).view(-1, V)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:-1])



__all__ = ["KVCache", "ScaleCausalSelfAttention", "AdaLNBlock", "GeneVARTransformer", "sample_tokens"]
