"""Issue 17, the newcomer's path: histology-only prediction, the run's data contract (keys, genes, preset,
split kept in the checkpoint), the prediction layout scanpy plots, the real Visium data set, and plots
that say what they show."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import anndata
import numpy as np
import pytest
import torch

import var_st.cli as cli
from var_st.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_bad_input  # noqa: E402


def complete(log_dir: Path, name: str = "tiny") -> Path:
    return log_dir / name / "TWO_STAGE_VAR_ST" / "complete_model.ckpt"


def _extra(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["extra"]


# ----------------------------------------------------------------------------- 1. histology-only prediction
def _histology_only(ad, how: str):
    if how == "no_X":
        return anndata.AnnData(obs=ad.obs.copy(), obsm={k: ad.obsm[k] for k in ad.obsm})
    return ad[:, :0].copy()  # an empty var


@pytest.mark.parametrize("how", ["no_X", "empty_var"])
def test_predict_needs_no_expression(trained_run, tiny_h5ad, tmp_path, how, capsys):
    ckpt = complete(trained_run)
    full, bare = tmp_path / "full.h5ad", tmp_path / "bare.h5ad"
    original = anndata.read_h5ad(tiny_h5ad)
    _histology_only(original, how).write_h5ad(tmp_path / "in.h5ad")
    assert anndata.read_h5ad(tmp_path / "in.h5ad").n_vars == 0
    assert main(["predict", "--checkpoint", str(ckpt), "--dataset", str(tiny_h5ad), "--output", str(full), "--gpus", "0"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(ckpt), "--dataset", str(tmp_path / "in.h5ad"), "--output", str(bare),
                 "--gpus", "0"]) == 0
    assert "no layers['measured']: no expression in the file (histology only)" in capsys.readouterr().out
    a, b = anndata.read_h5ad(full), anndata.read_h5ad(bare)
    np.testing.assert_array_equal(a.X, b.X)  # expression never enters a prediction
    assert list(b.var_names) == list(a.var_names) and "measured" not in b.layers and "measured" in a.layers
    assert b.uns["prediction"]["measured_layer"] == ""


def test_evaluate_still_needs_expression(trained_run, tiny_h5ad, tmp_path, capsys):
    _histology_only(anndata.read_h5ad(tiny_h5ad), "no_X").write_h5ad(tmp_path / "in.h5ad")
    err = check_bad_input(main, ["evaluate", "--checkpoint", str(complete(trained_run)), "--dataset",
                                 str(tmp_path / "in.h5ad"), "--output", str(tmp_path / "out" / "m.json"), "--gpus", "0"],
                          capsys, "X is empty (a histology-only file)", watch=(tmp_path / "out",))
    assert "var-st predict needs only histology and coordinates" in err


def test_predict_on_scaled_x_predicts_without_a_measured_layer(trained_run, tiny_h5ad, tmp_path, capsys):
    ad = anndata.read_h5ad(tiny_h5ad)
    ad.X = (np.log1p(ad.X) - np.log1p(ad.X).mean(0)).astype(np.float32)  # scaled: not usable as expression
    ad.write_h5ad(tmp_path / "scaled.h5ad")
    assert main(["predict", "--checkpoint", str(complete(trained_run)), "--dataset", str(tmp_path / "scaled.h5ad"),
                 "--output", str(tmp_path / "p.h5ad"), "--gpus", "0"]) == 0
    assert "X is not usable as expression" in capsys.readouterr().out
    assert "measured" not in anndata.read_h5ad(tmp_path / "p.h5ad").layers


# ----------------------------------------------------------------------------- 3. one prediction layout
def test_evaluate_reads_the_prediction_layout_and_the_old_one(trained_run, tiny_h5ad, tmp_path):
    ckpt = complete(trained_run)
    pred = tmp_path / "pred.h5ad"
    assert main(["predict", "--checkpoint", str(ckpt), "--dataset", str(tiny_h5ad), "--output", str(pred), "--gpus", "0"]) == 0
    # an older version's file: obsm['var_st_prediction'] with the gene names in uns, X the input's
    new = anndata.read_h5ad(pred)
    old = anndata.read_h5ad(tiny_h5ad)
    order = np.random.default_rng(0).permutation(new.n_vars)  # columns named, not positional
    old.obsm["var_st_prediction"] = new.X[:, order]
    old.uns["var_st"] = {"genes": list(new.var_names[order])}
    old.write_h5ad(tmp_path / "old.h5ad")
    reports = []
    for name, extra in (("now", []), ("new", ["--predictions", str(pred)]),
                        ("old", ["--predictions", str(tmp_path / "old.h5ad")])):
        out = tmp_path / name / "metrics.json"
        assert main(["evaluate", "--checkpoint", str(ckpt), "--dataset", str(tiny_h5ad), "--output", str(out),
                     "--gpus", "0", *extra]) == 0
        reports.append(json.loads(out.read_text())["methods"]["var_st"])
    assert reports[0] == pytest.approx(reports[1], rel=1e-5) and reports[1] == pytest.approx(reports[2], rel=1e-6)


def test_evaluate_refuses_a_file_that_is_not_predictions(trained_run, tiny_h5ad, tmp_path, capsys):
    check_bad_input(main, ["evaluate", "--checkpoint", str(complete(trained_run)), "--dataset", str(tiny_h5ad),
                           "--predictions", str(tiny_h5ad), "--output", str(tmp_path / "out" / "m.json"), "--gpus", "0"],
                    capsys, "is not a predictions file", watch=(tmp_path / "out",))


def _readme_scanpy_example() -> str:
    text = README.read_text()
    block = re.search(r"<!-- scanpy example, run by tests/test_var_st_io.py -->\s*```python\n(.*?)```", text, re.S)
    assert block, "the README's scanpy example block is missing"
    return block.group(1)


def test_readme_scanpy_example_plots_a_predicted_gene(trained_run, tiny_h5ad, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    code = _readme_scanpy_example()
    lines = [line for line in code.strip().splitlines() if line.strip() and not line.startswith("import")]
    assert len(lines) == 2, code  # the two lines a scanpy user types
    assert main(["predict", "--checkpoint", str(complete(trained_run)), "--dataset", str(tiny_h5ad), "--output",
                 str(tmp_path / "logs/demo/TWO_STAGE_VAR_ST/predictions.h5ad"), "--gpus", "0"]) == 0
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plt, "show", lambda *a, **k: None)
    plt.close("all")
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    pred = namespace["pred"]
    gene = str(pred.var_names[0])
    ax = next(a for a in plt.gcf().axes if a.get_title() == gene)
    drawn = np.asarray(ax.collections[0].get_array(), dtype=np.float32)
    np.testing.assert_allclose(np.sort(drawn), np.sort(pred[:, gene].X.ravel()), rtol=1e-6)  # the predicted values


# ----------------------------------------------------------------------------- 2. the run's data contract
@pytest.fixture(scope="module")
def renamed(tmp_path_factory, tiny):
    """Tiny data whose keys are not the defaults: obsm 'feats' / 'xy', obs 'sample'."""
    ad = tiny.adata()
    ad.obsm["feats"], ad.obsm["xy"] = ad.obsm.pop("histology"), ad.obsm.pop("spatial")
    ad.obs["sample"] = ad.obs.pop("slide")
    path = tmp_path_factory.mktemp("renamed") / "renamed.h5ad"
    ad.write_h5ad(path)
    return path


def _train(args, capsys) -> str:
    assert main(args) == 0
    return capsys.readouterr().out


def test_later_stages_keep_stage1s_keys_split_and_sizes(renamed, tiny_config, tiny, tmp_path, capsys, monkeypatch):
    log = tmp_path / "logs"
    stage1 = tiny.train_args(renamed, tiny_config, log, stage=1, epochs=1,
                             extra=["--histology_key", "feats", "--spatial_key", "xy", "--slide_key", "sample",
                                    "--test_slides", "slide0"])
    out = _train(stage1, capsys)
    s1 = log / "renamed" / "TWO_STAGE_VAR_ST" / "stage1_vqvae" / "best_vqvae.ckpt"
    data = _extra(s1)["data"]
    assert (data["histology_key"], data["spatial_key"], data["slide_key"], data["preset"]) == ("feats", "xy", "sample", "demo")
    assert data["split"]["test_slides"] == ["slide0"] and data["split"]["val_slides"] == ["slide2"]
    # the printed next command is complete: pasted as it is (plus a short budget) it trains stage 2
    nxt = next(line for line in out.splitlines() if line.startswith("next: "))[len("next: "):]
    argv = shlex.split(nxt)
    assert argv[:2] == ["var-st", "train"]
    for flag, value in (("--preset", "demo"), ("--histology_key", "feats"), ("--spatial_key", "xy"),
                        ("--slide_key", "sample"), ("--test_slides", "slide0"), ("--val_slides", "slide2")):
        assert argv[argv.index(flag) + 1] == value, (flag, nxt)
    out2 = _train(argv[2:] + ["--epochs", "1", "--batch_size", "16"], capsys)
    first = _extra(complete(log, "renamed"))
    # stage 2's printed next commands (predict, evaluate) are complete too: they run as printed, no key flag
    # added, and write beside the complete model (this run's --log_dir), not into ./logs of the current folder
    printed = [ln.split(": ", 1)[-1].strip() for ln in out2.splitlines()[-2:]]
    assert [shlex.split(c)[:2] for c in printed] == [["var-st", "predict"], ["var-st", "evaluate"]], out2
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    for command in printed:
        assert main(shlex.split(command)[1:] + ["--gpus", "0"]) == 0, command
    assert not any((tmp_path / "elsewhere").iterdir())
    assert anndata.read_h5ad(complete(log, "renamed").with_name("predictions.h5ad")).n_vars == 24
    # and without any of those flags (the stage-1 checkpoint says them): the same stored contract; another --seed
    # changes the initial weights, not the split
    bare = ["train", "--dataset", str(renamed), "--training_stage", "2", "--stage1_ckpt", str(s1), "--epochs", "1",
            "--batch_size", "16", "--log_dir", str(tmp_path / "bare"), "--gpus", "0", "--seed", "3"]
    _train(bare, capsys)
    second = _extra(complete(tmp_path / "bare", "renamed"))
    assert first["data"]["split"]["fingerprint"] == second["data"]["split"]["fingerprint"] == data["split"]["fingerprint"]
    assert second["var_config"]["embed_dim"] == 16  # tiny.yaml's VAR sizes, stored by stage 1, without --config
    assert (second["data"]["histology_key"], second["data"]["slide_key"]) == ("feats", "sample")
    # predict and evaluate find the keys and the split in the complete checkpoint
    assert main(["predict", "--checkpoint", str(complete(log, "renamed")), "--dataset", str(renamed), "--output",
                 str(tmp_path / "p.h5ad"), "--gpus", "0"]) == 0
    assert main(["evaluate", "--checkpoint", str(complete(log, "renamed")), "--dataset", str(renamed), "--output",
                 str(tmp_path / "m.json"), "--gpus", "0"]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["split_rule"].startswith("by slide: test slide0, val slide2") and report["n_eval_spots"] == 25
    # a split that contradicts the stored one is refused, before anything is written
    for flags in (["--test_slides", "slide2"], ["--random_split"]):
        err = check_bad_input(main, bare[:-6] + ["--log_dir", str(tmp_path / "x"), "--gpus", "0", *flags], capsys,
                              "other than the one stored in", watch=(tmp_path / "x",))
        assert "stage 2 would train on spots stage 1 held out" in err
        check_bad_input(main, ["evaluate", "--checkpoint", str(complete(log, "renamed")), "--dataset", str(renamed),
                               "--output", str(tmp_path / "x" / "m.json"), "--gpus", "0", *flags], capsys,
                        "the evaluation would score spots the model was trained or selected on", watch=(tmp_path / "x",))
    # the stage-2 size mismatch names the complete command, --preset and the keys included
    err = check_bad_input(main, bare[:-6] + ["--log_dir", str(tmp_path / "x"), "--gpus", "0", "--set",
                                             "var.vocab_size=64"], capsys, "config sets var.vocab_size = 64",
                          watch=(tmp_path / "x",))
    fix = shlex.split(err.split("e.g. ", 1)[1])
    assert fix[fix.index("--preset") + 1] == "demo" and fix[fix.index("--histology_key") + 1] == "feats"
    assert "var.vocab_size=64" not in fix


def test_default_preset_for_user_data(monkeypatch):
    import ftcore.training

    args = cli.build_parser().parse_args(["train", "--gpus", "0"])
    assert cli._default_preset(args, 50_000, builtin=False)[0] == "demo"  # the CPU: never the 123M default
    assert cli._default_preset(args, 50, builtin=True)[0] == "demo"
    monkeypatch.setattr(ftcore.training, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(cli, "_device", lambda gpus: "cuda")
    assert cli._default_preset(args, cli.FULL_PRESET_MIN_SPOTS, builtin=False)[0] == "full"
    assert cli._default_preset(args, cli.FULL_PRESET_MIN_SPOTS - 1, builtin=False)[0] == "demo"
    args.preset = "full"
    assert cli._default_preset(args, 10, builtin=False) == ("full", "--preset")


def test_old_checkpoints_without_a_stored_split_keep_working():
    old = {"data": {"dataset": "PRAD", "histology_key": "uni", "spatial_key": "spatial", "slide_key": "sample",
                    "seed": 2, "val_slides": "", "test_slides": "s4,s5", "random_split": False}}
    stored = cli._stored_contract(old)
    assert stored["split"]["test_slides"] == ["s4", "s5"] and stored["split"]["seed"] == 2
    assert "fingerprint" not in stored["split"]  # nothing to compare: the flags remake the split
    assert cli._stored_contract({}) == {}


# ----------------------------------------------------------------------------- 4. real data: the Visium spots
def test_visium_mouse_brain_stage1_to_evaluate(tiny_config, tmp_path, capsys):
    log = tmp_path / "logs"
    base = ["train", "--dataset", cli.VISIUM, "--config", str(tiny_config), "--num_genes", "24", "--batch_size", "16",
            "--lr", "3e-3", "--log_dir", str(log), "--gpus", "0", "--epochs", "2"]
    # one slide: no silent random split, the error names the flag
    check_bad_input(main, base + ["--training_stage", "1"], capsys, "holds one slide ('V1_Adult_Mouse_Brain')",
                    watch=(log,))
    out = _train(base + ["--training_stage", "1", "--random_split"], capsys)
    assert "49 spots, 24 genes, histology 45-d; split random spots 70/15/15" in out and "preset demo" in out
    run = log / cli.VISIUM / "TWO_STAGE_VAR_ST"
    out = _train(base + ["--training_stage", "2", "--stage1_ckpt", str(run / "stage1_vqvae" / "best_vqvae.ckpt")], capsys)
    assert "split random spots 70/15/15" in out  # the stored split, not asked for again
    assert main(["predict", "--dataset", cli.VISIUM, "--log_dir", str(log), "--gpus", "0"]) == 0
    pred = anndata.read_h5ad(run / "predictions.h5ad")
    assert pred.shape == (49, 24) and "V1_Adult_Mouse_Brain" in pred.uns["spatial"]  # scanpy's image metadata kept
    assert pred.obsm["spatial"].shape == (49, 2) and pred.layers["measured"].shape == (49, 24)
    assert main(["evaluate", "--dataset", cli.VISIUM, "--log_dir", str(log), "--gpus", "0", "--predictions",
                 str(run / "predictions.h5ad")]) == 0
    report = json.loads((run / "metrics.json").read_text())
    assert report["n_eval_spots"] == 7 and report["n_train_spots"] == 35
    assert all(np.isfinite(m["mse"]) for m in report["methods"].values())


def test_demo_and_make_demo_data_take_the_visium_data_set(monkeypatch, tmp_path, capsys):
    calls = []
    for name in ("train", "predict", "evaluate"):
        monkeypatch.setitem(cli.COMMANDS, name, lambda args, name=name: calls.append((name, args)))
    assert main(["demo", "--dataset", cli.VISIUM, "--log_dir", str(tmp_path)]) == 0
    (_, s1), (_, s2), (_, pred), (_, ev) = calls
    assert {a.dataset for _, a in calls} == {cli.VISIUM}
    assert s1.random_split and not s2.random_split  # asked for at stage 1, kept by the checkpoint after
    out = tmp_path / "v.h5ad"
    assert main(["make-demo-data", "--dataset", cli.VISIUM, "--output", str(out)]) == 0
    ad = anndata.read_h5ad(out)
    assert ad.shape == (49, 1999) and ad.obsm["histology"].shape == (49, 45)
    check_bad_input(main, ["make-demo-data", "--dataset", cli.VISIUM, "--output", str(tmp_path / "o" / "v.h5ad"),
                           "--slides", "3"], capsys, "--slides sets the size of the synthetic data set",
                    watch=(tmp_path / "o",))


# ----------------------------------------------------------------------------- 5. the evaluation figure
def test_evaluation_figure_names_both_correlations(monkeypatch, tmp_path):
    import var_st.plots as plots

    rng = np.random.default_rng(0)
    true = rng.normal(size=(30, 6)) + np.arange(6) * 3  # gene means far apart: pooled r high, per-gene r low
    pred = np.tile(np.arange(6) * 3.0, (30, 1)) + rng.normal(size=(30, 6)) * 0.1
    r = {"var_st": np.full(6, 0.1), "stage1_reconstruction_ceiling": np.full(6, 0.9), "ridge_histology": np.full(6, 0.3)}
    report = {"split": "test", "split_rule": "by slide", "n_eval_spots": 30, "num_genes": 6,
              "methods": {k: {"pearson_mean_all_genes": float(v.mean())} for k, v in r.items()}}
    seen = {}

    def capture(fig, path, **kw):
        seen["titles"] = [a.get_title() for a in fig.axes]
        seen["ylabels"] = [a.get_ylabel() for a in fig.axes]
        seen["legend"] = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]

    monkeypatch.setattr(plots, "atomic_savefig", capture)
    plots.plot_evaluation(pred, true, r, report, tmp_path / "f.png")
    pooled = plots.pooled_r(pred, true)
    assert pooled > 0.9 and f"pooled: r = {pooled:.3f}" in seen["titles"][0]
    assert "pearson_mean_all_genes" in seen["titles"][1] and all(seen["ylabels"])
    assert seen["legend"] == ["VAR-ST: mean 0.100", "stage-1 ceiling: mean 0.900", "ridge: mean 0.300"]
