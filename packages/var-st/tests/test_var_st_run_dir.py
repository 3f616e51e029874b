"""The run directory contract (ftcore.rundir) in `var-st train`: each stage's directory is resumed only by the
same result-shaping settings; other settings are refused before a byte is written; --overwrite starts fresh."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch

from var_st.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import check_changed_config_refused, read_run_config, run_ok  # noqa: E402


def stage_dir(log_dir: Path, stage: int) -> Path:
    return log_dir / "tiny" / "TWO_STAGE_VAR_ST" / ("stage1_vqvae" if stage == 1 else "stage2_var")


def test_changed_settings_refused_same_resumed_overwrite_starts_fresh(tiny_h5ad, tiny_config, tiny, tmp_path, capsys):
    log_dir = tmp_path / "logs"
    s1 = tiny.train_args(tiny_h5ad, tiny_config, log_dir, stage=1)
    run_ok(main, s1, capsys)
    run_ok(main, tiny.train_args(tiny_h5ad, tiny_config, log_dir, stage=2), capsys)
    for stage in (1, 2):
        saved = read_run_config(stage_dir(log_dir, stage) / "run_config.yaml")
        assert saved["run"]["lr"] and saved["data_file"]["path"] == str(tiny_h5ad.resolve())
        rows = list(csv.DictReader(open(stage_dir(log_dir, stage) / "history.csv")))
        assert len(rows) == len(json.loads((stage_dir(log_dir, stage) / "history.json").read_text()))
    assert len(read_run_config(stage_dir(log_dir, 2) / "run_config.yaml")["stage1_file"]["sha256"]) == 64

    lr = read_run_config(stage_dir(log_dir, 1) / "run_config.yaml")["run"]["lr"]
    # the seed's bug: a changed lr, seed or split resumed the old run; now refused, nothing touched
    check_changed_config_refused(main, s1 + ["--lr", "0.0123", "--seed", "3"], stage_dir(log_dir, 1), capsys,
                                 [f"run.lr {lr} -> 0.0123", "run.seed 0 -> 3", "data.seed 0 -> 3", "--log_dir"])
    check_changed_config_refused(main, s1 + ["--random_split"], stage_dir(log_dir, 1), capsys, ["data.split"])
    check_changed_config_refused(main, tiny.train_args(tiny_h5ad, tiny_config, log_dir, stage=2, extra=["--lr", "0.0123"]),
                                 stage_dir(log_dir, 2), capsys, ["run.lr"])
    # the device does not shape the result (--gpus 0 -> left to auto): the same run, resumed
    gpus = s1.index("--gpus")
    assert "resuming from" in run_ok(main, s1[:gpus] + s1[gpus + 2:], capsys)

    out = run_ok(main, s1 + ["--lr", "0.0123", "--seed", "3", "--overwrite"], capsys)
    assert "resuming from" not in out and "--overwrite: removed the earlier run" in out
    saved = read_run_config(stage_dir(log_dir, 1) / "run_config.yaml")
    assert saved["run"]["lr"] == 0.0123 and saved["run"]["seed"] == 3
    last = torch.load(stage_dir(log_dir, 1) / "last.ckpt", weights_only=True)
    assert last["config"]["lr"] == 0.0123 and last["config"]["seed"] == 3
    # stage 1 changed under stage 2: its checkpoint is other input, so stage 2 is refused too
    check_changed_config_refused(main, tiny.train_args(tiny_h5ad, tiny_config, log_dir, stage=2, extra=["--seed", "3"]),
                                 stage_dir(log_dir, 2), capsys, ["stage1_file.sha256"])
