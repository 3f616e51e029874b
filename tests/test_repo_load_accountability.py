"""Issue 19's rule, held across the packages: a pretrained load that is then frozen is checked by the core.

Every package call of ftcore's apply_freezing passes `pretrained=` (the load report, or None), so frozen
tensors no checkpoint supplied are refused; every CLI that can freeze offers the one opt-out flag.
"""

from __future__ import annotations

import ast

from repo_helpers import ROOT


def _apply_freezing_calls():
    for path in sorted(ROOT.glob("packages/*/src/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "apply_freezing":
                yield path, node


def test_every_freeze_after_a_load_passes_its_report():
    calls = list(_apply_freezing_calls())
    assert len(calls) >= 3, "spatial-transfer, cellfm-ft and get-yeast freeze pretrained weights"
    missing = [f"{p.relative_to(ROOT)}:{n.lineno}" for p, n in calls if "pretrained" not in {k.arg for k in n.keywords}]
    assert not missing, f"apply_freezing without pretrained= (the load report): {missing}"


def test_every_freezing_package_cli_has_the_opt_out():
    for path, _ in _apply_freezing_calls():
        cli = path.parent / "cli.py"
        assert "add_allow_unloaded_frozen(" in cli.read_text(), f"{cli.relative_to(ROOT)} lacks --allow-unloaded-frozen"
