"""The one training loop every package uses.

    trainer = Trainer(model, TrainConfig(output_dir="runs/x", epochs=20, lr=1e-4),
                      train_data, val_data, loss_fn=my_loss, eval_fn=my_eval)
    result = trainer.fit()

`loss_fn(model, batch) -> loss` (or `(loss, {"name": float})`, averaged over the stretch into the
history as `train_name`) and
`eval_fn(model, loader) -> {"val_loss": ..., "val_pearson": ...}` are the only model-specific
parts. The loop gives AdamW with warmup + cosine, gradient clipping, bf16 autocast on GPU,
early stopping, atomic best/last checkpoints, exact resume (model, optimizer, scheduler, RNG,
step, position in the epoch), history JSON, a training-curve PNG, a progress bar, seeding, and
DDP under torchrun (rank 0 writes; every rank validates on the full validation set so metrics
such as Pearson need no gathering and early-stopping decisions agree without communication).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ftcore.distributed import DistEnv, EpochSampler, all_reduce_sum, barrier, init_distributed
from ftcore.errors import UserError
from ftcore.io import atomic_torch_save, atomic_write_json, check_output_dir
from ftcore.plotting import plot_training_curve

LossFn = Callable[[nn.Module, Any], Any]
EvalFn = Callable[[nn.Module, DataLoader], Mapping[str, float]]


CURVE_EVERY_S = 30.0  # least seconds between two redraws of the training curve during a run (always at the end)


COMPILE_CHOICES = ("auto", "on", "off", "graphs")
COMPILE_SAID = "auto, on or off, or graphs (auto with CUDA graphs)"


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (STATE-style step budgets)
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
    device: str = "auto"
    seed: int = 0
    monitor: str = "val_loss"
    mode: str = "min"  # min | max
    patience: int | None = None  # validations without improvement before stopping
    min_delta: float = 0.0
    val_every_steps: int | None = None  # None: validate once per epoch
    ckpt_every_steps: int | None = None  # extra mid-epoch checkpoints (also named by step_name)
    num_workers: int = 0
    shuffle: bool = True
    drop_last: bool = False
    resume: bool = True  # continue from last_name if it exists
    progress: bool = True
    ddp_find_unused: bool = False
    best_name: str | None = "best.pt"
    # after fit, load best_name's weights into the model (every rank), so it holds the best validation, not
    # the last step; without a best file (no finite metric yet) the model keeps its last weights
    restore_best: bool = False
    last_name: str = "last.pt"
    epoch_name: str | None = None  # e.g. "checkpoint_epoch_{epoch}.pth"
    step_name: str | None = None  # e.g. "step={step}.ckpt"
    history_name: str = "history.json"
    # the same records as CSV, rewritten with history.json (a column per key seen so far): "auto" = history_name
    # with .csv (history.csv); None = no CSV
    csv_name: str | None = "auto"
    # TensorBoard event files (ftcore's optional extra `tensorboard`): written only when torch.utils.tensorboard
    # imports; None = never. Relative to output_dir like every name here
    tensorboard_dir: str | None = "tensorboard"
    curve_name: str | None = "training_curve.png"
    # torch.compile of the loss computation (model forward + loss): off (default) | on | auto = on CUDA only.
    # 1.5-2.1x faster steps on an H200 (benchmarks/results/README.md), so the packages whose GPU tests pass
    # compiled (state-tx, var-st, get-yeast) default to auto. The library default stays off: a loss function
    # with Python side effects (a counter) failed inside dynamo on the H200 (torch 2.11).
    # graphs = auto + CUDA graphs (torch.compile mode "reduce-overhead": the step's kernels replayed as one graph,
    # which removes the launch gaps of many small kernels); off on CPU like auto; plain compile under DDP
    compile: str = "off"
    # steps between host synchronisations (loss read back, NaN check, progress bar); None: 1 on CPU, 25 on CUDA,
    # where reading the loss every step stalls the GPU queue
    sync_every_steps: int | None = None

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose cosine or constant")
        if self.mode not in ("min", "max"):
            raise UserError(f"unknown mode {self.mode!r}; choose min or max")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"unknown precision {self.precision!r}; choose auto, bf16 or fp32")
        if self.batch_size < 1 or self.epochs < 0 or self.lr <= 0:
            raise UserError("batch_size must be >= 1, epochs >= 0 and lr > 0")
        # NaN passes every comparison above: each float setting must be a finite number
        for name in ("lr", "weight_decay", "min_lr_ratio", "grad_clip", "min_delta"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"{name} must be a finite number, got {value}")
        if self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise UserError("weight_decay must be >= 0 and min_lr_ratio between 0 and 1")
        for name in ("max_steps", "patience", "val_every_steps", "ckpt_every_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"{name} must be >= 1 (or left unset), got {value}")
        if self.compile not in COMPILE_CHOICES:
            raise UserError(f"unknown compile setting {self.compile!r}; choose {COMPILE_SAID}")
        if self.sync_every_steps is not None and self.sync_every_steps < 1:
            raise UserError(f"sync_every_steps must be >= 1 (or left unset), got {self.sync_every_steps}")
        if self.epochs == 0 and self.max_steps is None:
            raise UserError("epochs is 0 and max_steps unset: nothing would train; set epochs >= 1 or max_steps")

    @classmethod
    def from_sections(cls, *sections: Any, renames: Mapping[str, str | None] | None = None, **fields: Any) -> "TrainConfig":
        """A TrainConfig from a package's config sections: every field of theirs that (after `renames`, the
        package's table of the guides' spellings, e.g. {"val_freq": "val_every_steps"}; None: not a Trainer
        setting) names a TrainConfig field is taken; later sections win, `fields` (what the package decides:
        output_dir, monitor, file names) win over all.

            TrainConfig.from_sections(cfg.training, renames=TRAINER_KEYS, output_dir=str(run_dir), epochs=0)
        """
        own = {f.name for f in dataclasses.fields(cls)}
        renames = dict(renames or {})
        taken: dict[str, Any] = {}
        for section in sections:
            items = section.items() if isinstance(section, Mapping) else \
                ((f.name, getattr(section, f.name)) for f in dataclasses.fields(section))
            for name, value in items:
                name = renames.get(name, name)
                if name in own:
                    taken[name] = value
        return cls(**{**taken, **fields})


@dataclass
class TrainResult:
    history: list[dict]
    best_metric: float | None
    best_path: Path | None
    last_path: Path
    steps: int
    stopped_early: bool
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (e.g. cuda:1), mps"


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'; anything else is one clear line."""
    import re

    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        gpu = re.fullmatch(r"(?:gpu|cuda|nvidia)[:\s_-]*(\d*)", text)
        hint = f"; did you mean 'cuda{':' + gpu.group(1) if gpu.group(1) else ''}'?" if gpu else ""
        raise UserError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}{hint}")
    kind, index = m.group(1), m.group(2)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                            f"numbered from 0")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} asked for but MPS (Apple GPU) is not available here; use --device cpu")
    return torch.device(text)


def move_to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(move_to(v, device) for v in batch)
    if hasattr(batch, "to") and callable(batch.to):  # e.g. a torch_geometric Batch
        return batch.to(device)
    return batch


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def lr_lambda(warmup: int, total: int, schedule: str, min_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def default_eval(loss_fn: LossFn, autocast, device: torch.device) -> EvalFn:
    def evaluate(model: nn.Module, loader: DataLoader) -> dict[str, float]:
        """Mean loss over the validation batches, and the mean of each value loss_fn logs (val_<name>)."""
        total, n = 0.0, 0
        log_sums: dict[str, float] = {}
        for batch in loader:
            batch = move_to(batch, device)  # as the training step does
            with autocast():
                out = loss_fn(model, batch)
            loss = out[0] if isinstance(out, tuple) else out
            total += float(loss)
            n += 1
            logs = out[1] if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], Mapping) else {}
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v)
        record = {k if k.startswith("val_") else f"val_{k}": v / max(n, 1) for k, v in log_sums.items()}
        return {**record, "val_loss": total / max(n, 1)}

    return evaluate


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        loss_fn: LossFn,
        eval_fn: EvalFn | None = None,
        collate_fn: Callable | None = None,
        extra_state: Mapping[str, Any] | None = None,
        param_groups: list[dict] | None = None,
        artefact: Mapping[str, Any] | None = None,
    ):
        self.config = config
        self.device = resolve_device(config.device)
        self.env: DistEnv = init_distributed(self.device.type)
        if self.env.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.env.local_rank)
        seed_everything(config.seed)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.extra_state = dict(extra_state or {})
        # the model header (ftcore.artefact.model_header) every checkpoint carries: load_model reads them all
        self.artefact = dict(artefact) if artefact is not None else None
        self.train_data, self.val_data = train_data, val_data
        if len(train_data) == 0:
            raise UserError("the training set is empty; check the split / data file")
        self.monitor = config.monitor
        if (val_data is None or len(val_data) == 0) and self.monitor != "train_loss":
            if self.monitor != "val_loss":
                raise UserError(f"monitor {self.monitor!r} needs validation data but none was given; "
                                "pass a validation set or monitor train_loss")
            # Without validation data the default monitor falls back to the training loss (best.pt
            # and early stopping follow it) instead of failing after the first epoch.
            self.monitor = "train_loss"
        self.out = Path(config.output_dir)
        if self.env.is_main:
            n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            check_output_dir(self.out, need_bytes=8 * n_bytes)  # last (+2 Adam moments) and best, plus temp copies
            _remove_stale_temp_files(self.out)
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        on_cuda = self.device.type == "cuda"
        self.sync_every = config.sync_every_steps or (25 if on_cuda else 1)
        self.compiled = config.compile == "on" or (config.compile in ("auto", "graphs") and on_cuda)
        # CUDA graphs in one process only; under DDP the gradient all-reduce runs outside the graph (graphs = on)
        self.cuda_graphs = config.compile == "graphs" and on_cuda and self.env.world_size == 1
        # the loss computation (forward + loss, autocast inside) is what gets compiled; backward follows it
        self._forward = (_compiled_method(self, Trainer._forward_loss, "reduce-overhead" if self.cuda_graphs else None)
                         if self.compiled else self._forward_loss)
        params = param_groups or self._default_param_groups()
        if not any(p.requires_grad for g in params for p in g["params"]):
            raise UserError("No trainable parameters! Check the freezing strategy / include patterns")
        # fused AdamW: one kernel for the whole update on CUDA (same state dict, so resume works across devices)
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=on_cuda)
        self.sampler = EpochSampler(len(train_data), shuffle=config.shuffle, seed=config.seed, env=self.env, drop_last=config.drop_last)
        # Starting a DataLoader iterator draws a worker base seed from the generator it is given,
        # or else from the global torch RNG. Its own generator, reseeded per epoch, keeps that draw
        # out of the global stream (dropout etc.), so a mid-epoch resume replays it exactly.
        self.loader_generator = torch.Generator()
        # pinned host memory on CUDA, so move_to's non_blocking copies overlap the previous step's kernels
        # (only for plain CPU tensors: a data set already on the GPU cannot be pinned, nor can types we do not know)
        self.pin = on_cuda and _plain_cpu(train_data[0])
        self.train_loader = DataLoader(train_data, batch_size=config.batch_size, sampler=self.sampler,
                                       collate_fn=collate_fn, num_workers=config.num_workers, drop_last=config.drop_last,
                                       generator=self.loader_generator, pin_memory=self.pin)
        self.steps_per_epoch = max(len(self.train_loader), 1)
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            self.total_steps = config.max_steps if config.epochs == 0 else min(self.total_steps, config.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(config.warmup_steps, self.total_steps, config.schedule, config.min_lr_ratio)
        )
        self.ddp_model: nn.Module = self.model
        if self.env.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = DDP(self.model, device_ids=ids, find_unused_parameters=config.ddp_find_unused)
        self.eval_fn = eval_fn or default_eval(loss_fn, self.autocast, self.device)
        # training state (all of it goes into the last checkpoint)
        self.step = 0
        self.epoch = 0  # completed epochs
        self.batch_in_epoch = 0
        self.best: float | None = None
        self.bad_validations = 0
        self.history: list[dict] = []
        # Loss sum and batch count of the stretch since the last validation, summed over ranks
        # when a mid-stretch checkpoint is written, so a resumed run reports the same train_loss.
        self.stretch_loss: list[float] = [0.0, 0.0]
        # The same for the values a loss_fn logs beside the loss: name -> [sum, batches].
        self.stretch_logs: dict[str, list[float]] = {}

    # ----------------------------------------------------------------- helpers
    def _default_param_groups(self) -> list[dict]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def autocast(self):
        if self.use_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def path(self, name: str | None, **fmt) -> Path | None:
        return None if name is None else self.out / name.format(**fmt)

    def _improved(self, value: float) -> bool:
        if self.best is None or not math.isfinite(self.best):
            return math.isfinite(value)
        if self.config.mode == "min":
            return value < self.best - self.config.min_delta
        return value > self.best + self.config.min_delta

    def _header(self) -> dict:
        return {"artefact": self.artefact} if self.artefact is not None else {}

    def state(self) -> dict:
        return {
            **self._header(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "history": self.history,
            "stretch_loss": list(self.stretch_loss),
            "stretch_logs": {k: list(v) for k, v in self.stretch_logs.items()},
            "rng": _rng_state(),
            "config": asdict(self.config),
            "extra": self.extra_state,
        }

    def save(self, name: str | None, **fmt) -> None:
        path = self.path(name, step=self.step, epoch=self.epoch)
        if path is not None and self.env.is_main:
            atomic_torch_save(self.state(), path)

    def _save_best(self, metrics: Mapping[str, float]) -> None:
        path = self.path(self.config.best_name, step=self.step, epoch=self.epoch)
        if path is not None and self.env.is_main:
            atomic_torch_save({**self._header(), "model": self.model.state_dict(), "extra": self.extra_state, "epoch": self.epoch,
                               "step": self.step, "metrics": dict(metrics), "config": asdict(self.config)}, path)

    def try_resume(self) -> bool:
        last = self.path(self.config.last_name)
        if not (self.config.resume and last is not None and last.exists()):
            return False
        try:
            ckpt = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise UserError(
                f"cannot resume: {last} is unreadable ({_first_line(err)}); "
                "delete it to start over, or choose another output directory"
            ) from None
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(
                f"cannot resume from {last}: it was written for a different model or freezing setup "
                f"({_first_line(err)}); choose another output directory, or delete {last} to start over"
            ) from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.best, self.bad_validations, self.history = ckpt["best"], ckpt["bad_validations"], ckpt["history"]
        # The saved stretch is the all-rank total: rank 0 carries it on, the others start at zero.
        stretch = [float(v) for v in ckpt.get("stretch_loss", (0.0, 0.0))]
        self.stretch_loss = stretch if self.env.is_main else [0.0, 0.0]
        self.stretch_logs = {k: [float(v) for v in sums] if self.env.is_main else [0.0, 0.0]
                             for k, sums in ckpt.get("stretch_logs", {}).items()}
        _set_rng_state(ckpt["rng"])
        if self.env.is_main:
            print(f"resuming from {last} (epoch {self.epoch}, step {self.step})")
        return True

    def _val_loader(self) -> DataLoader | None:
        if self.val_data is None or len(self.val_data) == 0:
            return None
        return DataLoader(self.val_data, batch_size=self.config.batch_size, shuffle=False,
                          collate_fn=self.collate_fn, num_workers=self.config.num_workers,
                          pin_memory=self.pin,
                          generator=torch.Generator().manual_seed(self.config.seed))

    # -------------------------------------------------------------- main loop
    def validate(self, train_loss: float, train_logs: Mapping[str, float] | None = None) -> dict:
        loader = self._val_loader()
        record: dict[str, Any] = {"epoch": self.epoch, "step": self.step, "train_loss": train_loss}
        record.update({k: v for k, v in (train_logs or {}).items() if k not in record})
        record["lr"] = self.scheduler.get_last_lr()[0]
        if loader is not None:
            self.model.eval()
            with torch.no_grad():
                metrics = dict(self.eval_fn(self.model, loader))
            self.model.train()
            record.update({k: float(v) for k, v in metrics.items()})
        if self.monitor not in record:
            have = ", ".join(k for k in record if k not in ("epoch", "step", "lr"))
            raise UserError(f"monitor {self.monitor!r} is not among the metrics ({have}); set monitor to one of them")
        record["time_s"] = round(time.time() - self._t0, 2)
        record["train_samples_per_s"] = round(getattr(self, "_throughput", 0.0), 2)
        self.history.append(record)
        value = record[self.monitor]
        if self._improved(value):
            self.best, self.bad_validations = value, 0
            self._save_best(record)
            record["best"] = True
        else:
            self.bad_validations += 1
        return record

    def _write_history(self, final: bool = False) -> None:
        """history.json (and history.csv, TensorBoard) after every validation; the curve PNG at the end, and
        between at most every CURVE_EVERY_S seconds (drawing it after every epoch took ~40% of a tiny CPU run)."""
        if not self.env.is_main:
            return
        atomic_write_json(self.out / self.config.history_name, self.history)
        csv_path = self._csv_path()
        if csv_path is not None:
            write_history_csv(self.history, csv_path)
        self._log_tensorboard(final)
        curve = self.path(self.config.curve_name)
        if curve is not None and (final or time.time() - getattr(self, "_curve_drawn", 0.0) >= CURVE_EVERY_S):
            plot_training_curve(self.history, curve)
            self._curve_drawn = time.time()

    def _csv_path(self) -> Path | None:
        name = self.config.csv_name
        if name is None:
            return None
        return self.out / (Path(self.config.history_name).with_suffix(".csv") if name == "auto" else name)

    def _log_tensorboard(self, final: bool) -> None:
        """The records not yet logged, as scalars against the optimizer step (a resumed run appends)."""
        if getattr(self, "_tb", None) is None:
            return
        for record in self.history[self._tb_logged:]:
            for key, value in record.items():
                if key not in ("epoch", "step", "best") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])
        self._tb_logged = len(self.history)
        self._tb.flush()
        if final:
            self._tb.close()
            self._tb = None

    def fit(self) -> TrainResult:
        cfg = self.config
        self.try_resume()
        self._tb = tensorboard_writer(self.path(cfg.tensorboard_dir)) if self.env.is_main else None
        self._tb_logged = len(self.history)  # records of the run before a resume were logged by that run
        self._t0 = time.time() - (self.history[-1]["time_s"] if self.history else 0.0)
        self.ddp_model.train()
        # A resumed run that had already stopped early stays stopped (rerunning a finished command is a no-op).
        stopped_early = cfg.patience is not None and self.bad_validations >= cfg.patience
        max_epochs = cfg.epochs if cfg.epochs else math.ceil(self.total_steps / self.steps_per_epoch)
        while self.epoch < max_epochs and self.step < self.total_steps and not stopped_early:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * cfg.batch_size)
            self.loader_generator.manual_seed(cfg.seed * 100003 + self.epoch)
            loss_sum, n_batches = self.stretch_loss
            n_here, t_train = 0, time.time()
            bar = _progress(self.train_loader, cfg.progress and self.env.is_main,
                            f"epoch {self.epoch + 1}/{max_epochs}", self.steps_per_epoch, self.batch_in_epoch)
            pending: list[tuple[int, torch.Tensor, Mapping]] = []  # steps not yet read back to the host

            for batch in bar:
                loss, logs = self._train_step(batch)
                pending.append((self.step, loss, logs))
                n_here += 1
                self.step += 1
                self.batch_in_epoch += 1
                ckpt_due = cfg.ckpt_every_steps and self.step % cfg.ckpt_every_steps == 0
                if ckpt_due or self.step % self.sync_every == 0:
                    loss_sum, n_batches = self._read_back(pending, bar, loss_sum, n_batches)
                if ckpt_due:
                    self.stretch_loss, self.stretch_logs = self._reduce_stretch(loss_sum, n_batches)
                    if not self.env.is_main:
                        self.stretch_loss = [0.0, 0.0]
                        self.stretch_logs = {k: [0.0, 0.0] for k in self.stretch_logs}
                    loss_sum, n_batches = self.stretch_loss
                    self.save(cfg.step_name)
                    self.save(cfg.last_name)
                mid_val = cfg.val_every_steps and self.step % cfg.val_every_steps == 0
                if mid_val or self.step >= self.total_steps:
                    break
            loss_sum, n_batches = self._read_back(pending, bar, loss_sum, n_batches)
            (total, count), logs = self._reduce_stretch(loss_sum, n_batches)
            train_loss = total / max(count, 1)
            train_logs = {k if k.startswith("train_") else f"train_{k}": s / n for k, (s, n) in logs.items() if n}
            self.stretch_loss, self.stretch_logs = [0.0, 0.0], {}
            # Global training throughput of this stretch (validation excluded), for scaling checks.
            self._throughput = n_here * self.env.world_size * cfg.batch_size / max(time.time() - t_train, 1e-9)
            if self.batch_in_epoch >= self.steps_per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
            record = self.validate(train_loss, train_logs)
            if self.env.is_main:
                shown = " ".join(f"{k} {v:.4g}" for k, v in record.items()
                                 if isinstance(v, float) and k not in ("lr", "time_s"))
                print(f"epoch {record['epoch']} step {self.step}: {shown}{' [best]' if record.get('best') else ''}", flush=True)
            if cfg.patience is not None and self.bad_validations >= cfg.patience:
                stopped_early = True
                if self.env.is_main:
                    print(f"early stopping: no improvement of {self.monitor} for {cfg.patience} validations")
            if self.batch_in_epoch == 0 and cfg.epoch_name:
                self.save(cfg.epoch_name)
            self.save(cfg.last_name)
            self._write_history()
            barrier(self.env)
        if cfg.step_name and self.step >= self.total_steps:
            self.save(cfg.step_name)
        self._write_history(final=True)
        barrier(self.env)
        best_path = self.path(cfg.best_name, step=self.step, epoch=self.epoch)
        if cfg.restore_best and best_path is not None and best_path.exists():
            from ftcore.checkpoint import read_checkpoint  # a damaged best file is one line, not a traceback

            self.model.load_state_dict(read_checkpoint(best_path)["model"])
        return TrainResult(self.history, self.best, best_path, self.path(cfg.last_name), self.step, stopped_early)

    def _read_back(self, pending: list, bar, loss_sum: float, n_batches: float) -> tuple[float, float]:
        """Add the pending steps' losses (one host sync) and logs to the stretch; refuse a non-finite loss."""
        if not pending:
            return loss_sum, n_batches
        values = torch.stack([loss.float() for _, loss, _ in pending]).tolist()
        for (step, _, logs), value in zip(pending, values):
            if not math.isfinite(value):
                self._refuse_loss(value, step)
            loss_sum += value
            n_batches += 1
            for k, v in logs.items():
                sums = self.stretch_logs.setdefault(k, [0.0, 0.0])
                sums[0] += float(v)
                sums[1] += 1
        if self.config.progress and self.env.is_main:
            bar.set_postfix(loss=f"{values[-1]:.4f}", refresh=False)
        pending.clear()
        return loss_sum, n_batches

    def _reduce_stretch(self, loss_sum: float, n_batches: float) -> tuple[list[float], dict[str, list[float]]]:
        """The stretch's loss sum and batch count, and its logs' [sum, batches], summed over ranks.

        Every rank logs the same names (they run the same loss_fn), so the sorted names line up.
        """
        names = sorted(self.stretch_logs)
        flat = [loss_sum, float(n_batches)] + [v for k in names for v in self.stretch_logs[k]]
        flat = all_reduce_sum(flat, self.env, self.device)
        return flat[:2], {k: flat[2 + 2 * i: 4 + 2 * i] for i, k in enumerate(names)}

    def _forward_loss(self, batch) -> tuple[torch.Tensor, Mapping]:
        with self.autocast():
            out = self.loss_fn(self.ddp_model, batch)
        loss = out[0] if isinstance(out, tuple) else out
        logs = out[1] if isinstance(out, tuple) and len(out) > 1 and isinstance(out[1], Mapping) else {}
        return loss, logs

    def _refuse_loss(self, value: float, step: int) -> None:
        raise UserError(
            f"training loss became {value} at step {step}; lower the learning rate "
            f"(now {self.scheduler.get_last_lr()[0]:.2e}) or check the input for NaN/inf"
        )

    def _train_step(self, batch) -> tuple[torch.Tensor, dict]:
        """One optimizer step: the (detached, still on the device) loss and the values loss_fn logged beside it.

        With a sync every step (CPU) a non-finite loss is refused before it touches the weights; otherwise
        `fit` reads the losses back every `sync_every` steps and refuses there, naming the first bad step.
        """
        batch = move_to(batch, self.device)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, logs = self._forward(batch)
        if self.sync_every == 1 and not torch.isfinite(loss):
            self._refuse_loss(float(loss.detach()), self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        # a one-element loss of any shape (e.g. [1]) reads back as a number; logged tensors are copied, since one
        # sharing memory with a buffer updated in place would otherwise be read back with a later step's value
        # (so is the loss under CUDA graphs: the next replay writes its output buffer)
        loss = loss.detach().reshape(())
        return loss.clone() if self.cuda_graphs else loss, {k: v.detach().clone() if isinstance(v, torch.Tensor) else v
                                           for k, v in logs.items()}


def _plain_cpu(sample: Any) -> bool:
    """True for a CPU tensor or a (nested) tuple/list/dict of only CPU tensors and numbers."""
    if isinstance(sample, torch.Tensor):
        return sample.device.type == "cpu"
    if isinstance(sample, Mapping):
        return all(_plain_cpu(v) for v in sample.values())
    if isinstance(sample, (list, tuple)) and not hasattr(sample, "_fields"):
        return all(_plain_cpu(v) for v in sample)
    return isinstance(sample, (int, float, bool))


# one copy of Trainer._forward_loss's code object per (model class, loss function code): see _compiled_method
_FORWARD_CODES: dict[tuple, types.CodeType] = {}


def _compiled_method(trainer: "Trainer", fn: Callable, mode: str | None = None) -> Callable:
    """torch.compile(fn bound to trainer), with dynamo's cache shared only by Trainers of the same model
    class and loss function.

    dynamo keeps its compiled graphs on the function's code object, and after 8 of them
    (torch._dynamo.config.recompile_limit) it silently runs that code eagerly. Every Trainer compiles
    the same method, so the 9th kind of model trained in one process ran eagerly (found by the GPU smoke
    tests, which train the five packages' models in one process). The folds of a cross-validation (same
    class, same loss) still share one cache and so compile once."""
    loss = trainer.loss_fn
    key = (type(trainer.model), getattr(loss, "__code__", type(loss)))
    code = _FORWARD_CODES.setdefault(key, fn.__code__.replace())
    fresh = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(types.MethodType(fresh, trainer), options=inductor_options(mode))


def inductor_options(mode: str | None = None) -> dict:
    """The inductor settings every Trainer compiles with: mode "reduce-overhead" spelled as its option
    (triton.cudagraphs; torch.compile takes a mode or options, not both), and inductor's coalesce tiling
    analysis off where this torch has it. That analysis does not handle dynamic shapes (torch's own config
    says so) yet runs on them, and in torch 2.11 it fails the whole compile with an AssertionError in
    tiling_utils.get_pw_red_splits once a batch of another size (an epoch's last) makes dynamo recompile
    with symbolic sizes (pytorch/pytorch#181563; cellfm-ft, benchmarks/results/test_gpu_h200_compile_auto.log).
    Its speed cost is measured in benchmarks/results/README.md."""
    import torch._inductor.config as inductor_config

    options = {"triton.cudagraphs": True} if mode == "reduce-overhead" else {}
    if INDUCTOR_SKIP_COALESCE_ANALYSIS and hasattr(inductor_config.triton, "coalesce_tiling_analysis"):
        options["triton.coalesce_tiling_analysis"] = False
    return options


# False only in benchmarks/bench_train_mfu_gpu.py's A/B of the analysis
INDUCTOR_SKIP_COALESCE_ANALYSIS = True


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__


def _remove_stale_temp_files(out: Path) -> None:
    """Delete temp files (ftcore.io.atomic_path's '.<name>.<random>.tmp') left by a killed run.

    A process killed during a save cannot clean up after itself; its temp file was never
    renamed, so no finished file depends on it.
    """
    for tmp in out.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def _progress(loader, enabled: bool, desc: str, total: int, initial: int):
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, total=total, initial=initial, leave=False, dynamic_ncols=True)


def write_history_csv(history: list[dict], path: Path) -> None:
    """The history as CSV: one row per validation, one column per key in order of first appearance."""
    import csv
    import io

    from ftcore.io import atomic_write_text

    columns: dict[str, None] = {}
    for record in history:
        columns.update(dict.fromkeys(record))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    atomic_write_text(path, buf.getvalue())


def tensorboard_writer(logdir: Path | None):
    """A SummaryWriter into `logdir` when TensorBoard is installed (ftcore[tensorboard]); else None, silently."""
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises this when the tensorboard package is absent
        return None
    return SummaryWriter(log_dir=str(logdir))


def load_history(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())
