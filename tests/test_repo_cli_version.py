"""Every package CLI answers `--version` with its own version and the core's (what a bug report needs)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from repo_helpers import packages

PACKAGES = packages()


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_version_flag(name):
    info = PACKAGES[name]
    code = f"import sys; from {info['module']}.cli import main; sys.argv = ['{info['script']}', '--version']; main()"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert line.startswith(f"{info['dist']} {metadata.version(info['dist'])} "), line
    assert f"ftcore {metadata.version('ftcore')}" in line and "torch " in line, line
