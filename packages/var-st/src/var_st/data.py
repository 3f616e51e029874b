"""The data contract: an .h5ad file -> a validated `SpotData` (expression, histology, coords, split).

Expected AnnData (one row per spot, any number of slides):
    X                      expression, raw counts or log-normalised, spots x genes
    obsm['spatial']        [N, 2] spot coordinates (pixels or array units; normalised per slide here)
    obsm['histology']      [N, F] histology feature vector per spot (key configurable)
    obs['slide']           optional slide / sample id; held-out slides make the test split

Expression is used as log1p(counts normalised to 1e4 per spot) when X holds counts, as is
otherwise. When the file has more genes than the model, the top-G highly variable genes
(scanpy, flavor "seurat") are used. Every check happens here, before any output is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ftcore.errors import UserError


@dataclass
class SpotData:
    """Validated arrays of one .h5ad, genes already selected and normalised."""

    expression: np.ndarray | None  # [N, G] float32 log-normalised; None for files without expression (predict)
    histology: np.ndarray  # [N, F] float32
    coords: np.ndarray  # [N, 2] float32, standardised within each slide
    slides: np.ndarray  # [N] str
    gene_names: list[str]
    obs_names: list[str]
    source: str = ""
    split: dict[str, np.ndarray] = field(default_factory=dict)  # train / val / test spot indices
    split_rule: str = ""

    def __len__(self) -> int:
        return len(self.obs_names)


def read_h5ad(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist; check the path (or omit --dataset to run the embedded demo)")
    if path.is_dir() or path.suffix != ".h5ad":
        raise UserError(f"{path} is not an .h5ad file; var-st reads AnnData .h5ad files")
    import anndata

    try:
        return anndata.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file for the user
        msg = str(err).strip().splitlines()[0][:150] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable .h5ad file ({msg}); re-write it with anndata") from None


def load_spots(adata, *, source: str, histology_key: str = "histology", spatial_key: str = "spatial",
               slide_key: str = "slide", num_genes: int | None = 200, genes: Sequence[str] | None = None,
               need_expression: bool = True, histology_dim: int | None = None, seed: int = 0) -> SpotData:
    """Validate `adata` and turn it into SpotData.

    genes: the model's gene names (predict / evaluate / stage 2); otherwise the top `num_genes`
    highly variable genes are chosen. histology_dim: the model's expected feature size, if known.
    """
    n = adata.n_obs
    if n == 0 or adata.n_vars == 0:
        raise UserError(f"{source}: the file holds {n} spots x {adata.n_vars} genes; it needs at least one of each")
    have = ", ".join(adata.obsm.keys()) or "none"
    if spatial_key not in adata.obsm:
        raise UserError(f"{source}: obsm[{spatial_key!r}] (spot coordinates) is missing; obsm has: {have}; "
                        "pass --spatial_key with the right key")
    if histology_key not in adata.obsm:
        raise UserError(f"{source}: obsm[{histology_key!r}] (histology features) is missing; obsm has: {have}; "
                        "pass --histology_key with the right key")
    hist = _dense(adata.obsm[histology_key]).astype(np.float32)
    if hist.ndim != 2:
        raise UserError(f"{source}: obsm[{histology_key!r}] has shape {hist.shape}; expected [spots, features]")
    if histology_dim is not None and hist.shape[1] != histology_dim:
        raise UserError(f"{source}: histology features have {hist.shape[1]} dims but the model expects {histology_dim}; "
                        "extract features with the same encoder as the training data (wrong feature dim)")
    _finite(hist, f"{source}: obsm[{histology_key!r}]")
    xy = _dense(adata.obsm[spatial_key]).astype(np.float32)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise UserError(f"{source}: obsm[{spatial_key!r}] has shape {xy.shape}; expected [spots, 2] coordinates")
    xy = xy[:, :2]
    _finite(xy, f"{source}: obsm[{spatial_key!r}]")
    slides = (adata.obs[slide_key].astype(str).to_numpy() if slide_key in adata.obs.columns
              else np.full(n, "slide0", dtype=object))
    coords = _standardise_per_slide(xy, slides)

    var_names = [str(g) for g in adata.var_names]
    expression = None
    if genes is not None:
        index = {g: i for i, g in enumerate(var_names)}
        missing = [g for g in genes if g not in index]
        if missing and need_expression:  # predict needs histology + coords only
            raise UserError(f"{source}: {len(missing)} of the model's {len(genes)} genes are not in var_names "
                            f"(e.g. {', '.join(missing[:3])}); use a file with the same gene names as training")
        cols = [index[g] for g in genes] if not missing else None
        gene_names = list(genes)
        if cols is not None and need_expression:
            expression = _log_normalised(adata, source)[:, cols]
    else:
        if num_genes is not None and adata.n_vars < num_genes:
            raise UserError(f"{source}: the file has {adata.n_vars} genes but the model needs {num_genes}; "
                            f"pass --num_genes {adata.n_vars} (or fewer)")
        full = _log_normalised(adata, source)
        cols = np.arange(adata.n_vars) if num_genes in (None, adata.n_vars) else top_variable_genes(full, num_genes)
        expression, gene_names = full[:, cols], [var_names[i] for i in cols]
    data = SpotData(expression, hist, coords, slides, gene_names, [str(o) for o in adata.obs_names], source)
    data.split, data.split_rule = make_split(slides, seed)
    return data


def _dense(a) -> np.ndarray:
    if hasattr(a, "toarray"):
        a = a.toarray()
    elif hasattr(a, "to_numpy"):
        a = a.to_numpy()
    return np.asarray(a)


def _finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise UserError(f"{what} contains NaN or inf in {len(rows)} spots (first row {rows[0]}); "
                        "remove or impute those spots first")


def _log_normalised(adata, source: str) -> np.ndarray:
    """X as log1p(CP10k) when it holds counts, as is when it already looks log-normalised."""
    x = _dense(adata.X).astype(np.float64)
    _finite(x, f"{source}: X")
    if (x < 0).any():
        raise UserError(f"{source}: X has negative values; var-st needs counts or log-normalised expression (not scaled/centred data)")
    is_counts = np.allclose(x, np.round(x)) and x.max() > 20
    if is_counts:
        total = x.sum(1, keepdims=True)
        x = np.log1p(x / np.maximum(total, 1.0) * 1e4)
    return x.astype(np.float32)


def top_variable_genes(expression: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n most highly variable genes of log-normalised expression (scanpy, seurat flavor), best first."""
    import anndata
    import scanpy as sc

    ad = anndata.AnnData(np.asarray(expression, dtype=np.float32))
    n = min(n, ad.n_vars)
    sc.pp.highly_variable_genes(ad, flavor="seurat", n_top_genes=n, inplace=True)
    disp = ad.var["dispersions_norm"].fillna(-np.inf).to_numpy()
    chosen = np.nonzero(ad.var["highly_variable"].to_numpy())[0]
    chosen = chosen[np.argsort(-disp[chosen], kind="stable")]
    if len(chosen) < n:  # ties at the cut-off: fill by variance
        rest = [i for i in np.argsort(-expression.var(0), kind="stable") if i not in set(chosen)]
        chosen = np.concatenate([chosen, rest[: n - len(chosen)]])
    return chosen[:n].astype(int)


def _standardise_per_slide(xy: np.ndarray, slides: np.ndarray) -> np.ndarray:
    """Coordinates relative to their slide (zero mean, unit spread), so slides of any size look alike."""
    out = np.empty_like(xy, dtype=np.float32)
    for s in np.unique(slides):
        m = slides == s
        c = xy[m] - xy[m].mean(0)
        out[m] = c / max(float(c.std()), 1e-6)
    return out


def make_split(slides: np.ndarray, seed: int = 0) -> tuple[dict[str, np.ndarray], str]:
    """Train / val / test spot indices; held-out slides when there are enough, else random spots.

    >= 3 slides: the last slide (sorted by name) is the test set, the one before validation.
    2 slides: the second slide is the test set, 10% of the first validation.
    1 slide: 70 / 15 / 15% of spots at random (optimistic: neighbouring spots are correlated).
    The rule depends only on the slide ids and the seed, so every command recomputes the same split.
    """
    names = sorted(set(slides.tolist()))
    idx = np.arange(len(slides))
    rng = np.random.default_rng(seed)
    if len(names) >= 3:
        test, val = idx[slides == names[-1]], idx[slides == names[-2]]
        train = idx[~np.isin(slides, names[-2:])]
        rule = f"by slide: test {names[-1]}, val {names[-2]}, train {len(names) - 2} slides"
    elif len(names) == 2:
        test = idx[slides == names[1]]
        first = rng.permutation(idx[slides == names[0]])
        n_val = max(1, len(first) // 10)
        val, train = np.sort(first[:n_val]), np.sort(first[n_val:])
        rule = f"by slide: test {names[1]}; val 10% of {names[0]}"
    else:
        perm = rng.permutation(idx)
        n_test = max(1, int(round(0.15 * len(idx)))) if len(idx) >= 3 else 0
        n_val = max(1, int(round(0.15 * len(idx)))) if len(idx) >= 3 else 0
        test, val, train = np.sort(perm[:n_test]), np.sort(perm[n_test:n_test + n_val]), np.sort(perm[n_test + n_val:])
        rule = "random spots 70/15/15 (one slide; spatially optimistic)"
    if len(train) == 0:
        raise UserError("too few spots / slides to form a training split; provide more spots")
    return {"train": train, "val": val, "test": test}, rule
