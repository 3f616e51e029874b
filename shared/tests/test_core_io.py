"""ftcore.io: output-directory checks and atomic writes (no temp files left, the mode of a plain open)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ftcore.errors import UserError
from ftcore.io import (atomic_path, atomic_savefig, atomic_torch_save, atomic_write_json, atomic_write_text,
                       check_output_dir)




def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a 0500 directory")
def test_check_output_dir_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_output_dir(locked)
        with pytest.raises(UserError, match="not writable"):
            check_output_dir(locked / "sub")
    finally:
        locked.chmod(0o700)


def test_check_output_dir_under_a_file_and_no_space(tmp_path):
    """Also runs as root: a path below a regular file cannot be created by anyone."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError) as err:
        check_output_dir(blocker / "out")
    assert "not writable" in str(err.value) and str(err.value).endswith("; choose another output directory")
    with pytest.raises(UserError, match="choose another with --output-dir$"):  # the caller's own flag
        check_output_dir(blocker / "out", flag="--output-dir")
    with pytest.raises(UserError, match="MiB free but about"):
        check_output_dir(tmp_path / "ok", need_bytes=2**62)
    assert check_output_dir(tmp_path / "ok") == tmp_path / "ok"
    assert _leftovers(tmp_path / "ok") == []


def test_atomic_writes_leave_no_temp_files(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": np.float32(1.5), "n": np.int64(3), "arr": np.arange(2), "p": tmp_path})
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    fig = plt.figure()
    atomic_savefig(fig, tmp_path / "d.png")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt", "d.png"]
    assert (tmp_path / "b.json").read_text().startswith("{")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
        (tmp_path / "plain.txt").write_text("hello")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.txt": mode, "c.pt": mode, "plain.txt": mode}


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []
    with pytest.raises(TypeError):  # not serialisable: nothing written at all
        atomic_write_json(tmp_path / "x.json", {"o": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_cli_main_turns_sigterm_into_a_clean_exit(tmp_path):
    """`docker stop` sends SIGTERM: the run unwinds (finally blocks run), prints one line and exits 143."""
    import signal
    import time

    marker = tmp_path / "cleaned"
    script = (
        "import time, sys\n"
        "from ftcore.errors import cli_main\n"
        "@cli_main\n"
        "def main():\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert time.monotonic() - start < 10
    assert marker.exists(), "finally blocks must run on SIGTERM"
    assert err.strip().splitlines() == ["terminated (SIGTERM): stopped before finishing; complete checkpoints are kept"]
