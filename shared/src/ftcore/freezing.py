"""Freezing strategies: a named strategy is a list of parameter-name patterns, applied by one function.

Each model declares its strategies as data, e.g.

    FREEZE_STRATEGIES = {
        "full": FreezeSpec(),
        "frozen_backbone": FreezeSpec(frozen=(r"^gnn\\.", r"^feature_projection\\.")),
        "frozen_decoder": FreezeSpec(frozen=(r"^gnn\\.", r"^transformer\\.")),
    }
    report = apply_freezing(model, FREEZE_STRATEGIES["frozen_backbone"])

Patterns are regular expressions searched in the parameter name (`re.search`), so "cls\\." and
"encoder" mean "names containing them", and "^gnn\\." means the `gnn` module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from torch import nn

from ftcore.errors import UserError


@dataclass(frozen=True)
class FreezeSpec:
    """Which parameters train.

    trainable: None = every parameter starts trainable; else only names matching a pattern do.
    frozen: names matching one of these are then frozen (the strategy's module groups).
    include / exclude: the user's custom patterns on top: exclude always freezes, include
    otherwise makes trainable.
    """

    trainable: tuple[str, ...] | None = None
    frozen: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def with_overrides(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> "FreezeSpec":
        return replace(self, include=self.include + tuple(include), exclude=self.exclude + tuple(exclude))

    def is_trainable(self, name: str) -> bool:
        if _matches(self.exclude, name):
            return False
        if _matches(self.include, name):
            return True
        if self.trainable is not None and not _matches(self.trainable, name):
            return False
        return not _matches(self.frozen, name)


def _matches(patterns: Iterable[str], name: str) -> bool:
    return any(re.search(p, name) for p in patterns)


@dataclass
class FreezeReport:
    trainable: int = 0
    total: int = 0
    trainable_names: list[str] = field(default_factory=list)
    frozen_names: list[str] = field(default_factory=list)

    def format(self) -> str:
        pct = 100.0 * self.trainable / max(self.total, 1)
        return (
            f"trainable parameters: {self.trainable:,} / {self.total:,} ({pct:.2f}%) in "
            f"{len(self.trainable_names)} tensors; {len(self.frozen_names)} tensors frozen"
        )

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total, "frozen_names": self.frozen_names}


def resolve_strategy(name: str, strategies: Mapping[str, FreezeSpec]) -> FreezeSpec:
    if name not in strategies:
        raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(strategies)}")
    return strategies[name]


def apply_freezing(model: nn.Module, spec: FreezeSpec, *, verbose: bool = True) -> FreezeReport:
    """Set requires_grad on every parameter of `model` from `spec`; error if nothing trains."""
    report = FreezeReport()
    for name, param in model.named_parameters():
        train = spec.is_trainable(name)
        param.requires_grad_(train)
        report.total += param.numel()
        if train:
            report.trainable += param.numel()
            report.trainable_names.append(name)
        else:
            report.frozen_names.append(name)
    if report.trainable == 0:
        raise UserError(
            "No trainable parameters! The freezing strategy froze every parameter; "
            "choose another strategy or add an include pattern"
        )
    if verbose:
        print(report.format())
    return report
