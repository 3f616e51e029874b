"""The data contract: counts vs log detection, validation messages, vocabulary, splits, tokens."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from ftcore.errors import UserError

from cellfm_ft.data import CellDataset, GeneVocab, collate, make_split, read_cells, token_matrix


def _write(adata, tmp_path, name="x.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def test_counts_are_detected_and_log_normalised(cellfm_inputs):
    cells = read_cells(cellfm_inputs["data"], label_key="cell_type", donor_key="donor")
    assert cells.input_kind == "counts"
    raw = cellfm_inputs["adata"].X.toarray()
    expected = np.log1p(raw / raw.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(cells.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    assert len(set(cells.donors)) == 4 and cells.labels.shape == (cells.n_cells,)


def test_log_normalised_input_is_left_as_is(cellfm_inputs, tmp_path):
    adata = cellfm_inputs["adata"].copy()
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray()) * 0.7)
    cells = read_cells(_write(adata, tmp_path), label_key="cell_type")
    assert cells.input_kind == "log"
    np.testing.assert_allclose(cells.X.toarray(), adata.X.toarray(), rtol=1e-6)
    stated = read_cells(_write(adata, tmp_path, "y.h5ad"), label_key="cell_type", input_kind="counts")
    assert stated.input_kind == "counts" and not np.allclose(stated.X.toarray(), adata.X.toarray())


def test_missing_label_column_lists_the_columns(cellfm_inputs):
    with pytest.raises(UserError, match=r"no obs column 'celltype'; available obs columns: cell_type, donor"):
        read_cells(cellfm_inputs["data"], label_key="celltype")


def test_gene_names_from_a_var_column(cellfm_inputs, tmp_path):
    adata = cellfm_inputs["adata"].copy()
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    cells = read_cells(_write(adata, tmp_path), label_key="cell_type", gene_key="symbol")
    assert cells.genes[:3] == cellfm_inputs["adata"].var_names[:3].tolist()


def test_vocabulary_reports_absent_genes_and_rejects_zero_overlap():
    v = GeneVocab.build(["A", "B", "C", "D"], ["B", "D", "Z"])
    assert v.genes == ["B", "D"] and v.absent == ["A", "C"]
    assert "2 absent" in v.report()
    with pytest.raises(UserError, match="none of the 2 genes"):
        GeneVocab.build(["A", "C"], ["B", "D"])


def test_donor_split_holds_out_whole_donors(cellfm_inputs):
    cells = read_cells(cellfm_inputs["data"], label_key="cell_type", donor_key="donor")
    split = make_split(cells, test_donors=None, test_size=0.25, seed=3)
    train_d, test_d = set(cells.donors[split.train]), set(cells.donors[split.test])
    assert not train_d & test_d and len(test_d) == 1
    assert len(split.train) + len(split.test) == cells.n_cells
    named = make_split(cells, test_donors=["D2"], test_size=0.25, seed=3)
    assert set(cells.donors[named.test]) == {"D2"}
    with pytest.raises(UserError, match="not in the donor column"):
        make_split(cells, test_donors=["D9"], test_size=0.25, seed=3)


def test_random_split_is_stratified_and_seeded(cellfm_inputs):
    cells = read_cells(cellfm_inputs["data"], label_key="cell_type")
    a = make_split(cells, test_donors=None, test_size=0.25, seed=0)
    b = make_split(cells, test_donors=None, test_size=0.25, seed=0)
    assert np.array_equal(a.test, b.test)
    assert set(cells.labels[a.test]) == set(cells.labels)


def test_tokens_keep_the_most_expressed_genes_and_pad():
    class C:  # the two attributes token_matrix needs
        genes = ["g1", "g2", "g3", "g4"]
        X = sparse.csr_matrix(np.array([[0, 5, 1, 3], [2, 0, 0, 0]], dtype=np.float32))
        n_cells = 2

    tokens = token_matrix(C, ["g4", "g2", "g9", "g1"])  # model order; g9 absent from the data
    np.testing.assert_array_equal(tokens.toarray(), [[3, 5, 0, 0], [0, 0, 0, 2]])
    ds = CellDataset(tokens, np.array([0, 1]), np.array([1, 0]), nonz_len=1)
    ids, vals, lab = ds[0]
    assert ids.tolist() == [2] and vals.tolist() == [5.0] and lab == 1  # id = column + 1
    b = collate([CellDataset(tokens, np.array([0, 1]), None, nonz_len=8)[i] for i in range(2)])
    assert b["gene"].tolist() == [[1, 2], [4, 0]]
    assert b["zero_idx"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["label"].tolist() == [-1, -1]
