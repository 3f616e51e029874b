"""Key mapping, partial loading with its report, freezing strategies."""

import pytest
import torch
from torch import nn

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec, apply_freezing, resolve_strategy
from ftcore.loading import load_partial
from ftcore.mapping import MINDSPORE_RENAMES, KeyMap, Rename, transpose


def test_mindspore_conventions_map_to_torch_names():
    bn, ln, emb = nn.BatchNorm1d(3), nn.LayerNorm(3), nn.Embedding(5, 3)
    model = nn.ModuleDict({"bn": bn, "ln": ln, "emb": emb})
    ms = {
        "bn.gamma": torch.rand(3), "bn.beta": torch.rand(3), "bn.moving_mean": torch.rand(3),
        "bn.moving_variance": torch.rand(3), "ln.gamma": torch.rand(3), "ln.beta": torch.rand(3),
        "emb.embedding_table": torch.rand(5, 3),
    }
    sd, report = KeyMap(renames=MINDSPORE_RENAMES).apply(ms)
    assert report.renamed["bn.moving_variance"] == "bn.running_var"
    rep = load_partial(model, sd, verbose=False)
    assert sorted(rep.loaded) == sorted(sd)
    assert rep.not_in_checkpoint == ["bn.num_batches_tracked"]
    assert torch.equal(bn.running_var, ms["bn.moving_variance"]) and torch.equal(emb.weight, ms["emb.embedding_table"])


def test_gamma_only_renamed_as_last_component():
    sd, _ = KeyMap(renames=MINDSPORE_RENAMES).apply({"gamma_net.w": torch.zeros(1), "x.gamma": torch.zeros(1)})
    assert set(sd) == {"gamma_net.w", "x.weight"}


def test_prefix_regex_transform_skip_and_report():
    src = {"model.enc.0.w": torch.randn(2, 3), "model.dec.w": torch.randn(4), "model.head.w": torch.randn(2, 5)}
    km = KeyMap(
        renames=(Rename.prefix("model."), Rename(r"^enc\.(\d+)\.", r"encoder.layers.\1.")),
        transforms=((r"^head\.", transpose),),
        skip=((r"^model\.dec\.", "pretraining decoder"),),
    )
    sd, rep = km.apply(src)
    assert set(sd) == {"encoder.layers.0.w", "head.w"}
    assert sd["head.w"].shape == (5, 2) and torch.equal(sd["head.w"], src["model.head.w"].t())
    assert rep.skipped == {"model.dec.w": "pretraining decoder"} and rep.transformed == ["head.w"]


def test_mapping_collision_is_an_error():
    with pytest.raises(ValueError, match="two checkpoint keys"):
        KeyMap(renames=(Rename(r"^(a|b)\.", "c."),)).apply({"a.w": torch.zeros(1), "b.w": torch.zeros(1)})


class Bulk(nn.Module):
    def __init__(self, n_out):
        super().__init__()
        self.gnn = nn.Linear(4, 4)
        self.feature_projection = nn.Linear(4, 8)
        self.transformer = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 3)
        self.output_projection = nn.Linear(8, n_out)


class Spatial(Bulk):
    def __init__(self, n_out):
        super().__init__(n_out)
        self.transformer = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
        self.pos_encoding = nn.Linear(2, 8)


def test_partial_load_report_counts_and_values(capsys):
    bulk, spatial = Bulk(7), Spatial(11)
    rep = load_partial(spatial, bulk.state_dict(), source="bulk", target="model")
    layer_keys = [k for k in bulk.state_dict() if k.startswith("transformer.layers.2.")]
    assert sorted(rep.not_in_model) == sorted(layer_keys)
    assert {k for k, _, _ in rep.shape_mismatch} == {"output_projection.weight", "output_projection.bias"}
    assert ("output_projection.weight", (11, 8), (7, 8)) in rep.shape_mismatch
    assert set(rep.not_in_checkpoint) == {"pos_encoding.weight", "pos_encoding.bias"}
    assert torch.equal(spatial.gnn.weight, bulk.gnn.weight)
    assert not torch.equal(spatial.output_projection.bias[:7], bulk.output_projection.bias)
    out = capsys.readouterr().out
    assert f"Successfully loaded {len(rep.loaded)} weight layers from bulk" in out
    assert "output_projection.weight: model (11, 8) vs bulk (7, 8)" in out
    assert f"Skipped {len(layer_keys)} layers not present in model" in out
    assert len(rep.loaded) + len(rep.shape_mismatch) + len(rep.not_in_model) == len(bulk.state_dict())


def test_strict_load_fails_and_leaves_model_untouched():
    bulk, spatial = Bulk(7), Spatial(11)
    before = spatial.gnn.weight.clone()
    with pytest.raises(UserError, match="strict loading"):
        load_partial(spatial, bulk.state_dict(), strict=True, verbose=False)
    assert torch.equal(spatial.gnn.weight, before)


def test_skip_patterns_in_load():
    bulk, spatial = Bulk(7), Bulk(7)
    rep = load_partial(spatial, bulk.state_dict(), skip=[(r"^gnn\.", "re-initialised")], verbose=False)
    assert set(rep.skipped) == {"gnn.weight", "gnn.bias"} and not torch.equal(spatial.gnn.weight, bulk.gnn.weight)


STRATEGIES = {
    "full": FreezeSpec(),
    "frozen_backbone": FreezeSpec(frozen=(r"^gnn\.", r"^feature_projection\.")),
    "frozen_decoder": FreezeSpec(frozen=(r"^gnn\.", r"^transformer\.")),
}


@pytest.mark.parametrize(
    "name, trainable_modules",
    [
        ("full", {"gnn", "feature_projection", "transformer", "output_projection"}),
        ("frozen_backbone", {"transformer", "output_projection"}),
        ("frozen_decoder", {"feature_projection", "output_projection"}),
    ],
)
def test_freezing_strategies(name, trainable_modules):
    model = Bulk(3)
    rep = apply_freezing(model, resolve_strategy(name, STRATEGIES), verbose=False)
    got = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert got == trainable_modules
    assert rep.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert rep.total == sum(p.numel() for p in model.parameters())


def test_trainable_patterns_and_user_overrides():
    model = Bulk(3)
    spec = FreezeSpec(trainable=(r"transformer", r"output_projection"))
    spec = spec.with_overrides(include=[r"^gnn\.bias$"], exclude=[r"transformer\.layers\.0\."])
    apply_freezing(model, spec, verbose=False)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "gnn.bias" in names and "gnn.weight" not in names
    assert not any(n.startswith("transformer.layers.0.") for n in names)
    assert any(n.startswith("transformer.layers.1.") for n in names)


def test_nothing_trainable_is_an_error():
    with pytest.raises(UserError, match="No trainable parameters!"):
        apply_freezing(Bulk(3), FreezeSpec(trainable=(r"^nothing$",)), verbose=False)


def test_unknown_strategy_lists_allowed():
    with pytest.raises(UserError, match="full, frozen_backbone, frozen_decoder"):
        resolve_strategy("frozen_everything", STRATEGIES)
