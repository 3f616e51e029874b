"""Two-Stage VAR-ST: a multi-scale gene VQ-VAE (stage 1) and a next-scale VAR transformer (stage 2).

Read top to bottom:

    VQVAEConfig, VARConfig, PRESETS          configuration (the seed's sizes are the defaults)
    MultiScaleResidualQuantizer              VAR's residual quantiser on a 1-D gene axis
    MultiScaleGeneVQVAE                      encoder -> quantiser -> decoder, codebook statistics
    ScaleCausalSelfAttention, AdaLNBlock     the transformer block (attention math = kernels only)
    GeneVARTransformer                       condition -> next-scale token logits, KV-cached sampling
    TwoStageVARST                            the two stages together: the API of the user's guide
    CHECKPOINT_KEYMAP                        names in checkpoints written by Lightning wrappers

Shapes for the defaults (G = 200 genes): scales 1 (global), 8 (pathway), 32 (module), G
(individual) -> L = 241 tokens per spot, one shared codebook of 4096 x 128.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftcore import options as opt
from ftcore.config import from_dict
from ftcore.errors import UserError
from ftcore.mapping import KeyMap, Rename
from var_st.kernels import cached_scale_attention, nearest_code, scale_causal_attention


# ----------------------------------------------------------------------------- configuration
def _b(default, **limits):
    """A config field with bounds that `ftcore.config.from_dict` enforces (files, --set overrides)."""
    return field(default=default, metadata=opt.bounds(**limits))


@dataclass
class VQVAEConfig:
    """Stage 1. Keys as in the user's guide (vocab_size ... vq_loss_weight), then the architecture."""

    vocab_size: int = _b(4096, ge=2, le=1_000_000)
    embed_dim: int = _b(128, ge=1, le=65536)
    beta: float = _b(0.25, ge=0)  # commitment weight inside the VQ loss (encoder pulled to its codes)
    hierarchical_loss_weight: float = _b(0.1, ge=0)  # decode every coarse prefix of scales too
    vq_loss_weight: float = _b(0.25, ge=0)
    coarse_scales: tuple[int, ...] = (1, 8, 32)  # global, pathway, module; individual = num_genes
    hidden_dim: int = _b(512, ge=1, le=1_000_000)  # encoder / decoder MLP width
    phi_ratio: float = _b(0.5, ge=0, le=1)  # residual mix of the per-scale refinement conv (VAR's quant_resi)
    # Dead-code restarts (policy in MultiScaleGeneVQVAE.restart_dead_codes)
    dead_code_min_usage: float = _b(1.0, ge=0)  # a code chosen fewer times than this in an epoch is dead
    reservoir_size: int = _b(4096, ge=1, le=10_000_000)  # recent encoder residuals kept as restart candidates

    def __post_init__(self) -> None:
        s = tuple(int(v) for v in self.coarse_scales)
        if not s or s[0] != 1 or any(b <= a for a, b in zip(s, s[1:])):
            raise UserError(f"coarse_scales {s} must start with 1 and increase, e.g. (1, 8, 32)")
        self.coarse_scales = s
        if self.vocab_size < 2 or self.embed_dim < 1:
            raise UserError("vocab_size must be >= 2 and embed_dim >= 1")


@dataclass
class VARConfig:
    """Stage 2. Keys as in the user's guide, plus the condition inputs' sizes."""

    vocab_size: int = _b(4096, ge=2, le=1_000_000)  # must equal the stage-1 codebook size
    embed_dim: int = _b(640, ge=1, le=65536)
    num_heads: int = _b(8, ge=1, le=1024)
    num_layers: int = _b(12, ge=1, le=1024)
    feedforward_dim: int = _b(2560, ge=1, le=1_000_000)
    dropout: float = _b(0.1, ge=0, lt=1)  # residual and feed-forward dropout
    attention_dropout: float = _b(0.0, ge=0, lt=1)  # on attention weights (VAR's default is 0: it costs an L x L mask per head)
    max_sequence_length: int = _b(1500, ge=1, le=1_000_000)
    condition_embed_dim: int = _b(640, ge=1, le=65536)
    histology_dim: int = _b(1024, ge=1, le=1_000_000)  # histology feature vector per spot (e.g. a pathology foundation model)
    coord_dim: int = _b(2, ge=2, le=2)  # x, y
    # dropout on the histology features entering the condition (training only): a spot's noisy features
    # otherwise identify it, and the fine tokens are memorised per spot instead of learnt from the programs
    histology_dropout: float = _b(0.0, ge=0, lt=1)
    # probability that a training spot's coordinate embedding is left out of its condition (VAR's condition
    # dropout): coordinates rarely carry over between slides, yet with them a spot can be memorised
    coord_dropout: float = _b(0.0, ge=0, lt=1)
    # "pca": the histology projection is set to the principal directions of the training spots' features and
    # kept fixed (GeneVARTransformer.fit_histology_pca); "learned": trained from random weights
    histology_projection: str = "learned"
    label_smoothing: float = _b(0.0, ge=0, lt=1)  # of the training cross-entropy over codes (validation loss: plain)
    # training weight of a token of scale k ~ n_k^-scale_balance (mean 1): 0 = every token alike (VAR),
    # 1 = every scale alike (the one global token weighs as much as the G individual ones together)
    scale_balance: float = _b(0.0, ge=0, le=1)
    # stage-2 training targets: 0 = the stage-1 token alone (VAR); t > 0 = a distribution over codes,
    # softmax(-||r - c||^2 / tau) of the residual r the quantiser snapped, tau = t x the mean gap between the
    # nearest and second-nearest code (per scale and batch): codes near the residual share the target, so
    # the expected code the decoding feeds on is trained towards the residual itself (MultiScaleGeneVQVAE.soft_tokens)
    soft_target_temperature: float = _b(0.0, ge=0, le=1000)

    def __post_init__(self) -> None:
        if self.histology_projection not in ("learned", "pca"):
            raise UserError(f"histology_projection {self.histology_projection!r}: choose learned or pca")
        if self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise UserError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")


# Named sizes. "full" is the user's guide; "demo" is what the embedded CPU demo trains in minutes.
PRESETS: dict[str, tuple[VQVAEConfig, VARConfig]] = {
    "full": (VQVAEConfig(), VARConfig()),
    "demo": (
        VQVAEConfig(vocab_size=256, embed_dim=16, hidden_dim=256, reservoir_size=2048),
        VARConfig(vocab_size=256, embed_dim=64, num_heads=4, num_layers=2, feedforward_dim=256,
                  dropout=0.1, max_sequence_length=512, condition_embed_dim=64),
    ),
}


def _as_config(cls, value, name: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, dict(value), source=name)
    raise UserError(f"{name} must be a dict or {cls.__name__}, got {type(value).__name__}")


# ----------------------------------------------------------------------------- stage 1
class MultiScaleResidualQuantizer(nn.Module):
    """VAR's multi-scale residual quantiser on a gene axis of `num_positions` latent vectors.

    For each scale k of size n_k: the residual r [B, G, D] is area-pooled to n_k positions, each
    snapped to its nearest code of the one shared codebook, the codes are linearly upsampled back
    to G positions, refined by phi_k (a conv with a residual mix), added to f_hat and removed
    from r. Coarse scales therefore hold what is common to groups of neighbouring genes (the
    gene order is chosen so neighbours are co-expressed, see MultiScaleGeneVQVAE).
    """

    def __init__(self, cfg: VQVAEConfig, scale_sizes: Sequence[int]):
        super().__init__()
        self.cfg = cfg
        self.scale_sizes = tuple(scale_sizes)
        self.num_positions = self.scale_sizes[-1]
        self.codebook = nn.Parameter(torch.empty(cfg.vocab_size, cfg.embed_dim).uniform_(-1 / cfg.vocab_size, 1 / cfg.vocab_size))
        self.phi = nn.ModuleList(nn.Conv1d(cfg.embed_dim, cfg.embed_dim, 3, padding=1) for _ in self.scale_sizes)

    def _down(self, f: torch.Tensor, n: int) -> torch.Tensor:
        """[B, G, D] -> [B, n, D] by area pooling over the gene axis."""
        if n == f.shape[1]:
            return f
        return F.interpolate(f.transpose(1, 2), size=n, mode="area").transpose(1, 2)

    def embed_scale(self, idx: torch.Tensor, k: int) -> torch.Tensor:
        """Codes of scale k [B, n_k] -> their contribution to f_hat [B, G, D]."""
        return self.contribution(F.embedding(idx, self.codebook), k)

    def contribution(self, vectors: torch.Tensor, k: int) -> torch.Tensor:
        """Code vectors of scale k [B, n_k, D] -> contribution to f_hat [B, G, D] (affine in the vectors)."""
        q = vectors.transpose(1, 2)  # [B, D, n_k]
        if q.shape[-1] != self.num_positions:
            q = F.interpolate(q, size=self.num_positions, mode="linear", align_corners=False)
        r = self.cfg.phi_ratio
        return (q * (1 - r) + self.phi[k](q) * r).transpose(1, 2)

    def forward(self, f: torch.Tensor):
        """f [B, G, D] -> (f_hat with straight-through grads [B, G, D], tokens per scale [[B, n_k]],
        vq_loss scalar, f_hat after each coarse scale [[B, G, D]] for the hierarchical loss,
        the pooled residual each scale quantised [[B, n_k, D]] (restart candidates))."""
        f_const = f.detach()
        f_hat = torch.zeros_like(f)
        residual = f_const.clone()
        tokens, prefixes, pooled = [], [], []
        vq_loss = f.new_zeros(())
        for k, n in enumerate(self.scale_sizes):
            r_k = self._down(residual, n)
            pooled.append(r_k)
            with torch.no_grad():
                idx = nearest_code(r_k.reshape(-1, r_k.shape[-1]), self.codebook).view(r_k.shape[0], n)
            h = self.embed_scale(idx, k)
            f_hat = f_hat + h
            residual = residual - h.detach()
            tokens.append(idx)
            # VAR: commitment (beta, pulls the encoder) + codebook/phi term (pulls codes to the encoder)
            vq_loss = vq_loss + F.mse_loss(f_hat.detach(), f) * self.cfg.beta + F.mse_loss(f_hat, f_const)
            if k < len(self.scale_sizes) - 1:
                prefixes.append(f_hat)
        vq_loss = vq_loss / len(self.scale_sizes)
        f_hat_st = f + (f_hat - f).detach()  # straight-through: decoder grads reach the encoder
        return f_hat_st, tokens, vq_loss, prefixes, pooled

    @torch.no_grad()
    def tokens_to_f_hat(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        f_hat = None
        for k, idx in enumerate(tokens):
            h = self.embed_scale(idx, k)
            f_hat = h if f_hat is None else f_hat + h
        return f_hat

    @torch.no_grad()
    def next_scale_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """f_hat accumulated over scales < k [B, G, D] -> the transformer's input for scale k [B, n_k, D]."""
        return self._down(f_hat, self.scale_sizes[k])

    @torch.no_grad()
    def teacher_forcing_inputs(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokens of every scale -> inputs of scales 1..K-1 concatenated [B, L - 1, D]."""
        f_hat, inputs = None, []
        for k in range(len(self.scale_sizes) - 1):
            h = self.embed_scale(tokens[k], k)
            f_hat = h if f_hat is None else f_hat + h
            inputs.append(self.next_scale_input(f_hat, k + 1))
        return torch.cat(inputs, 1)


class MultiScaleGeneVQVAE(nn.Module):
    """Expression [B, G] -> tokens [B, L] -> reconstruction [B, G].

    Buffers fitted once on the training expression (`fit_gene_stats`) and saved with the weights:
    gene_mean / gene_std (the model works on standardised genes) and gene_order (a permutation
    from spectral seriation of gene-gene correlation, so the pooled groups of the pathway and
    module scales are groups of co-expressed genes, not arbitrary neighbours in the file).
    """

    def __init__(self, num_genes: int, cfg: VQVAEConfig):
        super().__init__()
        if cfg.coarse_scales[-1] >= num_genes:
            raise UserError(f"coarse_scales {cfg.coarse_scales} must all be below num_genes {num_genes}")
        self.cfg, self.num_genes = cfg, num_genes
        self.scale_sizes = cfg.coarse_scales + (num_genes,)
        G, D, H = num_genes, cfg.embed_dim, cfg.hidden_dim
        self.encoder = nn.Sequential(nn.Linear(G, H), nn.GELU(), nn.Linear(H, H), nn.GELU(), nn.Linear(H, G * D))
        self.value_embed = nn.Parameter(torch.randn(D) * 0.1)  # each gene's own value at its own position
        self.quantizer = MultiScaleResidualQuantizer(cfg, self.scale_sizes)
        self.decoder = nn.Sequential(nn.Linear(G * D, H), nn.GELU(), nn.Linear(H, H), nn.GELU(), nn.Linear(H, G))
        self.readout = nn.Parameter(torch.zeros(G, D))  # per-position linear readout beside the MLP
        self.register_buffer("gene_mean", torch.zeros(G))
        self.register_buffer("gene_std", torch.ones(G))
        self.register_buffer("gene_order", torch.arange(G))
        # codebook statistics (training): per-scale code counts since the last restart check,
        # and a reservoir of recent residuals to restart dead codes from
        self.register_buffer("code_counts", torch.zeros(len(self.scale_sizes), cfg.vocab_size))
        self.register_buffer("reservoir", torch.zeros(cfg.reservoir_size, D))
        self.register_buffer("reservoir_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("restart_round", torch.zeros((), dtype=torch.long))

    @property
    def seq_len(self) -> int:
        return sum(self.scale_sizes)

    @torch.no_grad()
    def fit_gene_stats(self, x: torch.Tensor) -> None:
        """x [N, G] training expression: set gene_mean, gene_std and gene_order."""
        x = x.detach().double().cpu()
        self.gene_mean.copy_(x.mean(0).float())
        # floor of 0.1 (log-expression units): a gene almost constant in training must not blow up
        # to huge z-scores on other slides
        self.gene_std.copy_(x.std(0).clamp_min(0.1).float())
        self.gene_order.copy_(_coexpression_order(x))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G] (gene order of the data) -> f [B, G, D] (positions in gene_order)."""
        z = ((x - self.gene_mean) / self.gene_std)[:, self.gene_order]
        f = self.encoder(z).view(len(x), self.num_genes, -1)
        return f + z[..., None] * self.value_embed, z

    def _decode_std(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat [B, G, D] -> standardised expression in gene_order positions [B, G]."""
        return self.decoder(f_hat.flatten(1)) + (f_hat * self.readout).sum(-1)

    def _unstandardise(self, z: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(z)
        out[:, self.gene_order] = z
        return out * self.gene_std + self.gene_mean

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, G] -> {loss, recon_loss, vq_loss, hier_loss, tokens [B, L]}; counts codes when training."""
        f, z = self._encode(x)
        f_hat, tokens, vq_loss, prefixes, pooled = self.quantizer(f)
        recon_loss = F.mse_loss(self._decode_std(f_hat), z)
        hier_loss = torch.stack([F.mse_loss(self._decode_std(p), z) for p in prefixes]).mean()
        loss = recon_loss + self.cfg.vq_loss_weight * vq_loss + self.cfg.hierarchical_loss_weight * hier_loss
        if self.training:
            self._update_code_stats(tokens, pooled)
        return {"loss": loss, "recon_loss": recon_loss.detach(), "vq_loss": vq_loss.detach(),
                "hier_loss": hier_loss.detach(), "tokens": torch.cat(tokens, 1)}

    @torch.no_grad()
    def _update_code_stats(self, tokens: Sequence[torch.Tensor], pooled: Sequence[torch.Tensor]) -> None:
        # index_add_ rather than bincount, and the reservoir's write position kept on the device: both have
        # static shapes, so a compiled training step has no graph break here (and no host sync)
        for k, idx in enumerate(tokens):
            flat = idx.flatten()
            self.code_counts[k].index_add_(0, flat, torch.ones(flat.shape, dtype=self.code_counts.dtype,
                                                               device=flat.device))
        # keep a random subset of the residuals this batch quantised (every scale)
        cand = torch.cat([r.reshape(-1, r.shape[-1]) for r in pooled]).float()
        m = min(len(cand), self.cfg.reservoir_size // 4)
        pick = cand[torch.randperm(len(cand), device=cand.device)[:m]]
        slots = (torch.arange(m, device=cand.device) + self.reservoir_filled) % self.cfg.reservoir_size
        self.reservoir[slots] = pick.to(self.reservoir.dtype)
        self.reservoir_filled += m

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Dead-code restart policy, run once per epoch (from the stage-1 validation hook).

        A code chosen fewer than `dead_code_min_usage` times over all scales since the last check
        is dead; each dead code is moved onto a random latent vector from the reservoir of recent
        training batches (plus small noise), so it lands where the encoder actually puts data.
        Counts then restart from zero. Under DDP the counts and reservoir are taken from rank 0
        and the choice uses a generator seeded by the restart round, so every rank makes the
        identical change and the replicas stay equal. Returns the number of codes restarted.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            for buf in (self.code_counts, self.reservoir, self.reservoir_filled):
                dist.broadcast(buf, 0)
        filled = min(int(self.reservoir_filled), self.cfg.reservoir_size)
        dead = (self.code_counts.sum(0) < self.cfg.dead_code_min_usage).nonzero().flatten()
        n = 0
        if filled > 0 and len(dead) > 0 and self.code_counts.sum() > 0:
            g = torch.Generator().manual_seed(1000 + int(self.restart_round))
            pick = torch.randint(filled, (len(dead),), generator=g)
            noise = torch.randn(len(dead), self.cfg.embed_dim, generator=g) * 0.01
            cb = self.quantizer.codebook
            cb.data[dead.to(cb.device)] = self.reservoir[pick.to(cb.device)].to(cb.dtype) + noise.to(cb.device, cb.dtype)
            n = len(dead)
        self.code_counts.zero_()
        self.restart_round += 1
        return n

    @torch.no_grad()
    def init_codebook(self, x: torch.Tensor, seed: int = 0) -> None:
        """Data-dependent codebook start (before stage-1 training; x [N, G] training expression).

        Scale by scale, a share of the codebook is set to randomly chosen residuals of that scale
        and the residual is quantised with them, so every scale starts with codes where its
        residuals are. Without this the codes start near zero while the encoder's latents grow,
        and the first dead-code restarts jolt the decoder.
        """
        g = torch.Generator().manual_seed(seed)
        q, K, S = self.quantizer, self.cfg.vocab_size, len(self.scale_sizes)
        f, _ = self._encode(x)
        residual, start = f.clone(), 0
        for k, n in enumerate(self.scale_sizes):
            r_k = q._down(residual, n)
            flat = r_k.reshape(-1, r_k.shape[-1])
            m = K // S if k < S - 1 else K - start
            pick = torch.randint(len(flat), (m,), generator=g).to(flat.device)
            q.codebook.data[start:start + m] = flat[pick].to(q.codebook.dtype)
            start += m
            idx = nearest_code(flat, q.codebook[:start]).view(len(x), n)  # only the codes placed so far
            residual = residual - q.embed_scale(idx, k)

    # -- inference helpers (no gradients) -----------------------------------------------------
    def split_scales(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """[B, L] -> [[B, n_k]] per scale."""
        return list(torch.split(tokens, list(self.scale_sizes), dim=1))

    @torch.no_grad()
    def encode_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Expression [B, G] -> tokens [B, L] (deterministic)."""
        f, _ = self._encode(x)
        return torch.cat(self.quantizer(f)[1], 1)

    @torch.no_grad()
    def soft_tokens(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """Expression [B, G] -> a distribution over codes per token [B, L, V] (stage-2 soft targets).

        At each scale, softmax(-(d - d_min) / tau) over the squared distances d of the pooled residual
        to every code; tau = temperature x the mean gap between the nearest and the second-nearest code
        at that scale. The residuals are those of the hard tokens (the teacher-forcing path), so the
        argmax is the stage-1 token."""
        f, _ = self._encode(x)
        pooled = self.quantizer(f)[4]
        cb = self.quantizer.codebook.float()
        out = []
        for r in pooled:
            r = r.float()
            d = r.pow(2).sum(-1, keepdim=True) - 2 * r @ cb.T + cb.pow(2).sum(-1)
            two = d.topk(2, dim=-1, largest=False).values
            tau = (temperature * (two[..., 1] - two[..., 0]).mean()).clamp_min(1e-12)
            out.append((-(d - two[..., :1]) / tau).softmax(-1))
        return torch.cat(out, 1)

    @torch.no_grad()
    def decode_f_hat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Accumulated f_hat [B, G, D] -> expression [B, G] in the data's units and gene order."""
        return self._unstandardise(self._decode_std(f_hat))

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, L] -> expression [B, G]."""
        return self.decode_f_hat(self.quantizer.tokens_to_f_hat(self.split_scales(tokens)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_tokens(self.encode_tokens(x))


def _coexpression_order(x: torch.Tensor) -> torch.Tensor:
    """Spectral seriation of genes (x [N, G] float64): co-expressed genes end up next to each other.

    Affinity = positive Pearson r between genes; the order sorts genes by the Fiedler vector of
    the normalised graph Laplacian (the smoothest non-trivial ordering of the graph). The sign of
    the eigenvector is fixed so the result is deterministic. torch only (no scipy on GPU boxes).
    """
    xc = x - x.mean(0)
    norm = xc.norm(dim=0).clamp_min(1e-12)
    corr = (xc.T @ xc) / (norm[:, None] * norm[None, :])
    affinity = corr.clamp_min(0).fill_diagonal_(0) + 1e-6  # tiny floor keeps the graph connected
    d = affinity.sum(1).rsqrt()
    lap = torch.eye(len(d), dtype=x.dtype) - d[:, None] * affinity * d[None, :]
    _, vecs = torch.linalg.eigh(lap)
    fiedler = vecs[:, 1] * d
    if fiedler[fiedler.abs().argmax()] < 0:
        fiedler = -fiedler
    return torch.argsort(fiedler, stable=True)


def codebook_stats(tokens: torch.Tensor, scale_sizes: Sequence[int], vocab_size: int) -> dict[str, float]:
    """Tokens [N, L] -> utilisation (fraction of the codebook used) and perplexity, per scale and overall."""
    out: dict[str, float] = {}
    used_any = torch.zeros(vocab_size, dtype=torch.bool)
    for n, idx in zip(scale_sizes, torch.split(tokens.cpu(), list(scale_sizes), dim=1)):
        counts = torch.bincount(idx.flatten(), minlength=vocab_size).double()
        p = counts / counts.sum()
        out[f"perplexity_s{n}"] = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
        out[f"utilisation_s{n}"] = float((counts > 0).double().mean())
        used_any |= counts > 0
    out["utilisation"] = float(used_any.double().mean())
    return out


# ----------------------------------------------------------------------------- stage 2
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
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)  # every block starts as the identity

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
        self.condition_mlp = nn.Sequential(nn.GELU(), nn.Linear(C, C))
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

    def condition(self, histology: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """[B, F] + [B, 2] -> condition embedding [B, C]."""
        xy = self.coord_embed(coords)
        if self.training and self.cfg.coord_dropout > 0:
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


# ----------------------------------------------------------------------------- both stages
class TwoStageVARST(nn.Module):
    """The user's-guide API.

        model = TwoStageVARST(num_genes=200, vqvae_config={...}, var_config={...}, current_stage=1)
        model.set_training_stage(2, stage1_ckpt_path="stage1.ckpt")
        out = model.inference(histology_features, spatial_coords, temperature=1.0, top_k=50, top_p=0.9)
        out["predicted_gene_expression"]  # [B, G]

    Configs may be dicts (unknown keys are errors naming the key) or VQVAEConfig / VARConfig.
    A var_config dict without vocab_size takes the stage-1 vocabulary.
    """

    def __init__(self, num_genes: int = 200, vqvae_config: Mapping | VQVAEConfig | None = None,
                 var_config: Mapping | VARConfig | None = None, current_stage: int = 1):
        super().__init__()
        vq = _as_config(VQVAEConfig, vqvae_config, "vqvae_config")
        if isinstance(var_config, Mapping) and "vocab_size" not in var_config:
            var_config = {**var_config, "vocab_size": vq.vocab_size}
        var = _as_config(VARConfig, var_config, "var_config")
        if var.vocab_size != vq.vocab_size:
            raise UserError(f"var_config.vocab_size {var.vocab_size} differs from vqvae_config.vocab_size {vq.vocab_size}; they must match")
        self.num_genes = int(num_genes)
        self.vqvae_config, self.var_config = vq, var
        self.vqvae = MultiScaleGeneVQVAE(self.num_genes, vq)
        self.var = GeneVARTransformer(var, vq.embed_dim, self.vqvae.scale_sizes)
        self.gene_names: list[str] | None = None  # set by training from the data; saved with checkpoints
        # where the trained VQ-VAE came from (a checkpoint, or stage-1 training in this process);
        # None = untrained codebook, and stage-2 training refuses it (the guide's first FAQ)
        self.stage1_source: str | None = None
        self.current_stage = 0
        self.set_training_stage(current_stage)

    @property
    def scale_sizes(self) -> tuple[int, ...]:
        return self.vqvae.scale_sizes

    # -- stages ---------------------------------------------------------------------------------
    def set_training_stage(self, stage: int, stage1_ckpt_path: str | Path | None = None, trust_pickle: bool = False) -> None:
        """Stage 1 trains the VQ-VAE; stage 2 freezes it (loaded from stage1_ckpt_path) and trains the VAR."""
        if stage not in (1, 2):
            raise UserError(f"training stage must be 1 or 2, got {stage}")
        if stage1_ckpt_path is not None:
            self.load_stage1(stage1_ckpt_path, trust_pickle=trust_pickle)
        self.current_stage = stage
        self.vqvae.requires_grad_(stage == 1)
        self.var.requires_grad_(stage == 2)
        if stage == 2:
            self.vqvae.eval()

    def load_stage1(self, path: str | Path, trust_pickle: bool = False) -> None:
        from ftcore.checkpoint import read_checkpoint

        obj = read_checkpoint(path, trust_pickle=trust_pickle)
        extra = obj.get("extra", {}) if isinstance(obj, Mapping) else {}
        if not isinstance(obj, Mapping) or "model" not in obj or extra.get("stage") not in (1, 2):
            raise UserError(f"{path} is not a var-st stage-1 checkpoint (no 'model' weights with stage metadata); "
                            "pass the best_vqvae.ckpt written by --training_stage 1")
        if int(extra["num_genes"]) != self.num_genes:
            raise UserError(f"{path} was trained on {extra['num_genes']} genes but this model has {self.num_genes}; "
                            "use the same --num_genes as stage 1")
        if dict(extra["vqvae_config"]) != _plain(asdict(self.vqvae_config)):
            raise UserError(f"{path} has vqvae_config {extra['vqvae_config']} which differs from this model's; "
                            "build the model with the stage-1 config (or use from_stage1)")
        sd = {k[len("vqvae."):] if k.startswith("vqvae.") else k: v for k, v in obj["model"].items()
              if not k.startswith("var.")}
        _load_strict(self.vqvae, sd, path)
        self.gene_names = list(extra.get("gene_names") or []) or self.gene_names
        self.stage1_source = str(path)

    @classmethod
    def from_stage1(cls, path: str | Path, var_config: Mapping | VARConfig | None = None, trust_pickle: bool = False):
        """A stage-2-ready model whose VQ-VAE (config and weights) comes from a stage-1 checkpoint."""
        from ftcore.checkpoint import read_checkpoint

        obj = read_checkpoint(path, trust_pickle=trust_pickle)
        extra = obj.get("extra", {}) if isinstance(obj, Mapping) else {}
        if "vqvae_config" not in extra or "num_genes" not in extra:
            raise UserError(f"{path} is not a var-st stage-1 checkpoint (no vqvae_config / num_genes); "
                            "pass the best_vqvae.ckpt written by --training_stage 1")
        model = cls(int(extra["num_genes"]), dict(extra["vqvae_config"]), var_config, current_stage=1)
        model.set_training_stage(2, stage1_ckpt_path=path, trust_pickle=trust_pickle)
        return model

    # -- training forward (stage 2) --------------------------------------------------------------
    def forward(self, histology: torch.Tensor, coords: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Stage-2 teacher forcing: histology [B, F], coords [B, 2], stage-1 tokens [B, L] -> logits [B, L, V]."""
        next_inputs = self.vqvae.quantizer.teacher_forcing_inputs(self.vqvae.split_scales(tokens))
        return self.var(histology, coords, next_inputs)

    # -- inference ---------------------------------------------------------------------------------
    @torch.no_grad()
    def inference(self, histology_features: torch.Tensor, spatial_coords: torch.Tensor, temperature: float = 1.0,
                  top_k: int | None = 50, top_p: float | None = 0.9, greedy: bool = False,
                  seed: int | None = None, generator: torch.Generator | None = None,
                  expected: bool = False) -> dict[str, Any]:
        """Generate tokens scale by scale with the KV cache, decode with the frozen VQ-VAE.

        histology_features [B, F], spatial_coords [B, 2] -> {"predicted_gene_expression": [B, G],
        "tokens": [B, L]}. Sampling (temperature / top_k / top_p) is reproducible with `seed` or a
        `generator`; greedy=True takes the argmax token. expected=True feeds each scale the
        probability-weighted mean of the code vectors (softmax(logits / temperature)) instead of one
        token: every scale's contribution is affine in its code vectors, so this is that scale's
        expected contribution given the coarser ones - a better point prediction of expression
        than any single draw (tokens then report the argmax).
        """
        if greedy and expected:
            raise UserError("choose one decoding: greedy=True or expected=True, not both")
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        histology_features = histology_features.to(dev, torch.float32)
        spatial_coords = spatial_coords.to(dev, torch.float32)
        if histology_features.ndim != 2 or histology_features.shape[1] != self.var_config.histology_dim:
            raise UserError(f"histology features have shape {tuple(histology_features.shape)}; the model expects "
                            f"[B, {self.var_config.histology_dim}]")
        if spatial_coords.shape != (len(histology_features), self.var_config.coord_dim):
            raise UserError(f"spatial coords have shape {tuple(spatial_coords.shape)}; the model expects "
                            f"[{len(histology_features)}, {self.var_config.coord_dim}] (one row per histology row)")
        for name, t in (("histology features", histology_features), ("spatial coords", spatial_coords)):
            if not torch.isfinite(t).all():
                rows = (~torch.isfinite(t)).any(1).nonzero().flatten().tolist()
                raise UserError(f"{name} contain NaN or inf in {len(rows)} rows (first row {rows[0]}); "
                                "remove or impute those spots first")
        if generator is None and seed is not None:
            generator = torch.Generator(device=dev).manual_seed(int(seed))
        q = self.vqvae.quantizer
        cond = self.var.condition(histology_features, spatial_coords)
        caches = [KVCache() for _ in self.var.blocks]
        f_hat, inputs, tokens = None, None, []
        for k in range(len(self.scale_sizes)):
            logits = self.var.step(cond, inputs, k, caches)
            if expected:
                if temperature <= 0:
                    raise UserError(f"temperature must be > 0 (got {temperature})")
                probs = (logits.float() / temperature).softmax(-1)
                idx, h = probs.argmax(-1), q.contribution(probs @ q.codebook, k)
            else:
                idx = sample_tokens(logits, temperature, top_k, top_p, greedy, generator)
                h = q.embed_scale(idx, k)
            tokens.append(idx)
            f_hat = h if f_hat is None else f_hat + h
            if k + 1 < len(self.scale_sizes):
                inputs = q.next_scale_input(f_hat, k + 1)
        self.train(was_training)
        return {"predicted_gene_expression": self.vqvae.decode_f_hat(f_hat), "tokens": torch.cat(tokens, 1)}

    # -- checkpoints and info ------------------------------------------------------------------------
    def metadata(self, stage: int, **more) -> dict:
        """Plain-typed description saved beside the weights (loadable with weights_only=True)."""
        return {"stage": stage, "num_genes": self.num_genes, "vqvae_config": _plain(asdict(self.vqvae_config)),
                "var_config": _plain(asdict(self.var_config)), "gene_names": list(self.gene_names or []), **more}

    def save_stage_checkpoint(self, path: str | Path, stage: int, **extra) -> None:
        """{"model": weights, "extra": metadata}. Stage 1: the VQ-VAE weights (load with
        set_training_stage(2, stage1_ckpt_path=...)); stage 2: the VAR with the frozen VQ-VAE it was
        trained on, like best_var.ckpt (load with load_complete_model; a VAR alone decodes nothing)."""
        from ftcore.io import atomic_torch_save

        if stage not in (1, 2):
            raise UserError(f"stage must be 1 or 2, got {stage}")
        part = self.vqvae if stage == 1 else self
        atomic_torch_save({"model": part.state_dict(), "extra": self.metadata(stage, **extra)}, path)

    def save_complete_model(self, path: str | Path, **extra) -> None:
        from ftcore.io import atomic_torch_save

        atomic_torch_save({"model": self.state_dict(), "extra": self.metadata(2, complete=True, **extra)}, path)

    @classmethod
    def load_complete_model(cls, path: str | Path, device: str | torch.device = "cpu", trust_pickle: bool = False):
        """A complete model (save_complete_model, or the stage-2 best checkpoint) on `device`, in eval mode."""
        from ftcore.checkpoint import read_checkpoint

        obj = read_checkpoint(path, trust_pickle=trust_pickle)
        extra = obj.get("extra", {}) if isinstance(obj, Mapping) else {}
        if extra.get("stage") == 1:
            raise UserError(f"{path} is a stage-1 (VQ-VAE only) checkpoint; train stage 2 with --stage1_ckpt {path} "
                            "and load its complete_model.ckpt")
        if not {"num_genes", "vqvae_config", "var_config"} <= set(extra) or "model" not in obj:
            raise UserError(f"{path} is not a complete var-st model (missing configs or weights); "
                            "pass complete_model.ckpt written by training stage 2")
        model = cls(int(extra["num_genes"]), dict(extra["vqvae_config"]), dict(extra["var_config"]), current_stage=2)
        sd, _ = CHECKPOINT_KEYMAP.apply(obj["model"])
        _load_strict(model, sd, path)
        model.gene_names = list(extra.get("gene_names") or []) or None
        model.stage1_source = str(path)
        model.checkpoint_extra = dict(extra)
        return model.to(device).eval()

    def get_model_info(self) -> dict:
        n_vq = sum(p.numel() for p in self.vqvae.parameters())
        n_var = sum(p.numel() for p in self.var.parameters())
        return {"total_parameters": n_vq + n_var, "stage1_parameters": n_vq, "stage2_parameters": n_var,
                "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
                "current_stage": self.current_stage, "num_genes": self.num_genes,
                "scale_sizes": list(self.scale_sizes), "sequence_length": sum(self.scale_sizes),
                "vocab_size": self.vqvae_config.vocab_size}


def _plain(d: Any) -> Any:
    """Tuples -> lists, recursively, so saved configs compare equal after a round trip."""
    if isinstance(d, Mapping):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d


def _load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    bad = [(k, tuple(own[k].shape), tuple(sd[k].shape)) for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or bad:
        what = f"{len(missing)} missing (first: {missing[0]})" if missing else ""
        if bad:
            what += (", " if what else "") + f"shape mismatch {bad[0][0]}: model {bad[0][1]} vs checkpoint {bad[0][2]}"
        raise UserError(f"{path}: weights do not fit this model ({what}); the checkpoint was written for another configuration")
    from ftcore.loading import _refuse_non_finite, _refuse_wrong_kind  # the core's per-tensor rules, by name

    mine = {k: sd[k] for k in own}
    _refuse_wrong_kind(mine, own, str(path))
    _refuse_non_finite(mine, {name for name, _ in module.named_parameters()}, str(path))
    module.load_state_dict(mine, strict=True)


# Checkpoints written by a Lightning module that holds the model as `self.model` (as the user's
# src/main.py does) carry a "model." prefix; the rest of the names are this file's.
CHECKPOINT_KEYMAP = KeyMap(renames=(Rename(r"^model\.(vqvae|var)\.", r"\1."),))


__all__ = ["VQVAEConfig", "VARConfig", "PRESETS", "MultiScaleResidualQuantizer", "MultiScaleGeneVQVAE",
           "GeneVARTransformer", "TwoStageVARST", "codebook_stats", "sample_tokens", "CHECKPOINT_KEYMAP"]
