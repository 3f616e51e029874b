"""Inert stand-ins for the Python objects real training checkpoints pickle beside their tensors.

Real files carry more than tensors: GET's MAE-era `checkpoint-799.pth` pickles its argparse
`Namespace` and numpy.float64 learning rates, Lightning `.ckpt` files written from Hydra configs
pickle omegaconf `DictConfig`s. torch's `weights_only` reader refuses all of them, so users are
pushed to a full unpickle that could run code. Here each such global is answered by a stand-in of
our own, under the pickled name, inside torch's restricted unpickler: the class is never imported,
nothing of it runs, and anything not in `STAND_INS` is still refused.

    read_checkpoint("checkpoint-799.pth")["args"]          -> InertNamespace(lr=..., ...)
    plain(read_checkpoint("last.ckpt")["hyper_parameters"]) -> {"model": {...}, ...}

What each stand-in may do is what it must: store the state pickle gives it. The numpy scalar
decodes its raw bytes with `struct`; omegaconf containers keep their `_content`.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any


def _attributes(state: Any) -> dict:
    """A BUILD state as attributes: string keys only, never dunders (no `__setstate__` smuggled in)."""
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if isinstance(k, str) and not k.startswith("__")}


class InertNamespace:
    """argparse.Namespace, read back: attributes only."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(_attributes(kwargs))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_attributes(state))

    def __repr__(self) -> str:
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


class InertDtype:
    """numpy.dtype, read back: the type code ('f8', 'i4', ...) and the byte order."""

    def __init__(self, code: str = "f8", align: bool = False, copy: bool = True) -> None:  # noqa: ARG002
        self.code = str(code)
        self.byteorder = "<"

    def __setstate__(self, state: tuple) -> None:
        # (version, byteorder, subdescr, names, fields, elsize, alignment, flags)
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = "<" if state[1] in ("=", "|") else state[1]

    def __repr__(self) -> str:
        return f"dtype({self.code!r})"


# numpy type code -> struct format (numpy's scalar pickle holds the value's raw bytes)
_STRUCT = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
           "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def numpy_scalar(dtype: InertDtype, data: bytes | None = None) -> Any:
    """numpy.core.multiarray.scalar(dtype, raw bytes) -> the plain Python value.

    Numbers, booleans, complex numbers, str_ (UTF-32) and bytes_ decode; any other kind
    (datetime, object, structured) is refused like an unknown global (`--trust-checkpoint` reads it).
    """
    if not isinstance(dtype, InertDtype) or not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy scalar without a dtype and raw bytes")
    raw, code = bytes(data), dtype.code.lstrip("<>=|")
    kind = code[:1]
    if kind == "U":  # numpy.str_: UTF-32 code units, NUL-padded
        return raw.decode("utf-32-le" if dtype.byteorder == "<" else "utf-32-be").rstrip("\x00")
    if kind == "S":  # numpy.bytes_
        return raw.rstrip(b"\x00")
    code = {"f": "f4", "d": "f8", "i": "i4", "l": "i8", "q": "i8", "?": "b1", "bool": "b1"}.get(code, code)
    if code in ("c8", "c16"):
        half = len(raw) // 2
        return complex(numpy_scalar(InertDtype(f"f{half}"), raw[:half]), numpy_scalar(InertDtype(f"f{half}"), raw[half:]))
    fmt = _STRUCT.get(code)
    if fmt is None or struct.calcsize(fmt) != len(raw):
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL numpy scalar of dtype {dtype.code!r}")
    return struct.unpack(dtype.byteorder + fmt, raw)[0]


def plain_defaultdict(factory: Any = None) -> dict:  # noqa: ARG001 - the factory is never called
    """collections.defaultdict(factory) -> a plain dict (omegaconf's resolver cache is one)."""
    return {}


class TypeRef:
    """A pickled reference to a type (typing.Any, builtins.dict as omegaconf's ref_type): a name, nothing callable."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TypeRef) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class InertConfig:
    """omegaconf's DictConfig / ListConfig / ...Node / Metadata, read back: the pickled state as attributes."""

    kind = "omegaconf"

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(_attributes(state))

    def __repr__(self) -> str:
        return f"{self.kind}({plain(self)!r})"


def _config_class(kind: str) -> type:
    return type(kind, (InertConfig,), {"kind": kind, "__module__": __name__})


_OMEGACONF = {
    "omegaconf.dictconfig.DictConfig": "DictConfig",
    "omegaconf.listconfig.ListConfig": "ListConfig",
    "omegaconf.base.ContainerMetadata": "ContainerMetadata",
    "omegaconf.base.Metadata": "Metadata",
    **{f"omegaconf.nodes.{n}": n for n in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                                           "EnumNode", "BytesNode", "PathNode", "UnionNode", "ValueNode")},
}
_CONFIG_CLASSES = {path: _config_class(kind) for path, kind in _OMEGACONF.items()}
_TYPE_REFS = {name: TypeRef(name) for name in (
    "typing.Any", "builtins.dict", "builtins.list", "builtins.tuple", "builtins.int", "builtins.float",
    "builtins.str", "builtins.bool", "builtins.bytes", "builtins.object")}

# pickled global name -> the stand-in answered in its place (both numpy 1.x and 2.x module paths)
STAND_INS: dict[str, Any] = {
    "argparse.Namespace": InertNamespace,
    "numpy.dtype": InertDtype,
    "numpy.core.multiarray.scalar": numpy_scalar,
    "numpy._core.multiarray.scalar": numpy_scalar,
    "collections.defaultdict": plain_defaultdict,
    **_CONFIG_CLASSES,
    **_TYPE_REFS,
}


def plain(obj: Any, _depth: int = 0) -> Any:
    """Any stand-in (nested in dicts / lists too) as plain dicts, lists and scalars.

    omegaconf containers become their content (a DictConfig -> dict, a node -> its value);
    a Namespace -> dict of its attributes; type references -> their names.
    """
    if _depth > 100:  # a pickle can make cycles; configs are never this deep
        raise ValueError("nested more than 100 levels deep (a cycle?)")
    d = _depth + 1
    if isinstance(obj, InertConfig):
        attrs = obj.__dict__
        if "_content" in attrs:
            return plain(obj.__dict__["_content"], d)
        if "_val" in attrs:
            return plain(obj.__dict__["_val"], d)
        return {k: plain(v, d) for k, v in attrs.items() if not k.startswith("_")}
    if isinstance(obj, InertNamespace):
        return {k: plain(v, d) for k, v in vars(obj).items()}
    if isinstance(obj, (TypeRef, InertDtype)):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, d) for v in obj)
    return obj


def stand_in_globals() -> list[tuple[Any, str]]:
    """The (object, pickled name) pairs for torch.serialization.safe_globals."""
    return [(obj, name) for name, obj in STAND_INS.items()]
