"""The Trainer under torchrun on CPU (gloo): 2 processes behave as one process at equal global batch,
also when the 2-process run is killed mid-epoch and resumed.

2 ranks x batch 8 versus 1 process x batch 16, same seed, no dropout: each global batch holds
the same samples (EpochSampler gives rank r every 2nd index of the epoch's order), DDP averages
the two per-rank mean gradients, which equals the mean over the 16 samples. So parameters and
losses agree up to float32 summation order: tolerance rtol 1e-5 / atol 1e-6.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TOL = dict(rtol=1e-5, atol=1e-6)


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def test_torchrun_two_ranks_match_one_process(tmp_path):
    pytest.importorskip("torch.distributed.run")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    script = [str(HERE / "tiny_train.py")]
    common = ["--epochs", "2", "--dropout", "0", "--ckpt-every", "2"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script,
                str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), "--batch-size", "8", *common]
    # First both ranks die at step 5 (last checkpoint: step 4, mid-epoch 2), then the same
    # command resumes: the comparison below therefore also covers an interrupted DDP run.
    crashed = subprocess.run([*torchrun, "--crash-after", "4"], env=_env(), capture_output=True, text=True, timeout=120)
    assert crashed.returncode != 0
    saved = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert (saved["step"], saved["batch_in_epoch"]) == (4, 1)
    ddp = subprocess.run([*torchrun, "--write-log", str(tmp_path / "writes")], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "resuming from" in ddp.stdout
    single = subprocess.run(
        [sys.executable, *script, str(tmp_path / "single"), str(tmp_path / "single.pt"), "--batch-size", "16", *common],
        env=_env(), capture_output=True, text=True, timeout=120)
    assert single.returncode == 0, single.stderr[-3000:]

    r0 = torch.load(tmp_path / "ddp.rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "ddp.rank1.pt", weights_only=True)
    ref = torch.load(tmp_path / "single.pt", weights_only=True)
    # identical parameters on both ranks, bit for bit
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    # same number of optimizer steps and the same trajectory as one process at equal global batch
    assert r0["steps"] == ref["steps"] == 6
    for k in ref["params"]:
        torch.testing.assert_close(r0["params"][k], ref["params"][k], **TOL)
    assert len(r0["history"]) == len(ref["history"]) == 2
    for a, b in zip(r0["history"], ref["history"]):
        assert a["step"] == b["step"]
        for key in ("train_loss", "train_abs_err", "val_loss", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert r0["history"][0]["train_loss"] > r0["history"][-1]["train_loss"]  # it did train

    # only rank 0 wrote Trainer outputs, and they are the usual set
    rank0_writes = (tmp_path / "writes.rank0").read_text().split()
    rank1_writes = (tmp_path / "writes.rank1").read_text().split()
    assert rank1_writes == []
    assert {Path(p).name for p in rank0_writes} == {"last.pt", "best.pt", "history.json"}
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["best.pt", "history.json", "last.pt"]
    # the checkpoint format is the one-process format (no 'module.' prefix)
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert last["model"].keys() == ref["params"].keys()
