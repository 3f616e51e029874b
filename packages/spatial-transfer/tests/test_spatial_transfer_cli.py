"""CLI: env vars vs flags, the whole flow on tiny data, outputs, resume after a finished fold, compare."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

from ftcore.errors import UserError
from spatial_transfer.cli import main, resolve_cv, resolve_strategy


def _args(strategy=None, transfer=None, freeze=None, cv=None, heldout=None):
    return types.SimpleNamespace(strategy=strategy, transfer=transfer, freeze_backbone=freeze, cv=cv, loo_heldout=heldout)


@pytest.mark.parametrize("flags,env,expected", [
    ({}, {}, "full"),
    ({}, {"TRANSFER_STRATEGY": "frozen_backbone"}, "frozen_backbone"),
    ({}, {"USE_TRANSFER_LEARNING": "false"}, "scratch"),
    ({}, {"USE_TRANSFER_LEARNING": "true", "FREEZE_BACKBONE": "true"}, "frozen_backbone"),
    ({"strategy": "frozen_decoder"}, {"TRANSFER_STRATEGY": "full"}, "frozen_decoder"),  # flag beats variable
    ({"strategy": "full"}, {"FREEZE_BACKBONE": "true"}, "full"),
    ({"transfer": False}, {"TRANSFER_STRATEGY": "full"}, "scratch"),
    ({"freeze": True}, {"TRANSFER_STRATEGY": "full"}, "frozen_backbone"),
])
def test_strategy_resolution(flags, env, expected):
    assert resolve_strategy(_args(**flags), env) == expected


@pytest.mark.parametrize("env,phrase", [
    ({"TRANSFER_STRATEGY": "partial"}, "TRANSFER_STRATEGY='partial' is not a valid value; allowed: full, frozen_backbone, frozen_decoder, scratch"),
    ({"USE_TRANSFER_LEARNING": "maybe"}, "allowed: true, false"),
    ({"TRANSFER_STRATEGY": "full", "FREEZE_BACKBONE": "true"}, "conflicts with strategy 'full'"),
    ({"USE_TRANSFER_LEARNING": "false", "FREEZE_BACKBONE": "true"}, "FREEZE_BACKBONE=true needs transfer learning"),
])
def test_strategy_errors(env, phrase):
    with pytest.raises(UserError, match=phrase.replace("(", r"\(")):
        resolve_strategy(_args(), env)


def test_cv_resolution():
    assert resolve_cv(_args(), {}) == ("kfold", None)
    assert resolve_cv(_args(), {"CV_MODE": "loo", "LOO_HELDOUT": "a, b"}) == ("loo", ["a", "b"])
    assert resolve_cv(_args(cv="kfold"), {"CV_MODE": "loo"}) == ("kfold", None)
    with pytest.raises(UserError, match="CV_MODE='lopo' is not a valid value; allowed: kfold, loo"):
        resolve_cv(_args(), {"CV_MODE": "lopo"})
    # flags beat the variables: --loo-heldout over LOO_HELDOUT, --cv over CV_MODE
    assert resolve_cv(_args(heldout="c"), {"CV_MODE": "loo", "LOO_HELDOUT": "a,b"}) == ("loo", ["c"])
    assert resolve_cv(_args(cv="loo"), {"CV_MODE": "kfold"}) == ("loo", None)
    with pytest.raises(UserError, match="unknown CV mode 'lopo'; allowed: kfold, loo"):
        resolve_cv(_args(cv="lopo"), {})


def test_default_learning_rates_are_the_guides():
    """User data: the guide's rates (full 1e-6, frozen 1e-5, scratch 1e-4); --lr beats them; k-fold has 10 folds."""
    from spatial_transfer.cli import DEMO_STRATEGY_LR, _plan
    from spatial_transfer.config import RunConfig

    samples = types.SimpleNamespace(samples=[f"s{i}" for i in range(12)])
    cfg = RunConfig()
    assert cfg.folds == 10
    guide = {"full": 1e-6, "frozen_backbone": 1e-5, "frozen_decoder": 1e-5, "scratch": 1e-4}
    for strategy, lr in guide.items():
        plan = _plan(samples, cfg, strategy, "kfold", None, demo=False)
        assert plan.lr == lr and len(plan.folds) == 10, strategy
        assert _plan(samples, cfg, strategy, "kfold", None, demo=True).lr == DEMO_STRATEGY_LR[strategy]
    cfg.spatial.lr = 5e-3
    assert _plan(samples, cfg, "full", "kfold", None, demo=False).lr == 5e-3


def test_run_end_to_end_outputs_and_resume(tiny_data, tmp_path, tiny_args, capsys):
    out = tmp_path / "run"
    argv = ["run", "--data", str(tiny_data), "--output", str(out), "--folds", "2", "--lr", "1e-3", *tiny_args()]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "=== Loading Pretrained Weights from Bulk Model ===" in text
    assert "Skipped 2 layers due to shape mismatch" in text
    assert "Average overall correlation:" in text and "±" in text
    log, ck = out / "log_normalized_transfer_full", out / "checkpoints_transfer_full"
    for k in (0, 1):
        for name in (f"fold_{k}_metrics.json", f"fold_{k}_predictions.npy", f"fold_{k}_training_curve.png",
                     f"fold_{k}_pred_vs_true.png"):
            assert (log / name).stat().st_size > 0, name
        best = torch.load(ck / f"best_hest_graph_model_fold_{k}.pt", weights_only=True)
        assert "output_projection.1.weight" in best["model"]
        assert not (ck / f"last_fold_{k}.pt").exists()
    final = json.loads((log / "final_2fold_results.json").read_text())
    temp = json.loads((log / "temp_fold_results.json").read_text())
    assert [f["fold"] for f in temp["folds"]] == [0, 1]
    tested = [s for f in final["folds"] for s in f["test_samples"]]
    assert sorted(tested) == sorted({f"slide{i:02d}" for i in range(4)})
    adata = anndata.read_h5ad(log / "predictions.h5ad")
    for f in final["folds"]:
        m = json.loads((log / f"fold_{f['fold']}_metrics.json").read_text())
        pred = np.load(log / f"fold_{f['fold']}_predictions.npy")
        assert pred.shape == (m["n_test_spots"], 20) and np.isfinite(pred).all()
        assert all(name.startswith(tuple(f["test_samples"])) for name in m["spot_names"])
        # the metrics are those of the saved predictions: Pearson over all spot x gene values, MSE
        true = adata[m["spot_names"]].layers["measured"]
        np.testing.assert_allclose(adata[m["spot_names"]].X, pred)  # X = the out-of-fold predictions
        assert m["overall_correlation"] == pytest.approx(np.corrcoef(pred.ravel(), true.ravel())[0, 1], abs=1e-5)
        assert m["test_loss"] == pytest.approx(float(((pred - true) ** 2).mean()), rel=1e-5)
    # THE output layout (ftcore.data.prediction_adata): X = predictions of the genes, observed in layers["measured"],
    # obs kept, obsm["spatial"] = (array_col, array_row): the coordinates the package reads
    source = anndata.read_h5ad(tiny_data / "spatial.h5ad")
    assert adata.shape == (64, 20) and np.isfinite(adata.X).all() and list(adata.var_names) == list(source.var_names)
    np.testing.assert_array_equal(adata.layers["measured"], source[adata.obs_names].X)
    assert list(adata.obs["sample"]) == list(source[adata.obs_names].obs["sample"])
    np.testing.assert_array_equal(adata.obsm["spatial"], source[adata.obs_names].obs[["array_col", "array_row"]].to_numpy())
    assert adata.uns["prediction"]["measured_layer"] == "measured" and "out-of-fold" in adata.uns["prediction"]["model"]
    assert (out / "bulk_pretrain" / "best_bulk_model.pt").exists()
    # the printed next step is complete: it runs as printed (the console script's name -> main)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("next: ")]
    import shlex

    nxt = shlex.split(line.split("#")[0][len("next: "):])
    assert nxt[:2] == ["spatial-transfer", "predict"] and nxt[nxt.index("--data") + 1] == str(tiny_data)
    assert main(nxt[1:] + ["--device", "cpu"]) == 0 and (out / "predict" / "predictions.h5ad").exists()

    # the fold-0 model on the slides: predictions in X, as in the run's file; a bulk checkpoint is refused
    pred_dir = tmp_path / "pred"
    ckpt = ck / "best_hest_graph_model_fold_0.pt"
    assert main(["predict", "--checkpoint", str(ckpt), "--data", str(tiny_data), "--output", str(pred_dir), "--device", "cpu"]) == 0
    p = anndata.read_h5ad(pred_dir / "predictions.h5ad")
    assert p.shape == (64, 20) and np.isfinite(p.X).all() and list(p.var_names) == list(adata.var_names)
    assert list(p.obs_names) == list(source.obs_names)
    np.testing.assert_array_equal(p.layers["measured"], source.X)
    rows = [p.obs_names.get_loc(n) for n in json.loads((log / "fold_0_metrics.json").read_text())["spot_names"]]
    np.testing.assert_allclose(p.X[rows], adata[p.obs_names[rows]].X, rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(out / "bulk_pretrain" / "best_bulk_model.pt"), "--data", str(tiny_data),
                 "--output", str(tmp_path / "pred2")]) == 2
    assert "is a Cell2Gene BulkModel checkpoint" in capsys.readouterr().err and not (tmp_path / "pred2").exists()

    # a crash after fold 0: drop fold 1 from the record, rerun, only fold 1 is trained again
    temp["folds"] = temp["folds"][:1]
    (log / "temp_fold_results.json").write_text(json.dumps(temp))
    before = (log / "fold_0_metrics.json").stat().st_mtime_ns
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "resuming: 1 of 2 folds already finished" in text and "Fold 1/2" not in text and "Fold 2/2" in text
    assert (log / "fold_0_metrics.json").stat().st_mtime_ns == before
    again = json.loads((log / "final_2fold_results.json").read_text())
    assert again["folds"][1]["test_loss"] == pytest.approx(final["folds"][1]["test_loss"], rel=1e-5)

    # other settings in the same directory: refused, not mixed
    assert main(argv[:-2] + ["--seed", "7", *argv[-2:]]) == 2
    assert "holds results of a run with other settings (changed: folds, seed" in capsys.readouterr().err


def test_scratch_loo_by_env_and_compare(tiny_data, tmp_path, tiny_args, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("USE_TRANSFER_LEARNING", "false")
    monkeypatch.setenv("CV_MODE", "loo")
    monkeypatch.setenv("LOO_HELDOUT", "slide01")
    assert main(["run", "--data", str(tiny_data), "--output", str(out), *tiny_args()]) == 0
    assert (out / "log_normalized" / "final_1fold_results.json").exists()  # the guide's from-scratch dir
    assert (out / "checkpoints" / "best_hest_graph_model_fold_0.pt").exists()
    assert not (out / "bulk_pretrain").exists()  # from scratch needs no bulk model
    monkeypatch.delenv("USE_TRANSFER_LEARNING")
    capsys.readouterr()
    assert main(["compare", "--data", str(tiny_data), "--output", str(out), "--strategies", "frozen_backbone,scratch",
                 *tiny_args()]) == 0
    text = capsys.readouterr().out
    table = text.split("=== Transfer vs from scratch (same folds) ===")[1]
    assert "frozen_backbone" in table and "scratch" in table and "±" in table
    cmp_ = json.loads((out / "comparison.json").read_text())
    assert set(cmp_) == {"frozen_backbone", "scratch"}
    assert cmp_["scratch"]["lr"] == 1e-4 and cmp_["frozen_backbone"]["lr"] == 1e-5  # the guide's defaults


def test_pretrain_then_transfer_from_a_given_checkpoint(tiny_data, tmp_path, tiny_args, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", str(tiny_data), "--output", str(pre), *tiny_args()]) == 0
    ckpt = pre / "bulk_pretrain" / "best_bulk_model.pt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["extra"]["model_config"]["bulk_genes"] == 12 and len(saved["extra"]["genes"]) == 12
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["run", "--data", str(tiny_data), "--output", str(out), "--bulk-checkpoint", str(ckpt),
                 "--strategy", "frozen_decoder", "--folds", "2", *tiny_args()]) == 0
    text = capsys.readouterr().out
    assert f"Bulk model path: {ckpt}" in text and not (out / "bulk_pretrain").exists()
    best = torch.load(out / "checkpoints_transfer_frozen_decoder" / "best_hest_graph_model_fold_0.pt", weights_only=True)
    bulk_sd = saved["model"]
    for name, value in best["model"].items():  # frozen groups still hold the bulk weights after training
        if name.startswith(("gnn.", "transformer.")) and name in bulk_sd:
            torch.testing.assert_close(value, bulk_sd[name])
    assert not torch.equal(best["model"]["feature_projection.0.weight"], bulk_sd["feature_projection.0.weight"])


def test_console_script_help_and_unknown_strategy(tmp_path):
    exe = Path(sys.executable).parent / "spatial-transfer"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "compare" in r.stdout and "make-demo-data" in r.stdout
    env = dict(os.environ, TRANSFER_STRATEGY="everything")
    r = subprocess.run([str(exe), "--output", str(tmp_path / "x")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: TRANSFER_STRATEGY='everything'") and "allowed: full" in r.stderr
    assert not (tmp_path / "x").exists()


def test_no_data_runs_the_embedded_demo(tmp_path, tiny_args, tiny_spec, capsys, monkeypatch):
    """`spatial-transfer` without --data: writes the demo data set, pretrains, transfers with the demo's strategy
    (the one that wins on the demo data) and rates, then the scratch baseline on the same folds, one table.

    The generator is swapped for the tiny spec (the real demo takes minutes); everything else is the no-argument path.
    """
    import spatial_transfer.synthetic as demo
    from spatial_transfer.cli import DEMO_STRATEGY, DEMO_STRATEGY_LR
    from spatial_transfer.data import BULK_CELLS_FILE, BULK_FILE, SPATIAL_CELLS_FILE, SPATIAL_FILE

    monkeypatch.setattr(demo, "DemoSpec", lambda: tiny_spec)
    out = tmp_path / "run"
    assert main(["--output", str(out), "--folds", "2", *tiny_args()]) == 0  # no command, no --data
    text = capsys.readouterr().out
    assert "no --data given: running on the synthetic demo data set" in text
    for name in (SPATIAL_FILE, SPATIAL_CELLS_FILE, BULK_FILE, BULK_CELLS_FILE):
        assert (out / "demo_data" / name).stat().st_size > 0, name
    assert (out / "bulk_pretrain" / "best_bulk_model.pt").exists()
    assert "=== Loading Pretrained Weights from Bulk Model ===" in text
    # the guide's summary lines, both metrics, once per strategy
    assert text.count("Average overall correlation:") == 2 and text.count("Average gene correlation:") == 2
    assert DEMO_STRATEGY in ("full", "frozen_backbone", "frozen_decoder")  # a transfer strategy, beside scratch
    final = json.loads((out / f"log_normalized_transfer_{DEMO_STRATEGY}" / "final_2fold_results.json").read_text())
    assert final["strategy"] == DEMO_STRATEGY and final["lr"] == DEMO_STRATEGY_LR[DEMO_STRATEGY]
    assert (out / f"checkpoints_transfer_{DEMO_STRATEGY}" / "best_hest_graph_model_fold_1.pt").exists()
    scratch = json.loads((out / "log_normalized" / "final_2fold_results.json").read_text())
    assert scratch["strategy"] == "scratch" and [f["test_samples"] for f in scratch["folds"]] == [
        f["test_samples"] for f in final["folds"]]  # the same folds
    cmp_ = json.loads((out / "comparison.json").read_text())
    assert set(cmp_) == {DEMO_STRATEGY, "scratch"}
    (line,) = [ln for ln in text.splitlines() if ln.startswith("demo: transfer")]
    g = final["gene_correlation"]["mean"], scratch["gene_correlation"]["mean"]
    assert f"gene correlation {g[0]:.4f} vs from scratch {g[1]:.4f}" in line
    # the environment still picks the strategy in the demo
    other = "frozen_decoder"
    monkeypatch.setenv("TRANSFER_STRATEGY", other)
    assert main(["--output", str(tmp_path / "run_other"), "--folds", "2", *tiny_args()]) == 0
    assert (tmp_path / "run_other" / f"log_normalized_transfer_{other}" / "final_2fold_results.json").exists()


def test_make_demo_data_writes_a_readable_data_set(tmp_path, capsys):
    from spatial_transfer.data import read_bulk, read_spatial

    assert main(["make-demo-data", str(tmp_path / "d"), "--seed", "1"]) == 0
    assert f"wrote the synthetic data set to {tmp_path / 'd'}" in capsys.readouterr().out
    sp, bk = read_spatial(tmp_path / "d", 128), read_bulk(tmp_path / "d", 128)
    assert sp.expr.shape[1] == 897 and len(sp.samples) == 10 and bk.expr.shape == (60, 372)


def test_freezing_layers_the_bulk_checkpoint_lacks_is_refused(tiny_data, tmp_path, tiny_args, capsys):
    """A pretrained part that did not load is never frozen at random init (issue 19), unless asked for."""
    pre = tmp_path / "pre"
    assert main(["pretrain", "--data", str(tiny_data), "--output", str(pre), *tiny_args()]) == 0
    saved = torch.load(pre / "bulk_pretrain" / "best_bulk_model.pt", weights_only=True)
    partial = tmp_path / "no_gnn.pt"
    torch.save({"model": {k: v for k, v in saved["model"].items() if not k.startswith("gnn.")}}, partial)
    out = tmp_path / "run"
    capsys.readouterr()
    argv = ["run", "--data", str(tiny_data), "--output", str(out), "--bulk-checkpoint", str(partial),
            "--strategy", "frozen_backbone", "--folds", "2", *tiny_args()]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "frozen tensors would stay at their random initialisation" in err[0]
    assert "gnn (" in err[0] and "--allow-unloaded-frozen" in err[0]
    assert not out.exists()
    # the full strategy freezes nothing: the same checkpoint is fine there
    assert main([*argv[:-len(tiny_args()) - 4], "--strategy", "full", "--folds", "2", *tiny_args()]) == 0
    assert main([*argv, "--allow-unloaded-frozen", "--output", str(tmp_path / "run2")]) == 0
    assert "⚠" in capsys.readouterr().out


def test_model_files_earlier_and_current_layout_read_alike(tmp_path, capsys):
    """A fold model of an earlier version (extra["kind"] marker, no header) and the same weights written as a model
    file now (ftcore.artefact header) read alike; each kind is told apart in one line, old marker or new header."""
    from ftcore.artefact import kind_of, load_model, save_model
    from spatial_transfer.train import BULK_KIND, SPATIAL_KIND, legacy_header

    corpus = Path(__file__).parents[3] / "tests" / "bad_inputs" / "spatial-transfer" / "checkpoints"
    old = torch.load(corpus / "spatial_good.pt", weights_only=True)
    assert "artefact" not in old and kind_of(old, legacy_header) == SPATIAL_KIND
    assert kind_of(torch.load(corpus / "bulk_good.pt", weights_only=True), legacy_header) == BULK_KIND
    new = save_model(tmp_path / "fold.pt", old["model"], kind=SPATIAL_KIND, config=old["extra"]["model_config"],
                     data_keys={"genes": old["extra"]["genes"]}, extra=old["extra"], package="spatial-transfer")
    a = load_model(corpus / "spatial_good.pt", kind=SPATIAL_KIND, legacy=legacy_header)
    b = load_model(new, kind=SPATIAL_KIND, legacy=legacy_header)
    assert (a.config, a.data_keys, a.extra) == (b.config, b.data_keys, b.extra) and a.state.keys() == b.state.keys()
    assert b.versions["spatial-transfer"] and not a.versions
    bulk = save_model(tmp_path / "bulk.pt", old["model"], kind=BULK_KIND, config={}, package="spatial-transfer")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(bulk), "--data", str(tmp_path), "--output", str(tmp_path / "p")]) == 2
    assert "bulk.pt is a Cell2Gene BulkModel checkpoint; pass a" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
