"""Shared by the repository-level tests (a plain module: `conftest` is a name every test dir uses)."""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType

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


def package_tests(name: str) -> ModuleType:
    """packages/<name>/tests/conftest.py as a module: the package's tiny sizes, not a copy of them."""
    path = ROOT / "packages" / name / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location(f"tests_of_{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
