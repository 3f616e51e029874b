"""README, .ci/run and noxfile agree: two commands on a fresh machine, CI runs the README's test command."""

from __future__ import annotations

import ast
import re

from repo_helpers import ROOT, packages

README = (ROOT / "README.md").read_text()


def fresh_machine_commands() -> list[str]:
    section = README.split("## On a fresh machine", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_exactly_two_commands_demo_and_tests():
    commands = fresh_machine_commands()
    assert commands == ["./nox -s demo", "./nox -s tests"]


def test_ci_runs_exactly_the_readme_test_command():
    lines = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()
             if x.strip() and not x.strip().startswith("#")]
    assert lines[-1] == fresh_machine_commands()[1]
    assert "set -euo pipefail" in lines


def test_readme_lists_every_package_with_its_readme():
    for name in packages():
        assert f"[{name}](packages/{name}/README.md)" in README
        assert (ROOT / "packages" / name / "README.md").exists(), f"packages/{name}/README.md is missing"


def test_noxfile_has_the_sessions_the_readme_names():
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    names = set()
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        for deco in fn.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "session":
                explicit = [k.value.value for k in deco.keywords if k.arg == "name"]
                names.add(explicit[0] if explicit else fn.name)
    assert {"tests", "test-gpu", "bench", "lint", "demo", "package"} <= names
    for name in ("tests", "test-gpu", "bench", "lint", "demo", "package"):
        assert f"`{name}" in README, f"README does not describe nox session {name}"


LAYOUT = ("cli.py", "config.py", "data.py", "model.py", "train.py", "predict.py", "synthetic.py")


def test_every_package_has_the_layout_the_readme_documents():
    section = README.split("### One package layout", 1)[1].split("\n## ", 1)[0]
    assert [m for m in re.findall(r"^\| `(\w+\.py)` \|", section, re.M)] == list(LAYOUT)
    extras = {(pkg, name.strip("`/")) for pkg, names in re.findall(r"^\| ([a-z-]+) \| (`[^|]+`) \|", section, re.M)
              for name in names.replace("`", "").split(", ")}
    for name, info in packages().items():
        src = ROOT / "packages" / name / "src" / info["module"]
        have = {p.name for p in src.iterdir() if (p.suffix == ".py" and p.name != "__init__.py")
                or (p.is_dir() and (p / "__init__.py").exists())}
        missing = [m for m in LAYOUT if m not in have]
        assert not missing, f"{name}: no {missing} (README: One package layout)"
        undocumented = sorted(m for m in have - set(LAYOUT) if (name, m) not in extras)
        assert not undocumented, f"{name}: {undocumented} are not in the README's table of extra modules"
