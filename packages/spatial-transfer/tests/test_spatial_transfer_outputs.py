"""Outputs a scanpy user reads directly, histology-only prediction, and the real Visium data set end to end."""

import json
import re
import shutil
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from spatial_transfer.cli import main

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "bad_inputs" / "spatial-transfer"
CKPT = CORPUS / "checkpoints" / "spatial_good.pt"  # a SpatialModel of the corpus' sizes (16-d nuclei, 20 genes)
README = Path(__file__).resolve().parents[1] / "README.md"


def _predict(data: Path, out: Path, capsys) -> tuple[anndata.AnnData, str]:
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(CKPT), "--data", str(data), "--output", str(out), "--device", "cpu"]) == 0
    return anndata.read_h5ad(out / "predictions.h5ad"), capsys.readouterr().out


def _slide(tmp_path: Path, name: str, spots: anndata.AnnData | None = None) -> Path:
    d = tmp_path / name
    shutil.copytree(CORPUS / "good", d)
    if spots is not None:
        (d / "spatial.h5ad").unlink()
        spots.write_h5ad(d / "spatial.h5ad")
    return d


def test_predict_histology_only_and_genes_by_name(tmp_path, capsys):
    """Prediction never needs expression: no X, an empty var, other genes, some genes or reordered genes all give
    the same predictions of the checkpoint's genes; metrics and layers['measured'] only where expression exists."""
    good = anndata.read_h5ad(CORPUS / "good" / "spatial.h5ad")
    full, text = _predict(_slide(tmp_path, "full"), tmp_path / "p_full", capsys)
    assert list(full.var_names) == list(good.var_names) and list(full.obs_names) == list(good.obs_names)
    np.testing.assert_array_equal(full.layers["measured"], good.X)
    assert set(full.uns["spatial_transfer"]) >= {"overall_correlation", "gene_correlation", "test_loss"}
    assert "overall correlation" in text
    np.testing.assert_array_equal(full.obsm["spatial"], good.obs[["array_col", "array_row"]].to_numpy())

    obs = good.obs.copy()
    no_x = anndata.AnnData(obs=obs)  # spots without any expression: 0 genes
    with_var = anndata.AnnData(obs=obs, var=pd.DataFrame(index=good.var_names))  # genes named, X None
    assert no_x.n_vars == 0 and with_var.X is None
    for name, spots in (("no_x", no_x), ("var_no_x", with_var), ("other_genes", good[:, :0].copy())):
        if name == "other_genes":  # a panel that shares no gene with the model (e.g. Ensembl IDs vs symbols)
            spots = anndata.AnnData(np.ones((good.n_obs, 3), np.float32), obs=obs,
                                    var=pd.DataFrame(index=["ENSG1", "ENSG2", "ENSG3"]))
        pred, text = _predict(_slide(tmp_path, name, spots), tmp_path / f"p_{name}", capsys)
        np.testing.assert_allclose(pred.X, full.X, rtol=1e-6, atol=1e-6)
        assert list(pred.var_names) == list(good.var_names) and "measured" not in pred.layers, name
        assert not dict(pred.uns.get("spatial_transfer", {})), name
        assert pred.uns["prediction"]["measured_layer"] == ""
        assert "histology-only prediction, no evaluation" in text, name

    # genes in another order: matched by name, evaluated, measured layer in the model's gene order
    rev, _ = _predict(_slide(tmp_path, "reversed", good[:, ::-1].copy()), tmp_path / "p_rev", capsys)
    np.testing.assert_allclose(rev.X, full.X, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(rev.layers["measured"], good.X)
    assert rev.uns["spatial_transfer"]["gene_correlation"] == pytest.approx(full.uns["spatial_transfer"]["gene_correlation"])
    # half the genes measured: predictions of all 20, metrics on the 10, no partial layer
    half, text = _predict(_slide(tmp_path, "half", good[:, ::2].copy()), tmp_path / "p_half", capsys)
    np.testing.assert_allclose(half.X, full.X, rtol=1e-6, atol=1e-6)
    assert half.uns["spatial_transfer"]["genes_evaluated"] == 10 and "measured" not in half.layers
    assert "(on the 10 measured genes)" in text
    p, t = full.X[:, ::2], good.X[:, ::2]
    assert half.uns["spatial_transfer"]["overall_correlation"] == pytest.approx(np.corrcoef(p.ravel(), t.ravel())[0, 1],
                                                                                abs=1e-5)


def test_readme_scanpy_example_runs(tmp_path, capsys, monkeypatch):
    """The README's scanpy lines, as printed there, on a file `predict` wrote (X = predictions, obsm['spatial'])."""
    sc = pytest.importorskip("scanpy")
    import matplotlib

    matplotlib.use("Agg")
    block = re.search(r"<!-- scanpy example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README has no scanpy example block"
    code = block.group(1)
    path = re.search(r'read_h5ad\("([^"]+)"\)', code).group(1)
    monkeypatch.chdir(tmp_path)
    _predict(_slide(tmp_path, "slide", anndata.AnnData(obs=anndata.read_h5ad(CORPUS / "good" / "spatial.h5ad").obs)),
             tmp_path / Path(path).parent, capsys)
    monkeypatch.setattr(sc.pl, "embedding", _wrap(sc.pl.embedding, calls := []))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert calls and all(c["basis"] == "spatial" for c in calls)
    import matplotlib.pyplot as plt

    plt.close("all")


def _wrap(fn, calls):
    def embedding(*args, **kwargs):
        kwargs.setdefault("show", False)  # no window in a test
        calls.append(kwargs)
        return fn(*args, **kwargs)

    return embedding


def test_visium_dataset_end_to_end(tmp_path, tiny_args, capsys):
    """--dataset visium-mouse-brain: the core's 49 real spots + H&E -> sub-patch graphs and pseudo-bulk -> bulk
    pretraining -> transfer -> CV by row bands -> predict on the same section without its expression."""
    from spatial_transfer import visium
    from spatial_transfer.cli import DEMO_STRATEGY
    from spatial_transfer.data import read_bulk, read_spatial

    out = tmp_path / "run"
    sets = tiny_args()
    del sets[sets.index("model.in_dim=16") - 1:sets.index("model.in_dim=16") + 1]  # the preset's 30 H&E features
    assert main(["--dataset", "visium-mouse-brain", "--output", str(out), *sets]) == 0
    text = capsys.readouterr().out
    data = out / "visium_mouse_brain_data"
    assert "no --data given: running on the visium-mouse-brain demo data set" in text
    sp, bk = read_spatial(data, visium.IN_DIM), read_bulk(data, visium.IN_DIM)
    assert sp.expr.shape == (49, 1999) and len(sp.samples) == visium.N_BANDS
    assert bk.expr.shape == (visium.N_PSEUDO_BULK, 1999) and sp.cell_feat.shape == (49 * visium.SUB**2, visium.IN_DIM)
    log = out / f"log_normalized_transfer_{DEMO_STRATEGY}"
    final = json.loads((log / f"final_{visium.N_BANDS}fold_results.json").read_text())
    assert sorted(s for f in final["folds"] for s in f["test_samples"]) == sp.samples
    assert np.isfinite(final["gene_correlation"]["mean"]) and f"demo: transfer ({DEMO_STRATEGY})" in text
    cv = anndata.read_h5ad(log / "predictions.h5ad")
    src = anndata.read_h5ad(data / "spatial.h5ad")
    # the section's own pixel coordinates and images travel with the predictions (sc.pl.spatial can draw them)
    np.testing.assert_array_equal(cv.obsm["spatial"], src[cv.obs_names].obsm["spatial"])
    assert "V1_Adult_Mouse_Brain" in cv.uns["spatial"] and cv.n_vars == 1999
    # histology only: the same spots without expression
    no_expr = tmp_path / "he_only"
    no_expr.mkdir()
    shutil.copy(data / "spatial_cells.h5ad", no_expr)
    bare = anndata.AnnData(obs=src.obs.copy())
    bare.obsm["spatial"] = src.obsm["spatial"]
    bare.write_h5ad(no_expr / "spatial.h5ad")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("next: ")]
    ckpt = line.split("--checkpoint ")[1].split()[0]
    assert main(["predict", "--checkpoint", ckpt, "--data", str(no_expr), "--output", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    pred = anndata.read_h5ad(tmp_path / "p" / "predictions.h5ad")
    assert pred.shape == (49, 1999) and np.isfinite(pred.X).all() and "measured" not in pred.layers
    assert "histology-only prediction" in capsys.readouterr().out


def test_dataset_option_with_data_is_refused(tiny_data, tmp_path, capsys):
    assert main(["run", "--data", str(tiny_data), "--dataset", "visium-mouse-brain", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--dataset visium-mouse-brain and --data both name the data" in err and not (tmp_path / "o").exists()


def test_history_json_is_standard_json(tiny_data, tmp_path, tiny_args, monkeypatch):
    """No NaN/Infinity tokens in any JSON a run writes: an undefined metric (here every validation's gene
    correlation, as when all genes are constant on the validation spots) is written as null."""
    import spatial_transfer.train as train

    real = train.evaluate

    def undefined_gene_corr(model, loader):
        return {**real(model, loader), "val_gene_corr": float("nan")}

    monkeypatch.setattr(train, "evaluate", undefined_gene_corr)
    out = tmp_path / "run"
    assert main(["run", "--data", str(tiny_data), "--output", str(out), "--folds", "2", *tiny_args()]) == 0
    files = list(out.rglob("*.json"))
    assert any(f.name == "history.json" for f in files) and any(f.name.endswith("_history.json") for f in files)
    for f in files:
        raw = f.read_text()
        assert not re.search(r"\bNaN\b|\bInfinity\b", raw), f
        json.loads(raw, parse_constant=lambda c, f=f: pytest.fail(f"{f}: {c}"))
    history = json.loads((out / "checkpoints_transfer_full" / "fold_0_history.json").read_text())
    assert history and all(h["val_gene_corr"] is None for h in history)
