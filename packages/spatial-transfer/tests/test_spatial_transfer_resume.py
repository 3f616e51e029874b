"""kill -9 during a fold's training, rerun the same command: finished folds are kept, the fold in
progress resumes from its last checkpoint, and the results equal an uninterrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for _name in ("TRANSFER_STRATEGY", "USE_TRANSFER_LEARNING", "FREEZE_BACKBONE", "CV_MODE", "LOO_HELDOUT"):
    ENV.pop(_name, None)


def test_kill_and_resume_matches_uninterrupted_run(tiny_data, tmp_path, tiny_args):
    def command(out):
        return [sys.executable, "-m", "spatial_transfer.cli", "run", "--data", str(tiny_data), "--output", str(out),
                "--folds", "2", "--lr", "1e-3",
                *tiny_args("--set", "spatial.epochs=8", "--set", "spatial.batch_size=1", "--set", "spatial.ckpt_every_steps=1",
                           "--set", "model.dropout=0.1")]

    ref = tmp_path / "uninterrupted"
    subprocess.run(command(ref), env=ENV, check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    ck = out / "checkpoints_transfer_full"
    proc = subprocess.Popen(command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 200
    while not (ck / "last_fold_1.pt").exists():  # fold 0 finished, fold 1 training
        assert proc.poll() is None and time.time() < deadline, "the run ended before fold 1 wrote a checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = out / "log_normalized_transfer_full"
    assert not (log / "final_2fold_results.json").exists(), "the run finished before it could be killed"
    assert [f["fold"] for f in json.loads((log / "temp_fold_results.json").read_text())["folds"]] == [0]
    killed_at = torch.load(ck / "last_fold_1.pt", weights_only=True)["step"]

    res = subprocess.run(command(out), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming: 1 of 2 folds already finished" in res.stdout
    assert f"resuming from {ck / 'last_fold_1.pt'}" in res.stdout

    a = json.loads((ref / "log_normalized_transfer_full" / "final_2fold_results.json").read_text())
    b = json.loads((log / "final_2fold_results.json").read_text())
    total = json.loads((log / "fold_1_metrics.json").read_text())["history"][-1]["step"]
    assert 0 < killed_at < total
    for fa, fb in zip(a["folds"], b["folds"]):
        for key in ("overall_correlation", "gene_correlation", "test_loss", "best_val_loss"):
            assert abs(fa[key] - fb[key]) < 1e-6, (fa["fold"], key, fa[key], fb[key])
    for k in (0, 1):
        wa = torch.load(ref / "checkpoints_transfer_full" / f"best_hest_graph_model_fold_{k}.pt", weights_only=True)["model"]
        wb = torch.load(ck / f"best_hest_graph_model_fold_{k}.pt", weights_only=True)["model"]
        for name in wa:
            torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6)
