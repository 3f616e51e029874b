"""Partial weight loading with the report users read to trust a transfer.

Loads every checkpoint tensor whose name and shape match the model, skips the rest, and says
exactly what happened (the format of the Cell2Gene transfer guide):

    Successfully loaded 78 weight layers from bulk
    Skipped 2 layers due to shape mismatch:
        output_projection.1.weight: model (512, 256) vs bulk (512, 372)
    Skipped 45 layers not present in spatial model
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

from ftcore.errors import UserError


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # key, model, ckpt
    not_in_model: list[str] = field(default_factory=list)  # in the checkpoint only
    not_in_checkpoint: list[str] = field(default_factory=list)  # model keys left at their init
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason (skip patterns)

    def format(self, source: str = "checkpoint", target: str = "model") -> str:
        lines = [f"✓ Successfully loaded {len(self.loaded)} weight layers from {source}"]
        if self.shape_mismatch:
            lines.append(f"⚠ Skipped {len(self.shape_mismatch)} layers due to shape mismatch:")
            lines += [f"    {k}: {target} {tuple(m)} vs {source} {tuple(c)}" for k, m, c in self.shape_mismatch]
        if self.skipped:
            lines.append(f"⚠ Skipped {len(self.skipped)} layers on purpose:")
            lines += [f"    {k}: {why}" for k, why in self.skipped.items()]
        if self.not_in_model:
            lines.append(f"⚠ Skipped {len(self.not_in_model)} layers not present in {target}")
        if self.not_in_checkpoint:
            lines.append(f"ℹ {len(self.not_in_checkpoint)} {target} layers not in {source} keep their initialisation")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "loaded": self.loaded,
            "shape_mismatch": [
                {"key": k, "model": list(m), "checkpoint": list(c)} for k, m, c in self.shape_mismatch
            ],
            "not_in_model": self.not_in_model,
            "not_in_checkpoint": self.not_in_checkpoint,
            "skipped": self.skipped,
        }


def load_partial(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = False,
    skip: Iterable[tuple[str, str]] = (),
    source: str = "checkpoint",
    target: str = "model",
    verbose: bool = True,
) -> LoadReport:
    """Copy matching tensors of `state_dict` into `model`; return (and print) what happened.

    skip: (regex, reason) pairs for checkpoint keys deliberately not loaded.
    strict: raise UserError on any mismatch or absent key instead of skipping it.
    """
    skip = tuple(skip)
    own = model.state_dict()
    report = LoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        reason = next((why for pat, why in skip if re.search(pat, key)), None)
        if reason is not None:
            report.skipped[key] = reason
        elif key not in own:
            report.not_in_model.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.shape_mismatch.append((key, tuple(own[key].shape), tuple(value.shape)))
        else:
            to_load[key] = value
    report.not_in_checkpoint = [k for k in own if k not in state_dict and k not in report.skipped]
    if strict and (report.shape_mismatch or report.not_in_model or report.not_in_checkpoint):
        raise UserError(
            f"strict loading from {source} failed: {len(report.shape_mismatch)} shape mismatches "
            f"(first: {report.shape_mismatch[0][0] if report.shape_mismatch else '-'}), "
            f"{len(report.not_in_model)} keys not in {target}, {len(report.not_in_checkpoint)} {target} keys "
            f"missing from {source}; load non-strictly to skip them"
        )
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
            report.loaded.append(key)
    if verbose:
        print(report.format(source, target))
    return report
