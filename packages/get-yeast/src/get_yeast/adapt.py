"""LoRA adaptation as configuration (peft), the trainable set, and the merged-weights export.

    model = apply_lora(GETYeast(...), cfg.lora)     # peft wraps the targeted Linears; base frozen
    apply_freezing(model, trainable_spec(cfg.lora))  # + condition encoder, fusion and head train
    export_merged(model, "merged_model.safetensors", spec)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec
from get_yeast.config import LoraConfig

# With LoRA: adapters + the new condition modules + the expression head (the yeast head is new
# whenever its size differs from the checkpoint's). Without LoRA: full fine-tuning.
LORA_TRAINABLE = FreezeSpec(trainable=(r"lora_", r"condition_encoder\.", r"fusion\.", r"head_exp\."))
FULL_FINETUNE = FreezeSpec()


def apply_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Wrap `model` with peft LoRA adapters on `cfg.target_modules`: suffixes of module names; a name
    that is a container (`head_exp.head` when region_model.head_hidden_dim > 0 makes it an MLP)
    targets every Linear inside it."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = []
    for target in cfg.target_modules:
        if any(_names(n, target) for n in linears):
            targets.append(target)
            continue
        inside = [n for n in linears if any(_names(n[:i], target) for i in range(len(n)) if n[i] == ".")]
        if not inside:
            raise UserError(f"lora.target_modules: {target!r} names no Linear layer of the model; "
                            f"choose from e.g. attn.qkv, attn.proj, mlp.fc1, mlp.fc2, head_exp.head")
        targets.extend(inside)
    peft_cfg = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, peft_cfg)


def _names(module_name: str, target: str) -> bool:
    """peft's rule: a target names a module when it is the module's full name or a dotted suffix of it."""
    return module_name == target or module_name.endswith("." + target)


def trainable_spec(cfg: LoraConfig) -> FreezeSpec:
    return LORA_TRAINABLE if cfg.enabled else FULL_FINETUNE


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights with every LoRA update folded in, under plain GET-yeast names (peft merge_and_unload)."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def export_merged(model: nn.Module, path: str | Path, spec: dict) -> Path:
    """merged_model.safetensors: merged weights; the model spec (sizes, drug vocabulary) in its metadata."""
    from safetensors.torch import save_file

    from ftcore.io import atomic_path

    spec = dict(spec, lora=None)  # merged: no adapters left
    with atomic_path(path) as tmp:
        save_file(merged_state_dict(model), str(tmp), metadata={"get_yeast_spec": json.dumps(spec)})
    return Path(path)
