"""The embedded demo data set: a small, deterministic spatial transcriptomics study.

What it imitates (so the demo exercises the same paths real data does):
  - several slides of spots on a jittered grid (pixel coordinates, like Visium's obsm['spatial']);
  - a few gene programs (cell-type / niche signatures) whose activity varies smoothly in space
    (random low-frequency fields per slide), sharing one gene-loading matrix across slides;
  - raw counts: library size varies per spot, counts are negative binomial around
    library x softmax(baseline + programs @ loadings), genes beyond the programs are noise;
  - histology features [N, 1024] that see the programs only through a nonlinear map (random
    two-layer tanh network), plus a per-slide staining offset and per-spot noise.
"""

from __future__ import annotations

import numpy as np


def make_demo_adata(n_slides: int = 5, grid: int = 18, n_genes: int = 300, n_programs: int = 6,
                    histology_dim: int = 1024, seed: int = 0):
    """AnnData with raw counts X, obsm['spatial'], obsm['histology'], obs['slide'] (n_slides * grid^2 spots)."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    loadings = rng.gamma(0.6, 1.0, size=(n_programs, n_genes)) * (rng.random((n_programs, n_genes)) < 0.25)
    baseline = rng.normal(0, 1.0, n_genes)
    w1 = rng.normal(0, 1.0, (n_programs, 64))
    w2 = rng.normal(0, 1.0 / 8, (64, histology_dim))
    xs, hs, cs, ss = [], [], [], []
    for s in range(n_slides):
        gx, gy = np.meshgrid(np.arange(grid), np.arange(grid))
        coords = np.stack([gx.ravel() + 0.5 * (gy.ravel() % 2), gy.ravel()], 1).astype(float)
        coords += rng.normal(0, 0.1, coords.shape)
        # smooth program fields: sums of random low-frequency cosines
        fields = np.zeros((len(coords), n_programs))
        for p in range(n_programs):
            for _ in range(3):
                freq = rng.normal(0, 2.0 * np.pi / grid, 2)
                fields[:, p] += np.cos(coords @ freq + rng.uniform(0, 2 * np.pi))
        activity = np.exp(1.2 * fields)
        activity /= activity.sum(1, keepdims=True)
        logits = baseline + 3.0 * activity @ loadings
        rate = np.exp(logits - logits.max(1, keepdims=True))
        rate /= rate.sum(1, keepdims=True)
        library = rng.lognormal(np.log(3000), 0.35, len(coords))[:, None]
        mean = library * rate
        dispersion = 5.0
        counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))
        stain = rng.normal(0, 0.3, histology_dim)
        hidden = np.tanh((activity - activity.mean(0)) * 4 @ w1 + rng.normal(0, 0.3, (len(coords), 64)))
        hist = np.tanh(hidden @ w2) + stain + rng.normal(0, 0.3, (len(coords), histology_dim))
        xs.append(counts)
        hs.append(hist)
        cs.append(coords * 100.0 + rng.uniform(0, 500, 2))  # pixel units, each slide elsewhere
        ss += [f"slide{s}"] * len(coords)
    obs = pd.DataFrame({"slide": pd.Categorical(ss)}, index=[f"spot{i}" for i in range(len(ss))])
    var = pd.DataFrame(index=[f"gene{g:03d}" for g in range(n_genes)])
    adata = anndata.AnnData(np.concatenate(xs).astype(np.float32), obs=obs, var=var)
    adata.obsm["spatial"] = np.concatenate(cs).astype(np.float32)
    adata.obsm["histology"] = np.concatenate(hs).astype(np.float32)
    adata.uns["var_st_demo"] = {"seed": seed, "n_programs": n_programs}
    return adata
