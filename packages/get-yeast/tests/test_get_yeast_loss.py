"""The training loss: the masked mean equals MSE over the unpadded regions (the boolean-index form it replaced)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from get_yeast.train import loss_fn


class _Fixed(torch.nn.Module):
    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, motif, conditions, padding):
        return self.pred


def test_masked_loss_is_mse_over_real_regions():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    g = torch.Generator().manual_seed(seed)
    for shape in ((3, 7, 2), (4, 9)):
        padding = torch.rand(shape[:2], generator=g) < 0.3
        padding[0, 0] = False  # at least one real region
        label = torch.randn(shape, generator=g)
        label[padding] = float("nan")  # whatever sits under the padding must not count
        pred = torch.randn(shape, generator=g)
        batch = {"region_motif": None, "conditions": None, "padding": padding, "exp_label": label}
        got = loss_fn(_Fixed(pred), batch)
        want = F.mse_loss(pred[~padding], label[~padding])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
