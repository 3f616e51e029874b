"""Model configuration of var-st: one dataclass per stage, and the named sizes.

    VQVAEConfig     stage 1 (the seed's sizes are the defaults)
    VARConfig       stage 2
    PRESETS         "full" (the user's guide) and "demo" (the CPU demo)
    RunSettings     one stage's run (epochs, batch size, lr, ...: the command line's; `run` in run_config.yaml)

Bounds on the fields are checked by `ftcore.config.from_dict` (files, --set overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ftcore import options as opt
from ftcore.config import from_dict
from ftcore.errors import UserError


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
    # dropout): coordinates rarely carry over between slides, yet with them a spot can be memorised.
    # 1 = the coordinates never enter the condition (training and prediction): histology alone
    coord_dropout: float = _b(0.0, ge=0, le=1)
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
    # stage-2 training: weight of the mean squared error between the expected-code decoding (the default
    # prediction, rolled out scale by scale, gradients through every scale's code probabilities and the
    # frozen decoder) and the spot's standardised expression, added to the token cross-entropy. 0 = tokens
    # alone (VAR); > 0 trains the token distributions for the point prediction predict writes
    expected_loss_weight: float = _b(0.0, ge=0, le=1000)
    # stage-2 training targets: the stage-1 tokens of each training spot's expression averaged over its k
    # nearest spots of the same slide (itself included; 1 = its own): counting noise is independent per spot
    # while the programs vary smoothly in space, so the averaged profile's tokens are what histology predicts
    target_smoothing_spots: int = _b(1, ge=1, le=1000)
    # the condition path (all off by default, round 4 of the demo probes): condition_to_tokens adds a linear
    # map of the condition to every token's embedding (not only the start token and the norms);
    # adaln_init_std > 0 starts the AdaLN modulations (scale, shift, gates) from N(0, std) weights instead of
    # zeros (AdaLN-Zero: every block starts as the identity); condition_layers = the number of GELU + linear
    # layers of the condition MLP (1 as before); histology_standardise z-scores each histology feature with the
    # training spots' mean and sd (as ridge's StandardScaler does) before the projection
    condition_to_tokens: bool = False
    adaln_init_std: float = _b(0.0, ge=0, le=10)
    condition_layers: int = _b(1, ge=1, le=16)
    histology_standardise: bool = False

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


@dataclass
class RunSettings:
    """How one stage is trained: the keyword arguments of ftcore's TrainConfig that the command line sets
    (checked there, once: `var-st train --epochs/--batch_size/--lr/--max_steps/--patience/--seed/--gpus`)."""

    epochs: int
    batch_size: int
    lr: float
    max_steps: int | None = None
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    compile: str = "graphs"
    # further TrainConfig fields for library callers (weight_decay, precision, schedule, ...); the CLI sets none
    trainer: dict = field(default_factory=dict)

    @classmethod
    def of(cls, run: "RunSettings | Mapping") -> "RunSettings":
        """A RunSettings as it is, or one from a mapping (the API before the dataclass): its own fields, and
        any other key goes to `trainer` (TrainConfig checks the names and values)."""
        if isinstance(run, cls):
            return run
        own = {f.name for f in cls.__dataclass_fields__.values()} - {"trainer"}
        run = dict(run)
        extra = {**run.pop("trainer", {}), **{k: run.pop(k) for k in list(run) if k not in own}}
        from ftcore.config import check_keys
        from ftcore.training import TrainConfig

        check_keys(TrainConfig, extra, "run settings")  # a misspelt key is an error with a did-you-mean
        return cls(**run, trainer=extra)

    def record(self) -> dict:
        """What run_config.yaml's `run` section holds (`trainer` only where it was given)."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        if not out["trainer"]:
            del out["trainer"]
        return out


def _as_config(cls, value, name: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, dict(value), source=name)
    raise UserError(f"{name} must be a dict or {cls.__name__}, got {type(value).__name__}")


__all__ = ["VQVAEConfig", "VARConfig", "PRESETS", "RunSettings"]
