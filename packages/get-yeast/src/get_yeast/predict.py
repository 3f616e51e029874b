"""Prediction and evaluation: expression per region and condition, the metrics (overall and
condition-response Pearson, R2, MSE), the predictions table, plots and permutation importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ftcore.config import from_dict
from ftcore.errors import UserError
from ftcore.io import atomic_path, atomic_write_json, check_output_dir, claim_outputs
from ftcore.metrics import pearson_overall, regression_report
from ftcore.training import move_to, resolve_device
from torch import nn

from get_yeast.config import YeastTrainingConfig
from get_yeast.data import (
    NUMERIC_FEATURES,
    YeastDataset,
    YeastTable,
    collate,
    read_table,
)
from get_yeast.model import YeastModelConfig


@torch.no_grad()
def predict(model: nn.Module, dataset: YeastDataset, batch_size: int = 32,
            conditions: dict[str, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(pred, true) as [n_regions_total, T] over all samples in order; `conditions` replaces the
    dataset's encoded conditions (permutation importance)."""
    model.eval()
    device = next(model.parameters()).device
    preds, trues = [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        if conditions is not None:
            for j, it in enumerate(items):
                it["conditions"] = {k: v[start + j] for k, v in conditions.items()}
        batch = move_to(collate(items), device)
        pred = model(batch["region_motif"], batch["conditions"], batch["padding"])
        valid = ~batch["padding"]
        preds.append(pred[valid].float().cpu().numpy())
        trues.append(batch["exp_label"][valid].float().cpu().numpy())
    return np.concatenate(preds), np.concatenate(trues)


def condition_response_pearson(pred: np.ndarray, true: np.ndarray, regions: list[str]) -> float:
    """Pearson r (ftcore.metrics.pearson_overall) of each region's deviation from its own mean across
    samples: how well the model tracks condition-driven changes (a condition-blind model only gets what
    accessibility tells it). NaN (the core's rule) when no variation across conditions is predicted at all."""
    keys = np.asarray(regions)
    p, t = pred[:, 0].astype(float).copy(), true[:, 0].astype(float).copy()
    for k in np.unique(keys):
        m = keys == k
        p[m] -= p[m].mean()
        t[m] -= t[m].mean()
    return pearson_overall(p, t)


def metrics_for(pred: np.ndarray, true: np.ndarray, regions: list[str]) -> dict[str, float]:
    rep = regression_report(pred, true)
    return {"pearson": rep["pearson_overall"], "spearman": rep["spearman_overall"], "r2": rep["r2"],
            "mse": rep["mse"], "mae": rep["mae"], "condition_response_pearson": condition_response_pearson(pred, true, regions),
            "n_regions": int(pred.shape[0])}


# permutation groups: report name -> (encoded condition entry, numeric column or None)
IMPORTANCE_GROUPS = {
    "medium": ("medium", None),
    "drug": ("drug", None),
    "carbon_source": ("carbon", None),
    "nitrogen_source": ("nitrogen", None),
    **{name: ("numeric", i) for i, name in enumerate(NUMERIC_FEATURES)},
}


def permutation_importance(model: nn.Module, dataset: YeastDataset, repeats: int, seed: int) -> dict[str, float]:
    """Increase of MSE when one condition feature is shuffled across samples (mean over repeats)."""
    pred, true = predict(model, dataset)
    base = float(((pred - true) ** 2).mean())
    rng = np.random.default_rng(seed)
    out = {}
    for name, (key, col) in IMPORTANCE_GROUPS.items():
        deltas = []
        for _ in range(repeats):
            perm = torch.from_numpy(rng.permutation(len(dataset)))
            cond = {k: v.clone() for k, v in dataset.conditions.items()}
            if col is None:
                cond[key] = cond[key][perm]
            else:  # a value moves together with its "recorded or not" flag
                cond["numeric"][:, col] = dataset.conditions["numeric"][perm, col]
                cond["numeric_present"][:, col] = dataset.conditions["numeric_present"][perm, col]
            p, _ = predict(model, dataset, conditions=cond)
            deltas.append(float(((p - true) ** 2).mean()) - base)
        out[name] = float(np.mean(deltas))
    return out


def write_evaluation(model: nn.Module, table: YeastTable, spec: dict, out: Path, *, interpret: bool,
                     save_predictions: bool, repeats: int, seed: int, label: str) -> dict:
    """metrics.json, predictions.csv, pred_vs_true.png, residuals.png, condition_importance.{json,png}."""
    from ftcore.plotting import plot_pred_vs_true

    cc = from_dict(YeastModelConfig, spec["model_config"], "model spec").condition
    ds = YeastDataset(table, cc, spec["drug_vocab"])
    pred, true = predict(model, ds)
    regions = [r for s in table.samples for r in s.regions]
    metrics = metrics_for(pred, true, regions)
    metrics.update({"n_samples": len(table.samples), "evaluated_on": label})
    if interpret and cc.enabled:
        imp = permutation_importance(model, ds, repeats, seed)
        atomic_write_json(out / "condition_importance.json", imp)
        _plot_importance(imp, out / "condition_importance.png")
        metrics["condition_importance_mse_increase"] = imp
    if save_predictions:
        _write_predictions(table, pred, true, out / "predictions.csv")
    plot_pred_vs_true(pred, true, out / "pred_vs_true.png", title=f"GET-yeast, {label}")
    _plot_residuals(pred, true, out / "residuals.png")
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _write_predictions(table: YeastTable, pred: np.ndarray, true: np.ndarray, path: Path) -> None:
    import pandas as pd

    rows = []
    for s in table.samples:
        for r in s.regions:
            rows.append({"sample": s.name, "region": r, **{k: s.condition[k] for k in s.condition}})
    df = pd.DataFrame(rows)
    for j, col in enumerate(table.target_columns):
        df[col] = true[:, j]
        df[f"{col}_pred"] = pred[:, j]
        df[f"{col}_residual"] = pred[:, j] - true[:, j]
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _plot_residuals(pred: np.ndarray, true: np.ndarray, path: Path) -> None:
    from ftcore.io import atomic_savefig
    from ftcore.plotting import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(pred[:, 0], pred[:, 0] - true[:, 0], s=3, alpha=0.3)
    ax.axhline(0, color="k", lw=1, ls="--")
    ax.set_xlabel("predicted expression")
    ax.set_ylabel("residual (pred - true)")
    ax.set_title("residuals vs prediction")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _plot_importance(imp: dict[str, float], path: Path) -> None:
    from ftcore.io import atomic_savefig
    from ftcore.plotting import _plt

    plt = _plt()
    names = sorted(imp, key=imp.get)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("MSE increase when shuffled across samples")
    ax.set_ylabel("condition feature")
    ax.set_title("condition-feature importance (permutation)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def evaluate(cfg: YeastTrainingConfig, data_path: str | Path, model_path: str | Path, output: str | Path, *,
             device: str = "auto", split: str = "auto") -> dict:
    """Evaluate a trained model on a data file (the held-out test samples when the file has them)."""
    from get_yeast.train import EVALUATION_FILES, check_output_names, load_trained  # train imports this module

    dev = resolve_device(device)
    model, spec = load_trained(model_path, dev)
    cc = from_dict(YeastModelConfig, spec["model_config"], "model spec").condition
    table = read_table(data_path, cfg.data, cc, known_from=f"the trained model {model_path}")
    if table.feature_names != spec["feature_names"]:
        want = spec["feature_names"]
        first = next((i for i, (a, b) in enumerate(zip(table.feature_names, want)) if a != b), min(len(want), table.num_features))
        where = (f"first difference at feature {first + 1}: {table.feature_names[first]!r} vs {want[first]!r}"
                 if first < min(len(want), table.num_features) else f"{table.num_features} vs {len(want)} features")
        raise UserError(f"{table.source}: {table.num_features} region features, but the model was trained on {len(want)} "
                        f"(region_model.num_features={len(want)}: {len(want) - 1} motif columns + accessibility, "
                        f"picked by data.motif_prefix {cfg.data.motif_prefix!r}); {where}; use the training table's "
                        "motif columns in the same order")
    if table.target_columns != spec["target_columns"]:
        raise UserError(f"target columns {table.target_columns} differ from the trained model's {spec['target_columns']}")
    names = {s.name for s in table.samples}
    if split == "auto":
        split = "test" if set(spec["splits"].get("test", [])) & names else "all"
    if split != "all":
        wanted = spec["splits"].get(split, [])
        if not set(wanted) & names:
            raise UserError(f"none of the model's {split!r} samples are in {table.source}; use --split all for new data")
        table = table.subset(wanted)
    check_output_names(Path(output), EVALUATION_FILES)
    claim_outputs(output)
    out = check_output_dir(output, flag="--output")
    metrics = write_evaluation(model, table, spec, out, interpret=cfg.task.interpret, save_predictions=cfg.task.save_predictions,
                               repeats=cfg.task.permutation_repeats, seed=cfg.experiment.seed,
                               label="test split" if split == "test" else f"{split} samples")
    print_metrics(split, metrics)
    return metrics


def print_metrics(label: str, m: dict) -> None:
    print(f"{label}: pearson {m['pearson']:.3f}  spearman {m['spearman']:.3f}  r2 {m['r2']:.3f}  mse {m['mse']:.4f}  "
          f"condition-response pearson {m['condition_response_pearson']:.3f}  ({m['n_samples']} samples)")
