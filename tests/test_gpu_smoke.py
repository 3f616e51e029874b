"""Each package's real CLI on CUDA: train a few steps on tiny generated data, then predict.

Per package, in-process through its `main()` (as the package's own CLI tests call it), with the
tiny sizes of its own tests (`packages/<name>/tests/conftest.py`, loaded here under a unique name):
exit code 0, the README's output files exist, every tensor of the saved model is finite, the
training really ran on the device (every nn.Module forward of the command returned tensors on
it, and on CUDA the allocator saw memory), and the predictions file is finite with the right shape.

FT_GPU_TEST_DEVICE=cpu runs the same tests on the CPU (see shared/tests/device_under_test.py).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared" / "tests"))
from device_under_test import device_under_test  # noqa: E402
from repo_helpers import package_tests  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture
def device(tmp_path, monkeypatch) -> torch.device:
    monkeypatch.chdir(tmp_path)  # anything a CLI writes to a relative default path stays in the test's folder
    return device_under_test()


# ------------------------------------------------------------------------------- checks
def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        return next((t for t in map(_first_tensor, out) if t is not None), None)
    if isinstance(out, dict):
        return next((t for t in map(_first_tensor, out.values()) if t is not None), None)
    return None


@contextmanager
def runs_on(device: torch.device):
    """Once the first nn.Module forward of the block has returned tensors on `device`, every later one
    must too (a silent fallback to the CPU fails here, whole or part way). Forwards before it are set-up
    on the CPU before the model is moved (var-st's data-derived codebook start) and are allowed.
    On CUDA the allocator must also have seen memory."""
    on_device, before, after = 0, Counter(), Counter()

    def hook(module, args, out):
        nonlocal on_device
        t = _first_tensor(out)
        if t is None:
            return
        if t.device.type == device.type:
            on_device += 1
        else:
            (after if on_device else before)[type(module).__name__] += 1

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
    assert on_device > 0, f"no module forward ran on {device.type} (off it: {dict(before)})"
    assert not after, f"module forwards off {device.type} after it was in use: {dict(after)}"
    if device.type == "cuda":  # memory statistics exist only for CUDA
        assert torch.cuda.max_memory_allocated() > 0


def assert_files(root: Path, names) -> None:
    missing = [n for n in names if not (root / n).is_file()]
    assert not missing, f"missing in {root}: {missing}"


def assert_finite_model(path: Path) -> dict:
    """Every floating tensor of the checkpoint's model state dict is finite; returns the checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt["model"]
    floats = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    assert floats, f"{path}: no floating-point tensors in the model state dict"
    bad = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    assert not bad, f"{path}: non-finite tensors {bad[:5]}"
    return ckpt


# each package's compile default on CUDA (where it measured faster; spatial-transfer's batches change shape)
COMPILE_DEFAULT = {"get-yeast": "graphs", "state-tx": "graphs", "var-st": "graphs", "cellfm-ft": "auto",
                   "spatial-transfer": "off"}


def assert_trainer_device(path: Path, device: torch.device, package: str) -> None:
    """The core Trainer's resume checkpoint records the device the CLI asked for, and the package's compile
    default (graphs where it measured faster and its GPU tests pass compiled: on CUDA it compiled)."""
    config = torch.load(path, map_location="cpu", weights_only=True)["config"]
    assert torch.device(config["device"]).type == device.type, f"{path} records device {config['device']!r}"
    assert config["compile"] == COMPILE_DEFAULT[package], config["compile"]


def assert_predictions(values, shape: tuple[int, ...]) -> None:
    values = np.asarray(values.toarray() if hasattr(values, "toarray") else values)
    assert values.shape == shape
    assert np.isfinite(values).all() and values.std() > 0


# ----------------------------------------------------------------------------- packages
def smoke_cellfm_ft(tmp: Path, device: torch.device) -> None:
    import anndata as ad

    from cellfm_ft.cli import main
    from cellfm_ft.demo import demo_vocabulary, write_demo_checkpoint
    from cellfm_ft.synthetic import synthetic_cells

    conf = package_tests("cellfm-ft")
    adata = synthetic_cells(n_cells=96, n_genes=64, n_donors=4, seed=1)  # the cellfm_inputs fixture's data
    inputs = {"data": tmp / "cells.h5ad", "ckpt": tmp / "cellfm_tiny.ckpt"}
    adata.write_h5ad(inputs["data"])
    write_demo_checkpoint(inputs["ckpt"], demo_vocabulary(adata.var_names.tolist()), config="tiny", seed=0)
    out = tmp / "run"
    with runs_on(device):
        assert main(conf._train_argv(inputs, out, "--test-donors", "D2", "--epochs", "1", "--device", device.type)) == 0
    assert_files(out, ["best_model.pth", "checkpoint_epoch_1.pth", "last.pt", "training_results.json", "train.h5ad",
                       "test.h5ad", "confusion_matrix.png", "history.json", "training_curve.png", "split.json"])
    best = assert_finite_model(out / "best_model.pth")
    assert_finite_model(out / "last.pt")
    assert_trainer_device(out / "last.pt", device, "cellfm-ft")
    pred_path = tmp / "pred.h5ad"
    with runs_on(device):
        assert main(["predict", "--model", str(out / "best_model.pth"), "--data", str(inputs["data"]),
                     "--output", str(pred_path), "--device", device.type]) == 0
    pred = ad.read_h5ad(pred_path)
    assert_predictions(pred.obsm["cellfm_proba"], (adata.n_obs, len(best["extra"]["labels"])))
    np.testing.assert_allclose(pred.obsm["cellfm_proba"].sum(1), 1, atol=1e-4)


def smoke_get_yeast(tmp: Path, device: torch.device) -> None:
    import pandas as pd

    from get_yeast.cli import main
    from get_yeast.config import load_model_config, packaged_config
    from get_yeast.synthetic import make_yeast_table, write_get_checkpoint

    conf = package_tests("get-yeast")
    model_yaml = packaged_config("yeast_model_tiny.yaml")
    data = tmp / "yeast.csv"
    make_yeast_table(n_conditions=8, n_windows=2, n_regions=6, seed=3).to_csv(data, index=False)  # tiny_frame
    get_ckpt = write_get_checkpoint(tmp / "checkpoint-799.pth", conf.get_layout_state_dict(load_model_config(model_yaml)))
    out = tmp / "run"
    sets = [x for kv in conf.TINY_TRAIN for x in ("--set", kv)]
    with runs_on(device):  # --device comes after TINY_TRAIN's training.device=cpu and wins
        assert main(["train", "--data", str(data), "--output", str(out), "--model-config", str(model_yaml),
                     "--no-progress", *sets, "--checkpoint", str(get_ckpt), "--trust-checkpoint",
                     "--max-steps", "4", "--device", device.type]) == 0
    assert_files(out, ["best_model.pth", "last.pth", "history.json", "training_curve.png", "metrics.json",
                       "predictions.csv", "pred_vs_true.png", "residuals.png", "condition_importance.json",
                       "merged_model.safetensors", "splits.json", "run_config.json", "load_report.json",
                       "freeze_report.json"])
    assert_finite_model(out / "best_model.pth")
    assert_trainer_device(out / "last.pth", device, "get-yeast")
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4
    ev = tmp / "eval"
    with runs_on(device):
        assert main(["evaluate", "--data", str(data), "--model", str(out / "best_model.pth"), "--output", str(ev),
                     "--device", device.type]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    pred = pd.read_csv(ev / "predictions.csv")
    assert_predictions(pred[["expression_pred"]].to_numpy(), (metrics["n_regions"], 1))
    assert np.isfinite(metrics["mse"])


def smoke_spatial_transfer(tmp: Path, device: torch.device) -> None:
    import anndata as ad

    from spatial_transfer.cli import main
    from spatial_transfer.synthetic import write_demo_data

    conf = package_tests("spatial-transfer")
    data = write_demo_data(tmp / "data", conf.TINY_SPEC)
    sets = [x for s in conf.TINY_SETS for x in ("--set", s)]
    out = tmp / "run"
    with runs_on(device):  # bulk pretraining -> transfer (strategy full) -> 2-fold CV, 2 + 2 epochs
        assert main(["run", "--data", str(data), "--output", str(out), "--folds", "2", "--lr", "1e-3", *sets,
                     "--no-progress", "--device", device.type]) == 0
    log, ck = out / "log_normalized_transfer_full", out / "checkpoints_transfer_full"
    assert_files(out / "bulk_pretrain", ["best_bulk_model.pt", "last.pt", "history.json", "training_curve.png"])
    assert_files(log, ["temp_fold_results.json", "final_2fold_results.json", "predictions.h5ad",
                       *(f"fold_{k}_{n}" for k in (0, 1) for n in ("metrics.json", "predictions.npy",
                                                                     "training_curve.png", "pred_vs_true.png"))])
    assert_files(ck, ["best_hest_graph_model_fold_0.pt", "best_hest_graph_model_fold_1.pt", "fold_0_history.json"])
    assert_finite_model(out / "bulk_pretrain" / "best_bulk_model.pt")
    for k in (0, 1):
        assert_finite_model(ck / f"best_hest_graph_model_fold_{k}.pt")
    assert_trainer_device(out / "bulk_pretrain" / "last.pt", device, "spatial-transfer")
    n_spots, n_genes = conf.TINY_SPEC.n_spatial_samples * conf.TINY_SPEC.grid ** 2, conf.TINY_SPEC.spatial_genes
    with runs_on(device):
        assert main(["predict", "--checkpoint", str(ck / "best_hest_graph_model_fold_0.pt"), "--data", str(data),
                     "--output", str(tmp / "pred"), "--device", device.type]) == 0
    assert_predictions(ad.read_h5ad(tmp / "pred" / "predictions.h5ad").X, (n_spots, n_genes))  # X = predictions


def smoke_state_tx(tmp: Path, device: torch.device) -> None:
    import anndata as ad

    from state_tx.cli import main

    conf = package_tests("state-tx")
    h5ad, toml = conf.write_tiny_screen(tmp)
    with runs_on(device):
        assert main(conf.train_args(toml, tmp, steps=6, extra=[f"training.device={device.type}"])) == 0
    run = tmp / "run"
    assert_files(run, ["config.yaml", "var_dims.json", "pert_onehot_map.json", "cell_type_onehot_map.json",
                       "batch_onehot_map.json", "data_module.json", "history.json", "training_curve.png"])
    assert_files(run / "checkpoints", ["last.ckpt", "final.ckpt", "step=3.ckpt", "step=6.ckpt"])
    assert_finite_model(run / "checkpoints" / "final.ckpt")
    assert_trainer_device(run / "checkpoints" / "last.ckpt", device, "state-tx")
    out = tmp / "pred.h5ad"
    with runs_on(device):
        assert main(["infer", "--adata", str(h5ad), "--output", str(out), "--model-dir", str(run),
                     "--pert-col", "gene", "--device", device.type]) == 0
    assert_predictions(ad.read_h5ad(out).X, (ad.read_h5ad(h5ad).n_obs, conf.TINY_SIZES["n_hvg"]))


def smoke_var_st(tmp: Path, device: torch.device) -> None:
    import anndata as ad

    from var_st.cli import main

    conf = package_tests("var-st")
    h5ad, config = tmp / "tiny.h5ad", tmp / "tiny.yaml"
    adata = conf.make_tiny_adata()
    adata.write_h5ad(h5ad)
    config.write_text(conf.TINY_CONFIG)
    gpus = ["--gpus", "1" if device.type == "cuda" else "0"]  # this CLI's device switch (after the fixture's --gpus 0)
    for stage in (1, 2):
        with runs_on(device):
            assert main(conf.tiny_train_args(h5ad, config, tmp, stage=stage, epochs=1, extra=gpus)) == 0
    root = tmp / "tiny" / "TWO_STAGE_VAR_ST"
    assert_files(root, ["stage1_vqvae/best_vqvae.ckpt", "stage1_vqvae/last.ckpt", "stage1_vqvae/history.json",
                        "stage1_vqvae/training_curve.png", "stage1_vqvae/split.json", "stage2_var/best_var.ckpt",
                        "stage2_var/history.json", "complete_model.ckpt"])
    for rel in ("stage1_vqvae/best_vqvae.ckpt", "stage2_var/best_var.ckpt", "complete_model.ckpt"):
        assert_finite_model(root / rel)
    assert_trainer_device(root / "stage1_vqvae" / "last.ckpt", device, "var-st")
    out = tmp / "pred.h5ad"
    with runs_on(device):
        assert main(["predict", "--checkpoint", str(root / "complete_model.ckpt"), "--dataset", str(h5ad),
                     "--output", str(out), *gpus]) == 0
    assert_predictions(ad.read_h5ad(out).X, (adata.n_obs, conf.TINY_GENES))


SMOKE = {"cellfm-ft": smoke_cellfm_ft, "get-yeast": smoke_get_yeast, "spatial-transfer": smoke_spatial_transfer,
         "state-tx": smoke_state_tx, "var-st": smoke_var_st}


def test_every_package_has_a_smoke_test():
    assert set(SMOKE) == {p.parent.name for p in ROOT.glob("packages/*/pyproject.toml")}


@pytest.mark.parametrize("package", sorted(SMOKE))
def test_cli_trains_and_predicts_on_device(package, device, tmp_path):
    SMOKE[package](tmp_path, device)
