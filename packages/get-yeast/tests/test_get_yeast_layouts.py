"""GET's real checkpoint layouts (fixtures/get_layouts/, written by fixtures/make_get_layouts.py from GET's
names and wrappers) load through `get-yeast train` with the report, 100% of region_embed + cls_token +
encoder, numerically equal to the file; unknown layouts are refused; the user's rename table works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ftcore.errors import UserError
from get_yeast.cli import main
from get_yeast.config import load_model_config, packaged_config
from get_yeast.layouts import parse_renames
from get_yeast.model import GETYeast, load_pretrained

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "get_layouts"
SMALL = ["region_model.embed_dim=8", "region_model.num_heads=2"]  # the fixtures' size (24 features, 2 layers)
SMALL_SETS = [x for kv in SMALL for x in ("--set", f"model.{kv}")]


def _799(name: str) -> str | None:
    """GET's tutorial rename of checkpoint-799 (pretrain_pbmc.ipynb), spelled out independently of layouts.py."""
    if name == "encoder.cls_token":
        return "cls_token"
    if name.startswith("encoder.region_embed.proj."):
        return "region_embed.embed." + name.split(".")[-1]
    if name.startswith(("encoder.head.", "mask_token")):
        return None  # pretraining only
    return name


def _lightning(name: str) -> str | None:
    return name.removeprefix("model.")


def _paper(name: str) -> str | None:
    for old, new in (("blocks.", "encoder.blocks."), ("fc_norm.", "encoder.norm."), ("region_embed.proj.", "region_embed.embed."),
                     ("head.", "head_exp.head.")):
        if name.startswith(old):
            return new + name[len(old):]
    return name


# file -> (detected layout, file name -> our name or None, tensors in the file, loaded, skipped on purpose)
LAYOUTS = {
    "checkpoint-799.pth": ("checkpoint-799", _799, 34, 31, {"mask_token", "head_mask.weight", "head_mask.bias"}),
    "checkpoint-799.numpy1.pth": ("checkpoint-799", _799, 34, 31, {"mask_token", "head_mask.weight", "head_mask.bias"}),
    "lightning.ckpt": ("lightning", _lightning, 33, 33, set()),
    "paper_finetuned.pth": ("paper-finetuned", _paper, 33, 33, set()),
}
PRETRAINED = ("region_embed.", "cls_token", "encoder.")


def file_tensors(name: str) -> dict[str, torch.Tensor]:
    """The fixture's weights under the file's own names (the core's safe reader: omegaconf is not installed here)."""
    from ftcore.checkpoint import read_state_dict

    return read_state_dict(FIXTURES / name)


@pytest.fixture
def small_cfg():
    return load_model_config(packaged_config("yeast_model_tiny.yaml"), SMALL)


def test_fixtures_are_what_the_manifest_says():
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    assert set(manifest) == set(LAYOUTS)
    for name, entry in manifest.items():
        sd = file_tensors(name)
        assert {k: list(v.shape) for k, v in sd.items()} == entry["tensors"], name
        assert len(sd) == LAYOUTS[name][2]
        assert (FIXTURES / name).stat().st_size < 100_000  # tiny


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_loads_every_pretrained_tensor_equal(name, small_cfg):
    layout, rename, n_file, n_loaded, skipped = LAYOUTS[name]
    model = GETYeast(small_cfg, 3)
    report = load_pretrained(model, str(FIXTURES / name), verbose=False)
    assert report.layout["layout"] == layout
    assert len(report.loaded) == n_loaded and set(report.skipped) == skipped and not report.shape_mismatch
    own = model.state_dict()
    pretrained = [k for k in own if k.startswith(PRETRAINED)]
    assert set(pretrained) <= set(report.loaded)  # 100% of region_embed + cls_token + encoder
    checked = 0
    for src, value in file_tensors(name).items():
        ours = rename(src)
        if ours is None:
            continue
        if ours.startswith("head_exp.head."):  # the 2-strand head -> the 1-output head's + strand row
            value = value[:1]
        torch.testing.assert_close(own[ours], value, rtol=0, atol=0)
        checked += 1
    assert checked == n_loaded


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_cli_train_reports_layout_and_keeps_pretrained_weights(name, tiny_csv, tmp_path, capsys, train_args):
    """Through `get-yeast train` WITHOUT --trust-checkpoint: the report names the layout and the modules, and after
    training the frozen pretrained parts in best_model.pth are the file's tensors."""
    layout, rename, *_ = LAYOUTS[name]
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(FIXTURES / name), "--max-steps", "2",
                           "--set", "task.interpret=false", *SMALL_SETS)) == 0
    printed = capsys.readouterr().out
    assert f"checkpoint layout: {layout}" in printed
    assert all(part in printed for part in ("region_embed 2/2", "cls_token 1/1", "encoder 28/28")), printed  # module table
    report = json.loads((out / "load_report.json").read_text())
    assert report["checkpoint_layout"]["layout"] == layout
    best = torch.load(out / "best_model.pth", weights_only=True)["model"]
    base = {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in best.items() if "lora_" not in k}
    for src, value in file_tensors(name).items():
        ours = rename(src)
        if ours is not None and ours.startswith(PRETRAINED):
            torch.testing.assert_close(base[ours], value, rtol=0, atol=0, msg=f"{src} -> {ours}")


def test_own_merged_export_loads_as_get_yeast_layout(tiny_csv, tmp_path, capsys, train_args):
    """The names get-yeast itself writes (merged_model.safetensors) start a second run: all of it loads."""
    first = tmp_path / "first"
    assert main(train_args(tiny_csv, first, "--checkpoint", str(FIXTURES / "checkpoint-799.pth"), "--max-steps", "2",
                           "--set", "task.interpret=false", *SMALL_SETS)) == 0
    merged = first / "merged_model.safetensors"
    second = tmp_path / "second"
    capsys.readouterr()
    assert main(train_args(tiny_csv, second, "--checkpoint", str(merged), "--max-steps", "2",
                           "--set", "task.interpret=false", *SMALL_SETS)) == 0
    assert "checkpoint layout: get-yeast" in capsys.readouterr().out
    from safetensors.torch import load_file

    sd = load_file(str(merged))
    report = json.loads((second / "load_report.json").read_text())
    assert set(report["loaded"]) == set(sd) and not report["not_in_checkpoint"]
    best = torch.load(second / "best_model.pth", weights_only=True)["model"]
    base = {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in best.items() if "lora_" not in k}
    for k, v in sd.items():
        if k.startswith(PRETRAINED):
            torch.testing.assert_close(base[k], v, rtol=0, atol=0)


# --------------------------------------------------------------------------- unknown layouts, user renames
def _save(tmp_path, tensors: dict, name="other.pt") -> Path:
    path = tmp_path / name
    torch.save({"model": tensors}, path)
    return path


def test_unknown_layout_matching_little_is_refused(tmp_path, small_cfg):
    """Names of no GET layout, of which only cls_token fits (what the paper-era file gave before): refused, with the fix."""
    sd = {f"net.{k}": v for k, v in file_tensors("paper_finetuned.pth").items() if k != "cls_token"}
    sd["cls_token"] = file_tensors("paper_finetuned.pth")["cls_token"]
    with pytest.raises(UserError, match=r"no GET layout recognised.*pretrained\.renames") as err:
        load_pretrained(GETYeast(small_cfg, 3), str(_save(tmp_path, sd)), verbose=False)
    assert "region_embed 0/2" in str(err.value) and "encoder 0/28" in str(err.value)


def test_unknown_layout_through_the_cli_is_one_error_line(tmp_path, tiny_csv, capsys, train_args):
    sd = {f"net.{k}": v for k, v in file_tensors("paper_finetuned.pth").items()}
    sd["cls_token"] = sd.pop("net.cls_token")
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(_save(tmp_path, sd)), *SMALL_SETS)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "pretrained.renames" in err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize("table", [
    [["net.", ""]],  # list of pairs: strip the prefix, then the paper-era layout is detected
    {"net.blocks.": "encoder.blocks.", "net.fc_norm.": "encoder.norm.", "net.region_embed.proj.": "region_embed.embed.",
     "net.head.": "head_exp.head."},  # GET's rename_config style mapping, straight onto our names
])
def test_user_rename_table(tmp_path, tiny_csv, capsys, train_args, table):
    src = file_tensors("paper_finetuned.pth")
    sd = {("" if k == "cls_token" else "net.") + k: v for k, v in src.items()}
    sd["net.aux.weight"] = torch.zeros(3)
    cfg = tmp_path / "yeast_training.yaml"
    import yaml

    data = yaml.safe_load(packaged_config("yeast_training.yaml").read_text())
    drop = {"net.aux.": None}  # null: drop those tensors, reported as skipped
    data["pretrained"]["renames"] = dict(drop, **table) if isinstance(table, dict) else [*map(list, drop.items()), *table]
    data["model_config"] = str(packaged_config("yeast_model_tiny.yaml"))
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--config", str(cfg), "--checkpoint", str(_save(tmp_path, sd)), "--max-steps", "1",
                           "--set", "task.interpret=false", *SMALL_SETS)) == 0
    assert "checkpoint layout: pretrained.renames, then" in capsys.readouterr().out
    report = json.loads((out / "load_report.json").read_text())
    assert len(report["loaded"]) == 33 and report["skipped"] == {"net.aux.weight": "dropped by pretrained.renames (mapped to null)"}
    best = torch.load(out / "best_model.pth", weights_only=True)["model"]
    torch.testing.assert_close(best["base_model.model.encoder.blocks.1.mlp.fc2.base_layer.weight"], src["blocks.1.mlp.fc2.weight"])
    torch.testing.assert_close(best["base_model.model.region_embed.embed.weight"], src["region_embed.proj.weight"])


@pytest.mark.parametrize("value, phrase", [
    ("[[net.]]", "pretrained.renames[0]: expected a pair"),
    ("[[net., encoder.], [net., x.]]", "is given twice"),
    ("[['', x.]]", "from_prefix must be non-empty text"),
    ("[[net., 3]]", "to_prefix must be text"),
    ("'net.'", "expected a list of [from_prefix, to_prefix] pairs or a mapping"),
])
def test_bad_rename_table_is_one_error_line(value, phrase, tmp_path, tiny_csv, capsys, train_args):
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(FIXTURES / "paper_finetuned.pth"),
                           "--set", f"pretrained.renames={value}")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and phrase in err, err
    assert not out.exists()


def test_parse_renames_forms():
    assert parse_renames(None) == ()
    assert parse_renames([["a.", "b."], ["c.", None]]) == (("a.", "b."), ("c.", None))
    assert parse_renames({"a.": ""}) == (("a.", ""),)


def test_peft_names_are_refused_with_the_merged_file_named(tmp_path, small_cfg):
    sd = {"base_model.model.encoder.blocks.0.attn.qkv.base_layer.weight": torch.zeros(24, 8)}
    with pytest.raises(UserError, match="merged_model.safetensors"):
        load_pretrained(GETYeast(small_cfg, 3), str(_save(tmp_path, sd)), verbose=False)


def test_old_config_without_the_new_keys_still_loads(tmp_path):
    """A yeast_training.yaml copied before pretrained.renames / pretrained.from_scratch existed keeps working."""
    import yaml

    from get_yeast.config import load_training_config

    data = yaml.safe_load(packaged_config("yeast_training.yaml").read_text())
    del data["pretrained"]["renames"], data["pretrained"]["from_scratch"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg, _ = load_training_config(path)
    assert cfg.pretrained.renames is None and cfg.pretrained.from_scratch is False


def test_frozen_part_missing_from_a_known_layout_is_refused_unless_allowed(tmp_path, tiny_csv, capsys, train_args):
    """A checkpoint-799 file without encoder.cls_token: LoRA would freeze cls_token at random init. The core's
    refusal names it and the opt-out; with --allow-unloaded-frozen the run goes on with a warning."""
    sd = {k: v for k, v in file_tensors("checkpoint-799.pth").items() if k != "encoder.cls_token"}
    path = _save(tmp_path, sd, "checkpoint-799-no-cls.pth")
    out = tmp_path / "run"
    assert main(train_args(tiny_csv, out, "--checkpoint", str(path), *SMALL_SETS)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cls_token" in err and "--allow-unloaded-frozen" in err, err
    assert not any(out.rglob("*"))
    assert main(train_args(tiny_csv, out, "--checkpoint", str(path), "--allow-unloaded-frozen", "--max-steps", "1",
                           "--set", "task.interpret=false", *SMALL_SETS)) == 0
    assert "⚠" in capsys.readouterr().out
