"""The community evaluator reads our prediction files: `cell-eval run` completes and agrees with us.

Optional: skipped when the `cell-eval` CLI (PyPI cell-eval) is not installed next to this Python
or in /work/venv-celleval (a separate venv, if its pins clash).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from state_tx.cli import main


def _cell_eval() -> str | None:
    for cand in (Path(sys.executable).with_name("cell-eval"), Path("/work/venv-celleval/bin/cell-eval"),
                 Path("/work/celleval-venv/bin/cell-eval")):
        if cand.exists():
            return str(cand)
    return shutil.which("cell-eval")


def test_cell_eval_run_consumes_predictions(trained_run, tmp_path):
    exe = _cell_eval()
    if exe is None:
        pytest.skip("cell-eval is not installed (pip install cell-eval)")
    assert main(["predict", "--output-dir", str(trained_run), "--checkpoint", "final.ckpt"]) == 0
    ev = trained_run / "eval_final"
    out = tmp_path / "cell_eval"
    res = subprocess.run([exe, "run", "-ap", str(ev / "adata_pred.h5ad"), "-ar", str(ev / "adata_real.h5ad"),
                          "-o", str(out), "--control-pert", "non-targeting", "--pert-col", "gene",
                          "--celltype-col", "cell_type", "--profile", "minimal", "--num-threads", "1"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    agg = pd.read_csv(out / "HepG2_agg_results.csv")
    per_pert = pd.read_csv(out / "HepG2_results.csv")
    assert len(per_pert) == 2  # the two held-out perturbations
    mean = agg[agg["statistic"] == "mean"].iloc[0]
    assert -1 <= mean["pearson_delta"] <= 1 and mean["mse"] >= 0 and 0 <= mean["discrimination_score_l1"] <= 1
    # same definition of pearson_delta and mse as our built-in evaluation
    ours = json.loads((ev / "summary.json").read_text())["model"]
    assert mean["pearson_delta"] == pytest.approx(ours["pearson_delta"], abs=1e-3)
    assert mean["mse"] == pytest.approx(ours["mse"], rel=1e-3)
