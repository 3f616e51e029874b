"""Yeast region tables (CSV / Excel) -> validated samples -> tensors for the GET-yeast model.

One row per (sample, region). A sample is one experiment (one condition) over a set of regions
(gene promoters / a genomic window); every row of a sample repeats that sample's condition.

    sample, region, motif_<name>..., accessibility, <target columns>, medium, temperature,
    [preculture_hours, preculture_od600, drug, drug_concentration_M, drug_hours, carbon_source, nitrogen_source]

Region features = the motif columns (in file order) followed by accessibility (GET's layout: the
accessibility value is the last of the `num_features`). Optional condition columns may be absent
or blank: a blank is "not recorded", which the model encodes with its own learned embedding.
`drug` = "none" means no drug (then concentration and time must be blank or 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ftcore.data import check_values, expression_kind
from ftcore.errors import UserError
from ftcore.options import bounds
from get_yeast.model import NUMERIC_FEATURES, ConditionConfig

# Keys added after the file format was fixed (config.require_all_keys lets a file leave them out).
OPTIONAL = {"optional": True}

REQUIRED_CONDITIONS = ("medium", "temperature")
OPTIONAL_CONDITIONS = ("preculture_hours", "preculture_od600", "drug", "drug_concentration_M", "drug_hours",
                       "carbon_source", "nitrogen_source")
NO_DRUG, UNKNOWN_DRUG = "none", "<unknown>"  # drug vocabulary indices 0 and 1


@dataclass
class DataConfig:
    """The `data` section of yeast_training.yaml: column names and the held-out split."""

    sample_column: str = "sample"
    region_column: str = "region"
    motif_prefix: str = "motif_"
    accessibility_column: str = "accessibility"
    target_columns: list[str] = field(default_factory=lambda: ["expression"])
    excel_sheet: str | None = None  # None: the first sheet
    split_by: str = "condition"  # condition: held-out conditions (all their samples); sample: random samples
    val_fraction: float = field(default=0.15, metadata=bounds(ge=0, lt=1))
    test_fraction: float = field(default=0.2, metadata=bounds(ge=0, lt=1))
    # Held out by name instead of by fraction: sample names for val / test (null = by the fractions above).
    # With either list given, both sets are exactly the lists and every other sample trains.
    val_samples: list[str] | None = field(default=None, metadata=OPTIONAL)
    test_samples: list[str] | None = field(default=None, metadata=OPTIONAL)

    def __post_init__(self) -> None:
        if self.split_by not in ("condition", "sample"):
            raise UserError(f"unknown data.split_by {self.split_by!r}; choose condition or sample")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise UserError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to < 1")


@dataclass
class Sample:
    name: str
    regions: list[str]
    region_motif: np.ndarray  # [R, M] float32
    exp_label: np.ndarray  # [R, T] float32
    condition: dict  # raw, validated values (None = not recorded)

    @property
    def condition_key(self) -> str:
        c = self.condition
        return "|".join(f"{k}={c[k]}" for k in REQUIRED_CONDITIONS + OPTIONAL_CONDITIONS)


@dataclass
class YeastTable:
    samples: list[Sample]
    feature_names: list[str]  # motif columns + accessibility
    target_columns: list[str]
    source: str

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    def subset(self, names) -> "YeastTable":
        keep = set(names)
        return YeastTable([s for s in self.samples if s.name in keep], self.feature_names, self.target_columns, self.source)


# --------------------------------------------------------------------------- reading + validation
def read_table(path: str | os.PathLike, cfg: DataConfig, cond_cfg: ConditionConfig, known_from: str | None = None) -> YeastTable:
    """CSV/TSV/Excel file -> validated YeastTable; every problem is a one-line UserError."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist; pass a CSV or Excel file with --data")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
        elif suffix in (".xlsx", ".xlsm", ".xls"):
            df = pd.read_excel(path, sheet_name=cfg.excel_sheet or 0)
        else:
            raise UserError(f"{path}: unsupported data format {suffix!r}; use .csv, .tsv or .xlsx")
    except UserError:
        raise
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; it needs a header row and one row per (sample, region)") from None
    except Exception as err:  # noqa: BLE001 - parser errors of pandas/openpyxl become one line
        raise UserError(f"{path}: could not be parsed as {suffix.lstrip('.')} ({type(err).__name__}: {str(err).splitlines()[0][:150]})") from None
    return validate_frame(df, cfg, cond_cfg, str(path), header=_header(path, suffix, cfg), known_from=known_from)


def _header(path: Path, suffix: str, cfg: DataConfig) -> list[str] | None:
    """The header row as written (pandas renames a repeated column 'x' to 'x.1', which would pass as a
    motif column of its own)."""
    import pandas as pd

    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            raw = pd.read_excel(path, sheet_name=cfg.excel_sheet or 0, header=None, nrows=1)
        else:
            raw = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", header=None, nrows=1, dtype=str,
                              keep_default_na=False)
    except Exception:  # noqa: BLE001 - the full read already succeeded; this only sharpens a message
        return None
    return [str(c) for c in raw.iloc[0].tolist()] if len(raw) else None


def validate_frame(df, cfg: DataConfig, cond_cfg: ConditionConfig, source: str = "data", *,
                   header: list[str] | None = None, known_from: str | None = None) -> YeastTable:
    """`known_from`: whose vocabularies the condition columns are checked against, named in the advice
    (None: the model config being trained; e.g. "the trained model" at evaluate time)."""
    import pandas as pd

    if len(df) == 0:
        raise UserError(f"{source}: no data rows; it needs one row per (sample, region)")
    names = [str(c).strip() for c in (header if header is not None and len(header) == len(df.columns) else df.columns)]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if name in seen:
            raise UserError(f"{source}: column {name!r} appears twice (columns {seen[name] + 1} and {j + 1}); "
                            "each column once (a motif written twice would count as two region features)")
        seen[name] = j
    df.columns = names
    have = list(df.columns)
    motif_cols = [c for c in have if c.startswith(cfg.motif_prefix)]
    required = [cfg.sample_column, cfg.region_column, cfg.accessibility_column, *cfg.target_columns, *REQUIRED_CONDITIONS]
    for col in required:
        if col not in df.columns:
            shown = ", ".join(c for c in have if not c.startswith(cfg.motif_prefix))
            raise UserError(f"{source}: missing column {col!r}; columns present (besides motifs): {shown}")
    if not motif_cols:
        raise UserError(f"{source}: no motif columns (names starting with {cfg.motif_prefix!r}); set data.motif_prefix")
    numeric_cols = motif_cols + [cfg.accessibility_column] + list(cfg.target_columns)
    values = np.empty((len(df), len(numeric_cols)), dtype=np.float64)
    for j, col in enumerate(numeric_cols):
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            raw = df[col].iloc[i]
            what = "NaN/blank" if pd.isna(raw) or (isinstance(raw, float) and math.isnan(raw)) else repr(raw)
            raise UserError(f"{source}: column {col!r} has {int(bad.sum())} non-finite/non-numeric values "
                            f"(first at data row {i + 1}: {what}); fill or drop those rows")
        values[:, j] = v
    n_motif = len(motif_cols)
    row_names = [f"{s}/{r}" for s, r in zip(df[cfg.sample_column].astype(str), df[cfg.region_column].astype(str))]
    check_values(values, source, row_names=row_names, col_names=numeric_cols)  # absurd magnitudes (1e38)
    _check_targets(values[:, n_motif + 1:], list(cfg.target_columns), source)
    if df[cfg.sample_column].isna().any() or df[cfg.region_column].isna().any():
        col = cfg.sample_column if df[cfg.sample_column].isna().any() else cfg.region_column
        i = int(np.argmax(df[col].isna().to_numpy()))
        raise UserError(f"{source}: column {col!r} is blank at data row {i + 1}; every row needs a sample and a region name")
    conds = _validate_conditions(df, cond_cfg, source, known_from)
    if df.duplicated([cfg.sample_column, cfg.region_column]).any():
        i = int(np.argmax(df.duplicated([cfg.sample_column, cfg.region_column]).to_numpy()))
        raise UserError(f"{source}: region {df[cfg.region_column].iloc[i]!r} appears twice in sample "
                        f"{df[cfg.sample_column].iloc[i]!r} (data row {i + 1}); each (sample, region) once")
    samples = []
    sample_ids = df[cfg.sample_column].astype(str).to_numpy()
    regions = df[cfg.region_column].astype(str).to_numpy()
    for name, idx in _groups(sample_ids):
        if len(idx) < 2:  # GET reads a region in the context of the others; one alone also gives NaN metrics
            raise UserError(f"{source}: sample {name!r} has a single region (data row {idx[0] + 1}); GET predicts each "
                            "region in the context of the sample's other regions: give every sample at least 2 "
                            "(e.g. a genomic window of promoters), or drop it")
        first = conds[idx[0]]
        for i in idx[1:]:
            if conds[i] != first:
                diff = next(k for k in first if first[k] != conds[i][k])
                raise UserError(f"{source}: sample {name!r} has two values of {diff!r} "
                                f"({first[diff]!r} and {conds[i][diff]!r}, data row {i + 1}); one condition per sample")
        samples.append(Sample(name, list(regions[idx]), values[idx, : n_motif + 1].astype(np.float32),
                              values[idx, n_motif + 1:].astype(np.float32), first))
    return YeastTable(samples, motif_cols + [cfg.accessibility_column], list(cfg.target_columns), source)


def _check_targets(y: np.ndarray, columns: list[str], source: str) -> None:
    """Expression targets are log values (GET predicts log expression through a softplus head), by the
    core's one rule (ftcore.data.expression_kind): negative (scaled) and unlogged (TPM-like) values are
    refused, whole-number counts warned about."""
    for j, col in enumerate(columns):
        kind = expression_kind(y[:, j])
        if kind == "scaled":
            i = int(np.argmax(y[:, j] < 0))
            raise UserError(f"{source}: target column {col!r} holds negative values (first at data row {i + 1}: "
                            f"{y[i, j]:g}); GET predicts log expression >= 0: give log(TPM + 1) (or log1p counts), "
                            "not centred or z-scored values")
        if kind == "unlogged":
            raise UserError(f"{source}: target column {col!r} reaches {y[:, j].max():g}: not log-transformed "
                            "(TPM/FPKM?); give log(TPM + 1), e.g. numpy.log1p of the column")
        if kind == "counts":
            print(f"warning: {source}: target column {col!r} holds only whole numbers (raw counts?); GET predicts "
                  "log expression: give log(TPM + 1) unless these are already log values")


def _groups(keys: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Row indices per key, in order of first appearance."""
    order: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        order.setdefault(k, []).append(i)
    return [(k, np.asarray(v)) for k, v in order.items()]


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip() in ("", "NA", "nan"))


def _number(v, col: str, row: int, source: str) -> float | None:
    if _blank(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{source}: {col!r} at data row {row + 1} is {v!r}, not a number") from None
    if not math.isfinite(x):
        raise UserError(f"{source}: {col!r} at data row {row + 1} is {v!r}; leave it blank if not recorded")
    if abs(x) > 1e9:  # float32 encodings of such values overflow; no condition is measured in those units
        raise UserError(f"{source}: {col!r} at data row {row + 1} is {v!r}, beyond ±1e9; check the unit")
    return x


def _category(v, col: str, row: int, known: list[str], source: str, section: str,
              known_from: str | None = None) -> str | None:
    if _blank(v):
        return None
    lookup = {k.lower(): k for k in known}
    name = str(v).strip()
    if name.lower() not in lookup:
        if known_from:
            raise UserError(f"{source}: unknown {col} {name!r} at data row {row + 1}: {known_from} was built for "
                            f"{', '.join(known)} only (its condition.{section}) and cannot predict for another; "
                            f"use one of those, or retrain with {name!r} in condition.{section}")
        raise UserError(f"{source}: unknown {col} {name!r} at data row {row + 1}; known: {', '.join(known)} "
                        f"(add it to condition.{section} in yeast_model.yaml)")
    return lookup[name.lower()]


def _validate_conditions(df, cc: ConditionConfig, source: str, known_from: str | None = None) -> list[dict]:
    lo, hi = cc.temperature_range
    cols = {c: (df[c].tolist() if c in df.columns else [None] * len(df)) for c in REQUIRED_CONDITIONS + OPTIONAL_CONDITIONS}
    out = []
    for i in range(len(df)):
        medium = _category(cols["medium"][i], "medium", i, cc.media, source, "media", known_from)
        if medium is None:
            raise UserError(f"{source}: 'medium' is blank at data row {i + 1}; write 'unknown' if it was not recorded")
        t = _number(cols["temperature"][i], "temperature", i, source)
        if t is None:
            raise UserError(f"{source}: 'temperature' is blank/NaN at data row {i + 1}; it is required (degrees C)")
        if not lo <= t <= hi:
            raise UserError(f"{source}: temperature {t:g} C at data row {i + 1} is outside {lo:g}-{hi:g} C "
                            "(condition.temperature_range); check the unit (degrees C)")
        pre_h = _number(cols["preculture_hours"][i], "preculture_hours", i, source)
        od = _number(cols["preculture_od600"][i], "preculture_od600", i, source)
        if pre_h is not None and pre_h < 0:
            raise UserError(f"{source}: preculture_hours {pre_h:g} at data row {i + 1} is negative")
        if od is not None and not 0 < od <= cc.max_od600:
            raise UserError(f"{source}: preculture_od600 {od:g} at data row {i + 1} is outside (0, {cc.max_od600:g}] "
                            "(condition.max_od600)")
        drug_raw = cols["drug"][i]
        drug = None if _blank(drug_raw) else str(drug_raw).strip()
        conc = _number(cols["drug_concentration_M"][i], "drug_concentration_M", i, source)
        drug_h = _number(cols["drug_hours"][i], "drug_hours", i, source)
        if drug is not None and drug.lower() == NO_DRUG:
            drug = NO_DRUG
            if (conc or 0) != 0 or (drug_h or 0) != 0:
                raise UserError(f"{source}: drug is 'none' at data row {i + 1} but a concentration/time is given; "
                                "name the drug or clear those cells")
            conc = drug_h = None
        elif conc is not None and conc <= 0:
            raise UserError(f"{source}: drug_concentration_M {conc:g} at data row {i + 1} must be > 0 (molar); "
                            "use drug 'none' for untreated samples")
        if drug_h is not None and drug_h < 0:
            raise UserError(f"{source}: drug_hours {drug_h:g} at data row {i + 1} is negative")
        out.append({
            "medium": medium, "temperature": t, "preculture_hours": pre_h, "preculture_od600": od,
            "drug": drug, "drug_concentration_M": conc, "drug_hours": drug_h,
            "carbon_source": _category(cols["carbon_source"][i], "carbon_source", i, cc.carbon_sources, source, "carbon_sources", known_from),
            "nitrogen_source": _category(cols["nitrogen_source"][i], "nitrogen_source", i, cc.nitrogen_sources, source, "nitrogen_sources", known_from),
        })
    return out


# --------------------------------------------------------------------------- splits + encoding
def split_samples(table: YeastTable, cfg: DataConfig, seed: int) -> dict[str, list[str]]:
    """Deterministic train/val/test sample names. split_by=condition holds out whole conditions, so
    the test set measures prediction for conditions never seen in training."""
    if cfg.val_samples is not None or cfg.test_samples is not None:
        return _named_split(table, cfg)
    rng = np.random.default_rng(seed)
    if cfg.split_by == "condition":
        groups: dict[str, list[str]] = {}
        for s in table.samples:
            groups.setdefault(s.condition_key, []).append(s.name)
        units = [groups[k] for k in sorted(groups)]
    else:
        units = [[s.name] for s in sorted(table.samples, key=lambda s: s.name)]
    order = rng.permutation(len(units))
    n_test = int(round(cfg.test_fraction * len(units)))
    n_val = int(round(cfg.val_fraction * len(units)))
    if len(units) - n_test - n_val < 1:
        raise UserError(f"{table.source}: only {len(units)} {cfg.split_by}s, too few for a train/val/test split; "
                        "add data or lower data.val_fraction / data.test_fraction")
    for key, fraction, n in (("val_fraction", cfg.val_fraction, n_val), ("test_fraction", cfg.test_fraction, n_test)):
        if fraction > 0 and n == 0:  # asked for, but nothing would be held out
            raise UserError(f"{table.source}: data.{key} {fraction:g} of {len(units)} {cfg.split_by}s rounds to none "
                            f"held out; raise it to at least {1 / len(units):.2g}, set it to 0 on purpose, or name the "
                            f"samples with data.{key.split('_')[0]}_samples")
    pick = lambda ids: sorted(n for j in ids for n in units[j])  # noqa: E731
    return {"test": pick(order[:n_test]), "val": pick(order[n_test:n_test + n_val]), "train": pick(order[n_test + n_val:])}


def _named_split(table: YeastTable, cfg: DataConfig) -> dict[str, list[str]]:
    """data.val_samples / data.test_samples: exactly those samples held out, each name checked."""
    import difflib

    names = [s.name for s in table.samples]
    known = set(names)
    lists = {"val": list(cfg.val_samples or []), "test": list(cfg.test_samples or [])}
    for key, wanted in lists.items():
        seen = set()
        for name in wanted:
            if name not in known:
                lower = {n.lower(): n for n in names}  # sample names typed in another case are the usual slip
                close = difflib.get_close_matches(str(name).lower(), list(lower), n=1)
                hint = (f"; did you mean {lower[close[0]]!r}?" if close
                        else f" (it has {len(names)}: {', '.join(names[:3])}, ...)")
                raise UserError(f"{table.source}: data.{key}_samples names {name!r}, which is no sample in the table{hint}")
            if name in seen:
                raise UserError(f"data.{key}_samples lists {name!r} twice; list each sample once")
            seen.add(name)
    both = sorted(set(lists["val"]) & set(lists["test"]))
    if both:
        raise UserError(f"data.val_samples and data.test_samples share {len(both)} sample(s) (e.g. {both[0]!r}); "
                        "a sample is validation or test, not both")
    held = set(lists["val"]) | set(lists["test"])
    if not held:
        raise UserError("data.val_samples and data.test_samples are both empty; name held-out samples or set both "
                        "to null to split by data.val_fraction / data.test_fraction")
    train = sorted(n for n in names if n not in held)
    if not train:
        raise UserError(f"{table.source}: data.val_samples + data.test_samples hold out all {len(names)} samples; "
                        "nothing is left to train on")
    return {"test": sorted(lists["test"]), "val": sorted(lists["val"]), "train": train}


def drug_vocabulary(table: YeastTable) -> list[str]:
    """["none", "<unknown>", drugs seen in `table`...]; unseen drugs later map to "<unknown>"."""
    seen = sorted({s.condition["drug"] for s in table.samples} - {None, NO_DRUG, UNKNOWN_DRUG})
    return [NO_DRUG, UNKNOWN_DRUG, *seen]


def encode_conditions(conds: list[dict], cc: ConditionConfig, drug_vocab: list[str]) -> dict[str, torch.Tensor]:
    """Raw conditions of B samples -> the ConditionEncoder's input tensors (see model.ConditionEncoder)."""
    drug_index = {d: i for i, d in enumerate(drug_vocab)}
    lo, hi = cc.temperature_range
    numeric, present = [], []
    med, drug, carbon, nitrogen = [], [], [], []
    for c in conds:
        conc = c["drug_concentration_M"]
        raw = {
            "temperature": (c["temperature"] - lo) / (hi - lo),
            "preculture_hours": None if c["preculture_hours"] is None else c["preculture_hours"] / cc.preculture_hours_scale,
            "preculture_od600": None if c["preculture_od600"] is None else c["preculture_od600"] / cc.max_od600,
            "drug_log10_molar": None if conc is None else (math.log10(conc) - cc.log10_molar_center) / cc.log10_molar_scale,
            "drug_hours": None if c["drug_hours"] is None else c["drug_hours"] / cc.drug_hours_scale,
        }
        numeric.append([0.0 if raw[k] is None else raw[k] for k in NUMERIC_FEATURES])
        present.append([raw[k] is not None for k in NUMERIC_FEATURES])
        med.append(cc.media.index(c["medium"]))
        d = c["drug"]
        drug.append(drug_index.get(d, drug_index[UNKNOWN_DRUG]) if d is not None else drug_index[UNKNOWN_DRUG])
        carbon.append(0 if c["carbon_source"] is None else 1 + cc.carbon_sources.index(c["carbon_source"]))
        nitrogen.append(0 if c["nitrogen_source"] is None else 1 + cc.nitrogen_sources.index(c["nitrogen_source"]))
    return {
        "medium": torch.tensor(med, dtype=torch.long),
        "drug": torch.tensor(drug, dtype=torch.long),
        "carbon": torch.tensor(carbon, dtype=torch.long),
        "nitrogen": torch.tensor(nitrogen, dtype=torch.long),
        "numeric": torch.tensor(numeric, dtype=torch.float32),
        "numeric_present": torch.tensor(present, dtype=torch.bool),
    }


class YeastDataset(Dataset):
    """Samples as tensors: region_motif [R, M], exp_label [R, T], conditions (one sample's entries)."""

    def __init__(self, table: YeastTable, cc: ConditionConfig, drug_vocab: list[str]):
        self.table = table
        self.conditions = encode_conditions([s.condition for s in table.samples], cc, drug_vocab)
        self.motif = [torch.from_numpy(s.region_motif) for s in table.samples]
        self.label = [torch.from_numpy(s.exp_label) for s in table.samples]

    def __len__(self) -> int:
        return len(self.motif)

    def __getitem__(self, i: int) -> dict:
        return {"region_motif": self.motif[i], "exp_label": self.label[i],
                "conditions": {k: v[i] for k, v in self.conditions.items()}}


def collate(items: list[dict]) -> dict:
    """Pad samples to the longest region count: region_motif [B, R, M], exp_label [B, R, T],
    padding [B, R] bool (True = no region there), conditions {name: [B, ...]}."""
    R = max(it["region_motif"].shape[0] for it in items)
    B, M, T = len(items), items[0]["region_motif"].shape[1], items[0]["exp_label"].shape[1]
    motif = torch.zeros(B, R, M)
    label = torch.zeros(B, R, T)
    padding = torch.ones(B, R, dtype=torch.bool)
    for b, it in enumerate(items):
        r = it["region_motif"].shape[0]
        motif[b, :r], label[b, :r], padding[b, :r] = it["region_motif"], it["exp_label"], False
    conditions = {k: torch.stack([it["conditions"][k] for it in items]) for k in items[0]["conditions"]}
    return {"region_motif": motif, "exp_label": label, "padding": padding, "conditions": conditions}
