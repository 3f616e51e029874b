"""Every third-party module the core imports is declared in shared/pyproject.toml."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SHARED = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules() -> set[str]:
    """Top-level names of every import in shared/src, module-level or inside functions."""
    found = set()
    for path in (SHARED / "src" / "ftcore").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_is_declared():
    # required dependencies and the optional extras (imported inside the functions that need them, e.g.
    # anndata for the AnnData edge)
    project = tomllib.loads((SHARED / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project.get("optional-dependencies", {}).values()
                                              for r in extra]
    declared = {_norm(re.match(r"[A-Za-z0-9_.-]+", req).group()) for req in requirements}
    dists = importlib.metadata.packages_distributions()  # import name -> distributions (yaml -> PyYAML)
    third_party = {m for m in imported_top_level_modules()
                   if m not in sys.stdlib_module_names and m != "ftcore"}
    missing = {m for m in third_party if not {_norm(d) for d in dists.get(m, [m])} & declared}
    assert not missing, f"imported by ftcore but not in shared/pyproject.toml dependencies: {sorted(missing)}"
