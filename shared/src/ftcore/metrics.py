"""Metrics shared by the packages. Arrays are [n_samples, n_features] unless stated."""

from __future__ import annotations

import numpy as np


def _as_np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def pearson_per_gene(pred, true) -> np.ndarray:
    """Pearson r of each column [G]; NaN for a column constant in pred or true."""
    p, t = _as_np(pred), _as_np(true)
    p = p - p.mean(0)
    t = t - t.mean(0)
    denom = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / denom
    r[denom == 0] = np.nan
    return r


def pearson_overall(pred, true) -> float:
    """Pearson r over all values (every spot x gene pair flattened)."""
    p, t = _as_np(pred).ravel(), _as_np(true).ravel()
    if p.std() == 0 or t.std() == 0:
        return float("nan")
    return float(np.corrcoef(p, t)[0, 1])


def mean_pearson(pred, true) -> float:
    """Mean over genes of the per-gene Pearson r, ignoring constant genes."""
    r = pearson_per_gene(pred, true)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def spearman_per_gene(pred, true) -> np.ndarray:
    from scipy.stats import rankdata

    p, t = _as_np(pred), _as_np(true)
    return pearson_per_gene(rankdata(p, axis=0), rankdata(t, axis=0))


def r2_score(pred, true) -> float:
    p, t = _as_np(pred).ravel(), _as_np(true).ravel()
    ss_tot = ((t - t.mean()) ** 2).sum()
    return float(1 - ((t - p) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def mse(pred, true) -> float:
    return float(((_as_np(pred) - _as_np(true)) ** 2).mean())


def mae(pred, true) -> float:
    return float(np.abs(_as_np(pred) - _as_np(true)).mean())


def accuracy(pred_labels, true_labels) -> float:
    p, t = np.asarray(pred_labels), np.asarray(true_labels)
    return float((p == t).mean()) if len(t) else float("nan")


def regression_report(pred, true) -> dict[str, float]:
    """The regression metrics every package reports, by the same names."""
    p, t = _as_np(pred), _as_np(true)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    return {
        "pearson_overall": pearson_overall(p, t),
        "pearson_mean_gene": mean_pearson(p, t),
        "spearman_overall": float(spearman_per_gene(p.reshape(-1, 1), t.reshape(-1, 1))[0]),
        "r2": r2_score(p, t),
        "mse": mse(p, t),
        "mae": mae(p, t),
    }
