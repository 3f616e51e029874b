"""The core's real Visium section (ftcore.datasets.visium_mouse_brain) as this package's four input files.

49 spots of 10x Genomics' adult mouse brain with squidpy's full-resolution H&E crop; X is log-normalised
(1999 genes). The package reads a graph of nuclei per spot; the section has no segmentation, so its
nodes are image sub-patches instead:

- nodes: each spot's disk is cut into a 3 x 3 grid of square sub-patches (side = spot diameter / 3);
  a node's features are ftcore.datasets.he_patch_features of its sub-patch and of the spot-sized
  square around it (2 scales x 15 = 30 numbers), z-scored per feature over the section. They stand
  in for HoVer-Net nuclear features: colour, stain density and texture, not nuclei;
- grid: array_row / array_col recovered from the pixel coordinates (Visium's hexagonal lattice: a
  row every spot-pitch x sqrt(3)/2, a column every half pitch; checked to be whole numbers);
- samples: one section, but cross-validation splits by sample, so the section is cut into
  N_BANDS bands of spot rows (`<library>_rows<a>-<b>`): the folds test one band each;
- bulk: the data set has no bulk RNA. bulk.h5ad is PSEUDO-BULK of the same section: each of
  N_PSEUDO_BULK samples sums the (de-logged) expression of a spot and its nearest neighbours
  (BULK_SPOTS spots), re-normalised and logged, with those spots' sub-patch nodes as its cells.
  Pretraining on it therefore sees the test band's expression (aggregated): it exercises the
  pipeline on real images and expression; it is no evidence that bulk pretraining helps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from spatial_transfer.data import write_data_dir

NAME = "visium-mouse-brain"
SUB = 3  # sub-patches per side of a spot
N_BANDS = 4
N_PSEUDO_BULK = 40
BULK_SPOTS = 8
IN_DIM = 30  # he_patch_features at 2 scales

# Run settings that fit this data set (defaults < this preset < --config < --set < flags)
PRESET = {
    "model": {"in_dim": IN_DIM, "ff_dim": 256},
    "graph": {"window": 4, "k": 6, "tile_size": 140.0},  # tile ~ one spot pitch (137 px in the crop)
    "bulk": {"epochs": 12, "batch_size": 8, "lr": 1e-3},
    "spatial": {"epochs": 8, "batch_size": 4},
    "folds": N_BANDS,
}


def _grid(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel centres -> (array_row, array_col, pitch) on Visium's hexagonal lattice."""
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    pitch = float(np.median(d.min(1)))
    row = (xy[:, 1] - xy[:, 1].min()) / (pitch * np.sqrt(3) / 2)
    col = (xy[:, 0] - xy[:, 0].min()) / (pitch / 2)
    if np.abs(row - row.round()).max() > 0.2 or np.abs(col - col.round()).max() > 0.2:
        raise RuntimeError("spot centres are not on a hexagonal Visium lattice")  # the shipped file is fixed
    return row.round().astype(np.int64), col.round().astype(np.int64), pitch


def build(seed: int = 0):
    """-> (spatial, spatial_cells, bulk, bulk_cells) AnnData objects in the package's format (data.py)."""
    import anndata
    import pandas as pd

    from ftcore.data import dense, log_normalise
    from ftcore.datasets import he_patch_features, visium_mouse_brain, visium_mouse_brain_image

    adata = visium_mouse_brain()
    image = visium_mouse_brain_image()
    library = next(iter(adata.uns["spatial"]))
    diameter = float(adata.uns["spatial"][library]["scalefactors"]["spot_diameter_fullres"])
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    X = dense(adata.X, np.float32)
    row, col, _ = _grid(xy)

    # nodes: SUB x SUB sub-patches per spot, features at the sub-patch and the spot scale
    step = diameter / SUB
    offsets = (np.arange(SUB) - (SUB - 1) / 2) * step
    grid = np.stack(np.meshgrid(offsets, offsets, indexing="xy"), -1).reshape(-1, 2)  # [SUB*SUB, 2]
    node_xy = (xy[:, None, :] + grid[None]).reshape(-1, 2)
    node_spot = np.repeat(np.arange(len(xy)), len(grid))
    feat, names = he_patch_features(image, node_xy, step, scales=(1.0, float(SUB)))
    feat = (feat - feat.mean(0)) / np.maximum(feat.std(0), 1e-6)

    bands = np.array_split(np.unique(row), N_BANDS)
    band_of_row = {int(r): b for b, rows in enumerate(bands) for r in rows}
    band_name = [f"{library}_rows{rows[0]}-{rows[-1]}" for rows in bands]
    sample = np.array([band_name[band_of_row[int(r)]] for r in row])
    spot_names = list(map(str, adata.obs_names))
    obs = pd.DataFrame({"sample": sample, "array_row": row, "array_col": col}, index=spot_names)
    for key in ("in_tissue", "leiden"):
        if key in adata.obs:
            obs[key] = adata.obs[key].to_numpy()
    spatial = anndata.AnnData(X, obs=obs, var=adata.var[[]].copy())
    spatial.obsm["spatial"] = xy.astype(np.float32)
    spatial.uns["spatial"] = adata.uns["spatial"]
    feat_var = pd.DataFrame(index=names)
    spatial_cells = anndata.AnnData(feat.astype(np.float32), var=feat_var, obs=pd.DataFrame({
        "sample": sample[node_spot], "spot": [spot_names[i] for i in node_spot],
        "x": node_xy[:, 0].astype(np.float32), "y": node_xy[:, 1].astype(np.float32),
    }, index=[f"{spot_names[s]}_p{j}" for s, j in zip(node_spot, np.tile(np.arange(len(grid)), len(xy)))]))

    # pseudo-bulk: a spot and its BULK_SPOTS - 1 nearest neighbours, summed in linear space
    rng = np.random.default_rng(seed)
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    norm = np.expm1(X.astype(np.float64))
    b_expr, b_obs, b_feat = [], [], []
    for b, centre in enumerate(rng.choice(len(xy), N_PSEUDO_BULK, replace=len(xy) < N_PSEUDO_BULK)):
        spots = np.argsort(d[centre])[:BULK_SPOTS]
        total = norm[spots].sum(0)
        b_expr.append(log_normalise(total))  # the summed spots, normalised as one sample
        nodes = np.nonzero(np.isin(node_spot, spots))[0]
        name = f"pseudobulk{b:02d}"
        b_feat.append(feat[nodes])
        b_obs.append(pd.DataFrame({"sample": name, "x": node_xy[nodes, 0].astype(np.float32),
                                   "y": node_xy[nodes, 1].astype(np.float32)},
                                  index=[f"{name}_n{i}" for i in range(len(nodes))]))
    bulk = anndata.AnnData(np.stack(b_expr).astype(np.float32),
                           obs=pd.DataFrame(index=[f"pseudobulk{b:02d}" for b in range(N_PSEUDO_BULK)]),
                           var=adata.var[[]].copy())
    bulk_cells = anndata.AnnData(np.concatenate(b_feat).astype(np.float32), obs=pd.concat(b_obs), var=feat_var.copy())
    return spatial, spatial_cells, bulk, bulk_cells


def write(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the four files into out_dir (atomically; skipped if all exist)."""
    return write_data_dir(out_dir, lambda: build(seed))
