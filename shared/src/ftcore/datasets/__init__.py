"""Real public data that ships with the core, for tests and `--dataset` demos (no download at run time).

`visium_mouse_brain()`: 49 Visium spots of an adult mouse brain section (10x Genomics' public
V1_Adult_Mouse_Brain, as squidpy 1.6.5's source distribution ships it in tests/_data/), with the
full-resolution H&E crop that covers them. The two files are squidpy's, unchanged:

    visium_mouse_brain_49.h5ad    = squidpy-1.6.5/tests/_data/test_data.h5ad  (49 spots x 1999 genes,
                                    X log-normalised, obsm['spatial'] in the crop's pixels, uns['spatial'])
    visium_mouse_brain_49_he.jpg  = squidpy-1.6.5/tests/_data/test_img.jpg    (950 x 1717 RGB)

The files are committed (squidpy's wheel does not carry them); their sha256 are in SHA256 below and
checked on load. Licences: squidpy's code and test data are BSD-3-Clause (Copyright (c)
2021 Theis Lab, 2025 scverse; the licence text ships beside the files, LICENSE.squidpy); 10x Genomics
publishes the Visium data set under CC BY 4.0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHA256 = {
    "visium_mouse_brain_49.h5ad": "f0227d2639b803401afd65c432ac047c6f04710221dbdf7f3d70a18eff1a3766",
    "visium_mouse_brain_49_he.jpg": "b87670003e05039f8c924d53fe98f3606991c78ffc629a3ee8f56bc5dd134269",
}
# patch sides as multiples of the spot diameter: the spot itself, and two rings of context around it
PATCH_SCALES = (1.0, 2.0, 3.0)


def _file(name: str) -> Path:
    path = HERE / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[name]:
        raise RuntimeError(f"{path} is not the file this version ships (sha256 {digest}); reinstall ftcore")
    return path


def he_patch_features(image: np.ndarray, xy: np.ndarray, spot_diameter: float,
                      scales=PATCH_SCALES) -> tuple[np.ndarray, list[str]]:
    """Hand-made image features of square H&E patches centred on each spot: [spots, 15 * len(scales)].

    Per patch (side = scale x spot diameter, clipped at the image edge): mean and sd of R, G, B; of the
    grey level: mean, sd and 10/50/90th percentiles; mean and sd of the grey gradient magnitude (texture);
    the fraction of dark pixels (grey < 0.45: haematoxylin-dense nuclei) and of near-white ones (grey >
    0.85: background or lumen). No learned model: a deterministic, download-free stand-in for a
    histology encoder's embedding.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    grey = img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(grey)
    grad = np.hypot(gx, gy)
    h, w = grey.shape
    names = []
    for s in scales:
        names += [f"{q}_{s:g}x" for q in ("r_mean", "g_mean", "b_mean", "r_sd", "g_sd", "b_sd", "grey_mean", "grey_sd",
                                          "grey_p10", "grey_p50", "grey_p90", "grad_mean", "grad_sd", "dark_frac",
                                          "white_frac")]
    out = np.zeros((len(xy), len(names)), dtype=np.float32)
    for i, (x, y) in enumerate(np.asarray(xy, dtype=np.float64)):
        row = []
        for s in scales:
            half = max(1, int(round(s * spot_diameter / 2)))
            x0, x1 = max(0, int(x) - half), min(w, int(x) + half + 1)
            y0, y1 = max(0, int(y) - half), min(h, int(y) + half + 1)
            if x0 >= x1 or y0 >= y1:
                raise ValueError(f"spot {i} at ({x:g}, {y:g}) lies outside the {w} x {h} image")
            rgb = img[y0:y1, x0:x1, :3].reshape(-1, 3)
            g = grey[y0:y1, x0:x1].ravel()
            t = grad[y0:y1, x0:x1].ravel()
            row += [*rgb.mean(0), *rgb.std(0), g.mean(), g.std(), *np.percentile(g, [10, 50, 90]), t.mean(), t.std(),
                    (g < 0.45).mean(), (g > 0.85).mean()]
        out[i] = row
    return out, names


def visium_mouse_brain(histology_key: str = "histology"):
    """The 49-spot Visium mouse brain AnnData (see the module docstring) with obsm[histology_key] =
    `he_patch_features` of its H&E crop and uns['histology_features'] = the feature names."""
    import anndata
    import matplotlib.image

    adata = anndata.read_h5ad(_file("visium_mouse_brain_49.h5ad"))
    image = matplotlib.image.imread(_file("visium_mouse_brain_49_he.jpg"))
    library = next(iter(adata.uns["spatial"]))
    diameter = float(adata.uns["spatial"][library]["scalefactors"]["spot_diameter_fullres"])
    feats, names = he_patch_features(image, np.asarray(adata.obsm["spatial"]), diameter)
    adata.obsm[histology_key] = feats
    adata.uns["histology_features"] = names
    adata.obs["slide"] = library
    return adata


def visium_mouse_brain_image() -> np.ndarray:
    """The H&E crop under `visium_mouse_brain()`'s spots: [height, width, 3] uint8 RGB, in the pixels of its
    obsm['spatial'] (for features a package computes from the image itself, e.g. sub-patches of each spot)."""
    import matplotlib.image

    return matplotlib.image.imread(_file("visium_mouse_brain_49_he.jpg"))
