"""The core Trainer on CUDA with the tiny regression model of test_core_training.py: autocast
precision inside the step, learning, resume after a crash at an epoch boundary, and the default
validation on CPU-resident data.

FT_GPU_TEST_DEVICE=cpu runs the same tests on the CPU (see device_under_test.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from ftcore.training import TrainConfig, Trainer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from device_under_test import device_under_test  # noqa: E402
from test_core_training import Crash, crashing_loss, mse_loss, strip  # noqa: E402
from tiny_train import make_data, make_model  # noqa: E402

pytestmark = pytest.mark.gpu

# Resume replays the same kernels on the same inputs (CUDA RNG restored for dropout), so the
# result is expected bit-identical; the tolerance leaves room only for non-deterministic
# reductions a cuBLAS/cuDNN version might choose, far below what one skipped or repeated step moves.
RESUME_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture
def device() -> torch.device:
    return device_under_test()


def config(tmp_path: Path, device: torch.device, **kw) -> TrainConfig:
    """test_core_training's tiny run (6 steps of 8 samples per epoch), on `device`."""
    base = dict(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, lr=5e-2, warmup_steps=2, seed=3,
                progress=False, curve_name=None, device=str(device))
    base.update(kw)
    return TrainConfig(**base)


def data_on(device: torch.device) -> tuple[TensorDataset, TensorDataset]:
    """make_data()'s sets with their tensors already on `device`, so that these tests do not depend on
    the default validation moving batches (test_default_validation_moves_batches_to_the_device does)."""
    return tuple(TensorDataset(*(t.to(device) for t in ds.tensors)) for ds in make_data())


def fit(cfg: TrainConfig, loss_fn=mse_loss, dropout: float = 0.1) -> tuple[Trainer, object]:
    train, val = data_on(torch.device(cfg.device))
    trainer = Trainer(make_model(dropout), cfg, train, val, loss_fn=loss_fn)
    return trainer, trainer.fit()


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp32"])
def test_autocast_dtype_inside_the_step(tmp_path, device, precision):
    """The first Linear's output dtype in training forwards: bf16 for precision bf16, and for auto on
    CUDA (the documented default); fp32 for fp32, and for auto on the CPU. Parameters stay fp32."""
    seen = []
    train, val = data_on(device)
    model = make_model(0.0)
    hook = model[0].register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype, out.device.type)))
    trainer = Trainer(model, config(tmp_path, device, epochs=1, precision=precision), train, val, loss_fn=mse_loss)
    trainer.fit()
    hook.remove()
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    want = torch.bfloat16 if bf16 else torch.float32
    steps = [(dtype, dev) for training, dtype, dev in seen if training]
    assert len(steps) == 6
    assert set(steps) == {(want, device.type)}
    assert all(p.dtype == torch.float32 and p.device.type == device.type for p in trainer.model.parameters())


def test_loss_decreases(tmp_path, device):
    trainer, result = fit(config(tmp_path, device, epochs=6))
    train = [h["train_loss"] for h in result.history]
    val = [h["val_loss"] for h in result.history]
    assert result.steps == 36 and next(trainer.model.parameters()).device.type == device.type
    assert train[-1] < 0.5 * train[0] and val[-1] < 0.5 * val[0]
    if device.type == "cuda":  # memory statistics exist only for CUDA
        assert torch.cuda.max_memory_allocated() > 0


def test_resume_after_epoch_1_matches_uninterrupted(tmp_path, device):
    """Crash in epoch 2 (last.pt holds epoch 1), rerun the same config -> the uninterrupted run's
    parameters and history. Dropout 0.1 draws from the device's RNG, so its restore is covered too."""
    full_trainer, full = fit(config(tmp_path / "full", device))
    cfg = config(tmp_path / "resumed", device)
    with pytest.raises(Crash):
        fit(cfg, loss_fn=crashing_loss(6))  # 6 steps per epoch: step 7 raises
    saved = torch.load(Path(cfg.output_dir) / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["step"], saved["batch_in_epoch"]) == (1, 6, 0)
    if device.type == "cuda":
        assert "cuda" in saved["rng"], "the checkpoint must carry the CUDA RNG state"
    trainer, resumed = fit(cfg)
    assert resumed.steps == full.steps == 18
    a, b = full_trainer.model.state_dict(), trainer.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].device.type == b[name].device.type == device.type
        torch.testing.assert_close(b[name], a[name], **RESUME_TOL, msg=lambda m, name=name: f"{name}: {m}")
    got, want = strip(resumed.history), strip(full.history)
    assert [h["epoch"] for h in got] == [h["epoch"] for h in want] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), k
    # not trivially equal: training moved the weights away from the initialisation
    init = make_model(0.1).state_dict()
    assert not torch.allclose(a["0.weight"].cpu(), init["0.weight"], atol=1e-3)


def test_default_validation_moves_batches_to_the_device(tmp_path, device):
    """Data held on the CPU (the usual case) with no eval_fn: the training step moves each batch to the
    device, and the default validation (loss_fn over the validation loader) must do the same."""
    train, val = make_data()
    trainer = Trainer(make_model(0.0), config(tmp_path, device, epochs=1), train, val, loss_fn=mse_loss)
    result = trainer.fit()
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.history[-1]["val_loss"]))


class _Running(torch.nn.Module):
    """A model whose forward updates a buffer in place (as var-st's VQ keeps its codebook statistics):
    the case where a CUDA graph replays against state that changes between steps."""

    def __init__(self):
        super().__init__()
        self.net = make_model(0.0)
        self.register_buffer("seen", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.seen.add_(x.detach().abs().mean())
        return self.net(x) + 1e-3 * self.seen


def test_cuda_graphs_train_as_compiled_does(tmp_path, device):
    """compile=graphs (torch.compile with CUDA graphs) against compile=on, same seed and data: the same
    history and weights, and the in-place buffer updated once per step. Losses are read back every 4
    steps, so each one must survive the replays after it (the loss is copied out of the graph's buffer).
    On the CPU graphs means eager and on means compiled: the same numbers within float tolerance."""
    runs = {}
    for mode in ("on", "graphs"):
        train, val = data_on(device)
        torch.manual_seed(0)
        model = _Running()
        cfg = config(tmp_path / mode, device, epochs=3, compile=mode, sync_every_steps=4, precision="fp32")
        trainer = Trainer(model, cfg, train, val, loss_fn=mse_loss)
        assert trainer.cuda_graphs == (mode == "graphs" and device.type == "cuda")
        runs[mode] = (trainer, trainer.fit())
    (t_on, on), (t_gr, gr) = runs["on"], runs["graphs"]
    assert gr.steps == on.steps == 18
    for a, b in zip(strip(on.history), strip(gr.history)):
        for k in ("train_loss", "val_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    assert len({h["train_loss"] for h in gr.history}) == 3, "each epoch's loss is its own"
    for name, value in t_on.model.state_dict().items():
        torch.testing.assert_close(t_gr.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    assert float(t_gr.model.seen) > 0
