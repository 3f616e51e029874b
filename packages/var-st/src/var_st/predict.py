"""Prediction and evaluation: expression from histology alone (generation through the frozen VQ-VAE),
the ridge baseline on the same features and split, and the metrics report."""

from __future__ import annotations

import numpy as np
import torch
from ftcore.errors import UserError
from ftcore.metrics import mae, mse, nanmean, pearson_per_gene

from var_st.data import SpotData, top_variable_genes
from var_st.model import TwoStageVARST
from var_st.train import _tensor


@torch.no_grad()
def predict_expression(model: TwoStageVARST, data: SpotData, idx: np.ndarray | None = None, batch_size: int = 256,
                       decoding: str = "expected", temperature: float = 1.0, top_k: int | None = 50,
                       top_p: float | None = 0.9, seed: int = 0, num_samples: int = 1) -> np.ndarray:
    """Predicted expression [n, G] for spots idx (all by default).

    decoding: "expected" (probability-weighted codes), "greedy" (argmax tokens) or "sample"
    (temperature / top_k / top_p; the mean of num_samples draws, reproducible with seed).
    """
    if decoding not in ("expected", "greedy", "sample"):
        raise UserError(f"unknown decoding {decoding!r}; choose expected, greedy or sample")
    draws_per_batch = num_samples if decoding == "sample" else 1
    idx = np.arange(len(data)) if idx is None else idx
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    h, c = _tensor(data.histology[idx]), _tensor(data.coords[idx])
    out = []
    for i in range(0, len(idx), batch_size):
        draws = [model.inference(h[i:i + batch_size], c[i:i + batch_size], temperature, top_k, top_p,
                                 greedy=decoding == "greedy", expected=decoding == "expected",
                                 generator=gen)["predicted_gene_expression"] for _ in range(draws_per_batch)]
        out.append(torch.stack(draws).mean(0).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.num_genes), np.float32)


@torch.no_grad()
def reconstruct_expression(model: TwoStageVARST, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Stage-1 reconstruction decode(encode(x)): the ceiling of what stage 2 can reach."""
    dev = next(model.parameters()).device
    t = _tensor(x)
    return torch.cat([model.vqvae.reconstruct(t[i:i + batch_size].to(dev)).cpu() for i in range(0, len(t), batch_size)]).numpy()


def ridge_baseline(data: SpotData, train_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
    """Ridge regression histology -> expression fitted on train_idx (alpha by internal CV), predicted on test_idx."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ridge = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 5, 13)))
    ridge.fit(data.histology[train_idx], data.expression[train_idx])
    return ridge.predict(data.histology[test_idx]).astype(np.float32)


def regression_metrics(pred: np.ndarray, true: np.ndarray, top_genes: np.ndarray) -> dict[str, float]:
    """Per-gene Pearson (mean over all genes and over the top-50 HVGs, as HEST reports), MSE, MAE."""
    r = pearson_per_gene(pred, true)  # ftcore.metrics: NaN for a constant gene, skipped by the means
    return {"pearson_mean_all_genes": nanmean(r), "pearson_mean_top50_hvg": nanmean(r[top_genes]),
            "mse": mse(pred, true), "mae": mae(pred, true)}


def evaluate(model: TwoStageVARST, data: SpotData, split: str, prediction: np.ndarray, per_gene: bool = False):
    """Metrics of `prediction` (spots of `split`), the stage-1 ceiling and ridge on the same split.
    per_gene: also return {method: per-gene Pearson r [G]} (what the figure shows)."""
    test = _split_indices(data, split)
    train = data.split["train"]
    true = data.expression[test]
    top = top_variable_genes(data.expression[train], 50)
    preds = {"var_st": prediction, "stage1_reconstruction_ceiling": reconstruct_expression(model, true),
             "ridge_histology": ridge_baseline(data, train, test)}
    report = {
        "split": split, "split_rule": data.split_rule, "n_train_spots": int(len(train)), "n_eval_spots": int(len(test)),
        "num_genes": len(data.gene_names), "top50_hvg": [data.gene_names[i] for i in top],
        "methods": {name: regression_metrics(p, true, top) for name, p in preds.items()},
    }
    if per_gene:
        return report, {name: pearson_per_gene(p, true) for name, p in preds.items()}
    return report


def _split_indices(data: SpotData, split: str) -> np.ndarray:
    if split == "all":
        return np.arange(len(data))
    if split not in data.split:
        raise UserError(f"unknown split {split!r}; choose train, val, test or all")
    idx = data.split[split]
    if len(idx) < 2:
        raise UserError(f"the {split} split has {len(idx)} spots; evaluate needs at least 2 (try --split all)")
    return idx


def format_report(report: dict) -> str:
    rows = [f"{'method':32s} {'pearson(all)':>12s} {'pearson(top50)':>14s} {'mse':>8s} {'mae':>8s}"]
    for name, m in report["methods"].items():
        rows.append(f"{name:32s} {m['pearson_mean_all_genes']:12.4f} {m['pearson_mean_top50_hvg']:14.4f} "
                    f"{m['mse']:8.4f} {m['mae']:8.4f}")
    return f"{report['split']} split ({report['split_rule']}), {report['n_eval_spots']} spots:\n" + "\n".join(rows)
