"""torchrun support: the same training command runs on 1 process or N (PyTorch DDP).

Where this process stands (`rank`, `world_size`, `local_rank`, `is_main_process`) and the one way to
wait for rank 0 (`wait_for_main`) live here, so no package reads torchrun's variables itself.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ftcore.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """This process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK); alone: rank 0 of 1.

    The one reader of torchrun's variables: packages ask `rank()`, `world_size()`, `local_rank()` or
    `is_main_process()` instead of reading the environment.
    """
    values = {}
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        text = os.environ.get(name, default)
        try:
            values[name] = int(text)
        except ValueError:
            raise UserError(f"environment variable {name}={text!r} is not a whole number; torchrun sets it, "
                            f"so unset it when not launching with torchrun") from None
    world = values["WORLD_SIZE"]
    if world <= 1:
        return DistEnv()
    if not 0 <= values["RANK"] < world:
        raise UserError(f"environment variable RANK={values['RANK']} is outside 0..{world - 1} (WORLD_SIZE={world}); "
                        "launch with torchrun, which sets both")
    return DistEnv(values["RANK"], world, values["LOCAL_RANK"])


def rank() -> int:
    return dist_env().rank


def world_size() -> int:
    return dist_env().world_size


def local_rank() -> int:
    return dist_env().local_rank


def is_main_process() -> bool:
    """True on rank 0 (and alone): the process that prints, writes run files and reports."""
    return dist_env().is_main


def init_distributed(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); no-op alone."""
    env = dist_env()
    if not env.enabled:
        return env
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group(backend=backend)
    return env


def wait_for_main(device_kind: str = "cpu") -> None:
    """Under torchrun: every rank waits here until rank 0 gets here too, i.e. has written what the
    others read next (demo inputs, a checkpoint). Alone: returns at once.

    Joins the process group first when no Trainer has yet (`device_kind` picks the backend as the
    Trainer does: nccl for "cuda", gloo otherwise), so it also works before training starts.
    """
    barrier(init_distributed(device_kind))


def all_reduce_sum(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch order, sharded over ranks, resumable mid-epoch.

    The order depends only on (seed, epoch), never on global RNG state, so a resumed run sees
    the same batches as an uninterrupted one. With N ranks each takes every N-th index of the
    padded permutation (as DistributedSampler does).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, env: DistEnv = DistEnv(), drop_last: bool = False):
        self.n, self.shuffle, self.seed, self.env, self.drop_last = n, shuffle, seed, env, drop_last
        self.epoch = 0
        self.start = 0  # samples of this rank to skip (resume mid-epoch)
        w = env.world_size
        self.per_rank = n // w if drop_last else math.ceil(n / w)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.env.world_size
        order = (order + order[: max(total - self.n, 0)])[:total]
        mine = order[self.env.rank :: self.env.world_size]
        return iter(mine[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
