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


def test_a_metric_undefined_in_every_epoch_gets_no_empty_panel():
    """spatial-transfer's bulk pretraining: val_gene_corr NaN at every epoch drew a panel with no line."""
    history = [{**h, "val_gene_corr": float("nan")} for h in HISTORY]
    assert plotting.curve_keys(history) == plotting.curve_keys(HISTORY)
    history[1]["val_gene_corr"] = 0.2  # defined once: drawn (the NaN epochs as gaps)
    assert sorted(plotting.curve_keys(history)) == sorted(plotting.curve_keys(HISTORY) + ["val_gene_corr"])


def test_a_single_record_gets_its_own_tick(tmp_path, monkeypatch):
    ticks = []
    monkeypatch.setattr(plotting, "atomic_savefig", lambda fig, path, **kw: ticks.extend(
        list(ax.get_xticks()) for ax in fig.axes))
    plotting.plot_training_curve(HISTORY[:1], tmp_path / "curve.png")
    assert ticks and all(t == [1] for t in ticks)


def test_plot_training_curve_draws_one_line_per_real_series(tmp_path, monkeypatch):
    drawn = {}

    def fake_savefig(fig, path, **kwargs):
        assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() for ax in fig.axes)  # every panel labelled
        drawn.update({ax.get_ylabel(): sorted(line.get_label() for line in ax.get_lines()) for ax in fig.axes})

    monkeypatch.setattr(plotting, "atomic_savefig", fake_savefig)
    plotting.plot_training_curve(HISTORY, tmp_path / "curve.png")
    # one quantity per panel, each with its y label
    assert drawn == {"loss": ["train_loss", "val_loss"], "pearson": ["val_pearson"], "n skipped": ["n_skipped"]}


def test_quantities_group_splits_and_scales_but_not_different_measures():
    keys = ["train_loss", "val_vq_loss", "perplexity_s1", "perplexity_s200", "utilisation_s8", "utilisation",
            "val_token_accuracy", "train_token_accuracy", "val_token_accuracy_s32", "val_pearson", "dead_codes_restarted"]
    assert [plotting.quantity(k) for k in keys] == [
        "loss", "loss", "perplexity", "perplexity", "utilisation", "utilisation", "token_accuracy", "token_accuracy",
        "token_accuracy", "pearson", "dead_codes_restarted"]


def test_step_based_history_is_drawn_against_steps(tmp_path, monkeypatch):
    per_epoch = [{"epoch": 1, "step": 10, "val_loss": 1.0}, {"epoch": 2, "step": 20, "val_loss": 0.9}]
    per_steps = [{"epoch": 0, "step": 100, "val_loss": 1.0}, {"epoch": 0, "step": 200, "val_loss": 0.9},
                 {"epoch": 1, "step": 300, "val_loss": 0.8}]
    assert plotting.curve_x(per_epoch) == ([1, 2], "epoch")
    assert plotting.curve_x(per_steps) == ([100, 200, 300], "optimizer step")
    seen = {}
    monkeypatch.setattr(plotting, "atomic_savefig",
                        lambda fig, path, **kw: seen.update(x=fig.axes[0].get_xlabel(),
                                                            data=list(fig.axes[0].get_lines()[0].get_xdata())))
    plotting.plot_training_curve(per_steps, tmp_path / "c.png")
    assert seen == {"x": "optimizer step", "data": [100, 200, 300]}


def test_train_and_val_of_one_quantity_share_a_panel(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plotting, "atomic_savefig", lambda fig, path, **kw: drawn.extend(
        (ax.get_ylabel(), sorted(line.get_label() for line in ax.get_lines())) for ax in fig.axes))
    plotting.plot_training_curve([{"epoch": 1, "train_loss": 1.0, "val_acc": 0.5, "train_acc": 0.6}],
                                 tmp_path / "c.png")
    assert drawn == [("loss", ["train_loss"]), ("accuracy", ["train_acc", "val_acc"])]


def test_pred_vs_true_labels_both_axes_of_both_panels(tmp_path, monkeypatch):
    """Issue 17: axis labels on every panel (the residual histogram had none)."""
    seen = []
    monkeypatch.setattr(plotting, "atomic_savefig",
                        lambda fig, path, **kw: seen.extend((ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes))
    rng = np.random.default_rng()
    true = rng.normal(size=200)
    plotting.plot_pred_vs_true(true + rng.normal(scale=0.3, size=200), true, tmp_path / "p.png")
    assert len(seen) == 2 and all(x and y for x, y in seen), seen
