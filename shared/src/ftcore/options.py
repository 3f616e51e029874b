"""Typed options: every number, seed, device and path a user types is checked where it is parsed.

    from ftcore import options as opt
    g.add_argument("--lr", type=opt.number("--lr", float, gt=0))
    g.add_argument("--seed", type=opt.seed("--seed"))
    g.add_argument("--device", type=opt.device("--device"))
    p.add_argument("--output", type=opt.output_file("--output", suffixes=(".h5ad",)))

A bad value is a `UserError` naming the flag, the value and what is allowed, raised while argparse
parses, so the CLI prints one `error:` line and exits 2 before anything is created on disk (argparse's
own type errors print the usage block first and are caught only for ValueError/TypeError).
Config-file values get the same rules from `check_number` (used by `ftcore.config`) and from
dataclass field metadata: `field(default=1e-3, metadata=opt.bounds(gt=0))`.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ftcore.errors import UserError

SEED_LIMIT = 2**32  # numpy's SeedSequence and most samplers take 0 <= seed < 2**32


def bounds(*, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> dict:
    """Dataclass field metadata read by `ftcore.config.from_dict`: `field(metadata=bounds(ge=0))`."""
    return {"ftcore_bounds": {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)) if v is not None}}


def _allowed(gt, ge, lt, le) -> str:
    low = f"> {gt:g}" if gt is not None else f">= {ge:g}" if ge is not None else ""
    high = f"< {lt:g}" if lt is not None else f"<= {le:g}" if le is not None else ""
    return " and ".join(p for p in (low, high) if p) or "finite"


def check_number(name: str, value: Any, kind: type = float, *, gt=None, ge=None, lt=None, le=None,
                 source: str | None = None) -> int | float:
    """`value` as a finite `kind` (int or float) within the bounds, else one line naming `name`.

    Accepts numbers and their text ("1e-4", "100", "1e3" for an int). NaN and inf are refused
    everywhere: they pass every `<`/`>` check and only fail much later, deep in a library.
    """
    where = f"{source}: " if source else ""
    # text is shown as typed; quoted only where whitespace or emptiness would otherwise be invisible
    shown = repr(value) if isinstance(value, str) and (not value or value.strip() != value or not value.isprintable()) else value
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise UserError(f"{where}{name} should be a number, got {value!r}")
    try:
        num = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        raise UserError(f"{where}{name} should be a number, got {shown}") from None
    if not math.isfinite(num):
        raise UserError(f"{where}{name} is {shown}; give a finite number ({_allowed(gt, ge, lt, le)})")
    if kind is int:
        if isinstance(value, int):
            num = value
        elif num != int(num):
            raise UserError(f"{where}{name} should be a whole number, got {shown}")
        else:
            num = int(num)
    for bound, ok in ((gt, lambda b: num > b), (ge, lambda b: num >= b), (lt, lambda b: num < b),
                      (le, lambda b: num <= b)):
        if bound is not None and not ok(bound):
            raise UserError(f"{where}{name} is {shown}; it must be {_allowed(gt, ge, lt, le)}")
    return num


def number(flag: str, kind: type = float, *, gt=None, ge=None, lt=None, le=None) -> Callable[[str], int | float]:
    """An argparse `type=` for a finite number in range: `number("--lr", float, gt=0)`."""

    def parse(text: str) -> int | float:
        return check_number(flag, text, kind, gt=gt, ge=ge, lt=lt, le=le)

    parse.__name__ = "int" if kind is int else "float"  # argparse's own messages name the type
    return parse


def positive_int(flag: str) -> Callable[[str], int]:
    return number(flag, int, ge=1)


def nonnegative_int(flag: str) -> Callable[[str], int]:
    return number(flag, int, ge=0)


def fraction(flag: str, *, open_low: bool = True, open_high: bool = True) -> Callable[[str], float]:
    """A share strictly between 0 and 1 (or including an end when it is not open)."""
    return number(flag, float, **({"gt": 0} if open_low else {"ge": 0}), **({"lt": 1} if open_high else {"le": 1}))


def check_seed(name: str, value: Any, source: str | None = None) -> int:
    return check_number(name, value, int, ge=0, lt=SEED_LIMIT, source=source)


def seed(flag: str = "--seed") -> Callable[[str], int]:
    """A seed numpy and torch both take: a whole number 0 <= seed < 2**32."""

    def parse(text: str) -> int:
        return check_seed(flag, text)

    parse.__name__ = "int"
    return parse


def device(flag: str = "--device") -> Callable[[str], str]:
    """auto, cpu, cuda, cuda:N or mps, checked now (with the choices and a did-you-mean), kept as text."""

    def parse(text: str) -> str:
        from ftcore.training import resolve_device

        try:
            resolve_device(text)
        except UserError as err:
            raise UserError(f"{flag}: {err}") from None
        return text.strip()

    return parse


def _path(text: str) -> Path:
    return Path(os.path.expandvars(text.strip())).expanduser() if text.strip() else Path("")


def check_output_file(flag: str, path: str | os.PathLike, suffixes: Iterable[str] = ()) -> Path:
    """A file this command will write: not an existing directory, the right suffix, in a writable place.

    Checked without creating anything: the nearest existing parent must be a writable directory.
    """
    path = _path(str(path))
    suffixes = tuple(suffixes)
    if not str(path) or str(path) == ".":
        raise UserError(f"{flag} is empty; give a file name{' ending in ' + suffixes[0] if suffixes else ''}")
    if path.is_dir():
        name = f"{path.name or 'output'}{suffixes[0] if suffixes else ''}"
        raise UserError(f"{flag} {path} is a directory; give a file path, e.g. {path / name}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path} should end in {' or '.join(suffixes)}; e.g. {path.with_suffix(suffixes[0])}")
    _check_writable_parent(flag, path.parent)
    return path


def check_output_dir(flag: str, path: str | os.PathLike) -> Path:
    """A directory this command will create or fill: not an existing file, in a writable place."""
    if not str(path).strip():  # checked on the text: Path("") is "." (the working directory)
        raise UserError(f"{flag} is empty; give a directory")
    path = _path(str(path))
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a directory; give a directory (e.g. {path.with_suffix('')}_run)")
    _check_writable_parent(flag, path if path.exists() else path.parent)
    return path


def _check_writable_parent(flag: str, parent: Path) -> None:
    here = parent if str(parent) else Path(".")
    while not here.exists():  # the nearest existing ancestor decides whether mkdir -p can work
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        raise UserError(f"{flag}: {here} is a file, so nothing can be created inside it; choose another path")
    if not os.access(here, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: {here} is not writable (read-only or owned by another user); choose another path")


def output_file(flag: str, suffixes: Iterable[str] = ()) -> Callable[[str], Path]:
    """An argparse `type=` for a file to write (see `check_output_file`)."""
    suffixes = tuple(s.lower() for s in suffixes)

    def parse(text: str) -> Path:
        return check_output_file(flag, text, suffixes)

    return parse


def output_dir(flag: str) -> Callable[[str], Path]:
    """An argparse `type=` for a directory to create or fill (see `check_output_dir`)."""

    def parse(text: str) -> Path:
        return check_output_dir(flag, text)

    return parse


def check_input_file(flag: str, path: str | os.PathLike, what: str = "file") -> Path:
    """A file this command reads: exists, is a file, not empty; `~` and $VARS expanded."""
    if not str(path).strip():  # checked on the text: Path("") is "." (the working directory)
        raise UserError(f"{flag} is empty; give the path of the {what}")
    path = _path(str(path))
    if not path.exists():
        near = _near_names(path)
        raise UserError(f"{flag} {path} does not exist{near}")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give the {what} inside it")
    if path.stat().st_size == 0:
        raise UserError(f"{flag} {path} is empty (0 bytes); was it copied or downloaded completely?")
    return path


def input_file(flag: str, what: str = "file") -> Callable[[str], Path]:
    def parse(text: str) -> Path:
        return check_input_file(flag, text, what)

    return parse


def _near_names(path: Path) -> str:
    import difflib

    try:
        names = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, names, n=1)
    return f"; did you mean {path.parent / close[0]}?" if close else ""
