"""The three REAL CellFM layouts (written by real MindSpore, tests/fixtures/make_layout_fixtures.py):
convert with a per-entry JSON report, the two masking forms against MindSpore's own outputs, and a
CLI training run per layout after which the pretrained backbone equals the file (through the mapping).

- cellfm_annotation.ckpt: the annotation tutorial's Net(Backbone), 4 layers, no zero_emb/decoders;
- cellfm_pretrain_st.ckpt: the pretraining model with ST_emb / ST_enc.*, 4 layers;
- cellfm_modelcheckpoint.ckpt: a ModelCheckpoint training file (weights + moment1/moment2 + counters).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ftcore.checkpoint import read_state_dict

from cellfm_ft.cli import main
from cellfm_ft.data import collate
from cellfm_ft.model import CellFMClassifier, config_from_state_dict, make_config
from cellfm_ft.train import load_cellfm_weights

FIXTURES = Path(__file__).parent / "fixtures"
ATOL, RTOL = 2e-5, 1e-4
LAYOUTS = ("cellfm_annotation.ckpt", "cellfm_pretrain_st.ckpt", "cellfm_modelcheckpoint.ckpt")
COUNTERS = {"global_step", "learning_rate", "beta1_power", "beta2_power", "epoch_num", "step_num"}


def _entries(name: str) -> list[str]:
    return json.loads((FIXTURES / "cellfm_layouts.json").read_text())["files"][name]["entries"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """name -> the JSON report of `cellfm-ft convert` (CLI) on that layout."""
    root = tmp_path_factory.mktemp("convert")
    reports = {}
    for name in LAYOUTS:
        out = root / name.replace(".ckpt", ".safetensors")
        assert main(["convert", str(FIXTURES / name), "--output", str(out), "--config", "tiny",
                     "--report", str(root / f"{name}.json")]) == 0
        reports[name] = json.loads((root / f"{name}.json").read_text())
        reports[name]["_safetensors"] = str(out)
    return reports


@pytest.mark.parametrize("name", LAYOUTS)
def test_convert_accounts_for_every_entry_as_a_json_object(converted, name):
    report = converted[name]
    entries = report["entries"]
    file_entries = _entries(name)
    assert set(file_entries) <= set(entries)  # every entry of the file is accounted for
    assert all(isinstance(e, dict) and e["status"] in ("loaded", "skipped", "missing") for e in entries.values())
    assert all(e["reason"] for e in entries.values() if e["status"] != "loaded")
    counts = report["counts"]
    assert counts == {s: sum(e["status"] == s for e in entries.values()) for s in ("loaded", "skipped", "missing")}
    assert counts["loaded"] + counts["skipped"] == len(file_entries)
    # What was loaded is the file's tensor, under our name.
    raw = read_state_dict(FIXTURES / name)
    sd = read_state_dict(report["_safetensors"])
    for key, e in entries.items():
        if e["status"] == "loaded":
            torch.testing.assert_close(sd[e["as"]], raw[key].float(), rtol=0, atol=0)


def test_annotation_tutorial_checkpoint_reports_missing_decoders(converted, capsys):
    report = converted["cellfm_annotation.ckpt"]
    missing = {k for k, e in report["entries"].items() if e["status"] == "missing"}
    assert missing == {"extractor.zero_emb", "extractor.value_dec.w1.weight", "extractor.value_dec.w2.weight",
                       "extractor.cellwise_dec.map.weight"}
    assert report["counts"] == {"loaded": 95, "skipped": 0, "missing": 4}
    assert "annotation tutorial" in report["layout"] and report["config"]["decoders"] is False
    assert report["config"]["mask_layers"] == "all" and report["config"]["enc_nlayers"] == 4
    head = {e["as"] for e in report["entries"].values() if e.get("as", "").startswith("cls.")}
    assert {"cls.cluster_emb", "cls.classifier.weight"} <= head and any(k.startswith("cls.query_layer.1.") for k in head)


def test_pretraining_checkpoint_skips_the_spatial_entries(converted):
    report = converted["cellfm_pretrain_st.ckpt"]
    skipped = {k: e["reason"] for k, e in report["entries"].items() if e["status"] == "skipped"}
    assert set(skipped) == {"ST_emb", "ST_enc.a", "ST_enc.w1.weight", "ST_enc.w3.weight", "ST_enc.table.weight"}
    assert all("spatial" in why for why in skipped.values())
    assert report["counts"] == {"loaded": 59, "skipped": 5, "missing": 0}
    assert report["config"]["decoders"] is True and report["config"]["mask_layers"] == "upper"


def test_modelcheckpoint_file_skips_optimizer_state_and_counters(converted):
    report = converted["cellfm_modelcheckpoint.ckpt"]
    entries = report["entries"]
    skipped = {k: e["reason"] for k, e in entries.items() if e["status"] == "skipped"}
    moments = {k for k in skipped if re.match(r"moment[12]\.", k)}
    loaded = {k for k, e in entries.items() if e["status"] == "loaded"}
    assert set(skipped) == moments | COUNTERS
    assert {k.split(".", 1)[1] for k in moments} == loaded  # one moment pair per weight
    assert all(skipped[k] == "optimizer state, not weights" for k in moments)
    assert all(skipped[k] == "training counter saved beside the weights" for k in COUNTERS)
    assert report["counts"] == {"loaded": 35, "skipped": 76, "missing": 0}


# ------------------------------------------------------------------- masking by depth
def _model_for(name: str, mask_layers: str | None = None) -> CellFMClassifier | None:
    sd, _ = load_cellfm_weights(str(FIXTURES / name))
    cfg = config_from_state_dict(sd, "tiny")
    cfg.enc_dropout = 0.0
    if mask_layers:
        cfg.mask_layers = mask_layers
    if "cls.cluster_emb" in sd:
        cfg.num_cls = sd["cls.cluster_emb"].shape[0]
        model = CellFMClassifier(cfg)
        model.load_state_dict(sd, strict=True)
        return model.eval()
    from cellfm_ft.model import CellFM

    model = CellFM(cfg)
    model.load_state_dict({k.removeprefix("extractor."): v for k, v in sd.items()}, strict=True)
    return model.eval()


def _io(name: str) -> dict:
    return dict(np.load(FIXTURES / name.replace(".ckpt", "_io.npz")))


def _outputs(model, io) -> dict:
    e, g, z = (torch.from_numpy(io[k]) for k in ("expr", "gene", "zero_idx"))
    with torch.no_grad():
        if isinstance(model, CellFMClassifier):
            tokens = model.extractor(e, g, z)
            l1, l2 = model.cls(tokens, z)
            return {"tokens": tokens, "logits1": l1, "logits2": l2}
        tokens = model(e, g, z)
        gw, cw = model.decode(tokens, g)
        return {"tokens": tokens, "gw_pred": gw, "cw_pred": cw}


def _close(ours, ref, mask=None) -> bool:
    ours = ours.numpy()
    if mask is not None:
        ours, ref = ours[mask], ref[mask]
    return np.allclose(ours, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name, auto, outputs", [
    ("cellfm_annotation.ckpt", "all", ("tokens", "logits1", "logits2")),
    ("cellfm_pretrain_st.ckpt", "upper", ("tokens", "gw_pred", "cw_pred")),
])
def test_each_layout_is_read_in_its_own_masking_form_and_matches_mindspore(name, auto, outputs):
    """4 layers: the checkpoint's own form reproduces MindSpore; the other form does not."""
    io = _io(name)
    model = _model_for(name)
    assert model.cfg.mask_layers == auto and model.cfg.enc_nlayers == 4
    ours = _outputs(model, io)
    real = io["zero_idx"].astype(bool)
    for key in outputs:
        mask = real if key == "tokens" else None
        assert _close(ours[key], io[key], mask), key
        assert np.abs(io[key]).max() > 0.1
    other = _outputs(_model_for(name, "upper" if auto == "all" else "all"), io)
    assert not _close(other["tokens"], io["tokens"], real)  # at 4 layers the two forms differ


def test_the_two_masking_forms_agree_at_two_layers():
    torch.manual_seed(0)
    cfg = make_config("tiny", n_genes=40, num_cls=3, enc_dropout=0.0, enc_nlayers=2)
    model = CellFMClassifier(cfg).eval()
    rng = np.random.default_rng(0)
    b = collate([(rng.choice(np.arange(1, 41), n, replace=False), rng.gamma(2, 1, n).astype(np.float32), 0)
                 for n in (9, 4, 2)])
    with torch.no_grad():
        model.extractor.cfg.mask_layers = "all"
        a = model.extractor(b["expr"], b["gene"], b["zero_idx"])
        model.extractor.cfg.mask_layers = "upper"
        u = model.extractor(b["expr"], b["gene"], b["zero_idx"])
    real = b["zero_idx"].bool()
    torch.testing.assert_close(a[real], u[real], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------- a CLI training run per layout
@pytest.fixture(scope="module")
def runs(cellfm_inputs, train_argv, tmp_path_factory) -> dict:
    """name -> output dir of `cellfm-ft train --checkpoint <layout> --strategy cls_only` (backbone frozen)."""
    root = tmp_path_factory.mktemp("layout_runs")
    out = {}
    for name in LAYOUTS:
        inputs = {**cellfm_inputs, "ckpt": FIXTURES / name}
        run = root / name.replace(".ckpt", "")
        assert main(train_argv(inputs, run, "--strategy", "cls_only", "--max-steps", "3", "--epochs", "1")) == 0
        out[name] = run
    return out


@pytest.mark.parametrize("name", LAYOUTS)
def test_after_training_the_pretrained_backbone_equals_the_file(runs, name):
    res = json.loads((runs[name] / "training_results.json").read_text())
    sd = torch.load(runs[name] / "best_model.pth", weights_only=True)["model"]
    raw = read_state_dict(FIXTURES / name)
    mapped, mapping = load_cellfm_weights(str(FIXTURES / name))
    loaded = set(res["load_report"]["loaded"])
    backbone = {k for k in sd if k.startswith("extractor.") and k != "extractor.gene_emb"}
    assert backbone <= loaded  # every backbone tensor the model has came from the file
    for source, target in {**{k: k for k in raw}, **mapping["renamed"]}.items():
        if target in backbone:
            torch.testing.assert_close(sd[target], raw[source].float(), rtol=0, atol=0, msg=target)
    assert sd["extractor.gene_emb"].shape[0] >= 65  # a fresh row for each of the 64 data genes (+ pad)
    has_decoders = name != "cellfm_annotation.ckpt"
    assert any(k.startswith("extractor.value_dec.") for k in sd) == has_decoders
    assert res["mask_layers"] == ("upper" if has_decoders else "all")


def test_annotation_checkpoint_head_loads_where_its_shape_fits(runs):
    res = json.loads((runs["cellfm_annotation.ckpt"] / "training_results.json").read_text())
    report = res["load_report"]
    # 6 cell types here, 5 in the file: cluster_emb does not fit, the rest of the tutorial head does.
    assert [m["key"] for m in report["shape_mismatch"]] == ["cls.cluster_emb"]
    assert "cls.classifier.weight" in report["loaded"]


# ------------------------------------------------------------------- the mlp head
def test_mlp_head_trains_with_the_reconstruction_term(cellfm_inputs, train_argv, tmp_path):
    inputs = {**cellfm_inputs, "ckpt": FIXTURES / "cellfm_pretrain_st.ckpt"}
    out = tmp_path / "mlp"
    assert main(train_argv(inputs, out, "--head", "mlp", "--max-steps", "3", "--epochs", "1")) == 0
    res = json.loads((out / "training_results.json").read_text())
    assert res["head"] == "mlp"
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["train_recon_loss"] > 0 and history[-1]["train_cls_loss"] > 0
    best = torch.load(out / "best_model.pth", weights_only=True)
    assert best["model"]["cls.0.weight"].shape == (128, 32) and "cls.1.running_mean" in best["model"]
    assert best["model"]["cls.3.weight"].shape == (len(res["labels"]), 128)
    pred = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(out / "best_model.pth"), "--data", str(cellfm_inputs["data"]),
                 "--output", str(pred)]) == 0


def test_mlp_head_refuses_a_checkpoint_without_decoders(cellfm_inputs, train_argv, tmp_path, capsys):
    inputs = {**cellfm_inputs, "ckpt": FIXTURES / "cellfm_annotation.ckpt"}
    assert main(train_argv(inputs, tmp_path / "a", "--head", "mlp", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "needs the pretraining decoders" in err and "--recon-weight 0" in err
    assert not (tmp_path / "a").exists()
    assert main(train_argv(inputs, tmp_path / "b", "--head", "mlp", "--recon-weight", "0", "--max-steps", "1")) == 0


# ------------------------------------------------------------------- frozen but never loaded
def test_a_frozen_tensor_the_checkpoint_lacks_is_refused(converted, cellfm_inputs, train_argv, tmp_path, capsys):
    from safetensors.torch import save_file

    sd = read_state_dict(converted["cellfm_pretrain_st.ckpt"]["_safetensors"])
    del sd["extractor.value_enc.value_enc.w1.weight"]
    ckpt = tmp_path / "partial.safetensors"
    save_file(sd, str(ckpt))
    inputs = {**cellfm_inputs, "ckpt": ckpt}
    assert main(train_argv(inputs, tmp_path / "a", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "value_enc" in err and "--allow-unloaded-frozen" in err
    assert main(train_argv(inputs, tmp_path / "b", "--max-steps", "1", "--allow-unloaded-frozen")) == 0


# ------------------------------------------------------------------- vocabulary and splits
def test_checkpoint_vocab_restricts_to_the_checkpoints_genes(cellfm_inputs, train_argv, tmp_path, capsys):
    assert main(train_argv(cellfm_inputs, tmp_path / "r", "--checkpoint-vocab", "--max-steps", "1")) == 0
    res = json.loads((tmp_path / "r" / "training_results.json").read_text())
    vocab = set(cellfm_inputs["vocab"].read_text().split())
    assert res["n_genes"] == len(vocab & set(cellfm_inputs["adata"].var_names)) == 64 - res["genes_absent_from_vocab"]
    assert res["genes_absent_from_vocab"] > 0 and res["vocabulary"] == "restricted to a model vocabulary"
    inputs = {**cellfm_inputs, "ckpt": FIXTURES / "cellfm_annotation.ckpt"}  # no .genes.txt beside it
    capsys.readouterr()
    assert main(train_argv(inputs, tmp_path / "x", "--checkpoint-vocab", "--max-steps", "1")) == 2
    assert "--checkpoint-vocab reads the checkpoint's gene list" in capsys.readouterr().err


def test_validation_donors_are_disjoint_from_training_and_test(trained, cellfm_inputs):
    split = json.loads((trained / "split.json").read_text())
    donors = dict(zip(cellfm_inputs["adata"].obs_names, cellfm_inputs["adata"].obs["donor"].astype(str)))
    sets = {part: {donors[c] for c in split[part]} for part in ("train", "val", "test")}
    assert sets["test"] == {"D2"} and len(sets["val"]) == 1 and sets["train"]
    assert not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"]) and not (sets["train"] & sets["test"])
    res = json.loads((trained / "training_results.json").read_text())
    assert res["n_val_cells"] == len(split["val"]) and "validation donors" in res["split"]
    assert (trained / "val.h5ad").exists()


def test_val_donors_flag_and_random_validation(cellfm_inputs, train_argv, tmp_path):
    assert main(train_argv(cellfm_inputs, tmp_path / "d", "--test-donors", "D1", "--val-donors", "D3",
                           "--max-steps", "1")) == 0
    split = json.loads((tmp_path / "d" / "split.json").read_text())
    donors = dict(zip(cellfm_inputs["adata"].obs_names, cellfm_inputs["adata"].obs["donor"].astype(str)))
    assert {donors[c] for c in split["val"]} == {"D3"} and {donors[c] for c in split["test"]} == {"D1"}
    argv = [a for a in train_argv(cellfm_inputs, tmp_path / "c", "--val-fraction", "0.25", "--max-steps", "1")]
    i = argv.index("--donor-key")
    del argv[i:i + 2]  # no donors: random cells per label
    assert main(argv) == 0
    split = json.loads((tmp_path / "c" / "split.json").read_text())
    n_train = len(split["train"]) + len(split["val"])
    assert abs(len(split["val"]) - 0.25 * n_train) <= 6 and not set(split["val"]) & set(split["test"])
