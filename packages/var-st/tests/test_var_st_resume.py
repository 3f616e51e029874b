"""kill -9 during training, rerun the same command: it resumes and ends exactly where an
uninterrupted run with the same seed ends (weights, history, best checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from var_st.cli import main

EPOCHS = 8


def _final_state(log_dir, stage):
    stage_dir = log_dir / "tiny" / "TWO_STAGE_VAR_ST" / ("stage1_vqvae" if stage == 1 else "stage2_var")
    last = torch.load(stage_dir / "last.ckpt", weights_only=True)
    history = [{k: v for k, v in r.items() if k not in ("time_s", "train_samples_per_s")}
               for r in json.loads((stage_dir / "history.json").read_text())]
    return stage_dir, last, history


@pytest.mark.parametrize("stage", [1, 2])
def test_kill_and_resume_matches_uninterrupted_run(stage, tiny_h5ad, tiny_config, tiny, trained_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VAR_ST_NO_PROGRESS": "1"}
    env.pop("WORLD_SIZE", None)
    runs = {}
    for name in ("straight", "killed"):
        log_dir = tmp_path / name
        if stage == 2:  # both start from the same trained stage-1 checkpoint
            src = trained_run / "tiny" / "TWO_STAGE_VAR_ST" / "stage1_vqvae" / "best_vqvae.ckpt"
            dst = log_dir / "tiny" / "TWO_STAGE_VAR_ST" / "stage1_vqvae"
            dst.mkdir(parents=True)
            shutil.copy(src, dst / "best_vqvae.ckpt")
        runs[name] = (log_dir, tiny.train_args(tiny_h5ad, tiny_config, log_dir, stage=stage, epochs=EPOCHS))

    log_dir, args = runs["straight"]
    assert main(args) == 0

    log_dir, args = runs["killed"]
    cmd = [sys.executable, "-m", "var_st.cli", *args]
    stage_dir = log_dir / "tiny" / "TWO_STAGE_VAR_ST" / ("stage1_vqvae" if stage == 1 else "stage2_var")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (stage_dir / "last.ckpt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(stage_dir / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at < EPOCHS  # it really was interrupted

    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout

    _, straight_last, straight_hist = _final_state(runs["straight"][0], stage)
    _, killed_last, killed_hist = _final_state(log_dir, stage)
    assert killed_last["step"] == straight_last["step"] and killed_last["epoch"] == EPOCHS
    for key, value in straight_last["model"].items():
        assert torch.equal(value, killed_last["model"][key]), key
    assert killed_hist == straight_hist
    if stage == 2:
        a = torch.load(runs["straight"][0] / "tiny" / "TWO_STAGE_VAR_ST" / "complete_model.ckpt", weights_only=True)
        b = torch.load(log_dir / "tiny" / "TWO_STAGE_VAR_ST" / "complete_model.ckpt", weights_only=True)
        assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
