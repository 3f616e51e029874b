"""state-tx's metric names that are cell-eval's give cell-eval's numbers, for the model and both baselines.

The reference (tests/reference/celleval/celleval_reference.json) was written by cell-eval 0.8.2 itself with
tests/reference/make_celleval_reference.py on the committed real/pred/train files; the baselines there are
prediction FILES built by that script, so this also checks that evaluate scores its baselines as cell-eval
scores a file of those predictions. cell-eval is not needed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import pandas as pd
import pytest

from state_tx.cli import main
from state_tx.evaluate import CELL_EVAL_METRICS, evaluate
from state_tx.predict import shifts_from_adata

REF = Path(__file__).parent / "reference" / "celleval"
TOL = 1e-5  # cell-eval means float32 columns in polars; state-tx in float64


@pytest.fixture(scope="module")
def reference():
    return json.loads((REF / "celleval_reference.json").read_text())


@pytest.fixture(scope="module")
def ours(reference, tmp_path_factory):
    real, pred = ad.read_h5ad(REF / "real.h5ad"), ad.read_h5ad(REF / "pred.h5ad")
    shifts = shifts_from_adata(ad.read_h5ad(REF / "train.h5ad"), list(map(str, pred.var_names)), "gene",
                               "cell_type", reference["control_pert"])
    out = tmp_path_factory.mktemp("ev")
    summary = evaluate(pred, real, "gene", reference["control_pert"], "cell_type", out, train_shifts=shifts)
    return summary, pd.read_csv(out / "all_results_with_baseline.csv")


def test_the_metric_list_is_cell_eval_s(reference):
    assert list(CELL_EVAL_METRICS) == reference["metrics"]


@pytest.mark.parametrize("predictor", ["model", "control_mean_baseline", "mean_shift_baseline"])
def test_per_perturbation_values_equal_cell_eval(reference, ours, predictor):
    _, table = ours
    expected = reference["predictions"][predictor]
    n = 0
    for ct, by_pert in expected.items():
        for pert, values in by_pert.items():
            row = table[(table.celltype == ct) & (table.perturbation == pert) & (table.predictor == predictor)]
            assert len(row) == 1, (ct, pert)
            for metric, want in values.items():
                got = float(row[metric].iloc[0])
                if want is None:  # cell-eval: NaN for a constant predicted shift; state-tx writes 0
                    assert metric == "pearson_delta" and got == 0.0
                else:
                    assert got == pytest.approx(want, rel=TOL, abs=TOL), (predictor, ct, pert, metric)
                n += 1
    assert n == 2 * 6 * len(CELL_EVAL_METRICS)


def test_per_celltype_means_equal_cell_eval_agg(reference, ours):
    """summary['per_celltype'] is cell-eval's {celltype}_agg_results.csv 'mean' row."""
    summary, _ = ours
    for ct, by_pert in reference["predictions"]["model"].items():
        for metric in CELL_EVAL_METRICS:
            want = sum(v[metric] for v in by_pert.values()) / len(by_pert)
            assert summary["per_celltype"][ct]["model"][metric] == pytest.approx(want, rel=TOL, abs=TOL)


def test_the_target_gene_is_left_out_of_the_discrimination_score(reference):
    """Scored with no gene named like a perturbation, some ranks change: the exclusion is what makes them equal."""
    from state_tx.evaluate import _group_means, celltype_metrics

    real = ad.read_h5ad(REF / "real.h5ad")
    same = changed = 0
    for ct in ("A", "B"):
        r = real[real.obs.cell_type == ct]
        labels = r.obs.gene.astype(str).values
        perts = sorted(set(labels) - {"non-targeting"})
        rm, rc = _group_means(r.X, labels, perts), _group_means(r.X, labels, ["non-targeting"])[0]
        base = rm * 0 + rc  # the control-mean baseline
        for genes in (list(map(str, r.var_names)), ["unnamed"] * r.n_vars):
            got = [m["discrimination_score_l1"] for m in celltype_metrics(base, rc, rm, rc, perts, genes, 5)]
            want = [reference["predictions"]["control_mean_baseline"][ct][p]["discrimination_score_l1"] for p in perts]
            if genes[0] == "unnamed":
                changed += sum(a != pytest.approx(b) for a, b in zip(got, want))
            else:
                same += sum(a == pytest.approx(b) for a, b in zip(got, want))
    assert same == 12 and changed > 0


def test_evaluate_cli_with_adata_train_prints_both_baselines(reference, tmp_path, capsys):
    assert main(["evaluate", "-ap", str(REF / "pred.h5ad"), "-ar", str(REF / "real.h5ad"), "-o", str(tmp_path / "e"),
                 "--pert-col", "gene", "--celltype-col", "cell_type", "--adata-train", str(REF / "train.h5ad")]) == 0
    text = capsys.readouterr().out
    assert "control mean" in text and "mean shift" in text and "discrimination_score_l1" in text
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    want = [v["mse"] for ct in "AB" for v in reference["predictions"]["mean_shift_baseline"][ct].values()]
    assert s["mean_shift_baseline"]["mse"] == pytest.approx(sum(want) / len(want), rel=TOL)
