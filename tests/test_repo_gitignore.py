"""Running a package's demo (or any command with its default outputs) from the repository root
leaves `git status` clean: every default output path of every CLI is ignored."""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

from repo_helpers import ROOT, packages

OUTPUT_DESTS = ("output", "output_dir", "outdir", "log_dir")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def default_outputs(module: str) -> set[str]:
    """The string defaults of the CLI's output options, and the outputs of its presets."""
    cli = importlib.import_module(f"{module}.cli")
    found = {str(a.default) for p in _parsers(cli.build_parser()) for a in p._actions
             if a.dest in OUTPUT_DESTS and isinstance(a.default, (str, Path))}
    found |= {preset["output"] for preset in getattr(cli, "PRESETS", {}).values() if "output" in preset}
    return found


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout")
@pytest.mark.parametrize("name", sorted(packages()))
def test_default_outputs_are_ignored(name):
    outputs = default_outputs(packages()[name]["module"])
    assert outputs, f"{name}: no default output options found; update OUTPUT_DESTS"
    # a directory's contents, or the file itself (e.g. var-st make-demo-data writes demo.h5ad)
    probes = [f"{out.rstrip('/')}/history.json" for out in outputs] + sorted(outputs)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], input="\n".join(probes) + "\n",
                             cwd=ROOT, capture_output=True, text=True).stdout.split()
    dirs_or_files = {out for out in outputs if f"{out.rstrip('/')}/history.json" in ignored or out in ignored}
    assert dirs_or_files == outputs, f"{name}: not in .gitignore: {sorted(outputs - dirs_or_files)}"
