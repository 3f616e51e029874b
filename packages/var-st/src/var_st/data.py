"""The data contract: an .h5ad file -> a validated `SpotData` (expression, histology, coords, split).

Expected AnnData (one row per spot, any number of slides):
    X                      expression, raw counts or log-normalised, spots x genes
    obsm['spatial']        [N, 2] numeric spot coordinates (pixels or array units; normalised per slide here)
    obsm['histology']      [N, F] histology feature vector per spot (key configurable)
    obs['slide']           slide / sample id; held-out slides make the val and test splits
                           (training needs it unless a random spot split is asked for)

What X holds is decided by THE rule of `ftcore.data.expression_kind`: counts are used as
log1p(counts normalised to 1e4 per spot), log-normalised values as they are; scaled (negative)
and normalised-but-unlogged values are refused with the fix. When the file has more genes than
the model, the top-G highly variable genes (scanpy, flavor "seurat") are used. Every check
happens here, before any output is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ftcore.data import as_log_normalised, check_values, coordinates, dense, require_key
from ftcore.data import read_h5ad as core_read_h5ad
from ftcore.errors import UserError

DEFAULT_SLIDE_KEY = "slide"


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
    split_seed: int = 0
    random_split: bool = False
    expression_note: str = ""  # predict: why there are no measured values (histology-only file, other genes, ...)

    def __len__(self) -> int:
        return len(self.obs_names)


def read_h5ad(path: str | Path):
    """The --dataset file (ftcore.data.read_h5ad: one line naming the file and the fix)."""
    return core_read_h5ad(path, "data file", fix="check the path (or omit --dataset to run the embedded demo)",
                          suffix=True)


def load_spots(adata, *, source: str, histology_key: str = "histology", spatial_key: str = "spatial",
               slide_key: str = DEFAULT_SLIDE_KEY, num_genes: int | None = 200, genes: Sequence[str] | None = None,
               need_expression: bool = True, histology_dim: int | None = None, seed: int = 0,
               split: bool = True, val_slides: Sequence[str] = (), test_slides: Sequence[str] = (),
               random_split: bool = False, slide_key_given: bool = False) -> SpotData:
    """Validate `adata` and turn it into SpotData.

    genes: the model's gene names (predict / evaluate / stage 2); otherwise the top `num_genes`
    highly variable genes are chosen. histology_dim: the model's expected feature size, if known.
    split: make the train / val / test split (see `make_split`); without it (predict) a missing
    slide column means one slide, unless `slide_key_given` (the user named the column).
    """
    n = adata.n_obs
    if n and need_expression and adata.X is None:
        raise UserError(f"{source}: X is empty (a histology-only file); training and evaluation need measured "
                        "expression in X (var-st predict needs only histology and coordinates)")
    if n == 0 or (need_expression and adata.n_vars == 0):
        raise UserError(f"{source}: the file holds {n} spots x {adata.n_vars} genes; it needs at least one of each")
    obs_names = [str(o) for o in adata.obs_names]
    require_key(spatial_key, adata.obsm.keys(), source, axis="obsm", what="spot coordinates",
                fix="pass --spatial_key with the right key")
    require_key(histology_key, adata.obsm.keys(), source, axis="obsm", what="histology features",
                fix="pass --histology_key with the right key")
    hist = dense(adata.obsm[histology_key])
    if hist.ndim != 2:
        raise UserError(f"{source}: obsm[{histology_key!r}] has shape {hist.shape}; expected [spots, features]")
    if histology_dim is not None and hist.shape[1] != histology_dim:
        raise UserError(f"{source}: histology features have {hist.shape[1]} dims but the model expects {histology_dim}; "
                        "extract features with the same encoder as the training data (wrong feature dim)")
    check_values(hist, f"{source}: obsm[{histology_key!r}]", row_names=obs_names)
    hist = hist.astype(np.float32)
    xy = coordinates(dense(adata.obsm[spatial_key]), f"{source}: obsm[{spatial_key!r}]", row_names=obs_names)
    xy = xy[:, :2].astype(np.float32)
    slides = _slides(adata, source, slide_key, required=slide_key_given or (split and not random_split)
                     or bool(val_slides) or bool(test_slides))
    coords = _standardise_per_slide(xy, slides)

    var_names = [str(g) for g in adata.var_names]
    if need_expression:
        _refuse_duplicates(var_names, f"{source}: var_names (genes)", "adata.var_names_make_unique()")
        _refuse_duplicates(obs_names, f"{source}: obs_names (spots)", "adata.obs_names_make_unique()")
    expression, note = None, ""
    if genes is not None:
        index = {g: i for i, g in enumerate(var_names)}
        missing = [g for g in genes if g not in index]
        if missing and need_expression:
            raise UserError(f"{source}: {len(missing)} of the model's {len(genes)} genes are not in var_names "
                            f"(e.g. {', '.join(missing[:3])}); use a file with the same gene names as training")
        gene_names = list(genes)
        if need_expression:
            expression = _log_normalised(adata, source, obs_names, var_names)[:, [index[g] for g in genes]]
        else:  # predict needs histology + coordinates only; measured values, when the file has them, ride along
            expression, note = _measured(adata, source, genes, index, missing, var_names, obs_names)
    else:
        if num_genes is not None and adata.n_vars < num_genes:
            raise UserError(f"{source}: the file has {adata.n_vars} genes but the model needs {num_genes}; "
                            f"pass --num_genes {adata.n_vars} (or fewer)")
        full = _log_normalised(adata, source, obs_names, var_names)
        cols = np.arange(adata.n_vars) if num_genes in (None, adata.n_vars) else top_variable_genes(full, num_genes)
        expression, gene_names = full[:, cols], [var_names[i] for i in cols]
    data = SpotData(expression, hist, coords, slides, gene_names, obs_names, source, expression_note=note)
    if split:
        data.split, data.split_rule = make_split(slides, seed, val_slides=val_slides, test_slides=test_slides,
                                                 random_split=random_split, slide_key=slide_key)
        data.split_seed, data.random_split = int(seed), bool(random_split)
    return data


# ----------------------------------------------------------------------------- the stored split
def _fingerprint(names: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]


def split_record(data: SpotData) -> dict:
    """The split as checkpoints store it: how it was made (random or by slide, the seed), which slides
    it holds out and a fingerprint of each part's spots, so a later command can remake it and check
    that it got the same spots."""
    names = np.asarray(data.obs_names, dtype=object)
    parts = {k: sorted(set(data.slides[v].tolist())) for k, v in data.split.items()}
    # val drawn as 10% of a training slide is not a held-out slide
    val_slides = [] if data.random_split or set(parts["val"]) & set(parts["train"]) else parts["val"]
    return {"random_split": data.random_split, "seed": data.split_seed, "rule": data.split_rule,
            "val_slides": val_slides, "test_slides": [] if data.random_split else parts["test"],
            "slides": sorted(set(data.slides.tolist())),
            "spots": {k: int(len(v)) for k, v in data.split.items()},
            "fingerprint": {k: _fingerprint(names[v].tolist()) for k, v in data.split.items()}}


def same_split(data: SpotData, stored: dict) -> bool:
    """Whether `data`'s split holds out exactly the val and test spots the stored split held out (more
    training spots, e.g. a file with an extra slide, are no leak)."""
    want = stored.get("fingerprint") or {}
    names = np.asarray(data.obs_names, dtype=object)
    return all(_fingerprint(names[data.split[k]].tolist()) == want.get(k) for k in ("val", "test"))


def _measured(adata, source: str, genes: Sequence[str], index: dict, missing: list, var_names, obs_names):
    """(log-normalised measured values of the model's genes, "") when X holds them, else (None, why not).

    Never an error: prediction does not need expression, so X that is absent, lacks genes, or fails
    the expression checks only means there is nothing measured to put beside the predictions."""
    if adata.X is None or adata.n_vars == 0:
        return None, "no expression in the file (histology only)"
    if missing:
        return None, f"{len(missing)} of the model's {len(genes)} genes are not in var_names"
    if len(set(var_names)) != len(var_names):
        return None, "var_names (genes) are not unique"
    try:
        x = _log_normalised(adata, source, obs_names, var_names)
    except UserError as err:
        return None, f"X is not usable as expression ({str(err).split('; ')[0].removeprefix(source + ': ')})"
    return x[:, [index[g] for g in genes]], ""


def _slides(adata, source: str, slide_key: str, required: bool) -> np.ndarray:
    """Slide id per spot as text; a missing column is an error when the split needs it (or it was named)."""
    n = adata.n_obs
    if slide_key not in adata.obs.columns:
        if not required:
            return np.full(n, "slide0", dtype=object)
        require_key(slide_key, adata.obs.columns, source, what="slide ids for the held-out split",
                    fix="pass --slide_key <column>, or --random_split to split spots at random (spatially optimistic)")
    column = adata.obs[slide_key]
    missing = np.flatnonzero(column.isna().to_numpy())
    if len(missing):
        r = int(missing[0])
        raise UserError(f"{source}: obs[{slide_key!r}] has no slide id for {len(missing)} spots (first row {r}, "
                        f"{str(adata.obs_names[r])!r}); fill them in or drop those spots")
    slides = column.astype(str).to_numpy().astype(object)
    n_slides = len(set(slides.tolist()))
    if n_slides > max(20, n // 2):
        raise UserError(f"{source}: obs[{slide_key!r}] has {n_slides} distinct values for {n} spots: not slide ids "
                        "(a per-spot column?); pass --slide_key with the column of slide / sample ids")
    return slides


def _refuse_duplicates(names: Sequence[str], what: str, fix: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            count = sum(1 for n in names if n == name)
            raise UserError(f"{what} are not unique: {name!r} appears {count} times; make them unique ({fix})")
        seen.add(name)


def _log_normalised(adata, source: str, obs_names: Sequence[str] | None = None,
                    var_names: Sequence[str] | None = None) -> np.ndarray:
    """X as log1p(CP10k) when it holds counts, as is when it is log-normalised (THE rule: ftcore.data).

    Scaled data (negative values) and normalised-but-unlogged values (CP10k, TPM) are refused with the fix:
    the model's targets are log-normalised expression.
    """
    return as_log_normalised(adata.X, f"{source}: X", accept=("counts", "log"), row_names=obs_names,
                             col_names=var_names)[0]


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


def make_split(slides: np.ndarray, seed: int = 0, *, val_slides: Sequence[str] = (),
               test_slides: Sequence[str] = (), random_split: bool = False,
               slide_key: str = DEFAULT_SLIDE_KEY) -> tuple[dict[str, np.ndarray], str]:
    """Train / val / test spot indices: held-out slides, or random spots when asked for.

    By slide (the default): test = `test_slides`, else the last slide (sorted by name) not in val;
    val = `val_slides`, else the last remaining slide when two or more remain, else 10% of the
    remaining spots at random; train = every other slide. So >= 3 slides: test the last, val the one
    before; 2 slides: test the second, val 10% of the first. One slide cannot be split by slide.
    random_split: 70 / 15 / 15% of spots at random (optimistic: neighbouring spots are correlated).
    The rule depends only on the slide ids, the options and the seed, so every command recomputes
    the same split.
    """
    idx = np.arange(len(slides))
    rng = np.random.default_rng(seed)
    if random_split:
        if val_slides or test_slides:
            raise UserError("--random_split splits spots at random; it cannot be combined with --val_slides / "
                            "--test_slides (choose one)")
        if len(idx) < 3:
            raise UserError(f"{len(idx)} spots cannot be split into train / val / test; provide at least 3 spots")
        perm = rng.permutation(idx)
        n_hold = max(1, int(round(0.15 * len(idx))))
        test, val, train = np.sort(perm[:n_hold]), np.sort(perm[n_hold:2 * n_hold]), np.sort(perm[2 * n_hold:])
        if len(train) == 0:
            raise UserError(f"{len(idx)} spots leave no training spots after the val / test shares; provide more spots")
        return {"train": train, "val": val, "test": test}, "random spots 70/15/15 (--random_split; spatially optimistic)"
    names = sorted(set(slides.tolist()))
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    for flag, given in (("--val_slides", val_slides), ("--test_slides", test_slides)):
        unknown = [s for s in given if s not in names]
        if unknown:
            raise UserError(f"{flag}: slide {unknown[0]!r} is not in obs[{slide_key!r}]; the slides are: {shown}")
        if len(set(given)) != len(given):
            raise UserError(f"{flag} names slide {next(s for s in given if list(given).count(s) > 1)!r} twice")
    both = [s for s in val_slides if s in set(test_slides)]
    if both:
        raise UserError(f"slide {both[0]!r} is in both --val_slides and --test_slides; a slide can be held out for "
                        "one of them only")
    if len(names) == 1 and not (val_slides or test_slides):
        raise UserError(f"obs[{slide_key!r}] holds one slide ({names[0]!r}): holding out slides would leave nothing to "
                        "train on; add slides, pass --slide_key with another column, or --random_split to split spots "
                        "at random (spatially optimistic)")
    rest = [s for s in names if s not in set(val_slides)]
    test_names = list(test_slides) or rest[-1:]
    rest = [s for s in rest if s not in set(test_names)]
    val_names = list(val_slides) or (rest[-1:] if len(rest) >= 2 else [])
    train_names = [s for s in rest if s not in set(val_names)]
    if not train_names:
        raise UserError(f"no slide is left for training: the slides are {shown}; val {val_names}, test {test_names}; "
                        "hold out fewer slides")
    test = idx[np.isin(slides, test_names)]
    if val_names:
        val = idx[np.isin(slides, val_names)]
        train = idx[np.isin(slides, train_names)]
        rule = f"by slide: test {', '.join(test_names)}, val {', '.join(val_names)}, train {len(train_names)} slides"
    else:  # one slide left: 10% of its spots validate
        first = rng.permutation(idx[np.isin(slides, train_names)])
        if len(first) < 2:
            raise UserError(f"slide {train_names[0]!r} has {len(first)} spot: too few for a training and a validation "
                            "part; add spots or slides")
        n_val = max(1, len(first) // 10)
        val, train = np.sort(first[:n_val]), np.sort(first[n_val:])
        rule = f"by slide: test {', '.join(test_names)}; val 10% of {train_names[0]}"
    return {"train": train, "val": val, "test": test}, rule
