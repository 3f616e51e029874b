"""GET region model with a yeast experimental-condition encoder, in one file.

    region_motif [B, R, M] --region_embed--> [B, R, D]
    conditions (medium, temperature, pre-culture, drug, carbon/nitrogen) --condition_encoder--> [B, C]
    fusion: x + MLP([x, cond]) --> [B, R, D]          (the seed found GET's forward ignored conditions)
    [cls; x] --encoder (pre-norm ViT blocks)--> [B, 1 + R, D] --drop cls--> head_exp --softplus--> [B, R, output_dim]

Parameter names follow GET's `GETRegionFinetune` (GET-Foundation/get_model). GET's other writers
(the released MAE-era `checkpoint-799.pth`, Lightning `.ckpt`, paper-era fine-tuned files) use other
names; `load_pretrained` detects and renames them with the table in layouts.py. GETRegionFinetune's names:

    GET checkpoint key                         here                                 shape (released)
    region_embed.embed.{weight,bias}           same                                 [768, 283], [768]
    cls_token                                  same (newer GET; older files lack it) [1, 1, 768]
    encoder.blocks.{i}.norm1.{weight,bias}     same                                 [768]
    encoder.blocks.{i}.attn.qkv.weight         same (no bias: q_bias/v_bias below)  [2304, 768]
    encoder.blocks.{i}.attn.{q_bias,v_bias}    same                                 [768]
    encoder.blocks.{i}.attn.proj.{weight,bias} same                                 [768, 768]
    encoder.blocks.{i}.norm2.{weight,bias}     same                                 [768]
    encoder.blocks.{i}.mlp.fc1.{weight,bias}   same                                 [3072, 768]
    encoder.blocks.{i}.mlp.fc2.{weight,bias}   same                                 [768, 3072]
    encoder.norm.{weight,bias}                 same                                 [768]
    head_exp.head.{weight,bias}                same (1 output: the + strand row)    [2, 768] (two strands)
    mask_token, head_mask.*, head_atac.*       skipped (pretraining heads)          -

condition_encoder.* and fusion.* are new (never in a GET checkpoint) and keep their initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ftcore.checkpoint import read_state_dict
from ftcore.errors import UserError
from ftcore.loading import LoadReport, load_partial
from ftcore.options import bounds
from get_yeast.layouts import (GET_PRETRAINING_SKIP, LAYOUT_NAMES, PRETRAINED_PARTS, map_to_get_yeast,
                               pretrained_coverage)


# --------------------------------------------------------------------------- configuration
@dataclass
class RegionModelConfig:
    """GET region model sizes. Defaults are the released model; `tiny()` is the test/demo size."""

    num_features: int = field(default=283, metadata=bounds(ge=2))  # per region: motif-cluster scores + 1 accessibility value (last)
    embed_dim: int = field(default=768, metadata=bounds(ge=1))
    num_layers: int = field(default=12, metadata=bounds(ge=1))
    num_heads: int = field(default=12, metadata=bounds(ge=1))
    mlp_ratio: float = field(default=4.0, metadata=bounds(gt=0))
    dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))  # GET's `dropout` is the stochastic-depth (drop path) rate
    output_dim: int = field(default=1, metadata=bounds(ge=1))  # released GET predicts 2 (both strands); one column per target here
    head_hidden_dim: int = field(default=0, metadata=bounds(ge=0))  # 0: GET's single Linear head (loads from a checkpoint); >0: two-layer MLP

    @classmethod
    def tiny(cls, num_features: int = 24) -> "RegionModelConfig":
        return cls(num_features=num_features, embed_dim=32, num_layers=2, num_heads=4, dropout=0.0)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise UserError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_features < 2:
            raise UserError("num_features must be >= 2 (motif scores + accessibility)")
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise UserError(f"region_model.mlp_ratio {self.mlp_ratio:g} leaves no MLP unit at embed_dim {self.embed_dim} "
                            "(GET: 4.0)")


@dataclass
class ConditionConfig:
    """Vocabularies and ranges of the experimental conditions (extend the lists for new media etc.)."""

    enabled: bool = True  # false: a condition-blind model (the baseline the demo compares against)
    embed_dim: int = field(default=64, metadata=bounds(ge=1))
    media: list[str] = field(default_factory=lambda: ["SC", "YPD", "unknown"])
    carbon_sources: list[str] = field(default_factory=lambda: ["glucose", "galactose", "raffinose", "glycerol", "ethanol"])
    nitrogen_sources: list[str] = field(default_factory=lambda: ["ammonium_sulfate", "glutamine", "proline", "urea"])
    temperature_range: list[float] = field(default_factory=lambda: [20.0, 45.0])  # degrees C
    max_od600: float = field(default=3.0, metadata=bounds(gt=0))  # pre-culture end point; the seed: 0.x, never above 3
    preculture_hours_scale: float = field(default=4.0, metadata=bounds(gt=0))  # typical pre-culture 3-4 h -> ~1
    drug_hours_scale: float = field(default=4.0, metadata=bounds(gt=0))
    log10_molar_center: float = -4.0  # drug concentration enters as (log10 M - center) / scale
    log10_molar_scale: float = field(default=2.0, metadata=bounds(gt=0))
    # dropout on the condition embedding [B, C] in training: a few dozen training conditions are easily memorised
    dropout: float = field(default=0.2, metadata=bounds(ge=0, lt=1) | {"optional": True})

    def __post_init__(self) -> None:
        if len(self.temperature_range) != 2 or not self.temperature_range[0] < self.temperature_range[1]:
            raise UserError(f"condition.temperature_range {self.temperature_range} should be [low, high] in degrees C "
                            "with low < high")
        for key in ("media", "carbon_sources", "nitrogen_sources"):
            names = [str(n).strip().lower() for n in getattr(self, key)]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:
                raise UserError(f"condition.{key} lists {twice[0]!r} twice (names are compared ignoring case); list it once")
        if not self.media:
            raise UserError("condition.media is empty; list the media of the samples (e.g. [SC, YPD, unknown])")


@dataclass
class FusionConfig:
    hidden_dim: int = field(default=256, metadata=bounds(ge=1))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1) | {"optional": True})  # on the added condition term, in training


@dataclass
class YeastModelConfig:
    """yeast_model.yaml: the whole architecture."""

    region_model: RegionModelConfig = field(default_factory=RegionModelConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        rm, d = self.region_model, self.region_model.embed_dim
        params = (rm.num_layers * (4 + 2 * rm.mlp_ratio) * d * d + rm.num_features * d + d * rm.head_hidden_dim
                  + (d + self.condition.embed_dim) * self.fusion.hidden_dim + self.fusion.hidden_dim * d)
        if params > MAX_PARAMETERS:  # caught here, not as an allocator traceback minutes later
            raise UserError(f"the model config describes about {params:.2g} parameters (region_model.embed_dim {d}, "
                            f"num_layers {rm.num_layers}; the released GET has 8.6e+07); is a size mistyped?")


MAX_PARAMETERS = 2e9  # 8 GB of float32 weights, before gradients and optimizer state


# Numeric condition features, in the column order of `conditions["numeric"]`. Temperature is
# required; the others may be missing (then their learned "unknown" embedding is used instead).
NUMERIC_FEATURES = ("temperature", "preculture_hours", "preculture_od600", "drug_log10_molar", "drug_hours")


# --------------------------------------------------------------------------- GET region model
def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample (GET's `dropout`)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class RegionEmbed(nn.Module):
    """[B, R, num_features] motif + accessibility -> [B, R, D]: one Linear applied per region."""

    def __init__(self, num_features: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Linear(num_features, embed_dim)

    def forward(self, region_motif: torch.Tensor) -> torch.Tensor:
        return self.embed(region_motif)


class Attention(nn.Module):
    """GET's attention: a fused bias-free qkv Linear plus separate q/v biases (k has none)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, N, D]; key_padding [B, N] bool, True = padded position (ignored as a key)."""
        B, N, D = x.shape
        # GET calls F.linear(x, qkv.weight, bias) directly; calling the module instead (same result)
        # lets a LoRA adapter wrapped around `qkv` take part in the forward pass.
        qkv = self.qkv(x) + torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_padding is None else ~key_padding[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (GET/ViT)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x), key_padding), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class Encoder(nn.Module):
    """GETTransformer: blocks with linearly increasing drop-path rate, then a final LayerNorm."""

    def __init__(self, cfg: RegionModelConfig):
        super().__init__()
        rates = torch.linspace(0, cfg.dropout, cfg.num_layers).tolist()
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_padding)
        return self.norm(x)


class ExpressionHead(nn.Module):
    """[B, R, D] -> [B, R, output_dim]; GET's `head` Linear, or a two-layer MLP when configured."""

    def __init__(self, cfg: RegionModelConfig):
        super().__init__()
        if cfg.head_hidden_dim > 0:
            self.head = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.head_hidden_dim), nn.ReLU(),
                                      nn.Linear(cfg.head_hidden_dim, cfg.output_dim))
        else:
            self.head = nn.Linear(cfg.embed_dim, cfg.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


# --------------------------------------------------------------------------- yeast conditions
class ConditionEncoder(nn.Module):
    """Experimental condition of each sample -> [B, C].

    Inputs (a dict, see `data.encode_conditions`):
        medium [B] long, drug [B] long (0 = "none", 1 = unseen/unknown drug), carbon [B] long,
        nitrogen [B] long (0 = not given), numeric [B, 5] float (NUMERIC_FEATURES, normalised),
        numeric_present [B, 5] bool.
    A missing numeric value contributes its own learned "unknown" embedding instead of the value
    0, which would otherwise read as "0 h pre-culture" or "OD600 = 0".
    """

    def __init__(self, cfg: ConditionConfig, n_drugs: int):
        super().__init__()
        C = cfg.embed_dim
        self.medium_emb = nn.Embedding(len(cfg.media), C)
        self.drug_emb = nn.Embedding(n_drugs, C)
        self.carbon_emb = nn.Embedding(len(cfg.carbon_sources) + 1, C)  # index 0 = not given
        self.nitrogen_emb = nn.Embedding(len(cfg.nitrogen_sources) + 1, C)
        self.numeric_proj = nn.Linear(len(NUMERIC_FEATURES), C)
        self.numeric_unknown = nn.Parameter(torch.randn(len(NUMERIC_FEATURES), C) * 0.02)
        self.mlp = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), nn.Linear(C, C))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        present = cond["numeric_present"].to(self.numeric_proj.weight.dtype)  # [B, 5]
        numeric = self.numeric_proj(cond["numeric"] * present) + (1 - present) @ self.numeric_unknown
        e = (self.medium_emb(cond["medium"]) + self.drug_emb(cond["drug"]) + self.carbon_emb(cond["carbon"])
             + self.nitrogen_emb(cond["nitrogen"]) + numeric)
        return self.dropout(self.mlp(e))


class ConditionFusion(nn.Module):
    """Concatenate the condition embedding to every region embedding; a two-layer MLP of the pair is
    added back to the region embedding (residual, so a pretrained encoder still sees its inputs)."""

    def __init__(self, embed_dim: int, cond_dim: int, hidden_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim + cond_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.dropout = nn.Dropout(dropout)  # on the added condition term, in training

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, R, D], cond [B, C] -> [B, R, D]"""
        c = cond[:, None, :].expand(-1, x.shape[1], -1)
        return x + self.dropout(self.net(torch.cat([x, c], dim=-1)))


class GETYeast(nn.Module):
    """GET region model + condition encoder + fusion. forward(region_motif, conditions, padding)."""

    def __init__(self, cfg: YeastModelConfig, n_drugs: int):
        super().__init__()
        self.config = cfg
        rm = cfg.region_model
        self.region_embed = RegionEmbed(rm.num_features, rm.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, rm.embed_dim))
        self.encoder = Encoder(rm)
        self.head_exp = ExpressionHead(rm)
        if cfg.condition.enabled:
            self.condition_encoder = ConditionEncoder(cfg.condition, n_drugs)
            self.fusion = ConditionFusion(rm.embed_dim, cfg.condition.embed_dim, cfg.fusion.hidden_dim, cfg.fusion.dropout)
        self.apply(init_weights)
        if cfg.condition.enabled:
            # Start the fusion branch small: the pretrained encoder first sees nearly its own inputs.
            with torch.no_grad():
                self.fusion.net[-1].weight.mul_(0.1)

    def forward(self, region_motif: torch.Tensor, conditions: dict[str, torch.Tensor] | None = None,
                padding: torch.Tensor | None = None) -> torch.Tensor:
        """region_motif [B, R, M], conditions (see ConditionEncoder), padding [B, R] bool (True = no region)
        -> expression [B, R, output_dim], non-negative."""
        x = self.region_embed(region_motif)
        if self.config.condition.enabled:
            x = self.fusion(x, self.condition_encoder(conditions))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if padding is not None:
            padding = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)
        x = self.encoder(x, padding)[:, 1:]
        return F.softplus(self.head_exp(x))


def init_weights(m: nn.Module) -> None:
    """GET's init: xavier-uniform Linear weights, zero biases, LayerNorm ones/zeros."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


# --------------------------------------------------------------------------- checkpoint mapping
# GET's layouts (checkpoint-799, Lightning .ckpt, paper-era fine-tuned, GETRegionFinetune's own names)
# are the table in layouts.py; pretraining-only parts are skipped with a reason.
GET_CHECKPOINT_SKIP = GET_PRETRAINING_SKIP


def load_pretrained(model: GETYeast, path: str, *, trust_pickle: bool = False, key: str | None = None,
                    renames: tuple = (), verbose: bool = True) -> LoadReport:
    """Load a GET checkpoint into `model`: detect its layout from the names, rename onto ours (after the
    user's `renames`, see layouts.parse_renames), load non-strictly; print and return the report.

    The report also carries `report.layout` (layout name, renames applied) for load_report.json.
    Refused: a file none of whose tensors fits, and a file of no known layout that does not supply
    every pretrained tensor (region_embed, cls_token, encoder), since training around it would be silent.
    """
    raw = read_state_dict(path, trust_pickle=trust_pickle, key=key)
    mapped = map_to_get_yeast(raw, str(path), tuple(renames))
    if verbose:
        print(mapped.describe())
    tensors = _sense_strand_head(model, mapped.tensors, verbose)
    report = load_partial(model, tensors, skip=GET_CHECKPOINT_SKIP, source=f"GET checkpoint {path}",
                          target="GET-yeast model", verbose=verbose)
    report.skipped.update(mapped.dropped)
    report.layout = mapped.to_dict()
    if not report.loaded:
        raise UserError(
            f"{path}: none of its {len(raw)} tensors matches the GET region model by name and shape "
            f"(first key: {next(iter(raw))}; layout: {mapped.layout_name}); is it a GET checkpoint of this size "
            "(yeast_model.yaml region_model)? Other names: map them with pretrained.renames in the training config"
        )
    unfit = [k for k in report.not_in_model if k.startswith(PRETRAINED_PARTS)] + \
        [k for k, _, _ in report.shape_mismatch if k.startswith(PRETRAINED_PARTS)]
    if unfit:  # pretrained GET weights would be dropped without a word: a checkpoint of another size
        raise UserError(f"{path}: {len(unfit)} pretrained tensors do not fit the model (first: {unfit[0]}); the checkpoint "
                        f"is {_get_sizes(tensors)}, the model {_get_sizes(model.state_dict())}: set region_model in the "
                        "model config to the checkpoint's sizes")
    coverage = pretrained_coverage(list(model.state_dict()), report.loaded)
    missing = {part: c for part, c in coverage.items() if c[0] < c[1]}
    if missing:
        parts = ", ".join(f"{part} {done}/{total}" for part, (done, total) in missing.items())
        if mapped.layout is None:
            raise UserError(
                f"{path}: no GET layout recognised in its names ({', '.join(LAYOUT_NAMES)}) and the pretrained parts "
                f"load only in part ({parts} tensors); map its names onto GET's with pretrained.renames in the "
                "training config (e.g. renames: [[backbone.blocks., encoder.blocks.]])"
            )
        if verbose:
            print(f"⚠ pretrained parts not fully loaded from {path} ({mapped.layout_name}): {parts} tensors")
    return report

def _get_sizes(tensors: dict) -> str:
    """'num_layers 2, embed_dim 8, num_features 24': what a GET state dict's names and shapes say."""
    layers = {k.split(".")[2] for k in tensors if k.startswith("encoder.blocks.")}
    embed = tensors.get("region_embed.embed.weight")
    sizes = [f"num_layers {len(layers)}"]
    if embed is not None and embed.ndim == 2:
        sizes += [f"embed_dim {embed.shape[0]}", f"num_features {embed.shape[1]}"]
    return ", ".join(sizes)


def _sense_strand_head(model: GETYeast, tensors: dict, verbose: bool) -> dict:
    """Released GET heads predict 2 outputs (+ and - strand); a 1-output yeast head starts from the
    + strand row instead of a random init (the output conversion the seed did by hand)."""
    own = model.state_dict()
    keys = ("head_exp.head.weight", "head_exp.head.bias")
    if all(k in tensors and k in own for k in keys) and own[keys[0]].shape[0] == 1 and tensors[keys[0]].shape[0] == 2 \
            and tensors[keys[0]].shape[1:] == own[keys[0]].shape[1:]:
        tensors = dict(tensors, **{k: tensors[k][:1] for k in keys})
        if verbose:
            print("ℹ head_exp.head: the checkpoint's 2-strand head -> 1 output, starting from its + strand row")
    return tensors
