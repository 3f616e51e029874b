"""Data contract: h5ad files + a cell-load TOML -> validated splits of cell sentences.

    exp = read_experiment_toml("configs/train.toml")           # [datasets] [training] [zeroshot] [fewshot]
    data = build_data(exp, DataKwargs(pert_col="gene", ...), cell_set_len=64, seed=42)
    data.train[0] -> {"basal": [S, G], "target": [S, G], "pert": [S, P], "batch": [S], ...}

Files are read lazily (h5py, rows by index), never loaded whole: only obs columns, the
sentence index and control pools live in memory (about 30 bytes per cell), so a 1M x 2000 data
set trains in a few GB of RAM. Every mismatch between the files and the configuration is a
UserError that names what the file has.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ftcore import options as opt
from ftcore.config import read_config_file
from ftcore.data import dense, require_key
from ftcore.errors import UserError

SPLITS = ("train", "val", "test")
SCAN_ROWS = 8192  # rows per chunk when checking a matrix for NaN/inf
IN_MEMORY_BYTES = 256 * 2**20  # matrices below this are read once into RAM (per process); larger stay on disk


PERT_TRAIN_SHIFT = ("off", "append", "only")


@dataclass
class DataKwargs:
    """`data.kwargs.*` of the seed (cell-load's PerturbationDataModule arguments we implement)."""

    toml_config_path: str | None = None
    pert_col: str = "gene"
    cell_type_key: str = "cell_type"
    batch_col: str = "gem_group"
    control_pert: str = "non-targeting"
    output_space: str = "gene"  # gene: obsm['X_hvg'] (HVGs) | all: X (all genes)
    basal_mapping_strategy: str = "random"  # random: control of the same cell type | batch: same cell type and batch
    perturbation_features_file: str | None = None  # .pt {perturbation: vector}, e.g. ESM2 of the target gene
    # each perturbation's mean shift measured on the TRAINING split in the OTHER cell types (the mean-shift baseline's
    # quantity, see train_shift_table) as (part of) its encoding: off | append (after the one-hot / feature vector)
    # | only (the shift alone: the model cannot tell perturbations apart except by their training response)
    pert_train_shift: str = "off"
    # rms: the shift table divided by the root mean square of its non-zero entries (entries of order 1, like the
    # one-hot's; the raw log-scale shifts are mostly ~0.1 and vanish beside the basal encoding); none: raw
    pert_train_shift_scale: str = "rms"
    should_yield_control_cells: bool = True  # control sentences (control -> control) in training
    num_workers: int = field(default=0, metadata=opt.bounds(ge=0))

    def __post_init__(self) -> None:
        if self.output_space not in ("gene", "all"):
            raise UserError(f"data.kwargs.output_space={self.output_space!r}; choose gene (obsm['X_hvg']) or all (X)")
        if self.pert_train_shift not in PERT_TRAIN_SHIFT:
            raise UserError(f"data.kwargs.pert_train_shift={self.pert_train_shift!r}; choose off, append (the training "
                            "mean shift after the one-hot) or only (the shift alone)")
        if self.pert_train_shift_scale not in ("rms", "none"):
            raise UserError(f"data.kwargs.pert_train_shift_scale={self.pert_train_shift_scale!r}; choose rms or none")
        if self.pert_train_shift == "only" and self.perturbation_features_file:
            raise UserError("data.kwargs.pert_train_shift=only encodes a perturbation by its training shift alone, so "
                            "data.kwargs.perturbation_features_file would be unused; use pert_train_shift=append")
        if self.basal_mapping_strategy not in ("random", "batch"):
            raise UserError(f"data.kwargs.basal_mapping_strategy={self.basal_mapping_strategy!r}; choose random or batch")


# ------------------------------------------------------------------------------------ the TOML
@dataclass
class ExperimentConfig:
    """The four sections of a cell-load TOML, checked for shape (not yet against the files)."""

    path: str
    datasets: dict[str, str]
    training: dict[str, str]
    zeroshot: dict[str, str]  # "dataset.celltype" -> val | test | train
    fewshot: dict[str, dict[str, list[str]]]  # "dataset.celltype" -> {val: [...], test: [...]}

    def split_key(self, key: str) -> tuple[str, str]:
        """'dataset.celltype' -> (dataset, celltype); a dataset name may itself hold dots ("my.screen.K562"):
        the longest name defined in [datasets] that the key starts with wins."""
        names = [d for d in self.datasets if key.startswith(d + ".") and len(key) > len(d) + 1]
        if names:
            d = max(names, key=len)
            return d, key[len(d) + 1:]
        return tuple(key.split(".", 1))  # type: ignore[return-value] - checked against [datasets] on reading

    def used_datasets(self) -> list[str]:
        names = dict.fromkeys(self.training)
        for key in list(self.zeroshot) + list(self.fewshot):
            names.setdefault(self.split_key(key)[0])
        return list(names)

    def celltype_rules(self, dataset: str) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
        """(zeroshot {celltype: split}, fewshot {celltype: {split: perts}}) of one dataset."""
        zs = {self.split_key(k)[1]: v for k, v in self.zeroshot.items() if self.split_key(k)[0] == dataset}
        fs = {self.split_key(k)[1]: v for k, v in self.fewshot.items() if self.split_key(k)[0] == dataset}
        return zs, fs


QUOTE_HINT = 'quote keys that contain dots, e.g. "dataset.celltype" = "test" or [fewshot."dataset.celltype"]'


def read_experiment_toml(path: str | os.PathLike) -> ExperimentConfig:
    """Parse and shape-check the TOML; syntax errors carry the line (ftcore.config)."""
    path = Path(path)
    if path.suffix != ".toml":
        raise UserError(f"data.kwargs.toml_config_path={path} is not a .toml file")
    raw = read_config_file(path)
    unknown = [k for k in raw if k not in ("datasets", "training", "zeroshot", "fewshot")]
    if unknown:
        raise UserError(f"{path}: unknown section [{unknown[0]}]; sections are [datasets], [training], [zeroshot], [fewshot]")
    for section in ("datasets", "training", "zeroshot", "fewshot"):
        if not isinstance(raw.get(section, {}), dict):
            raise UserError(f"{path}: {section} must be a table ([{section}]), got a value")
    datasets = raw.get("datasets", {})
    if not datasets:
        raise UserError(f'{path}: [datasets] is empty; add name = "/absolute/path/to/data.h5ad"')
    datasets = dict(datasets)
    for name, value in datasets.items():
        if isinstance(value, dict):
            inner = next(iter(value), "part")
            raise UserError(f'{path}: [datasets] {name}.{inner} was read as nested tables (a name with a dot); '
                            f'quote the name: "{name}.{inner}" = "/data/{name}.{inner}.h5ad"')
        if not isinstance(value, str):
            raise UserError(f'{path}: [datasets] {_toml_key(name)} must be a path string in double quotes, e.g. '
                            f'{_toml_key(name)} = "/data/{name}.h5ad"')
        if not value.strip():
            raise UserError(f'{path}: [datasets] {_toml_key(name)} = "" is empty; give the absolute path of the '
                            ".h5ad file(s)")
        # ~ and $VARS as a shell would expand them (the TOML is read by this program, not by a shell)
        expanded = os.path.expanduser(os.path.expandvars(value.strip()))
        if not os.path.isabs(expanded):
            raise UserError(f"{path}: [datasets] {_toml_key(name)} = {value!r} is not an absolute path; "
                            f'write {_toml_key(name)} = "{os.path.abspath(expanded)}"')
        datasets[name] = expanded
    training = raw.get("training", {})
    for name, value in training.items():
        if isinstance(value, dict):
            inner = next(iter(value), "part")
            raise UserError(f'{path}: [training] {name}.{inner} was read as nested tables (a name with a dot); '
                            f'quote the name: "{name}.{inner}" = "train"')
        if value != "train":
            raise UserError(f'{path}: [training] {name} = {value!r}; the only value is "train" '
                            "(hold out cell types with [zeroshot], perturbations with [fewshot])")
    zeroshot = raw.get("zeroshot", {})
    for key, value in zeroshot.items():
        if isinstance(value, dict):
            inner = next(iter(value), "celltype")
            raise UserError(f"{path}: [zeroshot] {key}.{inner} was read as nested tables; {QUOTE_HINT}")
        if "." not in key:
            raise UserError(f'{path}: [zeroshot] key {key!r} must be "dataset.celltype"')
        if value not in SPLITS:
            raise UserError(f'{path}: [zeroshot] "{key}" = {value!r}; choose "val" or "test" (or "train")')
    fewshot = raw.get("fewshot", {})
    for key, value in fewshot.items():
        if not isinstance(value, dict):
            raise UserError(f'{path}: [fewshot."{key}"] must be a table with val = [...] and/or test = [...]')
        if "." not in key:
            inner = next(iter(value), "celltype")
            hint = QUOTE_HINT if isinstance(value.get(inner), dict) else 'the key must be "dataset.celltype"'
            raise UserError(f"{path}: [fewshot] key {key!r} is not \"dataset.celltype\"; {hint}")
        for split, perts in value.items():
            if split not in ("val", "test"):
                raise UserError(f'{path}: [fewshot."{key}"] has {split!r}; only val = [...] and test = [...] are allowed')
            if not isinstance(perts, list) or not all(isinstance(p, str) for p in perts):
                raise UserError(f'{path}: [fewshot."{key}"] {split} must be a list of perturbation names, e.g. {split} = ["GENE1", "GENE2"]')
            if not perts:
                raise UserError(f'{path}: [fewshot."{key}"] {split} = [] lists no perturbations; name the ones to hold '
                                f"out, or drop the {split} line")
            dup = sorted({p for p in perts if perts.count(p) > 1})
            if dup:
                raise UserError(f'{path}: [fewshot."{key}"] {split} lists {dup[0]!r} twice; list each once')
        overlap = set(value.get("val", [])) & set(value.get("test", []))
        if overlap:
            raise UserError(f'{path}: [fewshot."{key}"] lists {sorted(overlap)[0]!r} in both val and test; keep each in one')
        if not value:
            raise UserError(f'{path}: [fewshot."{key}"] is empty; add val = [...] and/or test = [...]')
    exp = ExperimentConfig(str(path), dict(datasets), dict(training), dict(zeroshot), dict(fewshot))
    defined = ", ".join(map(repr, datasets))
    for section, keys in (("zeroshot", zeroshot), ("fewshot", fewshot)):
        for key in keys:
            dataset, celltype = exp.split_key(key)
            if dataset not in datasets:
                import difflib

                close = difflib.get_close_matches(dataset, list(datasets), n=1)
                hint = f"; did you mean \"{close[0]}.{celltype}\"?" if close else ""
                raise UserError(f'{path}: [{section}] "{key}" names dataset {dataset!r}, which has no path in '
                                f"[datasets] (defined: {defined}){hint}")
    missing = [d for d in exp.used_datasets() if d not in datasets]
    if missing:
        raise UserError(f"{path}: dataset {missing[0]!r} is used but has no path in [datasets] "
                        f"(defined: {defined})")
    return exp


def _toml_key(name: str) -> str:
    """A [datasets] name as it must be written in TOML: bare when it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def expand_braces(pattern: str) -> list[str]:
    """Bash-style {a,b,c} expansion (glob does not do it): '/d/{x,y}.h5ad' -> ['/d/x.h5ad', '/d/y.h5ad']."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [p for opt in match.group(1).split(",") for p in expand_braces(head + opt.strip() + tail)]


def resolve_dataset_files(name: str, pattern: str, source: str = "config") -> list[Path]:
    """Files of one [datasets] entry: a file, a directory of .h5/.h5ad, or brace/glob patterns."""
    files: list[Path] = []
    for pat in expand_braces(pattern):
        if any(ch in pat for ch in "*?["):
            hits = sorted(glob.glob(pat)) if pat.endswith((".h5", ".h5ad")) else \
                sorted(glob.glob(os.path.join(pat, "*.h5ad")) + glob.glob(os.path.join(pat, "*.h5")))
            files += [Path(h) for h in hits if os.path.isfile(h)]
        elif os.path.isdir(pat):
            files += sorted(Path(pat).glob("*.h5ad")) + sorted(Path(pat).glob("*.h5"))
        elif os.path.isfile(pat):
            files.append(Path(pat))
        elif pat != pattern:  # one alternative of a brace list is missing: say which
            raise UserError(f"{source}: [datasets] {name}: {pat} (from {pattern}) does not exist; "
                            f"check with: ls -l {pattern}")
    files = list(dict.fromkeys(files))
    if not files:
        raise UserError(f"{source}: [datasets] {name} = {pattern!r} matches no .h5ad file; check the path "
                        f"(it must be absolute) with: ls -l {pattern}")
    return files


# ------------------------------------------------------------------------------- one h5ad file
def _decode(values: Any) -> np.ndarray:
    """An obs column (Categorical, strings, numbers) as an array of str."""
    arr = np.asarray(values.astype(str) if hasattr(values, "astype") else values)
    return arr.astype(str)


class H5Source:
    """Lazy view of one .h5ad: obs columns on demand, matrix rows by index (dense or CSR).

    The h5py handle is opened per process (DataLoader workers, DDP ranks each get their own).
    """

    def __init__(self, path: str | os.PathLike, output_space: str, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.stem
        self.output_space = output_space
        if not self.path.exists():
            raise UserError(f"{self.path} does not exist; check the path")
        try:
            import h5py

            with h5py.File(self.path, "r") as f:
                self._read_layout(f)
        except OSError as err:
            raise UserError(f"{self.path}: cannot be read as .h5ad/HDF5 ({err}); the file may be truncated "
                            "or not an AnnData file") from None
        self._handle = None
        self._pid = None
        self._cache = None  # the whole matrix, for files small enough (IN_MEMORY_BYTES)

    def _read_layout(self, f) -> None:
        if "obs" not in f or "X" not in f:
            raise UserError(f"{self.path}: not an AnnData .h5ad (no obs/X groups); write it with adata.write_h5ad")
        from anndata.io import read_elem

        obs = f["obs"]
        index_key = obs.attrs.get("_index", "_index")
        self.obs_columns = [c for c in obs.attrs.get("column-order", [k for k in obs if k != index_key])]
        self.obs_names = _decode(read_elem(obs[index_key])) if index_key in obs else None
        var = f["var"]
        var_index = var.attrs.get("_index", "_index")
        var_names = _decode(read_elem(var[var_index])) if var_index in var else None
        self.obsm_keys = list(f["obsm"]) if "obsm" in f else []
        if self.output_space == "gene":
            require_key("X_hvg", self.obsm_keys, str(self.path), axis="obsm", what="the HVG matrix output_space=gene reads",
                        fix="add it (sc.pp.highly_variable_genes; adata.obsm['X_hvg'] = "
                            "adata[:, adata.var.highly_variable].X) or set data.kwargs.output_space=all")
            self.matrix_key = "obsm/X_hvg"
        else:
            self.matrix_key = "X"
        shape, self.sparse = self._matrix_shape(f[self.matrix_key])
        self.n_obs, self.n_features = int(shape[0]), int(shape[1])
        # gene names of the matrix: all var names for X; the highly_variable ones for X_hvg
        if self.output_space == "all":
            self.gene_names = var_names
        elif "highly_variable" in var and var_names is not None:
            hv = np.asarray(read_elem(var["highly_variable"]), dtype=bool)
            self.gene_names = var_names[hv] if hv.sum() == self.n_features else None
        elif var_names is not None and len(var_names) == self.n_features:
            self.gene_names = var_names
        else:
            self.gene_names = None
        if self.gene_names is None:
            self.gene_names = np.array([f"hvg_{i}" for i in range(self.n_features)])
        if self.n_obs == 0 or self.n_features == 0:
            raise UserError(f"{self.path}: {self.matrix_key} is empty ({self.n_obs} cells x {self.n_features} "
                            "features); check the file")

    def _matrix_shape(self, node) -> tuple[tuple[int, int], bool]:
        import h5py

        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise UserError(f"{self.path}: {self.matrix_key} has {node.ndim} dimensions, expected cells x genes")
            return node.shape, False
        enc = node.attrs.get("encoding-type", "")
        if enc == "csr_matrix":
            return tuple(node.attrs["shape"]), True
        if enc == "csc_matrix":
            raise UserError(f"{self.path}: {self.matrix_key} is CSC (column-major), which cannot be read by cell; "
                            "convert it: adata.X = adata.X.tocsr() (or the obsm matrix), then write again")
        raise UserError(f"{self.path}: {self.matrix_key} has unsupported encoding {enc!r}; store a dense or CSR matrix")

    # ------------------------------------------------------------------ obs
    def obs_column(self, column: str, role: str) -> np.ndarray:
        """obs[column] as str, or an error listing the columns the file has."""
        if column not in self.obs_columns:  # its own listing ([a, b]): asserted by test_state_tx_data
            raise UserError(f"{self.path}: obs has no column {column!r} ({role}); the file has "
                            f"[{', '.join(self.obs_columns)}]; set {role}=<one of these>")
        import h5py
        from anndata.io import read_elem

        with h5py.File(self.path, "r") as f:
            return _decode(read_elem(f["obs"][column]))

    # ----------------------------------------------------------------- rows
    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._handle

    def __getstate__(self) -> dict:  # DataLoader workers / spawn: reopen in the child
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_cache"] = None
        return state

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows (any order, repeats allowed) -> float32 [len(rows), n_features]."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._cache is None and self.n_obs * self.n_features * 4 <= IN_MEMORY_BYTES:
            self._cache = self._read_all()
        if self._cache is not None:
            block = self._cache[rows]
            return dense(block, np.float32)
        uniq, inverse = np.unique(rows, return_inverse=True)
        node = self._file()[self.matrix_key]
        if not self.sparse:
            # runs of consecutive rows as slices: h5py's list indexing is ~3x slower than this
            out = np.empty((len(uniq), self.n_features), dtype=np.float32)
            breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
            for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(uniq)]):
                out[lo:hi] = node[uniq[lo]:uniq[hi - 1] + 1]
            return out[inverse]
        indptr = node["indptr"]
        out = np.zeros((len(uniq), self.n_features), dtype=np.float32)
        starts, ends = indptr[uniq], indptr[uniq + 1]
        data, indices = node["data"], node["indices"]
        for i, (s, e) in enumerate(zip(starts, ends)):
            if e > s:
                out[i, indices[s:e]] = data[s:e]
        return out[inverse]

    def _read_all(self):
        node = self._file()[self.matrix_key]
        if not self.sparse:
            return np.asarray(node[:], dtype=np.float32)
        import scipy.sparse as sp

        return sp.csr_matrix((node["data"][:], node["indices"][:], node["indptr"][:]), shape=(self.n_obs, self.n_features))

    def scan(self) -> float:
        """Fail on NaN/inf or absurd magnitudes anywhere in the matrix (naming the first row and column);
        return its max. Read in chunks, so a file larger than memory is checked too."""
        node = self._file()[self.matrix_key]
        hi = 0.0
        if self.sparse:
            data = node["data"]
            step = SCAN_ROWS * 256
            for s in range(0, data.shape[0], step):
                block = np.asarray(data[s:s + step])
                self._check_block(block, s, node)
                hi = max(hi, float(block.max(initial=0)))
            return hi
        for s in range(0, self.n_obs, SCAN_ROWS):
            block = np.asarray(node[s:s + SCAN_ROWS])
            self._check_block(block, s, None)
            hi = max(hi, float(np.asarray(block, dtype=np.float64).max(initial=0)))
        return hi

    def sample(self) -> np.ndarray:
        """The first rows (about 1M values) as float32: what ftcore.data's rule looks at."""
        n = int(min(self.n_obs, max(1, 1_000_000 // max(self.n_features, 1))))
        return self.read_rows(np.arange(n))

    def _check_block(self, block: np.ndarray, start: int, sparse_node) -> None:
        """ftcore.data.check_values' rule on one chunk (dense rows from `start`, or CSR data from `start`)."""
        from ftcore.data import MAX_ABS

        if block.dtype.kind not in "fiub":
            raise UserError(f"{self.path}: {self.matrix_key} holds {block.dtype} values (text?), not numbers; "
                            "store numbers (e.g. adata.X = adata.X.astype('float32'))")
        values = block.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(values) | (np.abs(values) > MAX_ABS)
        if not bad.any():
            return
        if sparse_node is None:
            r, c = (int(i) for i in np.argwhere(bad)[0])
            r += start
            v = values[r - start, c]
        else:
            k = start + int(np.flatnonzero(bad)[0])
            r = int(np.searchsorted(np.asarray(sparse_node["indptr"][:]), k, side="right") - 1)
            c, v = int(sparse_node["indices"][k]), values[k - start]
        cell = f" ({str(self.obs_names[r])!r})" if self.obs_names is not None else ""
        gene = f" ({str(self.gene_names[c])!r})" if c < len(self.gene_names) else ""
        what = "NaN/inf" if not np.isfinite(v) else f"beyond ±{MAX_ABS:g}"
        raise UserError(f"{self.path}: {self.matrix_key} contains {int(bad.sum())}+ value(s) that are {what}, first "
                        f"at row {r}{cell}, column {c}{gene} = {float(v)!r}; fix or drop those cells before training "
                        "(e.g. recompute the log-normalisation)")


# ----------------------------------------------------------------------------- splits + vocab
@dataclass
class FileMeta:
    """What one file contributes: codes against the global vocabularies, per cell."""

    source: H5Source
    dataset: str
    pert: np.ndarray  # int32 codes into Vocab.perts
    cell_type: np.ndarray  # int32 codes into Vocab.cell_types
    batch: np.ndarray  # int32 codes into Vocab.batches


@dataclass
class Vocab:
    perts: list[str]
    cell_types: list[str]
    batches: list[str]
    control_pert: str

    def index(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        return ({p: i for i, p in enumerate(self.perts)}, {c: i for i, c in enumerate(self.cell_types)},
                {b: i for i, b in enumerate(self.batches)})


@dataclass
class SplitPlan:
    """Cells of one split, grouped: one group = cells sharing (file, cell type, pert[, batch])."""

    groups: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (file id, rows)
    group_pool: list[int] = field(default_factory=list)  # control pool id per group
    pools: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (file id, control rows)
    controls: list[tuple[int, int]] = field(default_factory=list)  # (file id, pool id) of each cell type's controls
    n_cells: int = 0


def read_labels(src: H5Source, kw: DataKwargs, need_batch: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pert = src.obs_column(kw.pert_col, "data.kwargs.pert_col")
    cell_type = src.obs_column(kw.cell_type_key, "data.kwargs.cell_type_key")
    if need_batch or kw.batch_col in src.obs_columns:
        batch = src.obs_column(kw.batch_col, "data.kwargs.batch_col")
    else:
        batch = np.full(src.n_obs, "", dtype=object).astype(str)
    if not (pert == kw.control_pert).any():
        labels, counts = np.unique(pert, return_counts=True)
        top = labels[np.argsort(-counts, kind="stable")][:8]
        raise UserError(f"{src.path}: control label data.kwargs.control_pert={kw.control_pert!r} is not in "
                        f"obs[{kw.pert_col!r}] (most frequent labels: {show_labels(top)}){near_label(kw.control_pert, labels)}; "
                        "set data.kwargs.control_pert to the exact control label")
    return pert, cell_type, batch


def show_label(label) -> str:
    """A label as text, quoted (repr) where whitespace or emptiness would otherwise be invisible."""
    text = str(label)
    return repr(text) if not text or text.strip() != text or not text.isprintable() or "," in text else text


def show_labels(labels) -> str:
    return ", ".join(show_label(x) for x in labels)


def near_label(wanted: str, labels) -> str:
    """'; the file has 'non-targeting ' (differs in spaces/case)' when a label is the wanted one but for that."""
    key = " ".join(str(wanted).split()).lower()
    near = [str(x) for x in labels if " ".join(str(x).split()).lower() == key and str(x) != wanted]
    return f"; the file has {near[0]!r}, which differs only in spaces or case" if near else ""


def encode(labels: np.ndarray, vocab: list[str]) -> np.ndarray:
    """Labels -> int32 codes into vocab (-1 where a label is not in it); vectorised for 1M cells."""
    order = np.argsort(np.asarray(vocab, dtype=str))
    sorted_vocab = np.asarray(vocab, dtype=str)[order]
    pos = np.searchsorted(sorted_vocab, labels).clip(0, max(len(vocab) - 1, 0))
    found = sorted_vocab[pos] == labels if len(vocab) else np.zeros(len(labels), bool)
    return np.where(found, order[pos], -1).astype(np.int32)


def plan_splits(exp: ExperimentConfig, kw: DataKwargs, seed: int, need_batch: bool = False) -> tuple[list[FileMeta], Vocab, dict[str, SplitPlan], dict]:
    """Assign every cell to train/val/test by the TOML rules (priority training < zeroshot < fewshot).

    - [training] name = "train": every cell type of the dataset trains.
    - [zeroshot] "name.celltype" = split: the whole cell type's perturbed cells go to split; its
      control cells stay in training (observational data, as cell-load) and are the basal pool.
    - [fewshot."name.celltype"] val/test = [...]: those perturbations of the cell type go to that
      split, overriding [zeroshot] for them; the rest keep the cell type's split.
    Control cells serve as the basal pool of every split their cell type appears in.
    """
    need_batch = need_batch or kw.basal_mapping_strategy == "batch"
    raw: list[tuple[str, H5Source, np.ndarray, np.ndarray, np.ndarray]] = []
    shape_ref: H5Source | None = None
    for name in exp.used_datasets():
        for path in resolve_dataset_files(name, exp.datasets[name], exp.path):
            src = H5Source(path, kw.output_space, name=f"{name}/{path.stem}")
            if shape_ref is None:
                shape_ref = src
            elif src.n_features != shape_ref.n_features:
                raise UserError(f"{src.path} has {src.n_features} features in {src.matrix_key} but {shape_ref.path} "
                                f"has {shape_ref.n_features}; all files must share one gene space "
                                "(ad.concat(..., join='inner') or the same HVG list)")
            pert, ct, batch = read_labels(src, kw, need_batch)
            raw.append((name, src, pert, ct, batch))

    # global vocabularies, sorted so they do not depend on file order; control first
    perts = sorted({p for r in raw for p in np.unique(r[2])} - {kw.control_pert})
    vocab = Vocab([kw.control_pert] + perts, sorted({c for r in raw for c in np.unique(r[3])}),
                  sorted({b for r in raw for b in np.unique(r[4])}), kw.control_pert)
    p_ix, c_ix, _ = vocab.index()

    # check the TOML's cell types and perturbation names against the files
    for key in list(exp.zeroshot) + list(exp.fewshot):
        dataset, celltype = exp.split_key(key)
        have = sorted({str(c) for r in raw if r[0] == dataset for c in np.unique(r[3])})
        if celltype not in have:
            section = "zeroshot" if key in exp.zeroshot else "fewshot"
            near = [c for c in have if c.strip() == celltype.strip()]
            hint = f"; {near[0]!r} differs only in spaces" if near else ""
            raise UserError(f'{exp.path}: [{section}] "{key}": dataset {dataset!r} has no cell type {celltype!r} in '
                            f"obs[{kw.cell_type_key!r}] (it has: {show_labels(have)}){hint}")
    for key, rule in exp.fewshot.items():
        dataset, celltype = exp.split_key(key)
        have = {str(p) for r in raw if r[0] == dataset for p in np.unique(r[2][r[3] == celltype])}
        for split, names in rule.items():
            absent = [p for p in names if p not in have]
            if absent:
                raise UserError(f'{exp.path}: [fewshot."{key}"] {split} lists {absent[0]!r}, which cell type '
                                f"{celltype!r} does not have in obs[{kw.pert_col!r}] ({len(absent)} such names); "
                                f"names are exact labels, e.g. {show_labels(sorted(have - {kw.control_pert})[:5])}")
            if kw.control_pert in names:
                raise UserError(f'{exp.path}: [fewshot."{key}"] {split} lists the control label {kw.control_pert!r}; '
                                "controls are the basal cells of every split, list perturbations only")

    metas: list[FileMeta] = []
    plans = {s: SplitPlan() for s in SPLITS}
    summary: dict[str, dict] = {}
    rng = np.random.default_rng(seed)
    for fid, (name, src, pert, ct, batch) in enumerate(raw):
        pc, cc, bc = encode(pert, vocab.perts), encode(ct, vocab.cell_types), encode(batch, vocab.batches)
        metas.append(FileMeta(src, name, pc, cc, bc))
        zs, fs = exp.celltype_rules(name)
        in_training = name in exp.training
        file_counts = {s: 0 for s in SPLITS}
        for ct_name in np.unique(ct):
            ct_code = c_ix[ct_name]
            if not (in_training or ct_name in zs or ct_name in fs):
                continue  # a dataset used only for some cell types: the others are not used
            ct_rows = np.flatnonzero(cc == ct_code)
            ctrl_rows = ct_rows[pc[ct_rows] == 0]
            pert_rows = ct_rows[pc[ct_rows] != 0]
            ct_split = zs.get(ct_name, "train")
            split_of = np.full(len(vocab.perts), ct_split, dtype=object)
            for split, names in fs.get(ct_name, {}).items():
                split_of[[p_ix[p] for p in names]] = split
            row_split = split_of[pc[pert_rows]] if len(pert_rows) else np.array([], dtype=object)
            used_splits = [s for s in SPLITS if (row_split == s).any()]
            if used_splits and not len(ctrl_rows):
                raise UserError(f"{src.path}: cell type {ct_name!r} has perturbed cells but no control cells "
                                f"({kw.control_pert!r}); basal cells are drawn from the controls of the same cell "
                                "type: add controls or leave this cell type out of the TOML")
            # control pools: per cell type, or per (cell type, batch) under the batch strategy
            pool_ids: dict[str, dict[int, int]] = {}
            for split in set(used_splits) | ({"train"} if kw.should_yield_control_cells and len(ctrl_rows) else set()):
                plan = plans[split]
                ids = {-1: len(plan.pools)}
                plan.controls.append((fid, len(plan.pools)))
                plan.pools.append((fid, ctrl_rows))
                if need_batch:
                    for b in np.unique(bc[ctrl_rows]):
                        ids[int(b)] = len(plan.pools)
                        plan.pools.append((fid, ctrl_rows[bc[ctrl_rows] == b]))
                pool_ids[split] = ids
            # groups of perturbed cells (and control sentences in training)
            targets = [(pert_rows[row_split == s], s) for s in used_splits]
            if kw.should_yield_control_cells and len(ctrl_rows):
                targets.append((ctrl_rows, "train"))
            for rows, split in targets:
                plan = plans[split]
                keys = pc[rows].astype(np.int64) * (len(vocab.batches) + 1)
                if need_batch:
                    keys = keys + bc[rows]
                order = np.argsort(keys, kind="stable")
                rows, keys = rows[order], keys[order]
                bounds = np.flatnonzero(np.diff(keys)) + 1
                for grp in np.split(rows, bounds):
                    if not len(grp):
                        continue
                    grp = rng.permutation(grp)
                    plan.groups.append((fid, grp))
                    b = int(bc[grp[0]]) if need_batch else -1
                    plan.group_pool.append(pool_ids[split].get(b, pool_ids[split][-1]))
                    plan.n_cells += len(grp)
                    file_counts[split] += len(grp)
        summary[src.name] = {"path": str(src.path), "cells": src.n_obs, **file_counts}
    if not plans["train"].groups:
        raise UserError(f"{exp.path}: no training cells: list a dataset under [training] (name = \"train\") "
                        "or leave some cell types / perturbations in training")
    perturbed = sum(len(rows) for fid, rows in plans["train"].groups if (metas[fid].pert[rows[:1]] != 0).all())
    if not perturbed:
        raise UserError(f"{exp.path}: no perturbed cell is left for training (the TOML holds out every cell type "
                        "or perturbation with [zeroshot] / [fewshot], or the training files hold controls only): it "
                        "would learn from control cells alone; leave some cell types or perturbations in training")
    asked = {v for v in exp.zeroshot.values() if v != "train"} | {s for rule in exp.fewshot.values() for s in rule}
    for split in sorted(asked):
        if not plans[split].groups:
            raise UserError(f"{exp.path}: the TOML asks for a {split} split, but no perturbed cell lands in it (the "
                            f"cell types it names have control cells only, or a [fewshot] list takes them); check "
                            f"the {split} entries against obs[{kw.pert_col!r}]")
    return metas, vocab, plans, summary


# ------------------------------------------------------------------------ perturbation inputs
def load_perturbation_features(path: str, perts: list[str], control_pert: str, trust_pickle: bool = False) -> torch.Tensor:
    """[n_perts, D] vectors from a .pt {name: tensor} file; the control gets zeros if absent."""
    from ftcore.checkpoint import read_checkpoint

    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: expected a dict {{perturbation: vector}} saved with torch.save")
    vectors = {str(k): torch.as_tensor(v).float().flatten() for k, v in obj.items()}
    dims = {v.numel() for v in vectors.values()}
    if len(dims) != 1:
        raise UserError(f"{path}: vectors have different lengths {sorted(dims)[:4]}; all must have one length")
    dim = dims.pop()
    missing = [p for p in perts if p not in vectors and p != control_pert]
    if missing:
        raise UserError(f"{path}: no feature vector for {len(missing)} perturbations (first: {', '.join(missing[:5])}); "
                        "add them to the file or drop those cells")
    out = torch.zeros(len(perts), dim)
    for i, p in enumerate(perts):
        if p in vectors:
            out[i] = vectors[p]
    if not torch.isfinite(out).all():
        raise UserError(f"{path}: feature vectors contain NaN/inf; fix the file")
    return out


def train_shift_table(metas: list[FileMeta], vocab: Vocab, train_plan: SplitPlan) -> torch.Tensor:
    """[n_cell_types + 1, n_perts, G] float32 (data.kwargs.pert_train_shift): entry [c, p] = perturbation p's mean
    shift (its cells' mean minus the same cell type's control mean) averaged over the cell types OTHER than c that
    have p in the TRAINING split; the last row (a cell type training never saw) averages all of them; controls and
    perturbations no other cell type trains on get 0.

    Read from `train_plan` only (its perturbed groups and control pools, as the mean-shift baseline): cells of the
    val/test splits never enter it, so a held-out (cell type, perturbation) pair's entry is exactly what the
    mean-shift baseline carries over, and a training pair's entry leaves its own cells out as well (the model sees
    in training what it is given at test time).
    """
    from state_tx.evaluate import carried_shift
    from state_tx.predict import training_shifts

    shifts = training_shifts(metas, vocab, train_plan, vocab.control_pert)
    n_genes = metas[0].source.n_features
    table = np.zeros((len(vocab.cell_types) + 1, len(vocab.perts), n_genes), np.float32)
    for c, ct in enumerate(list(vocab.cell_types) + [None]):
        for p, pert in enumerate(vocab.perts):
            if pert != vocab.control_pert:
                table[c, p] = carried_shift(shifts, ct, pert, n_genes)[0]
    return torch.from_numpy(table)


def rms_scale(table: torch.Tensor) -> float:
    """Root mean square of a shift table's non-zero entries (1 for an all-zero table)."""
    nz = table[table != 0]
    return float(nz.double().pow(2).mean().sqrt()) if nz.numel() else 1.0


def pert_inputs(pert_table: torch.Tensor, shift_table: torch.Tensor | None, pert_idx: int, cell_type_idx: int) -> torch.Tensor:
    """A perturbation's input vector: its row of pert_table (0 columns under pert_train_shift=only), then (with
    pert_train_shift) its carried training shift."""
    if shift_table is None:
        return pert_table[pert_idx]
    return torch.cat([pert_table[pert_idx], shift_table[cell_type_idx, pert_idx]])


# ------------------------------------------------------------------------------ the data set
class SentenceDataset(Dataset):
    """Cell sentences of one split. Item i is deterministic given (seed, i): its cells are fixed at
    construction and its basal (control) cells are drawn from rng(seed, i), so runs, resumed runs
    and DDP ranks all see the same examples.

    Item: basal [S, G] float32, target [S, G] float32, pert [S, P] float32, batch [S] long,
    pert_idx, cell_type_idx, file_id (long scalars).

    `passes` > 1 lists every sentence that many times, each pass with fresh basal draws (cell-load
    re-draws controls too): STATE's loop is step-based, and a pass over a small data set would
    otherwise end an epoch (validation, checkpoint, plot) every few steps.
    """

    def __init__(self, metas: list[FileMeta], plan: SplitPlan, pert_table: torch.Tensor, cell_set_len: int,
                 seed: int, passes: int = 1, shift_table: torch.Tensor | None = None):
        self.metas, self.plan, self.pert_table, self.S, self.seed = metas, plan, pert_table, cell_set_len, seed
        self.shift_table = shift_table  # data.kwargs.pert_train_shift (train_shift_table)
        self.passes = max(int(passes), 1)
        files, cells, pools = [], [], []
        for (fid, rows), pool in zip(plan.groups, plan.group_pool):
            for start in range(0, len(rows), cell_set_len):
                chunk = rows[start:start + cell_set_len]
                if len(chunk) < cell_set_len:  # as cell-load: top up by sampling the group with replacement
                    extra = np.random.default_rng([seed, len(cells)]).choice(rows, cell_set_len - len(chunk))
                    chunk = np.concatenate([chunk, extra])
                files.append(fid)
                cells.append(chunk)
                pools.append(pool)
        self.file_id = np.asarray(files, dtype=np.int32)
        self.cells = np.stack(cells).astype(np.int64) if cells else np.zeros((0, cell_set_len), np.int64)
        self.pool = np.asarray(pools, dtype=np.int32)

    @property
    def n_sentences(self) -> int:
        return len(self.cells)

    def __len__(self) -> int:
        return len(self.cells) * self.passes

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        draw, i = divmod(int(index), len(self.cells))
        meta = self.metas[self.file_id[i]]
        rows = self.cells[i]
        _, ctrl_rows = self.plan.pools[self.pool[i]]
        rng = np.random.default_rng([self.seed, 7919, i, draw])
        basal_rows = rng.choice(ctrl_rows, self.S, replace=len(ctrl_rows) < self.S)
        pert_idx, ct_idx = int(meta.pert[rows[0]]), int(meta.cell_type[rows[0]])
        return {
            "basal": torch.from_numpy(meta.source.read_rows(basal_rows)),
            "target": torch.from_numpy(meta.source.read_rows(rows)),
            "pert": pert_inputs(self.pert_table, self.shift_table, pert_idx, ct_idx).expand(self.S, -1).clone(),
            "batch": torch.from_numpy(meta.batch[rows].astype(np.int64)),
            "pert_idx": torch.tensor(pert_idx),
            "cell_type_idx": torch.tensor(ct_idx),
            "file_id": torch.tensor(int(self.file_id[i])),
        }
