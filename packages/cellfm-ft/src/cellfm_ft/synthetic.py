"""Generated cells for the demo and the tests: cell types defined by marker-gene programs, donors with
their own gene-level batch effects, negative-binomial counts."""

from __future__ import annotations

import numpy as np

# Marker programs of common PBMC types (real gene symbols, so outputs read naturally).
MARKERS = {
    "CD4 T": ["CD3D", "CD3E", "IL7R", "CCR7", "LTB", "CD4"],
    "CD8 T": ["CD3D", "CD8A", "CD8B", "GZMK", "CCL5", "NKG7"],
    "NK": ["GNLY", "NKG7", "KLRD1", "PRF1", "GZMB", "FCGR3A"],
    "B": ["MS4A1", "CD79A", "CD79B", "CD19", "BANK1", "IGHM"],
    "CD14 Monocyte": ["CD14", "LYZ", "S100A8", "S100A9", "FCN1", "VCAN"],
    "Dendritic": ["FCER1A", "CST3", "CLEC10A", "CD1C", "HLA-DQA1", "ITGAX"],
}


def synthetic_cells(n_cells: int = 600, n_genes: int = 240, n_donors: int = 6, seed: int = 0):
    """AnnData of raw counts: obs cell_type, donor; var_names gene symbols.  X [n_cells, n_genes] int"""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    markers = list(dict.fromkeys(g for gs in MARKERS.values() for g in gs))
    genes = markers + [f"GENE{i:04d}" for i in range(n_genes - len(markers))]
    types = list(MARKERS)
    base = rng.gamma(0.6, 0.6, len(genes))  # housekeeping-to-rare spread of baseline expression
    program = np.ones((len(types), len(genes)))
    program[:, : len(markers)] = 0.3  # marker genes are mostly silent outside their cell type
    for t, name in enumerate(types):
        program[t, [genes.index(g) for g in MARKERS[name]]] = rng.uniform(0.8, 2.0, len(MARKERS[name]))
        program[t, rng.choice(np.arange(len(markers), len(genes)), 12, replace=False)] *= 3  # weaker programs
    donor_effect = rng.lognormal(0, 0.25, (n_donors, len(genes)))
    cell_type = rng.choice(len(types), n_cells, p=np.linspace(1.5, 0.5, len(types)) / np.linspace(1.5, 0.5, len(types)).sum())
    donor = rng.integers(0, n_donors, n_cells)
    library = rng.lognormal(np.log(800), 0.4, n_cells)
    mu = base * program[cell_type] * donor_effect[donor]
    mu = mu / mu.sum(1, keepdims=True) * library[:, None]
    r = 2.0  # negative-binomial dispersion
    counts = rng.poisson(rng.gamma(r, mu / r)).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([types[t] for t in cell_type]), "donor": pd.Categorical([f"D{d + 1}" for d in donor])},
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    from scipy import sparse

    return ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
