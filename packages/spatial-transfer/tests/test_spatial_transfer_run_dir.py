"""The run directory contract (ftcore.rundir) in `spatial-transfer run / pretrain / compare`: the bulk
pretraining and each strategy's CV are resumed only by the same result-shaping settings; other settings are
refused before a byte is written; --overwrite starts that part fresh."""

import csv
import json
import sys
from pathlib import Path

import torch

from spatial_transfer.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from repo_helpers import check_changed_config_refused, read_run_config, run_ok  # noqa: E402


def test_changed_settings_refused_same_resumed_overwrite_starts_fresh(tiny_data, tmp_path, tiny_args, capsys):
    out = tmp_path / "run"
    argv = ["run", "--data", str(tiny_data), "--output", str(out), "--folds", "2", "--lr", "1e-3", *tiny_args()]
    run_ok(main, argv, capsys)
    log, bulk_dir = out / "log_normalized_transfer_full", out / "bulk_pretrain"
    cv, bulk = read_run_config(log / "run_config.yaml"), read_run_config(bulk_dir / "run_config.yaml")
    assert cv["lr"] == 1e-3 and cv["bulk"] == bulk and bulk["seed"] == 42
    assert [Path(f["path"]).name for f in cv["data_files"]] == ["spatial.h5ad", "spatial_cells.h5ad"]
    rows = list(csv.DictReader(open(out / "checkpoints_transfer_full" / "fold_0_history.csv")))
    assert rows and "val_gene_corr" in rows[0]
    assert (bulk_dir / "history.csv").is_file()

    # a changed spatial lr: the CV is refused (the bulk pretraining it would reuse is the same)
    check_changed_config_refused(main, argv[:-2] + ["--lr", "2e-3", *argv[-2:]], out, capsys,
                                 ["log_normalized_transfer_full holds results", "lr 0.001 -> 0.002"])
    # a changed bulk setting changes the model the CV transfers from: both parts are other runs
    check_changed_config_refused(main, argv + ["--bulk-epochs", "3"], out, capsys, ["bulk.train.epochs"])
    capsys.readouterr()
    assert main(["pretrain", "--data", str(tiny_data), "--output", str(out), *tiny_args("--bulk-epochs", "3")]) == 2
    err = capsys.readouterr().err
    assert "bulk_pretrain holds results of a run with other settings (changed: train.epochs;" in err
    # where it runs does not shape the result: resumed, fold by fold
    text = run_ok(main, argv + ["--no-progress"], capsys)
    assert "resuming: 2 of 2 folds already finished" in text

    before = torch.load(bulk_dir / "best_bulk_model.pt", weights_only=True)["model"]
    text = run_ok(main, argv + ["--bulk-epochs", "3", "--overwrite"], capsys)
    assert text.count("--overwrite: removed the earlier run") == 2 and "resuming" not in text
    assert read_run_config(bulk_dir / "run_config.yaml")["train"]["epochs"] == 3
    assert read_run_config(log / "run_config.yaml")["bulk"]["train"]["epochs"] == 3
    assert json.loads((bulk_dir / "history.json").read_text())[-1]["epoch"] == 3  # retrained, 3 epochs
    after = torch.load(bulk_dir / "best_bulk_model.pt", weights_only=True)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(json.loads((log / "temp_fold_results.json").read_text())["folds"]) == 2
