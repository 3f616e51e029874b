"""ftcore.data: the one rule for what X holds, and value/coordinate sanity naming row and column."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from ftcore.data import check_expression, check_values, coordinates, expression_kind
from ftcore.errors import UserError


def _counts(rng, n=50, g=30):
    return rng.poisson(3.0, size=(n, g)).astype(np.float32)


def _log(counts):
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)


@pytest.mark.parametrize("seed", range(5))
def test_rule_on_fresh_data(seed):
    rng = np.random.default_rng(seed)
    counts = _counts(rng)
    log = _log(counts)
    assert expression_kind(counts) == "counts" and expression_kind(sparse.csr_matrix(counts)) == "counts"
    assert expression_kind(log) == "log" and expression_kind(sparse.csr_matrix(log)) == "log"
    assert expression_kind(counts / counts.sum(1, keepdims=True) * 1e4 + 0.5) == "unlogged"
    assert expression_kind((log - log.mean(0)) / (log.std(0) + 1e-6)) == "scaled"
    assert expression_kind(np.zeros((3, 3))) == "log"


def test_check_expression_refuses_or_warns(capsys):
    counts = np.array([[0, 3], [40, 1]], dtype=np.float32)
    with pytest.raises(UserError, match="data.h5ad X: it holds raw counts .*sc.pp.log1p"):
        check_expression(counts, {"log"}, "data.h5ad X")
    assert check_expression(counts, {"log"}, "data.h5ad X", warn={"counts"}) == "counts"
    assert capsys.readouterr().out.startswith("warning: data.h5ad X: it holds raw counts")


def test_check_values_names_row_and_column():
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = 1e38
    with pytest.raises(UserError, match=r"1 value\(s\) are beyond ±1e\+09, first at row 2 \('s2'\), column 1 \('g1'\)"):
        check_values(x, "X", row_names=["s0", "s1", "s2", "s3"], col_names=["g0", "g1", "g2"])
    x[2, 1] = np.nan
    with pytest.raises(UserError, match="NaN/inf, first at row 2, column 1"):
        check_values(sparse.csr_matrix(x), "X")
    check_values(np.ones((2, 2)), "X")


def test_coordinates():
    good = coordinates(np.array([["1.5", "2"], ["3", "4"]]), "obsm['spatial']")
    assert good.dtype == np.float64 and good[0, 0] == 1.5
    with pytest.raises(UserError, match=r"row 1 \('spot_b'\) holds 'x12'"):
        coordinates(np.array([["1", "2"], ["x12", "4"]], dtype=object), "obsm['spatial']", row_names=["spot_a", "spot_b"])
    with pytest.raises(UserError, match="expected an \\(n_spots, 2\\)"):
        coordinates(np.ones(4), "obsm['spatial']")


def test_prediction_adata_is_what_scanpy_reads(tmp_path):
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    from ftcore.data import prediction_adata

    rng = np.random.default_rng()
    n, g = 7, 3
    source = anndata.AnnData(np.zeros((n, 0), np.float32), obs=pd.DataFrame({"slide": list("aabbbcc")},
                                                                             index=[f"spot{i}" for i in range(n)]))
    source.obsm["spatial"] = rng.normal(size=(n, 2))
    source.obsm["histology"] = rng.normal(size=(n, 5)).astype(np.float32)
    source.uns["spatial"] = {"lib": {"scalefactors": {"spot_diameter_fullres": 3.0}}}
    pred = rng.normal(size=(n, g))
    out = prediction_adata(pred, ["G1", "G2", "G3"], source, model="m.pth")
    out.write_h5ad(tmp_path / "p.h5ad")
    back = anndata.read_h5ad(tmp_path / "p.h5ad")
    assert list(back.var_names) == ["G1", "G2", "G3"] and list(back.obs_names) == list(source.obs_names)
    np.testing.assert_allclose(back[:, "G2"].X.ravel(), pred[:, 1].astype(np.float32))
    np.testing.assert_array_equal(back.obsm["spatial"], source.obsm["spatial"])
    assert list(back.obs["slide"]) == list("aabbbcc") and "histology" in back.obsm
    assert back.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] == 3.0
    assert "measured" not in back.layers and back.uns["prediction"]["model"] == "m.pth"
    measured = rng.normal(size=(n, g))
    with_measured = prediction_adata(pred, ["G1", "G2", "G3"], source, measured=measured)
    np.testing.assert_allclose(with_measured.layers["measured"], measured.astype(np.float32))
    with pytest.raises(ValueError):
        prediction_adata(pred, ["G1", "G2"], source)
    with pytest.raises(ValueError):
        prediction_adata(pred[:3], ["G1", "G2", "G3"], source)
