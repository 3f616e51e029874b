"""Declarative weight-name mapping: renames, per-key transforms and a skip list, with a report.

A model's mapping is data in one place, e.g.

    CELLFM_MAP = KeyMap(
        renames=MINDSPORE_RENAMES + (Rename(r"^value_enc\\.value_enc\\.", "value_enc."),),
        transforms=((r"\\.in_proj\\.weight$", transpose),),
        skip=((r"^value_dec\\.", "pretraining decoder, not used for fine-tuning"),),
    )
    state_dict, report = CELLFM_MAP.apply(checkpoint_tensors)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


@dataclass(frozen=True)
class Rename:
    """Replace regex `pattern` by `repl` (re.sub syntax) in every key it matches."""

    pattern: str
    repl: str

    @classmethod
    def prefix(cls, old: str, new: str = "") -> "Rename":
        return cls("^" + re.escape(old), new.replace("\\", "\\\\"))

    def __call__(self, key: str) -> str:
        return re.sub(self.pattern, self.repl, key)


# MindSpore's names for the same parameters torch calls otherwise.
MINDSPORE_RENAMES: tuple[Rename, ...] = (
    Rename(r"\.gamma$", ".weight"),
    Rename(r"\.beta$", ".bias"),
    Rename(r"\.moving_mean$", ".running_mean"),
    Rename(r"\.moving_variance$", ".running_var"),
    Rename(r"\.embedding_table$", ".weight"),
)


def transpose(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).contiguous()


@dataclass
class MappingReport:
    renamed: dict[str, str] = field(default_factory=dict)  # source key -> target key (changed only)
    transformed: list[str] = field(default_factory=list)  # target keys
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason

    def summary(self) -> str:
        lines = [f"renamed {len(self.renamed)} keys, transformed {len(self.transformed)}, skipped {len(self.skipped)}"]
        lines += [f"    skipped {k}: {why}" for k, why in self.skipped.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"renamed": self.renamed, "transformed": self.transformed, "skipped": self.skipped}


@dataclass(frozen=True)
class KeyMap:
    """Renames applied in order, then transforms (matched on the target name), skips on the source name."""

    renames: tuple[Rename, ...] = ()
    transforms: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = ()
    skip: tuple[tuple[str, str], ...] = ()  # (regex on source key, reason)

    def target_name(self, key: str) -> str:
        for rule in self.renames:
            key = rule(key)
        return key

    def apply(self, tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], MappingReport]:
        report = MappingReport()
        out: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            reason = next((why for pat, why in self.skip if re.search(pat, key)), None)
            if reason is not None:
                report.skipped[key] = reason
                continue
            target = self.target_name(key)
            if target != key:
                report.renamed[key] = target
            for pat, fn in self.transforms:
                if re.search(pat, target):
                    value = fn(value)
                    report.transformed.append(target)
            if target in out:
                raise ValueError(f"mapping sends two checkpoint keys to {target!r}; fix the rename rules")
            out[target] = value
        return out, report
