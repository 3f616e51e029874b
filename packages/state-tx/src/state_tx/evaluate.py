"""Built-in evaluation of predicted vs observed perturbation responses, and the control-mean baseline.

    summary = evaluate(adata_pred, adata_real, pert_col="gene", control_pert="non-targeting",
                       celltype_col="cell_type", outdir="results/")

Per (cell type, perturbation), on mean profiles (cells are unpaired, so means are compared):
    pearson_delta       r between predicted and observed shift from the control mean (each file's own controls)
    mse, mae            between predicted and observed perturbed means
    mse_delta           between predicted and observed shifts
    de_overlap          overlap of the top-k genes by |observed shift| and by |predicted shift|
    direction_match     fraction of the observed top-k genes whose shift sign is predicted
    discrimination_l1   1 - (rank of the true perturbation among all, by L1 distance to the prediction)/(n-1)
The baseline predicts the control mean for every perturbation (shift 0: pearson_delta 0 by convention).
Writes {celltype}_pert_results.csv and {celltype}_agg_results.csv (cell-eval's file names) and
summary.json; the community evaluator `cell-eval run` reads the same two .h5ad files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftcore.errors import UserError
from ftcore.io import atomic_path, atomic_write_json

METRICS = ("pearson_delta", "mse", "mae", "mse_delta", "de_overlap", "direction_match", "discrimination_l1")


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else 0.0


def profile_metrics(pred_mean: np.ndarray, real_mean: np.ndarray, pred_ctrl: np.ndarray, real_ctrl: np.ndarray,
                    top_k: int) -> dict[str, float]:
    """Metrics of one perturbation; all inputs [G] mean profiles."""
    pd_, rd = pred_mean - pred_ctrl, real_mean - real_ctrl
    top_real = np.argsort(-np.abs(rd))[:top_k]
    top_pred = np.argsort(-np.abs(pd_))[:top_k]
    return {
        "pearson_delta": _pearson(pd_, rd),
        "mse": float(np.mean((pred_mean - real_mean) ** 2)),
        "mae": float(np.mean(np.abs(pred_mean - real_mean))),
        "mse_delta": float(np.mean((pd_ - rd) ** 2)),
        "de_overlap": len(set(top_real) & set(top_pred)) / top_k,
        "direction_match": float(np.mean(np.sign(pd_[top_real]) == np.sign(rd[top_real]))),
    }


def _group_means(X, labels: np.ndarray, names: list[str]) -> np.ndarray:
    return np.stack([_dense(X[labels == n]).mean(0) for n in names])


def check_columns(adata, cols: dict[str, str], which: str) -> None:
    for role, col in cols.items():
        if col not in adata.obs:
            raise UserError(f"{which}: obs has no column {col!r} ({role}); it has [{', '.join(map(str, adata.obs.columns))}]")


def evaluate(pred, real, pert_col: str, control_pert: str, celltype_col: str, outdir: str | Path | None = None,
             top_k: int | None = None) -> dict:
    """Metrics per cell type and perturbation for the model and the control-mean baseline."""
    import pandas as pd

    check_columns(pred, {"--pert-col": pert_col, "--celltype-col": celltype_col}, "predictions")
    check_columns(real, {"--pert-col": pert_col, "--celltype-col": celltype_col}, "ground truth")
    if pred.n_vars != real.n_vars:
        raise UserError(f"predictions have {pred.n_vars} genes but the ground truth has {real.n_vars}; "
                        "evaluate in the same gene space (both HVG or both all genes)")
    p_genes, r_genes = list(map(str, pred.var_names)), list(map(str, real.var_names))
    if p_genes != r_genes:
        if set(p_genes) == set(r_genes) and len(set(r_genes)) == len(r_genes):
            real = real[:, p_genes]  # the same genes in another order: compare gene by gene
        else:
            i = next(i for i, (a, b) in enumerate(zip(p_genes, r_genes)) if a != b)
            raise UserError(f"predictions and ground truth name different genes (first difference at column {i}: "
                            f"{p_genes[i]!r} vs {r_genes[i]!r}); evaluate in the same gene space")
    from ftcore.data import check_values

    for which, adata in (("predictions", pred), ("ground truth", real)):
        if adata.n_obs == 0:
            raise UserError(f"{which}: the file has no cells")
        check_values(adata.X, f"{which} X", row_names=list(map(str, adata.obs_names)), col_names=p_genes)
    top_k = top_k or max(1, min(50, real.n_vars // 5))
    p_pert, r_pert = pred.obs[pert_col].astype(str).values, real.obs[pert_col].astype(str).values
    p_ct, r_ct = pred.obs[celltype_col].astype(str).values, real.obs[celltype_col].astype(str).values
    rows, summary = [], {"model": {}, "control_mean_baseline": {}, "top_k": top_k}
    for ct in sorted(set(r_ct)):
        in_p, in_r = p_ct == ct, r_ct == ct
        perts = sorted(set(r_pert[in_r]) & set(p_pert[in_p]) - {control_pert})
        if not ((r_pert[in_r] == control_pert).any() and (p_pert[in_p] == control_pert).any()):
            raise UserError(f"cell type {ct!r}: both files need control cells ({control_pert!r} in obs[{pert_col!r}]) "
                            "to measure shifts; include the controls of that cell type")
        if not perts:
            continue
        Xp, Xr = pred.X[np.flatnonzero(in_p)], real.X[np.flatnonzero(in_r)]
        pm = _group_means(Xp, p_pert[in_p], perts)
        rm = _group_means(Xr, r_pert[in_r], perts)
        pc = _dense(Xp[p_pert[in_p] == control_pert]).mean(0)
        rc = _dense(Xr[r_pert[in_r] == control_pert]).mean(0)
        # discrimination: distance of each prediction to every observed perturbation mean
        d_model = np.abs(pm[:, None, :] - rm[None, :, :]).sum(-1)
        d_base = np.abs(rc[None, None, :] - rm[None, :, :]).sum(-1).repeat(len(perts), 0)
        for i, p in enumerate(perts):
            for who, mean, ctrl, dist in (("model", pm[i], pc, d_model), ("control_mean_baseline", rc, rc, d_base)):
                m = profile_metrics(mean, rm[i], ctrl, rc, top_k)
                rank = int((dist[i] < dist[i, i]).sum())
                m["discrimination_l1"] = 1 - rank / max(len(perts) - 1, 1)
                rows.append({"celltype": ct, "perturbation": p, "predictor": who, **m})
    if not rows:
        raise UserError(f"no perturbation appears in both files (obs[{pert_col!r}], control {control_pert!r} excluded); "
                        "check that predictions and ground truth are of the same split")
    table = pd.DataFrame(rows)
    for who in ("model", "control_mean_baseline"):
        sub = table[table.predictor == who]
        summary[who] = {k: float(sub[k].mean()) for k in METRICS}
    summary["n_perturbations"] = int((table.predictor == "model").sum())
    if outdir is not None:
        from ftcore.io import claim_outputs

        outdir = Path(outdir)
        claim_outputs(outdir)
        for ct, sub in table.groupby("celltype"):
            model_rows = sub[sub.predictor == "model"].drop(columns=["celltype", "predictor"])
            name = file_name(ct)
            _write_csv(model_rows, outdir / f"{name}_pert_results.csv")
            agg = model_rows[list(METRICS)].agg(["count", "mean", "std", "min", "median", "max"])
            _write_csv(agg.reset_index().rename(columns={"index": "statistic"}), outdir / f"{name}_agg_results.csv")
        _write_csv(table, outdir / "all_results_with_baseline.csv")
        atomic_write_json(outdir / "summary.json", summary)
        _plot_deltas(table, outdir)
    return summary


def file_name(celltype: str) -> str:
    """A cell type as part of a file name: 'CD4+/CD8+ T' -> 'CD4+_CD8+ T' (a '/' would make a directory)."""
    import re

    name = re.sub(r"[/\\\x00:]", "_", str(celltype)).strip()
    return "_" if name in ("", ".", "..") else name


def _write_csv(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def _plot_deltas(table, outdir: Path) -> None:
    """Per-perturbation metric of the model against the baseline (one point each)."""
    from ftcore.plotting import plot_pred_vs_true

    model = table[table.predictor == "model"]["mse"].to_numpy()
    base = table[table.predictor == "control_mean_baseline"]["mse"].to_numpy()
    plot_pred_vs_true(model, base, outdir / "mse_model_vs_control_mean.png",
                      title="per-perturbation MSE: model (y) vs control-mean baseline (x)")


def format_summary(summary: dict) -> str:
    lines = [f"{'metric':<20}{'state-tx':>12}{'control mean':>14}"]
    for k in METRICS:
        lines.append(f"{k:<20}{summary['model'][k]:>12.4f}{summary['control_mean_baseline'][k]:>14.4f}")
    return "\n".join(lines)
