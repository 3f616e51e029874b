"""Shared by the repository-level tests (a plain module: `conftest` is a name every test dir uses)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages() -> dict[str, dict]:
    """packages/<dir> -> {module, script, dist}, read from each pyproject (the noxfile reads them the same way)."""
    found = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        script, target = next(iter(project["scripts"].items()))
        found[pyproject.parent.name] = {"module": target.split(":")[0].split(".")[0], "script": script,
                                        "dist": project["name"]}
    return found
