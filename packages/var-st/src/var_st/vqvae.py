"""Stage 1 of var-st: VAR's multi-scale residual quantiser on a 1-D gene axis, inside a gene VQ-VAE.

    MultiScaleResidualQuantizer     residual r -> pooled to each scale, snapped to the shared codebook
    MultiScaleGeneVQVAE             expression -> tokens -> expression, dead-code restarts
    codebook_stats                  utilisation and perplexity of tokens, per scale

Shapes for the defaults (G = 200 genes): scales 1 (global), 8 (pathway), 32 (module), G
(individual) -> L = 241 tokens per spot, one shared codebook of 4096 x 128.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ftcore.errors import UserError
from var_st.config import VQVAEConfig
from var_st.kernels import nearest_code


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

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G] (gene order of the data) -> z [B, G], standardised genes in gene_order positions."""
        return ((x - self.gene_mean) / self.gene_std)[:, self.gene_order]

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, G] (gene order of the data) -> f [B, G, D] (positions in gene_order)."""
        z = self.standardise(x)
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


__all__ = ["MultiScaleResidualQuantizer", "MultiScaleGeneVQVAE", "codebook_stats"]
