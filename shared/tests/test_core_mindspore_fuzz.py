"""Fuzzing the MindSpore .ckpt parser: whatever bytes it is given, it returns tensors or raises UserError.

Inputs are the real MindSpore-written fixtures mutated (byte flips, truncation, insertion,
deletion, splicing two files, varints replaced by huge values) and random protobuf-shaped
bytes. Any other exception (IndexError, struct.error, UnicodeDecodeError, MemoryError,
OverflowError, ValueError from numpy) is a parser bug. A hang would show as a hypothesis
deadline failure.

Brief in CI (FTCORE_FUZZ_EXAMPLES, default 300 per test); the long run is
    FTCORE_FUZZ_EXAMPLES=100000 python -m pytest -q shared/tests/test_core_mindspore_fuzz.py
(results in shared/tests/fuzz_results.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftcore.checkpoint.mindspore import _Corrupt, iter_mindspore, read_mindspore
from ftcore.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "mindspore"
SEEDS = {p.name: p.read_bytes() for p in sorted(FIXTURES.glob("*.ckpt"))}
EXAMPLES = int(os.environ.get("FTCORE_FUZZ_EXAMPLES", "300"))
# Large example counts: split over the tests below, no per-example deadline flakiness on a busy
# machine, but a generous deadline still catches hangs (a parse of <= 4 KB must take milliseconds).
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, derandomize=EXAMPLES <= 1000,
                suppress_health_check=list(HealthCheck), database=None)

MAX_RESULT_BYTES = 64 * 2**20  # a parse of a few KB must never materialise more than this


def parse_bytes(data: bytes) -> dict | None:
    """Parse `data` the way read_mindspore does (in memory); None when refused with _Corrupt."""
    try:
        out = {}
        for t in iter_mindspore(data):
            arr = np.asarray(t.array)
            assert arr.nbytes <= max(len(data), 1) * 8 + 1024 or t.ms_type == "str"
            if t.ms_type != "str":
                t.to_torch()  # the conversion every caller does must not fail either
            out[t.name] = t
        return out
    except _Corrupt:
        return None


def check_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.ckpt"
    path.write_bytes(data)
    try:
        read_mindspore(path)
    except UserError as err:
        assert "\n" not in str(err)
        assert str(path) in str(err)


# -------------------------------------------------------------------------- mutations
seed_names = st.sampled_from(sorted(SEEDS))


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(seed_names)])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice", "varint"]))
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            i = draw(st.integers(0, n - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "splice":
            other = SEEDS[draw(seed_names)]
            a = draw(st.integers(0, len(other)))
            b = draw(st.integers(a, len(other)))
            i = draw(st.integers(0, n))
            data[i:i] = other[a:b]
        elif op == "varint" and n:
            # overwrite with a huge varint: declared lengths/dims of up to 2**70
            i = draw(st.integers(0, n - 1))
            data[i : i + 1] = bytes([0xFF] * draw(st.integers(1, 10))) + bytes([draw(st.integers(0, 127))])
    return bytes(data)


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


@st.composite
def protobuf_ish(draw) -> bytes:
    """Structurally plausible checkpoints with hostile dims, types, names and lengths."""
    records = []
    for _ in range(draw(st.integers(0, 4))):
        dims = draw(st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**64 + 5)), max_size=70))
        tensor = b""
        if draw(st.booleans()):
            tensor += _field(1, b"".join(_varint(d) for d in dims))
        else:
            tensor += b"".join(_varint(1 << 3) + _varint(d) for d in dims)
        ms_type = draw(st.one_of(st.sampled_from(["Float32", "Float16", "BFloat16", "Int64", "Bool", "str", "UInt8"]),
                                 st.text(max_size=8)))
        tensor += _field(2, ms_type.encode("utf-8", "surrogatepass"))
        tensor += _field(3, draw(st.binary(max_size=64)))
        name = draw(st.one_of(st.text(max_size=12).map(lambda s: s.encode("utf-8", "surrogatepass")),
                              st.binary(max_size=12)))
        value = _field(1, name) + _field(2, tensor)
        if draw(st.booleans()):
            value += draw(st.binary(max_size=8))  # stray bytes: unknown fields or garbage
        records.append(_field(1, value))
    data = b"".join(records)
    if draw(st.booleans()):
        data += b"crc_num" + draw(st.binary(max_size=8))
    return data


# ------------------------------------------------------------------------------ tests
@FUZZ
@given(mutated())
def test_fuzz_mutated_real_files(data):
    parse_bytes(data)


@FUZZ
@given(protobuf_ish())
def test_fuzz_protobuf_shaped(data):
    parse_bytes(data)


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(data):
    parse_bytes(data)


@settings(max_examples=min(EXAMPLES, 200), deadline=5000, suppress_health_check=list(HealthCheck), database=None)
@given(data=mutated())
def test_fuzz_through_the_file_reader(tmp_path_factory, data):
    """The public entry point (mmap of a real file): only one-line UserErrors naming the file."""
    check_file(tmp_path_factory.mktemp("fz"), data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_unmutated_fixtures_parse(name):
    assert parse_bytes(SEEDS[name])
