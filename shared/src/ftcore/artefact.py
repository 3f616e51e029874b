"""One self-describing file for every model the toolkit trains: the weights and what they are.

    save_model(path, model_state, *, kind, config, data_keys=..., extra=..., package=...)
    load_model(path, *, kind, trust=False, ...) -> ModelFile(state, kind, config, data_keys, versions, extra)
    model_file(obj, path, *, kind, ...)          the same checks on an object already read
    kind_of(obj)                                 the kind of any checkpoint object, None for a foreign one

The file is a torch zip holding one dict. Its keys are those the toolkit's files always had, so
earlier readers (and any `torch.load(...)["model"]`) still work, plus one header:

    "model":    {name: tensor}                 the weights
    "extra":    {...}                          the package's own entries (as earlier versions wrote them)
    "artefact": {"format": 1,
                 "kind": "var-st/stage-1",     what the weights are; load_model refuses another kind
                 "config": {...},              the model config, plain data: the model is rebuilt from it
                 "data_keys": {...},           the data contract: gene list, obs keys, label names ...
                 "versions": {"var-st": "0.1.0", "ftcore": "0.1.0", "torch": "2.6.0"}}

Trainer checkpoints (best / last / epoch files) carry the same header when the Trainer is given one
(`Trainer(..., artefact=model_header(...))`), beside their training state.

Every value is a tensor, dict, list, tuple, str, number, bool or None: the file loads with
weights_only=True, so reading a file the toolkit wrote never needs --trust-checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ftcore.errors import UserError

FORMAT = 1
HEADER_KEY = "artefact"
HEADER_FIELDS = ("format", "kind", "config", "data_keys", "versions")


@dataclass
class ModelFile:
    """A model file read back by load_model."""

    path: Path
    state: dict[str, torch.Tensor]  # the weights
    kind: str
    config: dict
    data_keys: dict
    versions: dict  # {} for a file an earlier version wrote without the header
    extra: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)  # the whole saved dict (epoch, metrics, ...)


def versions(package: str | None = None) -> dict[str, str]:
    """{package: version, "ftcore": version, "torch": version} of the running code."""
    import ftcore

    found = {}
    if package:
        found[package] = _package_version(package)
    found["ftcore"] = ftcore.__version__
    found["torch"] = torch.__version__.split("+")[0]
    return found


def _package_version(package: str) -> str:
    from importlib import import_module, metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:  # run from a source tree (PYTHONPATH): the module's own version
        try:
            return str(getattr(import_module(package.replace("-", "_")), "__version__", "unknown"))
        except ImportError:
            return "unknown"


def model_header(*, kind: str, config: Mapping, data_keys: Mapping | None = None, package: str | None = None) -> dict:
    """The "artefact" entry of a model file (save_model writes it; a Trainer given it puts it in its checkpoints)."""
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"model kind must be a non-empty string, got {kind!r}")
    return {"format": FORMAT, "kind": kind, "config": plain_data(dict(config), "config"),
            "data_keys": plain_data(dict(data_keys or {}), "data_keys"), "versions": versions(package)}


def save_model(path: str | os.PathLike, model_state: Mapping[str, torch.Tensor], *, kind: str, config: Mapping,
               data_keys: Mapping | None = None, extra: Mapping | None = None, package: str | None = None,
               **more: Any) -> Path:
    """Write the model file atomically (CPU tensors); `more` adds top-level entries (e.g. step=...). -> path."""
    from ftcore.io import atomic_torch_save

    if HEADER_KEY in more or "model" in more or "extra" in more:
        raise TypeError("'model', 'extra' and 'artefact' are save_model's own entries")
    state = {str(k): v.detach().cpu() for k, v in model_state.items()}
    obj = {"model": state, "extra": plain_data(dict(extra or {}), "extra"),
           HEADER_KEY: model_header(kind=kind, config=config, data_keys=data_keys, package=package),
           **plain_data(more, "entries")}
    atomic_torch_save(obj, path)
    return Path(path)


def load_model(path: str | os.PathLike, *, kind: str | tuple[str, ...], trust: bool = False,
               other_kinds: Mapping[str, str] | None = None,
               legacy: Callable[[dict], Mapping | None] | None = None,
               require: tuple[str, ...] = (), what: str | None = None, hint: str = "") -> ModelFile:
    """Read a model file and check it is of `kind` (one kind or a tuple of accepted ones).

    other_kinds: {kind: the one-line message for a file of that kind} ("{path}" is filled in), e.g.
        {"var-st/stage-1": "{path} is a var-st stage-1 checkpoint; pass it as --stage1_ckpt"}.
    legacy: for a file without the header (an earlier version's): obj -> {"kind", "config", "data_keys"}
        read from its old entries, or None when it is not one of the package's files.
    require: data keys (and config) the caller needs: a file without them is refused by name.
    what / hint: how the refusals name the expected file ("a cellfm-ft fine-tuned model") and the fix.
    trust: allow a full unpickle (--trust-checkpoint); files the toolkit wrote never need it.
    """
    from ftcore.checkpoint import read_checkpoint

    return model_file(read_checkpoint(path, trust_pickle=trust), path, kind=kind, other_kinds=other_kinds,
                      legacy=legacy, require=require, what=what, hint=hint)


def model_file(obj: Any, path: str | os.PathLike, *, kind: str | tuple[str, ...],
               other_kinds: Mapping[str, str] | None = None, legacy: Callable[[dict], Mapping | None] | None = None,
               require: tuple[str, ...] = (), what: str | None = None, hint: str = "") -> ModelFile:
    """load_model's checks on an object already read from `path` (read_checkpoint), for a caller that looks at
    the object first (a foreign layout it handles itself)."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    what = what or f"a {kinds[0]} model file"
    tail = f"; {hint}" if hint else ""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise UserError(f"{path} is not {what} (no 'model' weights inside){tail}")
    header = obj.get(HEADER_KEY)
    if header is None:
        old = legacy(dict(obj)) if legacy is not None else None
        if old is None:
            raise UserError(f"{path} is not {what} (no model header, and not a file an earlier version wrote){tail}")
        header = {"format": 0, "versions": {}, **old}
    if not isinstance(header, Mapping):
        raise UserError(f"{path}: its model header is a {type(header).__name__}, not a mapping (edited?){tail}")
    missing = [k for k in HEADER_FIELDS if k not in header]
    if missing:
        raise UserError(f"{path}: its model header lacks {', '.join(missing)} (written by another program, or "
                        f"edited?){tail}")
    found = header["kind"]
    if found not in kinds:
        message = (other_kinds or {}).get(found)
        if message:
            raise UserError(message.format(path=path))
        raise UserError(f"{path} is a {found} model file, not {what}{tail}")
    if not isinstance(header["config"], Mapping) or not isinstance(header["data_keys"], Mapping):
        raise UserError(f"{path}: its model header's config / data_keys are not mappings (edited?){tail}")
    absent = [k for k in require if k not in header["data_keys"] and k not in header["config"]]
    if absent:
        raise UserError(f"{path}: a {found} file without {absent[0]!r} (written by another version, or edited?){tail}")
    if not isinstance(header["format"], int) or header["format"] > FORMAT:
        raise UserError(f"{path}: model file format {header['format']!r} is not one this ftcore reads (<= {FORMAT}); "
                        f"update ftcore (the file names its versions: {header.get('versions')})")
    extra = obj.get("extra")
    return ModelFile(path=path, state=dict(obj["model"]), kind=found, config=dict(header["config"]),
                     data_keys=dict(header["data_keys"]), versions=dict(header["versions"] or {}),
                     extra=dict(extra) if isinstance(extra, Mapping) else {}, raw=dict(obj))


def kind_of(obj: Any, legacy: Callable[[dict], Mapping | None] | None = None) -> str | None:
    """The kind of an object read from any checkpoint (read_checkpoint's result): its header's, else what
    `legacy` recognises, else None (a foreign checkpoint, which a caller may still accept)."""
    if not isinstance(obj, Mapping):
        return None
    header = obj.get(HEADER_KEY)
    if header is None and legacy is not None:
        header = legacy(dict(obj))
    kind = header.get("kind") if isinstance(header, Mapping) else None
    return kind if isinstance(kind, str) else None


def plain_data(obj: Any, where: str = "value") -> Any:
    """obj with numpy scalars as Python numbers and paths as str, or TypeError naming the first value that is
    not a tensor, dict, list, tuple, str, number, bool or None (it would need pickle trust to read back)."""
    if isinstance(obj, torch.Tensor) or obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, Mapping):
        return {plain_data(k, where): plain_data(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if type(obj) is tuple else items  # a namedtuple becomes a list
    if isinstance(obj, os.PathLike):
        return str(obj)
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:  # np.str_, np.float64, ...
        return obj.item()
    for builtin in (bool, int, float, str):  # other subclasses (an IntEnum member) as the builtin
        if isinstance(obj, builtin):
            return builtin(obj)
    raise TypeError(f"{where} is a {type(obj).__name__}; a model file holds only tensors, dicts, lists, str, "
                    "numbers, bool and None (so it loads without pickle trust)")


__all__ = ["ModelFile", "model_header", "save_model", "load_model", "model_file", "kind_of", "plain_data", "versions", "FORMAT"]
