"""The embedded default data set: small, deterministic, and built like the real thing.

Cell types with distinct nuclear-feature profiles (plus per-slide stain shift and nucleus-level
noise) are laid out in spatial domains (each type's abundance is a sum of Gaussian bumps); spots
on a regular grid capture the nuclei within their radius, others lie between spots. Each type has
a gene program (a shared baseline and type markers); a spot's counts are Poisson around the sum of
its nuclei's programs times a library size, then log-normalised (total 1e4, log1p), as in the
guide's `log_normalized` runs. Bulk samples are whole regions whose expression aggregates over all
their nuclei, measured on a gene panel (372 genes) overlapping the spatial panel (897 genes).
So composition drives expression, and the bulk task teaches the GNN what the spatial task needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftcore.data import log_normalise
from spatial_transfer.data import write_data_dir


@dataclass
class DemoSpec:
    seed: int = 0
    n_cell_types: int = 6
    in_dim: int = 128
    n_universe_genes: int = 1000
    bulk_genes: int = 372
    spatial_genes: int = 897
    n_spatial_samples: int = 10
    grid: int = 6  # spots per side of each spatial slide
    spot_spacing: float = 100.0  # centre-to-centre (Visium: 100 um)
    spot_radius: float = 27.5  # capture area radius (Visium: 55 um diameter)
    cells_per_spot: float = 8.0
    cells_between_spots: float = 3.0  # per spot pitch, outside every spot
    n_bulk_samples: int = 60
    bulk_region: float = 500.0  # side of a bulk sample's tissue region
    bulk_cells: int = 300
    feature_noise: float = 2.0  # nucleus-level noise relative to type-profile spread 1
    stain_shift: float = 0.3  # per-slide feature offset


def _type_field(rng, n_types: int, side: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Random Gaussian bumps per cell type: centres [T, 3, 2], weights [T, 3], width."""
    centres = rng.uniform(0, side, size=(n_types, 3, 2))
    # slide-level composition differs a lot between samples (Dirichlet), bumps set the layout
    weights = rng.gamma(2.0, 1.0, size=(n_types, 3)) * rng.dirichlet(np.full(n_types, 0.7))[:, None] * n_types
    return centres, weights, side / 4


def _sample_types(rng, xy: np.ndarray, field) -> np.ndarray:
    centres, weights, width = field
    d2 = ((xy[:, None, None, :] - centres[None]) ** 2).sum(-1)  # [N, T, 3]
    abundance = (weights[None] * np.exp(-d2 / (2 * width**2))).sum(-1) + 0.05  # [N, T]
    p = abundance / abundance.sum(1, keepdims=True)
    u = rng.random(len(xy))[:, None]
    return (p.cumsum(1) < u).sum(1).clip(max=p.shape[1] - 1)


def _features(rng, types: np.ndarray, profiles: np.ndarray, spec: DemoSpec) -> np.ndarray:
    shift = rng.normal(0, spec.stain_shift, size=spec.in_dim)
    noise = rng.normal(0, spec.feature_noise, size=(len(types), spec.in_dim))
    return (profiles[types] + shift + noise).astype(np.float32)


def generate(spec: DemoSpec = DemoSpec()):
    """-> (spatial, spatial_cells, bulk, bulk_cells) AnnData objects (see data.py for the format)."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(spec.seed)
    T, U = spec.n_cell_types, spec.n_universe_genes
    profiles = rng.normal(0, 1, size=(T, spec.in_dim))
    baseline = np.exp(rng.normal(0, 1.0, size=U))
    programs = np.tile(baseline, (T, 1))
    for t in range(T):  # each type raises its own markers
        markers = rng.choice(U, size=U // 8, replace=False)
        programs[t, markers] *= np.exp(rng.uniform(1.0, 3.0, size=len(markers)))
    programs *= 0.3  # ~4000 UMIs per Visium-sized spot
    genes = np.array([f"GENE{i:04d}" for i in range(U)])
    spatial_panel = np.sort(rng.choice(U, spec.spatial_genes, replace=False))
    bulk_panel = np.sort(rng.choice(U, spec.bulk_genes, replace=False))

    # ---- spatial slides
    spot_obs, spot_expr, cell_obs, cell_feat = [], [], [], []
    side = spec.grid * spec.spot_spacing
    for s in range(spec.n_spatial_samples):
        sample = f"slide{s:02d}"
        field = _type_field(rng, T, side)
        rows, cols = np.meshgrid(np.arange(spec.grid), np.arange(spec.grid), indexing="ij")
        centres = (np.stack([cols.ravel(), rows.ravel()], 1) + 0.5) * spec.spot_spacing
        xy_all, spot_all = [], []
        for i, c in enumerate(centres):
            n_in = max(1, rng.poisson(spec.cells_per_spot))
            r = spec.spot_radius * np.sqrt(rng.random(n_in))
            a = rng.uniform(0, 2 * np.pi, n_in)
            xy_all.append(c + np.stack([r * np.cos(a), r * np.sin(a)], 1))
            spot_all += [i] * n_in
            n_out = rng.poisson(spec.cells_between_spots)  # between spots: in the pitch square, outside the disk
            pts = c + rng.uniform(-spec.spot_spacing / 2, spec.spot_spacing / 2, size=(n_out, 2))
            pts = pts[np.linalg.norm(pts - c, axis=1) > spec.spot_radius]
            xy_all.append(pts)
            spot_all += [-1] * len(pts)
        xy = np.concatenate(xy_all)
        spot_of = np.array(spot_all)
        types = _sample_types(rng, xy, field)
        feat = _features(rng, types, profiles, spec)
        names = [f"{sample}_r{r}c{c}" for r, c in zip(rows.ravel(), cols.ravel())]
        lam = np.zeros((len(centres), U))
        np.add.at(lam, spot_of[spot_of >= 0], programs[types[spot_of >= 0]])
        library = rng.lognormal(0, 0.2, size=(len(centres), 1))
        counts = rng.poisson(lam * library)[:, spatial_panel]
        spot_expr.append(log_normalise(counts))
        spot_obs.append(pd.DataFrame({"sample": sample, "array_row": rows.ravel(), "array_col": cols.ravel()}, index=names))
        cell_obs.append(pd.DataFrame({
            "sample": sample, "spot": [names[i] if i >= 0 else "" for i in spot_of],
            "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32), "cell_type": types.astype(str),
        }, index=[f"{sample}_n{i}" for i in range(len(xy))]))
        cell_feat.append(feat)

    spatial = anndata.AnnData(np.concatenate(spot_expr), obs=pd.concat(spot_obs),
                              var=pd.DataFrame(index=genes[spatial_panel]))
    spatial_cells = anndata.AnnData(np.concatenate(cell_feat), obs=pd.concat(cell_obs),
                                    var=pd.DataFrame(index=[f"feat{i}" for i in range(spec.in_dim)]))

    # ---- bulk samples
    b_expr, b_cells, b_feat = [], [], []
    for s in range(spec.n_bulk_samples):
        sample = f"bulk{s:03d}"
        field = _type_field(rng, T, spec.bulk_region)
        xy = rng.uniform(0, spec.bulk_region, size=(spec.bulk_cells, 2))
        types = _sample_types(rng, xy, field)
        lam = programs[types].sum(0, keepdims=True) * 10  # bulk RNA: far more reads than a spot
        b_expr.append(log_normalise(rng.poisson(lam)[:, bulk_panel]))
        b_feat.append(_features(rng, types, profiles, spec))
        b_cells.append(pd.DataFrame({"sample": sample, "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
                                     "cell_type": types.astype(str)}, index=[f"{sample}_n{i}" for i in range(len(xy))]))
    bulk = anndata.AnnData(np.concatenate(b_expr), obs=pd.DataFrame(index=[f"bulk{s:03d}" for s in range(spec.n_bulk_samples)]),
                           var=pd.DataFrame(index=genes[bulk_panel]))
    bulk_cells = anndata.AnnData(np.concatenate(b_feat), obs=pd.concat(b_cells),
                                 var=pd.DataFrame(index=[f"feat{i}" for i in range(spec.in_dim)]))
    return spatial, spatial_cells, bulk, bulk_cells


def write_demo_data(out_dir: str | os.PathLike, spec: DemoSpec = DemoSpec()) -> Path:
    """Write the four files of the data format into out_dir (atomically; skipped if all exist)."""
    return write_data_dir(out_dir, lambda: generate(spec))
