"""MindSpore .ckpt files, read (and written) without MindSpore.

The file is one protobuf message (field numbers from MindSpore's checkpoint.proto):

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; TensorProto tensor = 2; }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

MindSpore writes `dims` unpacked (one varint per dimension); packed is accepted too. A 0-d
scalar has no dims. `tensor_content` is the raw little-endian C-order buffer. The file is
memory-mapped and each tensor is a zero-copy numpy view of the map, so reading an 80M-parameter
checkpoint costs one copy at most (when the caller converts to torch), never several.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ftcore.errors import UserError

# MindSpore tensor_type string -> numpy dtype. bfloat16 has no numpy dtype: its raw 16-bit
# words are returned as uint16 and reinterpreted as torch.bfloat16 by `to_torch`.
MS_DTYPES: dict[str, np.dtype] = {
    "Float16": np.dtype("<f2"),
    "Float32": np.dtype("<f4"),
    "Float64": np.dtype("<f8"),
    "BFloat16": np.dtype("<u2"),
    "Int8": np.dtype("i1"),
    "Int16": np.dtype("<i2"),
    "Int32": np.dtype("<i4"),
    "Int64": np.dtype("<i8"),
    "UInt8": np.dtype("u1"),
    "UInt16": np.dtype("<u2"),
    "UInt32": np.dtype("<u4"),
    "UInt64": np.dtype("<u8"),
    "Bool": np.dtype("?"),
}
_NP_TO_MS = {
    np.dtype("<f2"): "Float16",
    np.dtype("<f4"): "Float32",
    np.dtype("<f8"): "Float64",
    np.dtype("i1"): "Int8",
    np.dtype("<i2"): "Int16",
    np.dtype("<i4"): "Int32",
    np.dtype("<i8"): "Int64",
    np.dtype("u1"): "UInt8",
    np.dtype("<u2"): "UInt16",
    np.dtype("<u4"): "UInt32",
    np.dtype("<u8"): "UInt64",
    np.dtype("?"): "Bool",
}


class MindSporeTensor:
    """One entry of a MindSpore checkpoint: `array` is a read-only numpy view of the file."""

    __slots__ = ("name", "ms_type", "array")

    def __init__(self, name: str, ms_type: str, array: np.ndarray):
        self.name, self.ms_type, self.array = name, ms_type, array

    def to_torch(self):
        """A torch tensor that owns its memory (one copy, so the file can be closed)."""
        import torch

        if self.ms_type == "str":
            raise TypeError(f"{self.name} is a string entry, not a tensor")

        t = torch.from_numpy(np.array(self.array, copy=True))
        return t.view(torch.bfloat16) if self.ms_type == "BFloat16" else t


class _Corrupt(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("file ends inside a number (truncated)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("malformed varint")


def _fields(buf, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (field number, wire type, value or start, length) for each field in buf[pos:end]."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Corrupt("field number 0 (not a protobuf message)")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, 0
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Corrupt(f"a field claims {length} bytes but only {end - pos} remain (truncated)")
            yield field, wire, pos, length
            pos += length
        elif wire == 1:
            if pos + 8 > end:
                raise _Corrupt("truncated 64-bit field")
            yield field, wire, pos, 8
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise _Corrupt("truncated 32-bit field")
            yield field, wire, pos, 4
            pos += 4
        else:
            raise _Corrupt(f"unsupported protobuf wire type {wire}")


def _parse_tensor(buf, pos: int, end: int) -> tuple[list[int], str, int, int]:
    dims: list[int] = []
    ms_type = ""
    content = (pos, 0)
    for field, wire, a, n in _fields(buf, pos, end):
        if field == 1 and wire == 0:
            dims.append(a)
        elif field == 1 and wire == 2:  # packed dims
            p, e = a, a + n
            while p < e:
                d, p = _varint(buf, p, e)
                dims.append(d)
        elif field == 2 and wire == 2:
            ms_type = bytes(buf[a : a + n]).decode("utf-8", "replace")
        elif field == 3 and wire == 2:
            content = (a, n)
    return dims, ms_type, content[0], content[1]


MAX_DIMS = 32  # numpy's own limit is 64; no real parameter comes near either

CRC_TRAILER = b"crc_num"  # written after the last record when MindSpore saves with crc_check=True


def iter_mindspore(buf) -> Iterator[MindSporeTensor]:
    """Parse a whole checkpoint held in `buf` (bytes, mmap or memoryview). Raises _Corrupt.

    MindSpore splits a tensor over 512 MB into consecutive records with the same tag: their
    contents are joined (the one case that costs a copy). String entries (tensor_type "str",
    UTF-32-LE, e.g. a model name saved through append_dict) come back as 0-d str arrays.
    """
    view = memoryview(buf)
    end = len(view)
    if end == 0:
        raise _Corrupt("file is empty")
    records: dict[str, list[tuple[list[int], str, int, int]]] = {}
    crc = end
    idx = bytes(view[max(0, end - 64) :]).rfind(CRC_TRAILER)
    if idx >= 0:
        crc = max(0, end - 64) + idx
    for field, wire, start, length in _fields(view, 0, crc):
        if field != 1 or wire != 2:
            continue  # fields added by newer MindSpore versions are skipped, not fatal
        name, tensor = None, None
        for f2, w2, a, n in _fields(view, start, start + length):
            if f2 == 1 and w2 == 2:
                try:
                    name = bytes(view[a : a + n]).decode("utf-8")
                except UnicodeDecodeError:
                    raise _Corrupt("a parameter name is not valid UTF-8") from None
            elif f2 == 2 and w2 == 2:
                tensor = (a, n)
        if name is None or tensor is None:
            continue  # map tensors / tensor lists: not produced by the models we load
        records.setdefault(name, []).append(_parse_tensor(view, tensor[0], tensor[0] + tensor[1]))
    for name, parts in records.items():
        dims, ms_type, c_start, c_len = parts[0]
        if ms_type == "str":
            try:
                text = b"".join(bytes(view[a : a + n]) for _, _, a, n in parts).decode("utf-32-le")
            except UnicodeDecodeError:
                raise _Corrupt(f"string entry {name!r} is not valid UTF-32") from None
            yield MindSporeTensor(name, "str", np.array(text))
            continue
        if ms_type not in MS_DTYPES:
            raise _Corrupt(f"parameter {name!r} has unknown tensor_type {ms_type!r}")
        dtype = MS_DTYPES[ms_type]
        if len(dims) > MAX_DIMS:
            raise _Corrupt(f"parameter {name!r} claims {len(dims)} dimensions")
        count = 1
        for d in dims:  # Python ints: a corrupt dim of 2**64 cannot overflow into a plausible size
            count *= d
        if len(parts) > 1:
            source = np.frombuffer(b"".join(bytes(view[a : a + n]) for _, _, a, n in parts), dtype=np.uint8)
            c_start, c_len = 0, source.size
        else:
            source = view
        if count * dtype.itemsize != c_len:
            raise _Corrupt(
                f"parameter {name!r}: shape {tuple(dims)} of {ms_type} needs "
                f"{count * dtype.itemsize} bytes but the file holds {c_len}"
            )
        try:  # an empty tensor whose other dims are absurd (0 x 2**40) still matches 0 bytes
            arr = np.frombuffer(source, dtype=dtype, count=count, offset=c_start).reshape(dims)
        except (ValueError, OverflowError):
            raise _Corrupt(f"parameter {name!r} has an impossible shape {tuple(dims)}") from None
        yield MindSporeTensor(name, ms_type, arr)


def read_mindspore(path: str | os.PathLike) -> dict[str, MindSporeTensor]:
    """Read every tensor of a MindSpore .ckpt as zero-copy numpy views of the mapped file."""
    path = Path(path)
    with open(path, "rb") as fh:  # read-only open: MindSpore writes its files mode 0400
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise UserError(f"{path}: checkpoint file is empty; re-export or re-download it")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        out: dict[str, MindSporeTensor] = {}
        for t in iter_mindspore(mapped):
            out[t.name] = t
    except _Corrupt as err:
        raise UserError(
            f"{path}: not a readable MindSpore checkpoint ({err}); the file is truncated or corrupt, "
            "re-export or re-download it"
        ) from None
    if not out:
        raise UserError(f"{path}: no tensors found; this is not a MindSpore checkpoint")
    return out


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return


def _put_bytes(out: bytearray, field: int, data: bytes) -> None:
    _put_varint(out, (field << 3) | 2)
    _put_varint(out, len(data))
    out += data


def write_mindspore(
    path: str | os.PathLike, tensors: Mapping[str, np.ndarray], packed_dims: bool = False
) -> None:
    """Write numpy arrays as a MindSpore .ckpt (unpacked dims, as MindSpore itself does).

    Used to export weights back to MindSpore and to build test files of the true layout.
    Arrays of dtype uint16 tagged as bfloat16 are not distinguishable here: pass a torch
    bfloat16 tensor through `ftcore.checkpoint.write_checkpoint` for that.
    """
    from ftcore.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for name, value in tensors.items():
            ms_type, arr = _ms_array(value)
            tensor = bytearray()
            if packed_dims and arr.ndim:
                dims = bytearray()
                for d in arr.shape:
                    _put_varint(dims, d)
                _put_bytes(tensor, 1, bytes(dims))
            else:
                for d in arr.shape:
                    _put_varint(tensor, (1 << 3) | 0)
                    _put_varint(tensor, d)
            _put_bytes(tensor, 2, ms_type.encode())
            _put_bytes(tensor, 3, np.ascontiguousarray(arr).tobytes())
            value_msg = bytearray()
            _put_bytes(value_msg, 1, name.encode())
            _put_bytes(value_msg, 2, bytes(tensor))
            record = bytearray()
            _put_bytes(record, 1, bytes(value_msg))
            fh.write(record)


def _ms_array(value) -> tuple[str, np.ndarray]:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            if value.dtype == torch.bfloat16:
                return "BFloat16", value.view(torch.uint16).numpy() if hasattr(torch, "uint16") else value.view(torch.int16).numpy().view(np.uint16)
            value = value.numpy()
    except ImportError:  # pragma: no cover - torch is a dependency of ftcore
        pass
    arr = np.asarray(value)
    arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
    key = arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype
    if key not in _NP_TO_MS:
        raise UserError(f"cannot write dtype {arr.dtype} to a MindSpore checkpoint")
    return _NP_TO_MS[key], arr
