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

Freezing is only sound for weights that came from somewhere. Pass `pretrained=` the LoadReport of
the load that supplied them (or None when nothing was loaded): a tensor that ends up frozen but was
not loaded (a tensor the load skipped stayed at its init too) and not named in `fresh`
(deliberately re-initialised) is an error naming its module, unless `allow_unloaded_frozen=True`
(CLIs: --allow-unloaded-frozen), which turns it into a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

from torch import nn

from ftcore.errors import UserError
from ftcore.loading import LoadReport, module_of

# `pretrained` left out: the caller freezes for a reason that is not a pretrained load
_NOT_GIVEN = object()
ALLOW_FLAG = "--allow-unloaded-frozen"


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


def apply_freezing(
    model: nn.Module,
    spec: FreezeSpec,
    *,
    pretrained: LoadReport | None | object = _NOT_GIVEN,
    fresh: Iterable[str] = (),
    allow_unloaded_frozen: bool = False,
    verbose: bool = True,
) -> FreezeReport:
    """Set requires_grad on every parameter of `model` from `spec`; error if nothing trains.

    pretrained: the LoadReport of the pretrained weights (None: none were loaded); then every frozen
    tensor must have been loaded, skipped on purpose, or match a `fresh` pattern (see module docstring).
    """
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
    if pretrained is not _NOT_GIVEN:
        check_frozen_loaded(report.frozen_names, pretrained, fresh=fresh, allow=allow_unloaded_frozen)
    if verbose:
        print(report.format())
    return report


def canonical_name(name: str) -> str:
    """A parameter's name in the model as it was loaded: peft's wrapper names mapped back
    ('base_model.model.encoder.qkv.base_layer.weight' -> 'encoder.qkv.weight')."""
    if name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".").replace(
        ".original_module.", ".")


def unloaded_frozen(frozen_names: Iterable[str], pretrained: LoadReport | None, fresh: Iterable[str] = ()) -> list[str]:
    """The frozen tensors (canonical names) that were neither loaded, skipped on purpose, nor fresh."""
    # A tensor the load skipped on purpose stayed at its init too: only `fresh` declares that deliberate.
    ok = set() if pretrained is None else set(pretrained.loaded)
    fresh = tuple(fresh)
    names = (canonical_name(n) for n in frozen_names)
    return [n for n in names if n not in ok and not _matches(fresh, n)]


def check_frozen_loaded(
    frozen_names: Iterable[str], pretrained: LoadReport | None, *, fresh: Iterable[str] = (), allow: bool = False
) -> list[str]:
    """Refuse (UserError) to freeze tensors no checkpoint supplied; with `allow`, warn instead. Returns them."""
    missing = unloaded_frozen(frozen_names, pretrained, fresh)
    if not missing:
        return missing
    groups: dict[str, list[str]] = {}
    for name in missing:
        groups.setdefault(module_of(name, 1), []).append(name)
    shown = "; ".join(f"{m} ({len(ks)}: {', '.join(ks[:2])}{', ...' if len(ks) > 2 else ''})" for m, ks in groups.items())
    where = "no pretrained checkpoint was loaded" if pretrained is None else "the checkpoint did not supply them"
    skipped = [n for n in missing if pretrained is not None and n in pretrained.skipped]
    if skipped:
        where += f"; {skipped[0]} was skipped: {pretrained.skipped[skipped[0]]}"
    message = (
        f"{len(missing)} frozen tensors would stay at their random initialisation for the whole run ({where}): "
        f"{shown}"
    )
    if allow:
        print(f"⚠ {message} [{ALLOW_FLAG}]")
        return missing
    raise UserError(
        f"{message}; check the checkpoint and its layout (the load report above lists what matched), "
        f"or make them trainable, or pass {ALLOW_FLAG} to freeze them at random init on purpose"
    )
