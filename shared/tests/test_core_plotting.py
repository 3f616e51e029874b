"""Training curves plot the real-valued history series only."""

from __future__ import annotations

import numpy as np

from ftcore import plotting

HISTORY = [
    {"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "val_pearson": None, "best": True, "note": "warmup", "lr": 1e-3},
    {"epoch": 2, "train_loss": 0.8, "val_loss": 1.3, "val_pearson": np.float32(0.4), "best": np.bool_(False),
     "note": ""},
    {"epoch": 3, "train_loss": 0.5, "val_loss": 0.9, "val_pearson": 0.6, "best": True, "n_skipped": 0},
]


def test_curve_keys_skip_bools_strings_and_bookkeeping():
    assert plotting.curve_keys(HISTORY) == ["train_loss", "val_loss", "val_pearson", "n_skipped"]


def test_plot_training_curve_draws_one_line_per_real_series(tmp_path, monkeypatch):
    drawn = {}

    def fake_savefig(fig, path, **kwargs):
        drawn.update({ax.get_ylabel() or "metrics": sorted(line.get_label() for line in ax.get_lines())
                      for ax in fig.axes})

    monkeypatch.setattr(plotting, "atomic_savefig", fake_savefig)
    plotting.plot_training_curve(HISTORY, tmp_path / "curve.png")
    assert drawn == {"loss": ["train_loss", "val_loss"], "metrics": ["n_skipped", "val_pearson"]}
