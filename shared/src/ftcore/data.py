"""The data edge every package shares: what an expression matrix holds, and values that are sane.

THE RULE for what X holds (`expression_kind`), used by every package:

- "scaled":   some value is negative (centred or z-scored data, e.g. after sc.pp.scale);
- "counts":   every stored value is a whole number >= 0 (raw UMI / read counts);
- "log":      non-whole values, largest <= 30: log-normalised (sc.pp.normalize_total + sc.pp.log1p gives
              at most ~15; 30 would need e^30 ~ 1e13 counts);
- "unlogged": non-whole values above 30: normalised but never log-transformed (CP10k, TPM, FPKM).

Up to 1,000,000 stored values are examined (the first ones, and for dense data the non-zero ones).
A package says which kinds it takes; the others are refused or warned about with the fix.

What each package does with each kind (the same rule, the package's own data contract):
    spatial-transfer: takes "log" only (its models are trained on log-normalised expression);
    var-st, cellfm-ft: take "counts" (log-normalised here: `log_normalise`) and "log";
    state-tx: takes the kind it was trained on (recorded in the run) and warns otherwise;
    get-yeast: per target column: "log" taken, "counts" warned about, the others refused.
Log-normalisation is ONE function, `log_normalise`: log1p(count / cell total * 1e4), scanpy's
sc.pp.normalize_total(target_sum=1e4) + sc.pp.log1p (a cell with no counts stays all zero).

`check_values` refuses NaN/inf and absurd magnitudes (> 1e9 in absolute value: float32 squares of
such values overflow in a variance) naming the first bad row and column; `coordinates` turns
spot coordinates into numbers or says which row is not one.

The AnnData edge: `read_h5ad` (one line naming the file, the flag that gave it and the fix),
`require_key` (a missing obs/var column or obsm/layers key, listing what exists and the flag to
set), `dense` (any matrix as a numpy array), `prediction_adata` (THE output layout) and
`write_predictions` (results written into an AnnData under `key_added`, as scanpy does).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ftcore.errors import UserError

MAX_ABS = 1e9
LOG_MAX = 30.0
SAMPLE = 1_000_000

KIND_ADVICE = {
    "scaled": "it holds negative values (centred or scaled data, e.g. after sc.pp.scale); use the counts or the "
              "log-normalised values (often adata.raw or a layer such as 'counts')",
    "counts": "it holds raw counts (whole numbers); log-normalise first (sc.pp.normalize_total(adata, "
              "target_sum=1e4); sc.pp.log1p(adata))",
    "log": "it holds log-normalised values; give raw counts (often adata.raw or adata.layers['counts'])",
    "unlogged": "its values are not whole numbers but reach above 30: normalised and never log-transformed "
                "(CP10k/TPM?); apply sc.pp.log1p(adata) first",
}


TARGET_SUM = 1e4


def read_h5ad(path, what: str = "data file", *, flag: str | None = None, fix: str = "check the path",
              suffix: bool = False, names_checked: bool = False):
    """The AnnData of an .h5ad file read whole, or ONE line (UserError) naming it and the fix.

    what: what the file is for the user ("data file", "bulk expression file"); flag: the option that
    named it ("--adata"), said first when given; fix: said after "does not exist". suffix: refuse a
    path not ending in .h5ad before reading it. names_checked: the caller checks duplicate obs/var
    names itself (naming them), so anndata's warning about them is silenced.
    """
    path = Path(path)
    who = f"{flag} {path}" if flag else f"{what} {path}"
    if not path.exists():
        raise UserError(f"{who} does not exist; {fix}")
    if path.is_dir():
        raise UserError(f"{who} is a directory; pass the .h5ad file inside it")
    if suffix and path.suffix != ".h5ad":
        raise UserError(f"{who} is not an .h5ad file (it ends in {path.suffix or 'nothing'!r}); pass an AnnData "
                        ".h5ad file (convert with anndata, e.g. anndata.read_csv(...).write_h5ad(...))")
    import anndata

    try:
        with warnings.catch_warnings():
            if names_checked:
                warnings.filterwarnings("ignore", message=r".* names are not unique", category=UserWarning)
            return anndata.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        detail = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise UserError(f"{who} cannot be read as .h5ad ({detail}): not a readable .h5ad file; write it with "
                        "adata.write_h5ad and copy it completely") from None


COLUMN_AXES = ("obs", "var")  # keys are column names (free text, listed quoted: 'Donor ID')


def require_key(key: str, available: Iterable, where: str, *, axis: str = "obs", what: str = "",
                fix: str = "") -> None:
    """Refuse a missing obs/var column or obsm/layers key in ONE line: where, what it is for, what the
    file has, a near-miss spelling ("rename 'Sample' to 'sample'") and the fix (the flag to set).

    available: the columns / keys the file has (adata.obs.columns, adata.obsm.keys(), an h5 group).
    """
    have = [str(k) for k in available]
    if key in have:
        return
    role = f" ({what})" if what else ""
    near = [k for k in have if k.strip().lower() == str(key).strip().lower()]
    tips = [f"rename {near[0]!r} to {key!r}"] if near else []
    tips += [fix] if fix else []
    tail = "".join(f"; {t}" for t in tips)
    if axis in COLUMN_AXES:
        listing = ", ".join(repr(k) for k in have) or "none"
        raise UserError(f"{where}: {axis} has no column {key!r}{role}; {axis} columns: {listing}{tail}")
    listing = ", ".join(have) or "none"
    raise UserError(f"{where}: {axis}[{key!r}]{role} is missing; {axis} has: {listing}{tail}")


def dense(X, dtype=None) -> np.ndarray:
    """Any matrix as a numpy array: scipy sparse (.toarray()), pandas (.to_numpy()), views, arrays."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    elif hasattr(X, "to_numpy"):
        X = X.to_numpy()
    return np.asarray(X, dtype=dtype)


def log_normalise(X, target_sum: float = TARGET_SUM):
    """Counts [cells, genes] -> log1p(count / cell total * target_sum), float32; CSR stays CSR.

    scanpy's sc.pp.normalize_total(target_sum=1e4) then sc.pp.log1p; a cell without counts stays zero.
    """
    if hasattr(X, "tocsr"):
        from scipy import sparse

        X = sparse.csr_matrix(X, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        return X.astype(np.float32)
    x = np.asarray(X, dtype=np.float64)
    total = x.sum(-1, keepdims=True)
    return np.log1p(x / np.maximum(total, np.finfo(np.float64).tiny) * target_sum).astype(np.float32)


def as_log_normalised(X, where: str, *, accept: Iterable[str] = ("counts", "log"), row_names=None,
                      col_names=None) -> tuple[np.ndarray, str]:
    """X checked (check_values, then THE rule) and returned dense float32 log-normalised, with its kind:
    counts are log-normalised here, log values kept as they are; other kinds refused with the fix."""
    check_values(X, where, row_names=row_names, col_names=col_names)
    kind = check_expression(X, accept=accept, where=where)
    return (log_normalise(dense(X)) if kind == "counts" else dense(X, np.float32)), kind


def _stored_values(X) -> np.ndarray:
    data = getattr(X, "data", None)
    if data is not None and hasattr(X, "nnz"):  # scipy sparse: the stored entries
        return np.asarray(data[:SAMPLE])
    arr = np.asarray(X)
    flat = arr.reshape(-1)[: SAMPLE * 4]
    return flat[flat != 0][:SAMPLE]


def expression_kind(X) -> str:
    """'counts', 'log', 'unlogged' or 'scaled' by THE RULE in this module's docstring ('log' when all zero)."""
    values = _stored_values(X).astype(np.float64, copy=False)
    if values.size == 0:
        return "log"
    if values.min() < 0:
        return "scaled"
    if np.all(values == np.round(values)):
        return "counts"
    return "log" if values.max() <= LOG_MAX else "unlogged"


def check_expression(X, accept: Iterable[str], where: str, warn: Iterable[str] = ()) -> str:
    """The kind of X; refused (one line with the fix) unless in `accept`, or only warned about if in `warn`."""
    kind = expression_kind(X)
    accept, warn = set(accept), set(warn)
    if kind in accept:
        return kind
    if kind in warn:
        print(f"warning: {where}: {KIND_ADVICE[kind]}")
        return kind
    raise UserError(f"{where}: {KIND_ADVICE[kind]}")


def check_values(X, where: str, *, max_abs: float = MAX_ABS, row_names: Sequence | None = None,
                 col_names: Sequence | None = None) -> None:
    """Refuse NaN/inf or |value| > max_abs, naming how many and the first (row, column)."""
    if hasattr(X, "tocoo"):
        coo = X.tocoo()
        values, rows, cols = np.asarray(coo.data), coo.row, coo.col
        bad = ~np.isfinite(values) | (np.abs(values) > max_abs)
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        r, c, v = int(rows[first]), int(cols[first]), values[first]
        n = int(bad.sum())
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "fiub":
            raise UserError(f"{where}: values are {arr.dtype} (text?), not numbers; store numbers (e.g. "
                            "adata.X = adata.X.astype('float32'))")
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(arr) | (np.abs(arr) > max_abs)
        if not bad.any():
            return
        n = int(bad.sum())
        idx = np.argwhere(bad)[0]
        r, c = (int(idx[0]), int(idx[1])) if arr.ndim == 2 else (int(idx[0]), 0)
        v = arr[tuple(idx)]
    row = f" ({row_names[r]!r})" if row_names is not None else ""
    col = f" ({col_names[c]!r})" if col_names is not None else ""
    what = "NaN/inf" if not np.isfinite(v) else f"beyond ±{max_abs:g}"
    raise UserError(f"{where}: {n} value(s) are {what}, first at row {r}{row}, column {c}{col} = {v!r}; "
                    "remove or fix them (a unit or export error?)")


def coordinates(values, where: str, *, row_names: Sequence | None = None, max_abs: float = MAX_ABS) -> np.ndarray:
    """Spot coordinates [n, 2+] as float64, or one line naming the first row that is not a finite number."""
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise UserError(f"{where}: expected an (n_spots, 2) array of x/y coordinates, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            for r, row in enumerate(arr):
                for v in row:
                    try:
                        float(v)
                    except (TypeError, ValueError):
                        name = f" ({row_names[r]!r})" if row_names is not None else ""
                        raise UserError(f"{where}: row {r}{name} holds {v!r}, not a number; store numeric "
                                        "coordinates (e.g. adata.obsm['spatial'] = coords.astype(float))") from None
    arr = np.asarray(arr, dtype=np.float64)
    check_values(arr, where, max_abs=max_abs, row_names=row_names)
    return arr


MEASURED_LAYER = "measured"


def prediction_adata(values, genes: Sequence[str], source=None, *, model: str = "", measured=None):
    """Predictions as an AnnData a scanpy user plots directly: THE output layout of every package.

    - X = the predictions (float32, observations x genes), var_names = `genes`: so
      `sc.pl.spatial(pred, color="GENE")` or `sc.pl.umap(pred, color="GENE")` shows a predicted gene;
    - obs / obs_names, every obsm entry (obsm['spatial'] included) and uns['spatial'] (the slide images
      scanpy's spatial plots read) come from `source`, an AnnData of the same observations, when given;
    - layers['measured'] = `measured` (the observed values of the same genes, same shape) when there are
      any: a histology-only slide has none, and then there is no such layer;
    - uns['prediction'] = {'model': model, 'measured_layer': 'measured' or ''} says what X is.
    """
    import anndata
    import pandas as pd

    X = np.asarray(values, dtype=np.float32)
    genes = [str(g) for g in genes]
    if X.ndim != 2 or X.shape[1] != len(genes):
        raise ValueError(f"predictions of shape {X.shape} for {len(genes)} genes")
    if source is not None and source.n_obs != X.shape[0]:
        raise ValueError(f"predictions for {X.shape[0]} observations, source has {source.n_obs}")
    obs = source.obs.copy() if source is not None else pd.DataFrame(index=[str(i) for i in range(X.shape[0])])
    out = anndata.AnnData(X, obs=obs, var=pd.DataFrame(index=pd.Index(genes, name=None)))
    if source is not None:
        for key in source.obsm.keys():
            out.obsm[key] = source.obsm[key]
        if "spatial" in source.uns:
            out.uns["spatial"] = source.uns["spatial"]
    if measured is not None:
        measured = np.asarray(measured, dtype=np.float32)
        if measured.shape != X.shape:
            raise ValueError(f"measured values of shape {measured.shape} for predictions of shape {X.shape}")
        write_predictions(out, measured, MEASURED_LAYER, where="layers")
    out.uns["prediction"] = {"model": str(model), "measured_layer": MEASURED_LAYER if measured is not None else ""}
    return out


WHERE = ("obsm", "obs", "layers")


def write_predictions(adata, values, key_added: str, *, where: str = "obsm", uns: dict | None = None) -> None:
    """Write results into `adata` in place under `key_added`, scanpy's way (sc.tl.* key_added); X is
    never replaced.

    where="obsm": adata.obsm[key_added] = values [n_obs, k] (probabilities, embeddings, predictions);
    where="obs": adata.obs[key_added] = values [n_obs] (a predicted label or a score per observation);
    where="layers": adata.layers[key_added] = values [n_obs, n_vars] (predicted expression per gene).
    uns: what produced them, kept in adata.uns[key_added] (scanpy keeps a tool's parameters there).
    """
    if where not in WHERE:
        raise ValueError(f"where={where!r}; choose one of {', '.join(WHERE)}")
    shape = getattr(values, "shape", (len(values),))
    want = {"obsm": (adata.n_obs,), "obs": (adata.n_obs,), "layers": (adata.n_obs, adata.n_vars)}[where]
    if tuple(shape[: len(want)]) != want or (where == "obs" and len(shape) != 1):
        raise ValueError(f"{where}[{key_added!r}]: values of shape {tuple(shape)} for an AnnData of shape "
                         f"{adata.shape}")
    getattr(adata, where)[key_added] = values
    if uns is not None:
        adata.uns[key_added] = uns
