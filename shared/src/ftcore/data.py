"""The data edge every package shares: what an expression matrix holds, and values that are sane.

THE RULE for what X holds (`expression_kind`), used by every package:

- "scaled":   some value is negative (centred or z-scored data, e.g. after sc.pp.scale);
- "counts":   every stored value is a whole number >= 0 (raw UMI / read counts);
- "log":      non-whole values, largest <= 30: log-normalised (sc.pp.normalize_total + sc.pp.log1p gives
              at most ~15; 30 would need e^30 ~ 1e13 counts);
- "unlogged": non-whole values above 30: normalised but never log-transformed (CP10k, TPM, FPKM).

Up to 1,000,000 stored values are examined (the first ones, and for dense data the non-zero ones).
A package says which kinds it takes; the others are refused or warned about with the fix.

`check_values` refuses NaN/inf and absurd magnitudes (> 1e9 in absolute value: float32 squares of
such values overflow in a variance) naming the first bad row and column; `coordinates` turns
spot coordinates into numbers or says which row is not one.
"""

from __future__ import annotations

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
        out.layers[MEASURED_LAYER] = measured
    out.uns["prediction"] = {"model": str(model), "measured_layer": MEASURED_LAYER if measured is not None else ""}
    return out
