"""A tiny Trainer run used by the subprocess tests (kill -9 resume, torchrun DDP).

    python tiny_train.py OUT_DIR RESULT.pt [--batch-size 8] [--epochs 3] [--ckpt-every 1]
                         [--sleep 0] [--dropout 0.1] [--write-log LOG] [--crash-after STEPS]

Writes RESULT.pt (per rank: RESULT.rank{r}.pt under torchrun) with the final parameters and the
history, outside OUT_DIR so it never counts as a Trainer output. --write-log records every
atomic write (rank, path) so a test can check that only rank 0 wrote.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_data(n: int = 48, seed: int = 1) -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 16, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n + 16, 1, generator=g)
    return TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:])


def make_model(dropout: float, seed: int = 2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("result")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ckpt-every", type=int, default=None)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--write-log", default=None)
    ap.add_argument("--crash-after", type=int, default=None, help="hard exit (like kill -9) at this training step")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))

    import ftcore.io
    from ftcore.training import TrainConfig, Trainer

    if args.write_log:
        log = Path(f"{args.write_log}.rank{rank}")
        log.write_text("")
        original = ftcore.io.atomic_path

        def logged(path):
            with log.open("a") as fh:
                fh.write(f"{path}\n")
            return original(path)

        ftcore.io.atomic_path = logged

    calls = [0]

    def loss_fn(model, batch):
        calls[0] += model.training
        if args.crash_after is not None and calls[0] > args.crash_after:
            os._exit(17)  # no cleanup, no atexit: what a killed process leaves behind
        if args.sleep:
            time.sleep(args.sleep)  # slow enough that the kill test can hit mid-training
        x, y = batch
        pred = model(x)
        return nn.functional.mse_loss(pred, y), {"abs_err": (pred - y).abs().mean().detach()}

    train, val = make_data()
    cfg = TrainConfig(output_dir=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=5e-2,
                      warmup_steps=2, seed=3, ckpt_every_steps=args.ckpt_every, progress=False,
                      curve_name=None, csv_name=None, tensorboard_dir=None)  # the DDP test counts checkpoints + JSON
    trainer = Trainer(make_model(args.dropout), cfg, train, val, loss_fn=loss_fn)
    result = trainer.fit()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.result)
    if world > 1:
        out = out.with_suffix(f".rank{rank}.pt")
    torch.save({"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                "history": result.history, "steps": result.steps}, out)


if __name__ == "__main__":
    main()
