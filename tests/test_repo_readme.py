"""README, .ci/run and noxfile agree: two commands on a fresh machine, CI runs the README's test command."""

from __future__ import annotations

import ast
import re
import tomllib

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


def _noxfile_with_a_recording_session() -> tuple[dict, list, object]:
    """The noxfile run as it is, with a stand-in `nox` module (nox is not a test dependency): its decorators
    leave the functions as written, so a session function can be called with a session that records."""
    import sys
    import types

    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()
    fake.Session = object
    fake.session = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda fn: fn))
    fake.parametrize = lambda *a, **k: (lambda fn: fn)
    calls: list = []
    recorder = types.SimpleNamespace(install=lambda *a, **k: calls.append(("install", a)),
                                     run=lambda *a, **k: calls.append(("run", a)), posargs=[])
    saved = sys.modules.get("nox")
    sys.modules["nox"] = fake
    try:
        namespace: dict = {"__file__": str(ROOT / "noxfile.py"), "__name__": "noxfile"}
        exec(compile((ROOT / "noxfile.py").read_text(), "noxfile.py", "exec"), namespace)  # noqa: S102
    finally:
        if saved is None:
            sys.modules.pop("nox")
        else:
            sys.modules["nox"] = saved
    return namespace, calls, recorder


def test_demo_session_installs_each_package_with_its_demo_extra_pinned_for_the_cpu():
    """Issue 17: `./nox -s demo` ran cellfm-ft without its [demo] extra (scanpy), so on synthetic cells."""
    namespace, calls, session = _noxfile_with_a_recording_session()
    for name, info in packages().items():
        extras = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"].get(
            "optional-dependencies", {})
        calls.clear()
        namespace["demo"](session, name)
        (install,), (run,) = [c[1] for c in calls if c[0] == "install"], [c[1] for c in calls if c[0] == "run"]
        want = f"packages/{name}[demo]" if "demo" in extras else f"packages/{name}"
        assert want in install, (name, install)
        assert install[install.index("-c") + 1] == str(ROOT / "constraints" / "cpu.txt"), install
        assert run == (info["script"],), run  # the CLI with no argument: the README's demo
    assert "demo" in tomllib.loads((ROOT / "packages" / "cellfm-ft" / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]  # the case the issue found: the test above must see one [demo] extra


def _install_lines(name: str) -> list[str]:
    """The README's `pip install packages/<name>...` lines (in a fenced or an indented code block)."""
    text = (ROOT / "packages" / name / "README.md").read_text()
    return [ln.strip() for ln in text.splitlines() if re.match(rf'\s*pip install "?packages/{name}\b', ln)]


def test_package_readmes_give_the_cpu_and_the_gpu_install_line_and_every_extra():
    """Issue 17 item 8: the install line that works on a CPU (`-c constraints/cpu.txt`: without it pip takes the
    multi-GB CUDA torch) and the one for a GPU (`-c constraints/gpu.txt`: the same pins, CUDA torch), and each
    extra of the pyproject named in the README."""
    for name in packages():
        lines = _install_lines(name)
        cpu = [ln for ln in lines if "-c constraints/cpu.txt" in ln]
        gpu = [ln for ln in lines if "-c constraints/gpu.txt" in ln]
        assert cpu and "CPU" in cpu[0], f"packages/{name}/README.md: no CPU install line with -c constraints/cpu.txt"
        assert gpu and "GPU" in gpu[0], f"packages/{name}/README.md: no GPU install line with -c constraints/gpu.txt"
        for line in cpu + gpu:
            assert re.search(rf"pip install \"?packages/{name}(\[[\w,]+\])?\"? ", line), line
        extras = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())["project"].get(
            "optional-dependencies", {})
        readme = (ROOT / "packages" / name / "README.md").read_text()
        for extra in extras:
            assert f"`[{extra}]`" in readme, f"packages/{name}/README.md does not name its extra [{extra}]"
