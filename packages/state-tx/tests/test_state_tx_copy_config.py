"""`state-tx copy-config DIR` writes the templates the workflow edits; copy -> edit -> train works (README)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from state_tx.cli import main
from state_tx.data import read_experiment_toml
from state_tx.config import load_run_config

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import package_tests  # noqa: E402

# this package's tiny sizes ("from conftest import" finds another package's conftest in a whole-repo run)
TINY_MODEL = package_tests("state-tx").TINY_MODEL

NAMES = ("example_training_config.toml", "train_config.yaml")


def test_copy_config_writes_templates_that_parse(tmp_path, capsys):
    assert main(["copy-config", str(tmp_path / "cfg")]) == 0
    for name in NAMES:
        assert (tmp_path / "cfg" / name).is_file() and name in capsys.readouterr().out + name
    exp = read_experiment_toml(tmp_path / "cfg" / "example_training_config.toml")
    assert exp.training == {"replogle": "train"} and exp.zeroshot == {"replogle.jurkat": "test"}
    assert exp.fewshot["replogle.hepg2"]["test"] == ["POLR2A", "RPL3"]
    cfg = load_run_config(config_file=str(tmp_path / "cfg" / "train_config.yaml"))
    assert cfg.model.name == "state_sm" and cfg.data.kwargs.pert_col == "gene" and cfg.training.max_steps == 40000


def test_copy_config_refuses_to_overwrite_an_edit(tmp_path, capsys):
    assert main(["copy-config", str(tmp_path)]) == 0
    (tmp_path / "train_config.yaml").write_text("# my edit\n")
    assert main(["copy-config", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "train_config.yaml").read_text() == "# my edit\n"
    assert main(["copy-config", str(tmp_path), "--overwrite"]) == 0
    assert "state-tx train --config" in (tmp_path / "train_config.yaml").read_text()


def test_copy_edit_train(tmp_path, tiny_h5ad, tiny_perts):
    """The README's path: copy the templates, point them at the data, train with --config."""
    cfg_dir = tmp_path / "configs"
    assert main(["copy-config", str(cfg_dir)]) == 0
    toml = cfg_dir / "example_training_config.toml"
    text = toml.read_text()
    text = text.replace('"/data/replogle/{k562,rpe1,jurkat,hepg2}.h5ad"', f'"{tiny_h5ad}"')
    text = text.replace('"replogle.jurkat" = "test"', "")
    text = text.replace('"replogle.hepg2"', '"replogle.HepG2"')
    text = text.replace('["AARS", "ACTB"]', f'["{tiny_perts[0]}"]').replace('["POLR2A", "RPL3"]', f'["{tiny_perts[1]}"]')
    toml.write_text(text)
    run = yaml.safe_load((cfg_dir / "train_config.yaml").read_text())
    run["data"]["kwargs"]["toml_config_path"] = str(toml)
    run["output_dir"] = str(tmp_path / "results")
    (cfg_dir / "train_config.yaml").write_text(yaml.safe_dump(run))
    over = [o for o in TINY_MODEL if o != "model=state_sm"] + [
        "training.max_steps=2", "training.batch_size=2", "training.val_freq=2", "training.progress=false"]
    assert main(["train", "--config", str(cfg_dir / "train_config.yaml"), *over]) == 0
    assert (tmp_path / "results" / "my_experiment" / "checkpoints" / "final.ckpt").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_templates_are_packaged(name):
    from state_tx.cli import TEMPLATES

    assert TEMPLATES[name].is_file()
