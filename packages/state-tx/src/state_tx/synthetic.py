"""The embedded default data set: a small Perturb-seq-like screen with known structure.

Cells of several cell types carry a log-normalised expression profile built from gene programs
(co-regulated gene modules). Each perturbation knocks down its target gene and shifts one to
three programs; how strongly depends on the cell type (shared effect x a cell-type factor, plus
programs that respond in one cell type only), so a model must combine what a perturbation does
with the basal state of the cell type it is applied to. Batches (gem groups) add a small
technical shift. Deterministic for a given seed.

    adata = make_perturbation_adata(seed=0)       # X: all genes, obsm['X_hvg']: the HVGs
    write_demo(Path("runs/state-tx/demo/data"))   # demo.h5ad + demo.toml (absolute paths)

A second design, `make_heterogeneous_adata` (write_demo(..., design="heterogeneous")), is closer to a
real screen and harder for a model: counts (negative binomial) normalised as scanpy does (CP10k,
log1p); a third of the perturbations have no effect at all; effects depend on the cell type (they
scale with how active the responding program is in that cell type, some programs respond only where
they are active, and one program per perturbation responds in one cell type at random); gem groups
shift every gene and the sequencing depth, each cell type was run in two of four gem groups, and each
perturbation's cells are spread over them in other proportions than the controls'.
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


def make_heterogeneous_adata(n_genes: int = 256, n_hvg: int = 128, n_perts: int = 24,
                             cells_per_pert: tuple[int, int] = (40, 90), n_controls: int = 320,
                             cell_types: tuple[str, ...] = CELL_TYPES + ("RPE1",), n_batches: int = 4,
                             n_programs: int = 12, null_fraction: float = 1 / 3, depth: float = 4000.0,
                             seed: int = 0):
    """A harder screen (module docstring): AnnData [cells x n_genes] of log1p(CP10k) values, raw counts in
    layers['counts'], obs gene / cell_type / gem_group, var highly_variable, obsm['X_hvg'];
    uns['state_tx_synthetic']['no_effect'] lists the perturbations without effect."""
    import anndata as ad
    import pandas as pd

    from ftcore.data import log_normalise

    rng = np.random.default_rng(seed)
    genes = np.array([f"GENE{i:04d}" for i in range(n_genes)])
    hvg = np.sort(rng.choice(n_genes, n_hvg, replace=False))
    programs = [rng.choice(hvg, 12, replace=False) for _ in range(n_programs)]
    log_mu = rng.normal(1.5, 1.1, n_genes)  # log mean counts per gene at `depth` counts per cell
    activity = {ct: rng.normal(0, 0.8, n_programs) for ct in cell_types}  # program activity per cell type
    ct_log_mu = {}
    for ct in cell_types:
        mu = log_mu.copy()
        for k, prog in enumerate(programs):
            mu[prog] += activity[ct][k]
        ct_log_mu[ct] = mu
    targets = rng.choice(hvg, n_perts, replace=False)
    pert_names = [str(g) for g in genes[targets]]
    n_null = int(round(null_fraction * n_perts))
    # the held-out lists of write_demo (first 3 val, next 5 test) each get perturbations without effect
    null = {pert_names[i] for i in [0, 3, 4]} | set(pert_names[8:8 + max(n_null - 3, 0)])
    lfc = {}  # (perturbation, cell type) -> log fold change of the mean, per gene
    for p, tgt in zip(pert_names, targets):
        shared = [(k, rng.choice([-1, 1]) * rng.uniform(0.6, 1.3))
                  for k in rng.choice(n_programs, int(rng.integers(1, 4)), replace=False)]
        gated = int(rng.integers(n_programs)) if rng.random() < 0.5 else None  # acts only where active
        gated_sign = rng.choice([-1, 1])
        odd_ct, odd_prog, odd_size = rng.choice(cell_types), int(rng.integers(n_programs)), rng.choice([-1, 1]) * 0.6
        for ct in cell_types:
            e = np.zeros(n_genes)
            if p not in null:
                e[tgt] = np.log(0.2)  # knockdown
                for k, size in shared:  # stronger where the program is more active
                    e[programs[k]] += size * 2 / (1 + np.exp(-2 * activity[ct][k]))
                if gated is not None and activity[ct][gated] > 0.3:
                    e[programs[gated]] += gated_sign * 0.9
                if ct == odd_ct:
                    e[programs[odd_prog]] += odd_size
            lfc[p, ct] = e
    batches = [f"gem{b}" for b in range(n_batches)]
    batch_lfc = {b: rng.normal(0, 0.25, n_genes) for b in batches}
    batch_depth = {b: float(np.exp(rng.normal(0, 0.3))) for b in batches}
    ct_batches = {ct: [batches[i % n_batches], batches[(i + 1) % n_batches]] for i, ct in enumerate(cell_types)}

    blocks, counts_blocks, obs = [], [], []
    for ct in cell_types:
        for label in [CONTROL] + pert_names:
            n = n_controls if label == CONTROL else int(rng.integers(cells_per_pert[0], cells_per_pert[1] + 1))
            share = np.array([0.5, 0.5]) if label == CONTROL else rng.dirichlet([1.5, 1.5])
            cell_batch = rng.choice(ct_batches[ct], n, p=share)
            log_mean = ct_log_mu[ct] + (0 if label == CONTROL else lfc[label, ct])
            log_mean = log_mean + np.stack([batch_lfc[b] for b in cell_batch])
            prop = np.exp(log_mean)
            prop /= prop.sum(1, keepdims=True)
            size = depth * np.array([batch_depth[b] for b in cell_batch]) * np.exp(rng.normal(0, 0.35, n))
            mean = prop * size[:, None]
            counts = rng.poisson(rng.gamma(8.0, mean / 8.0))  # negative binomial, dispersion 1/8
            blocks.append(log_normalise(counts))  # log1p(CP10k), ftcore.data's one log-normalisation
            counts_blocks.append(counts.astype(np.float32))
            obs += [(label, ct, b) for b in cell_batch]
    X = np.concatenate(blocks)
    obs_df = pd.DataFrame(obs, columns=["gene", "cell_type", "gem_group"])
    for col in obs_df:
        obs_df[col] = obs_df[col].astype("category")
    obs_df.index = [f"cell{i:06d}" for i in range(len(obs_df))]
    var = pd.DataFrame(index=genes)
    var["highly_variable"] = np.isin(np.arange(n_genes), hvg)
    adata = ad.AnnData(X=X, obs=obs_df, var=var, layers={"counts": np.concatenate(counts_blocks)})
    adata.obsm["X_hvg"] = X[:, hvg].copy()
    adata.uns["state_tx_synthetic"] = {"seed": seed, "control_pert": CONTROL, "perturbations": pert_names,
                                       "design": "heterogeneous", "no_effect": sorted(null)}
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


DESIGNS = ("demo", "heterogeneous")


def write_demo(data_dir: Path, seed: int = 0, design: str = "demo", **sizes) -> tuple[Path, Path]:
    """Write <design>.h5ad and <design>.toml under data_dir (reused when already there); return both paths.

    The TOML holds out Jurkat entirely (zeroshot test) and 8 perturbations of HepG2 (fewshot: the
    first 3 of uns['state_tx_synthetic']['perturbations'] val, the next 5 test)."""
    from ftcore.io import atomic_write_h5ad, atomic_write_text

    make = {"demo": make_perturbation_adata, "heterogeneous": make_heterogeneous_adata}[design]
    data_dir = Path(data_dir).resolve()
    h5ad, toml = data_dir / f"{design}.h5ad", data_dir / f"{design}.toml"
    adata = None
    if not h5ad.exists():
        adata = make(seed=seed, **sizes)
        atomic_write_h5ad(adata, h5ad)
    if not toml.exists():
        if adata is None:
            import anndata as ad

            adata = ad.read_h5ad(h5ad, backed="r")
        perts = list(adata.uns["state_tx_synthetic"]["perturbations"])
        q = lambda names: ", ".join(f'"{p}"' for p in names)  # noqa: E731
        atomic_write_text(toml, DEMO_TOML.format(path=h5ad, val=q(perts[:3]), test=q(perts[3:8])))
    return h5ad, toml
