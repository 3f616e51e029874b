"""The run directory contract: one effective config per run, resumed only when it is the same run.

    run = open_run_dir(out, {"training": asdict(cfg), "data": file_identity(path)}, ignore=("training.device",),
                       run_files=("*",), overwrite=args.overwrite)   # decides and refuses; writes nothing
    claim_outputs(out)
    run.start()                                                       # rank 0: clears (--overwrite), dumps the YAML
    Trainer(...).fit()                                                # resumes from its last checkpoint, if any

A directory that already holds a run is resumed only when every key that shapes the result is the same
as in its saved config (dotted keys; `ignore` names those that do not: the device, worker counts, progress
bars, checkpoint intervals...). Otherwise the command is refused before anything is written, with ONE line
naming the changed keys (old -> new) and the two ways out: another output directory, or `--overwrite`,
which deletes that run's files (`run_files`, never anything else) and starts fresh there.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from ftcore.errors import UserError

CONFIG_NAME = "run_config.yaml"
HASH_LIMIT = 64 * 2**20  # files up to this size are identified by content (sha256), larger ones by size
SHOWN_CHANGES = 6  # changed keys spelt out old -> new in the refusal; the rest are counted


def plain(obj: Any) -> Any:
    """Dataclasses, Paths, tuples and numpy scalars -> YAML-safe dicts, lists, str and numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [plain(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def to_yaml(config: Mapping) -> str:
    import yaml

    return yaml.safe_dump(plain(config), sort_keys=False, allow_unicode=True)


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"training": {"lr": 1e-3}} -> {"training.lr": 1e-3}; lists are values (a split is one key)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def file_identity(path: str | os.PathLike | None) -> dict | None:
    """What identifies a data file for the resume check: its absolute path, size and (up to HASH_LIMIT) sha256.

    The modification time is left out on purpose: a data set written again with the same content (the demos
    write theirs on every run) is the same data."""
    if path is None or not str(path).strip():
        return None
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        return {"path": str(p)}
    size = p.stat().st_size
    ident: dict[str, Any] = {"path": str(p), "bytes": size}
    if size <= HASH_LIMIT:
        digest = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
        ident["sha256"] = digest.hexdigest()
    return ident


def changed_keys(saved: Mapping, current: Mapping, ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every result-shaping key that differs; `ignore` holds fnmatch patterns."""
    patterns = tuple(ignore)
    old, new = flatten(plain(saved)), flatten(plain(current))
    keys = list(new) + [k for k in old if k not in new]
    missing = object()
    out = []
    for key in keys:
        if any(fnmatch.fnmatchcase(key, p) for p in patterns):
            continue
        a, b = old.get(key, missing), new.get(key, missing)
        if a != b:
            out.append((key, None if a is missing else a, None if b is missing else b))
    return out


def _short(value: Any, limit: int = 48) -> str:
    text = "(unset)" if value is None else repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclasses.dataclass
class RunDir:
    """A run directory after `open_run_dir` decided what this command does with it.

    state: "new" (nothing there yet), "resume" (the same run: the Trainer continues from its checkpoint) or
    "overwrite" (--overwrite over a run of other settings: its files are removed by `start`)."""

    path: Path
    config: dict
    state: str
    config_name: str = CONFIG_NAME
    run_files: tuple[str, ...] = ("*",)
    changes: list = dataclasses.field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.path / self.config_name

    def start(self) -> None:
        """Rank 0: remove the old run's files (--overwrite), then dump the effective config. Call it after
        every check has passed and `claim_outputs` (the first write of the command)."""
        from ftcore.distributed import is_main_process
        from ftcore.io import atomic_write_text

        if not is_main_process():
            return

        if self.state == "overwrite":
            for entry in _run_entries(self.path, self.run_files + (self.config_name,)):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink(missing_ok=True)
            print(f"--overwrite: removed the earlier run in {self.path}; starting fresh")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, to_yaml(self.config))


def _run_entries(path: Path, patterns: Iterable[str]) -> list[Path]:
    """The entries of `path` (top level) that belong to a run: names or globs relative to it."""
    if not path.is_dir():
        return []
    found: dict[Path, None] = {}
    for pattern in patterns:
        for entry in sorted(path.glob(pattern)):
            if entry.name.startswith(".write_check."):
                continue
            found[entry] = None
    return list(found)


def read_saved_config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"{path} is not a readable run config ({type(err).__name__}): edited or cut short? Choose "
                        "another output directory, or pass --overwrite to start fresh there") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a run config (no mapping of keys); choose another output directory, or pass "
                        "--overwrite to start fresh there")
    return data


def open_run_dir(path: str | os.PathLike, config: Mapping, *, config_name: str = CONFIG_NAME,
                 ignore: Iterable[str] = (), run_files: Iterable[str] = ("*",), overwrite: bool = False,
                 output_flag: str = "--output", overwrite_flag: str = "--overwrite",
                 saved: Mapping | None = None, label: str | None = None) -> RunDir:
    """Decide whether `path` starts a new run, resumes the same one, or is refused; writes nothing.

    `config`: the effective config of this command (nested mapping / dataclasses; dumped as YAML by
    `RunDir.start`). `ignore`: fnmatch patterns of dotted keys that do not shape the result. `run_files`:
    globs (relative to `path`) of what a run writes there: their presence without a saved config is a run
    that cannot be compared (refused), and `--overwrite` removes exactly them. `saved`: the earlier
    config when the caller read it from another file (otherwise `path / config_name`). `label`: what the
    refusal names as holding the run (default `path`; e.g. the folder of a config_name with a folder in it)."""
    path = Path(path)
    current = plain(config)
    run_files = tuple(run_files)
    config_path = path / config_name
    ways_out = f"choose another {output_flag} for the new run, or pass {overwrite_flag} to start fresh in {path}"
    if saved is None and config_path.is_file():
        saved = read_saved_config(config_path)
    if saved is None:
        entries = [e for e in _run_entries(path, run_files) if e.name != config_name]
        if not entries:
            return RunDir(path, current, "new", config_name, run_files)
        if overwrite:
            return RunDir(path, current, "overwrite", config_name, run_files)
        raise UserError(f"{label or path} holds a run ({entries[0].name}) without {config_name}, so its settings cannot be "
                        f"compared with this command's (written by an older version?); {ways_out}")
    changes = changed_keys(saved, current, ignore)
    if not changes:
        return RunDir(path, current, "resume", config_name, run_files)
    if overwrite:
        return RunDir(path, current, "overwrite", config_name, run_files, changes)
    names = ", ".join(k for k, _, _ in changes)
    shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in changes[:SHOWN_CHANGES])
    more = f" and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    raise UserError(f"{label or path} holds results of a run with other settings (changed: {names}; {shown}{more}); "
                    f"{ways_out}")
