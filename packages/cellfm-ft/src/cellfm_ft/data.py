"""The data contract: an .h5ad file -> validated cells -> CellFM token batches.

    cells = read_cells("adnc.h5ad", label_key="ADNC", donor_key="Donor ID")
    vocab = GeneVocab.build(cells.genes, model_vocabulary)      # genes outside it reported
    split = make_split(cells, test_donors=None, test_size=0.2, seed=0)
    train = CellDataset(cells, vocab, split.train, nonz_len=2048, label_names=...)

Validation happens here, once, with errors that name the fix: missing obs/var columns (listing
what exists), NaN/inf, absurd or negative values in X (naming the first cell and gene), an X of
zeros only, gene names that appear twice, empty files, no gene overlap.

X may hold raw counts (normalised here to 1e4 per cell and log1p-transformed, CellFM's input)
or already log-normalised values; `input_kind="auto"` decides by the toolkit's one rule,
`ftcore.data.expression_kind` (whole numbers -> counts; other values up to 30 -> log; negative ->
scaled, refused; non-whole values above 30 -> normalised but never logged (CP10k/TPM), refused
with the fix: log1p them, or --input-kind counts to normalise them here). An explicit
--input-kind counts/log is obeyed, with a warning where the values say otherwise. A cell
enters the model as its non-zero genes: the `nonz_len` highest, their ids (1..G, 0 = pad) and
values.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import sparse

from ftcore.data import KIND_ADVICE, check_values, expression_kind, log_normalise, read_h5ad
from ftcore.errors import UserError

INPUT_KINDS = ("auto", "counts", "log")


@dataclass
class Cells:
    """Validated cells of one .h5ad: `X` [n_cells, n_genes] CSR, log-normalised float32."""

    adata: "object"  # the AnnData as read (outputs are written on copies of it; X never replaced)
    X: sparse.csr_matrix
    genes: list[str]
    labels: np.ndarray | None  # str [n_cells], None when no label column was asked for
    donors: np.ndarray | None  # str [n_cells]
    input_kind: str  # "counts" or "log": what X held
    path: str

    @property
    def n_cells(self) -> int:
        return self.X.shape[0]


def _column(frame, key: str, where: str, path) -> np.ndarray:
    if key not in frame.columns:
        have = ", ".join(map(str, frame.columns)) or "none"
        raise UserError(f"{path}: no {where} column {key!r}; available {where} columns: {have}")
    values = frame[key]
    if values.isna().any():
        n = int(values.isna().sum())
        raise UserError(f"{path}: {where} column {key!r} has {n} missing values; fill or drop those cells first")
    return values.astype(str).to_numpy()


def read_cells(
    path: str | os.PathLike,
    *,
    label_key: str | None,
    donor_key: str | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    input_kind: str = "auto",
) -> Cells:
    """Read and check an .h5ad. layer: a key of .layers, or "raw" for .raw.X; default X."""
    if input_kind not in INPUT_KINDS:
        raise UserError(f"unknown input kind {input_kind!r}; choose one of: {', '.join(INPUT_KINDS)}")
    # duplicated gene names are checked (and named) below, in one line
    adata = read_h5ad(path, fix="check the path (an .h5ad file is expected)", names_checked=True)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise UserError(f"{path}: the data set is empty ({adata.n_obs} cells x {adata.n_vars} genes)")
    labels = _column(adata.obs, label_key, "obs", path) if label_key else None
    donors = _column(adata.obs, donor_key, "obs", path) if donor_key else None
    if layer is None:
        X, var = adata.X, adata.var
    elif layer == "raw":
        if adata.raw is None:
            raise UserError(f"{path}: --layer raw asked for but the file has no .raw; use X or one of its layers")
        X, var = adata.raw.X, adata.raw.var
    else:
        if layer not in adata.layers:
            have = ", ".join(adata.layers.keys()) or "none"
            raise UserError(f"{path}: no layer {layer!r}; available layers: {have} (or 'raw' for .raw)")
        X, var = adata.layers[layer], adata.var
    if gene_key:
        genes = _column(var, gene_key, "var", path).tolist()
    else:
        genes = var.index.astype(str).tolist()
    _refuse_duplicates(genes, f"{path}: {f'var column {gene_key!r}' if gene_key else 'var_names'}",
                       "adata.var_names_make_unique(), or keep one row per gene")
    where = f"{path}: {'X' if layer is None else '.raw.X' if layer == 'raw' else f'layer {layer!r}'}"
    if X is None:
        raise UserError(f"{where} is missing (the file stores no expression matrix); use --layer with one that exists")
    check_values(X, where, row_names=adata.obs_names.astype(str), col_names=genes)
    X = sparse.csr_matrix(X, dtype=np.float32)
    if X.count_nonzero() == 0:
        raise UserError(f"{where} holds only zeros ({X.shape[0]} cells x {X.shape[1]} genes); is it the right "
                        "matrix? pass --layer with the counts or log-normalised values (or --layer raw for .raw)")
    kind = input_kind_of(X, input_kind, where)
    if kind == "counts":
        X = log_normalise(X)
    X.eliminate_zeros()
    return Cells(adata, X, genes, labels, donors, kind, str(path))


def _refuse_duplicates(names: Sequence[str], where: str, fix: str) -> None:
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    dups = [n for n, c in seen.items() if c > 1]
    if dups:
        shown = ", ".join(f"{n!r} x{seen[n]}" for n in dups[:3]) + (" ..." if len(dups) > 3 else "")
        raise UserError(f"{where} names {len(dups)} gene(s) more than once ({shown}); which column is meant is "
                        f"ambiguous: {fix}")


def input_kind_of(X: sparse.csr_matrix, input_kind: str, where: str) -> str:
    """'counts' or 'log': what X holds by THE rule (ftcore.data.expression_kind), or the user's --input-kind."""
    kind = expression_kind(X)
    if kind == "scaled":
        raise UserError(
            f"{where} has negative values (scaled or centred data?); CellFM needs raw counts or "
            "log-normalised values: pass --layer with such a layer, or --layer raw for .raw"
        )
    if input_kind == "auto":
        if kind == "unlogged":
            raise UserError(f"{where}: {KIND_ADVICE['unlogged']} (or pass --input-kind counts: cellfm-ft then "
                            "normalises each cell to 1e4 and log-transforms)")
        return kind
    if input_kind == "log" and kind != "log":
        print(f"warning: {where}: --input-kind log, but {KIND_ADVICE[kind]}; used as given")
    if input_kind == "counts" and kind == "log":
        print(f"warning: {where}: --input-kind counts, but {KIND_ADVICE['log']}; normalised and log-transformed "
              "again as asked")
    return input_kind


def read_gene_list(path: str | os.PathLike) -> list[str]:
    """A vocabulary file: one gene per line, or a CSV/TSV whose first column (or `gene`) holds names."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"vocabulary file {path} does not exist; pass a gene list (one gene per line)")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if path.suffix in (".csv", ".tsv") and lines:
        sep = "\t" if path.suffix == ".tsv" else ","
        header = [h.strip().lower() for h in lines[0].split(sep)]
        col = next((header.index(h) for h in ("gene", "gene_name", "symbol", "hgnc_symbol") if h in header), 0)
        lines = [ln.split(sep)[col].strip() for ln in lines[1:]]
    if not lines:
        raise UserError(f"vocabulary file {path} is empty; it should list the model's gene names")
    return lines


@dataclass
class GeneVocab:
    """Our vocabulary: the data's genes that the model vocabulary knows, ids 1..G (0 = pad)."""

    genes: list[str]  # token id i + 1 -> genes[i]
    absent: list[str]  # data genes outside the model vocabulary (left out)
    restricted: bool = True  # False: no model vocabulary was imposed (every data gene kept)

    @classmethod
    def build(cls, data_genes: Sequence[str], model_vocab: Sequence[str] | None, source: str = "") -> "GeneVocab":
        seen: set[str] = set()
        unique = [g for g in data_genes if not (g in seen or seen.add(g))]  # read_cells refuses duplicates
        if model_vocab is None:
            return cls(unique, [], restricted=False)
        known = set(model_vocab)
        kept = [g for g in unique if g in known]
        absent = [g for g in unique if g not in known]
        if not kept:
            raise UserError(
                f"none of the {len(unique)} genes of {source or 'the data'} (e.g. {', '.join(unique[:3])}) is in the "
                f"model vocabulary (e.g. {', '.join(list(model_vocab)[:3])}); use gene symbols "
                "(--gene-key to pick a var column) or the right vocabulary file"
            )
        return cls(kept, absent)

    def report(self) -> str:
        if not self.restricted:
            return (f"genes: all {len(self.genes)} data genes, each with a fresh gene_emb row (the teacher's rule; "
                    "--checkpoint-vocab or --vocab FILE would restrict them to a model vocabulary)")
        line = f"genes: {len(self.genes)} in the model vocabulary"
        if self.absent:
            shown = ", ".join(self.absent[:10]) + (" ..." if len(self.absent) > 10 else "")
            line += f"; {len(self.absent)} absent from it and left out: {shown}"
        return line


def columns_for(cells: Cells, genes: Sequence[str]) -> np.ndarray:
    """For each vocabulary gene, its column in `cells` (-1 if the data lacks it)."""
    first: dict[str, int] = {}
    for i, g in enumerate(cells.genes):
        first.setdefault(g, i)
    return np.array([first.get(g, -1) for g in genes], dtype=np.int64)


def token_matrix(cells: Cells, genes: Sequence[str]) -> sparse.csr_matrix:
    """X restricted and reordered to the vocabulary: column j = token id j + 1.  [n_cells, G]"""
    cols = columns_for(cells, genes)
    present = cols >= 0
    sel = sparse.csr_matrix((cells.n_cells, len(genes)), dtype=np.float32)
    if present.any():
        picked = cells.X[:, cols[present]]
        scatter = sparse.csr_matrix(
            (np.ones(int(present.sum()), np.float32), (np.arange(int(present.sum())), np.flatnonzero(present))),
            shape=(int(present.sum()), len(genes)),
        )
        sel = sparse.csr_matrix(picked @ scatter)
    sel.eliminate_zeros()
    return sel


# ------------------------------------------------------------------------------ splits
@dataclass
class Split:
    train: np.ndarray  # cell indices
    test: np.ndarray
    how: str  # human-readable: which donors / fraction
    val: np.ndarray | None = None  # the validation cells (picks the best epoch); None: not made (yet)

    def to_dict(self, cells: Cells) -> dict:
        names = cells.adata.obs_names.astype(str)
        out = {"how": self.how, "train": names[self.train].tolist(), "test": names[self.test].tolist()}
        if self.val is not None:
            out["val"] = names[self.val].tolist()
        return out

    @classmethod
    def from_file(cls, path: Path, cells: Cells) -> "Split":
        saved = json.loads(path.read_text())
        index = {n: i for i, n in enumerate(cells.adata.obs_names.astype(str))}
        try:
            train = np.array([index[n] for n in saved["train"]], dtype=np.int64)
            test = np.array([index[n] for n in saved["test"]], dtype=np.int64)
            val = np.array([index[n] for n in saved["val"]], dtype=np.int64) if "val" in saved else None
        except KeyError as err:
            raise UserError(
                f"{path} (from an earlier run in this output dir) names cell {err.args[0]!r} that the data "
                "lacks; use a new --output for other data"
            ) from None
        return cls(train, test, saved["how"], val)


def make_split(cells: Cells, *, test_donors: Sequence[str] | None, test_size: float, seed: int) -> Split:
    """Hold out donors when a donor column is given (the seed's test case), else cells, stratified."""
    if not 0 < test_size < 1:  # also NaN
        raise UserError(f"--test-size must be between 0 and 1, got {test_size}")
    rng = np.random.default_rng(seed)
    n = cells.n_cells
    if cells.donors is not None:
        donors = sorted(set(cells.donors))
        if test_donors:
            unknown = [d for d in test_donors if d not in donors]
            if unknown:
                raise UserError(f"test donor(s) {_names(unknown)} not in the donor column; donors are: {_names(donors)}")
            held = sorted(set(test_donors))
        else:
            if len(donors) < 2:
                raise UserError(f"a donor split needs at least 2 donors, the data has {len(donors)}; drop --donor-key")
            k = min(max(1, round(len(donors) * test_size)), len(donors) - 1)
            held = sorted(rng.choice(donors, size=k, replace=False).tolist())
        is_test = np.isin(cells.donors, held)
        if is_test.all():
            raise UserError("every donor is held out for testing; leave at least one donor for training")
        return Split(np.flatnonzero(~is_test), np.flatnonzero(is_test), f"held-out donors: {', '.join(held)}")
    if test_donors:
        raise UserError("--test-donors needs --donor-key (the obs column naming each cell's donor)")
    test = []
    labels = cells.labels if cells.labels is not None else np.zeros(n, dtype=str)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        k = int(round(len(idx) * test_size)) if len(idx) > 1 else 0
        test.extend(idx[:k].tolist())
    is_test = np.zeros(n, bool)
    is_test[test] = True
    return Split(np.flatnonzero(~is_test), np.flatnonzero(is_test), f"random {test_size:.0%} of cells per label")


def _names(names: Sequence[str]) -> str:
    """Donor names as the user must type them: quoted, so a trailing space or an empty name shows."""
    return ", ".join(repr(str(n)) for n in names)


def _stratified_pick(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask picking round(fraction * n) cells of every label with more than one cell (and at
    least one cell in all, from the largest label, when the rounding picks none)."""
    picked = np.zeros(len(labels), bool)
    largest = None
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        picked[idx[:k]] = True
        if len(idx) > 1 and (largest is None or len(idx) > len(largest)):
            largest = idx
    if not picked.any() and largest is not None:
        picked[largest[0]] = True
    return picked


def add_validation(cells: Cells, split: Split, *, val_fraction: float, val_donors: Sequence[str] | None = None,
                   seed: int = 0) -> Split:
    """Carve the validation split (which picks the best epoch) out of the training cells.

    With donors: whole training donors (`val_donors`, else round(val_fraction x training donors), at
    least 1, never all); with a single training donor, or without donors: a stratified random
    `val_fraction` of the training cells per label. The test split is left as it is.
    """
    if not 0 < val_fraction < 1:  # also NaN
        raise UserError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng([seed, 1])  # independent of the test split's draw
    train = np.asarray(split.train)
    labels = cells.labels[train] if cells.labels is not None else np.zeros(len(train), dtype=str)
    if cells.donors is not None:
        donors = sorted(set(cells.donors[train]))
        held = None
        if val_donors:
            every = set(cells.donors)
            unknown = [d for d in val_donors if d not in every]
            if unknown:
                raise UserError(f"validation donor(s) {_names(unknown)} not in the donor column; donors are: "
                                f"{_names(sorted(every))}")
            testing = [d for d in val_donors if d not in donors]
            if testing:
                raise UserError(f"donor(s) {_names(testing)} are held out for testing and named in --val-donors too; "
                                f"a donor tests or validates, not both (training donors: {_names(donors)})")
            held = sorted(set(val_donors))
        elif len(donors) >= 2:
            k = min(max(1, round(len(donors) * val_fraction)), len(donors) - 1)
            held = sorted(rng.choice(donors, size=k, replace=False).tolist())
        if held is not None:
            is_val = np.isin(cells.donors[train], held)
            if is_val.all():
                raise UserError("every training donor is held out for validation; leave at least one for training")
            return Split(train[~is_val], split.test, f"{split.how}; validation donors: {', '.join(held)}", train[is_val])
        note = f"validation: random {val_fraction:.0%} of the only training donor's cells per label"
    else:
        if val_donors:
            raise UserError("--val-donors needs --donor-key (the obs column naming each cell's donor)")
        note = f"validation: random {val_fraction:.0%} of the training cells per label"
    is_val = _stratified_pick(labels, val_fraction, rng)
    return Split(train[~is_val], split.test, f"{split.how}; {note}", train[is_val])


# ------------------------------------------------------------------------ model inputs
class CellDataset(torch.utils.data.Dataset):
    """Cells as CellFM tokens; item = (gene ids [n], values [n], label) with n <= nonz_len."""

    def __init__(self, tokens: sparse.csr_matrix, rows: np.ndarray, labels: np.ndarray | None, nonz_len: int):
        self.tokens, self.rows, self.labels, self.nonz_len = tokens, np.asarray(rows), labels, nonz_len

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        start, end = self.tokens.indptr[r], self.tokens.indptr[r + 1]
        ids, vals = self.tokens.indices[start:end], self.tokens.data[start:end]
        if len(ids) > self.nonz_len:  # keep the most expressed genes
            top = np.sort(np.argpartition(-vals, self.nonz_len - 1)[: self.nonz_len])
            ids, vals = ids[top], vals[top]
        label = -1 if self.labels is None else int(self.labels[r])
        return ids.astype(np.int64) + 1, vals.astype(np.float32), label


def collate(items) -> dict[str, torch.Tensor]:
    """Pad to the longest cell: gene [B, L] (0 = pad), expr [B, L], zero_idx [B, L+1], label [B]."""
    b, n = len(items), max(max(len(ids) for ids, _, _ in items), 1)
    gene = torch.zeros(b, n, dtype=torch.long)
    expr = torch.zeros(b, n)
    zero_idx = torch.zeros(b, n + 1)
    for i, (ids, vals, _) in enumerate(items):
        gene[i, : len(ids)] = torch.from_numpy(ids)
        expr[i, : len(ids)] = torch.from_numpy(vals)
        zero_idx[i, : len(ids) + 1] = 1
    label = torch.tensor([lab for _, _, lab in items], dtype=torch.long)
    return {"gene": gene, "expr": expr, "zero_idx": zero_idx, "label": label}


def expressed_rows(tokens: sparse.csr_matrix) -> np.ndarray:
    """Cells with at least one expressed vocabulary gene (CellFM scales values by 1/sqrt(#genes))."""
    return np.flatnonzero(np.diff(tokens.indptr) >= 1)
