"""Nearest codeword by squared L2 distance."""

from __future__ import annotations

import torch


def nearest_code_reference(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False):
    """x [N, D], codebook [K, D] -> idx [N] int64 (and squared distance [N] fp32).

    |x|^2 - 2 x.c + |c|^2 in fp32; the N x K matrix is materialised (the kernel avoids that).
    """
    x32, c32 = x.float(), codebook.float()
    dist = (x32 * x32).sum(1, keepdim=True) - 2 * x32 @ c32.t() + (c32 * c32).sum(1)[None]
    best, idx = dist.min(1)
    return (idx, best.clamp_min(0)) if return_dist else idx


def nearest_code(x: torch.Tensor, codebook: torch.Tensor, return_dist: bool = False):
    # The Triton path is added by the kernels work (issue 8); until then the reference runs everywhere.
    return nearest_code_reference(x, codebook, return_dist)
