"""ftcore.freezing: named strategies, include/exclude patterns, counts."""

from __future__ import annotations


import pytest
from torch import nn

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec, apply_freezing, resolve_strategy




class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gnn = nn.Linear(3, 4)
        self.transformer = nn.ModuleDict({"attn": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
        self.head = nn.Linear(4, 2)


STRATEGIES = {
    "full": FreezeSpec(),
    "frozen_backbone": FreezeSpec(frozen=(r"^gnn\.", r"^transformer\.")),
    "frozen_decoder": FreezeSpec(frozen=(r"^head\.",)),
    "head_only": FreezeSpec(trainable=(r"^head\.",)),
}


def _count(model, prefixes):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


@pytest.mark.parametrize("name, trainable_prefixes", [
    ("full", ("gnn.", "transformer.", "head.")),
    ("frozen_backbone", ("head.",)),
    ("frozen_decoder", ("gnn.", "transformer.")),
    ("head_only", ("head.",)),
])
def test_strategies_set_requires_grad_and_counts(name, trainable_prefixes, capsys):
    model = Net()
    report = apply_freezing(model, resolve_strategy(name, STRATEGIES))
    for n, p in model.named_parameters():
        assert p.requires_grad == n.startswith(trainable_prefixes), n
    assert report.trainable == _count(model, trainable_prefixes)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert sorted(report.trainable_names + report.frozen_names) == sorted(n for n, _ in model.named_parameters())
    assert f"trainable parameters: {report.trainable:,} / {report.total:,}" in capsys.readouterr().out


def test_include_exclude_on_top_of_a_strategy():
    model = Net()
    spec = STRATEGIES["frozen_backbone"].with_overrides(include=[r"norm"], exclude=[r"head\.bias"])
    report = apply_freezing(model, spec, verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.norm.weight", "transformer.norm.bias", "head.weight"}
    assert report.trainable == 4 + 4 + 8
    # exclude wins over include
    apply_freezing(model, FreezeSpec(include=("head",), exclude=("head",), frozen=("gnn",)), verbose=False)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("head", "gnn")))


def test_no_trainable_parameters_and_unknown_strategy():
    with pytest.raises(UserError, match="No trainable parameters!"):
        apply_freezing(Net(), FreezeSpec(trainable=("nothing_matches",)))
    with pytest.raises(UserError) as err:
        resolve_strategy("frozen-backbone", STRATEGIES)
    assert "full, frozen_backbone, frozen_decoder, head_only" in str(err.value)
