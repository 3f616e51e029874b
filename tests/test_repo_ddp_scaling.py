"""benchmarks/ddp_scaling.py on one cheap package (state-tx, exact at equal global batch): its real CLI as
1 process x batch 4 and under torchrun as 2 gloo processes x 2 gives the same training loss after the
same steps, within the tolerance the script states for float32 (only the order of sums differs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from repo_helpers import ROOT


def test_two_gloo_processes_match_one_process_for_state_tx(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    out = tmp_path / "ddp.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_scaling.py"), "--packages", "state-tx",
                           "--device", "cpu", "--nproc", "2", "--out", str(out), "--work", str(tmp_path / "work")],
                          env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["machine"]["backend"] == "gloo" and results["nproc"] == 2
    (comparison,) = results["packages"]["state-tx"]["comparisons"]
    assert "error" not in comparison, comparison
    runs = comparison["runs"]
    assert runs["single"]["rc"] == runs["2proc"]["rc"] == 0
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m state_tx.cli" in runs["2proc"]["command"]
    assert (comparison["global_batch"], comparison["batch_per_process"]) == (4, 2)
    # the same optimizer steps, logged at the same points, with the same loss
    assert comparison["steps_aligned"]
    records = comparison["histories"][0]["records"]
    assert len(records) == 3 and [r["step"] for r in records] == [3, 6, 9]
    assert comparison["stated_rtol"] == 1e-4
    assert comparison["max_rel_diff"] <= comparison["stated_rtol"]
    assert comparison["within_tolerance"] and results["all_within_tolerance"]
    for r in records:
        assert r["train_loss_2proc"] == pytest.approx(r["train_loss_single"], rel=1e-4)
    assert comparison["train_samples_per_s_single"] > 0 and comparison["train_samples_per_s_2proc"] > 0
    assert "2-GPU" in results["throughput_note"]
