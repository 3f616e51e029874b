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


if __name__ == "__main__":
    make()
    print(f"wrote {len(CASES)} files to {HERE}")
