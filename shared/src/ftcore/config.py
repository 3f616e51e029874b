"""Configuration is data: YAML/TOML/dicts checked once against a dataclass, with errors naming the key.

    cfg = load_config(ModelConfig, "model.yaml", overrides=["training.lr=1e-4"])
    cfg = layered_config(RunConfig, preset=PRESET, file=args.config, sets=args.set,
                         flags={"training.lr": args.lr})   # defaults < preset < file < --set < flags

Unknown keys (typos) and missing required keys are errors that name the key, the file, and the
closest known key. Values are coerced to the field's type (int, float, bool, str, tuples, nested
dataclasses, Optional); numbers must be finite (NaN passes every `<` check) and within the field's
`ftcore.options.bounds(...)` metadata when it has some.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

from ftcore.errors import UserError

T = TypeVar("T")


def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML or TOML file as a dict, with syntax errors reported with their line.

    A key written twice in one mapping is an error naming the key and both lines (YAML would
    silently keep the last value: a run trained at lr 10.0 instead of 1e-3); a UTF-8 byte-order
    mark (Windows editors write one) is ignored.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file {path} does not exist")
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; pass the YAML/TOML file inside it")
    try:
        text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start}); save the config as UTF-8 text") from None
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
            import tomli as tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            dup = _toml_duplicate(text)
            if dup:
                key, first, second = dup
                raise UserError(f"{path}: key {key!r} is set twice (lines {first} and {second}); keep one") from None
            raise UserError(
                f"{path}: TOML syntax error ({err}); quote keys that contain dots or dashes, "
                'e.g. "dataset.celltype" = "test", and strings need double quotes'
            ) from None
    import yaml

    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as err:
        raise UserError(f"{path}: {err}; keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: YAML syntax error at {where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of keys at the top level, found {type(data).__name__}")
    return data


class _DuplicateKey(Exception):
    pass


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(f"key {key!r} is set twice (lines {seen[key]} and {line})")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def _toml_duplicate(text: str) -> tuple[str, int, int] | None:
    """(dotted key, first line, second line) of a key or table a TOML file sets twice, by a line scan.

    Only called once tomllib has refused the file, to say which key. Each [[array of tables]]
    element is its own scope.
    """
    import re

    scope, shown, seen = "", "", {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", line)
        if header:
            shown = header.group(2)
            scope = f"{shown}@{number}" if header.group(1) == "[[" else shown
            if header.group(1) == "[":
                if f"[{scope}]" in seen:
                    return f"[{shown}]", seen[f"[{scope}]"], number
                seen[f"[{scope}]"] = number
            continue
        key = re.match(r"""^("[^"]*"|'[^']*'|[A-Za-z0-9_.-]+)\s*=""", line)
        if key:
            name = key.group(1)
            if (scope, name) in seen:
                return (f"{shown}.{name}" if shown else name), seen[(scope, name)], number
            seen[(scope, name)] = number
    return None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.max_steps=100' -> (['training', 'max_steps'], 100); values parsed as YAML scalars."""
    import yaml

    if "=" not in text:
        raise UserError(f"override {text!r} is not key=value (e.g. training.max_steps=1000)")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = _deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"override {text!r}: {k!r} is a value, not a section")
        node[keys[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    return {k: _deepcopy(v) for k, v in d.items()} if isinstance(d, dict) else d


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and requiring the required ones."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: {prefix.rstrip('.') or 'top level'} should be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise _unknown_key(key, fields, source, prefix)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], source, f"{prefix}{name}")
            limits = f.metadata.get("ftcore_bounds")
            if limits and kwargs[name] is not None:
                from ftcore.options import check_number

                check_number(repr(f"{prefix}{name}"), kwargs[name], type(kwargs[name]), source=source, **limits)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise UserError(f"{source}: missing required key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    except (TypeError, ValueError) as err:
        raise UserError(f"{source}: {err}") from None


def _unknown_key(key: Any, fields: Mapping[str, Any], source: str, prefix: str) -> UserError:
    close = difflib.get_close_matches(str(key), list(fields), n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
    return UserError(f"{source}: unknown key '{prefix}{key}'{hint}")


def _coerce(tp: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, source, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0] if errors else f"{source}: bad value for {key!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, prefix=f"{key}.")
    if origin is typing.Literal:
        if isinstance(value, bool) and {"on", "off"} <= set(args):  # YAML 1.1 reads a bare on/off as a bool
            value = "on" if value else "off"
        if value not in args:
            raise UserError(f"{source}: {key!r} is {value!r}; allowed: {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: {key!r} should be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, source, key) for v in value]
        return tuple(items) if origin is tuple else items
    if origin in (dict,):
        if not isinstance(value, Mapping):
            raise UserError(f"{source}: {key!r} should be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{source}: {key!r} should be true or false, got {value!r}")
    if tp in (int, float):
        from ftcore.options import check_number

        return check_number(repr(key), value, tp, source=source)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{source}: {key!r} should be text, got {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] = (), data: Mapping | None = None) -> T:
    base = dict(data or {})
    source = "config"
    if path is not None:
        base.update(read_config_file(path))
        source = str(path)
    return from_dict(cls, apply_overrides(base, list(overrides)), source)


# ------------------------------------------------------------------ layers: defaults < preset < file < --set < flags
@dataclasses.dataclass
class Layers:
    """The mappings of one layered load, before they become a dataclass (merge_layers)."""

    data: dict  # preset < file < --set, sections merged key by key: what from_dict reads
    given: dict  # file < --set only: what the user wrote ("did the user set X?")
    source: str  # how an error names where the keys came from


def merge(base: Mapping, over: Mapping) -> dict:
    """`over` on top of `base`; a section (mapping) in both is merged key by key, at every depth."""
    out = _deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = _deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return out


def rename_keys(data: Mapping, renames: Mapping[str, str], source: str) -> dict:
    """The user's spellings -> the dataclass's fields: {'model': 'model.name'} reads `model: state_sm` as
    `model.name: state_sm`. Dotted keys on both sides; only a value (not a section) is renamed, so
    `model: {name: ...}` stays as written. Both spellings in one layer is an error."""
    out = _deepcopy(dict(data))
    for old, new in renames.items():
        *parents, leaf = old.split(".")
        node = out
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], Mapping):
            continue
        value = node.pop(leaf)
        *new_parents, new_leaf = new.split(".")
        target = out
        for k in new_parents:
            target = target.setdefault(k, {})
            if not isinstance(target, dict):
                raise UserError(f"{source}: {old!r} means {new!r}, but {k!r} is a value, not a section")
        if new_leaf in target:
            raise UserError(f"{source}: {old!r} and {new!r} name the same setting; keep one")
        target[new_leaf] = value
    return out


def check_keys(cls: type, data: Mapping, source: str, prefix: str = "") -> None:
    """Every key of `data` (and of its sections, recursively) is a field of dataclass `cls`, else an error
    with the closest field (did you mean); a section is a mapping. Values are checked by from_dict, on the merge."""
    if not isinstance(data, Mapping):
        return  # from_dict reports the wrong type
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(key, fields, source, prefix)
        section = _section_type(hints[key])
        if section is not None and value is not None:
            if not isinstance(value, Mapping):  # `--set training=3`: a section's keys were meant
                raise UserError(f"{source}: '{prefix}{key}' is a value, not a section; give its keys ({prefix}{key}.<key>)")
            check_keys(section, value, source, f"{prefix}{key}.")


def _section_type(tp: Any) -> type | None:
    """The dataclass of a field typed as one (or Optional[one]); None for any other field."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return inner[0] if len(inner) == 1 else None
    return None


def merge_layers(cls: type, *, preset: Mapping | None = None, file: str | os.PathLike | Mapping | None = None,
                 sets: typing.Sequence[str] = (), renames: Mapping[str, str] | None = None,
                 source: str | None = None) -> Layers:
    """preset < file < --set as one mapping, each user layer's keys checked against `cls` with a did-you-mean.

    preset: a package's preset (or defaults) as a mapping, trusted (code, not user input). file: a YAML/TOML
    path, or a mapping a package has read itself. sets: 'a.b=value' items. renames: the package's table of
    user spellings -> fields (rename_keys), applied to the file and to the --set keys. `source`: one name
    for every error; by default an unknown key names its layer (the file, or "--set") and a bad value
    names the layers merged ("run.yaml / --set"; "defaults" when the user gave neither)."""
    renames = dict(renames or {})
    given: dict = {}
    file_name = None
    if file is not None:
        file_name = source or ("config" if isinstance(file, Mapping) else str(file))
        read = dict(file) if isinstance(file, Mapping) else read_config_file(file)
        given = rename_keys(read, renames, file_name)
        check_keys(cls, given, file_name)
    if sets:
        sets = [_rename_set(text, renames) for text in sets]
        check_keys(cls, apply_overrides({}, sets), source or "--set")
        given = apply_overrides(given, sets)
    if source is None:
        source = (f"{file_name} / --set" if sets else file_name) if file_name else ("--set" if sets else "defaults")
    return Layers(merge(preset or {}, given), given, source)


def _rename_set(text: str, renames: Mapping[str, str]) -> str:
    """'model=state_sm' -> 'model.name=state_sm' under {'model': 'model.name'}: a --set names one value."""
    keys, _ = parse_override(text)
    new = renames.get(".".join(keys))
    return f"{new}={text.split('=', 1)[1]}" if new else text


def apply_flags(cfg: T, flags: Mapping[str, Any] | None) -> T:
    """Command-line flags on a built config: {'spatial.lr': 0.01, 'seed': None}; None means "not given".

    Flags win over every other layer. Their values come typed and checked from argparse (ftcore.options);
    each section they touch is rebuilt once with dataclasses.replace, so its __post_init__ checks run again."""
    given = nest(flags or {})
    return _replace_fields(cfg, given) if given else cfg


def nest(flat: Mapping[str, Any]) -> dict:
    """{'a.b': 1, 'c': None} -> {'a': {'b': 1}}: dotted keys as sections, None values ("not given") left out."""
    out: dict = {}
    for key, value in flat.items():
        if value is not None:
            *parents, leaf = key.split(".")
            node = out
            for k in parents:
                node = node.setdefault(k, {})
            node[leaf] = value
    return out


def _replace_fields(obj: Any, changes: dict) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    for key in changes:
        if key not in names:  # a flag table names the field wrongly: a bug in the package, not a user error
            close = difflib.get_close_matches(key, names, n=1)
            raise TypeError(f"flag key {key!r} is not a field of {type(obj).__name__}"
                            + (f"; did you mean {close[0]!r}?" if close else ""))
    return dataclasses.replace(obj, **{k: _replace_fields(getattr(obj, k), v) if isinstance(v, dict) and
                                       dataclasses.is_dataclass(getattr(obj, k)) else v for k, v in changes.items()})


def layered_config(cls: type[T], *, preset: Mapping | None = None, file: str | os.PathLike | Mapping | None = None,
                   sets: typing.Sequence[str] = (), flags: Mapping[str, Any] | None = None,
                   renames: Mapping[str, str] | None = None, source: str | None = None) -> T:
    """`cls` from defaults < preset < file < --set < flags (merge_layers, from_dict, apply_flags).

    A package that needs the merged mappings too (which keys the user set) calls those three itself."""
    layers = merge_layers(cls, preset=preset, file=file, sets=sets, renames=renames, source=source)
    return apply_flags(from_dict(cls, layers.data, layers.source), flags)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)
