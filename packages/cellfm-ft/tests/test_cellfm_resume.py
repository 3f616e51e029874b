"""kill -9 during training, re-run the same command: it resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from cellfm_ft.cli import main



def _argv(train_argv, inputs, out):
    return train_argv(inputs, out, "--test-donors", "D3", "--ckpt-every-steps", "1")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_kill_9_then_resume_matches_uninterrupted(cellfm_inputs, train_argv, tmp_path, capsys):
    """Only the killed run is a subprocess; the reference and the re-run use main() in-process (same command)."""
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    assert main(_argv(train_argv, cellfm_inputs, ref_out)) == 0

    cmd = [sys.executable, "-m", "cellfm_ft.cli", *_argv(train_argv, cellfm_inputs, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "training_results.json").exists()
    assert not list(out.glob(".*.tmp"))  # atomic writes: nothing half-written

    capsys.readouterr()
    assert main(_argv(train_argv, cellfm_inputs, out)) == 0
    assert "resuming from" in capsys.readouterr().out

    ref = json.loads((ref_out / "training_results.json").read_text())
    got = json.loads((out / "training_results.json").read_text())
    for key in ("test_acc_history", "train_acc_history", "best_test_acc", "test_acc_best_model", "n_genes", "steps"):
        assert got[key] == ref[key], key
    a = torch.load(ref_out / "last.pt", weights_only=True)["model"]
    b = torch.load(out / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.loads((out / "split.json").read_text()) == json.loads((ref_out / "split.json").read_text())
