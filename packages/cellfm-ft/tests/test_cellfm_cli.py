"""The CLI end to end on tiny sizes: convert, train (the seed's outputs), predict, evaluate, demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from ftcore.checkpoint import read_state_dict

from cellfm_ft.cli import main
from cellfm_ft.model import pad_rows
from cellfm_ft.train import load_cellfm_weights



def test_convert_writes_safetensors_and_report(cellfm_inputs, tmp_path, capsys):
    out = tmp_path / "cellfm.safetensors"
    assert main(["convert", str(cellfm_inputs["ckpt"]), "--output", str(out), "--config", "tiny",
                 "--report", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mapping"]["skipped"] == {"global_step": "training counter saved beside the weights"}
    assert report["config"]["enc_dims"] == 32 and report["config"]["enc_nlayers"] == 2
    sd = read_state_dict(out)
    assert "extractor.encoder.1.post_norm2.weight" in sd and set(report["tensors"]) == set(sd)
    assert "converted" in capsys.readouterr().out
    assert Path(str(out) + ".genes.txt").read_text() == cellfm_inputs["vocab"].read_text()


def test_train_writes_the_seeds_outputs(trained, cellfm_inputs):
    names = {p.name for p in trained.iterdir()}
    assert {"best_model.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth", "training_results.json",
            "train.h5ad", "test.h5ad", "confusion_matrix.png", "training_curve.png", "last.pt", "split.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    res = json.loads((trained / "training_results.json").read_text())
    assert res["gene_embedding"] == "reinitialized_for_our_vocab"
    # The best epoch is chosen on the validation split; the test split is scored once, by that model.
    assert len(res["train_acc_history"]) == len(res["val_acc_history"]) == 2 and len(res["test_acc_history"]) == 1
    assert res["best_val_acc"] == max(res["val_acc_history"])
    assert res["best_test_acc"] == res["test_acc_history"][0] == res["test_acc_best_model"]
    assert 0 <= res["baseline_logreg_test_acc"] <= 1
    # The default vocabulary is the user's genes: all 64, each with a fresh gene_emb row.
    assert res["n_genes"] == 64 and res["genes_absent_from_vocab"] == 0 and res["vocabulary"] == "every data gene"


def test_train_and_test_h5ad_hold_predictions(trained, cellfm_inputs):
    test = ad.read_h5ad(trained / "test.h5ad")
    train = ad.read_h5ad(trained / "train.h5ad")
    assert set(test.obs["donor"]) == {"D2"} and "D2" not in set(train.obs["donor"])
    labels = test.uns["cellfm"]["labels"]
    proba = test.obsm["cellfm_proba"]
    assert proba.shape == (test.n_obs, len(labels))
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert (test.obs["cellfm_pred"].astype(str).to_numpy() == np.asarray(labels)[proba.argmax(1)]).all()
    assert test.obsm["X_cellfm"].shape == (test.n_obs, 32)
    source = cellfm_inputs["adata"][test.obs_names]
    np.testing.assert_array_equal(test.X.toarray(), source.X.toarray())  # X untouched (raw counts)
    res = json.loads((trained / "training_results.json").read_text())
    acc = float((test.obs["cellfm_pred"].astype(str) == test.obs["cell_type"].astype(str)).mean())
    assert acc == pytest.approx(res["test_acc_best_model"])


def test_gene_emb_reinitialised_frozen_layers_loaded(trained, cellfm_inputs):
    best = torch.load(trained / "best_model.pth", weights_only=True)
    sd = best["model"]
    n = json.loads((trained / "training_results.json").read_text())["n_genes"]
    assert sd["extractor.gene_emb"].shape == (pad_rows(n), 32)
    assert torch.all(sd["extractor.gene_emb"][0] == 0)
    ckpt, _ = load_cellfm_weights(str(cellfm_inputs["ckpt"]))
    # frozen: value encoder identical to the checkpoint; trained: encoder moved away from it
    torch.testing.assert_close(sd["extractor.value_enc.value_enc.w3.weight"], ckpt["extractor.value_enc.value_enc.w3.weight"])
    assert not torch.equal(sd["extractor.encoder.0.attn.q_proj.weight"], ckpt["extractor.encoder.0.attn.q_proj.weight"])
    assert best["extra"]["genes"][:2] and best["extra"]["labels"] == sorted(set(cellfm_inputs["adata"].obs["cell_type"]))


def test_predict_and_evaluate(trained, cellfm_inputs, tmp_path):
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(trained / "best_model.pth"), "--data", str(cellfm_inputs["data"]),
                 "--output", str(out)]) == 0
    pred = ad.read_h5ad(out)
    assert pred.n_obs == cellfm_inputs["adata"].n_obs and "cellfm_pred" in pred.obs
    assert main(["evaluate", "--model", str(trained / "best_model.pth"), "--data", str(cellfm_inputs["data"]),
                 "--label-key", "cell_type", "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    acc = float((pred.obs["cellfm_pred"].astype(str) == pred.obs["cell_type"].astype(str)).mean())
    assert metrics["accuracy"] == pytest.approx(acc)
    assert np.array(metrics["confusion_matrix"]).sum() == pred.n_obs
    assert (tmp_path / "eval" / "confusion_matrix.png").stat().st_size > 1000


def test_preset_points_at_user_files(tmp_path, monkeypatch, capsys, cellfm_inputs):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--testcase"]) == 2
    assert "preset --testcase expects the data at data/testcase.h5ad" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    shutil.copy(cellfm_inputs["data"], tmp_path / "data" / "mtg.h5ad")
    # The preset supplies data, donor split and output dir; the flags here only point at the tiny checkpoint.
    assert main(["train", "--mtg", "--label-key", "cell_type", "--donor-key", "donor", "--checkpoint",
                 str(cellfm_inputs["ckpt"]), "--config", "tiny", "--max-steps", "1", "--no-progress"]) == 0
    assert (tmp_path / "outputs" / "cellfm_mtg" / "training_results.json").exists()


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--dataset", "synthetic", "--max-steps", "2", "--output", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "logistic regression" in out
    assert (tmp_path / "predictions.h5ad").exists() and (tmp_path / "inputs" / "cellfm_tiny_demo.safetensors").exists()


def test_console_script_help():
    exe = Path(sys.executable).parent / "cellfm-ft"
    proc = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--testcase" in proc.stdout and "--trust-checkpoint" in proc.stdout


def test_cuda_oom_becomes_batch_size_advice(monkeypatch, capsys):
    import cellfm_ft.train as train_mod

    def boom(cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod, "finetune", boom)
    assert main(["train", "--data", "x.h5ad", "--checkpoint", "c.ckpt", "--batch-size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: CUDA ran out of memory at batch size 16; lower --batch-size (e.g. 16 -> 8), "
                   "or run on a GPU with more memory"]


def test_no_argument_runs_the_pbmc68k_demo_with_the_settings_its_help_states(tmp_path, monkeypatch, capsys):
    """`cellfm-ft` alone = `cellfm-ft demo` on the embedded real cells (scanpy's pbmc68k_reduced: 700 PBMCs,
    10 bulk_labels, log-normalised .raw) with the demo's own epochs/lr/batch size, which `demo --help`
    states (train's help states RunConfig's). Issue 17: it fine-tunes from the checkpoint AND trains the same
    network from scratch with the same settings, split and seed, and prints both beside the logistic
    regression, then one line on what pretraining would add. The README's scanpy example runs on its
    predictions. (Cut to 2 steps here, through the finetune calls the demo makes.)"""
    import dataclasses

    import cellfm_ft.train as train_mod
    from cellfm_ft.cli import DEMO_TRAIN, build_parser
    from cellfm_ft.config import RunConfig

    seen, real_finetune = [], train_mod.finetune

    def short(cfg):
        seen.append(cfg)
        return real_finetune(dataclasses.replace(cfg, max_steps=2, progress=False))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_mod, "finetune", short)
    assert main([]) == 0
    assert len(seen) == 2
    cfg, scratch_cfg = seen
    assert Path(cfg.data).name == "pbmc68k_reduced.h5ad"
    assert (cfg.label_key, cfg.layer, cfg.donor_key, cfg.baseline) == ("bulk_labels", "raw", None, True)
    assert {k: getattr(cfg, k) for k in DEMO_TRAIN} == DEMO_TRAIN
    # The yardstick differs in the loaded weights only (and where it writes; the baseline is fitted once).
    assert not cfg.from_scratch and scratch_cfg.from_scratch
    assert dataclasses.replace(scratch_cfg, from_scratch=False, output=cfg.output, baseline=True) == cfg
    out = capsys.readouterr().out
    demo = tmp_path / "runs" / "cellfm-ft" / "demo"
    res = json.loads((demo / "finetune" / "training_results.json").read_text())
    fresh = json.loads((demo / "scratch" / "training_results.json").read_text())
    assert json.loads((demo / "finetune" / "split.json").read_text()) == json.loads((demo / "scratch" / "split.json").read_text())
    assert res["steps"] == fresh["steps"] == 2
    assert fresh["weights"] == "random initialisation (--from-scratch)" and fresh["load_report"] == {}
    lines = out.splitlines()
    for label, value in (("CellFM fine-tuned from the demo checkpoint", res["best_test_acc"]),
                         ("the same network from scratch", fresh["best_test_acc"]),
                         ("logistic regression (same split and genes)", res["baseline_logreg_test_acc"])):
        assert any(line.strip().startswith(label) and line.strip().endswith(f"{value:.3f}") for line in lines), label
    assert lines[-1].startswith("pretraining adds nothing here") and "real pretrained CellFM-80M weights" in lines[-1]
    comparison = json.loads((demo / "comparison.json").read_text())
    assert comparison["test_accuracy"] == {"fine_tuned": res["best_test_acc"], "scratch": fresh["best_test_acc"],
                                           "logistic_regression": res["baseline_logreg_test_acc"]}
    assert len(res["labels"]) == 10 and res["n_train_cells"] + res["n_val_cells"] + res["n_test_cells"] == 700
    assert res["input_kind"] == "log" and 0 < res["baseline_logreg_test_acc"] <= 1
    pred = ad.read_h5ad(demo / "predictions.h5ad")
    assert pred.n_obs == 700 and pred.obsm["cellfm_proba"].shape == (700, 10)
    source = ad.read_h5ad(demo / "inputs" / "pbmc68k_reduced.h5ad")
    assert list(pred.obs_names) == list(source.obs_names)
    # scanpy draws a predicted label in the colour its true label has (uns["bulk_labels_colors"])
    colour_of = dict(zip(source.obs["bulk_labels"].cat.categories, source.uns["bulk_labels_colors"]))
    assert list(pred.uns["cellfm_pred_colors"]) == [colour_of[c] for c in pred.obs["cellfm_pred"].cat.categories]

    # The README's two-line scanpy example, as written there, on these predictions.
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("<!-- scanpy example: tested -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    code = [line for line in example.strip().splitlines() if not line.startswith("import ")]
    assert len(code) == 2, example
    exec(compile(example, "README.md", "exec"), {})
    assert (tmp_path / "figures" / "umap_cellfm.png").stat().st_size > 1000

    subcommands = build_parser()._subparsers._group_actions[0].choices
    for name, defaults in (("demo", DEMO_TRAIN), ("train", {"epochs": RunConfig.epochs, "lr": RunConfig.lr})):
        flat = " ".join(subcommands[name].format_help().split())
        assert f"epochs (default {defaults['epochs']})" in flat and f"learning rate (default {defaults['lr']:g})" in flat


def test_python_api_finetune_predict_evaluate(cellfm_inputs, tmp_path, capsys):
    """The README's Python route, and the teacher's rule as logged: gene_emb re-initialised and skipped
    (named), every other backbone tensor loaded, every data gene kept (the default vocabulary)."""
    from cellfm_ft.config import RunConfig
    from cellfm_ft.predict import evaluate, predict
    from cellfm_ft.train import finetune

    cfg = RunConfig(data=str(cellfm_inputs["data"]), label_key="cell_type", donor_key="donor", test_donors=["D1"],
                    checkpoint=str(cellfm_inputs["ckpt"]), config="tiny", output=str(tmp_path / "run"),
                    max_steps=1, batch_size=16, progress=False)
    res = finetune(cfg)
    log = capsys.readouterr().out
    assert res["gene_embedding"] == "reinitialized_for_our_vocab"
    n = res["n_genes"]
    assert f"Re-initializing gene embedding: {n} genes -> gene_emb ({pad_rows(n)}, 32)" in log
    assert "Skipping gene embedding: extractor.gene_emb" in log
    assert res["genes_absent_from_vocab"] == 0 and f"genes: all {n} data genes, each with a fresh gene_emb row" in log
    report = res["load_report"]
    assert report["skipped"] == {"extractor.gene_emb": "re-initialised for our vocabulary"}
    assert not report["not_in_model"] and not report["shape_mismatch"]
    ckpt, _ = load_cellfm_weights(str(cellfm_inputs["ckpt"]))
    assert set(report["loaded"]) == {k for k in ckpt if k != "extractor.gene_emb"}

    model = tmp_path / "run" / "best_model.pth"
    pred = predict(str(model), str(cellfm_inputs["data"]), str(tmp_path / "pred.h5ad"))
    assert ad.read_h5ad(pred).obsm["cellfm_proba"].shape[0] == cellfm_inputs["adata"].n_obs
    metrics = evaluate(str(model), str(cellfm_inputs["data"]), str(tmp_path / "eval"), label_key="cell_type")
    assert metrics["n_cells"] == cellfm_inputs["adata"].n_obs and 0 <= metrics["accuracy"] <= 1


def test_from_scratch_loads_no_weights_and_trains_the_same_parameters(cellfm_inputs, tmp_path):
    """--from-scratch: the checkpoint's architecture, nothing of its weights; the same parameters train."""
    import dataclasses

    from cellfm_ft.config import RunConfig
    from cellfm_ft.train import finetune

    base = RunConfig(data=str(cellfm_inputs["data"]), label_key="cell_type", donor_key="donor", test_donors=["D1"],
                     checkpoint=str(cellfm_inputs["ckpt"]), config="tiny", max_steps=1, progress=False,
                     seed=1)  # not the fixture checkpoint's own seed 0: scratch would redraw its very numbers
    runs = {}
    for name, scratch in (("tuned", False), ("scratch", True)):
        res = finetune(dataclasses.replace(base, output=str(tmp_path / name), from_scratch=scratch))
        runs[name] = (res, torch.load(tmp_path / name / "best_model.pth", weights_only=True)["model"])
    ckpt, _ = load_cellfm_weights(str(cellfm_inputs["ckpt"]))
    frozen = "extractor.value_enc.value_enc.w3.weight"  # frozen under cls_encoder: it keeps its start value
    torch.testing.assert_close(runs["tuned"][1][frozen], ckpt[frozen])
    assert not torch.allclose(runs["scratch"][1][frozen], ckpt[frozen])
    assert runs["tuned"][0]["trainable_parameters"] == runs["scratch"][0]["trainable_parameters"]
    assert runs["tuned"][0]["steps"] == runs["scratch"][0]["steps"] == 1
    assert set(runs["tuned"][1]) == set(runs["scratch"][1])


def test_demo_on_the_packaged_wu2020_t_cells(tmp_path, capsys):
    """--dataset wu2020: the 200 real T cells of Wu et al. 2020 packaged from scirpy's wheel (raw counts,
    16 cluster_orig subtypes, 14 patients), read as counts and split by cells per subtype."""
    from cellfm_ft.demo import wu2020

    cells = wu2020()
    assert cells.n_obs == 200 and cells.obs["cluster_orig"].nunique() == 16 and cells.obs["patient"].nunique() == 14
    assert np.array_equal(cells.X.data, np.round(cells.X.data)) and cells.X.data.min() > 0  # raw counts
    assert main(["demo", "--dataset", "wu2020", "--max-steps", "2", "--output", str(tmp_path), "--no-progress"]) == 0
    res = json.loads((tmp_path / "finetune" / "training_results.json").read_text())
    assert res["input_kind"] == "counts" and len(res["labels"]) == 16
    assert res["n_train_cells"] + res["n_val_cells"] + res["n_test_cells"] == 200
    pred = ad.read_h5ad(tmp_path / "predictions.h5ad")
    assert list(pred.obs_names) == list(cells.obs_names) and pred.obsm["cellfm_proba"].shape == (200, 16)
    assert "the same network from scratch" in capsys.readouterr().out


def test_predict_keeps_every_cell_and_its_name(trained, cellfm_inputs, tmp_path):
    """The predictions line up with the user's AnnData by obs_names, a cell without any model gene included
    (no label, NaN probabilities), so `adata.obs["cellfm_pred"] = pred.obs["cellfm_pred"]` just works."""
    from scipy import sparse

    adata = cellfm_inputs["adata"].copy()
    X = adata.X.toarray()
    X[3] = 0  # this cell expresses none of the genes
    adata.X = sparse.csr_matrix(X)
    data = tmp_path / "cells.h5ad"
    adata.write_h5ad(data)
    out = tmp_path / "pred.h5ad"
    assert main(["predict", "--model", str(trained / "best_model.pth"), "--data", str(data), "--output", str(out)]) == 0
    pred = ad.read_h5ad(out)
    assert list(pred.obs_names) == list(adata.obs_names)
    assert pred.obs["cellfm_pred"].isna().tolist() == [i == 3 for i in range(adata.n_obs)]
    assert np.isnan(pred.obsm["cellfm_proba"][3]).all() and np.isnan(pred.obs["cellfm_confidence"].iloc[3])
    scored = np.delete(pred.obsm["cellfm_proba"], 3, axis=0)
    np.testing.assert_allclose(scored.sum(1), 1, atol=1e-5)
    adata.obs["cellfm_pred"] = pred.obs["cellfm_pred"]  # the README's way into the user's own object
    assert adata.obs["cellfm_pred"].notna().sum() == adata.n_obs - 1


def test_demo_without_scanpy_stops_naming_the_extra(tmp_path, monkeypatch, capsys):
    """No silent switch to synthetic cells (issue 17): the default data needs the [demo] extra; nothing is written."""
    import builtins

    real_import = builtins.__import__

    def no_scanpy(name, *args, **kwargs):
        if name == "scanpy" or name.startswith("scanpy."):
            raise ImportError("No module named 'scanpy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scanpy)
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "packages/cellfm-ft[demo]" in err[0] and "--dataset synthetic" in err[0]
    assert not out.exists()


def test_best_model_is_a_self_describing_model_file(trained, tmp_path):
    """best_model.pth carries the ftcore.artefact header (kind, config, data keys, versions); a file of an earlier
    version (no header) loads the same; a file of another kind is refused in one line."""
    from ftcore.artefact import load_model
    from ftcore.errors import UserError

    from cellfm_ft.predict import load_finetuned
    from cellfm_ft.train import KIND
    mf = load_model(trained / "best_model.pth", kind=KIND)
    assert mf.data_keys["genes"] == mf.extra["genes"] and mf.data_keys["labels"] == mf.extra["labels"]
    assert mf.config == mf.extra["model_config"] and set(mf.versions) == {"cellfm-ft", "ftcore", "torch"}
    old = torch.load(trained / "best_model.pth", weights_only=True)
    del old["artefact"]
    torch.save(old, tmp_path / "old.pth")
    new_model, new_keys = load_finetuned(str(trained / "best_model.pth"))
    old_model, old_keys = load_finetuned(str(tmp_path / "old.pth"))
    assert new_keys == old_keys
    assert all(torch.equal(a, b) for a, b in zip(new_model.state_dict().values(), old_model.state_dict().values()))
    old["artefact"] = {**mf.raw["artefact"], "kind": "var-st/complete"}
    torch.save(old, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"other.pth is a var-st/complete model file, not a cellfm-ft fine-tuned model; pass"):
        load_finetuned(str(tmp_path / "other.pth"))
