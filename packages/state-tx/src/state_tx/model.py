"""The State Transition (ST) model: predict a set of perturbed cells from a set of control cells.

Read top to bottom: config + presets, the distribution losses, the LLaMA-style set encoder, the
module, the checkpoint table.

One training example is a "cell sentence": `cell_set_len` cells that share (perturbation, cell
type[, batch]). Each cell enters as a matched control (basal) cell plus the perturbation's
encoding; a bidirectional transformer mixes the set (no positions: the order of cells means
nothing), and a decoder maps each token back to the output space. With `predict_residual` the
decoder sees the transformer output added to the basal encoding (gene space) or adds the basal
expression itself (all genes), as arc-state's StateTransitionPerturbationModel does. Cells are
unpaired across conditions, so the loss compares the predicted and observed *sets* (energy
distance by default), not cell by cell.

Backbone: the layers of arc-state's `LlamaBidirectionalModel` (RMSNorm, bias-free q/k/v/o
projections, SwiGLU MLP) with rotary embeddings switched off (arc-state's NoRoPE returns cos=1,
sin=0) and no attention mask. Parameter names follow Hugging Face's LlamaModel, so an arc-state
checkpoint maps onto this module by the table at the bottom with no transposes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ftcore import options as opt
from ftcore.errors import UserError

LOSSES = ("energy", "mmd", "mse")


@dataclass
class StateTxConfig:
    input_dim: int  # features per basal cell (genes of the output space)
    output_dim: int  # features predicted per cell
    pert_dim: int  # one-hot width or perturbation-feature width (e.g. ESM2 5120)
    batch_dim: int = 0  # batch categories; used only with batch_encoder
    output_space: str = "gene"  # gene (obsm['X_hvg']) | all (X)
    hidden_dim: int = 768
    cell_set_len: int = 512
    n_encoder_layers: int = 1  # MLP depth of the perturbation (and basal) encoder
    n_decoder_layers: int = 1  # MLP depth of project_out, the decoder to the output space
    use_basal_projection: bool = True  # basal encoder an MLP (True) or a single Linear (False)
    n_layers: int = 8  # transformer blocks (LlamaConfig.num_hidden_layers)
    n_heads: int = 12
    head_dim: int = 64
    intermediate_size: int = 3072
    rms_norm_eps: float = field(default=1e-6, metadata=opt.bounds(gt=0))
    # in the encoder/decoder MLPs (arc-state's default); the backbone has none
    dropout: float = field(default=0.1, metadata=opt.bounds(ge=0, lt=1))
    predict_residual: bool = True
    batch_encoder: bool = False
    loss: str = "energy"  # energy | mmd (Gaussian kernel, bandwidth `blur`) | mse (cell by cell)
    blur: float = field(default=0.05, metadata=opt.bounds(gt=0))  # MMD bandwidth
    # weight of an added MSE between the predicted and observed set MEANS (per gene), on top of `loss`;
    # 0 = the set loss alone (arc-state)
    mean_mse_weight: float = field(default=0.0, metadata=opt.bounds(ge=0))
    # mean: a fresh model's output layer starts with the training mean of each gene as its bias (under the
    # final ReLU, a gene whose output starts negative for every cell gets no gradient and stays 0 for good:
    # on a screen with highly expressed genes that dominated the MSE); torch: PyTorch's default (arc-state)
    output_bias_init: str = "mean"
    # a zero-initialised delta head in gene space: out = ReLU(basal cell + decoder(...)), the decoder's last layer
    # starting at zero weights and bias, so a fresh model predicts its control (basal) cells and learns the shift
    # (output_bias_init is then unused); False = arc-state's latent residual (decoder(hidden + basal encoding))
    basal_residual: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"unknown model.kwargs.loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.output_space not in ("gene", "all"):
            raise UserError(f"unknown output_space {self.output_space!r}; choose gene or all")
        if self.output_bias_init not in ("mean", "torch"):
            raise UserError(f"model.kwargs.output_bias_init={self.output_bias_init!r}; choose mean (the training "
                            "mean per gene) or torch (PyTorch's default, as arc-state)")
        if self.basal_residual and (self.output_space != "gene" or self.input_dim != self.output_dim):
            raise UserError("model.kwargs.basal_residual=true needs output_space gene (the basal cells and the "
                            "predictions in one gene space); output_space all already adds the basal cell "
                            "(predict_residual): set model.kwargs.basal_residual=false")
        if self.cell_set_len < 2:
            raise UserError("model.kwargs.cell_set_len must be >= 2 (the loss compares sets of cells)")
        if min(self.hidden_dim, self.n_heads, self.head_dim, self.n_layers, self.n_encoder_layers,
               self.n_decoder_layers, self.intermediate_size) < 1:
            raise UserError("model sizes (hidden_dim, n_heads, head_dim, n_layers, *_layers, intermediate_size) must be >= 1")
        if self.predict_residual and self.output_space == "all" and self.input_dim != self.output_dim:
            raise UserError("predict_residual in output_space all needs input_dim == output_dim; "
                            "set model.kwargs.predict_residual=false")


# Sizes of arc-state 0.11.1's presets (state/configs/model/{state_sm,state,state_lg}.yaml). The
# seed's parameter table quotes hidden_dim 696 for `state`; the released config says 768, used
# here so that side-by-side runs with arc-state compare the same network.
PRESETS: dict[str, dict] = {
    "state_sm": dict(hidden_dim=672, cell_set_len=128, n_encoder_layers=4, n_decoder_layers=4,
                     use_basal_projection=False, n_layers=4, n_heads=8, head_dim=84, intermediate_size=2688),
    "state": dict(hidden_dim=768, cell_set_len=512, n_encoder_layers=1, n_decoder_layers=1,
                  use_basal_projection=True, n_layers=8, n_heads=12, head_dim=64, intermediate_size=3072),
    "state_lg": dict(hidden_dim=1488, cell_set_len=512, n_encoder_layers=4, n_decoder_layers=4,
                     use_basal_projection=False, n_layers=6, n_heads=12, head_dim=124, intermediate_size=5952),
}

# Fields of StateTxConfig a user may set with model.kwargs.* (the rest come from the data).
TUNABLE = tuple(f.name for f in dataclasses.fields(StateTxConfig)
                if f.name not in ("input_dim", "output_dim", "pert_dim", "batch_dim", "output_space"))


def preset_kwargs(name: str) -> dict:
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)} (e.g. model=state_sm)")
    return dict(PRESETS[name])


# ----------------------------------------------------------------------------------------- loss
def pairwise_sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [B, N, M] between sets x [B, N, D] and y [B, M, D].

    Through the Gram matrix (memory B*N*M, not B*N*M*D), clamped at 0 against rounding.
    """
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True).transpose(-1, -2)
    return (x2 + y2 - 2 * x @ y.transpose(-1, -2)).clamp_min(0)


def energy_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Energy distance per set pair [B], on the scale of geomloss' SamplesLoss("energy").

    geomloss computes 1/2 <a - b, K (a - b)> with K(x, y) = -|x - y| and uniform weights, i.e.
    E|x-y| - 1/2 E|x-x'| - 1/2 E|y-y'| (half the textbook energy distance, V-statistic with the
    i == j terms). Zero iff the two empirical distributions match. The 1e-12 inside sqrt keeps its
    gradient finite at zero distance (the diagonal of a set with itself).
    """
    dist = lambda a, b: (pairwise_sq_dist(a, b) + 1e-12).sqrt().mean((-1, -2))  # noqa: E731
    return dist(x, y) - 0.5 * dist(x, x) - 0.5 * dist(y, y)


def mmd_loss(x: torch.Tensor, y: torch.Tensor, blur: float) -> torch.Tensor:
    """Gaussian-kernel MMD per set pair [B] (geomloss SamplesLoss("gaussian", blur) scale)."""
    k = lambda a, b: torch.exp(-pairwise_sq_dist(a, b) / (2 * blur**2)).mean((-1, -2))  # noqa: E731
    return 0.5 * (k(x, x) + k(y, y)) - k(x, y)


def set_loss(pred: torch.Tensor, target: torch.Tensor, kind: str, blur: float = 0.05,
             mean_mse_weight: float = 0.0) -> torch.Tensor:
    """Mean loss over sentences; pred, target [B, S, G] (float32 for the distance arithmetic).

    mean_mse_weight > 0 adds that weight x the MSE between the set means [B, G] (cells are unpaired, so
    the means are what a cell-by-cell comparison can match)."""
    pred, target = pred.float(), target.float()
    if kind == "energy":
        loss = energy_loss(pred, target).mean()
    elif kind == "mmd":
        loss = mmd_loss(pred, target, blur).mean()
    else:
        loss = F.mse_loss(pred, target)
    if mean_mse_weight:
        loss = loss + mean_mse_weight * F.mse_loss(pred.mean(1), target.mean(1))
    return loss


# ------------------------------------------------------------------------------------- backbone
def mlp(d_in: int, d_hidden: int, d_out: int, n_layers: int, dropout: float) -> nn.Sequential:
    """arc-state's build_mlp: n_layers Linear layers with GELU + Dropout between them."""
    dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            layers += [nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32 like LlamaRMSNorm, so bf16 training normalises the same way
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class SetAttention(nn.Module):
    """Multi-head self-attention over the cells of a set: no mask, no positions."""

    def __init__(self, c: StateTxConfig):
        super().__init__()
        self.n_heads, self.head_dim = c.n_heads, c.head_dim
        inner = c.n_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_dim, inner, bias=False)
        self.k_proj = nn.Linear(c.hidden_dim, inner, bias=False)
        self.v_proj = nn.Linear(c.hidden_dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, c.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, H] -> [B, S, H]."""
        b, s, _ = x.shape
        q, k, v = (p(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)  # is_causal=False: every cell sees the set
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class SwiGLU(nn.Module):
    def __init__(self, c: StateTxConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_dim, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_dim, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, c: StateTxConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_dim, c.rms_norm_eps)
        self.self_attn = SetAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_dim, c.rms_norm_eps)
        self.mlp = SwiGLU(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class SetTransformer(nn.Module):
    """The bidirectional LLaMA body: blocks + final RMSNorm. [B, S, H] -> [B, S, H]."""

    def __init__(self, c: StateTxConfig):
        super().__init__()
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.hidden_dim, c.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


# --------------------------------------------------------------------------------------- module
class StateTransitionModel(nn.Module):
    def __init__(self, config: StateTxConfig):
        super().__init__()
        self.config = c = config
        self.pert_encoder = mlp(c.pert_dim, c.hidden_dim, c.hidden_dim, c.n_encoder_layers, c.dropout)
        self.basal_encoder = (mlp(c.input_dim, c.hidden_dim, c.hidden_dim, c.n_encoder_layers, c.dropout)
                              if c.use_basal_projection else nn.Linear(c.input_dim, c.hidden_dim))
        # Optional: batch (plate / gem group) as a learned offset, so technical shifts are not
        # attributed to the perturbation. Unknown batches at inference (index -1) get no offset.
        self.batch_encoder = nn.Embedding(c.batch_dim, c.hidden_dim) if c.batch_encoder and c.batch_dim else None
        self.transformer_backbone = SetTransformer(c)
        self.project_out = mlp(c.hidden_dim, c.hidden_dim, c.output_dim, c.n_decoder_layers, c.dropout)
        if c.output_space == "all" and c.predict_residual:
            # arc-state's low-rank refinement over all genes after the residual add (arc-state also
            # builds it without predict_residual, unused; left out so DDP has no unused parameters)
            self.final_down_then_up = nn.Sequential(
                nn.Linear(c.output_dim, max(c.output_dim // 8, 1)), nn.GELU(),
                nn.Linear(max(c.output_dim // 8, 1), c.output_dim),
            )
        self.apply(self._init_weights)
        if c.basal_residual:
            nn.init.zeros_(self.project_out[-1].weight)
            nn.init.zeros_(self.project_out[-1].bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Hugging Face's LlamaPreTrainedModel init (normal, std 0.02) for the backbone's projections;
        # the encoder/decoder MLPs keep PyTorch's default as in arc-state (built outside HF).
        if isinstance(module, (SetAttention, SwiGLU)):
            for p in module.parameters():
                nn.init.normal_(p, std=0.02)

    def forward(self, basal: torch.Tensor, pert: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        """basal [B, S, input_dim], pert [B, S, pert_dim], batch [B, S] long (-1 = unknown) -> [B, S, output_dim]."""
        control = self.basal_encoder(basal)
        tokens = self.pert_encoder(pert) + control
        if self.batch_encoder is not None and batch is not None:
            known = (batch >= 0).unsqueeze(-1).to(tokens.dtype)
            tokens = tokens + self.batch_encoder(batch.clamp_min(0)) * known
        hidden = self.transformer_backbone(tokens)
        c = self.config
        if c.predict_residual and c.output_space == "all":
            out = self.final_down_then_up(self.project_out(hidden) + basal)
        elif c.basal_residual:  # the delta head: basal cell + a shift that starts at 0
            out = basal + self.project_out(hidden + control if c.predict_residual else hidden)
        elif c.predict_residual:
            out = self.project_out(hidden + control)  # residual in the latent space, as arc-state
        else:
            out = self.project_out(hidden)
        return F.relu(out)  # log-normalised expression is non-negative

    @torch.no_grad()
    def init_output_bias(self, mean: torch.Tensor) -> None:
        """Bias of the layer before the final ReLU = `mean` [output_dim] (output_bias_init=mean)."""
        last = self.final_down_then_up[-1] if hasattr(self, "final_down_then_up") else self.project_out[-1]
        last.bias.copy_(mean.to(last.bias))

    def loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch dict from data.SentenceDataset -> (loss, pred [B, S, G])."""
        pred = self(batch["basal"], batch["pert"], batch.get("batch"))
        c = self.config
        return set_loss(pred, batch["target"], c.loss, c.blur, c.mean_mse_weight), pred

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------- checkpoint table
# arc-state (Lightning StateTransitionPerturbationModel, llama backbone) parameter names -> ours.
# Our module uses the same attribute names as arc-state and Hugging Face's LlamaModel, so the
# mapping is the identity except for what arc-state keeps and we do not:
ARC_STATE_SKIP: tuple[tuple[str, str], ...] = (
    (r"^transformer_backbone\.embed_tokens\.", "token embedding: zeroed and unused (cells enter as inputs_embeds)"),
    (r"^transformer_backbone\.rotary_emb\.", "rotary embedding: disabled in STATE (NoRoPE)"),
    (r"^gene_decoder\.", "latent-to-gene decoder: only for embedding-space training (embed_key), not supported here"),
    (r"^(confidence_token|batch_token|batch_classifier)\b", "optional heads of arc-state not in this model"),
    (r"^relu\.", "no parameters"),
)
# No renames and no transposes: nn.Linear weights are [out, in] on both sides.


def arc_state_to_ours(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip Lightning's 'model.' prefix if present (a state dict saved from a wrapper)."""
    if sd and all(k.startswith("model.") for k in sd):
        sd = {k[len("model."):]: v for k, v in sd.items()}
    return sd


def check_finite_params(model: nn.Module) -> None:
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"checkpoint holds NaN/inf weights in {len(bad)} tensors (first: {bad[0]}); "
                        "use an earlier checkpoint (checkpoints/step=N.ckpt)")

