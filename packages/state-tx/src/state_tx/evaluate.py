"""Built-in evaluation of predicted vs observed perturbation responses, beside two simple baselines.

    shifts = mean_shifts([(lambda rows: X[rows], perts, celltypes)], "non-targeting")  # training cells
    summary = evaluate(adata_pred, adata_real, pert_col="gene", control_pert="non-targeting",
                       celltype_col="cell_type", outdir="results/", train_shifts=shifts)

Per cell type (as `cell-eval run --celltype-col`), on pseudobulk means per perturbation; a "shift"
(cell-eval's perturbation effect) is a perturbation's mean minus the control mean OF THE SAME FILE.
The names that are cell-eval's are cell-eval 0.8.2's definitions (tests/reference/celleval_reference.json,
written by cell-eval itself, checks them):
    pearson_delta            Pearson r between the predicted and the observed shift
    mse, mae                 between the predicted and the observed perturbation means
    mse_delta, mae_delta     between the predicted and the observed shifts
    discrimination_score_l1  1 - rank/n: the rank of the perturbation's own observed shift among all n
                             observed shifts of the cell type, by L1 distance to its predicted shift (the
                             target gene, a gene named like the perturbation, left out); 1 = closest
Two metrics are this package's own, named so they are not mistaken for cell-eval's DE-test metrics
(overlap_at_N, de_direction_match, which rank genes by a Wilcoxon test):
    topk_shift_overlap       |top-k genes by |observed shift| & top-k by |predicted shift|| / k
    topk_shift_sign          fraction of the observed top-k genes whose shift has the predicted sign
pearson_delta is ftcore.metrics.pearson_delta; where it is undefined (NaN by the core's rule and by
cell-eval: a constant predicted shift, as every shift of the control-mean baseline), the tables and
JSON here hold 0, so they hold numbers.

Baselines, scored by the same functions:
    control_mean_baseline  every perturbation = the cell type's control mean (shift 0)
    mean_shift_baseline    the cell type's control mean + the perturbation's mean shift in the OTHER
                           cell types of the training data (each cell type's shift from its own controls,
                           averaged over cell types), clipped at 0 for data without negative values
                           (log expression); shift 0 for a perturbation no other cell type has
Writes {celltype}_pert_results.csv / {celltype}_agg_results.csv (the seed's file names),
all_results_with_baseline.csv, summary.json and a plot; `cell-eval run` reads the same two .h5ad files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftcore.data import dense, require_key
from ftcore.errors import UserError
from ftcore.io import atomic_path, atomic_write_json
from ftcore.metrics import pearson_delta

# equal to cell-eval 0.8.2's metrics of these names (tested against cell-eval's own output)
CELL_EVAL_METRICS = ("pearson_delta", "mse", "mae", "mse_delta", "mae_delta", "discrimination_score_l1")
OWN_METRICS = ("topk_shift_overlap", "topk_shift_sign")
METRICS = CELL_EVAL_METRICS + OWN_METRICS
PREDICTORS = ("model", "control_mean_baseline", "mean_shift_baseline")
LABELS = {"model": "state-tx", "control_mean_baseline": "control mean", "mean_shift_baseline": "mean shift"}
HIGHER_IS_BETTER = {"pearson_delta": True, "mse": False, "mae": False, "mse_delta": False, "mae_delta": False,
                    "discrimination_score_l1": True, "topk_shift_overlap": True, "topk_shift_sign": True}


def _min(x) -> float:
    return float(x.data.min(initial=0) if hasattr(x, "toarray") else np.min(x))


def _shown(r: float) -> float:
    """A table's value of an r: 0 where it is undefined (NaN by ftcore.metrics' rule: a constant shift)."""
    return r if np.isfinite(r) else 0.0


def celltype_metrics(pred_pert: np.ndarray, pred_ctrl: np.ndarray, real_pert: np.ndarray, real_ctrl: np.ndarray,
                     perts: list[str], genes: list[str], top_k: int) -> list[dict[str, float]]:
    """Metrics of each perturbation of one cell type. pred_pert/real_pert [P, G] means, *_ctrl [G]."""
    pred_eff, real_eff = pred_pert - pred_ctrl, real_pert - real_ctrl
    genes = np.asarray(genes, dtype=object)
    rows = []
    for i, p in enumerate(perts):
        pd_, rd = pred_eff[i], real_eff[i]
        top_real = np.argsort(-np.abs(rd))[:top_k]
        top_pred = np.argsort(-np.abs(pd_))[:top_k]
        keep = genes != p  # cell-eval leaves the target gene out of the discrimination score
        dist = np.abs(real_eff[:, keep] - pd_[keep]).sum(1)
        rank = int(np.flatnonzero(np.argsort(dist) == i)[0])
        rows.append({
            "pearson_delta": _shown(pearson_delta(pred_pert[i], real_pert[i], pred_ctrl, real_ctrl)),
            "mse": float(np.mean((pred_pert[i] - real_pert[i]) ** 2)),
            "mae": float(np.mean(np.abs(pred_pert[i] - real_pert[i]))),
            "mse_delta": float(np.mean((pd_ - rd) ** 2)),
            "mae_delta": float(np.mean(np.abs(pd_ - rd))),
            "discrimination_score_l1": 1.0 - rank / len(perts),
            "topk_shift_overlap": len(set(top_real) & set(top_pred)) / top_k,
            "topk_shift_sign": float(np.mean(np.sign(pd_[top_real]) == np.sign(rd[top_real]))),
        })
    return rows


def _group_means(X, labels: np.ndarray, names: list[str]) -> np.ndarray:
    return np.stack([dense(X[np.flatnonzero(labels == n)], np.float64).mean(0) for n in names])


# ------------------------------------------------------------------------------ baselines
def mean_shifts(sources, control_pert: str, chunk: int = 8192) -> dict[str, dict[str, np.ndarray]]:
    """{cell type: {perturbation: mean shift [G]}} of a data set (the training cells).

    sources: (read, perts, celltypes) per file, read(rows) -> [len(rows), G] values (an array's rows or a
    lazily read file's), perts / celltypes [N] labels; a cell type may span files. Read in chunks of rows,
    so a large file is never loaded whole. A cell type without control cells has no shifts.
    """
    sums: dict[tuple[str, str], np.ndarray] = {}
    counts: dict[tuple[str, str], int] = {}
    for read, perts, celltypes in sources:
        ct_names, ct_code = np.unique(np.asarray(celltypes).astype(str), return_inverse=True)
        p_names, p_code = np.unique(np.asarray(perts).astype(str), return_inverse=True)
        uniq, inv = np.unique(ct_code * len(p_names) + p_code, return_inverse=True)
        local = None
        for start in range(0, len(inv), chunk):
            rows = np.arange(start, min(start + chunk, len(inv)))
            block = dense(read(rows), np.float64)
            local = np.zeros((len(uniq), block.shape[1])) if local is None else local
            np.add.at(local, inv[rows], block)
        n = np.bincount(inv, minlength=len(uniq))
        for j, code in enumerate(uniq):
            key = (str(ct_names[code // len(p_names)]), str(p_names[code % len(p_names)]))
            sums[key] = sums.get(key, 0) + local[j]
            counts[key] = counts.get(key, 0) + int(n[j])
    means = {k: sums[k] / counts[k] for k in sums}
    out: dict[str, dict[str, np.ndarray]] = {}
    for (ct, p) in sorted(means):
        mean = means[ct, p]
        ctrl = means.get((ct, control_pert))
        if p != control_pert and ctrl is not None:
            out.setdefault(ct, {})[p] = mean - ctrl
    return out


def carried_shift(shifts: dict[str, dict[str, np.ndarray]], celltype: str, pert: str, n_genes: int) -> tuple[np.ndarray, int]:
    """The perturbation's shift averaged over the OTHER cell types that have it, and how many there were."""
    other = [by_pert[pert] for ct, by_pert in shifts.items() if ct != celltype and pert in by_pert]
    return (np.mean(other, axis=0) if other else np.zeros(n_genes)), len(other)


# ------------------------------------------------------------------------------ evaluate
def check_columns(adata, cols: dict[str, str], which: str) -> None:
    for role, col in cols.items():
        require_key(col, adata.obs.columns, which, what=role, fix=f"pass {role} with one of them")


def evaluate(pred, real, pert_col: str, control_pert: str, celltype_col: str, outdir: str | Path | None = None,
             top_k: int | None = None, train_shifts: dict[str, dict[str, np.ndarray]] | None = None) -> dict:
    """Metrics per cell type and perturbation for the model and the baselines (mean_shift_baseline only
    with train_shifts, see mean_shifts: shifts of the same genes, in pred's gene order)."""
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
    predictors = PREDICTORS if train_shifts is not None else PREDICTORS[:2]
    nonnegative = _min(real.X) >= 0
    rows = []
    no_shift = []  # (cell type, perturbation) that no other training cell type has
    for ct in sorted(set(r_ct)):
        in_p, in_r = p_ct == ct, r_ct == ct
        perts = sorted(set(r_pert[in_r]) & set(p_pert[in_p]) - {control_pert})
        if not ((r_pert[in_r] == control_pert).any() and (p_pert[in_p] == control_pert).any()):
            raise UserError(f"cell type {ct!r}: both files need control cells ({control_pert!r} in obs[{pert_col!r}]) "
                            "to measure shifts; include the controls of that cell type")
        if not perts:
            continue
        Xp, Xr = pred.X[np.flatnonzero(in_p)], real.X[np.flatnonzero(in_r)]
        pm, rm = _group_means(Xp, p_pert[in_p], perts), _group_means(Xr, r_pert[in_r], perts)
        pc = _group_means(Xp, p_pert[in_p], [control_pert])[0]
        rc = _group_means(Xr, r_pert[in_r], [control_pert])[0]
        profiles = {"model": (pm, pc), "control_mean_baseline": (np.repeat(rc[None], len(perts), 0), rc)}
        if train_shifts is not None:
            carried = [carried_shift(train_shifts, ct, p, len(rc)) for p in perts]
            no_shift += [(ct, p) for p, (_, n) in zip(perts, carried) if n == 0]
            shifted = rc + np.stack([s for s, _ in carried])
            # log expression is >= 0: a carried shift cannot take a gene below 0 (nor can cell-eval read it)
            profiles["mean_shift_baseline"] = (np.clip(shifted, 0, None) if nonnegative else shifted, rc)
        for who in predictors:
            for p, m in zip(perts, celltype_metrics(*profiles[who], rm, rc, perts, p_genes, top_k)):
                rows.append({"celltype": ct, "perturbation": p, "predictor": who, **m})
    if not rows:
        raise UserError(f"no perturbation appears in both files (obs[{pert_col!r}], control {control_pert!r} excluded); "
                        "check that predictions and ground truth are of the same split")
    table = pd.DataFrame(rows)
    summary: dict = {"top_k": top_k}
    for who in predictors:
        sub = table[table.predictor == who]
        summary[who] = {k: float(sub[k].mean()) for k in METRICS}
    summary["n_perturbations"] = int((table.predictor == "model").sum())
    # cell-eval's {celltype}_agg_results.csv 'mean' row: the mean over one cell type's perturbations
    summary["per_celltype"] = {
        ct: {"n_perturbations": int((sub.predictor == "model").sum()),
             **{who: {k: float(sub[sub.predictor == who][k].mean()) for k in METRICS} for who in predictors}}
        for ct, sub in table.groupby("celltype")}
    if train_shifts is not None:
        summary["mean_shift_baseline_without_shift"] = [f"{ct}/{p}" for ct, p in no_shift]
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
        plot_vs_baselines(table, outdir / "model_vs_baselines.png")
    return summary


def file_name(celltype: str) -> str:
    """A cell type as part of a file name: 'CD4+/CD8+ T' -> 'CD4+_CD8+ T' (a '/' would make a directory)."""
    import re

    name = re.sub(r"[/\\\x00:]", "_", str(celltype)).strip()
    return "_" if name in ("", ".", "..") else name


def _write_csv(df, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def plot_vs_baselines(table, path: Path) -> None:
    """Per held-out (cell type, perturbation): the model's value (y) against a baseline's (x). Left: mse vs
    both baselines (below the diagonal: the model's error is lower); right: pearson_delta vs the mean-shift
    baseline (above: the model's shift correlates better; the control-mean baseline has no shift to correlate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftcore.io import atomic_savefig

    key = ["celltype", "perturbation"]
    model = table[table.predictor == "model"].set_index(key)
    panels = [("mse", [b for b in PREDICTORS[1:] if (table.predictor == b).any()])]
    if (table.predictor == "mean_shift_baseline").any():
        panels.append(("pearson_delta", ["mean_shift_baseline"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.8), squeeze=False)
    for ax, (metric, baselines) in zip(axes[0], panels):
        values = [model[metric].to_numpy()]
        for base, marker in zip(baselines, ("o", "^")):
            b = table[table.predictor == base].set_index(key)[metric]
            m = model[metric].reindex(b.index)
            wins = int(((m < b) if metric == "mse" else (m > b)).sum())
            ax.scatter(b, m, s=18, marker=marker, alpha=0.75, color="C0" if base == "control_mean_baseline" else "C1",
                       label=f"x = {LABELS[base]} (mean {b.mean():.3g}); state-tx better {wins}/{len(b)}")
            values.append(b.to_numpy())
        values = np.concatenate(values)
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1)
        ax.set_xlabel(f"{metric}: baseline")
        ax.set_ylabel(f"{metric}: state-tx (mean {model[metric].mean():.3g})")
        ax.set_title(f"{metric} per held-out (cell type, perturbation)")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def format_summary(summary: dict) -> str:
    """The table printed by predict / evaluate / the demo: one column per predictor present."""
    who = [w for w in PREDICTORS if w in summary]
    lines = [f"{'metric':<26}" + "".join(f"{LABELS[w]:>14}" for w in who)]
    for k in METRICS:
        best = (max if HIGHER_IS_BETTER[k] else min)(summary[w][k] for w in who)
        cells = "".join(f"{summary[w][k]:>13.4f}{'*' if summary[w][k] == best else ' '}" for w in who)
        lines.append(f"{k:<26}{cells}")
    lines.append(f"(mean over {summary['n_perturbations']} held-out (cell type, perturbation) pairs; * = best; "
                 f"pearson_delta .. discrimination_score_l1 as cell-eval; top-k = {summary['top_k']} genes)")
    if "mean_shift_baseline" not in summary:
        lines.append("(mean-shift baseline: needs the training cells; `state-tx predict` has them, "
                     "`evaluate` takes --adata-train)")
    return "\n".join(lines)
