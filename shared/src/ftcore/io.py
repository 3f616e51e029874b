"""Atomic file writes: a crash never leaves a half-written checkpoint or results file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ftcore.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    Same directory so the rename is atomic on POSIX; on any exception the temp file is removed
    and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask only sets it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Standard JSON: NaN and inf (which `json` would write as the non-standard NaN/Infinity that jq, JavaScript
    and pandas' strict readers reject) become null."""
    atomic_write_text(path, json.dumps(_finite_or_null(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _finite_or_null(obj: Any) -> Any:
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _finite_or_null(obj.item())
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):
        return _finite_or_null(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, **kwargs)


def atomic_write_h5ad(adata, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def check_output_dir(path: str | os.PathLike, need_bytes: int = 0, flag: str | None = None) -> Path:
    """Fail before any work starts if `path` cannot be written or lacks `need_bytes` free space.

    `flag` is the CLI option that set `path` (e.g. "--output"), named in the advice; without
    it the advice is only to choose another directory (library callers do not know the flag).
    """
    path = Path(path)
    choose = f"choose another with {flag}" if flag else "choose another output directory"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_check.") as fh:
            fh.write(b"x")
            fh.flush()
    except OSError as err:
        raise UserError(
            f"output directory {path} is not writable ({err.strerror}); {choose}"
        ) from None
    free = shutil.disk_usage(path).free
    if need_bytes and free < need_bytes:
        raise UserError(
            f"output directory {path} has {free / 2**20:.0f} MiB free but about "
            f"{need_bytes / 2**20:.0f} MiB are needed for checkpoints; free space or {choose}"
        )
    return path


# --- nothing half-written -------------------------------------------------------------------------
# A command claims the paths it will write; if it then fails (a UserError, a NaN loss, a crash), what it
# created under them is removed again by `ftcore.errors.cli_main`, so a failed run leaves no files a later
# command could mistake for results. What existed before the claim is kept (a resumed run's checkpoints).
# (path, what was under it before: None = it did not exist, parents the command's mkdir -p will create for it)
_CLAIMS: list[list[tuple[Path, frozenset | None, tuple[Path, ...]]]] = []
# An existing directory this large (the working directory, a home) is never swept for new entries: the
# cleanup would be slow and could take other processes' files; only paths that did not exist are undone there.
_SWEEP_LIMIT = 20_000


def claim_outputs(*paths: str | os.PathLike | None) -> None:
    """Mark paths (files or directories) this command creates; undone if the command fails.

    Call it after validation and before the first write. Outside a `cli_main` command it does nothing.
    A path that does not exist yet is removed whole on failure, and the parents created for it are removed
    only if they are then empty (a sibling run in the same new folder keeps its files); in an existing
    directory, only the entries added after the claim are removed (what was there is kept).
    """
    if not _CLAIMS:
        return
    for raw in paths:
        if raw is None:
            continue
        path = Path(raw).expanduser().absolute()
        parents, up = [], path.parent
        while not up.exists() and up.parent != up:
            parents.append(up)
            up = up.parent
        if not path.exists():
            _CLAIMS[-1].append((path, None, tuple(parents)))
        elif path.is_dir() and path not in (Path.cwd(), Path.home(), Path(path.anchor)):
            before = []
            for n, entry in enumerate(path.rglob("*")):
                if n > _SWEEP_LIMIT:
                    break
                before.append(entry)
            else:
                _CLAIMS[-1].append((path, frozenset(before), ()))


@contextlib.contextmanager
def output_guard(keep_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Scope of one command: on an exception (other than `keep_on`) remove what its claims created."""
    _CLAIMS.append([])
    try:
        yield
    except keep_on:
        _merge_claims()
        raise
    except BaseException:
        claims = _CLAIMS.pop()
        from ftcore.distributed import is_main_process

        if is_main_process():
            _discard(claims)
        raise
    else:
        _merge_claims()


def _merge_claims() -> None:
    claims = _CLAIMS.pop()
    if _CLAIMS:  # a command run inside another (a demo calling train): the outer one answers for it
        _CLAIMS[-1].extend(claims)


def _discard(claims: list[tuple[Path, frozenset | None, tuple[Path, ...]]]) -> None:
    for path, before, parents in reversed(claims):
        try:
            if before is None:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists() or path.is_symlink():
                    path.unlink()
                for parent in parents:  # deepest first; rmdir leaves any folder another command wrote into
                    try:
                        parent.rmdir()
                    except OSError:
                        break
                continue
            for entry in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if entry in before:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        except OSError:
            pass  # best effort: the error being reported matters more than the cleanup
