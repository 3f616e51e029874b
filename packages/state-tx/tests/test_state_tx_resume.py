"""Faults: kill -9 during training, rerun the same command, end where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from state_tx.cli import main

STEPS = 12


def test_kill_9_then_rerun_resumes_to_the_same_result(tiny_toml, make_train_args, tmp_path):
    # checkpoints and validations on the same steps, so an interrupted run restarts its data
    # iterator exactly where an uninterrupted one does
    args = make_train_args(tiny_toml, tmp_path / "a", steps=STEPS, extra=["training.val_freq=2", "training.ckpt_every_n_steps=2"])
    assert main(args) == 0
    ref = torch.load(tmp_path / "a" / "run" / "checkpoints" / "final.ckpt", weights_only=True)

    args_b = make_train_args(tiny_toml, tmp_path / "b", steps=STEPS, extra=["training.val_freq=2", "training.ckpt_every_n_steps=2"])
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "state_tx.cli", *args_b], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = torch.load(last, weights_only=True)["step"]
    assert killed_at < STEPS, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "run" / "checkpoints" / "final.ckpt").exists()

    assert main(args_b) == 0  # the same command: resumes from last.ckpt
    got = torch.load(tmp_path / "b" / "run" / "checkpoints" / "final.ckpt", weights_only=True)
    assert got["step"] == ref["step"] == STEPS
    for key, value in ref["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    hist_a = json.loads((tmp_path / "a" / "run" / "history.json").read_text())
    hist_b = json.loads((tmp_path / "b" / "run" / "history.json").read_text())
    # (a kill between the step checkpoint and the validation after it loses that one history record)
    assert {h["step"] for h in hist_b} <= {h["step"] for h in hist_a} and hist_b[-1]["step"] == STEPS
    assert hist_b[-1]["val_loss"] == pytest.approx(hist_a[-1]["val_loss"], rel=1e-5)


def test_unwritable_output_dir_fails_before_training(tiny_toml, make_train_args, tmp_path, capsys):
    if os.geteuid() == 0:
        target = "/proc/state_tx_cannot_write_here"  # root ignores chmod; /proc refuses everyone
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = str(ro / "out")
    assert main(make_train_args(tiny_toml, target)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not writable" in err
