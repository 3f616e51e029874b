"""Checkpoint reading: every format, wrappers, safety, corrupt files, streaming."""

import argparse
import json
import os
import tracemalloc

import numpy as np
import pytest
import torch

from ftcore.checkpoint import detect_format, read_checkpoint, read_state_dict, write_checkpoint
from ftcore.checkpoint.mindspore import read_mindspore, write_mindspore
from ftcore.errors import UserError


# ---------------------------------------------------------------- MindSpore, real files
@pytest.mark.parametrize("stem", ["dtypes", "append_dict", "edge_cases"])
def test_mindspore_reader_matches_real_mindspore_files(ms_fixtures, stem):
    expected = np.load(ms_fixtures / "expected.npz")
    dtypes = json.loads((ms_fixtures / "expected_dtypes.json").read_text())
    got = read_mindspore(ms_fixtures / f"{stem}.ckpt")
    keys = [k for k in expected.files if k.startswith(stem + "/")]
    assert sorted(f"{stem}/{n}" for n in got) == sorted(keys)
    for name, t in got.items():
        want = expected[f"{stem}/{name}"]
        assert t.ms_type == dtypes[f"{stem}/{name}"]
        if t.ms_type == "str":
            assert str(t.array) == str(want)
            continue
        value = t.to_torch().float().numpy() if t.ms_type == "BFloat16" else t.array
        assert value.shape == want.shape, name
        assert value.dtype == want.dtype or t.ms_type == "BFloat16", name
        np.testing.assert_array_equal(value, want, err_msg=name)


def test_mindspore_every_dtype_present(ms_fixtures):
    types = {t.ms_type for t in read_mindspore(ms_fixtures / "dtypes.ckpt").values()}
    assert {"Float16", "Float32", "Float64", "BFloat16", "Int8", "Int16", "Int32", "Int64", "UInt8", "Bool"} <= types


def test_mindspore_bf16_and_scalars_through_read_state_dict(ms_fixtures):
    sd = read_state_dict(ms_fixtures / "dtypes.ckpt")
    assert sd["norm.beta"].dtype == torch.bfloat16
    assert sd["scalar.temperature"].shape == ()
    sd2 = read_state_dict(ms_fixtures / "append_dict.ckpt")
    assert int(sd2["epoch_num"]) == 3 and sd2["epoch_num"].dtype == torch.int64


def test_mindspore_read_only_file(ms_fixtures, tmp_path):
    path = tmp_path / "ro.ckpt"
    path.write_bytes((ms_fixtures / "append_dict.ckpt").read_bytes())
    path.chmod(0o400)  # as MindSpore leaves its files
    assert "dense.weight" in read_state_dict(path)


@pytest.mark.parametrize("packed", [False, True])
def test_mindspore_writer_roundtrip_packed_and_unpacked(tmp_path, packed):
    rng = np.random.default_rng()
    tensors = {
        "a.weight": rng.standard_normal((3, 5)).astype(np.float32),
        "b": rng.integers(-9, 9, size=(2, 3, 4)).astype(np.int64),
        "scalar": np.array(2.5, dtype=np.float64),
        "mask": rng.random(7) > 0.5,
    }
    path = tmp_path / "x.ckpt"
    write_mindspore(path, tensors, packed_dims=packed)
    got = read_mindspore(path)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k].array, v)
        assert got[k].array.dtype == v.dtype


def test_mindspore_bf16_written_from_torch(tmp_path):
    t = torch.randn(4, 6).to(torch.bfloat16)
    write_checkpoint(tmp_path / "b.ckpt", {"w": t}, fmt="mindspore")
    got = read_state_dict(tmp_path / "b.ckpt")["w"]
    assert got.dtype == torch.bfloat16 and torch.equal(got, t)


@pytest.mark.parametrize("cut", [1, 7, 100, -3])
def test_mindspore_truncated_is_one_line_error(ms_fixtures, tmp_path, cut):
    data = (ms_fixtures / "dtypes.ckpt").read_bytes()
    path = tmp_path / "trunc.ckpt"
    path.write_bytes(data[:cut] if cut > 0 else data[:cut])
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg


def test_mindspore_streams_without_copies(tmp_path):
    """An 80M-parameter file costs about one copy of itself in memory, not several."""
    n_tensors, per = 10, 8_000_000
    path = tmp_path / "big.ckpt"
    rng = np.random.default_rng(0)
    block = rng.standard_normal(per, dtype=np.float32)
    write_mindspore(path, {f"layer.{i}.weight": block.reshape(4000, 2000) for i in range(n_tensors)})
    del block
    size = path.stat().st_size
    tracemalloc.start()
    views = read_mindspore(path)  # zero-copy views of the mapped file
    _, peak_views = tracemalloc.get_traced_memory()
    sd = {k: v.to_torch() for k, v in views.items()}  # the one copy a caller pays
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(t.numel() for t in sd.values()) == n_tensors * per
    assert peak_views < 0.01 * size
    assert peak < 1.2 * size, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


# ---------------------------------------------------------------- torch / Lightning / safetensors
def _weights():
    return {"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 1},
        lambda sd: {"model_state_dict": sd, "step": 7},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["bare", "lightning+ddp", "training-model", "model_state_dict", "ddp-prefix"],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_torch_wrappers_unwrapped(tmp_path, wrap, suffix):
    sd = _weights()
    path = tmp_path / f"w{suffix}"
    torch.save(wrap(sd), path)
    got = read_state_dict(path)
    assert set(got) == set(sd)
    for k in sd:
        assert torch.equal(got[k], sd[k])


def test_lightning_checkpoint_detected_not_mindspore(tmp_path):
    path = tmp_path / "epoch=3-step=100.ckpt"
    torch.save({"state_dict": _weights(), "pytorch-lightning_version": "2.4.0", "global_step": 100}, path)
    assert detect_format(path) == "torch"
    assert set(read_state_dict(path)) == {"layer.weight", "layer.bias"}


def test_legacy_torch_format(tmp_path):
    path = tmp_path / "old.pt"
    torch.save(_weights(), path, _use_new_zipfile_serialization=False)
    assert detect_format(path) == "torch-legacy"
    assert set(read_state_dict(path)) == {"layer.weight", "layer.bias"}


def test_safetensors_roundtrip(tmp_path):
    sd = _weights()
    write_checkpoint(tmp_path / "w.safetensors", sd)
    got = read_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_explicit_key(tmp_path):
    torch.save({"ema": _weights(), "model": {"x": torch.zeros(1)}}, tmp_path / "c.pt")
    assert set(read_state_dict(tmp_path / "c.pt", key="ema")) == {"layer.weight", "layer.bias"}
    with pytest.raises(UserError, match="no entry 'nope'"):
        read_state_dict(tmp_path / "c.pt", key="nope")


# ---------------------------------------------------------------- safety
def _get_style_checkpoint(path):
    """A GET `checkpoint-799.pth`-style file: weights beside argparse and numpy objects."""
    torch.save(
        {"model": _weights(), "args": argparse.Namespace(lr=1e-4, model="get"), "epoch": np.int64(799),
         "best": np.float64(0.71)},
        path,
    )


def test_get_style_checkpoint_reads_without_trust(tmp_path):
    """Issue 19: GET's Namespace + numpy scalars no longer need --trust-checkpoint (inert stand-ins)."""
    path = tmp_path / "checkpoint-799.pth"
    _get_style_checkpoint(path)
    assert set(read_state_dict(path)) == {"layer.weight", "layer.bias"}


def test_pickle_with_other_python_objects_refused_by_default(tmp_path):
    import datetime

    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "started": datetime.date(2023, 5, 1)}, path)
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "trust_pickle=True" in msg and "--trust-checkpoint" in msg and str(path) in msg
    assert "datetime.date" in msg and "\n" not in msg


def test_trusted_pickle_loads_numpy_scalars_and_namespace(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    _get_style_checkpoint(path)
    obj = read_checkpoint(path, trust_pickle=True)
    # the safe reader answers first, so even a trusted read gets the inert Namespace (attributes kept)
    assert (obj["args"].lr, obj["args"].model) == (1e-4, "get") and int(obj["epoch"]) == 799
    assert set(read_state_dict(path, trust_pickle=True)) == {"layer.weight", "layer.bias"}


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_code_running_pickle_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _weights(), "payload": _Evil()}, path)
    with pytest.raises(UserError, match="could run code"):
        read_state_dict(path)


# ---------------------------------------------------------------- corrupt files
@pytest.mark.parametrize("fmt", ["torch", "torch-legacy", "safetensors"])
@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_files_one_line_error(tmp_path, fmt, cut):
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    sd = {"w": torch.randn(64, 64)}
    if fmt == "safetensors":
        write_checkpoint(path, sd)
    else:
        torch.save(sd, path, _use_new_zipfile_serialization=(fmt == "torch"))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_garbage_and_empty_and_missing(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x13\x37 this is not a checkpoint" * 10)
    (tmp_path / "empty.ckpt").write_bytes(b"")
    for name, pattern in [("junk.pt", "unrecognised"), ("empty.ckpt", "empty"), ("missing.pt", "does not exist")]:
        with pytest.raises(UserError, match=pattern):
            read_state_dict(tmp_path / name)


def test_corrupted_bytes_inside_zip(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.randn(256, 256)}, path)
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = os.urandom(64)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt"):
        read_state_dict(path)
