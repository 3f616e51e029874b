"""ftcore.distributed's rank accessors under a faked torchrun environment, and wait_for_main with two real
processes (gloo on CPU): the one place packages ask where they stand and wait for rank 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from ftcore import distributed as fd
from ftcore.errors import UserError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def alone(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_alone_is_rank_0_of_1(alone):
    assert (fd.rank(), fd.world_size(), fd.local_rank()) == (0, 1, 0)
    assert fd.is_main_process() and not fd.dist_env().enabled


@pytest.mark.parametrize("rank, local", [(0, 0), (1, 1), (3, 1)])
def test_faked_torchrun_env(alone, rank, local):
    alone.setenv("WORLD_SIZE", "4")
    alone.setenv("RANK", str(rank))
    alone.setenv("LOCAL_RANK", str(local))
    env = fd.dist_env()
    assert (env.rank, env.world_size, env.local_rank) == (rank, 4, local)
    assert (fd.rank(), fd.world_size(), fd.local_rank()) == (rank, 4, local)
    assert fd.is_main_process() is (rank == 0)
    assert env.enabled


def test_world_of_one_ignores_a_stray_rank(alone):
    # WORLD_SIZE=1 (or unset) is one process whatever RANK says: it is the main one
    alone.setenv("WORLD_SIZE", "1")
    alone.setenv("RANK", "5")
    assert fd.is_main_process() and fd.world_size() == 1


@pytest.mark.parametrize("name, value, phrase", [("WORLD_SIZE", "two", "WORLD_SIZE='two' is not a whole number"),
                                                 ("RANK", "", "RANK='' is not a whole number")])
def test_malformed_variable_is_one_line(alone, name, value, phrase):
    alone.setenv("WORLD_SIZE", "2")
    alone.setenv(name, value)
    with pytest.raises(UserError, match=phrase):
        fd.dist_env()


def test_rank_outside_the_world_is_refused(alone):
    alone.setenv("WORLD_SIZE", "2")
    alone.setenv("RANK", "2")
    with pytest.raises(UserError, match=r"RANK=2 is outside 0\.\.1"):
        fd.rank()


def test_wait_for_main_alone_returns_at_once(alone):
    fd.wait_for_main()
    assert not torch.distributed.is_initialized()  # alone it joins no process group


def test_output_cleanup_only_on_rank_0(alone, tmp_path):
    """A failed command's claimed outputs are removed by rank 0 alone (the others would race it)."""
    from ftcore.io import claim_outputs, output_guard

    for rank, removed in (("1", False), ("0", True)):
        alone.setenv("WORLD_SIZE", "2")
        alone.setenv("RANK", rank)
        out = tmp_path / f"run{rank}"
        with pytest.raises(RuntimeError):
            with output_guard():
                claim_outputs(out)
                out.mkdir()
                raise RuntimeError("fails after writing")
        assert out.exists() is not removed


WAITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch.distributed as dist
    from ftcore.distributed import is_main_process, rank, wait_for_main

    flag = Path(sys.argv[1])
    if is_main_process():
        time.sleep(1.5)  # rank 1 reaches the wait long before the file exists
        flag.write_text("written by rank 0")
    wait_for_main()  # no Trainer yet: joins the group (gloo), then the core's barrier
    print(f"rank {rank()} sees the file: {flag.exists()}", flush=True)
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wait_for_main_holds_the_other_rank_until_rank_0_wrote(tmp_path):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    flag = tmp_path / "inputs.ready"
    base = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    base.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(script), str(flag)], env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (1, 0)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert outs[0][0].strip() == "rank 1 sees the file: True"
    assert outs[1][0].strip() == "rank 0 sees the file: True"
