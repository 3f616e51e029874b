"""Generate the bad-checkpoint corpus: small broken files of every format the toolkit reads.

    python tests/bad_inputs/checkpoints/make_corpus.py      # rewrites the files, README.md, expected.json

CASES is the single source of truth: file name -> (what it is, the phrase the one-line error
must contain). shared/tests/test_core_bad_checkpoints.py and the packages' bad-input tests
read expected.json (or import CASES). Every file stays well under 50 KB.

evil_pickle.pt runs code when fully unpickled. The payload is harmless: it only writes the
word "pwned" to the path in the environment variable FTCORE_EVIL_MARKER, and does nothing
when that variable is unset. Tests set the variable to a temp path and assert the marker is
NOT created when the file is refused (and IS created with trust_pickle=True, proving the
payload is real).
"""

from __future__ import annotations

import argparse
import datetime
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
MARKER_ENV = "FTCORE_EVIL_MARKER"

CASES: dict[str, tuple[str, str]] = {
    "truncated.pt": ("torch zip checkpoint cut at 60% (no central directory)", "truncated or corrupt (bad zip archive)"),
    "corrupt.pt": ("torch zip checkpoint with one flipped byte inside a tensor record", "fails its CRC"),
    "corrupt_central_directory.pt": ("torch zip checkpoint whose central directory signature is overwritten",
                                     "truncated or corrupt (bad zip archive)"),
    "truncated_record.pt": ("torch zip checkpoint whose first tensor record is 8 bytes short inside a valid archive "
                            "(CRCs match; torch's mmap reader loads the next record's header as 2 weights)", "tensor record data/0 holds"),
    "truncated_legacy.pt": ("old (non-zip) torch pickle checkpoint cut in half", "torch checkpoint is truncated or corrupt"),
    "truncated.safetensors": ("safetensors file cut inside the tensor data", "not a readable safetensors file"),
    "bad_header.safetensors": ("safetensors file whose JSON header is malformed", "not a readable safetensors file"),
    "truncated_mindspore.ckpt": ("MindSpore checkpoint cut inside a tensor", "not a readable MindSpore checkpoint"),
    "garbage_mindspore.ckpt": ("protobuf-looking first byte followed by random bytes", "not a readable MindSpore checkpoint"),
    "empty.ckpt": ("zero bytes", "checkpoint file is empty"),
    "evil_pickle.pt": ("torch checkpoint whose unpickling calls exec() (harmless marker-file payload)",
                       "refusing to unpickle"),
    "needs_trust.pt": ("valid old-style checkpoint holding a datetime.date beside its Namespace and numpy "
                       "scalars (loads only with the opt-in)", "refusing to unpickle"),
    "not_a_checkpoint.ckpt": ("a text file with a checkpoint's name", "unrecognised checkpoint format"),
    # what a tired user passes instead of the weights
    "lfs_pointer.ckpt": ("a Git LFS pointer file (the repository was cloned without `git lfs pull`)", "git lfs pull"),
    "html_error_page.pt": ("an HTML login page saved under the checkpoint's name (a failed download)", "web page"),
    "gzipped.pt": ("a gzip-compressed torch checkpoint", "decompress it first"),
    "tar_archive.ckpt": ("a tar archive holding a checkpoint (a release tarball, not extracted)", "tar archive"),
    "numpy_array.pt": ("a numpy .npy array saved with a .pt name", "numpy .npy array"),
    "npz_archive.pt": ("a numpy .npz archive (a zip of .npy files) with a .pt name", "numpy .npz archive"),
    "zipped_folder.pt": ("a zip of a folder holding a checkpoint", "zipped folder"),
    "hdf5_file.ckpt": ("an HDF5 file (an .h5ad data set) passed as the checkpoint", "HDF5 file"),
    "json_config.pt": ("the run's JSON config passed as the checkpoint", "JSON text"),
    "tiny.safetensors": ("5 bytes of a safetensors download", "unrecognised checkpoint format"),
    "huge_header.safetensors": ("safetensors file whose header length field is 2**60", "not a readable safetensors file"),
    "offsets_beyond.safetensors": ("safetensors header whose tensor offsets run past the end of the file",
                                   "not a readable safetensors file"),
    "unknown_dtype.safetensors": ("safetensors header naming a dtype that does not exist", "not a readable safetensors file"),
    "missing_record.pt": ("torch zip checkpoint with one tensor record removed from a valid archive",
                          "tensor record data/1 is missing"),
    "evil_legacy.pt": ("old (non-zip) torch pickle whose unpickling calls exec()", "refusing to unpickle"),
    "evil_plain_pickle.pkl": ("a plain pickle (not torch) that calls os.system-like code when loaded",
                              "refusing to unpickle"),
}


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"encoder.weight": torch.randn(32, 16, generator=g), "encoder.bias": torch.randn(32, generator=g),
            "head.weight": torch.randn(4, 32, generator=g)}


def _member_offset(path: Path, suffix: str) -> tuple[int, int]:
    """(start, size) of the raw bytes of the zip member ending with `suffix`."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


class _Evil:
    """Unpickles to exec(CODE): with FTCORE_EVIL_MARKER set, writes the marker file; else nothing."""

    CODE = (
        "import os\n"
        f"p = os.environ.get({MARKER_ENV!r})\n"
        "if p:\n"
        "    open(p, 'w').write('pwned')\n"
    )

    def __reduce__(self):
        return (exec, (self.CODE,))


def make(out: Path = HERE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)

    full = out / "_full.pt"
    torch.save({"state_dict": _weights(), "epoch": 3}, full)
    data = full.read_bytes()
    (out / "truncated.pt").write_bytes(data[: int(len(data) * 0.6)])

    corrupt = bytearray(data)
    start, size = _member_offset(full, "data/0")
    corrupt[start + size // 2] ^= 0xFF
    (out / "corrupt.pt").write_bytes(bytes(corrupt))

    cd = bytearray(data)
    i = cd.rfind(b"PK\x01\x02")
    while i >= 0:  # every central directory entry's signature
        cd[i : i + 4] = b"XX\x01\x02"
        i = cd.rfind(b"PK\x01\x02", 0, i)
    (out / "corrupt_central_directory.pt").write_bytes(bytes(cd))
    with zipfile.ZipFile(full) as zin, zipfile.ZipFile(out / "truncated_record.pt", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():  # rewritten member by member: a valid archive, one record short
            record = zin.read(info.filename)
            zout.writestr(info, record[:-8] if info.filename.endswith("/data/0") else record)
    full.unlink()

    legacy = out / "_legacy.pt"
    torch.save(_weights(1), legacy, _use_new_zipfile_serialization=False)
    raw = legacy.read_bytes()
    (out / "truncated_legacy.pt").write_bytes(raw[: len(raw) // 2])
    legacy.unlink()

    from safetensors.torch import save_file

    st = out / "_full.safetensors"
    save_file(_weights(2), str(st))
    raw = st.read_bytes()
    (out / "truncated.safetensors").write_bytes(raw[: len(raw) - 700])
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = bytearray(raw[8 : 8 + header_len])
    header[len(header) // 2] = ord("}")  # the JSON now ends in the middle of an object
    (out / "bad_header.safetensors").write_bytes(raw[:8] + bytes(header) + raw[8 + header_len :])
    st.unlink()

    from ftcore.checkpoint import write_checkpoint

    ms = out / "_full.ckpt"
    write_checkpoint(ms, {k: v for k, v in _weights(3).items()}, fmt="mindspore")
    raw = ms.read_bytes()
    (out / "truncated_mindspore.ckpt").write_bytes(raw[: len(raw) // 2 + 3])
    ms.unlink()
    (out / "garbage_mindspore.ckpt").write_bytes(b"\x0a" + rng.integers(0, 256, 2047, dtype=np.uint8).tobytes())

    (out / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _Evil()}, out / "evil_pickle.pt")
    torch.save({"state_dict": _weights(4), "args": argparse.Namespace(lr=1e-3, depth=2),
                "best_score": np.float64(0.87), "epoch": np.int64(12), "started": datetime.date(2023, 5, 1)},
               out / "needs_trust.pt")
    (out / "not_a_checkpoint.ckpt").write_text(
        "This is a notes file that happens to be called .ckpt.\nepoch: 3, lr: 1e-4\n")

    _user_mistakes(out)
    (out / "expected.json").write_text(json.dumps(
        {name: {"what": what, "phrase": phrase} for name, (what, phrase) in CASES.items()}, indent=2) + "\n")
    lines = [
        "# Bad checkpoints",
        "",
        "Small broken or unsafe checkpoint files of every format `ftcore.checkpoint.read_state_dict` reads.",
        "Each must give a one-line `UserError` naming the file and containing the phrase below (CLIs: one",
        "`error: ...` line on stderr, non-zero exit, nothing half-written). Regenerate with",
        "`python tests/bad_inputs/checkpoints/make_corpus.py`; `expected.json` holds the same table.",
        "",
        "| file | what it is | expected phrase in the error |",
        "|---|---|---|",
        *[f"| `{name}` | {what} | `{phrase}` |" for name, (what, phrase) in CASES.items()],
        "",
        "`evil_pickle.pt` calls `exec` when fully unpickled; the payload only writes a marker file at the path in",
        f"`${MARKER_ENV}` (nothing when unset). `needs_trust.pt` is a legitimate old checkpoint that loads",
        "with `trust_pickle=True` / `--trust-checkpoint`; without the opt-in it is refused like the evil one",
        "(its Namespace and numpy scalars alone would load: `ftcore.checkpoint.inert`; the datetime does not).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))
    for name in CASES:
        size = (out / name).stat().st_size
        assert size < 50_000, (name, size)


def _user_mistakes(out: Path) -> None:
    import gzip
    import io
    import tarfile

    good = io.BytesIO()
    torch.save({"state_dict": _weights(5)}, good)
    raw = good.getvalue()
    (out / "lfs_pointer.ckpt").write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 420318577\n")
    (out / "html_error_page.pt").write_text(
        "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in to download.</body></html>\n")
    (out / "gzipped.pt").write_bytes(gzip.compress(raw, mtime=0))
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("release/model.pt")
        info.size, info.mtime = len(raw), 0
        tar.addfile(info, io.BytesIO(raw))
    (out / "tar_archive.ckpt").write_bytes(tar_buf.getvalue())
    npy = io.BytesIO()
    np.save(npy, np.arange(12, dtype=np.float32).reshape(3, 4))
    (out / "numpy_array.pt").write_bytes(npy.getvalue())
    with zipfile.ZipFile(out / "npz_archive.pt", "w") as zf:
        zf.writestr(zipfile.ZipInfo("encoder_weight.npy", (1980, 1, 1, 0, 0, 0)), npy.getvalue())
    with zipfile.ZipFile(out / "zipped_folder.pt", "w") as zf:
        zf.writestr(zipfile.ZipInfo("checkpoints/best.pt", (1980, 1, 1, 0, 0, 0)), raw)
    (out / "hdf5_file.ckpt").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(504))
    (out / "json_config.pt").write_text(json.dumps({"lr": 1e-4, "epochs": 3, "model": "state_sm"}, indent=1) + "\n")
    (out / "tiny.safetensors").write_bytes(b"\x10\x00\x00\x00\x00")

    def safetensors_with(header: dict, data: bytes) -> bytes:
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + data

    four = np.arange(4, dtype=np.float32).tobytes()
    (out / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2**60) + b'{"w": {}}' + four)
    (out / "offsets_beyond.safetensors").write_bytes(
        safetensors_with({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, four))
    (out / "unknown_dtype.safetensors").write_bytes(
        safetensors_with({"w": {"dtype": "F7", "shape": [4], "data_offsets": [0, 16]}}, four))

    full = out / "_two.pt"
    torch.save({"a": torch.ones(3), "b": torch.zeros(5)}, full)
    with zipfile.ZipFile(full) as zin, zipfile.ZipFile(out / "missing_record.pt", "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not info.filename.endswith("/data/1"):
                zout.writestr(info, zin.read(info.filename))
    full.unlink()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _Evil()}, out / "evil_legacy.pt",
               _use_new_zipfile_serialization=False)
    import pickle

    (out / "evil_plain_pickle.pkl").write_bytes(pickle.dumps({"weights": [0.1, 0.2], "hook": _Evil()}, protocol=4))


if __name__ == "__main__":
    make()
    print(f"wrote {len(CASES)} files to {HERE}")
