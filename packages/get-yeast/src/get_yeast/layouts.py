"""GET's checkpoint layouts as data: who writes which names, and the prefix renames onto get-yeast's.

get-yeast's names are GET's `GETRegionFinetune` names (model.py's docstring). GET's own writers use
three other layouts; each is one row below, detected from the file's names (GET-Foundation/get_model;
shared/research/real_layouts.md):

layout            written by                                       weights under  renames (file prefix -> ours)
checkpoint-799    MAE-era pretraining, utils.save_model            'model'        encoder.region_embed.proj. -> region_embed.embed.
                  (the released checkpoint-799.pth; GET's                         encoder.cls_token -> cls_token
                  tutorial pretrain_pbmc.ipynb renames it so)                     encoder.head. -> head_mask. (skipped)
                                                                                  encoder.blocks. / encoder.norm. / mask_token unchanged
lightning         current GET (run.py LitModel + ModelCheckpoint)  'state_dict'   model. -> ''  (finetune/lightning.yaml)
paper-finetuned   paper-era fine-tuning (finetune/v1_finetune.yaml) 'model'       blocks. -> encoder.blocks., fc_norm. -> encoder.norm.,
                                                                                  region_embed.proj. -> region_embed.embed.,
                                                                                  head. -> head_exp.head. (+ the checkpoint-799 rows)
get-yeast         GETRegionFinetune itself and get-yeast's         any            none
                  merged_model.safetensors

GET applies its rename tables with str.replace anywhere in a name; here a rule is a PREFIX and the
first matching rule renames a name (same result on GET's files, no accidental mid-name matches).
A user-supplied table (`pretrained.renames` in yeast_training.yaml) is applied first, for any other
layout; see `parse_renames`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ftcore.errors import UserError

# Pretraining-only parts of GET: present in pretraining files, no use when fine-tuning (target names).
GET_PRETRAINING_SKIP = (
    (r"^mask_token$", "masked-region token of GET's pretraining (MAE); unused when fine-tuning"),
    (r"^head_mask\.", "motif-reconstruction head of GET's pretraining; no use in fine-tuning"),
    (r"^head_atac\.", "accessibility head of GET's pretraining"),
)

# The pretrained parts every layout must supply in full (model parameter prefixes).
PRETRAINED_PARTS = ("region_embed.", "cls_token", "encoder.")


@dataclass(frozen=True)
class Layout:
    name: str
    written_by: str
    renames: tuple[tuple[str, str], ...]  # (file prefix, our prefix), first match wins
    marks: tuple[str, ...]  # name prefixes that identify the layout (any one present)

    def rename(self, key: str) -> str:
        return rename_by_prefix(key, self.renames)


CHECKPOINT_799_RENAMES = (
    ("encoder.region_embed.proj.", "region_embed.embed."),
    ("encoder.cls_token", "cls_token"),
    ("encoder.head.", "head_mask."),
)

LAYOUTS = (
    Layout("lightning", "GET's current Lightning training (run.py LitModel, ModelCheckpoint .ckpt)",
           renames=(("model.", ""),), marks=("model.encoder.blocks.", "model.region_embed.")),
    Layout("paper-finetuned", "GET's paper-era fine-tuning (the names finetune/v1_finetune.yaml renames)",
           renames=(("blocks.", "encoder.blocks."), ("fc_norm.", "encoder.norm."), ("region_embed.proj.", "region_embed.embed."),
                    ("head.", "head_exp.head."), *CHECKPOINT_799_RENAMES),
           marks=("blocks.", "fc_norm.", "region_embed.proj.")),
    Layout("checkpoint-799", "GET's MAE-era pretraining (utils.save_model; the released checkpoint-799.pth)",
           renames=CHECKPOINT_799_RENAMES, marks=("encoder.region_embed.", "encoder.cls_token", "encoder.head.")),
    Layout("get-yeast", "GET's GETRegionFinetune names (also what get-yeast writes: merged_model.safetensors)",
           renames=(), marks=("encoder.blocks.", "region_embed.embed.")),
)
LAYOUT_NAMES = tuple(layout.name for layout in LAYOUTS)
PEFT_PREFIX = "base_model.model."


def rename_by_prefix(key: str, renames: tuple[tuple[str, str | None], ...]) -> str | None:
    for old, new in renames:
        if key.startswith(old):
            return None if new is None else new + key[len(old):]
    return key


def detect_layout(names: list[str], source: str) -> Layout | None:
    """The first layout (table order) one of whose marks starts some name; None when none does.
    Paper-era marks (blocks., fc_norm., region_embed.proj.) never start a checkpoint-799 name, so
    their order does not matter; Lightning's `model.` comes first and wraps any of the others."""
    if any(n.startswith(PEFT_PREFIX) for n in names):
        raise UserError(f"{source}: holds peft LoRA names ({PEFT_PREFIX}...): a get-yeast LoRA training checkpoint, whose "
                        "adapters would be lost; start from the merged_model.safetensors of that run instead")
    for layout in LAYOUTS:
        if any(n.startswith(mark) for n in names for mark in layout.marks):
            return layout
    return None


def parse_renames(value: Any, source: str = "pretrained.renames") -> tuple[tuple[str, str | None], ...]:
    """The user's rename table, checked once: a list of [from_prefix, to_prefix] pairs or a mapping
    {from_prefix: to_prefix} (GET's rename_config style). to_prefix '' strips the prefix; null drops
    the tensors (reported as skipped). Returns ((from, to), ...) in the given order."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = []
        for i, item in enumerate(value):
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise UserError(f"{source}[{i}]: expected a pair [from_prefix, to_prefix], got {item!r}; e.g. "
                                "renames: [[backbone.blocks., encoder.blocks.], [backbone.embed., region_embed.embed.]]")
            pairs.append(tuple(item))
    else:
        raise UserError(f"{source}: expected a list of [from_prefix, to_prefix] pairs or a mapping from_prefix: to_prefix, "
                        f"got {type(value).__name__} {value!r}")
    seen = set()
    for i, (old, new) in enumerate(pairs):
        where = f"{source}[{i}]" if not isinstance(value, Mapping) else f"{source}.{old}"
        if not isinstance(old, str) or not old:
            raise UserError(f"{where}: from_prefix must be non-empty text, got {old!r}")
        if new is not None and not isinstance(new, str):
            raise UserError(f"{where}: to_prefix must be text ('' strips the prefix) or null (drop those tensors), got {new!r}")
        if old in seen:
            raise UserError(f"{where}: from_prefix {old!r} is given twice; keep one rule per prefix")
        seen.add(old)
    return tuple(pairs)


@dataclass
class Mapped:
    """The file's tensors under our names, and what was done to get there (for the load report)."""

    tensors: dict
    layout: Layout | None  # None: no known layout detected (names used as they are)
    renamed: dict[str, str] = field(default_factory=dict)  # file name -> our name (changed only)
    dropped: dict[str, str] = field(default_factory=dict)  # file name -> reason (user table's null)
    user_renames: tuple = ()

    @property
    def layout_name(self) -> str:
        name = self.layout.name if self.layout else "unknown (no GET layout detected; names used as they are)"
        return f"pretrained.renames, then {name}" if self.user_renames else name

    def describe(self) -> str:
        """'ℹ checkpoint layout: ...' plus one line per rename rule that was used, with its count."""
        lines = [f"ℹ checkpoint layout: {self.layout_name}"
                 + (f" - {self.layout.written_by}" if self.layout else "")]
        rules = list(self.user_renames) + (list(self.layout.renames) if self.layout else [])
        counts: dict[tuple, int] = {}
        for src in list(self.renamed) + list(self.dropped):
            rule = next((r for r in rules if src.startswith(r[0])), None)
            if rule is not None:
                counts[rule] = counts.get(rule, 0) + 1
        for (old, new), n in counts.items():
            target = "(dropped)" if new is None else f"{new}*" if new else "(prefix removed)"
            lines.append(f"    {old + '*':<28} -> {target:<24} {n} tensor{'s' if n > 1 else ''}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"layout": self.layout.name if self.layout else "unknown", "user_renames": [list(r) for r in self.user_renames],
                "renamed": self.renamed, "dropped": self.dropped}


def map_to_get_yeast(tensors: Mapping, source: str, user_renames: tuple = ()) -> Mapped:
    """Rename a checkpoint's tensors onto get-yeast's names: the user's table first, then the detected layout."""
    renamed, dropped, stage = {}, {}, {}
    for key, value in tensors.items():
        new = rename_by_prefix(key, user_renames)
        if new is None:
            dropped[key] = "dropped by pretrained.renames (mapped to null)"
        else:
            stage[key] = (new, value)
    layout = detect_layout([new for new, _ in stage.values()], source)
    inner = None
    if layout is not None and layout.name == "lightning":  # the LightningModule wraps some GET model
        inner = detect_layout([layout.rename(new) for new, _ in stage.values()], source)
        inner = None if inner is None or inner.name in ("lightning", "get-yeast") else inner
    out: dict = {}
    for key, (new, value) in stage.items():
        final = layout.rename(new) if layout else new
        final = inner.rename(final) if inner else final
        if final in out:
            raise UserError(f"{source}: two tensors map to {final!r} (one is {key!r}); fix pretrained.renames so each "
                            "name maps to one target")
        if final != key:
            renamed[key] = final
        out[final] = value
    if inner is not None:
        layout = Layout(f"lightning+{inner.name}", f"{layout.written_by}, around {inner.written_by}",
                        renames=layout.renames + inner.renames, marks=layout.marks)
    return Mapped(out, layout, renamed, dropped, tuple(user_renames))


def pretrained_coverage(model_keys: list[str], loaded: list[str]) -> dict[str, tuple[int, int]]:
    """{part: (loaded, total)} over the parts a pretrained GET must supply (region_embed, cls_token, encoder)."""
    done = set(loaded)
    out = {}
    for part in PRETRAINED_PARTS:
        keys = [k for k in model_keys if k == part or (part.endswith(".") and k.startswith(part))]
        if keys:
            out[part.rstrip(".")] = (sum(k in done for k in keys), len(keys))
    return out

