"""The CLI end to end on tiny sizes: train -> artefacts -> infer / predict / evaluate, and its errors."""

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

from state_tx.cli import main


def test_train_writes_the_seed_layout_in_safe_formats(trained_run):
    run = trained_run
    for name in ("config.yaml", "var_dims.json", "pert_onehot_map.json", "cell_type_onehot_map.json",
                 "batch_onehot_map.json", "data_module.json", "history.json", "training_curve.png"):
        assert (run / name).exists(), name
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert {"last.ckpt", "final.ckpt", "step=3.ckpt", "step=6.ckpt"} <= set(ckpts)
    assert not list(run.rglob("*.pkl"))
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        obj = torch.load(ckpt, weights_only=True)  # no pickled code anywhere
        assert "model" in obj
    vd = json.loads((run / "var_dims.json").read_text())
    assert vd["input_dim"] == vd["output_dim"] == len(vd["gene_names"]) == 24
    pmap = json.loads((run / "pert_onehot_map.json").read_text())
    assert pmap["non-targeting"] == 0 and vd["pert_dim"] == len(pmap) == 7
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["step"] == 6 and "val_pearson_delta" in history[-1]
    assert np.isfinite([h["val_loss"] for h in history]).all()


def test_config_yaml_reproduces_the_run_config(trained_run):
    from state_tx.config import load_run_config

    cfg = load_run_config(config_file=str(trained_run / "config.yaml"))
    assert cfg.model.name == "state_sm" and cfg.model.kwargs["hidden_dim"] == 32
    assert cfg.training.max_steps == 6 and cfg.data.kwargs.pert_col == "gene"


def test_infer_writes_predictions_in_x_keeping_obs(trained_run, tiny_h5ad, tmp_path, tiny_adata):
    out = tmp_path / "pred.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(out), "--model-dir", str(trained_run),
                 "--checkpoint", str(trained_run / "checkpoints" / "final.ckpt"), "--pert-col", "gene"]) == 0
    pred = ad.read_h5ad(out)
    assert pred.n_obs == tiny_adata.n_obs and pred.n_vars == 24  # HVG output space
    assert list(pred.obs_names) == list(tiny_adata.obs_names)
    assert (pred.obs["gene"].astype(str).values == tiny_adata.obs["gene"].astype(str).values).all()
    assert list(pred.var_names) == list(tiny_adata.var_names[tiny_adata.var.highly_variable])
    assert np.isfinite(pred.X).all() and pred.X.std() > 0
    # deterministic given --seed
    out2 = tmp_path / "pred2.h5ad"
    main(["infer", "--adata", str(tiny_h5ad), "--output", str(out2), "--model-dir", str(trained_run)])
    np.testing.assert_allclose(ad.read_h5ad(out2).X, pred.X, rtol=1e-5, atol=1e-6)


def test_infer_selects_training_genes_by_name_from_x(trained_run, tiny_adata, tmp_path):
    a = tiny_adata.copy()
    del a.obsm["X_hvg"]
    src = tmp_path / "all_genes.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "p.h5ad"
    assert main(["infer", "--adata", str(src), "--output", str(out), "--model-dir", str(trained_run)]) == 0
    assert ad.read_h5ad(out).n_vars == 24


def test_infer_feature_mismatch_says_expected_and_got(trained_run, tmp_path, capsys):
    """The seed's 'Expected input features: 2000, but got: 18080' case, with the fix."""
    rng = np.random.default_rng(0)
    a = ad.AnnData(rng.random((20, 55), dtype=np.float32))
    a.obs["gene"] = ["non-targeting"] * 10 + ["X"] * 10
    a.obs["cell_type"] = "K562"
    src = tmp_path / "wrong.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "never.h5ad"
    assert main(["infer", "--adata", str(src), "--output", str(out), "--model-dir", str(trained_run)]) == 2
    err = capsys.readouterr().err
    assert "expected 24 input features" in err and "got 55" in err and "X_hvg" in err
    assert not out.exists()


def test_predict_and_evaluate_write_cell_eval_inputs_and_metrics(trained_run, tmp_path):
    assert main(["predict", "--output_dir", str(trained_run), "--checkpoint", "last.ckpt"]) == 0
    ev = trained_run / "eval_last"
    pred, real = ad.read_h5ad(ev / "adata_pred.h5ad"), ad.read_h5ad(ev / "adata_real.h5ad")
    assert pred.shape == real.shape and (pred.obs["gene"].astype(str).values == real.obs["gene"].astype(str).values).all()
    assert set(real.obs["gene"]) >= {"non-targeting"} and set(real.obs["cell_type"]) == {"HepG2"}
    # the cells keep their own names (the input file's obs_names), not 0..n-1
    assert list(pred.obs_names) == list(real.obs_names) == list(real.obs["obs_name"].astype(str))
    assert not all(name.isdigit() for name in pred.obs_names)
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_perturbations"] == 2  # the two fewshot test perturbations of HepG2
    assert (ev / "HepG2_pert_results.csv").exists() and (ev / "HepG2_agg_results.csv").exists()
    # evaluate on its own gives the same numbers
    out = tmp_path / "ev"
    assert main(["evaluate", "-ap", str(ev / "adata_pred.h5ad"), "-ar", str(ev / "adata_real.h5ad"), "-o", str(out),
                 "--pert-col", "gene", "--celltype-col", "cell_type"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["model"] == pytest.approx(summary["model"])


def test_evaluate_known_case_perfect_prediction_and_baseline(tmp_path, tiny_adata):
    """Predicting the truth: pearson_delta 1, mse 0; the control-mean baseline has mse = |shift|^2."""
    from state_tx.evaluate import evaluate

    real = tiny_adata[:, tiny_adata.var.highly_variable].copy()
    s = evaluate(real, real, "gene", "non-targeting", "cell_type")
    assert s["model"]["pearson_delta"] == pytest.approx(1.0)
    assert s["model"]["mse"] == pytest.approx(0.0, abs=1e-12) and s["model"]["discrimination_score_l1"] == 1.0
    X, g = np.asarray(real.X, dtype=float), real.obs["gene"].astype(str).values
    ct = real.obs["cell_type"].astype(str).values
    p = s["model"]  # noqa: F841 - the table holds per-perturbation values; check one by hand
    p0 = sorted(set(g) - {"non-targeting"})[0]
    m = (g == p0) & (ct == "HepG2")
    c = (g == "non-targeting") & (ct == "HepG2")
    expect = float(np.mean((X[m].mean(0) - X[c].mean(0)) ** 2))
    import pandas as pd

    from state_tx.evaluate import evaluate as ev2

    ev2(real, real, "gene", "non-targeting", "cell_type", tmp_path)
    t = pd.read_csv(tmp_path / "all_results_with_baseline.csv")
    row = t[(t.perturbation == p0) & (t.celltype == "HepG2") & (t.predictor == "control_mean_baseline")]
    assert float(row["mse"].iloc[0]) == pytest.approx(expect, rel=1e-6)


def test_help_lists_the_dotted_overrides(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for key in ("data.kwargs.toml_config_path", "data.kwargs.pert_col", "training.max_steps",
                "training.ckpt_every_n_steps", "model.kwargs.cell_set_len", "state_sm", "output_dir", "name="):
        assert key in text, key


@pytest.mark.parametrize("override,phrase", [
    ("training.max_stepz=3", "did you mean 'training.max_steps'"),
    ("model=state_xl", "choose one of state_sm, state, state_lg"),
    ("model.kwargs.cell_set_lenn=8", "did you mean model.kwargs.cell_set_len"),
    ("wandb.tags=[x]", "Weights & Biases"),
    ("training.devices=4", "torchrun"),
    ("model.kwargs.loss=sinkhorn", "unknown model.kwargs.loss"),
    ("data.kwargs.output_space=hvg", "choose gene"),
])
def test_bad_overrides_are_one_line_errors(override, phrase, make_train_args, tiny_toml, tmp_path, capsys):
    assert main(make_train_args(tiny_toml, tmp_path, extra=[override])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and phrase in err, err
    assert not (tmp_path / "run").exists()


def test_init_from_warm_starts_and_reports(trained_run, make_train_args, tiny_toml, tmp_path, capsys):
    ckpt = trained_run / "checkpoints" / "final.ckpt"
    assert main(make_train_args(tiny_toml, tmp_path, steps=1, extra=[f"model.kwargs.init_from={ckpt}"])) == 0
    assert "Successfully loaded" in capsys.readouterr().out


def test_console_script_runs(tmp_path):
    exe = Path(sys.executable).with_name("state-tx")
    if not exe.exists():
        pytest.skip("console script not installed (pip install -e packages/state-tx)")
    res = subprocess.run([str(exe), "infer", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--model-dir" in res.stdout and "--pert-col" in res.stdout


def test_demo_beats_the_control_mean_baseline(tmp_path):
    """The shared-effect screen (`--design demo`, the default before issue 17), shortened: after a few hundred
    steps the model beats the control mean."""
    from state_tx.cli import run_demo

    res = run_demo(str(tmp_path / "runs"), max_steps=120, seed=0, design="demo",
                   extra=["training.progress=false", "training.lr=3e-3", "model.kwargs.n_layers=1"])
    s = res["summary"]
    assert s["model"]["mse"] < s["control_mean_baseline"]["mse"]
    assert s["model"]["pearson_delta"] > 0.3
    shutil.rmtree(tmp_path / "runs")


@pytest.mark.parametrize("argv, design, steps", [
    ([], "heterogeneous", 2000), (["demo"], "heterogeneous", 2000), (["demo", "--design", "demo"], "demo", 400),
    (["demo", "--design", "heterogeneous", "--max-steps", "7"], "heterogeneous", 7)])
def test_the_no_argument_demo_is_the_heterogeneous_screen(argv, design, steps, monkeypatch):
    """Issue 17: the no-argument demo runs the screen (and budget) where state-tx beats both baselines;
    `--design demo` keeps the shared-effect screen reachable."""
    import state_tx.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run_demo", lambda output_dir, max_steps, seed, extra, design="?", overwrite=False: seen.update(
        design=design, steps=max_steps, seed=seed))
    assert main(argv) == 0
    assert seen == {"design": design, "steps": steps, "seed": 0}


@pytest.mark.slow
def test_the_no_argument_demo_beats_both_baselines(tmp_path, capsys):
    """The demo's defaults (seed 0, 2000 steps, ~2.5 min of one CPU core): state-tx beats the control mean AND
    the mean shift carried over from the other cell types on pearson_delta, mse and discrimination_score_l1,
    and the printed table has all three columns (README "The demo")."""
    assert main(["demo", "--output-dir", str(tmp_path / "runs"), "training.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "state-tx  control mean    mean shift" in out
    s = json.loads((tmp_path / "runs" / "heterogeneous" / "eval_final" / "summary.json").read_text())
    m, ctrl, shift = s["model"], s["control_mean_baseline"], s["mean_shift_baseline"]
    assert m["pearson_delta"] > shift["pearson_delta"] > ctrl["pearson_delta"]
    assert m["mse"] < min(shift["mse"], ctrl["mse"])
    assert m["discrimination_score_l1"] > max(shift["discrimination_score_l1"], ctrl["discrimination_score_l1"])
    for png in ("training_curve.png", "eval_final/model_vs_baselines.png"):
        assert (tmp_path / "runs" / "heterogeneous" / png).stat().st_size > 0
    shutil.rmtree(tmp_path / "runs")


def test_perturbation_features_file_replaces_one_hot(tiny_toml, tiny_perts, tiny_h5ad, make_train_args, tmp_path):
    """ESM2-style vectors per perturbation: pert_dim is their width; inference uses the stored table."""
    feats = tmp_path / "esm2.pt"
    torch.save({p: torch.randn(8) for p in tiny_perts}, feats)  # no control vector: it gets zeros
    assert main(make_train_args(tiny_toml, tmp_path, steps=2,
                                extra=[f"data.kwargs.perturbation_features_file={feats}"])) == 0
    run = tmp_path / "run"
    vd = json.loads((run / "var_dims.json").read_text())
    assert vd["pert_dim"] == 8 and vd["pert_rep"] == "features"
    from safetensors.torch import load_file

    table = load_file(run / "pert_features.safetensors")["pert_features"]
    assert table.shape == (7, 8) and float(table[0].abs().sum()) == 0.0
    out = tmp_path / "p.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(out), "--model-dir", str(run)]) == 0
    assert ad.read_h5ad(out).n_vars == 24


def test_infer_flags_name_this_files_columns_and_control_label(trained_run, tiny_h5ad, tiny_adata, tmp_path, capsys):
    """Seed 6.2: --pert-col / --batch-col / --control-pert describe the input file, whose names may differ
    from training; the file's control cells take the trained control's encoding."""
    a = tiny_adata.copy()
    # "ntc" sorts where "non-targeting" does, so the seeded basal draws match the reference run
    a.obs["target"] = a.obs.pop("gene").astype(str).replace({"non-targeting": "ntc"})
    a.obs["plate"] = a.obs.pop("gem_group")
    src = tmp_path / "renamed.h5ad"
    a.write_h5ad(src)
    ref, out = tmp_path / "ref.h5ad", tmp_path / "renamed_pred.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(ref), "--model-dir", str(trained_run)]) == 0
    assert main(["infer", "--adata", str(src), "--output", str(out), "--model-dir", str(trained_run),
                 "--pert-col", "target", "--batch-col", "plate", "--control-pert", "ntc"]) == 0
    pred = ad.read_h5ad(out)
    assert list(pred.obs["target"].astype(str)) == list(a.obs["target"])  # obs as given
    np.testing.assert_allclose(pred.X, ad.read_h5ad(ref).X, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    # without --control-pert the file has no cells of the trained control label: say which flag fixes it
    assert main(["infer", "--adata", str(src), "--output", str(tmp_path / "never.h5ad"), "--model-dir",
                 str(trained_run), "--pert-col", "target"]) == 2
    err = capsys.readouterr().err
    assert "no control cells ('non-targeting'" in err and "--control-pert" in err
    assert "most frequent labels: ntc" in err  # what the file has (ntc has the most cells)
    assert not (tmp_path / "never.h5ad").exists()


def test_batch_encoder_trains_and_infer_reads_the_batch_col(tiny_toml, tiny_adata, make_train_args, tmp_path):
    """model.kwargs.batch_encoder=True (seed example 1): a batch embedding per gem group is trained and used
    at inference through --batch-col; predict --split val runs on the same run."""
    assert main(make_train_args(tiny_toml, tmp_path, steps=2, extra=["model.kwargs.batch_encoder=True"])) == 0
    run = tmp_path / "run"
    sd = torch.load(run / "checkpoints" / "final.ckpt", weights_only=True)["model"]
    assert sd["batch_encoder.weight"].shape == (2, 32)  # 2 gem groups x hidden_dim
    assert json.loads((run / "batch_onehot_map.json").read_text()) == {"batch0": 0, "batch1": 1}
    a = tiny_adata.copy()
    a.obs["plate"] = a.obs.pop("gem_group")
    src = tmp_path / "plate.h5ad"
    a.write_h5ad(src)
    with_batch, without = tmp_path / "with.h5ad", tmp_path / "without.h5ad"
    assert main(["infer", "--adata", str(src), "--output", str(with_batch), "--model-dir", str(run),
                 "--batch-col", "plate"]) == 0
    assert main(["infer", "--adata", str(src), "--output", str(without), "--model-dir", str(run)]) == 0
    # unknown batches get no offset, known ones their embedding: the two predictions differ
    assert not np.allclose(ad.read_h5ad(with_batch).X, ad.read_h5ad(without).X)
    assert main(["predict", "--output-dir", str(run), "--split", "val"]) == 0
    summary = json.loads((run / "eval_final" / "summary.json").read_text())
    assert summary["split"] == "val" and summary["n_perturbations"] == 2  # the two fewshot val perturbations


def test_output_space_all_trains_on_x_and_infer_keeps_var(tiny_toml, tiny_h5ad, tiny_adata, make_train_args, tmp_path):
    """data.kwargs.output_space=all: the model reads and predicts X (all genes); infer keeps the file's var."""
    assert main(make_train_args(tiny_toml, tmp_path, steps=2, extra=["data.kwargs.output_space=all"])) == 0
    run = tmp_path / "run"
    vd = json.loads((run / "var_dims.json").read_text())
    assert vd["input_dim"] == vd["output_dim"] == tiny_adata.n_vars and vd["matrix_key"] == "X"
    assert vd["gene_names"] == list(tiny_adata.var_names)
    out = tmp_path / "p.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(out), "--model-dir", str(run)]) == 0
    pred = ad.read_h5ad(out)
    assert pred.shape == tiny_adata.shape and list(pred.var_names) == list(tiny_adata.var_names)
    assert list(pred.var["highly_variable"]) == list(tiny_adata.var["highly_variable"])
    assert np.isfinite(pred.X).all()


def test_run_records_the_kind_of_values_and_infer_refuses_another(trained_run, tiny_adata, tmp_path, capsys):
    """ftcore.data's rule: the run was trained on log-normalised values; raw counts into it are refused."""
    assert json.loads((trained_run / "var_dims.json").read_text())["expression_kind"] == "log"
    a = tiny_adata.copy()
    a.obsm["X_hvg"] = np.round(np.expm1(np.asarray(a.obsm["X_hvg"])) * 10).astype(np.float32)
    src = tmp_path / "counts.h5ad"
    a.write_h5ad(src)
    out = tmp_path / "never.h5ad"
    assert main(["infer", "--adata", str(src), "--output", str(out), "--model-dir", str(trained_run)]) == 2
    assert "trained on log values" in capsys.readouterr().err and not out.exists()


def test_training_on_raw_counts_warns_by_the_core_rule(tiny_toml, tiny_adata, make_train_args, tmp_path, capsys):
    from state_tx.data import H5Source
    from state_tx.train import check_training_values

    a = tiny_adata.copy()
    a.obsm["X_hvg"] = np.round(np.expm1(np.asarray(a.obsm["X_hvg"])) * 10).astype(np.float32)
    a.write_h5ad(tmp_path / "counts.h5ad")

    class Meta:
        source = H5Source(tmp_path / "counts.h5ad", "gene")

    assert check_training_values([Meta()]) == "counts"
    assert "raw counts" in capsys.readouterr().out


def test_evaluate_writes_a_cell_type_with_a_slash_as_one_file(tiny_adata, tmp_path):
    from state_tx.evaluate import evaluate

    real = tiny_adata[:, tiny_adata.var.highly_variable].copy()
    real.obs["cell_type"] = real.obs["cell_type"].astype(str).replace({"K562": "CD4+/CD8+ T"})
    evaluate(real, real, "gene", "non-targeting", "cell_type", tmp_path / "ev")
    assert (tmp_path / "ev" / "CD4+_CD8+ T_pert_results.csv").is_file()


def test_nan_loss_mid_training_leaves_no_run_folder(tiny_toml, make_train_args, tmp_path, capsys):
    out = tmp_path / "out"
    args = make_train_args(tiny_toml, out, steps=6, extra=["training.lr=1e3", "training.gradient_clip_val=0",
                                                           "training.lr_schedule=constant", "model.kwargs.loss=mse"])
    assert main(args) == 2
    assert "training loss became" in capsys.readouterr().err
    assert not out.exists()


def _readme_scanpy_example() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("<!-- scanpy example: tests/test_state_tx_cli.py runs it -->", 1)[1]
    return block.split("```python", 1)[1].split("```", 1)[0]


def test_infer_output_is_the_core_layout_and_the_readme_scanpy_example_runs(trained_run, tiny_h5ad, tiny_adata,
                                                                              tmp_path, monkeypatch):
    """X = predictions, var_names = genes, obs_names kept, layers['measured'] = the input's own values; the
    README's scanpy lines run on the file as written there."""
    out = tmp_path / "predictions.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(out), "--model-dir", str(trained_run)]) == 0
    pred = ad.read_h5ad(out)
    hvg = tiny_adata.var.highly_variable.to_numpy()
    assert list(pred.var_names) == list(tiny_adata.var_names[hvg]) and list(pred.obs_names) == list(tiny_adata.obs_names)
    np.testing.assert_array_equal(pred.layers["measured"], tiny_adata.obsm["X_hvg"])
    assert "X_hvg" not in pred.obsm and pred.uns["prediction"]["model"] == "state-tx"
    assert not np.allclose(pred.X, pred.layers["measured"])
    code = _readme_scanpy_example()
    assert "sc.read_h5ad(\"predictions.h5ad\")" in code
    monkeypatch.chdir(tmp_path)
    import matplotlib.pyplot as plt

    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own lines
    assert namespace["pred"].n_vars == pred.n_vars and plt.get_fignums()
    plt.close("all")


def test_checkpoints_are_self_describing_model_files(trained_run, tmp_path):
    """final.ckpt and the Trainer's checkpoints carry the ftcore.artefact header: kind, model config, the data keys
    of var_dims.json and the one-hot maps, versions; a final.ckpt of an earlier version (no header) still loads."""
    from ftcore.artefact import load_model
    from state_tx.predict import load_run
    from state_tx.train import KIND

    vd = json.loads((trained_run / "var_dims.json").read_text())
    pmap = json.loads((trained_run / "pert_onehot_map.json").read_text())
    for ckpt in (trained_run / "checkpoints").glob("*.ckpt"):
        mf = load_model(ckpt, kind=KIND)
        assert mf.data_keys["gene_names"] == vd["gene_names"] and mf.data_keys["perts"] == sorted(pmap, key=pmap.get)
        assert mf.config == json.loads((trained_run / "data_module.json").read_text())["model_config"]
        assert set(mf.versions) == {"state-tx", "ftcore", "torch"}
    old = torch.load(trained_run / "checkpoints" / "final.ckpt", weights_only=True)
    del old["artefact"]
    copy = tmp_path / "old_run"
    shutil.copytree(trained_run, copy)
    torch.save(old, copy / "checkpoints" / "final.ckpt")
    new_model, old_model = load_run(trained_run, device="cpu").model, load_run(copy, device="cpu").model
    assert all(torch.equal(a, b) for a, b in zip(new_model.state_dict().values(), old_model.state_dict().values()))


def test_model_preset_spelling_in_overrides_and_files(tmp_path):
    """`model=state_sm` (Hydra's spelling) names model.name on the command line and in a --config file, and a
    later override beats the file without dropping the file's model.kwargs."""
    from state_tx.config import load_run_config

    assert load_run_config(["model=state_sm"]).model.name == "state_sm"
    flat = tmp_path / "flat.yaml"
    flat.write_text("model: state_lg\n")
    assert load_run_config(config_file=str(flat)).model.name == "state_lg"
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  name: state_lg\n  kwargs:\n    cell_set_len: 8\n")
    cfg = load_run_config(["model=state_sm"], config_file=str(nested))
    assert (cfg.model.name, cfg.model.kwargs) == ("state_sm", {"cell_set_len": 8})


def test_trainer_settings_keep_the_seeds_names():
    """training.* in arc-state's words reach the core Trainer under its own (TRAINER_KEYS)."""
    from state_tx.train import train_config
    from state_tx.config import load_run_config

    cfg = load_run_config(["training.val_freq=7", "training.ckpt_every_n_steps=9", "training.lr_schedule=constant",
                           "training.gradient_clip_val=0", "training.train_seed=5", "training.max_steps=11"])
    tc = train_config(cfg, has_val=True)
    assert (tc.val_every_steps, tc.ckpt_every_steps, tc.schedule, tc.grad_clip, tc.seed, tc.max_steps, tc.epochs) == \
        (7, 9, "constant", None, 5, 11, 0)
    assert train_config(cfg, has_val=False).best_name is None


@pytest.mark.parametrize("mode", ["only", "append"])
def test_pert_train_shift_trains_predicts_and_infers_with_the_stored_table(tiny_toml, tiny_h5ad, make_train_args,
                                                                           tmp_path, mode):
    """data.kwargs.pert_train_shift (+ model.kwargs.basal_residual): the training-split shift table is written
    beside the maps, read back by predict and infer (a zeroed table changes the predictions), and the encoding
    is the shift alone (only) or the one-hot and the shift (append)."""
    from safetensors.torch import load_file, save_file

    extra = [f"data.kwargs.pert_train_shift={mode}", "model.kwargs.basal_residual=true"]
    assert main(make_train_args(tiny_toml, tmp_path, steps=3, extra=extra)) == 0
    run = tmp_path / "run"
    vd = json.loads((run / "var_dims.json").read_text())
    table = load_file(run / "pert_train_shift.safetensors")["pert_train_shift"]
    assert vd["pert_train_shift"] == mode and vd["cell_types"] == ["HepG2", "K562"]
    assert table.shape == (3, 7, 24) and vd["pert_dim"] == 24 + (7 if mode == "append" else 0)
    from state_tx.data import rms_scale

    assert vd["pert_train_shift_scale"] > 0 and rms_scale(table) == pytest.approx(1.0, abs=1e-4)  # stored scaled
    assert main(["predict", "--output-dir", str(run)]) == 0
    pred = ad.read_h5ad(run / "eval_final" / "adata_pred.h5ad").X
    out = tmp_path / "p.h5ad"
    assert main(["infer", "--adata", str(tiny_h5ad), "--output", str(out), "--model-dir", str(run)]) == 0
    assert np.isfinite(ad.read_h5ad(out).X).all()
    save_file({"pert_train_shift": torch.zeros_like(table)}, run / "pert_train_shift.safetensors")
    shutil.rmtree(run / "eval_final")
    assert main(["predict", "--output-dir", str(run)]) == 0
    assert not np.allclose(ad.read_h5ad(run / "eval_final" / "adata_pred.h5ad").X, pred)


def test_pert_train_shift_only_refuses_a_features_file(tiny_toml, make_train_args, tmp_path, capsys):
    feats = tmp_path / "f.pt"
    torch.save({"a": torch.zeros(3)}, feats)
    extra = ["data.kwargs.pert_train_shift=only", f"data.kwargs.perturbation_features_file={feats}"]
    assert main(make_train_args(tiny_toml, tmp_path / "o", steps=1, extra=extra)) == 2
    assert "pert_train_shift=append" in capsys.readouterr().err and not (tmp_path / "o").exists()
