"""One entry point for every checkpoint format the toolkit meets.

    read_state_dict(path)  -> {name: torch.Tensor}   weights only, wrappers removed
    read_checkpoint(path)  -> the whole saved object (dicts of tensors, metadata, ...)

Formats are recognised by their first bytes, not their extension (".ckpt" is both Lightning
and MindSpore): torch zip (.pt/.pth/.ckpt), torch legacy pickle, safetensors, MindSpore
protobuf. Torch files load with weights_only=True; the argparse Namespace, numpy scalars and
omegaconf configs real training checkpoints pickle beside their tensors come back as inert
stand-ins (`ftcore.checkpoint.inert`; `plain(obj)` gives dicts). Any other object (it could run
code) is refused unless the caller passes trust_pickle=True (CLIs: --trust-checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ftcore.errors import UserError
from ftcore.checkpoint.inert import plain, stand_in_globals
from ftcore.checkpoint.mindspore import read_mindspore, write_mindspore

TRUST_HINT = "pass trust_pickle=True (CLI: --trust-checkpoint) only if you trust where the file came from"

# Keys under which training scripts store the weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


def detect_format(path: str | os.PathLike) -> str:
    """'torch', 'torch-legacy', 'safetensors' or 'mindspore', from the file's first bytes."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory; pass the checkpoint file inside it")
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        raise UserError(f"{path}: checkpoint file is empty; re-export or re-download it")
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head[:1] == b"\x80":
        return "torch-legacy"
    if len(head) >= 9 and head[8:10] in (b'{"', b"{}", b"{ "):
        return "safetensors"  # the header length is checked by the reader, which names what is wrong
    if head[:1] == b"\x0a":  # protobuf field 1, length-delimited: Checkpoint.value
        return "mindspore"
    what = _other_kind(head)
    raise UserError(
        f"{path}: unrecognised checkpoint format (not torch, safetensors or MindSpore)"
        + (f": {what}" if what else "; the file may be corrupt or of another kind")
    )


def _other_kind(head: bytes) -> str | None:
    """What a file that is not a checkpoint most likely is, with the fix (the mistakes people make)."""
    text = head.lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the weights; run `git lfs pull` in the repository it came from"
    if text.startswith((b"<!doctype html", b"<html", b"<?xml")):
        return "it is a web page (a failed or login-walled download?); download the file itself again"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed; decompress it first (gunzip, or tar -xzf for a .tar.gz)"
    if head[257:262] == b"ustar":
        return "it is a tar archive; extract it (tar -xf) and pass the checkpoint inside"
    if head.startswith(b"\x93NUMPY"):
        return "it is a numpy .npy array, not a dict of named weights"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (an .h5ad data set or a Keras .h5?), not a checkpoint"
    if text.startswith((b"{", b"[")):
        return "it is JSON text (a config or a file list?), not weights"
    return None


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
    """Load the whole object saved in `path` onto the CPU (see module docstring for formats)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "mindspore":
        return {name: t.to_torch() for name, t in read_mindspore(path).items() if t.ms_type != "str"}
    if fmt == "safetensors":
        return _read_safetensors(path)
    return _read_torch(path, fmt, trust_pickle)


def read_state_dict(
    path: str | os.PathLike, *, trust_pickle: bool = False, key: str | None = None
) -> dict[str, torch.Tensor]:
    """Weights of `path` as a flat {name: tensor} dict.

    Wrappers are removed: a Lightning checkpoint's 'state_dict', a training checkpoint's
    'model' (or `key` when given), and the 'module.' prefix DDP adds. Non-tensor entries
    (epoch, args, optimizer state) are dropped.
    """
    return extract_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), key=key, source=str(path))


def extract_state_dict(obj: Any, key: str | None = None, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = ", ".join(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise UserError(f"{source}: no entry {key!r} in the checkpoint (it has: {have})")
        obj = obj[key]
    else:
        while isinstance(obj, Mapping) and not _is_flat_state_dict(obj):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if hasattr(obj, "state_dict") and not isinstance(obj, Mapping):  # a pickled nn.Module
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise UserError(f"{source}: holds a {type(obj).__name__}, not a dict of weights")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{source}: no tensors found (top-level keys: {', '.join(map(str, obj.keys()))})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _is_flat_state_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, torch.Tensor) for v in values) >= len(values) / 2


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({_one_line(err)}); it is truncated or corrupt") from None


def _read_torch(path: Path, fmt: str, trust_pickle: bool) -> Any:
    if not hasattr(torch.serialization, "safe_globals"):  # (obj, name) allow-list entries: torch 2.6
        raise UserError(f"torch {torch.__version__} is too old to read checkpoints safely; install torch >= 2.6")
    if fmt == "torch":
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip() if path.stat().st_size < 64 * 2**20 else None
        except zipfile.BadZipFile:
            raise UserError(f"{path}: torch checkpoint is truncated or corrupt (bad zip archive); re-save or re-download it") from None
        if bad is not None:
            raise UserError(f"{path}: torch checkpoint is corrupt (member {bad} fails its CRC); re-save or re-download it")
        _check_tensor_records(path)
    try:
        # argparse / numpy / omegaconf objects beside the tensors are answered by inert stand-ins
        with _stand_ins_first():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=(fmt == "torch"))
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            what = _unsafe_global(err)
            raise UserError(
                f"{path}: refusing to unpickle {what}: loading it could run code; {TRUST_HINT}"
            ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if not trust_pickle:  # a trusted file gets the full unpickle below, which may still read it
            raise UserError(f"{path}: torch checkpoint is truncated or corrupt ({_one_line(err)}); "
                            "re-save or re-download it") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any failure of a trusted full unpickle is reported in one line
        raise UserError(f"{path}: could not load even with trust_pickle ({type(err).__name__}: {_one_line(err)})") from None


@contextlib.contextmanager
def _stand_ins_first():
    """torch's allow-list with our inert stand-ins, and without the REAL classes of the same names that libraries
    register at import (torch_geometric adds collections.defaultdict): torch keeps the list in a set, so which of
    two entries of one name it uses depended on hashing, and the real defaultdict then called a pickled factory."""
    ser = torch.serialization
    saved = ser.get_safe_globals()
    ours = stand_in_globals()
    names = {name for _, name in ours}

    def name_of(entry) -> str:
        return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"

    ser.clear_safe_globals()
    ser.add_safe_globals([g for g in saved if name_of(g) not in names] + ours)
    try:
        yield
    finally:
        ser.clear_safe_globals()
        ser.add_safe_globals(saved)


# bytes per element of each storage type a torch pickle names (torch.FloatStorage, ...)
_ELEMENT_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                  "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1, "QInt32": 4}


class _Inert:
    """Answers every global of a pickle while its storage records are listed: holds nothing, runs nothing."""

    def __new__(cls, *args, **kwargs):  # noqa: ARG003
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _RecordScan(pickle.Unpickler):
    """Lists a torch zip pickle's storage records (key, storage type, element count) without building anything."""

    def __init__(self, fh):
        super().__init__(fh)
        self.records: list[tuple[str, str, int]] = []

    def find_class(self, module, name):
        return type(f"{module}.{name}", (_Inert,), {})

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel)
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            self.records.append((str(pid[2]), getattr(pid[1], "__name__", str(pid[1])), int(pid[4])))
        return _Inert()


def _check_tensor_records(path: Path) -> None:
    """Every tensor record in the archive holds exactly the bytes its pickle says.

    torch's mmap reader takes a record's size from the pickle and maps whatever follows it in the
    file, so a record cut short inside a still-valid archive would load as garbage (NaN) weights.
    """
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        # torch reads <first entry's folder>/data.pkl
        prefix = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
        pkl = prefix + "data.pkl"
        if pkl not in names:
            npz = any(n.endswith(".npy") for n in names)
            raise UserError(f"{path}: a zip archive without {pkl}: " + (
                "a numpy .npz archive, not a torch checkpoint" if npz else
                "not a torch checkpoint (a zipped folder? extract it and pass the checkpoint inside)"))
        try:
            scan = _RecordScan(zf.open(pkl))
            scan.load()
        except Exception as err:  # noqa: BLE001 - any failure to parse the pickle is a corrupt file
            raise UserError(f"{path}: torch checkpoint is corrupt (its data.pkl does not parse: {_one_line(err)}); "
                            "re-save or re-download it") from None
        sizes = {i.filename: i.file_size for i in zf.infolist()}
    for key, storage, numel in scan.records:
        member = f"{prefix}data/{key}"
        per = _ELEMENT_BYTES.get(storage.rsplit(".", 1)[-1].removesuffix("Storage"))
        if member not in sizes:
            raise UserError(f"{path}: torch checkpoint is corrupt (tensor record data/{key} is missing); "
                            "re-save or re-download it")
        if per is not None and sizes[member] != numel * per:
            raise UserError(f"{path}: torch checkpoint is truncated or corrupt (tensor record data/{key} holds "
                            f"{sizes[member]} bytes, its tensor needs {numel * per}); re-save or re-download it")


def _unsafe_global(err: Exception) -> str:
    text = str(err)
    for marker in ("Unsupported global: GLOBAL ", "global: GLOBAL "):
        if marker in text:
            name = text.split(marker, 1)[1].split()[0]
            return f"Python objects beyond tensors (e.g. {name})"
    return "Python objects beyond tensors"


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def write_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], fmt: str | None = None) -> None:
    """Write weights atomically as `fmt`: 'safetensors', 'mindspore' or 'torch'.

    Without `fmt`, a .safetensors suffix means safetensors and anything else a torch file.
    """
    from ftcore.io import atomic_path, atomic_torch_save

    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "torch")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
    elif fmt == "mindspore":
        write_mindspore(path, tensors)
    elif fmt == "torch":
        atomic_torch_save(tensors, path)
    else:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose safetensors, mindspore or torch")


__all__ = [
    "detect_format",
    "read_checkpoint",
    "read_state_dict",
    "extract_state_dict",
    "write_checkpoint",
    "read_mindspore",
    "write_mindspore",
    "TRUST_HINT",
    "plain",
]
