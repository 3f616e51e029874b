"""The bad-input corpus is large enough and counted in one place (issue: >= 500 cases across the five CLIs
and the checkpoint reader). Each package's corpus module keeps its cases in a module-level `CASES` list."""

from __future__ import annotations

import importlib.util
import json

import pytest
from repo_helpers import ROOT, packages

MIN_TOTAL = 500
MIN_PER_PACKAGE = 90


def corpus_sizes() -> dict[str, int]:
    sizes = {}
    for name, info in packages().items():
        (path,) = (ROOT / "packages" / name / "tests").glob("test_*bad_inputs.py")
        spec = importlib.util.spec_from_file_location(f"corpus_of_{info['module']}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sizes[name] = len(module.CASES)
    sizes["checkpoint reader"] = len(json.loads((ROOT / "tests/bad_inputs/checkpoints/expected.json").read_text()))
    return sizes


def test_corpus_size():
    sizes = corpus_sizes()
    print(sizes)
    small = {k: v for k, v in sizes.items() if k != "checkpoint reader" and v < MIN_PER_PACKAGE}
    assert not small, f"packages below {MIN_PER_PACKAGE} cases: {small}"
    assert sum(sizes.values()) >= MIN_TOTAL, sizes


if __name__ == "__main__":  # python tests/test_repo_bad_inputs.py: the table for the README / closing note
    for name, n in corpus_sizes().items():
        print(f"{name}: {n}")
    pytest.main([__file__, "-q"])
