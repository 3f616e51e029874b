"""Set-up for every pytest run in this repository, done before any test module is imported."""

import os

import torch

# Without CUDA, var-st's Triton kernels are tested in Triton's CPU interpreter. Triton reads this
# switch when a kernel is decorated, and torch_geometric (spatial-transfer) imports triton, so it
# must be set here, before the first test module of any package is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
