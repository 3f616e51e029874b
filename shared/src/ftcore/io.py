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
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


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
