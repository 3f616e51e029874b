"""Validation once, at the edge (cli.prepare): each check runs once per command, the bulk checkpoint is read
once per command (not once per fold), and a refused demo run leaves nothing written, its data neither."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

import ftcore.checkpoint
import spatial_transfer.data as data_module
import spatial_transfer.train as train_module
from spatial_transfer.cli import main


@pytest.fixture
def calls(monkeypatch):
    """-> {"check_gene_count": [file checked, ...], "make_folds": n, "reads": {checkpoint name: n}}."""
    seen: dict = {"check_gene_count": [], "make_folds": 0, "reads": {}}
    real_check, real_folds, real_read = data_module.check_gene_count, train_module.make_folds, train_module.read_checkpoint

    def check_gene_count(n_data, n_model, path, what, key):
        seen["check_gene_count"].append(what)
        return real_check(n_data, n_model, path, what, key)

    def make_folds(*args, **kwargs):
        seen["make_folds"] += 1
        return real_folds(*args, **kwargs)

    def read_checkpoint(path, *args, **kwargs):
        seen["reads"][Path(path).name] = seen["reads"].get(Path(path).name, 0) + 1
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "check_gene_count", check_gene_count)
    monkeypatch.setattr(train_module, "make_folds", make_folds)
    monkeypatch.setattr(train_module, "read_checkpoint", read_checkpoint)
    monkeypatch.setattr(ftcore.checkpoint, "read_checkpoint", read_checkpoint)
    return seen


def test_each_check_once_and_the_bulk_checkpoint_read_once_per_command(tiny_data, tmp_path, tiny_args, capsys, calls):
    out = tmp_path / "run"
    argv = ["run", "--data", str(tiny_data), "--output", str(out), "--folds", "2", "--lr", "1e-3", *tiny_args()]
    assert main(argv) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert text.count("=== Loading Pretrained Weights from Bulk Model ===") == 2  # both folds transfer ...
    # ... from one read of the pretrained checkpoint; the other reads are each fold's best model, restored once
    # after its fit (Trainer restore_best)
    folds = {f"best_hest_graph_model_fold_{k}.pt": 1 for k in range(2)}
    assert calls["reads"] == {"best_bulk_model.pt": 1, **folds}
    assert calls["check_gene_count"] == ["spatial.h5ad", "bulk.h5ad"] and calls["make_folds"] == 1

    # a given --bulk-checkpoint, three strategies (two transfer) on the same folds: still one read, one plan
    bulk = out / "bulk_pretrain" / "best_bulk_model.pt"
    calls.update(check_gene_count=[], make_folds=0, reads={})
    cmp_out = tmp_path / "compare"
    assert main(["compare", "--data", str(tiny_data), "--output", str(cmp_out), "--folds", "2",
                 "--strategies", "full,frozen_backbone,scratch", "--bulk-checkpoint", str(bulk),
                 *tiny_args()]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count("=== Loading Pretrained Weights from Bulk Model ===") == 4
    assert calls["reads"] == {"best_bulk_model.pt": 1, **{name: 3 for name in folds}}  # a fold's model per strategy
    assert calls["check_gene_count"] == ["spatial.h5ad"] and calls["make_folds"] == 1  # no bulk data read
    assert (cmp_out / "comparison.json").is_file() and not (cmp_out / "bulk_pretrain").exists()


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_a_refused_demo_run_writes_nothing_not_even_its_data(tmp_path, tiny_args, tiny_spec, capsys, monkeypatch):
    """The demo's data set goes into --output only after the run directory's checks: a changed-config refusal
    leaves --output as it was (here with a data file deleted, which the old order regenerated first)."""
    import spatial_transfer.synthetic as demo

    monkeypatch.setattr(demo, "DemoSpec", lambda: tiny_spec)
    staging = tmp_path / "tmp"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    out = tmp_path / "run"
    argv = ["--output", str(out), "--folds", "2", *tiny_args()]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert (out / "demo_data" / "spatial.h5ad").is_file() and not list(staging.glob("spatial-transfer-demo-*"))

    (out / "demo_data" / "spatial.h5ad").unlink()
    before = _snapshot(out)
    assert main(argv + ["--lr", "2e-3"]) == 2
    err = capsys.readouterr().err
    assert "holds results of a run with other settings" in err and "lr" in err
    assert _snapshot(out) == before  # nothing rewritten, nothing added
    assert not list(staging.glob("spatial-transfer-demo-*"))  # the generated copy went with the refusal

    # a bad config is refused in prepare, after the data were generated: nothing left either
    assert main(argv + ["--set", "model.spatial_genes=25"]) == 2
    assert "has 20 genes but the model predicts 25" in capsys.readouterr().err
    assert _snapshot(out) == before and not list(staging.glob("spatial-transfer-demo-*"))


def test_the_model_layer_names_no_command_line_flag():
    """model.py raises plain errors; flag wording belongs to cli.py (which validates first)."""
    import ast
    import re

    source = Path(__file__).resolve().parents[1] / "src" / "spatial_transfer" / "model.py"
    texts = [sub.value for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.Raise) and node.exc
             for sub in ast.walk(node.exc) if isinstance(sub, ast.Constant) and isinstance(sub.value, str)]
    assert texts and not [t for t in texts if re.search(r"--[a-z]", t)]
