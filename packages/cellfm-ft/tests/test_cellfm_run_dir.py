"""The run directory contract (ftcore.rundir) in `cellfm-ft train`: --output is resumed only by the same
result-shaping settings; other settings are refused before a byte is written; --overwrite starts fresh."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from cellfm_ft.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import check_changed_config_refused, read_run_config, run_ok  # noqa: E402


def test_changed_settings_refused_same_resumed_overwrite_starts_fresh(cellfm_inputs, train_argv, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_argv(cellfm_inputs, out, "--test-donors", "D2")
    run_ok(main, args, capsys)
    saved = read_run_config(out / "run_config.yaml")  # cellfm-ft dumped no run config before
    assert saved["test_donors"] == ["D2"] and saved["seed"] == 0
    assert saved["data_file"]["path"] == str(Path(cellfm_inputs["data"]).resolve())
    assert len(saved["checkpoint_file"]["sha256"]) == 64
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [float(r["val_acc"]) for r in rows] == [h["val_acc"] for h in json.loads((out / "history.json").read_text())]

    # the seed's bug: a changed lr, seed and split resumed the old run; now refused, nothing touched
    lr = saved["lr"]
    changed = train_argv(cellfm_inputs, out, "--test-donors", "D3", "--lr", "0.0123", "--seed", "5")
    check_changed_config_refused(main, changed, out, capsys,
                                 ["test_donors ['D2'] -> ['D3']", f"lr {lr} -> 0.0123", "seed 0 -> 5", "--output"])
    # the device and the yardstick do not shape the trained model: the same run, resumed
    text = run_ok(main, args + ["--device", "cpu", "--baseline"], capsys)
    assert "resuming from" in text

    text = run_ok(main, changed + ["--overwrite"], capsys)
    assert "resuming from" not in text and "--overwrite: removed the earlier run" in text
    assert "split: reusing" not in text  # the old split went with the old run
    split = json.loads((out / "split.json").read_text())
    assert read_run_config(out / "run_config.yaml")["test_donors"] == ["D3"]
    assert "D3" in json.dumps(split) and json.loads((out / "training_results.json").read_text())["split"]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["config"]["lr"] == 0.0123 and last["config"]["seed"] == 5
