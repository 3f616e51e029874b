"""The embedded default data set: a small Perturb-seq-like screen with known structure.

Cells of several cell types carry a log-normalised expression profile built from gene programs
(co-regulated gene modules). Each perturbation knocks down its target gene and shifts one to
three programs; how strongly depends on the cell type (shared effect x a cell-type factor, plus
programs that respond in one cell type only), so a model must combine what a perturbation does
with the basal state of the cell type it is applied to. Batches (gem groups) add a small
technical shift. Deterministic for a given seed.

    adata = make_perturbation_adata(seed=0)       # X: all genes, obsm['X_hvg']: the HVGs
    write_demo(Path("runs/state-tx/demo/data"))   # demo.h5ad + demo.toml (absolute paths)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTROL = "non-targeting"
CELL_TYPES = ("K562", "HepG2", "Jurkat")


def make_perturbation_adata(n_genes: int = 256, n_hvg: int = 128, n_perts: int = 20, cells_per_pert: int = 48,
                            n_controls: int = 240, cell_types: tuple[str, ...] = CELL_TYPES, n_batches: int = 3,
                            n_programs: int = 10, seed: int = 0):
    """AnnData [cells x n_genes] with obs gene / cell_type / gem_group, var highly_variable, obsm['X_hvg']."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:04d}" for i in range(n_genes)])
    # the HVGs are where the programs live; the remaining genes are quiet housekeeping genes
    hvg = np.sort(rng.choice(n_genes, n_hvg, replace=False))
    programs = [rng.choice(hvg, 12, replace=False) for _ in range(n_programs)]
    targets = rng.choice(hvg, n_perts, replace=False)  # perturbations target HVGs (knockdowns are visible)
    pert_names = [str(g) for g in genes[targets]]

    # basal mean profile per cell type (log-normalised scale ~0..3), programs at cell-type levels
    base = rng.gamma(2.0, 0.35, n_genes)
    ct_mean = {}
    for ct in cell_types:
        mu = base.copy()
        for prog in programs:
            mu[prog] += rng.normal(0, 0.5)
        ct_mean[ct] = np.clip(mu, 0.05, None)
    # perturbation effects: program shifts; a cell-type factor scales the shared part and one
    # program responds in a single cell type only
    effects = {}
    for p, tgt in zip(pert_names, targets):
        shared = np.zeros(n_genes)
        for prog in rng.choice(n_programs, min(int(rng.integers(1, 4)), n_programs), replace=False):
            shared[programs[prog]] += rng.choice([-1, 1]) * rng.uniform(0.6, 1.4)
        specific_ct = rng.choice(cell_types)
        specific_prog = programs[rng.integers(n_programs)]
        for ct in cell_types:
            eff = shared * rng.uniform(0.5, 1.5)
            if ct == specific_ct:
                eff[specific_prog] += rng.choice([-1, 1]) * 0.8
            effects[p, ct] = (eff, tgt)
    batch_shift = {f"batch{b}": rng.normal(0, 0.08, n_genes) for b in range(n_batches)}
    loadings = rng.normal(0, 0.25, (4, n_genes))  # shared cell-to-cell variation (cell cycle, size ...)

    blocks, obs = [], []
    for ct in cell_types:
        for label, n in [(CONTROL, n_controls)] + [(p, cells_per_pert) for p in pert_names]:
            mu = ct_mean[ct].copy()
            if label != CONTROL:
                eff, tgt = effects[label, ct]
                mu = mu + eff
                mu[tgt] *= 0.15  # knockdown of the target gene
            batches = rng.choice(list(batch_shift), n)
            x = mu + np.stack([batch_shift[b] for b in batches]) + rng.normal(0, 1, (n, 4)) @ loadings
            x = x + rng.normal(0, 0.3, (n, n_genes))
            x[rng.random((n, n_genes)) < 0.1] = 0  # dropouts, as in sparse single-cell data
            blocks.append(np.clip(x, 0, None).astype(np.float32))
            obs += [(label, ct, b) for b in batches]
    X = np.concatenate(blocks)
    obs_df = pd.DataFrame(obs, columns=["gene", "cell_type", "gem_group"])
    for col in obs_df:
        obs_df[col] = obs_df[col].astype("category")
    obs_df.index = [f"cell{i:06d}" for i in range(len(obs_df))]
    var = pd.DataFrame(index=genes)
    var["highly_variable"] = np.isin(np.arange(n_genes), hvg)
    adata = ad.AnnData(X=X, obs=obs_df, var=var)
    adata.obsm["X_hvg"] = X[:, hvg].copy()
    adata.uns["state_tx_synthetic"] = {"seed": seed, "control_pert": CONTROL, "perturbations": pert_names}
    return adata


# Held-out perturbations of the demo's fewshot split (seen in other cell types, not in HepG2)
# and a whole zeroshot cell type.
DEMO_TOML = """\
# Demo split (cell-load TOML): everything trains except what [zeroshot] / [fewshot] hold out.
[datasets]
demo = "{path}"

[training]
demo = "train"

[zeroshot]
"demo.Jurkat" = "test"

[fewshot."demo.HepG2"]
val = [{val}]
test = [{test}]
"""


def write_demo(data_dir: Path, seed: int = 0, **sizes) -> tuple[Path, Path]:
    """Write demo.h5ad and demo.toml under data_dir (reused when already there); return both paths."""
    from ftcore.io import atomic_write_h5ad, atomic_write_text

    data_dir = Path(data_dir).resolve()
    h5ad, toml = data_dir / "demo.h5ad", data_dir / "demo.toml"
    adata = None
    if not h5ad.exists():
        adata = make_perturbation_adata(seed=seed, **sizes)
        atomic_write_h5ad(adata, h5ad)
    if not toml.exists():
        if adata is None:
            import anndata as ad

            adata = ad.read_h5ad(h5ad, backed="r")
        perts = list(adata.uns["state_tx_synthetic"]["perturbations"])
        q = lambda names: ", ".join(f'"{p}"' for p in names)  # noqa: E731
        atomic_write_text(toml, DEMO_TOML.format(path=h5ad, val=q(perts[:3]), test=q(perts[3:8])))
    return h5ad, toml
