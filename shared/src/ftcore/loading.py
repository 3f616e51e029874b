"""Partial weight loading with the report users read to trust a transfer.

Loads every checkpoint tensor whose name and shape match the model, skips the rest, and says
exactly what happened (the format of the Cell2Gene transfer guide):

    Successfully loaded 78 weight layers from bulk
    Skipped 2 layers due to shape mismatch:
        output_projection.1.weight: model (512, 256) vs bulk (512, 372)
    Skipped 45 layers not present in spatial model

followed by the per-module account, so "loaded N" never hides a pretrained part that did not load:

    by module (loaded / in model): encoder 150/150, region_embed 0/2 ⚠, cls_token 0/1 ⚠, head_exp 0/2
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
    model_keys: list[str] = field(default_factory=list)  # every tensor of the target, in order

    def modules(self) -> dict[str, tuple[int, int]]:
        """{top-level module: (tensors loaded, tensors in the model)}, in model order."""
        return _count(self.model_keys, set(self.loaded), depth=1)

    def incomplete_parts(self) -> list[str]:
        """'encoder.norm 0/2'-style entries for sub-modules of partly loaded modules."""
        loaded, out = set(self.loaded), []
        for module, (n, total) in self.modules().items():
            if 0 < n < total:
                keys = [k for k in self.model_keys if module_of(k, 1) == module]
                out += [f"{sub} {m}/{t}" for sub, (m, t) in _count(keys, loaded, depth=2).items() if m < t]
        return out

    def format(self, source: str = "checkpoint", target: str = "model") -> str:
        lines = [f"✓ Successfully loaded {len(self.loaded)} weight layers from {source}"]
        if self.model_keys and len(self.loaded) < len(self.model_keys):  # the guide's line, never alone when short
            lines = [f"⚠ Successfully loaded {len(self.loaded)} weight layers from {source}, "
                     f"of {len(self.model_keys)} {target} tensors"]
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
        if self.model_keys:
            parts = [f"{m} {n}/{t}" + ("" if n == t else " ⚠") for m, (n, t) in self.modules().items()]
            lines.append(f"  by module (loaded / in {target}): " + ", ".join(parts))
            if self.incomplete_parts():
                lines.append("  partly loaded: " + ", ".join(self.incomplete_parts()))
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
            "modules": {m: {"loaded": n, "total": t} for m, (n, t) in self.modules().items()},
        }


def _refuse_non_finite(tensors: Mapping[str, torch.Tensor], params: set[str], source: str) -> None:
    """NaN in any tensor, or inf in a parameter, is a corrupt file or a diverged run: never loaded.

    Buffers may hold -inf on purpose (attention masks), so only NaN counts there.
    """
    for key, value in tensors.items():
        if not (value.is_floating_point() or value.is_complex()):
            continue
        bad = ~torch.isfinite(value) if key in params else torch.isnan(value)
        if bool(bad.any()):
            raise UserError(
                f"{source}: tensor {key} holds {int(bad.sum())} of {value.numel()} NaN/inf values; the file is corrupt "
                "or the run that wrote it diverged: use an earlier checkpoint or re-download it"
            )


def _refuse_wrong_kind(tensors: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> None:
    """Integer or bool values for a floating-point weight (or the reverse) are never a checkpoint of this model:
    casting them would load e.g. quantised codes or token ids as weights without a word."""
    def kind(t: torch.Tensor) -> str:
        return "floating" if t.is_floating_point() or t.is_complex() else "integer"  # bool masks count as integer

    for key, value in tensors.items():
        if kind(value) != kind(own[key]):
            raise UserError(
                f"{source}: tensor {key} is {str(value.dtype).removeprefix('torch.')} in the file but the model's is "
                f"{str(own[key].dtype).removeprefix('torch.')}; this is not a checkpoint of this model (a quantised or "
                "converted file?): use the original floating-point weights"
            )


def module_of(key: str, depth: int) -> str:
    """The module a tensor belongs to, `depth` names deep ('encoder.blocks.0.attn.qkv.weight', 2 -> 'encoder.blocks');
    a top-level tensor (cls_token) is its own group."""
    parts = key.split(".")
    return ".".join(parts[: min(depth, max(len(parts) - 1, 1))])


def _count(keys: Iterable[str], loaded: set[str], depth: int) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {}
    for key in keys:
        c = counts.setdefault(module_of(key, depth), [0, 0])
        c[0] += key in loaded
        c[1] += 1
    return {k: (n, t) for k, (n, t) in counts.items()}


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
    report = LoadReport(model_keys=list(own))
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
    _refuse_wrong_kind(to_load, own, source)
    _refuse_non_finite(to_load, {name for name, _ in model.named_parameters()}, source)
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
            report.loaded.append(key)
    if verbose:
        print(report.format(source, target))
    return report
