"""Plots people would rather look at than read: training curves, predicted vs true."""

from __future__ import annotations

import numbers
import os
from typing import Sequence

import numpy as np

from ftcore.io import atomic_savefig


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no screen on training machines
    import matplotlib.pyplot as plt

    return plt


_NOT_CURVES = ("epoch", "step", "lr", "time_s", "train_samples_per_s")


def _is_real(v) -> bool:
    # bool is an int subclass: flags such as `best` are not curves
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _value(v) -> float:
    return float(v) if _is_real(v) else np.nan


def curve_keys(history: Sequence[dict]) -> list[str]:
    """History keys plotted as curves: real-valued in every epoch that has them (None = not logged)."""
    keys = list(dict.fromkeys(k for h in history for k in h if k not in _NOT_CURVES))
    return [k for k in keys
            if any(_is_real(h.get(k)) for h in history)
            and all(_is_real(h[k]) or h[k] is None for h in history if k in h)]


def _quantity(key: str) -> str:
    """The quantity a history key measures, without its split: val_acc and train_acc -> acc."""
    for split in ("train_", "val_", "test_"):
        if key.startswith(split):
            return key[len(split):]
    return key


def plot_training_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """One panel for losses, then one panel per other quantity (train_/val_ of it together), against epoch:
    one quantity per y axis, named there."""
    plt = _plt()
    if not history:
        return
    x = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    keys = curve_keys(history)
    panels: dict[str, list[str]] = {}
    for k in keys:
        panels.setdefault("loss" if "loss" in k else _quantity(k), []).append(k)
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(1 + 5 * n, 4), squeeze=False)
    for ax, (quantity, members) in zip(axes[0], panels.items()):
        for k in members:
            ax.plot(x, [_value(h.get(k)) for h in history], marker=".", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"acc": "accuracy"}.get(quantity, quantity.replace("_", " ")))
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def plot_pred_vs_true(pred, true, path: str | os.PathLike, title: str = "", max_points: int = 20000) -> None:
    """Scatter of predicted against true values with the identity line, and a residual histogram."""
    plt = _plt()
    p, t = np.asarray(pred, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    if p.size > max_points:
        idx = np.random.default_rng(0).choice(p.size, max_points, replace=False)
        p, t = p[idx], t[idx]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].scatter(t, p, s=3, alpha=0.3)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1)
    r = np.corrcoef(p, t)[0, 1] if p.std() > 0 and t.std() > 0 else float("nan")
    axes[0].set_title(f"predicted vs true (r = {r:.3f})")
    axes[0].set_xlabel("true")
    axes[0].set_ylabel("predicted")
    axes[1].hist(p - t, bins=60)
    axes[1].set_title("residual (pred - true)")
    axes[1].set_xlabel("predicted - true")
    axes[1].set_ylabel("count")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix, labels: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    plt = _plt()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(labels), 1 + 0.5 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised colour, counts)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
