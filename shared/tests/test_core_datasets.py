"""The shipped real data set: squidpy's 49 Visium spots + H&E crop, and the patch features."""

from __future__ import annotations

import numpy as np
import pytest

from ftcore import datasets


def test_visium_mouse_brain_is_real_and_aligned():
    pytest.importorskip("anndata")
    adata = datasets.visium_mouse_brain()
    assert adata.shape == (49, 1999) and adata.var_names[1] == "St18"
    xy = np.asarray(adata.obsm["spatial"])
    assert xy.shape == (49, 2) and xy.min() >= 0 and xy[:, 0].max() < 950 and xy[:, 1].max() < 1717
    feats = adata.obsm["histology"]
    assert feats.shape == (49, 15 * len(datasets.PATCH_SCALES)) and np.isfinite(feats).all()
    assert len(adata.uns["histology_features"]) == feats.shape[1]
    # the spots sit on stained tissue: their centre patches are darker than the image's glass border
    assert feats[:, adata.uns["histology_features"].index("grey_mean_1x")].max() < 0.75


def test_patch_features_match_a_direct_computation():
    rng = np.random.default_rng()
    image = rng.integers(0, 256, size=(60, 80, 3)).astype(np.uint8)
    xy = np.array([[10.0, 10.0], [79.0, 59.0], [40.0, 30.0]])
    feats, names = datasets.he_patch_features(image, xy, spot_diameter=8.0, scales=(1.0, 2.0))
    img = image.astype(np.float64) / 255
    grey = img @ np.array([0.299, 0.587, 0.114])
    for i, (x, y) in enumerate(xy.astype(int)):
        for s, half in ((1.0, 4), (2.0, 8)):
            patch = grey[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
            rgb = img[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
            got = dict(zip(names, feats[i]))
            np.testing.assert_allclose(got[f"grey_mean_{s:g}x"], patch.mean(), rtol=1e-5)
            np.testing.assert_allclose(got[f"g_sd_{s:g}x"], rgb[..., 1].std(), rtol=1e-4)
            np.testing.assert_allclose(got[f"grey_p90_{s:g}x"], np.percentile(patch, 90), rtol=1e-4)
            np.testing.assert_allclose(got[f"dark_frac_{s:g}x"], (patch < 0.45).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        datasets.he_patch_features(image, np.array([[500.0, 500.0]]), spot_diameter=8.0)


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "visium_mouse_brain_49.h5ad").write_bytes(b"not the file")
    monkeypatch.setattr(datasets, "HERE", tmp_path)
    with pytest.raises(RuntimeError, match="not the file this version ships"):
        datasets._file("visium_mouse_brain_49.h5ad")


def test_squidpys_licence_ships_beside_its_files():
    """BSD-3-Clause: a redistribution keeps the copyright notice and the licence text (issue 17: licences)."""
    text = (datasets.HERE / "LICENSE.squidpy").read_text()
    assert "BSD 3-Clause License" in text and "Copyright (c) 2021, Theis Lab" in text and "Redistribution" in text
    for name in datasets.SHA256:
        assert name in text, f"LICENSE.squidpy does not say which file {name} is"
    assert "CC BY 4.0" in text
