"""CLI end to end on tiny data: stage 1 -> stage 2 -> predict -> evaluate, artefacts and errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import torch

from var_st.cli import main
from var_st.model import TwoStageVARST


def run_dir(log_dir: Path) -> Path:
    return log_dir / "tiny" / "TWO_STAGE_VAR_ST"


def test_training_writes_the_guide_layout_and_history(trained_run):
    root = run_dir(trained_run)
    for rel in ("stage1_vqvae/best_vqvae.ckpt", "stage1_vqvae/last.ckpt", "stage1_vqvae/history.json",
                "stage1_vqvae/training_curve.png", "stage1_vqvae/split.json", "stage2_var/best_var.ckpt",
                "stage2_var/history.json", "complete_model.ckpt"):
        assert (root / rel).exists(), rel
    h1 = json.loads((root / "stage1_vqvae/history.json").read_text())
    assert len(h1) == 2
    for key in ("val_recon_loss", "val_vq_loss", "perplexity_s1", "perplexity_s24", "utilisation_s8",
                "utilisation", "dead_codes_restarted", "val_recon_pearson"):
        assert key in h1[-1], key
    h2 = json.loads((root / "stage2_var/history.json").read_text())
    assert {"val_loss", "val_token_accuracy", "val_pearson", "val_token_accuracy_s1"} <= set(h2[-1])
    model = TwoStageVARST.load_complete_model(root / "complete_model.ckpt")
    assert model.get_model_info()["sequence_length"] == 1 + 4 + 8 + 24 and len(model.gene_names) == 24


def test_predict_writes_the_prediction_layout(trained_run, tiny_h5ad, tmp_path):
    # issue 17: X = predictions with var_names = the model's genes (was obsm['var_st_prediction'] + X untouched)
    out = tmp_path / "pred.h5ad"
    common = ["--checkpoint", str(run_dir(trained_run) / "complete_model.ckpt"), "--dataset", str(tiny_h5ad), "--gpus", "0"]
    assert main(["predict", *common, "--output", str(out)]) == 0
    ad, original = anndata.read_h5ad(out), anndata.read_h5ad(tiny_h5ad)
    model = TwoStageVARST.load_complete_model(run_dir(trained_run) / "complete_model.ckpt")
    assert ad.shape == (original.n_obs, 24) and list(ad.var_names) == model.gene_names
    assert list(ad.obs_names) == list(original.obs_names) and list(ad.obs["slide"]) == list(original.obs["slide"])
    np.testing.assert_array_equal(ad.obsm["spatial"], original.obsm["spatial"])
    # the measured values of the same genes, log-normalised as the model sees them
    cols = [list(original.var_names).index(g) for g in model.gene_names]
    counts = original.X
    np.testing.assert_allclose(ad.layers["measured"], np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)[:, cols],
                               rtol=1e-5, atol=1e-5)
    assert not np.allclose(ad.X, ad.layers["measured"])
    assert ad.uns["prediction"]["model"] == "var-st" and ad.uns["var_st"]["decoding"] == "expected"
    # sampled predictions are reproducible with the seed and differ from another seed
    outs = []
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        path = tmp_path / f"{name}.h5ad"
        assert main(["predict", *common, "--output", str(path), "--decoding", "sample", "--top_k", "5", "--seed", str(seed)]) == 0
        outs.append(anndata.read_h5ad(path).X)
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_evaluate_reports_model_ceiling_and_ridge(trained_run, tiny_h5ad, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(run_dir(trained_run) / "complete_model.ckpt"), "--dataset",
                 str(tiny_h5ad), "--output", str(out), "--gpus", "0"]) == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"var_st", "stage1_reconstruction_ceiling", "ridge_histology"}
    for m in report["methods"].values():
        assert set(m) == {"pearson_mean_all_genes", "pearson_mean_top50_hvg", "mse", "mae"}
        assert np.isfinite(m["mse"]) and m["mse"] >= 0
    assert report["n_eval_spots"] == 25 and report["split"] == "test"  # the held-out slide
    assert (tmp_path / "pred_vs_true.png").exists()
    assert "ridge_histology" in capsys.readouterr().out


def test_stage2_without_stage1_checkpoint_is_a_clear_error(tiny_h5ad, tiny_config, tiny, tmp_path, capsys):
    args = tiny.train_args(tiny_h5ad, tiny_config, tmp_path, stage=2)
    args = args[: args.index("--stage1_ckpt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt") and "\n" not in err
    assert not (tmp_path / "tiny").exists()


def test_guide_spelling_without_subcommand_means_train(tiny_h5ad, tiny_config, tiny, tmp_path):
    args = tiny.train_args(tiny_h5ad, tiny_config, tmp_path, stage=1, epochs=1)[1:]  # drop "train"
    assert main(["--model", "TWO_STAGE_VAR_ST", *args, "--max_steps", "1"]) == 0
    assert (run_dir(tmp_path) / "stage1_vqvae" / "best_vqvae.ckpt").exists()


def test_console_script_help():
    exe = Path(sys.executable).with_name("var-st")
    out = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for flag in ("--dataset", "--training_stage", "--stage1_ckpt", "--epochs", "--batch_size", "--lr", "--gpus", "--debug"):
        assert flag in out.stdout


def test_rerun_resumes_instead_of_retraining(trained_run, tiny_h5ad, tiny_config, tiny, capsys):
    before = torch.load(run_dir(trained_run) / "stage1_vqvae" / "last.ckpt", weights_only=True)["step"]
    assert main(tiny.train_args(tiny_h5ad, tiny_config, trained_run, stage=1)) == 0
    assert "resuming from" in capsys.readouterr().out
    after = torch.load(run_dir(trained_run) / "stage1_vqvae" / "last.ckpt", weights_only=True)["step"]
    assert before == after


def test_demo_data_command(tmp_path):
    out = tmp_path / "d.h5ad"
    assert main(["make-demo-data", "--output", str(out), "--slides", "2", "--grid", "4", "--genes", "30",
                 "--histology_dim", "8"]) == 0
    ad = anndata.read_h5ad(out)
    assert ad.shape == (32, 30) and ad.obsm["histology"].shape == (32, 8) and set(ad.obs["slide"]) == {"slide0", "slide1"}
    assert os.listdir(tmp_path) == ["d.h5ad"]


def test_stage2_with_a_wrong_stage1_path_names_the_path(tiny_h5ad, tiny_config, tiny, tmp_path, capsys):
    args = tiny.train_args(tiny_h5ad, tiny_config, tmp_path, stage=2)
    args[args.index("--stage1_ckpt") + 1] = str(tmp_path / "nowhere" / "best_vqvae.ckpt")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "nowhere/best_vqvae.ckpt does not exist" in err and "\n" not in err
    assert not (tmp_path / "tiny").exists()


def test_info_prints_model_info(trained_run, capsys):
    assert main(["info", str(run_dir(trained_run) / "complete_model.ckpt")]) == 0
    out = capsys.readouterr().out
    assert "current_stage: 2" in out and "sequence_length: 37" in out and "total_parameters: " in out


def test_no_arguments_runs_the_demo_as_the_four_guide_commands(monkeypatch):
    import var_st.cli as cli

    calls = []
    for name in ("train", "predict", "evaluate"):
        monkeypatch.setitem(cli.COMMANDS, name, lambda args, name=name: calls.append((name, args)))
    assert main([]) == 0
    assert [c[0] for c in calls] == ["train", "train", "predict", "evaluate"]
    (_, s1), (_, s2), (_, pred), (_, ev) = calls
    assert s1.training_stage == 1 and s1.dataset == "demo" and s1.stage1_ckpt is None
    assert s2.training_stage == 2 and s2.stage1_ckpt == str(Path("logs/demo/TWO_STAGE_VAR_ST/stage1_vqvae/best_vqvae.ckpt"))
    assert pred.dataset == "demo" and ev.predictions == str(Path("logs/demo/TWO_STAGE_VAR_ST/predictions.h5ad"))


def test_stage_files_are_self_describing_model_files(trained_run):
    """best_vqvae.ckpt, best_var.ckpt and complete_model.ckpt carry the ftcore.artefact header: the kind, the
    configs, the genes and the versions that wrote them, the same as the metadata beside the weights."""
    from ftcore.artefact import load_model
    from var_st.model import COMPLETE_KIND, STAGE1_KIND

    root = run_dir(trained_run)
    stage1 = load_model(root / "stage1_vqvae" / "best_vqvae.ckpt", kind=STAGE1_KIND)
    for path in (root / "stage2_var" / "best_var.ckpt", root / "complete_model.ckpt"):
        mf = load_model(path, kind=COMPLETE_KIND)
        assert mf.config == {k: mf.extra[k] for k in ("num_genes", "vqvae_config", "var_config")}
        assert mf.data_keys["gene_names"] == stage1.data_keys["gene_names"] == mf.extra["gene_names"]
        assert mf.config["vqvae_config"] == stage1.config["vqvae_config"]
        assert set(mf.versions) == {"var-st", "ftcore", "torch"}
    # stage 1 holds the VQ-VAE alone: its tensors are the complete model's vqvae.* ones
    assert {f"vqvae.{k}" for k in stage1.state} == {k for k in mf.state if k.startswith("vqvae.")}
