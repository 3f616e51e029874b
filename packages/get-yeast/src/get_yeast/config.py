"""yeast_training.yaml and yeast_model.yaml as dataclasses, checked once on load.

The seed lost a day to keys the code read but the file lacked (`task`, `warmup_epochs`,
`max_epochs` vs `epochs`, `batch_size` under the wrong section). Here a config FILE must contain
every key the code reads: a missing key and an unknown key are both errors naming the key.
Defaults on the dataclasses serve programmatic use (tests) only.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ftcore.config import apply_flags, from_dict, merge, merge_layers, nest
from ftcore.errors import UserError
from ftcore.options import SEED_LIMIT, bounds
from get_yeast.data import OPTIONAL, DataConfig
from get_yeast.layouts import parse_renames
from get_yeast.model import YeastModelConfig


@dataclass
class ExperimentConfig:
    name: str = "yeast_lora_finetune"
    seed: int = field(default=42, metadata=bounds(ge=0, lt=SEED_LIMIT))


# OPTIONAL (get_yeast.data): keys added after the file format was fixed; a file may leave them out (older
# copies of yeast_training.yaml keep working); every other key must be present.


@dataclass
class PretrainedConfig:
    checkpoint: str | None = None  # a GET checkpoint (e.g. checkpoint-799.pth); None: needs from_scratch under LoRA
    key: str | None = None  # entry holding the weights; None: found automatically ('model', 'state_dict')
    # User rename table applied before GET's layouts are detected (layouts.parse_renames):
    # [[from_prefix, to_prefix], ...] or {from_prefix: to_prefix}; '' strips, null drops.
    renames: Any = field(default=None, metadata=OPTIONAL)
    # No checkpoint on purpose: every weight starts at its random initialisation (CLI --from-scratch).
    from_scratch: bool = field(default=False, metadata=OPTIONAL)


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = field(default=8, metadata=bounds(ge=1))
    alpha: int = field(default=16, metadata=bounds(gt=0))
    dropout: float = field(default=0.05, metadata=bounds(ge=0, lt=1))
    # Module names (suffixes) of the GET encoder's attention/MLP Linears and the expression head.
    target_modules: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "head_exp.head"])


@dataclass
class TrainingConfig:
    """Optimisation, in the core Trainer's words (epochs, not max_epochs; warmup in steps)."""

    epochs: int = field(default=30, metadata=bounds(ge=0))
    max_steps: int | None = field(default=None, metadata=bounds(ge=1))
    batch_size: int = field(default=16, metadata=bounds(ge=1))  # per process (per GPU under torchrun)
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    weight_decay: float = field(default=0.01, metadata=bounds(ge=0))
    warmup_steps: int = field(default=20, metadata=bounds(ge=0))
    schedule: str = "cosine"
    grad_clip: float | None = field(default=1.0, metadata=bounds(gt=0))
    precision: str = "auto"
    patience: int | None = field(default=10, metadata=bounds(ge=1))  # validations without val_loss improvement before stopping
    val_every_steps: int | None = field(default=None, metadata=bounds(ge=1))
    ckpt_every_steps: int | None = field(default=None, metadata=bounds(ge=1))
    device: str = "auto"
    # torch.compile of the training step (off | on | auto: on CUDA | graphs: auto + CUDA graphs, 43.8 -> 35.0 ms/step
    # on an H200, benchmarks/results/README.md); optional, so older files still load
    compile: Literal["auto", "on", "off", "graphs"] = field(default="graphs", metadata=OPTIONAL)


@dataclass
class TaskConfig:
    """What the run produces besides the checkpoints."""

    save_predictions: bool = True
    interpret: bool = True  # permutation importance of each condition feature
    permutation_repeats: int = field(default=3, metadata=bounds(ge=1))
    export_merged: bool = True  # LoRA merged into the base weights -> merged_model.safetensors


@dataclass
class YeastTrainingConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model_config: str = "yeast_model.yaml"  # relative to this file's folder
    pretrained: PretrainedConfig = field(default_factory=PretrainedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    task: TaskConfig = field(default_factory=TaskConfig)


def packaged_config(name: str) -> Path:
    """Path of a config shipped in the package (yeast_training.yaml, yeast_model.yaml, yeast_model_tiny.yaml)."""
    return Path(str(resources.files("get_yeast") / "config" / name))


def require_all_keys(cls: type, data: dict, source: str, prefix: str = "") -> None:
    """Every field of dataclass `cls` (recursively) must be present in `data`."""
    if not isinstance(data, dict):
        return  # from_dict reports the wrong type
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data and f.metadata.get("optional"):
            continue
        if f.name not in data:
            raise UserError(f"{source}: missing key '{prefix}{f.name}'; every key the code reads must be in the file "
                            f"(see the packaged {'yeast_model.yaml' if cls.__module__.endswith('model') else 'yeast_training.yaml'})")
        if dataclasses.is_dataclass(hints[f.name]):
            require_all_keys(hints[f.name], data[f.name], source, f"{prefix}{f.name}.")


def _load(cls, path: Path, overrides: list[str], flags: dict | None = None):
    """The file < --set < flags (ftcore.config); unknown keys (typos) and bad values first, then the file
    (with its --set items) must hold every key the code reads."""
    layers = merge_layers(cls, file=path, sets=overrides, source=str(path))  # duplicate keys refused, a BOM ignored
    cfg = from_dict(cls, layers.data, str(path))
    require_all_keys(cls, merge(layers.data, nest(flags or {})), str(path))  # a flag supplies its key
    return apply_flags(cfg, flags)


def user_path(text: str, base: Path | None = None) -> Path:
    """A path written in a config file: `~` and $VARS expanded; relative ones from `base` (the file's folder)."""
    path = Path(os.path.expandvars(str(text).strip())).expanduser()
    return path if base is None or path.is_absolute() else base / path


def load_training_config(path: str | Path | None, overrides: list[str] = (),
                         flags: dict | None = None) -> tuple[YeastTrainingConfig, Path]:
    """(config, its folder). `overrides` like 'training.lr=1e-4'; `flags` like {'training.epochs': 3} (None: not
    given; they win over the file and the overrides); the packaged file when path is None."""
    path = user_path(path) if path is not None else packaged_config("yeast_training.yaml")
    cfg = _load(YeastTrainingConfig, path, list(overrides), flags)
    parse_renames(cfg.pretrained.renames, f"{path}: pretrained.renames")  # checked here, once
    if cfg.pretrained.checkpoint is not None:
        if not str(cfg.pretrained.checkpoint).strip():
            raise UserError(f"{path}: pretrained.checkpoint is empty; give the GET checkpoint's path or null")
        cfg.pretrained.checkpoint = str(user_path(cfg.pretrained.checkpoint))  # relative: to the working directory
    return cfg, path.parent


def load_model_config(path: str | Path, overrides: list[str] = ()) -> YeastModelConfig:
    return _load(YeastModelConfig, user_path(path), list(overrides))


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """--set items: 'model.X=...' go to yeast_model.yaml (prefix removed), the rest to yeast_training.yaml."""
    model = [o[len("model."):] for o in overrides if o.startswith("model.")]
    return [o for o in overrides if not o.startswith("model.")], model
