"""Plots people would rather look at than read: training curves, predicted vs true."""

from __future__ import annotations

import numbers
import os
from typing import Sequence

import numpy as np

from ftcore.io import atomic_savefig
from ftcore.metrics import pearson_overall


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
    """History keys plotted as curves: real-valued in every epoch that has them (None = not logged), finite in
    at least one (a metric undefined in every epoch, NaN throughout, would be an empty panel)."""
    keys = list(dict.fromkeys(k for h in history for k in h if k not in _NOT_CURVES))
    return [k for k in keys
            if any(_is_real(h.get(k)) and np.isfinite(h[k]) for h in history)
            and all(_is_real(h[k]) or h[k] is None for h in history if k in h)]


_SPLITS = ("train_", "val_", "test_")


def quantity(key: str) -> str:
    """What a history key measures, so that one panel holds one quantity: every loss is 'loss'; otherwise
    the key without its split prefix and per-scale suffix (val_token_accuracy_s8 -> token_accuracy)."""
    import re

    if "loss" in key:
        return "loss"
    for prefix in _SPLITS:
        if key.startswith(prefix) and len(key) > len(prefix):
            key = key[len(prefix):]
            break
    return re.sub(r"_s\d+$", "", key)


def curve_x(history: Sequence[dict]) -> tuple[list, str]:
    """(x values, axis label): epochs when every record closes an epoch (epochs strictly increase), else
    optimizer steps (validation every N steps, or a step budget that ends inside an epoch)."""
    epochs = [h.get("epoch") for h in history]
    if all(_is_real(e) for e in epochs) and all(b > a for a, b in zip(epochs, epochs[1:])):
        return epochs, "epoch"
    if all(_is_real(h.get("step")) for h in history):
        return [h["step"] for h in history], "optimizer step"
    return list(range(1, len(history) + 1)), "validation"


def plot_training_curve(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """One panel per quantity (all losses together; perplexity, accuracy, ... each alone, their
    train / val / per-scale series as lines), against epoch, or optimizer step when the history is
    step-based."""
    plt = _plt()
    if not history:
        return
    from matplotlib.ticker import MaxNLocator

    x, xlabel = curve_x(history)
    groups: dict[str, list[str]] = {}
    for k in curve_keys(history):
        groups.setdefault(quantity(k), []).append(k)
    if not groups:
        return
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, keys) in zip(axes.flat, groups.items()):
        for k in keys:
            ax.plot(x, [_value(h.get(k)) for h in history], marker=".", label=k)
        ax.set_xlabel(xlabel)
        ax.set_ylabel({"acc": "accuracy"}.get(name, name.replace("_", " ")))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(x)) == 1:  # one record (a run shorter than an epoch): its own tick, not -0.045 .. 0.045
            ax.set_xticks([x[0]])
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def scatter_pred_vs_true(ax, pred, true, *, xlabel: str = "true", ylabel: str = "predicted",
                         title: str = "predicted vs true (r = {r:.3f})", identity_label: str | None = None,
                         max_points: int = 20000) -> float:
    """One panel: every value of `pred` against the same value of `true` (any shape, pooled), the identity
    line, axis labels, and `title` formatted with r = ftcore.metrics.pearson_overall of ALL the values (as the
    tables compute it; only the points drawn are a sample of `max_points`). -> r."""
    r = pearson_overall(pred, true)  # on the values as given (the tables' dtype), before the sample
    p, t = np.asarray(pred, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    if p.size > max_points:
        idx = np.random.default_rng(0).choice(p.size, max_points, replace=False)
        p, t = p[idx], t[idx]
    ax.scatter(t, p, s=3, alpha=0.3)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label=identity_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title.format(r=r), fontsize=10)
    if identity_label:
        ax.legend(fontsize=8, loc="upper left")
    return r


def plot_pred_vs_true(pred, true, path: str | os.PathLike, title: str = "", max_points: int = 20000) -> None:
    """Scatter of predicted against true values with the identity line, and a residual histogram."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    scatter_pred_vs_true(axes[0], pred, true, max_points=max_points)
    p, t = np.asarray(pred, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    axes[1].hist(p - t, bins=60)
    axes[1].set_title("residual (pred - true)", fontsize=10)
    axes[1].set_xlabel("predicted - true")
    axes[1].set_ylabel("number of values")
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
