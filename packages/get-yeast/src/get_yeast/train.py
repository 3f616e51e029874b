"""Train (LoRA fine-tuning through the core Trainer) and evaluate GET-yeast.

    file -> YeastTable (validated) -> held-out-condition split -> GETYeast (+ GET checkpoint) -> peft LoRA
         -> ftcore Trainer -> best_model.pth -> metrics.json, predictions.csv, plots, importance

A "spec" (plain dict: model config, drug vocabulary, LoRA config, feature names, splits) travels
inside every checkpoint this package writes, so `evaluate` rebuilds exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from ftcore.artefact import load_model, model_header
from ftcore.config import from_dict
from ftcore.distributed import is_main_process
from ftcore.errors import UserError
from ftcore.freezing import apply_freezing
from ftcore.io import atomic_write_json, check_output_dir, claim_outputs
from ftcore.loading import load_partial
from ftcore.training import TrainConfig, Trainer, resolve_device, seed_everything
from torch import nn
from torch.utils.data import DataLoader

from get_yeast.adapt import apply_lora, export_merged, trainable_spec
from get_yeast.config import LoraConfig, YeastTrainingConfig
from get_yeast.data import (
    YeastDataset,
    YeastTable,
    collate,
    drug_vocabulary,
    read_table,
    split_samples,
)
from get_yeast.layouts import parse_renames
from get_yeast.model import GETYeast, YeastModelConfig, load_pretrained
from get_yeast.predict import metrics_for, predict, print_metrics, write_evaluation

BEST_NAME, LAST_NAME = "best_model.pth", "last.pth"
EVALUATION_FILES = ("metrics.json", "predictions.csv", "pred_vs_true.png", "residuals.png", "condition_importance.json",
                    "condition_importance.png")
TRAINING_FILES = (BEST_NAME, LAST_NAME, "history.json", "training_curve.png", "splits.json", "run_config.json",
                  "freeze_report.json", "load_report.json", "merged_model.safetensors", *EVALUATION_FILES)


# --- the run directory (ftcore.rundir): run_config.yaml, resumed only by the same result-shaping settings
RUN_CONFIG = "run_config.yaml"  # every key of both configs + the data file and checkpoint by path, size, sha256
# what does not shape the trained model: where it runs, how often it checkpoints, the run's name, the paths of
# the model YAML and the checkpoint (their contents are compared: model.*, pretrained_file.*) and the
# evaluation afterwards (task.*: redone on every run, resumed or not). training.epochs / max_steps too under
# the constant schedule (more epochs continue the same run); under cosine they set the decay: another run.
RESUME_IGNORES = ("experiment.name", "model_config", "pretrained.checkpoint", "training.device", "training.precision",
                  "training.compile", "training.ckpt_every_steps", "task.*")
# what a training run writes in --output (--overwrite removes these and nothing else: the data may live there)
RUN_FILES = (RUN_CONFIG, "history.csv", "tensorboard")  # + TRAINING_FILES (above)


def run_record(cfg: YeastTrainingConfig, model_cfg: YeastModelConfig, data_path: str | Path) -> dict:
    from ftcore.rundir import file_identity

    return {**dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg), "data_file": file_identity(data_path),
            "pretrained_file": file_identity(cfg.pretrained.checkpoint) if cfg.pretrained.checkpoint else None}


def open_run(cfg: YeastTrainingConfig, model_cfg: YeastModelConfig, data_path: str | Path, out: Path,
             overwrite: bool = False):
    from ftcore.rundir import open_run_dir

    ignore = RESUME_IGNORES + (("training.epochs", "training.max_steps") if cfg.training.schedule == "constant" else ())
    return open_run_dir(out, run_record(cfg, model_cfg, data_path), config_name=RUN_CONFIG, ignore=ignore,
                        run_files=RUN_FILES + TRAINING_FILES, overwrite=overwrite)


def check_output_names(out: Path, names: tuple[str, ...]) -> None:
    """A file this command writes inside `out` must not exist there as a directory (the rename onto it fails)."""
    for name in names:
        if (out / name).is_dir():
            raise UserError(f"--output {out}: {name} there is a directory, but this command writes a file of that name; "
                            "move it away or choose another --output")


# --------------------------------------------------------------------------- model from spec
def make_spec(model_cfg: YeastModelConfig, drug_vocab: list[str], lora: LoraConfig | None, table: YeastTable,
              splits: dict | None = None) -> dict:
    return {"model_config": dataclasses.asdict(model_cfg), "drug_vocab": list(drug_vocab),
            "lora": dataclasses.asdict(lora) if lora is not None and lora.enabled else None,
            "feature_names": list(table.feature_names), "target_columns": list(table.target_columns),
            "splits": splits or {}}


def build_model(spec: dict) -> nn.Module:
    """GETYeast (peft-wrapped when the spec has LoRA) with freshly initialised weights."""
    model = GETYeast(from_dict(YeastModelConfig, spec["model_config"], "model spec"), n_drugs=len(spec["drug_vocab"]))
    if spec.get("lora"):
        model = apply_lora(model, from_dict(LoraConfig, spec["lora"], "model spec"))
    return model


KIND = "get-yeast/model"  # best_model.pth, last.pth (ftcore.artefact); merged_model.safetensors keeps its JSON metadata
SPEC_CONFIG = ("model_config", "lora")  # the spec's entries that shape the model; the rest are its data keys


def spec_header(spec: dict) -> dict:
    """The model header of a get-yeast model (ftcore.artefact) from its spec."""
    return model_header(kind=KIND, config={k: spec[k] for k in SPEC_CONFIG},
                        data_keys={k: v for k, v in spec.items() if k not in SPEC_CONFIG}, package="get-yeast")


def _legacy_header(obj: dict) -> dict | None:
    """A file of an earlier get-yeast (no model header): the spec was its extra's only entry."""
    extra = obj.get("extra")
    spec = extra.get("spec") if isinstance(extra, dict) else None
    if not isinstance(spec, dict) or not all(k in spec for k in SPEC_CONFIG):
        return None
    return {"kind": KIND, "config": {k: spec[k] for k in SPEC_CONFIG},
            "data_keys": {k: v for k, v in spec.items() if k not in SPEC_CONFIG}}


def load_trained(path: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """A model this package trained: best_model.pth / last.pth, or merged_model.safetensors."""
    from ftcore.checkpoint import read_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        state = read_checkpoint(path)  # validates the file, one-line errors when corrupt
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "get_yeast_spec" not in meta:
            raise UserError(f"{path}: no get_yeast_spec metadata; pass the best_model.pth or merged_model.safetensors "
                            "that get-yeast train wrote")
        spec = json.loads(meta["get_yeast_spec"])
    else:
        mf = load_model(path, kind=KIND, legacy=_legacy_header, require=("drug_vocab", "feature_names"),
                        what="a get-yeast training checkpoint", hint="pass the best_model.pth written by get-yeast train")
        state, spec = mf.state, {**mf.config, **mf.data_keys}
    model = build_model(spec)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit the model described inside it "
                        f"({len(missing)} missing, e.g. {missing[:1]}; {len(unexpected)} unexpected, e.g. {unexpected[:1]})")
    # shapes, integer-for-float tensors and NaN/inf weights are refused by name (the core's checks)
    load_partial(model, state, strict=True, source=str(path), target="the model described inside it", verbose=False)
    return model.to(device).eval(), spec


# --------------------------------------------------------------------------- loss + prediction
def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
    """MSE over real (unpadded) regions, in fp32.

    A masked mean rather than `pred[valid]`: boolean indexing has a data-dependent shape, which broke
    torch.compile's graph three times per step (benchmarks/results/README.md)."""
    pred = model(batch["region_motif"], batch["conditions"], batch["padding"])
    valid = ~batch["padding"]
    valid = valid.reshape(valid.shape + (1,) * (pred.dim() - valid.dim())).expand_as(pred)
    sq = torch.where(valid, (pred.float() - batch["exp_label"].float()).square(), 0.0)
    return sq.sum() / valid.sum()


def make_eval_fn(val_set: YeastDataset, batch_size: int):
    regions = [r for s in val_set.table.samples for r in s.regions]

    def eval_fn(model: nn.Module, loader: DataLoader) -> dict[str, float]:
        pred, true = predict(model, val_set, batch_size)
        m = metrics_for(pred, true, regions)
        # val_pearson_overall: pearson_overall of the validation regions (metrics.json's "pearson")
        return {"val_loss": m["mse"], "val_pearson_overall": m["pearson"],
                "val_condition_response_pearson": m["condition_response_pearson"]}

    return eval_fn


# --------------------------------------------------------------------------- train
def train_settings(cfg: YeastTrainingConfig, output: str | Path, progress: bool = True) -> TrainConfig:
    """The core Trainer's settings from the training config (the core validates schedule/precision/sizes
    here), the device and the checkpoint/from-scratch choice: what needs no data, before anything is written."""
    t = cfg.training
    tc = TrainConfig.from_sections(t, output_dir=str(output), seed=cfg.experiment.seed, best_name=BEST_NAME,  # training.*: the Trainer's names
                                   last_name=LAST_NAME, restore_best=True, progress=progress)
    try:
        resolve_device(t.device)
    except UserError as err:
        raise UserError(f"training.device: {err}") from None
    pre = cfg.pretrained
    if pre.checkpoint and pre.from_scratch:
        raise UserError(f"both a checkpoint ({pre.checkpoint}) and from scratch (--from-scratch / pretrained.from_scratch) "
                        "are given; drop one")
    return tc


def check_table_fits(table: YeastTable, model_cfg: YeastModelConfig) -> None:
    """The table's region features and targets against the model config's sizes."""
    n_motif = table.num_features - 1
    want = model_cfg.region_model.num_features
    if table.num_features != want:
        raise UserError(f"{table.source}: {n_motif} motif columns + accessibility = {table.num_features} region features, "
                        f"but the model expects num_features={want}: set region_model.num_features: {table.num_features} "
                        "in the model YAML (--model-config FILE; `get-yeast copy-config DIR` writes one to edit) or pass "
                        f"--set model.region_model.num_features={table.num_features}; a GET checkpoint fixes the number: "
                        f"then give {want - 1} motif columns")
    if len(table.target_columns) != model_cfg.region_model.output_dim:
        raise UserError(f"{len(table.target_columns)} target columns ({', '.join(table.target_columns)}) but "
                        f"region_model.output_dim={model_cfg.region_model.output_dim}; make them equal "
                        "(data.target_columns in the training config, region_model.output_dim in the model config)")


def train(cfg: YeastTrainingConfig, model_cfg: YeastModelConfig, data_path: str | Path, output: str | Path, *,
          trust_checkpoint: bool = False, allow_unloaded_frozen: bool = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Validate everything, then fine-tune; returns the test metrics (rank 0) or {} (other ranks).

    An --output holding a run resumes it only when run_config.yaml shapes the same result (ftcore.rundir);
    `overwrite` removes that run's files and starts fresh."""
    out = Path(output)
    # 1. inputs, checked before anything is written
    t = cfg.training
    tc = train_settings(cfg, out, progress)
    table = read_table(data_path, cfg.data, model_cfg.condition)
    check_table_fits(table, model_cfg)
    splits = split_samples(table, cfg.data, cfg.experiment.seed)
    train_table, val_table, test_table = (table.subset(splits[k]) for k in ("train", "val", "test"))
    if not (val_table.samples or test_table.samples):
        raise UserError(f"no samples held out for validation/test ({len(splits['train'])} all in training); "
                        "raise data.val_fraction / data.test_fraction or add conditions")
    vocab = drug_vocabulary(train_table)
    seed_everything(cfg.experiment.seed)  # same initial weights (new layers, LoRA) on every rank and rerun
    pre = cfg.pretrained
    model = GETYeast(model_cfg, n_drugs=len(vocab))
    report = None
    if pre.checkpoint:
        report = load_pretrained(model, pre.checkpoint, trust_pickle=trust_checkpoint, key=pre.key,
                                 renames=parse_renames(pre.renames), verbose=is_main_process())
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    if report is None and cfg.lora.enabled and not pre.from_scratch:
        raise UserError("no GET checkpoint: LoRA would train adapters over a randomly initialised, frozen GET backbone; "
                        "pass --checkpoint checkpoint-799.pth (or pretrained.checkpoint), or --from-scratch "
                        "(pretrained.from_scratch: true) to start from random weights on purpose")
    if report is None and is_main_process():
        print("ℹ from scratch: no pretrained weights, every weight starts at its random initialisation"
              + (" (LoRA: the frozen backbone stays random)" if cfg.lora.enabled else ""))
    # Frozen tensors must come from the checkpoint (the core refuses others); from scratch, all of them
    # are deliberately at their initialisation.
    freeze = apply_freezing(model, trainable_spec(cfg.lora), pretrained=report, fresh=(r".",) if pre.from_scratch else (),
                            allow_unloaded_frozen=allow_unloaded_frozen, verbose=is_main_process())
    spec = make_spec(model_cfg, vocab, cfg.lora, table, splits)
    check_output_names(out, TRAINING_FILES)
    run = open_run(cfg, model_cfg, data_path, out, overwrite)  # other settings in --output: refused here
    claim_outputs(out)  # from here on a failure (a NaN loss too) removes what this run created
    check_output_dir(out, flag="--output")
    run.start()  # --overwrite: the earlier run's files go; run_config.yaml = this command's effective config

    # 2. this package's own artefacts (rank 0; deterministic, so a resumed run rewrites the same)
    if is_main_process():
        atomic_write_json(out / "splits.json", splits)
        atomic_write_json(out / "run_config.json", {"training": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg),
                                                    "data": str(Path(data_path).resolve()), "drug_vocab": vocab})
        atomic_write_json(out / "freeze_report.json", freeze.to_dict() | {"trainable_names": freeze.trainable_names})
        if report is not None:
            atomic_write_json(out / "load_report.json", report.to_dict() | {"checkpoint_layout": report.layout})
        print(f"data: {len(table.samples)} samples x regions from {table.source}; split by {cfg.data.split_by}: "
              f"{len(train_table.samples)} train / {len(val_table.samples)} val / {len(test_table.samples)} test samples")

    val_set = YeastDataset(val_table if val_table.samples else train_table, model_cfg.condition, vocab)
    trainer = Trainer(model, tc, YeastDataset(train_table, model_cfg.condition, vocab), val_set,
                      loss_fn=loss_fn, eval_fn=make_eval_fn(val_set, t.batch_size), collate_fn=collate,
                      extra_state={"spec": spec}, artefact=spec_header(spec))
    result = trainer.fit()
    if not is_main_process():
        return {}

    # 3. test on held-out conditions with the best weights (restored by fit)
    model = trainer.model
    eval_table, label = (test_table, "test split") if test_table.samples else (val_table, "validation split")
    metrics = write_evaluation(model, eval_table, spec, out, interpret=cfg.task.interpret,
                               save_predictions=cfg.task.save_predictions, repeats=cfg.task.permutation_repeats,
                               seed=cfg.experiment.seed, label=f"held-out {cfg.data.split_by}s ({label})")
    metrics.update({"best_val_loss": result.best_metric, "steps": result.steps,
                    "trainable_parameters": freeze.trainable, "total_parameters": freeze.total})
    if cfg.task.export_merged and cfg.lora.enabled:
        export_merged(model, out / "merged_model.safetensors", spec)
    atomic_write_json(out / "metrics.json", metrics)
    print_metrics("test", metrics)
    return metrics


