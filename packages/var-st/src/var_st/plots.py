"""The evaluation figure (pred_vs_true.png): what metrics.json reports, drawn.

Two numbers are easy to confuse, so each panel names its own:
  - left: every (spot, gene) value pooled, predicted against measured; its r is dominated by
    the differences between gene means (a model that only knew each gene's mean would score high);
  - right: per-gene Pearson r across spots, one value per gene, for the three methods of the
    table; the means marked there ARE the table's `pearson_mean_all_genes`.
"""

from __future__ import annotations

import os

import numpy as np

from ftcore.io import atomic_savefig
from ftcore.metrics import pearson_overall

LABELS = {"var_st": "VAR-ST", "stage1_reconstruction_ceiling": "stage-1 ceiling", "ridge_histology": "ridge"}


pooled_r = pearson_overall  # Pearson r of all (spot, gene) values pooled (ftcore.metrics)


def plot_evaluation(pred: np.ndarray, true: np.ndarray, per_gene: dict[str, np.ndarray], report: dict,
                    path: str | os.PathLike, max_points: int = 20000) -> None:
    """pred / true: [spots, genes] of the evaluated split; per_gene: {method: per-gene r [genes]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftcore.plotting import scatter_pred_vs_true

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    scatter_pred_vs_true(left, pred, true, xlabel="measured expression, log1p(CP10k)",
                         ylabel="VAR-ST predicted, log1p(CP10k)",
                         title="VAR-ST, all spot x gene values pooled: r = {r:.3f}", identity_label="predicted = measured",
                         max_points=max_points)

    finite = [r[np.isfinite(r)] for r in per_gene.values()]
    both = np.concatenate(finite) if finite and any(len(f) for f in finite) else np.zeros(1)
    bins = np.linspace(min(-0.2, float(both.min())), 1.0, 41)
    for (name, r), color in zip(per_gene.items(), ("C0", "C2", "C1")):
        mean = report["methods"][name]["pearson_mean_all_genes"]
        right.hist(r[np.isfinite(r)], bins=bins, histtype="step", lw=1.5, color=color,
                   label=f"{LABELS.get(name, name)}: mean {mean:.3f}")
        right.axvline(mean, color=color, ls=":", lw=1.5)
    right.set_xlabel("Pearson r of one gene across the spots")
    right.set_ylabel("number of genes")
    right.set_title("per-gene r (means = metrics.json pearson_mean_all_genes)", fontsize=10)
    right.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{report['split']} split: {report['n_eval_spots']} spots x {report['num_genes']} genes; "
                 f"split {report['split_rule']}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
