"""The core Trainer on a tiny regression model: learning, exact resume, early stopping, files."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ftcore.errors import UserError
from ftcore.training import TrainConfig, Trainer, load_history, lr_lambda

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from tiny_train import make_data, make_model  # noqa: E402

VOLATILE = ("time_s", "train_samples_per_s")  # wall-clock fields: the only ones allowed to differ


def mse_loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def config(tmp_path, **kw) -> TrainConfig:
    base = dict(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, lr=5e-2, warmup_steps=2,
                seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, dropout=0.1, loss_fn=mse_loss, **kw):
    train, val = make_data()
    trainer = Trainer(make_model(dropout), cfg, train, val, loss_fn=loss_fn, **kw)
    return trainer, trainer.fit()


def strip(history):
    return [{k: v for k, v in h.items() if k not in VOLATILE} for h in history]


def assert_same_state(a: dict, b: dict):
    """Exact equality of nested checkpoint state (tensors bitwise, numbers exactly)."""
    assert type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float)))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_state(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------------------ learning
def test_loss_decreases(tmp_path):
    _, result = run(config(tmp_path, epochs=6))
    train = [h["train_loss"] for h in result.history]
    val = [h["val_loss"] for h in result.history]
    assert len(result.history) == 6 and result.steps == 6 * 6
    assert train[-1] < 0.5 * train[0]
    assert val[-1] < 0.5 * val[0]
    assert all(h["train_samples_per_s"] > 0 for h in result.history)


def test_max_steps_caps_training(tmp_path):
    _, result = run(config(tmp_path, epochs=5, max_steps=7))
    assert result.steps == 7
    assert result.history[-1]["step"] == 7


# ------------------------------------------------------------------------------- resume
class Crash(Exception):
    pass


def crashing_loss(after_calls: int, loss=mse_loss):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += model.training  # training steps only (the default eval_fn calls loss_fn too)
        if calls["n"] > after_calls:
            raise Crash("simulated crash")
        return loss(model, batch)

    return loss_fn


@pytest.mark.parametrize("crash_after, ckpt_every, val_every", [
    (6, None, None),   # stop exactly at an epoch boundary (6 steps per epoch)
    (10, 4, None),     # mid-epoch: last checkpoint at step 8 = batch 2 of epoch 2
    (11, 3, 4),        # mid-epoch with mid-epoch validations: resume from step 9
])
def test_exact_resume(tmp_path, crash_after, ckpt_every, val_every):
    """k steps, crash, rerun the same config -> identical params, optimizer, scheduler, history."""
    kw = dict(epochs=3, ckpt_every_steps=ckpt_every, val_every_steps=val_every)
    full_trainer, full = run(config(tmp_path / "full", **kw))
    cfg = config(tmp_path / "resumed", **kw)
    with pytest.raises(Crash):
        run(cfg, loss_fn=crashing_loss(crash_after))
    saved = torch.load(Path(cfg.output_dir) / "last.pt", weights_only=True)
    assert 0 < saved["step"] < full.steps
    if ckpt_every:
        assert saved["batch_in_epoch"] > 0, "the test should exercise a mid-epoch resume"
    trainer, resumed = run(cfg)
    assert resumed.steps == full.steps
    assert strip(resumed.history) == strip(full.history)
    a = torch.load(Path(full_trainer.config.output_dir) / "last.pt", weights_only=True)
    b = torch.load(Path(cfg.output_dir) / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "step", "epoch", "batch_in_epoch", "best", "bad_validations"):
        assert_same_state(a[key], b[key])
    assert_same_state(a["rng"]["torch"], b["rng"]["torch"])
    assert strip(load_history(Path(cfg.output_dir) / "history.json")) == strip(full.history)


def logging_loss(model, batch):
    """The MSE, plus two logged values: `(loss, {"name": value})`."""
    x, y = batch
    err = model(x) - y
    return (err**2).mean(), {"abs_err": err.abs().mean().detach(), "rows": float(len(x))}


def test_logged_values_are_averaged_into_history(tmp_path):
    seen = []

    def loss_fn(model, batch):
        loss, logs = logging_loss(model, batch)
        if model.training:
            seen.append(float(logs["abs_err"]))
        return loss, logs

    _, result = run(config(tmp_path, epochs=2), loss_fn=loss_fn)  # 48 samples / 8 = 6 steps per epoch
    assert len(seen) == 12
    assert [h["train_abs_err"] for h in result.history] == pytest.approx([sum(seen[:6]) / 6, sum(seen[6:]) / 6])
    assert [h["train_rows"] for h in result.history] == [8.0, 8.0]
    assert json.loads((Path(result.last_path).parent / "history.json").read_text())[-1]["train_abs_err"] > 0


def test_default_validation_averages_the_logged_values(tmp_path):
    seen = []

    def loss_fn(model, batch):
        loss, logs = logging_loss(model, batch)
        if not model.training:
            seen.append(float(logs["abs_err"]))
        return loss, logs

    _, result = run(config(tmp_path, epochs=2), loss_fn=loss_fn)  # no eval_fn: the Trainer's default
    per_epoch = len(seen) // 2
    assert per_epoch > 0
    assert [h["val_abs_err"] for h in result.history] == pytest.approx(
        [sum(seen[:per_epoch]) / per_epoch, sum(seen[per_epoch:]) / per_epoch])
    assert all("val_loss" in h for h in result.history)


def test_exact_resume_keeps_the_logged_values_of_the_interrupted_epoch(tmp_path):
    kw = dict(epochs=2, ckpt_every_steps=4)
    _, full = run(config(tmp_path / "full", **kw), loss_fn=logging_loss)
    cfg = config(tmp_path / "resumed", **kw)
    with pytest.raises(Crash):  # last checkpoint at step 8: batch 2 of epoch 2
        run(cfg, loss_fn=crashing_loss(10, logging_loss))
    _, resumed = run(cfg, loss_fn=logging_loss)
    assert "train_abs_err" in resumed.history[-1]
    assert strip(resumed.history) == strip(full.history)


def test_resume_false_starts_over(tmp_path):
    cfg = config(tmp_path, epochs=1)
    run(cfg)
    _, again = run(config(tmp_path, epochs=2, resume=False))
    assert [h["epoch"] for h in again.history] == [1, 2]


# ---------------------------------------------------------------------- early stopping
def scripted_eval(values):
    it = iter(values)

    def eval_fn(model, loader):
        return {"val_score": next(it)}

    return eval_fn


@pytest.mark.parametrize("mode, values, min_delta, patience, n_vals, best", [
    ("max", [0.5, 0.7, 0.75, 0.78, 0.95, 0.99], 0.1, 2, 4, 0.7),   # 0.75/0.78 within min_delta of 0.7
    ("max", [0.5, 0.7, 0.75, 0.78, 0.95, 0.99], 0.0, 2, 6, 0.99),  # without min_delta all improve
    ("min", [3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.0], 0.0, 2, 6, 1.5),
    ("min", [3.0, float("nan"), 2.0, 2.1, 2.2], 0.0, 3, 5, 2.0),   # NaN never counts as improvement
])
def test_early_stopping(tmp_path, mode, values, min_delta, patience, n_vals, best):
    cfg = config(tmp_path, epochs=len(values), monitor="val_score", mode=mode, min_delta=min_delta,
                 patience=patience)
    _, result = run(cfg, eval_fn=scripted_eval(values))
    assert len(result.history) == n_vals
    assert result.stopped_early == (n_vals < len(values))
    assert result.best_metric == best
    ckpt = torch.load(result.best_path, weights_only=True)
    assert ckpt["metrics"]["val_score"] == best
    best_epoch = next(h["epoch"] for h in result.history if h.get("val_score") == best)
    assert ckpt["epoch"] == best_epoch


def test_unknown_monitor_is_user_error(tmp_path):
    with pytest.raises(UserError, match="val_pearson"):
        run(config(tmp_path, epochs=1, monitor="val_pearson"))


# --------------------------------------------------------------------------- outputs
def test_checkpoints_history_and_curve(tmp_path):
    cfg = config(tmp_path, epochs=2, epoch_name="checkpoint_epoch_{epoch}.pth", ckpt_every_steps=5,
                 step_name="step={step}.ckpt")
    trainer, result = run(cfg, extra_state={"genes": ["a", "b"], "n_genes": 2, "scale": torch.ones(2)})
    out = Path(cfg.output_dir)
    last = torch.load(out / "last.pt", weights_only=True)
    best = torch.load(out / "best.pt", weights_only=True)
    model_sd = trainer.model.state_dict()
    assert_same_state(last["model"], model_sd)
    assert last["extra"]["genes"] == ["a", "b"] and torch.equal(last["extra"]["scale"], torch.ones(2))
    assert best["extra"]["n_genes"] == 2
    assert best["metrics"]["val_loss"] == result.best_metric == min(h["val_loss"] for h in result.history)
    assert {"checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "step=5.ckpt", "step=10.ckpt",
            "step=12.ckpt"} <= {p.name for p in out.iterdir()}
    history = json.loads((out / "history.json").read_text())
    assert strip(history) == strip(result.history)
    png = (out / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_curve_is_redrawn_at_most_every_curve_every_s_and_always_at_the_end(tmp_path, monkeypatch):
    """Redrawing the PNG after every epoch took ~40% of a tiny CPU demo (get-yeast): history.json is still
    written every epoch, the curve the first time, then at most every CURVE_EVERY_S, and at the end."""
    import ftcore.training as training

    drawn = []
    monkeypatch.setattr(training, "plot_training_curve", lambda history, path: drawn.append(len(history)))
    monkeypatch.setattr(training, "CURVE_EVERY_S", 1e9)
    cfg = config(tmp_path, epochs=4)
    _, result = run(cfg)
    assert drawn == [1, 4] and len(result.history) == 4
    assert len(json.loads((Path(cfg.output_dir) / "history.json").read_text())) == 4


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = config(tmp_path, epochs=1)
    run(cfg)
    out = Path(cfg.output_dir)
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def half_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        with open(f, "r+b") as fh:  # leave a half-written file behind, then die
            fh.truncate(os.path.getsize(f) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError):
        run(config(tmp_path, epochs=2))
    monkeypatch.undo()
    assert (out / "last.pt").read_bytes() == before
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"


# ---------------------------------------------------------------------- numerics
def test_non_finite_loss_is_user_error(tmp_path):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += model.training
        loss = mse_loss(model, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    with pytest.raises(UserError) as err:
        run(config(tmp_path), loss_fn=loss_fn)
    msg = str(err.value)
    assert "\n" not in msg and "nan" in msg and "step 2" in msg and "learning rate" in msg


def test_warmup_cosine_values():
    f = lr_lambda(warmup=4, total=20, schedule="cosine", min_ratio=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for s in range(4, 21):
        p = (s - 4) / 16
        assert f(s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.55) and f(20) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)  # past the end it stays at the floor
    const = lr_lambda(warmup=2, total=20, schedule="constant", min_ratio=0.0)
    assert [const(s) for s in (0, 1, 2, 15)] == [0.5, 1.0, 1.0, 1.0]


def test_schedule_applied_by_trainer(tmp_path):
    """The lr each optimizer step actually uses follows warmup + cosine over the real step count."""
    seen = []
    holder = {}

    def loss_fn(model, batch):
        if model.training:
            seen.append(holder["t"].optimizer.param_groups[0]["lr"])
        return mse_loss(model, batch)

    cfg = config(tmp_path, epochs=2, warmup_steps=3, lr=0.02, min_lr_ratio=0.0)
    train, val = make_data()
    holder["t"] = Trainer(make_model(0.0), cfg, train, val, loss_fn=loss_fn)
    holder["t"].fit()
    f = lr_lambda(3, 12, "cosine", 0.0)
    assert len(seen) == 12
    assert seen == pytest.approx([0.02 * f(s) for s in range(12)])
    assert seen[2] == pytest.approx(0.02) and seen[0] == pytest.approx(0.02 / 3)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("clip", [0.5, None])
def test_grad_clipping(tmp_path, clip):
    norms = []

    def loss_fn(model, batch):
        return 1000.0 * mse_loss(model, batch)  # huge gradients

    train, val = make_data()
    trainer = Trainer(make_model(0.0), config(tmp_path, epochs=1, grad_clip=clip), train, val, loss_fn=loss_fn)
    step = trainer.optimizer.step

    def recording_step(*a, **kw):
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(*a, **kw)

    trainer.optimizer.step = recording_step
    trainer.fit()
    assert len(norms) == 6
    if clip:
        assert max(norms) <= clip * (1 + 1e-5)
    else:
        assert min(norms) > 10 * 0.5  # proves the clipped case had something to clip


def test_no_trainable_parameters(tmp_path):
    model = make_model(0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    train, val = make_data()
    with pytest.raises(UserError, match="No trainable parameters!"):
        Trainer(model, config(tmp_path), train, val, loss_fn=mse_loss)


def test_empty_training_set(tmp_path):
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, 1))
    with pytest.raises(UserError, match="training set is empty"):
        Trainer(make_model(0.0), config(tmp_path), empty, None, loss_fn=mse_loss)


@pytest.mark.parametrize("field, value", [("schedule", "linear"), ("mode", "best"), ("precision", "fp8"), ("lr", 0.0)])
def test_bad_config_values(tmp_path, field, value):
    with pytest.raises(UserError):
        config(tmp_path, **{field: value})


# ----------------------------------------------------------------------------- kill -9
def _train_cmd(out: Path, result: Path) -> list[str]:
    return [sys.executable, str(HERE / "tiny_train.py"), str(out), str(result), "--epochs", "2",
            "--ckpt-every", "1", "--sleep", "0.15"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_kill_minus_9_then_rerun_resumes(tmp_path):
    """SIGKILL after the first last-checkpoint appears; the same command finishes identically."""
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_train_cmd(ref_out, tmp_path / "ref.pt"), check=True, env=_env(), capture_output=True, timeout=120)
    proc = subprocess.Popen(_train_cmd(out, tmp_path / "killed.pt"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; raise --sleep"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / "last.pt", weights_only=True)["step"]
    assert not (tmp_path / "killed.pt").exists()
    rerun = subprocess.run(_train_cmd(out, tmp_path / "killed.pt"), env=_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {out / 'last.pt'}" in rerun.stdout
    ref = torch.load(tmp_path / "ref.pt", weights_only=True)
    got = torch.load(tmp_path / "killed.pt", weights_only=True)
    assert got["steps"] == ref["steps"] == 12 and killed_at < 12
    assert_same_state(got["params"], ref["params"])
    assert strip(got["history"]) == strip(ref["history"])
    assert not list(out.glob(".*.tmp")), "a temp file of the killed run survived the rerun"


# ------------------------------------------------------------------ resume edge cases
def test_stale_temp_files_removed_on_start(tmp_path):
    """A run killed mid-save leaves '.last.pt.<random>.tmp'; the next start deletes it."""
    cfg = config(tmp_path, epochs=1)
    run(cfg)
    out = Path(cfg.output_dir)
    stale = out / ".last.pt.k3j4h2.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"  # not an atomic_path temp name: left alone
    keep.write_text("mine")
    _, result = run(config(tmp_path, epochs=2))
    assert not stale.exists() and keep.exists()
    assert result.steps == 12


def test_unreadable_last_checkpoint_is_user_error(tmp_path):
    cfg = config(tmp_path, epochs=1)
    run(cfg)
    last = Path(cfg.output_dir) / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(UserError) as err:
        run(config(tmp_path, epochs=2))
    assert "cannot resume" in str(err.value) and str(last) in str(err.value) and "\n" not in str(err.value)


def test_resume_with_another_model_is_user_error(tmp_path):
    run(config(tmp_path, epochs=1))
    train, val = make_data()
    other = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 1))
    with pytest.raises(UserError) as err:
        Trainer(other, config(tmp_path, epochs=2), train, val, loss_fn=mse_loss).fit()
    assert "different model" in str(err.value) and "\n" not in str(err.value)


def test_rerun_after_early_stop_is_a_no_op(tmp_path):
    values = [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    cfg = config(tmp_path, epochs=6, monitor="val_score", mode="max", patience=2)
    _, first = run(cfg, eval_fn=scripted_eval(values))
    assert first.stopped_early and len(first.history) == 3
    _, again = run(cfg, eval_fn=scripted_eval(values))
    assert again.stopped_early and again.steps == first.steps
    assert strip(again.history) == strip(first.history)


def test_rerun_after_finishing_is_a_no_op(tmp_path):
    cfg = config(tmp_path, epochs=2)
    trainer1, first = run(cfg)
    trainer2, again = run(cfg)
    assert again.steps == first.steps == 12 and strip(again.history) == strip(first.history)
    assert_same_state(trainer1.model.state_dict(), trainer2.model.state_dict())


# ------------------------------------------------------------------------- helpers
def test_resolve_device_and_move_to():
    from collections import namedtuple

    from ftcore.training import move_to, resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cpu"):
            resolve_device("cuda:0")
    Pair = namedtuple("Pair", "a b")
    batch = {"x": torch.ones(2), "pair": [torch.zeros(1), (torch.ones(1), "name")], "nt": Pair(1, 2), "n": 3}
    moved = move_to(batch, torch.device("cpu"))
    assert torch.equal(moved["x"], torch.ones(2)) and moved["pair"][1][1] == "name"
    assert isinstance(moved["pair"][1], tuple) and moved["nt"] == Pair(1, 2) and moved["n"] == 3


def test_without_validation_data(tmp_path):
    """Default monitor falls back to train_loss; any other val_* monitor fails before training."""
    train, _ = make_data()
    trainer = Trainer(make_model(0.0), config(tmp_path, epochs=2), train, None, loss_fn=mse_loss)
    result = trainer.fit()
    assert trainer.monitor == "train_loss" and "val_loss" not in result.history[-1]
    assert result.best_metric == min(h["train_loss"] for h in result.history)
    assert torch.load(result.best_path, weights_only=True)["metrics"]["train_loss"] == result.best_metric
    with pytest.raises(UserError, match="needs validation data"):
        Trainer(make_model(0.0), config(tmp_path / "b", monitor="val_pearson"), train, None, loss_fn=mse_loss)
    assert not (tmp_path / "b" / "run" / "last.pt").exists()


def test_progress_bar_and_epoch_lines(tmp_path, capsys):
    run(config(tmp_path, epochs=1, progress=True))
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err  # tqdm bar
    assert "epoch 1 step 6: train_loss" in captured.out and "[best]" in captured.out


@pytest.mark.parametrize("bad, phrase", [
    ({"lr": float("nan")}, "lr must be a finite number"),
    ({"lr": float("inf")}, "lr must be a finite number"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number"),
    ({"grad_clip": float("nan")}, "grad_clip must be a finite number"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"min_lr_ratio": 2.0}, "min_lr_ratio between 0 and 1"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
    ({"max_steps": -1}, "max_steps must be >= 1"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"epochs": 0}, "nothing would train"),
])
def test_train_config_refuses_non_finite_and_out_of_range_settings(bad, phrase):
    """NaN passes `lr <= 0`; every float setting is checked for finiteness, counts for range (issue 16)."""
    with pytest.raises(UserError, match=phrase):
        TrainConfig(**bad)


@pytest.mark.parametrize("name, phrase", [
    ("gpu", "did you mean 'cuda'?"), ("GPU:1", "did you mean 'cuda:1'?"), ("cuda0", "did you mean 'cuda:0'?"),
    ("nvidia", "did you mean 'cuda'?"), ("cpu:0", "choose one of auto, cpu, cuda"), ("tpu", "choose one of auto"),
    ("", "unknown device ''"),
])
def test_device_spellings_get_one_line_with_the_choices(name, phrase):
    from ftcore.training import resolve_device

    with pytest.raises(UserError, match=re.escape(phrase)):
        resolve_device(name)


def test_device_names_that_work_here():
    from ftcore.training import resolve_device

    assert resolve_device("CPU") == torch.device("cpu") and resolve_device(" cpu ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available here"):
            resolve_device("cuda:1")


# ------------------------------------------------------------------ fewer host syncs, torch.compile
def test_deferred_sync_gives_the_same_run_and_names_the_first_bad_step(tmp_path):
    """Reading the loss back every 4 steps (the CUDA default is 25) changes nothing but when it is read."""
    _, every = run(config(tmp_path / "a", epochs=3))
    _, deferred = run(config(tmp_path / "b", epochs=3, sync_every_steps=4))
    assert strip(every.history) == strip(deferred.history)

    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += model.training
        loss = mse_loss(model, batch)
        return loss * float("inf") if calls["n"] == 3 else loss

    with pytest.raises(UserError, match="training loss became inf at step 2;"):
        run(config(tmp_path / "c", sync_every_steps=4), loss_fn=loss_fn)
    assert (tmp_path / "c" / "run").is_dir() and not (tmp_path / "c" / "run" / "last.pt").exists()  # no checkpoint of bad weights


def test_compiled_loss_matches_eager(tmp_path):
    """compile='on' (inductor on CPU here) trains the same network to the same losses within fp32 rounding."""
    _, eager = run(config(tmp_path / "e", epochs=2), dropout=0.0)
    trainer, compiled = run(config(tmp_path / "c", epochs=2, compile="on"), dropout=0.0)
    assert trainer.compiled
    for a, b in zip(eager.history, compiled.history):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
        assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=1e-4)


def test_every_trainer_compiles_past_dynamos_recompile_limit(tmp_path, monkeypatch):
    """dynamo runs a code object eagerly after 8 compiled graphs: a process that trains more than 8 kinds of
    model (the GPU smoke tests train five packages') must still compile each one's step, while Trainers of
    the same model class and loss (a cross-validation's folds) share the compiled graph. The backend is
    'eager' here only to keep the test fast: the limit is the same for every backend."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    train, val = make_data()

    def fit(i, model):
        cfg = config(tmp_path / str(i), epochs=1, compile="on", max_steps=1, best_name=None, curve_name=None)
        Trainer(model, cfg, train, val, loss_fn=mse_loss).fit()

    for i in range(torch._dynamo.config.recompile_limit + 3):
        kind = type(f"Model{i}", (nn.Sequential,), {})  # a new class: dynamo's guards need a new graph
        before = counters["stats"]["unique_graphs"]
        fit(i, kind(nn.Linear(4, 8 + i), nn.ReLU(), nn.Linear(8 + i, 1)))
        assert counters["stats"]["unique_graphs"] > before, f"the model of kind {i + 1} trained eagerly"
    before = counters["stats"]["unique_graphs"]
    fit("again", kind(nn.Linear(4, 8 + i), nn.ReLU(), nn.Linear(8 + i, 1)))
    assert counters["stats"]["unique_graphs"] == before  # same class, same loss: the graph is reused


def test_compile_setting_is_checked():
    with pytest.raises(UserError, match="unknown compile setting 'yes'; choose auto, on or off"):
        TrainConfig(compile="yes")


def test_one_element_loss_of_any_shape_and_in_place_logs(tmp_path):
    """A loss of shape [1] trains as before; a logged tensor updated in place later is read back as it was."""
    counter = torch.zeros(())

    def loss_fn(model, batch):
        counter.add_(1)  # a buffer-like tensor the loss_fn logs, then changes in place
        return mse_loss(model, batch).reshape(1), {"seen": counter}

    _, result = run(config(tmp_path, epochs=1, sync_every_steps=6), loss_fn=loss_fn)
    assert math.isfinite(result.history[-1]["train_loss"])
    assert result.history[-1]["train_seen"] == pytest.approx(3.5)  # mean of 1..6, not 6 (the value at read-back)
