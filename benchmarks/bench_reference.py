"""The calibration workload: fixed work no code of this repository touches.

check_regression.py divides every benchmark's current/baseline ratio by this one's, so a slower
or busier machine is not read as a regression. It mixes what the real benchmarks spend time on:
memory copies (checkpoint reading), small matrix products (a training step) and Python loops
(key mapping), in roughly equal parts.
"""

import numpy as np
import torch


def reference_workload(buf: np.ndarray, a: torch.Tensor, b: torch.Tensor) -> float:
    copied = np.array(buf, copy=True)  # ~32 MB memory traffic
    acc = 0.0
    for _ in range(20):
        acc += float((a @ b).sum())
    names = {f"encoder.layers.{i}.attention.w_{j}.gamma": i for i in range(300) for j in range(10)}
    renamed = {k.replace(".gamma", ".weight"): v for k, v in names.items()}
    return acc + float(copied[0]) + len(renamed)


def test_reference_workload(benchmark):
    torch.manual_seed(0)
    buf = np.ones(8_000_000, dtype=np.float32)
    a, b = torch.randn(192, 192), torch.randn(192, 192)
    benchmark(reference_workload, buf, a, b)
