"""The run configuration: the sections of arc-state's config (data, training, model) in its own key names,
the renames and redirects of its spellings, and the layered load."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftcore import options as opt
from ftcore.config import from_dict, layered_config, read_config_file
from ftcore.errors import UserError

from state_tx.data import DataKwargs
from state_tx.model import TUNABLE, StateTxConfig, preset_kwargs

MAX_BATCH = 65536


MAX_LR = 1e3  # above it a step overflows float32 arithmetic (torch: "cannot be converted ... without overflow")


LR_SCHEDULES = ("cosine", "constant")


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class DataSection:
    kwargs: DataKwargs = field(default_factory=DataKwargs)


@dataclass
class TrainingSection:
    """`training.*` (seed section 5.2 names; defaults of arc-state's training/default.yaml).

    Every number is finite and in range (field metadata, checked by ftcore.config when the keys are read).
    """

    max_steps: int = field(default=40000, metadata=opt.bounds(ge=1))
    # cell sentences per optimizer step (per process under torchrun); 65536 sentences of >= 2 cells is far
    # beyond any accelerator, and a larger value is a typo that would only hang the data loader
    batch_size: int = field(default=16, metadata=opt.bounds(ge=1, le=MAX_BATCH))
    lr: float = field(default=1e-4, metadata=opt.bounds(gt=0, le=MAX_LR))
    weight_decay: float = field(default=0.0005, metadata=opt.bounds(ge=0))
    ckpt_every_n_steps: int = field(default=2000, metadata=opt.bounds(ge=1))
    val_freq: int = field(default=2000, metadata=opt.bounds(ge=1))
    gradient_clip_val: float = field(default=10.0, metadata=opt.bounds(ge=0))  # 0 = no clipping
    warmup_steps: int = field(default=0, metadata=opt.bounds(ge=0))
    lr_schedule: str = "cosine"  # cosine (decay to 0 at max_steps) | constant (arc-state: Adam, fixed lr)
    train_seed: int = field(default=42, metadata=opt.bounds(ge=0, lt=opt.SEED_LIMIT))
    device: str = "auto"  # auto | cpu | cuda | cuda:1
    precision: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp32
    # torch.compile of the training step: graphs (default: compiled with CUDA graphs on CUDA, off on CPU) | auto (compiled
    # on CUDA) | on | off; state 27.2 eager -> 20.2 compiled -> 11.1 ms/step with CUDA graphs on an H200
    # (benchmarks/results/README.md)
    compile: Literal["auto", "on", "off", "graphs"] = "graphs"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"training.lr_schedule={self.lr_schedule!r}; choose {' or '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"training.precision={self.precision!r}; choose one of {', '.join(PRECISIONS)}")


@dataclass
class ModelSection:
    name: str = "state"  # preset: state_sm | state | state_lg (`model=state_sm`)
    kwargs: dict[str, Any] = field(default_factory=dict)  # overrides of the preset (model.kwargs.*)


@dataclass
class RunConfig:
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    model: ModelSection = field(default_factory=ModelSection)
    output_dir: str = "runs/state-tx"
    name: str = "state_tx"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


MODEL_EXTRA_KWARGS = ("init_from", "init_from_columns")  # model.kwargs that are not network sizes


# Keys users of arc-state type that this package handles differently: one line saying how.
REDIRECTS = {
    "wandb": "Weights & Biases logging is not part of state-tx (no network at run time); history.json and "
             "training_curve.png in output_dir/name hold the curves: drop the wandb.* overrides",
    "use_wandb": "Weights & Biases logging is not part of state-tx; drop use_wandb (curves are in training_curve.png)",
    "training.devices": "multi-GPU runs use torchrun: torchrun --nproc_per_node=4 -m state_tx.cli train ... "
                        "(drop training.devices / training.strategy)",
    "training.strategy": "multi-GPU runs use torchrun (DDP): torchrun --nproc_per_node=N -m state_tx.cli train ...",
    "data.kwargs.pin_memory": "pin_memory is not configurable here (batches are small dense tensors); drop it",
}


# Hydra's spelling of the preset (`model=state_sm`) for the field it sets (ftcore.config rename table)
RENAMES = {"model": "model.name"}


def check_redirects(overrides: list[str]) -> None:
    """Keys of arc-state that this package handles differently: one line saying how."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        for prefix, why in REDIRECTS.items():
            if key == prefix or key.startswith(prefix + "."):
                raise UserError(f"{key}: {why}")


def load_run_config(overrides: list[str] = (), config_file: str | None = None) -> RunConfig:
    """The run config: defaults < --config file (a run's config.yaml too) < the key=value overrides."""
    base = read_config_file(config_file) if config_file else None
    if base is not None:
        base.pop(DATA_FILES_KEY, None)  # a run's config.yaml read back: its record of the data files is not a setting
    check_redirects(list(overrides))
    cfg = layered_config(RunConfig, file=base, sets=list(overrides), renames=RENAMES,
                         source=config_file or "command line")
    preset_kwargs(cfg.model.name)  # unknown preset -> error now
    allowed = TUNABLE + MODEL_EXTRA_KWARGS
    for key in cfg.model.kwargs:
        if key not in allowed:
            import difflib

            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean model.kwargs.{close[0]}?" if close else f"known: {', '.join(allowed)}"
            raise UserError(f"unknown key model.kwargs.{key}; {hint}")
    columns = str(cfg.model.kwargs.get("init_from_columns", "name"))
    if columns not in INIT_FROM_COLUMNS:
        raise UserError(f"model.kwargs.init_from_columns={columns}: choose name (match one-hot columns by the "
                        "source run's maps, the default) or position (take them in the checkpoint's order)")
    model_config(cfg, 1, 1, 0)  # the network sizes, typed and bounded now (the data's dimensions come later)
    # paths as a shell would expand them (a `~` kept literally would become a folder named ~ in the cwd)
    cfg.output_dir = _expand(cfg.output_dir)
    kw = cfg.data.kwargs
    # absolute, so that `predict` finds it again from another working directory
    kw.toml_config_path = os.path.abspath(_expand(kw.toml_config_path)) if str(kw.toml_config_path or "").strip() \
        else kw.toml_config_path
    if kw.perturbation_features_file:
        kw.perturbation_features_file = _expand(kw.perturbation_features_file)
    if cfg.model.kwargs.get("init_from"):
        cfg.model.kwargs["init_from"] = _expand(str(cfg.model.kwargs["init_from"]))
    if not str(cfg.name).strip():
        raise UserError("name is empty; give the run a name (name=exp1): the run directory is output_dir/name")
    if not str(cfg.output_dir).strip():
        raise UserError("output_dir is empty; give a directory (output_dir=results)")
    return cfg


def _expand(path: str) -> str:
    text = str(path).strip()
    return os.path.expanduser(os.path.expandvars(text)) if text else text


def model_config(cfg: RunConfig, input_dim: int, pert_dim: int, batch_dim: int) -> StateTxConfig:
    """Preset sizes, then model.kwargs (typed and checked by the core), then the data's dimensions."""
    sizes = {k: v for k, v in cfg.model.kwargs.items() if k not in MODEL_EXTRA_KWARGS}
    data = {**preset_kwargs(cfg.model.name), **sizes, "input_dim": input_dim, "output_dim": input_dim,
            "pert_dim": pert_dim, "batch_dim": batch_dim, "output_space": cfg.data.kwargs.output_space}
    return from_dict(StateTxConfig, data, source="model.kwargs")


def to_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


# config.yaml is the run config (every key; reusable with --config) plus `data_files`: the path, size and
# sha256 of the TOML and the .h5ad files the run read (ftcore.rundir.file_identity), dropped when read back.
DATA_FILES_KEY = "data_files"


INIT_FROM_COLUMNS = ("name", "position")
