"""`state-tx train`: run configuration (the seed's dotted keys), setup, training, artefacts.

    cfg = load_run_config(["data.kwargs.toml_config_path=/abs/train.toml", "model=state_sm",
                           "training.max_steps=1000", "output_dir=results", "name=exp1"])
    train(cfg)   # -> output_dir/name/{config.yaml, checkpoints/, *_onehot_map.json, var_dims.json, ...}

Artefacts are JSON / YAML / safetensors and weights-only torch checkpoints (never pickles that run
code); they replace arc-state's .pkl files one for one:
    cell_type_onehot_map.pkl -> cell_type_onehot_map.json    pert_onehot_map.pt -> pert_onehot_map.json
    batch_onehot_map.pkl -> batch_onehot_map.json            var_dims.pkl -> var_dims.json
    data_module.torch -> data_module.json                    (+ pert_features.safetensors with features)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ftcore import options as opt
from ftcore.artefact import model_header, save_model
from ftcore.distributed import is_main_process, world_size
from ftcore.errors import UserError
from ftcore.io import atomic_write_json, check_output_dir, claim_outputs
from ftcore.rundir import file_identity, open_run_dir
from ftcore.training import TrainConfig, Trainer, resolve_device, seed_everything

from state_tx.data import (
    SentenceDataset,
    Vocab,
    load_perturbation_features,
    plan_splits,
    read_experiment_toml,
    rms_scale,
    train_shift_table,
)
from state_tx.model import (
    ARC_STATE_SKIP,
    StateTransitionModel,
    StateTxConfig,
    arc_state_to_ours,
    set_loss,
)
from state_tx.config import DATA_FILES_KEY, RunConfig, model_config

# --------------------------------------------------------------------------------- the run directory
# Keys that do not shape the result (ftcore.rundir): where and how fast it runs, how often it checkpoints,
# where the run directory is. training.max_steps too when the learning rate is constant (more steps continue
# the same run); under the cosine schedule it sets the decay, so a changed max_steps is another run.
RESUME_IGNORES = ("output_dir", "name", "training.device", "training.precision", "training.compile",
                  "training.progress", "training.ckpt_every_n_steps", "data.kwargs.num_workers")
# what a state-tx run (and `predict` after it) writes in output_dir/name: --overwrite removes these, never
# anything else (the demo keeps its generated data in output_dir/name/data)
RUN_FILES = ("checkpoints", "var_dims.json", "*_onehot_map.json", "data_module.json", "pert_features.safetensors",
             "init_from.json", "history.json", "history.csv", "training_curve.png", "tensorboard", "eval_*")


def run_record(s: "Setup") -> dict:
    """The effective config as config.yaml holds it, with the identity of the data files read."""
    files = [s.cfg.data.kwargs.toml_config_path] + sorted({str(m.source.path) for m in s.metas})
    return {**dataclasses.asdict(s.cfg), DATA_FILES_KEY: [file_identity(f) for f in files]}


def open_run(cfg: RunConfig, overwrite: bool = False, s: "Setup | None" = None):
    """output_dir/name: new, the same run (resumed), or refused naming the changed keys (ftcore.rundir).
    Without the Setup `s` (the demo, before it writes its data) the data files are not compared yet."""
    ignore = RESUME_IGNORES + (("training.max_steps",) if cfg.training.lr_schedule == "constant" else ())
    record = run_record(s) if s is not None else dataclasses.asdict(cfg)
    if s is None:
        ignore += (DATA_FILES_KEY,)
    return open_run_dir(cfg.run_dir, record, config_name="config.yaml", ignore=ignore, run_files=RUN_FILES,
                        overwrite=overwrite, output_flag="name=... or output_dir=...", overwrite_flag="--overwrite")


# --------------------------------------------------------------------------------- setup
@dataclass
class Setup:
    cfg: RunConfig
    model_cfg: StateTxConfig
    vocab: Vocab
    pert_table: torch.Tensor  # [n_perts, pert_dim]
    shift_table: torch.Tensor | None  # [n_cell_types + 1, n_perts, G] with data.kwargs.pert_train_shift
    train: SentenceDataset
    val: SentenceDataset | None
    test_plan: Any
    metas: list
    plans: dict
    var_dims: dict
    summary: dict


def setup(cfg: RunConfig, scan: bool = True, trust_checkpoint: bool = False) -> Setup:
    """Files + TOML -> validated datasets and the model config. Writes nothing."""
    kw = cfg.data.kwargs
    if not kw.toml_config_path:
        raise UserError("data.kwargs.toml_config_path is required (a cell-load TOML: [datasets] [training] ...); "
                        "run `state-tx demo` to see one")
    # files named by keys: checked (and `~` expanded) before any is read, naming the key
    if kw.perturbation_features_file:
        kw.perturbation_features_file = _input_path("data.kwargs.perturbation_features_file",
                                                    kw.perturbation_features_file, ".pt file")
    if cfg.model.kwargs.get("init_from"):
        cfg.model.kwargs["init_from"] = _input_path("model.kwargs.init_from", cfg.model.kwargs["init_from"], "checkpoint")
    exp = read_experiment_toml(opt.check_input_file("data.kwargs.toml_config_path", kw.toml_config_path, "TOML"))
    batch_encoder = str(cfg.model.kwargs.get("batch_encoder", False)).lower() in ("true", "1", "yes")
    metas, vocab, plans, summary = plan_splits(exp, kw, cfg.training.train_seed, need_batch=batch_encoder)
    kind = None
    if scan:
        kind = check_training_values(metas, verbose=is_main_process())
    if kw.perturbation_features_file:
        pert_table = load_perturbation_features(kw.perturbation_features_file, vocab.perts, kw.control_pert,
                                                trust_checkpoint)
    else:
        pert_table = torch.eye(len(vocab.perts))
    ref = metas[0].source
    # measured on the training split only (never a val/test cell): data.train_shift_table
    shift_table = train_shift_table(metas, vocab, plans["train"]) if kw.pert_train_shift != "off" else None
    shift_scale = rms_scale(shift_table) if shift_table is not None and kw.pert_train_shift_scale == "rms" else 1.0
    if shift_table is not None:
        shift_table = shift_table / shift_scale  # stored so: predict and infer read the scaled table
    if kw.pert_train_shift == "only":
        pert_table = pert_table[:, :0]  # no identity columns: the training shift is the whole encoding
    pert_dim = pert_table.shape[1] + (shift_table.shape[2] if shift_table is not None else 0)
    mcfg = model_config(cfg, ref.n_features, pert_dim, len(vocab.batches))
    seed = cfg.training.train_seed
    train_ds = SentenceDataset(metas, plans["train"], pert_table, mcfg.cell_set_len, seed, shift_table=shift_table)
    # one Trainer epoch ~ val_freq steps (STATE validates every val_freq steps, not per pass)
    # (no more passes than max_steps needs, and a length a DataLoader can count)
    steps = min(cfg.training.val_freq, cfg.training.max_steps)
    passes = -(-steps * cfg.training.batch_size * world_size() // max(train_ds.n_sentences, 1))
    train_ds.passes = int(max(1, min(passes, 2**31 // max(train_ds.n_sentences, 1))))
    val_ds = (SentenceDataset(metas, plans["val"], pert_table, mcfg.cell_set_len, seed + 1, shift_table=shift_table)
              if plans["val"].groups else None)
    var_dims = {
        "input_dim": mcfg.input_dim, "output_dim": mcfg.output_dim, "pert_dim": mcfg.pert_dim,
        "batch_dim": mcfg.batch_dim, "gene_dim": ref.n_features, "output_space": kw.output_space,
        "matrix_key": ref.matrix_key, "gene_names": [str(g) for g in ref.gene_names],
        "pert_col": kw.pert_col, "cell_type_key": kw.cell_type_key, "batch_col": kw.batch_col,
        "control_pert": kw.control_pert, "pert_rep": "features" if kw.perturbation_features_file else "onehot",
        "pert_train_shift": kw.pert_train_shift, "pert_train_shift_scale": shift_scale, "cell_types": list(vocab.cell_types),
        "expression_kind": kind,  # by ftcore.data's rule: inference refuses input of another kind
    }
    return Setup(cfg, mcfg, vocab, pert_table, shift_table, train_ds, val_ds, plans["test"], metas, plans, var_dims, summary)


def check_training_values(metas: list, verbose: bool = True) -> str:
    """NaN/inf/absurd values refused (row and column named); what X holds, by ftcore.data's rule.

    STATE expects log-normalised values. Raw counts (or normalised but unlogged values, or scaled data)
    are WARNED about, not refused: the model learns in whatever space it is given and arc-state accepts
    them too, so a deliberate counts model stays possible; the kind is recorded in var_dims.json and
    `infer` refuses input of another kind (where a mismatch silently yields meaningless predictions).
    Files of one run must hold one kind.
    """
    from ftcore.data import KIND_ADVICE, expression_kind

    kinds: dict[str, str] = {}
    for meta in metas:
        src = meta.source
        src.scan()
        kind = kinds[str(src.path)] = expression_kind(src.sample())
        if kind != "log" and verbose:
            print(f"warning: {src.path} {src.matrix_key}: {KIND_ADVICE[kind]} (STATE expects log-normalised "
                  "values; inference will expect the same kind as this run's data)")
    first_path, first = next(iter(kinds.items()))
    for path, kind in kinds.items():
        if kind != first:
            raise UserError(f"{path} holds {kind} values but {first_path} holds {first} values (by ftcore.data's "
                            "rule); one run needs one kind of values: prepare every file the same way")
    return first


def _input_path(key: str, value, what: str) -> str:
    """A file named by a config key, `~`/$VARS expanded; missing or a directory is one line naming the key
    (what the file holds is judged by its reader, ftcore.checkpoint)."""
    path = Path(os.path.expandvars(str(value).strip())).expanduser()
    if not path.is_file():
        opt.check_input_file(key, path, what)
    return str(path)


def write_artefacts(s: Setup) -> None:
    """The maps and dims inference needs, in safe formats (rank 0 only, before training)."""
    out = s.cfg.run_dir
    atomic_write_json(out / "var_dims.json", s.var_dims)
    atomic_write_json(out / "pert_onehot_map.json", {p: i for i, p in enumerate(s.vocab.perts)})
    atomic_write_json(out / "cell_type_onehot_map.json", {c: i for i, c in enumerate(s.vocab.cell_types)})
    atomic_write_json(out / "batch_onehot_map.json", {b: i for i, b in enumerate(s.vocab.batches)})
    from ftcore.checkpoint import write_checkpoint

    if s.var_dims["pert_rep"] == "features":
        write_checkpoint(out / "pert_features.safetensors", {"pert_features": s.pert_table.contiguous()}, "safetensors")
    if s.shift_table is not None:
        write_checkpoint(out / "pert_train_shift.safetensors", {"pert_train_shift": s.shift_table.contiguous()},
                         "safetensors")
    atomic_write_json(out / "data_module.json", {
        "toml_config_path": s.cfg.data.kwargs.toml_config_path,
        "files": s.summary,
        "sentences": {"train": s.train.n_sentences, "val": s.val.n_sentences if s.val else 0,
                      "train_passes_per_epoch": s.train.passes},
        "cells": {k: p.n_cells for k, p in s.plans.items()},
        "model_config": dataclasses.asdict(s.model_cfg),
    })


# ------------------------------------------------------------------------------- training
def make_loss_fn(mcfg: StateTxConfig):
    def loss_fn(model, batch):
        # `model` may be the DDP wrapper: call it, never reach into it
        pred = model(batch["basal"], batch["pert"], batch["batch"])
        return set_loss(pred, batch["target"], mcfg.loss, mcfg.blur, mcfg.mean_mse_weight)

    return loss_fn


def make_eval_fn(mcfg: StateTxConfig, control_idx: int = 0):
    from ftcore.metrics import nanmean, pearson_delta

    def eval_fn(model, loader) -> dict[str, float]:
        losses, rs, n = [], [], 0
        for batch in loader:
            device = next(model.parameters()).device
            batch = {k: v.to(device) for k, v in batch.items()}
            pred = model(batch["basal"], batch["pert"], batch["batch"])
            losses.append(float(set_loss(pred, batch["target"], mcfg.loss, mcfg.blur, mcfg.mean_mse_weight)) * len(pred))
            keep = (batch["pert_idx"] != control_idx).cpu().numpy()  # a control sentence has no shift to correlate
            if keep.any():  # [B, G] sentence means; r of each sentence's shift from its basal cells
                r = pearson_delta(pred.float().mean(1), batch["target"].mean(1), batch["basal"].mean(1))[keep]
                rs += r.tolist()
            n += len(pred)
        # ftcore.metrics' rule: sentences whose shift is constant (r undefined) are skipped; NaN if all are
        return {"val_loss": sum(losses) / max(n, 1), "val_pearson_delta": nanmean(rs)}

    return eval_fn


def init_from(model: StateTransitionModel, path: str, trust_pickle: bool, vocab: Vocab | None = None,
              pert_rep: str = "onehot", columns: str = "name") -> dict:
    """Warm start from a state-tx or arc-state checkpoint, with the load report.

    The perturbation encoder's first layer takes one column per one-hot perturbation, the batch
    encoder one row per batch. Those columns are matched BY NAME through the one-hot maps of the
    source run (beside the checkpoint: arc-state's pert_onehot_map.pt / batch_onehot_map.{torch,pkl},
    or state-tx's *.json): each name keeps its own column, a name new to this data gets a fresh
    (initialised) column, and both are reported. Without the maps this is an error unless
    columns="position" (model.kwargs.init_from_columns=position) takes them in the file's order.
    """
    from ftcore.checkpoint import extract_state_dict, read_checkpoint
    from ftcore.loading import load_partial

    from state_tx import arc_state as arc

    verbose = is_main_process()
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    lightning = arc.is_lightning(obj)
    sd = arc_state_to_ours(extract_state_dict(obj, source=str(path)))
    run_dir = arc.run_dir_of(path)
    columns_done: list = []
    extra_skip: list[tuple[str, str]] = []
    own = model.state_dict()
    wanted = []  # (kind, key, dim, new names, new control)
    if vocab is not None and "pert_encoder.0.weight" in sd and "pert_encoder.0.weight" in own:
        wanted.append(("pert", "pert_encoder.0.weight", 1, vocab.perts, vocab.control_pert))
    if vocab is not None and "batch_encoder.weight" in sd and "batch_encoder.weight" in own:
        wanted.append(("batch", "batch_encoder.weight", 0, vocab.batches, None))
    if columns == "position":
        for kind, key, _, _, _ in wanted:
            columns_done.append(arc.ColumnReport(kind, str(path), key, note=(
                f"{key} taken in the checkpoint's column order (model.kwargs.init_from_columns=position): "
                "right only if both runs list the same names in the same order")))
        wanted = []
    maps = arc.read_run_maps(run_dir, trust_pickle) if wanted else {}
    for kind, key, dim, names, new_control in wanted:
        src = maps.get(kind)
        if src is None:
            looked = ", ".join((arc.STATE_TX_MAP_FILES[kind],) + arc.MAP_FILES[kind])
            raise UserError(
                f"model.kwargs.init_from={path}: no {kind} one-hot map beside the checkpoint (looked in {run_dir} for "
                f"{looked}); {key}'s columns cannot be matched to this data's {kind} names. Keep the checkpoint in "
                "its run directory, or pass model.kwargs.init_from_columns=position to take the columns in the "
                "checkpoint's order")
        if kind == "pert" and (not src.onehot or pert_rep != "onehot"):
            if src.onehot != (pert_rep == "onehot"):
                extra_skip.append((rf"^{key}$", f"the source encodes perturbations as "
                                   f"{'one-hot columns' if src.onehot else 'feature vectors'}, this run as "
                                   f"{'one-hot columns' if pert_rep == 'onehot' else 'feature vectors'}: "
                                   "first layer initialised fresh"))
            else:
                columns_done.append(arc.ColumnReport(kind, str(src.path), key, note=(
                    f"{key}: feature vectors on both sides (no per-name columns to align)")))
            continue
        src_control = arc.source_control(run_dir, obj.get("hyper_parameters") if lightning else None) if kind == "pert" else None
        sd[key], rep = arc.align_columns(sd[key], own[key], src, list(names), dim, src_control=src_control,
                                         new_control=new_control, key=key)
        columns_done.append(rep)
    ct = maps.get("cell_type") if maps else None
    if ct is not None:
        columns_done.append(arc.ColumnReport("cell type", str(ct.path), "", note=(
            f"{len(ct.names)} in {ct.path.name}; cell type is not an input of the State Transition model "
            "(it only selects the control cells), so there are no columns to align")))
    report = load_partial(model, sd, skip=tuple(ARC_STATE_SKIP) + tuple(extra_skip), source=str(path),
                          target="state-tx model", verbose=verbose)
    if lightning:
        extras = [k for k in obj if k != "state_dict"]
        if verbose and extras:
            print(f"ℹ Lightning entries not loaded (training state and settings, not weights): {', '.join(map(str, extras))}")
    if verbose:
        for rep in columns_done:
            print("\n".join(rep.lines()))
    return {"checkpoint": str(path), "layout": "arc-state (Lightning)" if lightning else "state-tx / torch",
            "load": report.to_dict(), "columns": [r.to_dict() for r in columns_done], "report": report}


# training.* in the seed's (arc-state's) words -> the core Trainer's
TRAINER_KEYS = {"ckpt_every_n_steps": "ckpt_every_steps", "val_freq": "val_every_steps", "lr_schedule": "schedule",
                "gradient_clip_val": "grad_clip", "train_seed": "seed"}


def train_config(cfg: RunConfig, has_val: bool) -> TrainConfig:
    t = cfg.training
    return TrainConfig.from_sections(
        t, renames=TRAINER_KEYS, output_dir=str(cfg.run_dir), epochs=0,
        grad_clip=t.gradient_clip_val or None,  # 0 = no clipping
        monitor="val_loss" if has_val else "train_loss", mode="min", num_workers=cfg.data.kwargs.num_workers,
        best_name="checkpoints/best.ckpt" if has_val else None,
        last_name="checkpoints/last.ckpt", step_name="checkpoints/step={step}.ckpt",
        curve_name=None,  # drawn by StepCurveTrainer, against optimizer steps (the loop is step-based)
    )


LOSS_NAMES = {"energy": "energy distance", "mmd": "Gaussian MMD", "mse": "MSE per cell"}


def plot_training_curves(history: list[dict], path: Path, loss: str) -> None:
    """training_curve.png: losses (train and val, one quantity) and val_pearson_delta, against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ftcore.io import atomic_savefig

    rows = sorted((h for h in history if isinstance(h.get("step"), int)), key=lambda h: h["step"])
    if not rows:
        return
    step = [h["step"] for h in rows]
    has_r = any(isinstance(h.get("val_pearson_delta"), float) for h in rows)
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2 if has_r else 1, figsize=(11 if has_r else 6, 4), squeeze=False)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax = axes[0, 0]
    for key, label in (("train_loss", "train (mean since the previous point)"), ("val_loss", "val")):
        if any(key in h for h in rows):
            ax.plot(step, [h.get(key, np.nan) for h in rows], marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"loss ({LOSS_NAMES.get(loss, loss)})")
    ax.set_title("training and validation loss")
    ax.legend()
    if has_r:
        ax = axes[0, 1]
        ax.plot(step, [h.get("val_pearson_delta", np.nan) for h in rows], marker=".", color="C2")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("val pearson_delta")
        ax.set_title("val pearson_delta (predicted vs observed shift)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


class StepCurveTrainer(Trainer):
    """The core Trainer, with the curves drawn against optimizer steps each time the history is written."""

    def __init__(self, *args, loss: str = "energy", **kwargs):
        super().__init__(*args, **kwargs)
        self._loss = loss

    def _write_history(self, final: bool = False) -> None:
        super()._write_history(final)
        if self.env.is_main:
            plot_training_curves(self.history, self.out / "training_curve.png", self._loss)


def check_run_dir(s: Setup, overwrite: bool = False) -> Path:
    """output_dir/name can be created (or is a run on the same data, to resume); nothing is created."""
    out = opt.check_output_dir("output_dir/name", s.cfg.run_dir)
    old = out / "var_dims.json"
    if old.is_file() and not overwrite:
        try:
            prev = json.loads(old.read_text())
        except (OSError, ValueError):
            raise UserError(f"{old} is not readable JSON: {out} holds a damaged run; choose another name=... "
                            "or output_dir=...") from None
        if prev.get("gene_names") != s.var_dims["gene_names"] or prev.get("pert_dim") != s.var_dims["pert_dim"]:
            raise UserError(f"{out} holds a run on other data (genes or perturbations differ); "
                            "choose another name=... or output_dir=...")
    return out


def training_mean(s: Setup, n: int = 4096) -> torch.Tensor:
    """Mean target profile [G] over up to n training cells drawn at random (seeded by train_seed)."""
    rows = [(fid, r) for fid, grp in s.plans["train"].groups for r in grp]
    rng = np.random.default_rng(s.cfg.training.train_seed)
    pick = [rows[i] for i in np.sort(rng.choice(len(rows), min(n, len(rows)), replace=False))]
    total, count = 0.0, 0
    for fid in sorted({f for f, _ in pick}):
        idx = np.sort(np.array([r for f, r in pick if f == fid]))
        block = np.asarray(s.metas[fid].source.read_rows(idx), dtype=np.float64)
        total, count = total + block.sum(0), count + len(block)
    return torch.as_tensor(total / max(count, 1), dtype=torch.float32)


KIND = "state-tx/model"  # checkpoints/final.ckpt, last.ckpt, step=<n>.ckpt (ftcore.artefact)


def model_description(s: Setup) -> dict:
    """The kind, model config and data keys a state-tx model file records (the run directory's JSON files keep
    the full contract: var_dims.json, the one-hot maps)."""
    v = s.var_dims
    return {"kind": KIND, "config": dataclasses.asdict(s.model_cfg),
            "data_keys": {"gene_names": v["gene_names"], "perts": list(s.vocab.perts), "batches": list(s.vocab.batches),
                          "cell_types": list(s.vocab.cell_types), "control_pert": s.vocab.control_pert,
                          **{k: v[k] for k in ("pert_col", "cell_type_key", "batch_col", "output_space", "pert_rep")}}}


def legacy_header(obj: dict) -> dict | None:
    """A checkpoint of an earlier state-tx (no model header): weights under 'model', the config in extra."""
    extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else {}
    return {"kind": KIND, "config": extra.get("model_config") or {}, "data_keys": {}}


def train(cfg: RunConfig, trust_checkpoint: bool = False, overwrite: bool = False) -> dict:
    """Validate everything, then write the maps, train with the core Trainer, write final.ckpt.

    Nothing is created before every check has passed; what is created is claimed (ftcore.io.claim_outputs),
    so a run that fails later (a NaN loss, a crash) leaves no new files behind (a resumed run's are kept).
    An existing output_dir/name is resumed only when its config.yaml shapes the same result (ftcore.rundir);
    `overwrite` starts fresh there instead.
    """
    resolve_device(cfg.training.device)  # 'gpu', or cuda on a machine without it: now, not after the maps
    s = setup(cfg, trust_checkpoint=trust_checkpoint)
    train_cfg = train_config(cfg, s.val is not None)  # the core's checks of the loop settings
    seed_everything(cfg.training.train_seed)  # the initial weights too depend on the seed alone
    model = StateTransitionModel(s.model_cfg)
    if s.model_cfg.output_bias_init == "mean" and not s.model_cfg.basal_residual:
        model.init_output_bias(training_mean(s))
    init_report = None
    if cfg.model.kwargs.get("init_from"):
        columns = str(cfg.model.kwargs.get("init_from_columns", "name"))
        init_report = init_from(model, str(cfg.model.kwargs["init_from"]), trust_checkpoint, s.vocab,
                                s.var_dims["pert_rep"], columns)
    check_run_dir(s, overwrite)
    run = open_run(cfg, overwrite, s)  # a run of other settings there is refused now, naming the changed keys
    claim_outputs(cfg.run_dir)  # inputs are valid: only now touch the output directory
    if is_main_process():
        check_output_dir(cfg.run_dir)  # creates it (claimed) and tries a write: a read-only place fails here
        run.start()  # --overwrite: the earlier run's files go; config.yaml = this command's effective config
        write_artefacts(s)
        if init_report is not None:
            atomic_write_json(cfg.run_dir / "init_from.json", {k: v for k, v in init_report.items() if k != "report"})
        print(f"state-tx: {s.train.n_sentences} train sentences ({s.plans['train'].n_cells} cells), "
              f"{s.val.n_sentences if s.val else 0} val sentences; model {cfg.model.name} "
              f"{model.n_params() / 1e6:.2f}M parameters, cell_set_len {s.model_cfg.cell_set_len}")
    trainer = StepCurveTrainer(model, train_cfg, s.train, s.val, loss=s.model_cfg.loss,
                               loss_fn=make_loss_fn(s.model_cfg), eval_fn=make_eval_fn(s.model_cfg),
                               extra_state={"model_config": dataclasses.asdict(s.model_cfg)},
                               artefact=model_header(**model_description(s), package="state-tx"))
    result = trainer.fit()
    final = cfg.run_dir / "checkpoints" / "final.ckpt"
    if is_main_process():
        save_model(final, model.state_dict(), **model_description(s), package="state-tx",
                   extra={"model_config": dataclasses.asdict(s.model_cfg)}, step=result.steps)
        print(f"wrote {final}")
    return {"steps": result.steps, "history": result.history, "final": str(final), "run_dir": str(cfg.run_dir)}
