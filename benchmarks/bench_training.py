"""One optimizer step of the core Trainer (forward, loss, backward, clip, AdamW, scheduler) on a small MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ftcore.training import Trainer, TrainConfig


def mse_loss(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def test_trainer_step(benchmark, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 64))
    data = TensorDataset(torch.randn(256, 256), torch.randn(256, 64))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=64, device="cpu", progress=False,
                      curve_name=None, best_name=None, warmup_steps=10)
    trainer = Trainer(model, cfg, data, loss_fn=mse_loss)
    batch = next(iter(trainer.train_loader))
    # Trainer._train_step is the body of the training loop: timing fit() instead would time checkpoint I/O.
    benchmark.extra_info["calibrate_with"] = "compute"
    loss, _ = benchmark(trainer._train_step, batch)
    assert float(loss) > 0
