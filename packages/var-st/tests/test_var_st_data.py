"""Data contract: gene selection, normalisation, splits, and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest

from ftcore.errors import UserError
from var_st.data import load_spots, make_split, top_variable_genes


def test_hvg_selection_normalisation_and_split(tiny):
    ad = tiny.adata()
    data = load_spots(ad, source="t", num_genes=tiny.genes)
    assert data.expression.shape == (ad.n_obs, tiny.genes) and data.histology.shape == (ad.n_obs, tiny.hist)
    assert len(set(data.gene_names)) == tiny.genes and set(data.gene_names) <= set(ad.var_names)
    # counts were log1p(CP10k)-normalised
    col = list(ad.var_names).index(data.gene_names[0])
    x = ad.X
    expected = np.log1p(x[:, col] / x.sum(1) * 1e4)
    np.testing.assert_allclose(data.expression[:, 0], expected, rtol=1e-5, atol=1e-5)
    # the chosen genes are the most variable ones (by scanpy's normalised dispersion)
    full = np.log1p(x / x.sum(1, keepdims=True) * 1e4)
    assert list(top_variable_genes(full, tiny.genes)) == [list(ad.var_names).index(g) for g in data.gene_names]
    # coordinates standardised per slide; held-out slides
    for s in np.unique(data.slides):
        np.testing.assert_allclose(data.coords[data.slides == s].mean(0), 0, atol=1e-5)
    assert set(data.slides[data.split["test"]]) == {"slide2"} and set(data.slides[data.split["val"]]) == {"slide1"}
    assert not set(data.split["train"]) & set(data.split["test"])


def test_log_normalised_input_is_used_as_is(tiny):
    ad = tiny.adata()
    ad.X = np.log1p(ad.X / ad.X.sum(1, keepdims=True) * 1e4).astype(np.float32)
    data = load_spots(ad, source="t", num_genes=None)
    np.testing.assert_allclose(data.expression, ad.X, rtol=1e-6)


def test_model_genes_are_taken_by_name_in_model_order(tiny):
    ad = tiny.adata()
    genes = list(ad.var_names[[5, 2, 9]])
    data = load_spots(ad, source="t", genes=genes)
    assert data.gene_names == genes
    with pytest.raises(UserError, match="not in var_names"):
        load_spots(ad, source="t", genes=genes + ["GENE_X"])


def test_split_rules():
    # one slide: a random spot split only when asked for (issue 16: never a silent random split)
    one = make_split(np.array(["a"] * 20), seed=0, random_split=True)[0]
    assert sum(len(v) for v in one.values()) == 20 and len(one["test"]) == 3
    with pytest.raises(UserError, match="holds one slide"):
        make_split(np.array(["a"] * 20), seed=0)
    two = make_split(np.array(["a"] * 10 + ["b"] * 5), seed=0)[0]
    assert list(two["test"]) == list(range(10, 15)) and len(two["val"]) == 1
    again = make_split(np.array(["a"] * 10 + ["b"] * 5), seed=0)[0]
    assert all(np.array_equal(two[k], again[k]) for k in two)


@pytest.mark.parametrize("mutate, phrase", [
    (lambda ad: ad.obsm.pop("histology"), "obsm['histology']"),
    (lambda ad: ad.obsm.pop("spatial"), "obsm['spatial']"),
    (lambda ad: ad.obsm["histology"].__setitem__((3, 1), np.nan), "NaN/inf, first at row 3"),
    (lambda ad: ad.X.__setitem__((2, 2), np.inf), "NaN/inf, first at row 2"),
    (lambda ad: ad.X.__setitem__((2, 2), -1.0), "negative"),
])
def test_bad_inputs_raise_user_errors(tiny, mutate, phrase):
    ad = tiny.adata()
    mutate(ad)
    with pytest.raises(UserError, match=phrase.replace("[", r"\[").replace("]", r"\]")):
        load_spots(ad, source="t", num_genes=tiny.genes)


def test_wrong_feature_dim_and_too_few_genes(tiny):
    ad = tiny.adata()
    with pytest.raises(UserError, match="wrong feature dim"):
        load_spots(ad, source="t", num_genes=tiny.genes, histology_dim=tiny.hist + 1)
    with pytest.raises(UserError, match="--num_genes 40"):
        load_spots(ad, source="t", num_genes=200)


def test_split_by_named_slides_and_explicit_random_split(tiny):
    ad = tiny.adata(slides=4, grid=3)
    data = load_spots(ad, source="t", num_genes=tiny.genes, val_slides=("slide0",), test_slides=("slide1",))
    assert set(data.slides[data.split["val"]]) == {"slide0"} and set(data.slides[data.split["test"]]) == {"slide1"}
    assert set(data.slides[data.split["train"]]) == {"slide2", "slide3"}
    only_test = load_spots(ad, source="t", num_genes=tiny.genes, test_slides=("slide0",))
    assert set(only_test.slides[only_test.split["val"]]) == {"slide3"}  # the rule on the remaining slides
    del ad.obs["slide"]
    with pytest.raises(UserError, match="obs has no column 'slide'.*--random_split"):
        load_spots(ad, source="t", num_genes=tiny.genes)
    rand = load_spots(ad, source="t", num_genes=tiny.genes, random_split=True)
    assert sum(len(v) for v in rand.split.values()) == ad.n_obs and "random" in rand.split_rule
    # predict needs no split: a file without slide ids is one slide, unless the column was named
    assert load_spots(ad, source="t", num_genes=tiny.genes, split=False).split == {}
    with pytest.raises(UserError, match="obs has no column 'slide'"):
        load_spots(ad, source="t", num_genes=tiny.genes, split=False, slide_key_given=True)


def test_text_coordinates_that_are_numbers_are_accepted(tiny):
    ad = tiny.adata()
    expected = load_spots(ad, source="t", num_genes=tiny.genes).coords
    ad.obsm["spatial"] = ad.obsm["spatial"].astype(str).astype(object)
    np.testing.assert_allclose(load_spots(ad, source="t", num_genes=tiny.genes).coords, expected, rtol=1e-6)


def test_small_integer_counts_are_counts_by_the_core_rule(tiny):
    # the old package rule read integers with max <= 20 as log values; THE rule (ftcore.data) says counts
    ad = tiny.adata()
    ad.X = np.minimum(ad.X, 20).astype(np.float32)
    data = load_spots(ad, source="t", num_genes=None)
    x = ad.X
    np.testing.assert_allclose(data.expression, np.log1p(x / x.sum(1, keepdims=True) * 1e4), rtol=1e-5, atol=1e-5)
