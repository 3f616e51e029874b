"""TrainConfig.restore_best: after fit the model holds the best validation's weights (best_name), not the last
step's; without it, the last step's (the default, unchanged)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ftcore.training import TrainConfig, Trainer


def _fit(tmp_path, restore_best: bool, scores=(3.0, 1.0, 2.0, 4.0)):
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    data = TensorDataset(x, x.sum(1, keepdim=True))
    model = nn.Linear(4, 1)
    seen = iter(scores)  # the validation metric per epoch: the best is epoch 2 of 4

    def eval_fn(m, loader):
        return {"val_loss": next(seen)}

    cfg = TrainConfig(output_dir=str(tmp_path), epochs=len(scores), batch_size=8, lr=0.05, progress=False,
                      curve_name=None, restore_best=restore_best, device="cpu")
    trainer = Trainer(model, cfg, data, data, loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
                      eval_fn=eval_fn)
    return model, trainer.fit()


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("restore_best", [True, False])
def test_model_holds_best_or_last(tmp_path, restore_best):
    model, result = _fit(tmp_path, restore_best)
    best, last = _weights(result.best_path), _weights(result.last_path)
    assert result.best_metric == 1.0
    assert not torch.equal(best["weight"], last["weight"])  # training moved on after the best epoch
    held = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    expected = best if restore_best else last
    for k in held:
        assert torch.equal(held[k], expected[k]), k


def test_without_a_best_file_the_last_weights_stay(tmp_path):
    model, result = _fit(tmp_path, True, scores=(float("nan"),) * 2)  # no finite metric: no best file
    assert not result.best_path.exists()
    last = _weights(result.last_path)
    assert all(torch.equal(v.detach().cpu(), last[k]) for k, v in model.state_dict().items())
