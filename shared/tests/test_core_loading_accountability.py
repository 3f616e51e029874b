"""Loading with accountability: the per-module report, and frozen tensors that no checkpoint supplied."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec, apply_freezing, canonical_name
from ftcore.loading import load_partial


def region_model() -> nn.Module:
    m = nn.ModuleDict({"region_embed": nn.Linear(3, 4),
                       "encoder": nn.ModuleDict({"blocks": nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)),
                                                 "norm": nn.LayerNorm(4)}),
                       "head_exp": nn.Linear(4, 1)})
    m.register_parameter("cls_token", nn.Parameter(torch.randn(1, 1, 4)))
    return m


BACKBONE = FreezeSpec(frozen=(r"^region_embed\.", r"^encoder\.", r"^cls_token$"))


def mae_era_file(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder under its own names, region_embed and cls_token under names the model does not have."""
    sd = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k.startswith("encoder.")}
    sd["encoder.region_embed.proj.weight"] = torch.randn(4, 3)
    sd["encoder.region_embed.proj.bias"] = torch.randn(4)
    sd["encoder.cls_token"] = torch.randn(1, 1, 4)
    return sd


def test_report_groups_by_module_and_never_hides_a_missing_part(capsys):
    model = region_model()
    report = load_partial(model, mae_era_file(model), source="GET checkpoint", target="model")
    assert report.modules() == {"cls_token": (0, 1), "region_embed": (0, 2), "encoder": (6, 6), "head_exp": (0, 2)}
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "⚠ Successfully loaded 6 weight layers from GET checkpoint, of 11 model tensors"
    assert "region_embed 0/2 ⚠" in out and "cls_token 0/1 ⚠" in out and "encoder 6/6," in out
    assert report.to_dict()["modules"]["region_embed"] == {"loaded": 0, "total": 2}


def test_partly_loaded_module_names_its_missing_parts(capsys):
    model = region_model()
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.norm")}
    load_partial(model, sd)
    out = capsys.readouterr().out
    assert "encoder 4/6 ⚠" in out and "partly loaded: encoder.norm 0/2" in out


def test_complete_load_keeps_the_guides_line(capsys):
    model = region_model()
    load_partial(model, region_model().state_dict(), source="bulk")
    assert capsys.readouterr().out.splitlines()[0] == "✓ Successfully loaded 11 weight layers from bulk"


def test_frozen_but_unloaded_is_refused_naming_the_modules():
    model = region_model()
    report = load_partial(model, mae_era_file(model), verbose=False)
    with pytest.raises(UserError) as err:
        apply_freezing(model, BACKBONE, pretrained=report, verbose=False)
    msg = str(err.value)
    assert "3 frozen tensors" in msg and "region_embed (2: region_embed.weight, region_embed.bias)" in msg
    assert "cls_token (1: cls_token)" in msg and "--allow-unloaded-frozen" in msg and "\n" not in msg
    assert "encoder" not in msg.split("random init on purpose")[0].split(":", 1)[1].split(";")[0]  # encoder did load


def test_frozen_when_nothing_was_loaded_is_refused():
    with pytest.raises(UserError, match="no pretrained checkpoint was loaded"):
        apply_freezing(region_model(), BACKBONE, pretrained=None, verbose=False)


def test_opt_out_warns_and_freezes(capsys):
    model = region_model()
    apply_freezing(model, BACKBONE, pretrained=None, allow_unloaded_frozen=True)
    assert "⚠ 9 frozen tensors would stay at their random initialisation" in capsys.readouterr().out
    assert not model.cls_token.requires_grad and model.head_exp.weight.requires_grad


def test_loaded_and_fresh_tensors_may_be_frozen_skipped_ones_not():
    model = region_model()
    sd = {k: v for k, v in region_model().state_dict().items() if not k.startswith("head_exp")}
    report = load_partial(model, sd, skip=((r"^cls_token$", "the user's rename table drops it"),), verbose=False)
    # skipped on purpose still means random init: freezing it needs it declared fresh
    with pytest.raises(UserError, match="cls_token was skipped: the user's rename table drops it"):
        apply_freezing(model, BACKBONE, pretrained=report, verbose=False)
    apply_freezing(model, BACKBONE, pretrained=report, fresh=(r"^cls_token$",), verbose=False)
    # head_exp never loaded: freezing it needs it declared fresh
    spec = FreezeSpec(frozen=(r"^head_exp\.", r"^encoder\."))
    with pytest.raises(UserError, match="head_exp"):
        apply_freezing(model, spec, pretrained=report, verbose=False)
    apply_freezing(model, spec, pretrained=report, fresh=(r"^head_exp\.",), verbose=False)


def test_without_pretrained_the_check_is_not_made():
    apply_freezing(region_model(), BACKBONE, verbose=False)  # freezing for another reason than a load


def test_peft_names_map_back_to_the_loaded_names():
    assert canonical_name("base_model.model.encoder.blocks.0.base_layer.weight") == "encoder.blocks.0.weight"
    assert canonical_name("base_model.model.head_exp.modules_to_save.default.weight") == "head_exp.weight"
    peft = pytest.importorskip("peft")
    model = region_model()
    report = load_partial(model, {k: v for k, v in model.state_dict().items() if k != "cls_token"}, verbose=False)

    class Wrapper(nn.Module):  # peft needs a forward-bearing module
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner["head_exp"](self.inner["encoder"]["blocks"](self.inner["region_embed"](x)))

    wrapped = peft.get_peft_model(Wrapper(model), peft.LoraConfig(r=2, target_modules=["blocks.0"]))
    with pytest.raises(UserError, match=r"^1 frozen tensors .*: inner \(1: inner.cls_token\);"):
        apply_freezing(wrapped, FreezeSpec(trainable=("lora_",)), pretrained=_prefixed(report, "inner."),
                       verbose=False)


def _prefixed(report, prefix):
    report.loaded = [prefix + k for k in report.loaded]
    return report
