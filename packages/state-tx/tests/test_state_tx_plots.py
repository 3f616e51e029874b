"""The figures say what they show (issue 17: the model-vs-baseline plot was labelled true/predicted, with a
residual histogram): each panel is one metric, the model on y, a baseline on x, axes and title saying so."""

from __future__ import annotations

import numpy as np
import pandas as pd

import state_tx.evaluate as evaluate
import state_tx.train as train


def _capture(monkeypatch) -> dict:
    import ftcore.io

    seen: dict = {}

    def capture(fig, path, **kwargs):
        fig.canvas.draw()
        inside = fig.bbox.expanded(1.001, 1.001)
        for text in [ax.title for ax in fig.axes] + [ax.xaxis.label for ax in fig.axes] + [ax.yaxis.label for ax in fig.axes]:
            box = text.get_window_extent()
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1, f"{text.get_text()!r} runs off the figure"
        seen["ticks"] = [ax.get_xticks() for ax in fig.axes]
        seen["axes"] = [{"x": ax.get_xlabel(), "y": ax.get_ylabel(), "title": ax.get_title(),
                         "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
                         "points": [np.asarray(c.get_offsets()) for c in ax.collections]} for ax in fig.axes]

    monkeypatch.setattr(ftcore.io, "atomic_savefig", capture)
    return seen


def test_model_vs_baselines_panels_are_one_metric_model_on_y(monkeypatch, tmp_path):
    rng = np.random.default_rng()
    pairs = [("A", f"p{i}") for i in range(5)] + [("B", f"p{i}") for i in range(4)]
    values = {w: {"mse": rng.uniform(0.1, 1, len(pairs)), "pearson_delta": rng.uniform(-1, 1, len(pairs))}
              for w in evaluate.PREDICTORS}
    table = pd.DataFrame([{"celltype": ct, "perturbation": p, "predictor": w,
                           **{m: values[w][m][i] for m in ("mse", "pearson_delta")}}
                          for w in evaluate.PREDICTORS for i, (ct, p) in enumerate(pairs)])
    seen = _capture(monkeypatch)
    evaluate.plot_vs_baselines(table, tmp_path / "f.png")
    mse, r = seen["axes"]
    for panel, metric in ((mse, "mse"), (r, "pearson_delta")):
        assert panel["x"] == f"{metric}: baseline" and panel["y"].startswith(f"{metric}: state-tx")
        assert metric in panel["title"] and "true" not in panel["x"] + panel["y"]
    assert f"(mean {values['model']['mse'].mean():.3g})" in mse["y"]
    # the left panel: the model's mse (y) against each baseline's (x), and the legend counts the model's wins
    for points, base, text in zip(mse["points"], evaluate.PREDICTORS[1:], mse["legend"]):
        np.testing.assert_allclose(points, np.c_[values[base]["mse"], values["model"]["mse"]])
        wins = int((values["model"]["mse"] < values[base]["mse"]).sum())
        assert text.startswith(f"x = {evaluate.LABELS[base]}") and text.endswith(f"better {wins}/{len(pairs)}")
    # pearson_delta: against the mean shift only (the control mean predicts no shift to correlate)
    assert len(r["points"]) == 1 and r["legend"][0].startswith("x = mean shift")
    wins = int((values["model"]["pearson_delta"] > values["mean_shift_baseline"]["pearson_delta"]).sum())
    assert r["legend"][0].endswith(f"better {wins}/{len(pairs)}")


def test_training_curve_is_drawn_against_steps_with_a_labelled_loss(monkeypatch, tmp_path):
    history = [{"step": s, "epoch": 1, "train_loss": 1.0 / s, "val_loss": 1.5 / s, "val_pearson_delta": 0.1 * s}
               for s in (3, 6)]  # a short run: matplotlib alone would put ticks at 3.5, 4.5
    seen = _capture(monkeypatch)
    train.plot_training_curves(history, tmp_path / "c.png", "energy")
    loss, r = seen["axes"]
    assert loss["x"] == r["x"] == "optimizer step"  # step-based: never an epoch axis
    assert all(np.array_equal(t, np.round(t)) for t in seen["ticks"])  # whole steps on the axis
    assert loss["y"] == "loss (energy distance)" and r["y"] == "val pearson_delta"
