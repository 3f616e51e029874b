"""Calibration workloads: fixed work no code of this repository touches, one per resource.

check_regression.py divides each benchmark's current/baseline ratio by the ratio of the
reference for the resource that benchmark is bound by (its `calibrate_with` extra info):
a copy of 80 MB into fresh memory (what converting a checkpoint costs), small matrix products
(a training step), and dict/regex/string work in Python (parsing, key mapping). Contention on a
shared machine slows these unequally: memory bandwidth suffers most from neighbours, so one
mixed reference would under-correct the memory-bound benchmarks and over-correct the rest.
"""

import re

import numpy as np
import torch

NAMES = [f"encoder.layers.{i}.attention.w_{j}.gamma" for i in range(300) for j in range(10)]


def test_reference_memory(benchmark):
    buf = np.ones(20_000_000, dtype=np.float32)  # 80 MB, like the 20M-parameter checkpoint
    benchmark(np.array, buf, copy=True)


def test_reference_compute(benchmark):
    torch.manual_seed(0)
    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def matmuls() -> torch.Tensor:
        out = a
        for _ in range(20):
            out = torch.tanh(out @ b)
        return out

    benchmark(matmuls)


def test_reference_python(benchmark):
    pattern = re.compile(r"\.gamma$")

    def rename() -> dict[str, int]:
        return {pattern.sub(".weight", k): len(k) for k in NAMES}

    benchmark(rename)
