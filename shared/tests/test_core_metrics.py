"""ftcore.metrics against direct numpy / scipy references on fresh random inputs (tolerance: 1e-10
relative, float64 arithmetic on both sides), and THE degenerate-value rule: r is NaN where either
vector is constant, means skip NaN, a mean of nothing defined is NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ftcore import metrics

TOL = 1e-10


@pytest.fixture
def rng():
    return np.random.default_rng()  # fresh inputs every run: the references, not the numbers, are fixed


def _noisy(rng, shape):
    true = rng.normal(size=shape) * rng.uniform(0.1, 10) + rng.normal()
    return true + rng.normal(scale=rng.uniform(0.1, 3), size=shape), true


def test_per_gene_overall_and_mean_gene_match_scipy(rng):
    pred, true = _noisy(rng, (int(rng.integers(5, 80)), int(rng.integers(2, 12))))
    ref = np.array([stats.pearsonr(pred[:, g], true[:, g])[0] for g in range(true.shape[1])])
    np.testing.assert_allclose(metrics.pearson_per_gene(pred, true), ref, rtol=TOL, atol=1e-12)
    assert metrics.pearson_mean_gene(pred, true) == pytest.approx(ref.mean(), rel=TOL)
    assert metrics.pearson_overall(pred, true) == pytest.approx(stats.pearsonr(pred.ravel(), true.ravel())[0], rel=TOL)
    assert metrics.spearman_overall(pred, true) == pytest.approx(stats.spearmanr(pred.ravel(), true.ravel())[0], rel=TOL)


def test_pearson_delta_matches_scipy_on_the_shifts(rng):
    B, G = int(rng.integers(2, 9)), int(rng.integers(3, 40))
    pred, true = _noisy(rng, (B, G))
    ctrl_p, ctrl_t = rng.normal(size=G), rng.normal(size=G)
    r = metrics.pearson_delta(pred, true, ctrl_p, ctrl_t)
    ref = [stats.pearsonr(pred[b] - ctrl_p, true[b] - ctrl_t)[0] for b in range(B)]
    assert r.shape == (B,)
    np.testing.assert_allclose(r, ref, rtol=TOL, atol=1e-12)
    one = metrics.pearson_delta(pred[0], true[0], ctrl_p)  # one control for both: the same basal cells
    assert isinstance(one, float) and one == pytest.approx(stats.pearsonr(pred[0] - ctrl_p, true[0] - ctrl_p)[0], rel=TOL)
    basal = rng.normal(size=(B, G))  # a control per row
    rows = metrics.pearson_delta(pred, true, basal)
    np.testing.assert_allclose(rows, [stats.pearsonr(pred[b] - basal[b], true[b] - basal[b])[0] for b in range(B)],
                               rtol=TOL, atol=1e-12)


def test_torch_input_gives_the_numpy_value(rng):
    pred, true = _noisy(rng, (30, 4))
    tp = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    assert metrics.pearson_mean_gene(tp, torch.tensor(true)) == pytest.approx(metrics.pearson_mean_gene(pred, true), rel=TOL)
    assert metrics.pearson_delta(tp, torch.tensor(true), torch.zeros(4, dtype=torch.float64)).shape == (30,)


def test_degenerate_rule_constant_vectors_are_nan_and_skipped(rng):
    pred, true = _noisy(rng, (25, 6))
    true[:, 1] = 0.1  # never expressed / constant in truth (0.1 repeated: its float mean drifts from 0.1)
    pred[:, 4] = -2.0  # a prediction that does not vary
    r = metrics.pearson_per_gene(pred, true)
    assert np.isnan(r[[1, 4]]).all() and np.isfinite(r[[0, 2, 3, 5]]).all()
    ref = [stats.pearsonr(pred[:, g], true[:, g])[0] for g in (0, 2, 3, 5)]
    assert metrics.pearson_mean_gene(pred, true) == pytest.approx(np.mean(ref), rel=TOL)
    assert np.isnan(metrics.pearson_mean_gene(np.ones((5, 3)), rng.normal(size=(5, 3))))  # nothing defined
    assert np.isnan(metrics.pearson_overall(np.full((4, 2), 0.3), rng.normal(size=(4, 2))))
    assert np.isnan(metrics.pearson_overall(rng.normal(size=(4, 2)), np.full((4, 2), 7.0)))
    assert np.isnan(metrics.pearson_overall(np.zeros((0, 3)), np.zeros((0, 3))))
    assert np.isnan(metrics.pearson_delta(np.ones(6), rng.normal(size=6), np.zeros(6)))  # control-mean baseline
    rows = metrics.pearson_delta(np.stack([np.ones(6), rng.normal(size=6)]), rng.normal(size=(2, 6)), np.zeros(6))
    assert np.isnan(rows[0]) and np.isfinite(rows[1])
    assert np.isnan(metrics.nanmean([])) and np.isnan(metrics.nanmean([np.nan, np.nan]))
    assert metrics.nanmean([0.5, np.nan, 0.25]) == 0.375


def test_perfect_and_anti_correlation_stay_in_range(rng):
    true = rng.normal(size=(50, 3))
    assert np.all(np.abs(metrics.pearson_per_gene(3 * true + 1, true) - 1) < 1e-12)
    assert np.all(metrics.pearson_per_gene(3 * true + 1, true) <= 1.0)
    assert metrics.pearson_overall(-true, true) == pytest.approx(-1.0, abs=1e-12)
    assert metrics.mean_pearson is metrics.pearson_mean_gene  # one metric, the older name kept


# -------------------------------------------------- the other metrics, against numpy / scipy / sklearn
def test_pearson_per_gene_matches_scipy(rng):
    true = rng.normal(size=(50, 7))
    pred = true + rng.normal(scale=rng.uniform(0.1, 2), size=(50, 7))
    r = metrics.pearson_per_gene(pred, true)
    ref = [stats.pearsonr(pred[:, g], true[:, g])[0] for g in range(7)]
    np.testing.assert_allclose(r, ref, rtol=1e-10, atol=1e-12)
    assert metrics.mean_pearson(pred, true) == pytest.approx(np.mean(ref), rel=1e-10)


def test_constant_columns_are_nan_and_ignored(rng):
    true = rng.normal(size=(30, 5))
    pred = true + rng.normal(size=(30, 5))
    true[:, 1] = 3.0   # constant in truth
    pred[:, 3] = -1.0  # constant in prediction
    r = metrics.pearson_per_gene(pred, true)
    assert np.isnan(r[1]) and np.isnan(r[3]) and np.isfinite(r[[0, 2, 4]]).all()
    sp = metrics.spearman_per_gene(pred, true)
    assert np.isnan(sp[1]) and np.isnan(sp[3]) and np.isfinite(sp[[0, 2, 4]]).all()
    ref = [stats.pearsonr(pred[:, g], true[:, g])[0] for g in (0, 2, 4)]
    assert metrics.mean_pearson(pred, true) == pytest.approx(np.mean(ref), rel=1e-10)
    assert np.isnan(metrics.mean_pearson(np.ones((4, 2)), rng.normal(size=(4, 2))))
    assert np.isnan(metrics.pearson_overall(np.ones((4, 2)), rng.normal(size=(4, 2))))


def test_pearson_overall_and_spearman_match_references(rng):
    true = rng.normal(size=(40, 6))
    pred = np.round(true * 2 + rng.normal(size=(40, 6)))  # rounding makes ties for spearman
    assert metrics.pearson_overall(pred, true) == pytest.approx(np.corrcoef(pred.ravel(), true.ravel())[0, 1], rel=1e-10)
    sp = metrics.spearman_per_gene(pred, true)
    ref = [stats.spearmanr(pred[:, g], true[:, g])[0] for g in range(6)]
    np.testing.assert_allclose(sp, ref, rtol=1e-10)


def test_r2_matches_sklearn(rng):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    true = rng.normal(size=(25, 3))
    pred = true + rng.normal(scale=0.5, size=(25, 3))
    assert metrics.r2_score(pred, true) == pytest.approx(sklearn_metrics.r2_score(true.ravel(), pred.ravel()))


def test_error_metrics_match_numpy_and_torch_input(rng):
    true = rng.normal(size=(25, 3))
    pred = true + rng.normal(scale=0.5, size=(25, 3))
    assert metrics.mse(pred, true) == pytest.approx(np.mean((pred - true) ** 2))
    assert metrics.mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)))
    assert np.isnan(metrics.r2_score(pred, np.ones_like(true)))
    tp, tt = torch.tensor(pred, dtype=torch.float32, requires_grad=True), torch.tensor(true)
    assert metrics.mse(tp, tt) == pytest.approx(np.mean((pred - true) ** 2), rel=1e-5)
    report = metrics.regression_report(pred, true)
    assert set(report) == {"pearson_overall", "pearson_mean_gene", "spearman_overall", "r2", "mse", "mae"}
    assert report["spearman_overall"] == pytest.approx(stats.spearmanr(pred.ravel(), true.ravel())[0], rel=1e-10)
    one_d = metrics.regression_report(pred[:, 0], true[:, 0])
    assert one_d["pearson_overall"] == pytest.approx(stats.pearsonr(pred[:, 0], true[:, 0])[0], rel=1e-10)


def test_accuracy(rng):
    labels = rng.integers(0, 4, size=100)
    pred = labels.copy()
    flip = rng.choice(100, size=17, replace=False)
    pred[flip] = (pred[flip] + 1) % 4
    assert metrics.accuracy(pred, labels) == pytest.approx(0.83)
    assert metrics.accuracy(np.array(["a", "b"]), np.array(["a", "c"])) == 0.5
    assert np.isnan(metrics.accuracy([], []))
