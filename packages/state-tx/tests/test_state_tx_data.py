"""h5ad contract: lazy row reads (dense and CSR), column / label / matrix errors, sentences."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ftcore.errors import UserError
from state_tx.data import DataKwargs, H5Source, SentenceDataset, plan_splits, read_experiment_toml

KW = DataKwargs(pert_col="gene", cell_type_key="cell_type", batch_col="gem_group", control_pert="non-targeting")


def test_dense_and_csr_rows_match_the_matrix(tmp_path, tiny_adata):
    a = tiny_adata.copy()
    a.obsm["X_hvg"] = sp.csr_matrix(a.obsm["X_hvg"])
    path = tmp_path / "csr.h5ad"
    a.write_h5ad(path)
    rows = np.array([5, 2, 2, 40, 0])  # unsorted, repeated
    csr = H5Source(path, "gene")
    dense = H5Source(path, "all")
    np.testing.assert_array_equal(csr.read_rows(rows), tiny_adata.obsm["X_hvg"][rows])
    np.testing.assert_array_equal(dense.read_rows(rows), tiny_adata.X[rows])
    assert csr.sparse and not dense.sparse
    assert list(csr.gene_names) == list(tiny_adata.var_names[tiny_adata.var.highly_variable])
    assert csr.scan() == pytest.approx(float(tiny_adata.obsm["X_hvg"].max()))


def test_missing_obs_column_lists_what_the_file_has(tiny_h5ad):
    """The seed's `KeyError: 'gene' not in adata.obs`, as one actionable line."""
    src = H5Source(tiny_h5ad, "gene")
    with pytest.raises(UserError, match=r"no column 'target_gene'.*\[gene, cell_type, gem_group\].*pert_col"):
        src.obs_column("target_gene", "data.kwargs.pert_col")


def test_absent_control_label_lists_frequent_labels(tmp_path, tiny_h5ad):
    toml = tmp_path / "c.toml"
    toml.write_text(f'[datasets]\ns = "{tiny_h5ad}"\n[training]\ns = "train"\n')
    kw = DataKwargs(pert_col="gene", cell_type_key="cell_type", control_pert="DMSO")
    with pytest.raises(UserError, match=r"control_pert='DMSO' is not in obs\['gene'\].*non-targeting"):
        plan_splits(read_experiment_toml(toml), kw, 0)


def test_gene_space_needs_x_hvg(tmp_path, tiny_adata):
    a = tiny_adata.copy()
    del a.obsm["X_hvg"]
    path = tmp_path / "nohvg.h5ad"
    a.write_h5ad(path)
    with pytest.raises(UserError, match=r"obsm\['X_hvg'\].*output_space=all"):
        H5Source(path, "gene")
    assert H5Source(path, "all").n_features == a.n_vars


def test_nan_is_found_with_the_cell_name(tmp_path, tiny_adata):
    a = tiny_adata.copy()
    a.obsm["X_hvg"][7, 3] = np.nan
    path = tmp_path / "nan.h5ad"
    a.write_h5ad(path)
    with pytest.raises(UserError, match=f"NaN/inf.*{a.obs_names[7]}"):
        H5Source(path, "gene").scan()


def test_truncated_file_is_a_clear_error(tmp_path, tiny_h5ad):
    path = tmp_path / "cut.h5ad"
    path.write_bytes(tiny_h5ad.read_bytes()[:2000])
    with pytest.raises(UserError, match="cannot be read"):
        H5Source(path, "gene")


def test_sentences_share_perturbation_and_cell_type_and_are_deterministic(tiny_toml):
    metas, vocab, plans, _ = plan_splits(read_experiment_toml(tiny_toml), KW, seed=0)
    table = torch.eye(len(vocab.perts))
    ds = SentenceDataset(metas, plans["train"], table, cell_set_len=8, seed=0)
    meta = metas[0]
    assert len(ds) >= plans["train"].n_cells // 8
    for i in range(0, len(ds), 5):
        rows = ds.cells[i]
        assert len(set(meta.pert[rows])) == 1 and len(set(meta.cell_type[rows])) == 1
        item = ds[i]
        assert item["basal"].shape == item["target"].shape == (8, meta.source.n_features)
        assert item["pert"].shape == (8, len(vocab.perts)) and item["pert"][0].argmax() == item["pert_idx"]
        _, pool = plans["train"].pools[ds.pool[i]]
        # basal cells are controls of the same cell type
        assert (meta.pert[pool] == 0).all() and set(meta.cell_type[pool]) == {int(item["cell_type_idx"])}
    again = SentenceDataset(metas, plans["train"], table, cell_set_len=8, seed=0)
    torch.testing.assert_close(ds[3]["basal"], again[3]["basal"])


def test_batch_mapping_strategy_draws_controls_of_the_same_batch(tiny_toml):
    kw = DataKwargs(pert_col="gene", cell_type_key="cell_type", batch_col="gem_group", control_pert="non-targeting",
                    basal_mapping_strategy="batch")
    metas, vocab, plans, _ = plan_splits(read_experiment_toml(tiny_toml), kw, seed=0)
    meta, plan = metas[0], plans["train"]
    for (_fid, rows), pid in zip(plan.groups, plan.group_pool):
        _, pool = plan.pools[pid]
        assert len(set(meta.batch[rows])) == 1
        assert set(meta.batch[pool]) == set(meta.batch[rows[:1]])


def test_passes_repeat_sentences_with_fresh_basal_draws(tiny_toml):
    metas, vocab, plans, _ = plan_splits(read_experiment_toml(tiny_toml), KW, seed=0)
    ds = SentenceDataset(metas, plans["train"], torch.eye(len(vocab.perts)), cell_set_len=8, seed=0, passes=3)
    n = ds.n_sentences
    assert len(ds) == 3 * n
    a, b = ds[2], ds[n + 2]
    torch.testing.assert_close(a["target"], b["target"])  # the same sentence ...
    assert not torch.equal(a["basal"], b["basal"])  # ... with other control cells


def test_lazy_and_in_memory_reads_agree(tmp_path, tiny_adata, monkeypatch):
    """Small files are read once into RAM; large ones row by row from disk: same values either way."""
    import state_tx.data as data

    a = tiny_adata.copy()
    a.obsm["X_hvg"] = sp.csr_matrix(a.obsm["X_hvg"])
    path = tmp_path / "m.h5ad"
    a.write_h5ad(path)
    rows = np.array([9, 1, 1, 30])
    got = {}
    for limit in (0, 2**30):
        monkeypatch.setattr(data, "IN_MEMORY_BYTES", limit)
        for space in ("gene", "all"):
            src = H5Source(path, space)
            got[limit, space] = src.read_rows(rows)
            assert (src._cache is not None) == (limit > 0)
    for space in ("gene", "all"):
        np.testing.assert_array_equal(got[0, space], got[2**30, space])


def test_training_from_disk_equals_training_from_ram(tiny_toml, make_train_args, tmp_path, monkeypatch):
    """Files above IN_MEMORY_BYTES are never loaded whole (the 1M-cell path): training reads rows from disk
    and ends with exactly the weights of a run on the in-memory matrix."""
    import state_tx.data as data
    from state_tx.cli import main

    reads = []
    real_read_all = data.H5Source._read_all
    monkeypatch.setattr(data.H5Source, "_read_all", lambda self: reads.append(self.path) or real_read_all(self))
    weights = {}
    for limit in (2**30, 0):
        monkeypatch.setattr(data, "IN_MEMORY_BYTES", limit)
        reads.clear()
        assert main(make_train_args(tiny_toml, tmp_path / str(limit), steps=3)) == 0
        assert bool(reads) == (limit > 0)  # the whole matrix is read only when it fits the limit
        weights[limit] = torch.load(tmp_path / str(limit) / "run" / "checkpoints" / "final.ckpt",
                                    weights_only=True)["model"]
    for key, value in weights[2**30].items():
        torch.testing.assert_close(weights[0][key], value, msg=key)


def test_train_shift_table_reads_the_training_split_only(tmp_path, tiny_adata):
    """data.kwargs.pert_train_shift: entry [c, p] is p's mean shift in the OTHER cell types' TRAINING cells (the
    mean-shift baseline's number for a held-out pair). Leakage guard: changing every held-out (val/test) cell
    leaves the table unchanged, changing a training cell of another cell type does not."""
    from state_tx.data import train_shift_table
    from state_tx.evaluate import carried_shift, mean_shifts

    perts = list(tiny_adata.uns["state_tx_synthetic"]["perturbations"])
    h5ad = tmp_path / "screen.h5ad"
    tiny_adata.write_h5ad(h5ad)
    # K562 held out entirely (zero-shot test) and two HepG2 perturbations few-shot
    toml = tmp_path / "t.toml"
    toml.write_text(f'[datasets]\nscreen = "{h5ad}"\n[training]\nscreen = "train"\n[zeroshot]\n"screen.K562" = "test"\n'
                    f'[fewshot."screen.HepG2"]\nval = ["{perts[0]}"]\ntest = ["{perts[1]}"]\n')

    def table_of(adata):
        adata.write_h5ad(h5ad)
        metas, vocab, plans, _ = plan_splits(read_experiment_toml(toml), KW, seed=0)
        return train_shift_table(metas, vocab, plans["train"]), vocab

    table, vocab = table_of(tiny_adata.copy())
    assert table.shape == (len(vocab.cell_types) + 1, len(vocab.perts), tiny_adata.obsm["X_hvg"].shape[1])
    ct, pert = tiny_adata.obs["cell_type"].astype(str).to_numpy(), tiny_adata.obs["gene"].astype(str).to_numpy()
    X = tiny_adata.obsm["X_hvg"]
    held_out = (ct == "K562") & (pert != "non-targeting") | (ct == "HepG2") & np.isin(pert, perts[:2])
    train = ~held_out & ~((ct == "K562") & (pert == "non-targeting"))  # K562's controls: no K562 shift is trained
    shifts = mean_shifts([(lambda r: X[np.flatnonzero(train)][r], pert[train], ct[train])], "non-targeting")
    k562, hepg2 = vocab.cell_types.index("K562"), vocab.cell_types.index("HepG2")
    for p in perts:
        want = carried_shift(shifts, "K562", p, X.shape[1])[0]  # the mean-shift baseline's carried shift
        np.testing.assert_allclose(table[k562, vocab.perts.index(p)].numpy(), want, atol=1e-5)
    # HepG2's own held-out perturbations: only K562's training cells could carry them, and K562 trains none
    assert (table[hepg2, vocab.perts.index(perts[1])] == 0).all() and (table[:, 0] == 0).all()  # control: 0
    assert (table[hepg2, vocab.perts.index(perts[2])] == 0).all()  # no OTHER cell type trains perts[2]

    changed = tiny_adata.copy()
    changed.obsm["X_hvg"] = X.copy()
    changed.obsm["X_hvg"][held_out] += 5.0
    torch.testing.assert_close(table_of(changed)[0], table)  # held-out cells never enter the table
    changed.obsm["X_hvg"] = X.copy()
    changed.obsm["X_hvg"][(ct == "HepG2") & (pert == perts[2])] += 5.0
    assert not torch.equal(table_of(changed)[0][k562], table[k562])  # a training cell does
    tiny_adata.write_h5ad(h5ad)
