"""kill -9 during training, rerun the same command: it resumes and ends exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch

from get_yeast.cli import main

from get_yeast.config import packaged_config


def train_args(data, out):
    sets = ["training.epochs=3", "training.batch_size=2", "training.ckpt_every_steps=1", "training.warmup_steps=0",
            "training.device=cpu", "training.patience=null", "task.interpret=false", "lora.dropout=0.1"]
    return ["train", "--data", str(data), "--output", str(out), "--no-progress", "--from-scratch",
            "--model-config", str(packaged_config("yeast_model_tiny.yaml")), *[x for s in sets for x in ("--set", s)]]


def command(data, out):
    return [sys.executable, "-m", "get_yeast.cli", *train_args(data, out)]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_kill_and_resume_matches_uninterrupted_run(tiny_csv, tmp_path):
    ref = tmp_path / "uninterrupted"
    assert main(train_args(tiny_csv, ref)) == 0  # in-process: one interpreter start fewer

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(tiny_csv, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "last.pth").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before writing a checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"  # kill -9 mid-training
    killed_at = torch.load(out / "last.pth", weights_only=True)["step"]

    res = subprocess.run(command(tiny_csv, out), env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming from {out / 'last.pth'}" in res.stdout

    a, b = json.loads((ref / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert 0 < killed_at < a["steps"] == b["steps"]
    for key in ("mse", "pearson", "r2", "best_val_loss"):
        assert abs(a[key] - b[key]) < 1e-6, (key, a[key], b[key])
    wa = torch.load(ref / "best_model.pth", weights_only=True)["model"]
    wb = torch.load(out / "best_model.pth", weights_only=True)["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    assert (ref / "splits.json").read_text() == (out / "splits.json").read_text()
