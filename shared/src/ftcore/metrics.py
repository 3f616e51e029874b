"""The metric vocabulary every package reports by. Arrays are [n_samples, n_features] (spots / cells /
samples x genes) unless stated; numpy arrays and torch tensors are both accepted.

Names (one meaning each, everywhere):
    pearson_per_gene    [G] Pearson r of each gene (column) across samples
    pearson_overall     r over all values flattened (every sample x gene pair): mostly says whether the
                        gene means are right, since the spread between genes dominates it
    pearson_mean_gene   mean over genes of pearson_per_gene: whether samples are told apart, gene by gene
    pearson_delta       r, over genes, between the predicted and the observed shift from a control
                        (cell-eval's name): whether the response to a perturbation is right
    spearman_per_gene, spearman_overall, r2, mse, mae, accuracy

THE degenerate-value rule (one for every correlation here): r is undefined when either vector is
constant (zero variance: a gene never expressed in the split, a prediction that does not vary), and
undefined is NaN, never a made-up number. Means over genes / rows skip the NaN values; a mean with no
defined value is NaN. NaN reaches JSON as null (ftcore.io) and a Trainer never takes it as a best
value. A package that must show a number where r is undefined says so where it does it (state-tx's
tables write 0 as cell-eval users expect; var-st's checkpoint monitor ranks it below every r).
"""

from __future__ import annotations

import numpy as np


def _as_np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()  # bf16 / float32 / float64 tensors alike
    return np.asarray(x, dtype=np.float64)


def _columns_r(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pearson r of matching columns of two 2-D arrays; NaN where a column is constant in either."""
    if p.shape[0] == 0:
        return np.full(p.shape[1], np.nan)
    constant = (np.ptp(p, axis=0) == 0) | (np.ptp(t, axis=0) == 0)  # exact: a mean of equal floats may drift
    p = p - p.mean(0)
    t = t - t.mean(0)
    sp, st = (p * p).sum(0), (t * t).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / np.sqrt(sp * st)
    r[constant | (sp == 0) | (st == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)  # rounding can reach 1 + 1e-16


def nanmean(values) -> float:
    """Mean of the defined (finite) values; NaN when there are none (THE rule above)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def pearson_per_gene(pred, true) -> np.ndarray:
    """Pearson r of each column [G]; NaN for a column constant in pred or true."""
    return _columns_r(_as_np(pred), _as_np(true))


def pearson_overall(pred, true) -> float:
    """Pearson r over all values (every spot x gene pair flattened); NaN if either is constant."""
    p, t = _as_np(pred).reshape(-1, 1), _as_np(true).reshape(-1, 1)
    return float(_columns_r(p, t)[0]) if p.size else float("nan")


def pearson_mean_gene(pred, true) -> float:
    """Mean over genes of the per-gene Pearson r, skipping genes where r is undefined."""
    return nanmean(pearson_per_gene(pred, true))


mean_pearson = pearson_mean_gene  # the older name of the same metric


def pearson_delta(pred, true, pred_control, true_control=None):
    """Pearson r over genes of the predicted shift (pred - pred_control) against the observed one
    (true - true_control; true_control defaults to pred_control, the same basal cells).

    pred / true [G] or [B, G] (one row per perturbation); controls broadcast against them ([G] or
    [B, G]). Returns a float for [G] input, an array [B] for [B, G]; NaN where a shift is constant.
    """
    true_control = pred_control if true_control is None else true_control
    a = _as_np(pred) - _as_np(pred_control)
    b = _as_np(true) - _as_np(true_control)
    if a.ndim == 1:
        return float(_columns_r(a[:, None], b[:, None])[0])
    return _columns_r(a.T, b.T)


def spearman_per_gene(pred, true) -> np.ndarray:
    """Spearman rho of each column [G] (Pearson r of the ranks, ties averaged); NaN as pearson_per_gene."""
    from scipy.stats import rankdata

    p, t = _as_np(pred), _as_np(true)
    return pearson_per_gene(rankdata(p, axis=0), rankdata(t, axis=0))


def spearman_overall(pred, true) -> float:
    """Spearman rho over all values flattened."""
    return float(spearman_per_gene(_as_np(pred).reshape(-1, 1), _as_np(true).reshape(-1, 1))[0])


def r2_score(pred, true) -> float:
    """Coefficient of determination over all values; NaN when true is constant."""
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
        "pearson_mean_gene": pearson_mean_gene(p, t),
        "spearman_overall": spearman_overall(p, t),
        "r2": r2_score(p, t),
        "mse": mse(p, t),
        "mae": mae(p, t),
    }
