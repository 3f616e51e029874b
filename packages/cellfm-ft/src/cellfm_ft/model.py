"""CellFM in PyTorch: a retention (linear-attention) encoder over the expressed genes of a cell.

Read top to bottom: config + named sizes, the modules, the cell-type head, the model, the
MindSpore -> PyTorch checkpoint table, the freezing strategies.

A cell enters as its non-zero genes only: vocabulary ids `gene` [B, L] (0 = pad) and their
log-normalised values `expr` [B, L]. Each gene token is gene_emb[id] + value_enc(value); a
learned `cls_token` is prepended; `zero_idx` [B, L+1] (1 = real token, cls included) zeroes the
padding. `enc_nlayers` RetentionLayers follow (MHRetention: O = Q (K^T V), no softmax, so cost
is linear in L). Position 0 of the output is the cell embedding, 1..L the gene embeddings.

Faithful to the public MindSpore code (biomed-AI/CellFM), including the MindSpore defaults that
differ from torch's: LayerNorm eps 1e-7 and LeakyReLU slope 0.2.

Two forms of CellFM exist, and a checkpoint says which one it is:
- the pretraining model (`CellFM` in model.py; it has `zero_emb` and the decoders `value_dec`,
  `cellwise_dec`) masks the padded keys only in layers depth//2 .. depth-1 (`mask_layers="upper"`);
  its lower half masks only the genes hidden for reconstruction;
- the annotation tutorial's `Backbone` (no zero_emb, no decoders) masks them in every layer
  (`mask_layers="all"`).
Padded tokens are zero vectors on entry, so the first layer sees zero keys/values either way: at 2
layers (the 80M model) the forms agree exactly, from 4 layers on they differ.

Heads (`cls`): the annotation tutorial's (`CellTypeHead`: cluster tokens query the genes, two
read-outs) or CellFM-torch's MLP on the cell token (`MLPHead`), trained with CellFM's
masked-reconstruction term added to the loss.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec
from ftcore.mapping import MINDSPORE_RENAMES, KeyMap, Rename

LN_EPS = 1e-7  # mindspore.nn.LayerNorm default
MASK_LAYERS = ("all", "upper")
HEADS = ("tutorial", "mlp")
LEAKY_SLOPE = 0.2  # mindspore.nn.LeakyReLU default


@dataclass
class CellFMConfig:
    n_genes: int = 27855  # vocabulary size without the pad token; gene_emb has pad_rows(n_genes) rows
    enc_dims: int = 1536
    enc_nlayers: int = 2
    enc_num_heads: int = 48
    enc_dropout: float = 0.1  # layer i drops with enc_dropout * i / enc_nlayers
    value_bins: int = 256  # rows of the value encoder's soft lookup table
    nonz_len: int = 2048  # most non-zero genes kept per cell (the highest-expressed)
    num_cls: int = 0  # cell types of the classification head (0 = backbone only)
    head_layers: int = 2  # cross-retention layers of the head
    # The pretraining parts (zero_emb, value_dec, cellwise_dec): present in CellFM's pretraining model,
    # absent from the annotation tutorial's Backbone.
    decoders: bool = True
    mask_layers: str = "all"  # padded keys masked in: "all" layers (tutorial Backbone) | "upper" half (pretraining)
    head: str = "tutorial"  # tutorial (cluster tokens, two read-outs) | mlp (CellFM-torch's cls on the cell token)
    mlp_hidden: int = 128  # width of the mlp head

    def __post_init__(self) -> None:
        if self.mask_layers not in MASK_LAYERS:
            raise UserError(f"unknown mask_layers {self.mask_layers!r}; choose one of: {', '.join(MASK_LAYERS)}")
        if self.head not in HEADS:
            raise UserError(f"unknown head {self.head!r}; choose one of: {', '.join(HEADS)}")
        if self.enc_dims % self.enc_num_heads:
            raise UserError(
                f"enc_dims={self.enc_dims} is not divisible by enc_num_heads={self.enc_num_heads}; "
                "pick a head count that divides it"
            )


# Named sizes. "80m": the released CellFM-80M (27,855-gene vocabulary, 1536 dims, 48 heads; two
# retention layers give 80.5M backbone parameters). "tiny": for tests and the CPU demo.
CONFIGS: dict[str, dict] = {
    "80m": dict(enc_dims=1536, enc_nlayers=2, enc_num_heads=48, nonz_len=2048),
    "tiny": dict(enc_dims=32, enc_nlayers=2, enc_num_heads=4, nonz_len=512),
}


def make_config(name: str, **overrides) -> CellFMConfig:
    if name not in CONFIGS:
        raise UserError(f"unknown config {name!r}; choose one of: {', '.join(CONFIGS)}")
    return CellFMConfig(**{**CONFIGS[name], **overrides})


def pad_rows(n_genes: int) -> int:
    """Rows of gene_emb for `n_genes` genes: pad row 0 + genes, rounded up to a multiple of 8.

    This is the seed's rule pad_to = ((n - 1) // 8 + 1) * 8 applied to the n = n_genes + 1
    tokens (pad included), which equals CellFM's n_genes + 1 + (-n_genes - 1) % 8. Applied to
    n_genes alone it would drop the last gene id whenever n_genes is a multiple of 8.
    """
    n = n_genes + 1
    return ((n - 1) // 8 + 1) * 8


# --------------------------------------------------------------------------------- modules
def srms_norm(x: torch.Tensor) -> torch.Tensor:
    """Scaled RMS norm over the last dim, no parameters, in float32: x / max(||x|| / sqrt(d), 1e-12)."""
    dtype = x.dtype
    x = x.float()
    norm = torch.linalg.vector_norm(x * (1.0 / math.sqrt(x.shape[-1])), dim=-1, keepdim=True)
    return (x / norm.clamp_min(1e-12)).to(dtype)


class ValueTable(nn.Module):
    """A scalar expression value -> a soft lookup into a `bins`-row table.  [B, L, 1] -> [B, L, D]"""

    def __init__(self, dims: int, bins: int = 256):
        super().__init__()
        self.w1 = nn.Linear(1, bins, bias=False)
        self.w3 = nn.Linear(bins, bins, bias=False)
        self.table = nn.Linear(bins, dims, bias=False)
        self.a = nn.Parameter(torch.zeros(1, 1))  # skip weight: v = w3(v) + a * v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.leaky_relu(self.w1(x), LEAKY_SLOPE)
        v = self.w3(v) + v * self.a
        return self.table(torch.softmax(v, dim=-1))


class ValueEncoder(nn.Module):
    """Expression values [B, L] -> value embeddings [B, L, D]. (mask_emb serves masked pretraining.)"""

    def __init__(self, dims: int, bins: int = 256):
        super().__init__()
        self.value_enc = ValueTable(dims, bins)
        self.mask_emb = nn.Parameter(torch.zeros(1, 1, dims))

    def forward(self, expr: torch.Tensor) -> torch.Tensor:
        return self.value_enc(expr.unsqueeze(-1))


class MHRetention(nn.Module):
    """Multi-head retention: relu kernels, O = Q (K^T V), SRMSNorm per head, gated by silu(U).

    x [B, L1, D] queries; y [B, L2, D] keys/values (defaults to x); attn_mask [B, 1, L2, 1]
    zeroes padded keys; v_pos [B, 1, 1, 1] scales the values (1/sqrt(#genes)).
    """

    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.heads, self.head_dims = heads, dims // heads
        self.q_proj = nn.Linear(dims, dims, bias=False)
        self.k_proj = nn.Linear(dims, dims, bias=False)
        self.v_proj = nn.Linear(dims, dims, bias=False)
        self.u_proj = nn.Linear(dims, dims, bias=False)
        self.o_proj = nn.Linear(dims, dims, bias=False)

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, hd]
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.head_dims).transpose(1, 2)

    def forward(self, x, y=None, v_pos=None, attn_mask=None):
        y = x if y is None else y
        q, k = F.relu(self._split(self.q_proj(x))), F.relu(self._split(self.k_proj(y)))
        v, u = self._split(self.v_proj(y)), F.silu(self._split(self.u_proj(x)))
        if attn_mask is not None:
            k = k * attn_mask
        if v_pos is not None:
            v = v * v_pos
        scale = math.sqrt(self.head_dims)
        o = (q / scale) @ ((k / scale).transpose(-1, -2) @ v)  # [B, H, L1, hd]
        o = srms_norm(o) * u
        b, _, n, _ = o.shape
        return self.o_proj(o.transpose(1, 2).reshape(b, n, -1))


class GatedLinearUnit(nn.Module):
    """out = o(u(x) * v(x)), no biases.  [B, L, D] -> [B, L, D]"""

    def __init__(self, dims: int):
        super().__init__()
        self.u_proj = nn.Linear(dims, dims, bias=False)
        self.v_proj = nn.Linear(dims, dims, bias=False)
        self.o_proj = nn.Linear(dims, dims, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.u_proj(x) * self.v_proj(x))


class RetentionLayer(nn.Module):
    """Post-norm block with the deep-net residual scale alpha = (2 * n_layers) ** 0.25."""

    def __init__(self, dims: int, heads: int, n_layers: int, dropout: float = 0.0):
        super().__init__()
        self.attn = MHRetention(dims, heads)
        self.ffn = GatedLinearUnit(dims)
        self.dropout = nn.Dropout(dropout)
        self.post_norm1 = nn.LayerNorm(dims, eps=LN_EPS)
        self.post_norm2 = nn.LayerNorm(dims, eps=LN_EPS)
        self.alpha = (2 * n_layers) ** 0.25

    def forward(self, x, v_pos=None, attn_mask=None):
        x = self.post_norm1(x * self.alpha + self.dropout(self.attn(x, v_pos=v_pos, attn_mask=attn_mask)))
        return self.post_norm2(x * self.alpha + self.dropout(self.ffn(x)))


class CrossRetentionLayer(nn.Module):
    """Self-retention over the queries, retention from the queries into y, then the GLU."""

    def __init__(self, dims: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.attn1 = MHRetention(dims, heads)
        self.attn2 = MHRetention(dims, heads)
        self.ffn = GatedLinearUnit(dims)
        self.dropout = nn.Dropout(dropout)
        self.post_norm1 = nn.LayerNorm(dims, eps=LN_EPS)
        self.post_norm2 = nn.LayerNorm(dims, eps=LN_EPS)
        self.post_norm3 = nn.LayerNorm(dims, eps=LN_EPS)

    def forward(self, x, y, attn_mask=None):
        x = self.post_norm1(x + self.dropout(self.attn1(x)))
        x = self.post_norm2(x + self.dropout(self.attn2(x, y, attn_mask=attn_mask)))
        return self.post_norm3(x + self.dropout(self.ffn(x)))


class ValueDecoder(nn.Module):
    """Pretraining decoder: gene token embedding [B, L, D] -> expression value [B, L]."""

    def __init__(self, dims: int):
        super().__init__()
        self.w1 = nn.Linear(dims, dims, bias=False)
        self.w2 = nn.Linear(dims, 1, bias=False)

    def forward(self, expr_emb: torch.Tensor) -> torch.Tensor:
        return self.w2(F.leaky_relu(self.w1(expr_emb), LEAKY_SLOPE)).squeeze(-1)


class CellwiseDecoder(nn.Module):
    """Pretraining decoder: value [B, L] = sigmoid(map(gene_emb)) . cell embedding."""

    def __init__(self, dims: int):
        super().__init__()
        self.map = nn.Linear(dims, dims, bias=False)

    def forward(self, cell_emb: torch.Tensor, gene_emb: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.map(gene_emb)) @ cell_emb.unsqueeze(-1)).squeeze(-1)


class CellFM(nn.Module):
    """The pretrained backbone (all names as in the MindSpore checkpoint)."""

    def __init__(self, cfg: CellFMConfig):
        super().__init__()
        d = cfg.enc_dims
        self.cfg = cfg
        self.gene_emb = nn.Parameter(torch.empty(pad_rows(cfg.n_genes), d))
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        if cfg.decoders:  # the pretraining model's parts; the annotation tutorial's Backbone has none of them
            self.zero_emb = nn.Parameter(torch.zeros(1, 1, d))  # used only without pad_zero (never here)
        self.value_enc = ValueEncoder(d, cfg.value_bins)
        self.encoder = nn.ModuleList(
            RetentionLayer(d, cfg.enc_num_heads, cfg.enc_nlayers, cfg.enc_dropout * i / cfg.enc_nlayers)
            for i in range(cfg.enc_nlayers)
        )
        if cfg.decoders:
            self.value_dec = ValueDecoder(d)
            self.cellwise_dec = CellwiseDecoder(d)
        nn.init.xavier_normal_(self.gene_emb, gain=0.5)
        nn.init.xavier_normal_(self.cls_token, gain=0.5)
        with torch.no_grad():
            self.gene_emb[0].zero_()

    def forward(self, expr: torch.Tensor, gene: torch.Tensor, zero_idx: torch.Tensor,
                unmask: torch.Tensor | None = None) -> torch.Tensor:
        """expr [B, L] float, gene [B, L] long, zero_idx [B, L+1] -> tokens [B, L+1, D] (0 = cell).

        unmask [B, L] (1 = value shown, 0 = hidden behind mask_emb, as in CellFM's masked pretraining):
        None = every value shown. Padded keys are masked in every layer (mask_layers "all") or, as
        CellFM's pretraining encode does, only in layers depth//2 .. depth-1 ("upper"; the lower half
        masks the hidden genes' keys instead, i.e. nothing when none is hidden).
        """
        b = gene.shape[0]
        value = self.value_enc(expr)
        if unmask is not None:
            shown = unmask.unsqueeze(-1).to(value.dtype)
            value = value * shown + self.value_enc.mask_emb.to(value.dtype) * (1 - shown)
        x = self.gene_emb[gene] + value
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x * zero_idx.unsqueeze(-1)
        v_pos = torch.rsqrt(zero_idx.sum(-1) - 1).view(b, 1, 1, 1).detach()
        mask = zero_idx.view(b, 1, -1, 1)
        lower = mask
        if self.cfg.mask_layers == "upper":
            lower = torch.ones_like(zero_idx) if unmask is None else torch.cat(
                [torch.ones_like(zero_idx[:, :1]), unmask.to(zero_idx.dtype)], dim=1)
            lower = lower.view(b, 1, -1, 1)
        half = len(self.encoder) // 2
        for i, layer in enumerate(self.encoder):
            x = layer(x, v_pos=v_pos, attn_mask=lower if i < half else mask)
        return x

    def decode(self, tokens: torch.Tensor, gene: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pretraining read-outs: (gene-wise value [B, L], cell-wise value [B, L])."""
        if not self.cfg.decoders:
            raise UserError("this CellFM backbone has no pretraining decoders (value_dec, cellwise_dec): "
                            "its checkpoint did not carry them (the annotation tutorial's layout)")
        return self.value_dec(tokens[:, 1:]), self.cellwise_dec(tokens[:, 0], self.gene_emb[gene])

    def reinit_gene_emb(self, n_genes: int) -> None:
        """The teacher's rule: a fresh gene_emb for our vocabulary, xavier normal, pad row 0 zero."""
        emb = torch.empty(pad_rows(n_genes), self.cfg.enc_dims, device=self.gene_emb.device)
        nn.init.xavier_normal_(emb)
        emb[0] = 0
        trainable = self.gene_emb.requires_grad
        self.gene_emb = nn.Parameter(emb)
        # Row 0 is the pad token: it stays zero even if gene_emb is made trainable. (Padded
        # positions are zeroed by zero_idx anyway; the hook makes the rule explicit.)
        self.gene_emb.register_hook(_zero_pad_row_grad)
        self.gene_emb.requires_grad_(trainable)
        self.cfg = dataclasses.replace(self.cfg, n_genes=n_genes)


def _zero_pad_row_grad(grad: torch.Tensor) -> torch.Tensor:
    grad = grad.clone()
    grad[0] = 0
    return grad


class CellTypeHead(nn.Module):
    """Cell annotation head of the public tutorial: [cell; one token per cell type] query the genes.

    logits1 [B, C] = classifier(cluster tokens); logits2 [B, C] = cell token . cluster_emb.
    """

    def __init__(self, cfg: CellFMConfig):
        super().__init__()
        d = cfg.enc_dims
        self.cluster_emb = nn.Parameter(torch.empty(cfg.num_cls, d))
        nn.init.xavier_normal_(self.cluster_emb, gain=0.5)
        self.query_layer = nn.ModuleList(
            CrossRetentionLayer(d, cfg.enc_num_heads, cfg.enc_dropout) for _ in range(cfg.head_layers)
        )
        self.classifier = nn.Linear(d, 1, bias=False)

    def forward(self, tokens: torch.Tensor, zero_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, d = tokens.shape
        genes, mask = tokens[:, 1:], zero_idx[:, 1:].reshape(b, 1, -1, 1)
        q = torch.cat([tokens[:, :1], self.cluster_emb.to(tokens.dtype).expand(b, -1, -1)], dim=1)
        for layer in self.query_layer:
            q = layer(q, genes, attn_mask=mask)
        logits1 = self.classifier(q[:, 1:]).squeeze(-1)
        logits2 = q[:, 0] @ self.cluster_emb.to(q.dtype).t()
        return logits1, logits2


class MLPHead(nn.Sequential):
    """CellFM-torch's `cls` (the one the seed trains): Linear(D, 128) -> BatchNorm1d -> LeakyReLU -> Linear(128, C)
    on the cell token.  [B, D] -> [B, C]. (A torch module there: torch's LeakyReLU slope 0.01.)"""

    def __init__(self, cfg: CellFMConfig):
        super().__init__(nn.Linear(cfg.enc_dims, cfg.mlp_hidden), nn.BatchNorm1d(cfg.mlp_hidden), nn.LeakyReLU(),
                         nn.Linear(cfg.mlp_hidden, cfg.num_cls))


class CellFMClassifier(nn.Module):
    """CellFM backbone (`extractor`) + cell-type head (`cls`): the names the seed's rule trains."""

    def __init__(self, cfg: CellFMConfig):
        super().__init__()
        if cfg.num_cls < 2:
            raise UserError(f"a classifier needs at least 2 cell types, the labels have {cfg.num_cls}")
        self.cfg = cfg
        self.extractor = CellFM(cfg)
        self.cls = CellTypeHead(cfg) if cfg.head == "tutorial" else MLPHead(cfg)

    def read_out(self, tokens: torch.Tensor, zero_idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> the head's logits, each [B, num_cls]: (logits1, logits2) for the tutorial head (logits1 predicts),
        (logits,) for the mlp head."""
        if self.cfg.head == "tutorial":
            return self.cls(tokens, zero_idx)
        return (self.cls(tokens[:, 0]),)

    def forward(self, expr, gene, zero_idx, hidden: torch.Tensor | None = None):
        """-> read_out(...) (tutorial head: (logits1, logits2), each [B, num_cls]).

        hidden [B, L] bool (genes whose values are hidden behind mask_emb): -> (read-outs, masked-
        reconstruction loss), CellFM's pretraining term: MSE of both decoders' values at the hidden genes.
        """
        if hidden is None:
            return self.read_out(self.extractor(expr, gene, zero_idx), zero_idx)
        tokens = self.extractor(expr, gene, zero_idx, unmask=(~hidden).to(expr.dtype))
        gw, cw = self.extractor.decode(tokens, gene)
        weight = hidden.to(gw.dtype)
        n = weight.sum().clamp_min(1.0)
        recon = (((gw - expr) ** 2 * weight).sum() + ((cw - expr) ** 2 * weight).sum()) / n
        return self.read_out(tokens, zero_idx), recon

    def embed(self, expr, gene, zero_idx) -> torch.Tensor:
        """Cell embeddings [B, D] (the backbone's cls position)."""
        return self.extractor(expr, gene, zero_idx)[:, 0]


def classification_loss(logits1, logits2, label, weight=None) -> torch.Tensor:
    """The tutorial's loss: NLL of both read-outs (optionally class-weighted), summed."""
    return F.cross_entropy(logits1.float(), label, weight=weight) + F.cross_entropy(logits2.float(), label, weight=weight)


def readout_loss(readouts: tuple[torch.Tensor, ...], label, weight=None) -> torch.Tensor:
    """Cross-entropy summed over the head's read-outs (the tutorial's two, or the mlp head's one)."""
    return sum(F.cross_entropy(r.float(), label, weight=weight) for r in readouts)


def hide_genes(zero_idx: torch.Tensor, ratio: float) -> torch.Tensor:
    """Genes to hide for the masked-reconstruction term: each expressed gene with probability `ratio`
    (CellFM-torch's fine-tuning hides mask_ratio 0.5).  zero_idx [B, L+1] -> hidden [B, L] bool."""
    real = zero_idx[:, 1:] > 0
    return real & (torch.rand(real.shape, device=zero_idx.device) < ratio)


# ------------------------------------------------------------ MindSpore checkpoint table
# MindSpore name (CellFM pretraining net, or the annotation tutorial's Net)  ->  ours:
#   gene_emb, cls_token, zero_emb                 -> extractor.<same>
#   value_enc.value_enc.{w1,w3,table}.weight, .a  -> extractor.value_enc.value_enc.<same>
#   value_enc.mask_emb                            -> extractor.value_enc.mask_emb
#   encoder.<i>.attn.{q,k,v,u,o}_proj.weight      -> extractor.encoder.<i>.attn.<same>
#   encoder.<i>.ffn.{u,v,o}_proj.weight           -> extractor.encoder.<i>.ffn.<same>
#   encoder.<i>.post_norm{1,2}.gamma / .beta      -> extractor.encoder.<i>.post_norm{1,2}.weight / .bias
#   value_dec.w{1,2}.weight, cellwise_dec.map.weight -> extractor.<same>  (pretraining model only)
#   extractor.<x> (annotation Net)                -> extractor.<x>
#   cluster_emb, query_layer.*, classifier.weight -> cls.<same>
#   ST_emb, ST_enc.*                              -> skipped (spatial tokens, see below)
#   moment1.* / moment2.* / counters (ModelCheckpoint) -> skipped
# Dense weights are (out, in) in both frameworks: no transposes. The annotation tutorial's
# Backbone has no zero_emb / value_dec / cellwise_dec: such a checkpoint is read as that form.
CHECKPOINT_MAP = KeyMap(
    renames=MINDSPORE_RENAMES
    + (
        Rename(r"^(cluster_emb|query_layer\.|classifier\.)", r"cls.\1"),
        Rename(r"^(?!extractor\.|cls\.)", "extractor."),
    ),
    skip=(
        (r"^(moment1|moment2|adam_m|adam_v|accum|global_step_accu)\.", "optimizer state, not weights"),
        (r"^(global_step|learning_rate|beta1_power|beta2_power|epoch_num|step_num|"
         r"current_iterator_step|last_overflow_iterator_step|scale_sense|loss_scale)$",
         "training counter saved beside the weights"),
        (r"(^|\.)lora_[a-z]+\.", "LoRA adapter of a tuned variant; merge it into the weights before converting"),
        (r"^(query|proj)\.", "label head of the pretraining net (cfg.label); fine-tuning builds its own `cls` head"),
        (r"^(value_dec|cellwise_dec)\.zero_logit\b", "zero-probability decoder (add_zero), pretraining only"),
        (r"^(extractor\.)?ST_(emb|enc)(\.|$)",
         "spatial-transcriptomics tokens (ST_emb [1, 2, D] + the ST_enc value encoder of a spatial feature): "
         "they enter only when a spatial feature is fed; cells are encoded without them, as CellFM-torch's "
         "inference does"),
    ),
)

# Backbone parameters that only CellFM's pretraining model has (absent from the tutorial's Backbone).
PRETRAINING_PARTS = r"^extractor\.(zero_emb$|value_dec\.|cellwise_dec\.)"


def is_pretraining_model(sd: dict) -> bool:
    """A checkpoint 'says it is a pretraining model' when it carries the decoders."""
    return any(re.match(r"extractor\.(value_dec|cellwise_dec)\.", k) for k in sd)


def config_from_state_dict(sd: dict[str, torch.Tensor], name: str) -> CellFMConfig:
    """The named config, checked against (and completed by) the converted checkpoint's shapes."""
    cfg = make_config(name)
    if "extractor.gene_emb" not in sd:
        sample = ", ".join(list(sd)[:4])
        raise UserError(f"the checkpoint has no gene_emb (keys start: {sample}); it is not a CellFM checkpoint")
    rows, dims = sd["extractor.gene_emb"].shape
    if dims != cfg.enc_dims:
        fits = [n for n, c in CONFIGS.items() if c["enc_dims"] == dims]
        hint = f"pass --config {fits[0]}" if fits else "no named config has that width"
        raise UserError(f"the checkpoint has enc_dims {dims} but config {name!r} expects {cfg.enc_dims}; {hint}")
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"extractor\.encoder\.(\d+)\.", k))}
    n_layers = max(layers) + 1 if layers else 0
    if n_layers < 1:
        raise UserError("the checkpoint has no encoder layers; it is not a CellFM checkpoint")
    # The vocabulary size is what the table holds minus pad and alignment rows (at most 7).
    pretraining = is_pretraining_model(sd)
    return dataclasses.replace(cfg, enc_nlayers=n_layers, n_genes=rows - 1, decoders=pretraining,
                               mask_layers="upper" if pretraining else "all")


# ------------------------------------------------------------------ freezing strategies
# The seed trains parameters whose names contain "cls." or "encoder" (the head and the
# retention layers); gene_emb (re-initialised), the value encoder and cls_token stay frozen.
FREEZE_STRATEGIES: dict[str, FreezeSpec] = {
    "cls_encoder": FreezeSpec(trainable=(r"cls\.", r"encoder")),
    "cls_only": FreezeSpec(trainable=(r"cls\.",)),
    "full": FreezeSpec(frozen=(r"value_dec\.", r"cellwise_dec\.", r"zero_emb", r"mask_emb")),
}
