"""ftcore.data's AnnData edge: read_h5ad / require_key errors in one line, dense views, the one
log-normalisation (against scanpy's normalize_total + log1p on fresh counts, tolerance 1e-6 relative
in float32), as_log_normalised (THE rule applied), write_predictions (scanpy's key_added)."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from ftcore.data import (as_log_normalised, dense, log_normalise, prediction_adata, read_h5ad, require_key,
                         write_predictions)
from ftcore.errors import UserError


@pytest.fixture
def rng():
    return np.random.default_rng()


def _adata(rng, n=20, g=8):
    a = anndata.AnnData(rng.poisson(2.0, size=(n, g)).astype(np.float32),
                        obs=pd.DataFrame({"sample": ["s0"] * n, "Donor ID": ["d"] * n}, index=[f"c{i}" for i in range(n)]))
    a.obsm["spatial"] = rng.normal(size=(n, 2))
    return a


def test_read_h5ad_errors_are_one_line_with_the_fix(tmp_path, rng):
    good = tmp_path / "good.h5ad"
    _adata(rng).write_h5ad(good)
    assert read_h5ad(good).n_obs == 20
    with pytest.raises(UserError, match=r"^data file .*nope.h5ad does not exist; check the path$"):
        read_h5ad(tmp_path / "nope.h5ad")
    with pytest.raises(UserError, match=r"^--adata .*nope.h5ad does not exist; pass another$"):
        read_h5ad(tmp_path / "nope.h5ad", flag="--adata", fix="pass another")
    with pytest.raises(UserError, match="is a directory; pass the .h5ad file inside it"):
        read_h5ad(tmp_path)
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"is not an .h5ad file \(it ends in '.csv'\)"):
        read_h5ad(csv, suffix=True)
    fake = tmp_path / "fake.h5ad"
    fake.write_text("a,b\n1,2\n")
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(good.read_bytes()[:200])
    for bad in (fake, cut):
        with pytest.raises(UserError) as err:
            read_h5ad(bad, flag="-ap/--adata-pred")
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"-ap/--adata-pred {bad} cannot be read as .h5ad (")
        assert "not a readable .h5ad file; write it with adata.write_h5ad" in msg


def test_require_key_lists_what_exists_and_the_near_miss(rng):
    a = _adata(rng)
    require_key("sample", a.obs.columns, "f.h5ad")  # present: nothing
    with pytest.raises(UserError) as err:
        require_key("Sample", a.obs.columns, "f.h5ad", what="slide ids", fix="pass --slide_key")
    assert str(err.value) == ("f.h5ad: obs has no column 'Sample' (slide ids); obs columns: 'sample', 'Donor ID'; "
                              "rename 'sample' to 'Sample'; pass --slide_key")
    with pytest.raises(UserError) as err:
        require_key("histology", a.obsm.keys(), "f.h5ad", axis="obsm", what="histology features",
                    fix="pass --histology_key")
    assert str(err.value) == ("f.h5ad: obsm['histology'] (histology features) is missing; obsm has: spatial; "
                              "pass --histology_key")
    with pytest.raises(UserError, match=r"obs columns: none$"):
        require_key("x", [], "f.h5ad")


def test_dense_of_every_matrix_kind(rng):
    x = rng.normal(size=(4, 3))
    for m in (x, sparse.csr_matrix(x), sparse.csc_matrix(x), pd.DataFrame(x)):
        out = dense(m, np.float32)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out, x, rtol=1e-6)
    assert dense(x) is x or np.shares_memory(dense(x), x)  # an array is not copied


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")  # the zero cell is on purpose
def test_log_normalise_equals_scanpy(rng):
    sc = pytest.importorskip("scanpy")
    counts = rng.poisson(rng.uniform(0.2, 5), size=(int(rng.integers(5, 40)), int(rng.integers(3, 30)))).astype(np.float32)
    counts[0] = 0  # a cell without counts stays zero
    ref = anndata.AnnData(counts.copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    want = np.asarray(ref.X)
    got_dense = log_normalise(counts)
    got_csr = log_normalise(sparse.csr_matrix(counts))
    assert got_dense.dtype == np.float32 and sparse.issparse(got_csr) and got_csr.dtype == np.float32
    np.testing.assert_allclose(got_dense, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_csr.toarray(), want, rtol=1e-6, atol=1e-6)
    assert not got_dense[0].any()
    np.testing.assert_allclose(log_normalise(counts[1]), want[1], rtol=1e-6)  # one sample as a vector


def test_as_log_normalised_applies_the_one_rule(rng):
    counts = rng.poisson(3.0, size=(30, 10)).astype(np.float32)
    x, kind = as_log_normalised(counts, "f: X")
    assert kind == "counts" and np.allclose(x, log_normalise(counts))
    y, kind = as_log_normalised(sparse.csr_matrix(x), "f: X")
    assert kind == "log" and isinstance(y, np.ndarray) and np.array_equal(y, x)
    with pytest.raises(UserError, match="f: X: it holds raw counts"):
        as_log_normalised(counts, "f: X", accept=("log",))
    with pytest.raises(UserError, match="negative values"):
        as_log_normalised(x - x.mean(0), "f: X")
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(UserError, match="first at row 2, column 3"):
        as_log_normalised(bad, "f: X")


def test_write_predictions_in_scanpys_style(rng, tmp_path):
    a = _adata(rng)
    X = a.X.copy()
    proba = rng.dirichlet(np.ones(3), size=a.n_obs).astype(np.float32)
    write_predictions(a, proba, "model_proba", uns={"labels": ["a", "b", "c"]})
    write_predictions(a, pd.Categorical.from_codes(proba.argmax(1), ["a", "b", "c"]), "model_pred", where="obs")
    layer = rng.normal(size=a.shape).astype(np.float32)
    write_predictions(a, layer, "model_expr", where="layers")
    np.testing.assert_array_equal(a.X, X)  # X is never replaced
    a.write_h5ad(tmp_path / "p.h5ad")
    b = anndata.read_h5ad(tmp_path / "p.h5ad")
    np.testing.assert_array_equal(b.obsm["model_proba"], proba)
    assert list(b.obs["model_pred"].cat.categories) == ["a", "b", "c"] and list(b.uns["model_proba"]["labels"]) == ["a", "b", "c"]
    np.testing.assert_array_equal(b.layers["model_expr"], layer)
    with pytest.raises(ValueError, match="shape"):
        write_predictions(a, proba[:-1], "short")
    with pytest.raises(ValueError, match="shape"):
        write_predictions(a, proba, "two_d_in_obs", where="obs")
    with pytest.raises(ValueError, match="shape"):
        write_predictions(a, layer[:, :-1], "narrow", where="layers")
    with pytest.raises(ValueError, match="where="):
        write_predictions(a, proba, "x", where="X")
    pred = prediction_adata(layer, list(a.var_names), a, model="m", measured=X)  # measured through the same writer
    np.testing.assert_array_equal(pred.layers["measured"], X)
