"""Data contract: validation errors name the problem; folds split by sample; items carry every spot once."""

import shutil

import anndata
import numpy as np
import pytest
import torch

from ftcore.errors import UserError
from spatial_transfer.data import GraphConfig, bulk_items, read_bulk, read_spatial, spatial_items
from spatial_transfer.train import _validation_samples, make_folds


def _copy(tiny_data, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(tiny_data, d)
    return d


def _edit(path, fn):
    a = anndata.read_h5ad(path)
    a = fn(a) or a
    a.write_h5ad(path)


def test_reads_and_every_spot_lands_in_one_window(tiny_data):
    sp = read_spatial(tiny_data, 16)
    assert sp.expr.shape == (4 * 16, 20) and len(sp.samples) == 4
    items = spatial_items(sp, GraphConfig(window=2, k=3), sp.samples)
    ids = np.concatenate([it.spot_ids.numpy() for it in items])
    assert sorted(ids.tolist()) == list(range(len(sp.spot_names)))
    for it in items:
        np.testing.assert_array_equal(it.y.numpy(), sp.expr[it.spot_ids.numpy()])
        assert it.edge_index.max() < it.num_nodes
        inside = it.cell_in_spot.numpy()
        counts = np.bincount(it.cell_spot.numpy()[inside], minlength=it.spot_pos.shape[0])
        assert (counts > 0).all()
    bk = read_bulk(tiny_data, 16)
    b = bulk_items(bk, GraphConfig(tile_size=100.0), [0])[0]
    assert b.y.shape == (1, 12) and b.num_nodes == int((bk.cell_sample == 0).sum())


@pytest.mark.parametrize("file,edit,phrase", [
    ("spatial.h5ad", lambda a: a.obs.drop(columns=["array_row"], inplace=True), "obs has no column 'array_row'"),
    ("spatial_cells.h5ad", lambda a: a.obs.drop(columns=["spot"], inplace=True), "obs has no column 'spot'"),
    ("spatial_cells.h5ad", lambda a: a.X.__setitem__((3, 2), np.nan), "nuclear features contain NaN or inf"),
    ("spatial.h5ad", lambda a: a.X.__setitem__((0, 0), np.inf), "expression values contain NaN or inf"),
    ("spatial_cells.h5ad", lambda a: a[:, :10].copy(), "nuclei have 10 features but the model expects in_dim=16"),
])
def test_validation_errors(tiny_data, tmp_path, file, edit, phrase):
    d = _copy(tiny_data, tmp_path)
    _edit(d / file, edit)
    with pytest.raises(UserError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        read_spatial(d, 16)


def test_spot_without_nuclei_is_an_error(tiny_data, tmp_path):
    d = _copy(tiny_data, tmp_path)
    spots = anndata.read_h5ad(d / "spatial.h5ad")
    victim = spots.obs_names[5]
    _edit(d / "spatial_cells.h5ad", lambda a: a[a.obs["spot"] != victim].copy())
    with pytest.raises(UserError, match=f"spots have no nuclei \\(first: '{victim}'"):
        read_spatial(d, 16)


def test_gene_count_must_match_a_fixed_model(tiny_data):
    from spatial_transfer.data import check_gene_count

    with pytest.raises(UserError, match="has 20 genes but the model predicts 897"):
        check_gene_count(20, 897, tiny_data, "spatial.h5ad", "spatial_genes")


def test_kfold_splits_by_sample_without_leakage():
    samples = [f"s{i}" for i in range(7)]
    folds = make_folds(samples, "kfold", 3, None, seed=1)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == samples and len(folds) == 3  # each sample tested exactly once
    assert make_folds(samples, "kfold", 3, None, seed=1) == folds  # deterministic (resume relies on it)
    for k, test in enumerate(folds):
        rest = [s for s in samples if s not in test]
        val = _validation_samples(rest, 42 + k)
        assert val and not set(val) & set(test) and set(val) <= set(rest)


def test_loo_and_its_errors():
    samples = ["a", "b", "c"]
    assert make_folds(samples, "loo", 10, None, 0) == [["a"], ["b"], ["c"]]
    assert make_folds(samples, "loo", 10, ["c", "a"], 0) == [["c"], ["a"]]
    with pytest.raises(UserError, match="unknown sample 'z'; samples: a, b, c"):
        make_folds(samples, "loo", 10, ["z"], 0)
    with pytest.raises(UserError, match="3 samples"):
        make_folds(samples, "kfold", 10, None, 0)


def test_radius_graph_items(tiny_data):
    """graph.method=radius: every edge joins two nuclei of one item closer than the radius, both ways."""
    sp = read_spatial(tiny_data, 16)
    r = 40.0
    items = spatial_items(sp, GraphConfig(method="radius", radius=r, window=2), sp.samples)
    assert sum(it.edge_index.shape[1] for it in items) > 0
    for it in items:
        src, dst = it.edge_index
        assert ((it.pos[src] - it.pos[dst]).norm(dim=1) < r).all() and (src != dst).all()
        d = torch.cdist(it.pos.double(), it.pos.double())
        assert it.edge_index.shape[1] == int(((d < r) & ~torch.eye(len(d), dtype=torch.bool)).sum())
    with pytest.raises(UserError, match="unknown graph method 'delaunay'; choose one of: knn, radius"):
        GraphConfig(method="delaunay")
