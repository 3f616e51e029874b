"""The run configuration: the config file's sections (model, graph, bulk, spatial) and the run's
settings, with their bounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ftcore.errors import UserError
from ftcore.options import SEED_LIMIT, bounds

from spatial_transfer.data import GraphConfig
from spatial_transfer.model import Cell2GeneConfig


@dataclass
class TrainSettings:
    """One training job's hyper-parameters (guide: batch 16, 70 epochs, wd 1e-5, patience 5)."""

    # no step budget here: 0 epochs would "cross-validate" untrained models, so at least one
    epochs: int = field(default=70, metadata=bounds(ge=1))
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    # None: the strategy's default (STRATEGY_LR); bulk pretraining 1e-4
    lr: float | None = field(default=None, metadata=bounds(gt=0))
    weight_decay: float = field(default=1e-5, metadata=bounds(ge=0))
    patience: int | None = field(default=5, metadata=bounds(ge=1))
    min_delta: float = field(default=1e-6, metadata=bounds(ge=0))
    warmup_steps: int = field(default=0, metadata=bounds(ge=0))
    # extra resume points inside an epoch (default: end of each epoch)
    ckpt_every_steps: int | None = field(default=None, metadata=bounds(ge=1))


@dataclass
class RunConfig:
    """Everything a run needs besides the data, the strategy and the CV plan (config file sections)."""

    model: Cell2GeneConfig = field(default_factory=Cell2GeneConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    bulk: TrainSettings = field(default_factory=TrainSettings)
    spatial: TrainSettings = field(default_factory=TrainSettings)
    folds: int = field(default=10, metadata=bounds(ge=2))  # k-fold needs a test and a training part
    seed: int = field(default=42, metadata=bounds(ge=0, lt=SEED_LIMIT))
    device: str = "auto"
    # torch.compile of the training step: off by default (auto = on CUDA | on | graphs). The forward is one graph
    # (4.5x per step with graphs on a fixed batch, H200), but the batches change shape every step and a short run
    # spends longer recompiling than it saves (benchmarks/results/README.md)
    compile: Literal["auto", "on", "off", "graphs"] = "off"
    progress: bool = True
    # transfer: the bulk head's rows of the genes both panels share go into the spatial head (by gene name)
    head_from_bulk: bool = True

    def __post_init__(self) -> None:
        from ftcore.training import resolve_device

        try:
            resolve_device(self.device)
        except UserError as err:
            raise UserError(f"device: {err}") from None
