"""The per-fold figure: the two metrics of the results tables, each drawn from the values it summarises.

Overall correlation (Pearson over every spot x gene value) is dominated by the differences between gene
means; gene correlation (mean over genes of the per-gene Pearson across test spots) is what says whether
the model tells spots apart. So the figure shows both: the scatter behind the first and the distribution
behind the second, titled with the numbers the tables print.
"""

from __future__ import annotations

import os

import numpy as np


def plot_fold_predictions(pred: np.ndarray, true: np.ndarray, path: str | os.PathLike, title: str = "",
                          max_points: int = 20000) -> None:
    """pred, true [test spots, genes] (log-normalised) -> a two-panel PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ftcore.io import atomic_savefig
    from ftcore.metrics import pearson_per_gene
    from ftcore.plotting import scatter_pred_vs_true

    per_gene = pearson_per_gene(pred, true)
    per_gene = per_gene[np.isfinite(per_gene)]  # constant genes have no correlation (THE rule of ftcore.metrics)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    scatter_pred_vs_true(ax0, pred, true, xlabel="measured expression (log-normalised)",
                         ylabel="predicted expression (log-normalised)",
                         title="spot x gene values: overall correlation {r:.4f}", identity_label="predicted = measured",
                         max_points=max_points)
    if per_gene.size:
        mean = float(per_gene.mean())
        ax1.hist(per_gene, bins=40, range=(-1, 1))
        ax1.axvline(mean, color="k", ls="--", lw=1, label=f"mean {mean:.4f}")
        ax1.legend(fontsize=8, loc="upper left")
        ax1.set_title(f"per-gene Pearson over test spots: gene correlation {mean:.4f}", fontsize=10)
    else:
        ax1.set_title("gene correlation: every gene is constant on these spots", fontsize=10)
    ax1.set_xlabel("Pearson r of one gene across test spots")
    ax1.set_ylabel("genes")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
