"""The device the `gpu`-marked tests run on (a plain module: shared/tests/ and tests/ both import it).

    CUDA present                  -> cuda
    no CUDA                       -> skip, or fail when FT_REQUIRE_CUDA=1 (the GPU runner sets it)
    FT_GPU_TEST_DEVICE=cpu        -> the same test on the CPU, to check its logic on a machine
                                     without a GPU (assertions only CUDA can answer are skipped there)
"""

from __future__ import annotations

import os

import pytest
import torch

OVERRIDE = "FT_GPU_TEST_DEVICE"


def device_under_test() -> torch.device:
    override = os.environ.get(OVERRIDE, "")
    if override not in ("", "cpu", "cuda"):
        pytest.fail(f"{OVERRIDE}={override!r}: use cpu (or leave it unset for cuda)")
    if override == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("FT_REQUIRE_CUDA") == "1":
        pytest.fail("FT_REQUIRE_CUDA=1 but torch sees no CUDA device")
    pytest.skip(f"needs CUDA ({OVERRIDE}=cpu runs the same test on the CPU)")
