"""On-disk data -> validated cell graphs.

A data directory holds four AnnData files (the embedded demo writes the same layout with
`spatial-transfer make-demo-data`):

    spatial.h5ad        spots x genes, X = log-normalised expression
                        obs: sample (slide id), array_row, array_col (spot grid position)
    spatial_cells.h5ad  nuclei x features, X = nuclear features (HoVer-Net style, 128-d)
                        obs: sample, spot (obs_name of the spot the nucleus lies in, "" if none), x, y
    bulk.h5ad           bulk samples x genes, X = log-normalised expression (obs_names = sample ids)
    bulk_cells.h5ad     nuclei x features of the bulk samples' slides; obs: sample, x, y

Every check happens here, once, with an error naming the file, the problem and the fix. The
rest of the package trusts a `SpatialData` / `BulkData`.

Training items are cell graphs (`CellGraph`): for spatial data a window of `window` x `window`
spots of one slide with the nuclei in them; for bulk data one whole sample with its nuclei binned
into square tiles (the bulk model's tokens). Edges join each nucleus to its k nearest neighbours
(or all within a radius) by centroid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from ftcore.data import dense, read_h5ad, require_key
from ftcore.errors import UserError
from ftcore.options import bounds

SPATIAL_FILE, SPATIAL_CELLS_FILE = "spatial.h5ad", "spatial_cells.h5ad"
BULK_FILE, BULK_CELLS_FILE = "bulk.h5ad", "bulk_cells.h5ad"
DATA_FILES = (SPATIAL_FILE, SPATIAL_CELLS_FILE, BULK_FILE, BULK_CELLS_FILE)


def write_data_dir(out_dir, build) -> Path:
    """The four files of the data format written into out_dir, atomically; build() makes the four AnnData, in
    DATA_FILES order, and is not called when all four files exist."""
    from ftcore.io import atomic_write_h5ad

    out = Path(out_dir)
    if all((out / f).exists() for f in DATA_FILES):
        return out
    for adata, name in zip(build(), DATA_FILES):
        atomic_write_h5ad(adata, out / name)
    return out


@dataclass
class GraphConfig:
    method: str = "knn"  # knn | radius
    k: int = field(default=6, metadata=bounds(ge=1))  # neighbours per nucleus (knn)
    radius: float = field(default=30.0, metadata=bounds(gt=0))  # in coordinate units (radius)
    window: int = field(default=4, metadata=bounds(ge=1))  # spatial items are windows of window x window spots
    tile_size: float = field(default=100.0, metadata=bounds(gt=0))  # bulk tokens: square tiles of this side

    def __post_init__(self) -> None:
        if self.method not in ("knn", "radius"):
            raise UserError(f"unknown graph method {self.method!r}; choose one of: knn, radius")
        if self.k < 1 or self.window < 1 or self.radius <= 0 or self.tile_size <= 0:
            raise UserError("graph: k and window must be >= 1, radius and tile_size > 0")


# ------------------------------------------------------------------------------------ graphs
def knn_edges(pos: torch.Tensor, k: int) -> torch.Tensor:
    """[N, 2] centroids -> edge_index [2, N*min(k, N-1)] (source = neighbour, target = nucleus).

    Uses torch_cluster through PyG when installed, else exact distances in blocks (pure torch).
    """
    n = pos.shape[0]
    k = min(k, n - 1)
    if k <= 0:
        return torch.empty(2, 0, dtype=torch.long)
    try:
        from torch_geometric.nn import knn_graph

        return knn_graph(pos.float(), k=k, loop=False)
    except ImportError:
        pass
    targets, sources = [], []
    for start in range(0, n, 4096):  # bounded memory: 4096 x N distances at a time
        d = torch.cdist(pos[start : start + 4096].float(), pos.float())
        d[torch.arange(d.shape[0]), torch.arange(start, start + d.shape[0])] = float("inf")
        nbr = d.topk(k, largest=False).indices
        targets.append(torch.arange(start, start + d.shape[0]).repeat_interleave(k))
        sources.append(nbr.reshape(-1))
    return torch.stack([torch.cat(sources), torch.cat(targets)])


def radius_edges(pos: torch.Tensor, r: float) -> torch.Tensor:
    """[N, 2] centroids -> edge_index of all pairs closer than r (no self loops)."""
    try:
        from torch_geometric.nn import radius_graph

        # no neighbour cap: the same graph with or without torch_cluster (its default keeps 32)
        return radius_graph(pos.float(), r=r, loop=False, max_num_neighbors=max(len(pos), 1))
    except ImportError:
        pass
    d = torch.cdist(pos.float(), pos.float())
    d.fill_diagonal_(float("inf"))
    tgt, src = (d < r).nonzero(as_tuple=True)
    return torch.stack([src, tgt])


def cell_edges(pos: torch.Tensor, graph: GraphConfig) -> torch.Tensor:
    return knn_edges(pos, graph.k) if graph.method == "knn" else radius_edges(pos, graph.radius)


class CellGraph(Data):
    """One training item.

    x [N, in_dim] nuclear features; pos [N, 2] centroids; edge_index [2, E];
    cell_spot [N] token of each nucleus (0 where cell_in_spot is False); cell_in_spot [N] bool;
    spot_pos [S, 2] token positions (spot array row/col relative to the window, or tile index);
    y [S, G] spot expression (spatial) or [1, G] sample expression (bulk);
    spot_ids [S] rows of the spots in the spatial AnnData (spatial only); sample_id [1].
    """

    def __inc__(self, key, value, *args, **kwargs):
        if key == "cell_spot":
            return self.spot_pos.shape[0]
        return super().__inc__(key, value, *args, **kwargs)


def collate(items: list[CellGraph]) -> Batch:
    """Batch graphs; spot_pos_batch [S_total] says which graph each token belongs to, and max_tokens (a
    host-side int) the most tokens of one graph, the padded length the model's transformer runs at."""
    batch = Batch.from_data_list(items, follow_batch=["spot_pos"])
    batch.max_tokens = max(item.spot_pos.shape[0] for item in items)
    return batch


# ------------------------------------------------------------------------------- reading
def _read_h5ad(path: Path, what: str):
    return read_h5ad(path, f"{what} file", fix="see the data format in the README (or run `spatial-transfer "
                     "make-demo-data DIR` for an example)")


def _require_obs(adata, path: Path, columns: tuple[str, ...]) -> None:
    for col in columns:
        obsm_hint = col in ("array_row", "array_col", "x", "y") and "spatial" in adata.obsm
        fix = (f"coordinates in obsm['spatial'] are not read: copy them into obs['{col}']" if obsm_hint
               else "add it") + " (see the data format in the README)"
        require_key(col, adata.obs.columns, str(path), fix=fix)


def _require_finite(X: np.ndarray, path: Path, what: str, rows=None, cols=None) -> None:
    """NaN/inf refused naming the first row and column; then THE core rule for absurd magnitudes."""
    from ftcore.data import check_values

    bad = ~np.isfinite(X)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        n_rows = len(np.unique(np.nonzero(bad)[0]))
        row = f" ({rows[r]!r})" if rows is not None else ""
        col = f" ({cols[c]!r})" if cols is not None else ""
        raise UserError(f"{path}: {what} contain NaN or inf in {n_rows} rows (first row {r}{row}, column {c}{col}); "
                        "impute or drop those rows")
    check_values(X, f"{path}: {what}", row_names=rows, col_names=cols)


def _require_numeric(adata, path: Path, columns: tuple[str, ...], whole: bool = False) -> np.ndarray:
    """obs columns as numbers (THE core rule: ftcore.data.coordinates names the first bad row)."""
    from ftcore.data import coordinates

    values = coordinates(adata.obs[list(columns)].to_numpy(dtype=object), f"{path}: obs columns {', '.join(columns)}",
                         row_names=list(map(str, adata.obs_names)))
    if whole:
        frac = np.nonzero((values != np.round(values)).any(1))[0]
        if len(frac):
            r = int(frac[0])
            raise UserError(f"{path}: obs columns {', '.join(columns)} are spot grid positions (whole numbers) but row "
                            f"{r} ({adata.obs_names[r]!r}) holds {values[r].tolist()}; pixel coordinates are not grid "
                            "indices (use the array_row/array_col of the spot table)")
    return values


def _require_labels(adata, path: Path, column: str) -> np.ndarray:
    """A label column (sample, spot) as text; missing labels are refused naming the row."""
    col = adata.obs[column]
    missing = np.nonzero(col.isna().to_numpy())[0]
    if len(missing) and column != "spot":
        r = int(missing[0])
        raise UserError(f"{path}: obs[{column!r}] is empty for {len(missing)} rows (first row {r}, "
                        f"{adata.obs_names[r]!r}); every row needs a {column}")
    return col.astype(str).to_numpy()


def _require_unique(names: list[str], path: Path, what: str, fix: str) -> None:
    if len(set(names)) != len(names):
        seen: set[str] = set()
        dup = next(n for n in names if n in seen or seen.add(n))
        raise UserError(f"{path}: {what} are not unique ({dup!r} appears {names.count(dup)} times); {fix}")


def _check_genes(adata, path: Path) -> list[str]:
    genes = list(map(str, adata.var_names))
    _require_unique(genes, path, "gene names (var_names)", "make them unique (adata.var_names_make_unique())")
    if all(g.strip().lstrip("-").isdigit() for g in genes):
        raise UserError(f"{path}: gene names (var_names) are numbers ({', '.join(genes[:3])}, ...): the genes have no "
                        "names, so nothing can be matched to a model's genes; set adata.var_names to the gene symbols")
    return genes


def _check_log_expression(expr: np.ndarray, path: Path) -> None:
    """THE core rule (ftcore.data.expression_kind): the models are trained on log-normalised expression."""
    from ftcore.data import check_expression

    check_expression(expr, accept=("log",), where=f"{path}: X should be log-normalised expression but")


def _require_nonempty(adata, path: Path, what: str) -> None:
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise UserError(f"{path}: empty ({adata.n_obs} {what} x {adata.n_vars} columns); pass a file with data")


@dataclass
class SpatialData:
    """Validated spatial data: spots (with expression, unless read for prediction only), nuclei with features."""

    expr: np.ndarray | None  # [n_spots, G] log-normalised, of `genes`; None: no expression (histology only)
    genes: list[str]  # the measured genes (columns of expr); [] without expression
    spot_names: list[str]
    spot_sample: np.ndarray  # [n_spots] sample name per spot
    spot_rc: np.ndarray  # [n_spots, 2] array_row, array_col
    cell_feat: np.ndarray  # [n_cells, F]
    cell_xy: np.ndarray  # [n_cells, 2]
    cell_sample: np.ndarray  # [n_cells]
    cell_spot: np.ndarray  # [n_cells] spot row, -1 if outside every spot
    path: Path | None = None
    source: object = None  # the spots' AnnData without X (obs, obsm, uns['spatial']): what outputs keep

    @property
    def samples(self) -> list[str]:
        return sorted(set(self.spot_sample.tolist()))


@dataclass
class BulkData:
    expr: np.ndarray  # [n_samples, G]
    genes: list[str]
    sample_names: list[str]
    cell_feat: np.ndarray
    cell_xy: np.ndarray
    cell_sample: np.ndarray  # sample row per cell
    path: Path | None = None


def read_spatial(data_dir: str | os.PathLike, in_dim: int, model_genes: list[str] | None = None) -> SpatialData:
    """Spots and their nuclei. Training (`model_genes` None): X must hold log-normalised expression.
    Prediction (`model_genes` = the checkpoint's genes): expression is optional. A spots file without X,
    with an empty var or without the model's genes is a histology-only slide; the model's genes that
    it does measure (any order, other genes ignored) are validated the same way and read for evaluation."""
    d = Path(data_dir)
    spots_path, cells_path = d / SPATIAL_FILE, d / SPATIAL_CELLS_FILE
    spots = _read_h5ad(spots_path, "spatial expression")
    cells = _read_h5ad(cells_path, "spatial nuclei")
    if model_genes is None:
        _require_nonempty(spots, spots_path, "spots")
    elif spots.n_obs == 0:
        raise UserError(f"{spots_path}: empty (0 spots); pass a file with the slides' spots")
    _require_nonempty(cells, cells_path, "nuclei")
    _require_obs(spots, spots_path, ("sample", "array_row", "array_col"))
    _require_obs(cells, cells_path, ("sample", "spot", "x", "y"))
    spot_names = list(map(str, spots.obs_names))
    _require_unique(spot_names, spots_path, "spot names (obs_names)", "make them unique (e.g. sample_barcode)")
    expr, genes = _spot_expression(spots, spots_path, spot_names, model_genes)
    feat = dense(cells.X, np.float32)
    _check_feature_dim(feat, cells_path, in_dim)
    _require_finite(feat, cells_path, "nuclear features", list(map(str, cells.obs_names)))
    rc = _require_numeric(spots, spots_path, ("array_row", "array_col"), whole=True)
    xy = _require_numeric(cells, cells_path, ("x", "y"))
    row_of = {name: i for i, name in enumerate(spot_names)}
    spot_col = cells.obs["spot"].astype(str).fillna("").to_numpy()
    spot_col = np.where(np.isin(spot_col, ["", "nan", "None"]), "", spot_col)
    unknown = sorted({s for s in spot_col if s and s not in row_of})
    if unknown:
        raise UserError(f"{cells_path}: {len(unknown)} nuclei refer to spots not in {spots_path.name} "
                        f"(e.g. {unknown[0]!r}); use the spot obs_names, or '' for nuclei outside spots")
    cell_spot = np.array([row_of.get(s, -1) for s in spot_col], dtype=np.int64)
    spot_sample = _require_labels(spots, spots_path, "sample")
    cell_sample = _require_labels(cells, cells_path, "sample")
    inside = cell_spot >= 0
    wrong = inside & (spot_sample[np.maximum(cell_spot, 0)] != cell_sample)
    if wrong.any():
        i = int(np.nonzero(wrong)[0][0])
        raise UserError(f"{cells_path}: nucleus {cells.obs_names[i]} is in sample {cell_sample[i]!r} but its spot "
                        f"{spot_col[i]!r} belongs to {spot_sample[cell_spot[i]]!r}; fix the sample column")
    counts = np.bincount(cell_spot[inside], minlength=len(spot_names))
    if (counts == 0).any():
        empty = np.nonzero(counts == 0)[0]
        raise UserError(f"{spots_path}: {len(empty)} spots have no nuclei (first: {spot_names[empty[0]]!r} in sample "
                        f"{spot_sample[empty[0]]!r}); drop them from {spots_path.name} or check the nucleus table")
    return SpatialData(expr, genes, spot_names, spot_sample, rc.astype(np.int64),
                       feat, xy.astype(np.float32), cell_sample, cell_spot, path=d, source=_spot_source(spots, rc))


def _spot_expression(spots, path: Path, spot_names: list[str], model_genes: list[str] | None):
    """-> (expression [spots, genes] or None, genes). Training: all of X; prediction: the model's genes found."""
    if model_genes is None:
        genes = _check_genes(spots, path)
        expr = dense(spots.X, np.float32)
    else:
        if spots.X is None or spots.n_vars == 0:
            return None, []
        names, wanted = list(map(str, spots.var_names)), set(model_genes)
        col: dict[str, int] = {}
        for i, g in enumerate(names):
            if g in col and g in wanted:
                raise UserError(f"{path}: gene {g!r} appears twice in var_names, so its measured values are "
                                "ambiguous; make them unique (adata.var_names_make_unique())")
            col[g] = i
        genes = [g for g in model_genes if g in col]
        if not genes:
            return None, []
        expr = dense(spots.X[:, [col[g] for g in genes]], np.float32)
    _require_finite(expr, path, "expression values", spot_names, genes)
    _check_log_expression(expr, path)
    return expr, genes


def _spot_source(spots, rc: np.ndarray):
    """The spots' AnnData without X: the obs, obsm and uns['spatial'] an output keeps. obsm['spatial'] is the
    input's when it has one (it matches the slide images in uns['spatial']), else the coordinates read here,
    (array_col, array_row) as (x, y), so scanpy's spatial plots work on every output."""
    import anndata

    src = anndata.AnnData(obs=spots.obs.copy())
    for key in spots.obsm.keys():
        src.obsm[key] = spots.obsm[key]
    if "spatial" not in src.obsm:
        src.obsm["spatial"] = rc[:, ::-1].astype(np.float32)
    if "spatial" in spots.uns:
        src.uns["spatial"] = spots.uns["spatial"]
    return src


def read_bulk(data_dir: str | os.PathLike, in_dim: int) -> BulkData:
    d = Path(data_dir)
    bulk_path, cells_path = d / BULK_FILE, d / BULK_CELLS_FILE
    bulk = _read_h5ad(bulk_path, "bulk expression")
    cells = _read_h5ad(cells_path, "bulk nuclei")
    _require_nonempty(bulk, bulk_path, "samples")
    _require_nonempty(cells, cells_path, "nuclei")
    _require_obs(cells, cells_path, ("sample", "x", "y"))
    names = list(map(str, bulk.obs_names))
    _require_unique(names, bulk_path, "bulk sample names (obs_names)", "make them unique: nuclei are matched to samples by name")
    genes = _check_genes(bulk, bulk_path)
    expr = dense(bulk.X, np.float32)
    _require_finite(expr, bulk_path, "expression values", names, genes)
    _check_log_expression(expr, bulk_path)
    feat = dense(cells.X, np.float32)
    _check_feature_dim(feat, cells_path, in_dim)
    _require_finite(feat, cells_path, "nuclear features", list(map(str, cells.obs_names)))
    xy = _require_numeric(cells, cells_path, ("x", "y"))
    row_of = {n: i for i, n in enumerate(names)}
    cell_sample_names = _require_labels(cells, cells_path, "sample")
    unknown = sorted(set(cell_sample_names) - set(row_of))
    if unknown:
        raise UserError(f"{cells_path}: nuclei of samples not in {bulk_path.name} (e.g. {unknown[0]!r}); "
                        f"samples there: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
    cell_sample = np.array([row_of[s] for s in cell_sample_names], dtype=np.int64)
    missing = np.nonzero(np.bincount(cell_sample, minlength=len(names)) == 0)[0]
    if len(missing):
        raise UserError(f"{bulk_path}: {len(missing)} bulk samples have no nuclei (first: {names[missing[0]]!r}); "
                        f"drop them or add their nuclei to {cells_path.name}")
    return BulkData(expr, genes, names, feat, xy.astype(np.float32), cell_sample, path=d)


def _check_feature_dim(feat: np.ndarray, path: Path, in_dim: int) -> None:
    if feat.ndim != 2 or feat.shape[1] != in_dim:
        raise UserError(f"{path}: nuclei have {feat.shape[-1]} features but the model expects in_dim={in_dim}; "
                        f"extract {in_dim}-d nuclear features or set model.in_dim={feat.shape[-1]} in the config")


def check_gene_count(n_data: int, n_model: int, path: Path | None, what: str, key: str) -> None:
    if n_data != n_model:
        raise UserError(f"{path}: {what} has {n_data} genes but the model predicts {n_model}; "
                        f"use data with the model's genes or set model.{key}={n_data} (new model)")


# ----------------------------------------------------------------------------- items
def spatial_items(data: SpatialData, graph: GraphConfig, samples: list[str]) -> list[CellGraph]:
    """Windows of graph.window x graph.window spots of the given samples, as cell graphs."""
    items = []
    sample_ids = {s: i for i, s in enumerate(data.samples)}
    for sample in samples:
        spot_rows = np.nonzero(data.spot_sample == sample)[0]
        cell_rows = np.nonzero(data.cell_sample == sample)[0]
        win_of_spot = {int(s): tuple(data.spot_rc[s] // graph.window) for s in spot_rows}
        # nuclei outside every spot join the window of the nearest spot centre (context for the GAT)
        cell_win = _cell_windows(data, spot_rows, cell_rows, win_of_spot)
        for win in sorted(set(win_of_spot.values())):
            spots = np.array([s for s in spot_rows if win_of_spot[int(s)] == win])
            cells = cell_rows[[w == win for w in cell_win]]
            local = {int(s): i for i, s in enumerate(spots)}
            spot_of = data.cell_spot[cells]
            pos = torch.from_numpy(data.cell_xy[cells])
            rc = data.spot_rc[spots] - data.spot_rc[spots].min(0)
            items.append(CellGraph(
                x=torch.from_numpy(data.cell_feat[cells]), pos=pos, edge_index=cell_edges(pos, graph),
                cell_spot=torch.tensor([local.get(int(s), 0) for s in spot_of], dtype=torch.long),
                cell_in_spot=torch.from_numpy(spot_of >= 0),
                spot_pos=torch.from_numpy(rc.astype(np.float32)), y=_spot_targets(data, spots),
                spot_ids=torch.from_numpy(spots.astype(np.int64)),
                sample_id=torch.tensor([sample_ids[sample]]), num_nodes=len(cells),
            ))
    return items


def _spot_targets(data: SpatialData, spots: np.ndarray) -> torch.Tensor:
    """[S, G] measured expression of the spots; [S, 0] for a histology-only slide (prediction)."""
    if data.expr is None:
        return torch.zeros(len(spots), 0)
    return torch.from_numpy(data.expr[spots])


def _cell_windows(data: SpatialData, spot_rows, cell_rows, win_of_spot) -> list[tuple]:
    spot_of = data.cell_spot[cell_rows]
    wins = [win_of_spot.get(int(s)) for s in spot_of]
    outside = np.nonzero(spot_of < 0)[0]
    if len(outside):
        centres = np.stack([data.cell_xy[cell_rows][spot_of == s].mean(0) for s in spot_rows])
        d = torch.cdist(torch.from_numpy(data.cell_xy[cell_rows][outside]), torch.from_numpy(centres))
        nearest = spot_rows[d.argmin(1).numpy()]
        for i, s in zip(outside, nearest):
            wins[i] = win_of_spot[int(s)]
    return wins


def bulk_items(data: BulkData, graph: GraphConfig, rows: list[int] | np.ndarray) -> list[CellGraph]:
    """One cell graph per bulk sample, nuclei binned into square tiles (the tokens)."""
    items = []
    for r in rows:
        cells = np.nonzero(data.cell_sample == r)[0]
        xy = data.cell_xy[cells]
        tile = np.floor((xy - xy.min(0)) / graph.tile_size).astype(np.int64)
        tiles, cell_tile = np.unique(tile, axis=0, return_inverse=True)
        pos = torch.from_numpy(xy)
        items.append(CellGraph(
            x=torch.from_numpy(data.cell_feat[cells]), pos=pos, edge_index=cell_edges(pos, graph),
            cell_spot=torch.from_numpy(cell_tile.reshape(-1).astype(np.int64)),
            cell_in_spot=torch.ones(len(cells), dtype=torch.bool),
            spot_pos=torch.from_numpy(tiles.astype(np.float32)), y=torch.from_numpy(data.expr[r : r + 1]),
            sample_id=torch.tensor([int(r)]), num_nodes=len(cells),
        ))
    return items
