"""The run directory contract (ftcore.rundir) in `state-tx train`: output_dir/name is resumed only by the same
result-shaping settings; other settings are refused before a byte is written; --overwrite starts fresh."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from state_tx.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import check_changed_config_refused, read_run_config, run_ok  # noqa: E402


def test_changed_settings_refused_same_resumed_overwrite_starts_fresh(tiny_toml, make_train_args, tmp_path, capsys):
    args = make_train_args(tiny_toml, tmp_path, steps=6)
    run = tmp_path / "run"
    run_ok(main, args, capsys)
    saved = read_run_config(run / "config.yaml")
    assert saved["training"]["lr"] == 1e-3 and saved["data_files"][0]["path"] == str(tiny_toml)
    assert len(saved["data_files"][0]["sha256"]) == 64  # the split TOML, by content
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["step"]) for r in rows] == [h["step"] for h in json.loads((run / "history.json").read_text())]

    # the seed's bug: a changed lr and seed resumed the old run and rewrote config.yaml; now refused, untouched
    changed = args + ["training.lr=1e-2", "training.train_seed=7"]
    check_changed_config_refused(main, changed, run, capsys,
                                 ["training.lr 0.001 -> 0.01", "training.train_seed 42 -> 7", "name=... or output_dir=..."])
    # where it runs does not shape the result: the same run, resumed
    out = run_ok(main, args + ["training.device=cpu", "data.kwargs.num_workers=0"], capsys)
    assert "resuming from" in out
    assert read_run_config(run / "config.yaml")["training"]["device"] == "cpu"  # the effective config

    # an edited split TOML is other data: refused, naming the file's record
    edited = tmp_path / "edited.toml"
    edited.write_text(tiny_toml.read_text().replace("[fewshot", "# edited\n[fewshot"))
    check_changed_config_refused(main, [a.replace(str(tiny_toml), str(edited)) for a in args], run, capsys,
                                 ["data.kwargs.toml_config_path", "data_files"])

    # --overwrite: the old run's files go, training starts from step 0 with the new settings
    (run / "checkpoints" / "step=999.ckpt").write_bytes(b"stale")
    out = run_ok(main, changed + ["--overwrite"], capsys)
    assert "resuming from" not in out and "--overwrite: removed the earlier run" in out
    assert not (run / "checkpoints" / "step=999.ckpt").exists()
    assert read_run_config(run / "config.yaml")["training"]["lr"] == 1e-2
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["config"]["lr"] == 1e-2 and last["config"]["seed"] == 7 and last["step"] == 6
    assert len(json.loads((run / "history.json").read_text())) == 2  # val_freq 3 over 6 fresh steps


def test_constant_schedule_extends_max_steps_cosine_refuses(tiny_toml, make_train_args, tmp_path, capsys):
    const = ["training.lr_schedule=constant"]
    args = make_train_args(tiny_toml, tmp_path, steps=3, extra=const)
    run_ok(main, args, capsys)
    out = run_ok(main, make_train_args(tiny_toml, tmp_path, steps=6, extra=const), capsys)
    assert "resuming from" in out
    assert torch.load(tmp_path / "run" / "checkpoints" / "final.ckpt", weights_only=True)["step"] == 6
    # under the cosine schedule max_steps sets the decay: another run
    cos = make_train_args(tiny_toml, tmp_path / "cos", steps=3)
    run_ok(main, cos, capsys)
    check_changed_config_refused(main, make_train_args(tiny_toml, tmp_path / "cos", steps=6), tmp_path / "cos" / "run",
                                 capsys, ["training.max_steps 3 -> 6"])


def test_a_config_yaml_read_back_ignores_its_data_record(trained_run):
    from state_tx.config import load_run_config

    assert "data_files" in read_run_config(trained_run / "config.yaml")
    cfg = load_run_config(config_file=str(trained_run / "config.yaml"))
    assert cfg.training.max_steps == 6
