"""The run directory contract (ftcore.rundir) in `get-yeast train`: --output is resumed only by the same
result-shaping settings; other settings are refused before a byte is written; --overwrite starts fresh."""

import csv
import json
import sys
from pathlib import Path

import torch

from get_yeast.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import check_changed_config_refused, read_run_config, run_ok  # noqa: E402


def test_changed_settings_refused_same_resumed_overwrite_starts_fresh(tiny_csv, tmp_path, capsys, train_args):
    out = tmp_path / "run"
    args = train_args(tiny_csv, out, "--from-scratch", "--set", "task.interpret=false")
    run_ok(main, args, capsys)
    saved = read_run_config(out / "run_config.yaml")
    assert saved["training"]["lr"] == 1e-3 and saved["experiment"]["seed"] == 42
    assert saved["data_file"]["path"] == str(tiny_csv.resolve()) and len(saved["data_file"]["sha256"]) == 64
    assert json.loads((out / "run_config.json").read_text())["data"] == str(tiny_csv.resolve())  # kept for evaluate
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == len(json.loads((out / "history.json").read_text())) == 2 and "val_pearson_overall" in rows[0]

    # the seed's bug: a changed lr / seed / split resumed the old run; now refused, nothing touched
    changed = args + ["--set", "training.lr=5e-3", "--seed", "7", "--set", "data.val_fraction=0.3"]
    check_changed_config_refused(main, changed, out, capsys,
                                 ["experiment.seed 42 -> 7", "training.lr 0.001 -> 0.005", "data.val_fraction",
                                  "--output"])
    # other data (same path, other content) is another run too
    data2 = tmp_path / "other.csv"
    lines = tiny_csv.read_text().splitlines()
    data2.write_text("\n".join(lines[:1] + lines[2:] + lines[1:2]) + "\n")  # same rows, other order
    check_changed_config_refused(main, [a.replace(str(tiny_csv), str(data2)) for a in args], out, capsys,
                                 ["data_file.path", "data_file.sha256"])
    # how it runs and what is evaluated afterwards do not shape the trained model: resumed
    text = run_ok(main, args + ["--device", "cpu", "--set", "task.save_predictions=false"], capsys)
    assert f"resuming from {out / 'last.pth'}" in text

    (out / "my_notes.txt").write_text("the user's own file")
    text = run_ok(main, changed + ["--overwrite"], capsys)
    assert "resuming from" not in text and "--overwrite: removed the earlier run" in text
    assert (out / "my_notes.txt").read_text() == "the user's own file"  # only the run's files go
    saved = read_run_config(out / "run_config.yaml")
    assert saved["experiment"]["seed"] == 7 and saved["training"]["lr"] == 5e-3
    last = torch.load(out / "last.pth", weights_only=True)
    assert last["config"]["lr"] == 5e-3 and last["config"]["seed"] == 7
    assert len(json.loads((out / "history.json").read_text())) == 2
