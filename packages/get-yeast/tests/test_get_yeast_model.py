"""GET-yeast model: shapes, padding, condition sensitivity, checkpoint layout/loading, LoRA, merge."""

import dataclasses

import pytest
import torch

from ftcore.errors import UserError
from ftcore.freezing import apply_freezing
from get_yeast.adapt import apply_lora, merged_state_dict, trainable_spec
from get_yeast.config import LoraConfig
from get_yeast.data import DataConfig, YeastDataset, collate, drug_vocabulary, validate_frame
from get_yeast.model import GETYeast, RegionModelConfig, YeastModelConfig, load_pretrained


def batch_of(frame, model_cfg, n=4):
    table = validate_frame(frame.copy(), DataConfig(), model_cfg.condition)
    vocab = drug_vocabulary(table)
    ds = YeastDataset(table, model_cfg.condition, vocab)
    return collate([ds[i] for i in range(n)]), vocab


def test_forward_shape_and_nonnegative(tiny_frame, tiny_model_cfg):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg)
    model = GETYeast(tiny_model_cfg, len(vocab)).eval()
    out = model(batch["region_motif"], batch["conditions"], batch["padding"])
    assert out.shape == (4, 6, 1)
    assert (out >= 0).all()


def test_padding_does_not_change_real_regions(tiny_frame, tiny_model_cfg):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg, n=1)
    model = GETYeast(tiny_model_cfg, len(vocab)).eval()
    alone = model(batch["region_motif"], batch["conditions"], batch["padding"])
    padded_motif = torch.cat([batch["region_motif"], torch.randn(1, 3, 24).abs()], dim=1)
    padding = torch.cat([batch["padding"], torch.ones(1, 3, dtype=torch.bool)], dim=1)
    padded = model(padded_motif, batch["conditions"], padding)
    torch.testing.assert_close(padded[:, :6], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change", ["temperature", "medium", "drug", "od600_missing", "carbon", "nitrogen"])
def test_prediction_changes_with_condition(tiny_frame, tiny_model_cfg, change):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg, n=2)
    model = GETYeast(tiny_model_cfg, len(vocab)).eval()
    base = model(batch["region_motif"], batch["conditions"], batch["padding"])
    cond = {k: v.clone() for k, v in batch["conditions"].items()}
    if change == "temperature":
        cond["numeric"][:, 0] += 0.5  # +12.5 C
    elif change == "medium":
        cond["medium"] = (cond["medium"] + 1) % 3
    elif change == "drug":
        cond["drug"] = (cond["drug"] + 1) % len(vocab)
    elif change in ("carbon", "nitrogen"):  # index 0 = not given
        n = len(getattr(tiny_model_cfg.condition, f"{change}_sources")) + 1
        cond[change] = (cond[change] + 1) % n
    else:  # recorded OD600 vs "not recorded" (the value 0 is NOT the same as missing)
        cond["numeric"][:, 2] = 0.0
        cond["numeric_present"][:, 2] = ~cond["numeric_present"][:, 2]
    other = model(batch["region_motif"], cond, batch["padding"])
    assert (other - base).abs().max() > 1e-4


def test_missing_value_is_not_zero(tiny_model_cfg):
    """A missing pre-culture time uses its unknown embedding, not the encoding of 0 h."""
    model = GETYeast(tiny_model_cfg, 3).eval()
    cond = {"medium": torch.tensor([0]), "drug": torch.tensor([0]), "carbon": torch.tensor([0]),
            "nitrogen": torch.tensor([0]), "numeric": torch.tensor([[0.4, 0.0, 0.3, 0.0, 0.0]]),
            "numeric_present": torch.tensor([[True, True, True, False, False]])}
    zero_hours = model.condition_encoder(cond)
    cond["numeric_present"] = torch.tensor([[True, False, True, False, False]])
    missing = model.condition_encoder(cond)
    assert not torch.allclose(zero_hours, missing)


def test_condition_blind_model_has_no_condition_parameters(tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, condition=dataclasses.replace(tiny_model_cfg.condition, enabled=False))
    names = [n for n, _ in GETYeast(cfg, 2).named_parameters()]
    assert not any(n.startswith(("condition_encoder", "fusion")) for n in names)


def test_gradients_reach_condition_encoder_and_fusion(tiny_frame, tiny_model_cfg):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg)
    model = GETYeast(tiny_model_cfg, len(vocab))
    model(batch["region_motif"], batch["conditions"], batch["padding"]).sum().backward()
    for prefix in ("condition_encoder.medium_emb", "condition_encoder.numeric_proj", "fusion.net.0", "region_embed"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), prefix


def test_parameter_names_follow_get_region_model():
    """The GET region fine-tuning model's names for a 1-layer model (GETRegionFinetune + GETTransformer)."""
    cfg = YeastModelConfig(region_model=RegionModelConfig(num_features=10, embed_dim=8, num_layers=1, num_heads=2))
    cfg.condition.enabled = False
    got = set(GETYeast(cfg, 2).state_dict())
    block = "encoder.blocks.0."
    expected = {"region_embed.embed.weight", "region_embed.embed.bias", "cls_token", "encoder.norm.weight",
                "encoder.norm.bias", "head_exp.head.weight", "head_exp.head.bias"} | {
        block + k for k in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.q_bias", "attn.v_bias",
                            "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
                            "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")}
    assert got == expected
    assert GETYeast(cfg, 2).state_dict()[block + "attn.qkv.weight"].shape == (24, 8)


def test_released_size_matches_get():
    cfg = RegionModelConfig()
    assert (cfg.num_features, cfg.embed_dim, cfg.num_layers, cfg.num_heads) == (283, 768, 12, 12)


class NotInert:
    """Any class outside the core's allow-list: unpickling it would import and run code."""


def test_checkpoint_reads_without_trust_but_code_pickles_need_it(get_checkpoint, tiny_model_cfg, tmp_path):
    """GET's training-checkpoint objects (argparse.Namespace, numpy scalars) read as inert stand-ins without the
    opt-in (issue 19: the core's safe reading); a pickle of any other class still needs --trust-checkpoint."""
    assert load_pretrained(GETYeast(tiny_model_cfg, 3), str(get_checkpoint), verbose=False).loaded
    other = tmp_path / "with_object.pth"
    torch.save({"model": torch.load(get_checkpoint, weights_only=False)["model"], "extra": NotInert()}, other)
    with pytest.raises(UserError, match="--trust-checkpoint"):
        load_pretrained(GETYeast(tiny_model_cfg, 3), str(other))


def test_checkpoint_loads_with_report(get_checkpoint, tiny_model_cfg, get_layout):
    model = GETYeast(tiny_model_cfg, 3)
    report = load_pretrained(model, str(get_checkpoint), trust_pickle=True)
    sd = get_layout(tiny_model_cfg)
    assert len(report.loaded) == len(sd) - 2  # all but the pretraining-only entries
    assert not report.shape_mismatch
    assert set(report.skipped) == {"mask_token", "head_mask.weight"}
    assert report.not_in_checkpoint and all(k.startswith(("condition_encoder.", "fusion.")) for k in report.not_in_checkpoint)
    own = model.state_dict()
    torch.testing.assert_close(own["encoder.blocks.1.attn.qkv.weight"], sd["encoder.blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(own["head_exp.head.weight"], sd["head_exp.head.weight"][:1])  # the + strand row


def test_head_of_another_size_is_reported_not_loaded(get_checkpoint, tiny_model_cfg):
    cfg = dataclasses.replace(tiny_model_cfg, region_model=dataclasses.replace(tiny_model_cfg.region_model, output_dim=3))
    report = load_pretrained(GETYeast(cfg, 3), str(get_checkpoint), trust_pickle=True)
    assert report.shape_mismatch == [("head_exp.head.weight", (3, 32), (2, 32)), ("head_exp.head.bias", (3,), (2,))]


def test_checkpoint_of_another_model_is_refused(tmp_path, tiny_model_cfg):
    path = tmp_path / "other.pt"
    torch.save({"model": {"backbone.weight": torch.zeros(3, 3)}}, path)
    with pytest.raises(UserError, match="none of its 1 tensors"):
        load_pretrained(GETYeast(tiny_model_cfg, 3), str(path))


def lora_model(cfg, vocab_size=3):
    model = apply_lora(GETYeast(cfg, vocab_size), LoraConfig())
    report = apply_freezing(model, trainable_spec(LoraConfig()), verbose=False)
    return model, report


def test_lora_trainable_set(tiny_model_cfg):
    model, report = lora_model(tiny_model_cfg)
    for name in report.trainable_names:
        assert ("lora_" in name or ".condition_encoder." in name or ".fusion." in name or ".head_exp." in name), name
    frozen = set(report.frozen_names)
    assert any(n.endswith("encoder.blocks.0.attn.qkv.base_layer.weight") for n in frozen)
    assert any(n.endswith("region_embed.embed.weight") for n in frozen)
    wrapped = {n for n, _ in model.named_modules() if n.endswith(("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "head_exp.head"))}
    assert all(hasattr(model.get_submodule(n), "lora_A") for n in wrapped) and len(wrapped) == 2 * 4 + 1


def test_lora_rank_alpha_dropout_come_from_config(tiny_model_cfg):
    model = apply_lora(GETYeast(tiny_model_cfg, 3), LoraConfig(r=4, alpha=12, dropout=0.25, target_modules=["mlp.fc1"]))
    fc1 = model.get_submodule("base_model.model.encoder.blocks.0.mlp.fc1")
    assert fc1.lora_A["default"].weight.shape == (4, 32) and fc1.lora_B["default"].weight.shape == (128, 4)
    assert fc1.scaling["default"] == pytest.approx(12 / 4)
    assert fc1.lora_dropout["default"].p == 0.25
    assert not hasattr(model.get_submodule("base_model.model.encoder.blocks.0.attn.qkv"), "lora_A")  # not targeted


def assert_merged_predicts_the_same(model, cfg, n_vocab, batch):
    """With non-zero LoRA updates, the merged plain GET-yeast weights (strict names) predict what
    the adapted model predicts."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    model.eval()
    merged = GETYeast(cfg, n_vocab).eval()
    merged.load_state_dict(merged_state_dict(model))
    torch.testing.assert_close(merged(batch["region_motif"], batch["conditions"], batch["padding"]),
                               model(batch["region_motif"], batch["conditions"], batch["padding"]), rtol=1e-4, atol=1e-5)


def test_mlp_head_trains_with_the_packaged_lora_targets(tiny_frame, tiny_model_cfg):
    """region_model.head_hidden_dim > 0 (the seed's two-layer head): `head_exp.head` is then an MLP and the
    packaged target list puts adapters on both of its Linears; merging still gives the same predictions."""
    cfg = dataclasses.replace(tiny_model_cfg, region_model=dataclasses.replace(tiny_model_cfg.region_model, head_hidden_dim=16))
    batch, vocab = batch_of(tiny_frame, cfg)
    model = apply_lora(GETYeast(cfg, len(vocab)), LoraConfig())
    assert all(hasattr(model.get_submodule(f"base_model.model.head_exp.head.{i}"), "lora_A") for i in (0, 2))
    assert_merged_predicts_the_same(model, cfg, len(vocab), batch)


def test_lora_on_qkv_takes_part_in_forward(tiny_frame, tiny_model_cfg):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg)
    model, _ = lora_model(tiny_model_cfg, len(vocab))
    model.eval()
    before = model(batch["region_motif"], batch["conditions"], batch["padding"])
    qkv = model.get_submodule("base_model.model.encoder.blocks.0.attn.qkv")
    with torch.no_grad():
        qkv.lora_B["default"].weight.normal_()
    after = model(batch["region_motif"], batch["conditions"], batch["padding"])
    assert (after - before).abs().max() > 1e-4


def test_merged_weights_give_the_same_predictions(tiny_frame, tiny_model_cfg):
    batch, vocab = batch_of(tiny_frame, tiny_model_cfg)
    model, _ = lora_model(tiny_model_cfg, len(vocab))
    assert_merged_predicts_the_same(model, tiny_model_cfg, len(vocab), batch)


def test_unknown_lora_target_is_an_error(tiny_model_cfg):
    with pytest.raises(UserError, match="attn.qvk"):
        apply_lora(GETYeast(tiny_model_cfg, 3), LoraConfig(target_modules=["attn.qvk"]))


def test_condition_dropout_acts_in_training_only(tiny_frame, tiny_model_cfg):
    """condition.dropout / fusion.dropout: random in training, none at evaluation (the demo's regularisation)."""
    cfg = dataclasses.replace(tiny_model_cfg, condition=dataclasses.replace(tiny_model_cfg.condition, dropout=0.5),
                              fusion=dataclasses.replace(tiny_model_cfg.fusion, dropout=0.5))
    batch, vocab = batch_of(tiny_frame, cfg)
    torch.manual_seed(0)
    model = GETYeast(cfg, len(vocab))
    args = (batch["region_motif"], batch["conditions"], batch["padding"])
    assert not torch.equal(model.train()(*args), model(*args))
    torch.testing.assert_close(model.eval()(*args), model(*args), rtol=0, atol=0)
    torch.manual_seed(0)
    plain = GETYeast(dataclasses.replace(cfg, condition=tiny_model_cfg.condition, fusion=tiny_model_cfg.fusion), len(vocab))
    plain.load_state_dict(model.state_dict())  # dropout adds no parameter: the same names and weights
    torch.testing.assert_close(plain.eval()(*args), model(*args))


def test_trained_model_file_is_self_describing_and_earlier_files_load(tmp_path):
    """best_model.pth as get-yeast train writes it (the spec in the ftcore.artefact header: config = model_config +
    lora, data keys = drugs, features, targets, splits) and an earlier version's file (spec in extra only) load to the
    same model and spec; a file of another kind is refused in one line."""
    from pathlib import Path

    from ftcore.artefact import load_model, save_model
    from get_yeast.train import KIND, SPEC_CONFIG, load_trained, spec_header

    old_file = Path(__file__).parents[3] / "tests" / "bad_inputs" / "get-yeast" / "trained_model.pth"
    old = torch.load(old_file, weights_only=True)
    assert "artefact" not in old  # written by the earlier layout: {"model", "extra": {"spec"}}
    spec = old["extra"]["spec"]
    header = spec_header(spec)
    new_file = save_model(tmp_path / "best_model.pth", old["model"], kind=header["kind"], config=header["config"],
                          data_keys=header["data_keys"], extra={"spec": spec}, package="get-yeast")
    mf = load_model(new_file, kind=KIND)
    assert set(mf.config) == set(SPEC_CONFIG) and mf.data_keys["drug_vocab"] == spec["drug_vocab"]
    assert set(mf.versions) == {"get-yeast", "ftcore", "torch"}
    m_old, s_old = load_trained(old_file, torch.device("cpu"))
    m_new, s_new = load_trained(new_file, torch.device("cpu"))
    assert s_old == s_new == spec
    assert all(torch.equal(a, b) for a, b in zip(m_old.state_dict().values(), m_new.state_dict().values()))
    save_model(tmp_path / "other.pth", old["model"], kind="state-tx/model", config={})
    with pytest.raises(UserError, match="other.pth is a state-tx/model model file, not a get-yeast training checkpoint"):
        load_trained(tmp_path / "other.pth", torch.device("cpu"))
