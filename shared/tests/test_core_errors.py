"""ftcore.errors.cli_main: one-line user errors, the OOM line, tracebacks on request, SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftcore.errors import UserError, cli_main




@cli_main
def _cli(argv):
    if argv == ["user"]:
        raise UserError("column 'cell_type' not in obs (have: a, b); pass --label-key")
    if argv == ["bug"]:
        raise ZeroDivisionError("a real bug")
    if argv == ["interrupt"]:
        raise KeyboardInterrupt
    if argv == ["oom"]:
        raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
    return None


def test_cli_main_user_error_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    assert _cli(["ok"]) == 0
    assert _cli(["user"]) == 2
    err = capsys.readouterr().err
    assert err == "error: column 'cell_type' not in obs (have: a, b); pass --label-key\n"
    assert _cli(["interrupt"]) == 130
    assert _cli(["oom"]) == 3
    assert "ran out of memory" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # real bugs keep their traceback
        _cli(["bug"])


def test_cli_main_oom_names_the_cli_batch_size_flag(capsys, monkeypatch):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    assert _cli(["oom"]) == 3
    assert "lower --batch-size " in capsys.readouterr().err  # the default: most CLIs spell it so

    @cli_main(batch_size_hint="--batch_size")
    def underscore_cli(argv):
        raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")

    assert underscore_cli(["oom"]) == 3
    assert "lower --batch_size " in capsys.readouterr().err


def test_cli_main_traceback_opt_in(monkeypatch):
    monkeypatch.setenv("FTCORE_TRACEBACK", "1")
    with pytest.raises(UserError):
        _cli(["user"])


CLI_SCRIPT = """
import sys
from ftcore.errors import UserError, cli_main

@cli_main
def main():
    raise UserError("config x.yaml: unknown key 'lr'; did you mean 'learning_rate'?")

sys.exit(main())
"""


@pytest.mark.parametrize("traceback", [False, True])
def test_cli_main_in_a_real_process(tmp_path, traceback):
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FTCORE_TRACEBACK"}
    if traceback:
        env["FTCORE_TRACEBACK"] = "1"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    if traceback:
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "UserError" in proc.stderr
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines() == ["error: config x.yaml: unknown key 'lr'; did you mean 'learning_rate'?"]
