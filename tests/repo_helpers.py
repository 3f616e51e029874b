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


# --- the bad-input harness every package's corpus test uses ----------------------------------------
# A bad input gets exit 2 and ONE `error:` line (no traceback, no usage block), and leaves no new file
# anywhere under the watched directories.

def files_under(*dirs: Path) -> set[Path]:
    """Every file and directory below `dirs` (the watched output places of a case)."""
    found: set[Path] = set()
    for d in dirs:
        d = Path(d)
        if d.exists():
            found |= {d} | set(d.rglob("*"))
    return found


def run_cli(main, argv: list[str], capsys) -> tuple[int, str]:
    """Call a package's `main(argv)`; (exit code, stderr). argparse's SystemExit counts as its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    return code, capsys.readouterr().err.strip()


def assert_one_line_error(code: int, err: str, phrase: str | None = None) -> None:
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}, expected 2: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    if phrase is not None:
        assert phrase in err, f"{phrase!r} not in: {err}"


def check_bad_input(main, argv: list[str], capsys, phrase: str | None, watch: tuple[Path, ...]) -> str:
    """Run one corpus case: one `error:` line naming `phrase`, exit 2, nothing new under `watch`."""
    before = files_under(*watch)
    code, err = run_cli(main, argv, capsys)
    assert_one_line_error(code, err, phrase)
    left = sorted(str(p) for p in files_under(*watch) - before)
    assert not left, f"left behind: {left}"
    return err


def check_clean_outcome(main, argv: list[str], capsys, watch: tuple[Path, ...]) -> tuple[int, str]:
    """The fuzzing contract: success (exit 0), or exit 2 with one `error:` line and nothing new written."""
    before = files_under(*watch)
    code, err = run_cli(main, argv, capsys)
    assert "Traceback" not in err, err
    if code != 0:
        assert_one_line_error(code, err)
        left = sorted(str(p) for p in files_under(*watch) - before)
        assert not left, f"exit {code} left behind: {left} ({err})"
    return code, err


def numeric_texts():
    """A hypothesis strategy: what a tired user types for a number (good and bad), as text."""
    from hypothesis import strategies as st

    junk = st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-1e400", "", " ", "1,5", "0x10", "1e", "--",
                            "None", "null", "true", "1/3", "½", "1_000", "+3", "-0", "0.0", "3.", ".5", "1e-400"])
    return st.one_of(junk, st.integers(-2**70, 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.floats(-1e3, 1e3).map(lambda x: f"{x:g}"))


def fuzz_settings(default_examples: int):
    """hypothesis settings of the CLI fuzz tests: FTCORE_FUZZ_EXAMPLES examples per test (else the package's
    default, small enough for CI), the same examples every run (derandomize), no example database on disk."""
    import os

    from hypothesis import HealthCheck, settings

    return settings(max_examples=int(os.environ.get("FTCORE_FUZZ_EXAMPLES", default_examples)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# --- the run directory contract every package's train command keeps (ftcore.rundir) -----------------
# A run directory is resumed only by the same result-shaping settings; other settings are refused (ONE
# `error:` line naming the changed keys old -> new and the two ways out) before anything is written, and
# `--overwrite` starts fresh there.

def snapshot(directory: Path) -> dict[Path, bytes]:
    """Every file below `directory` with its bytes (a refusal must leave them all as they were)."""
    directory = Path(directory)
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def check_changed_config_refused(main, argv: list[str], run_dir: Path, capsys, changes: list[str]) -> str:
    """`argv` (other settings into `run_dir`): exit 2, one line naming each of `changes` ('key old -> new')
    and both ways out, and not a byte changed under `run_dir`."""
    before = snapshot(run_dir)
    assert before, f"{run_dir} holds no run to protect"
    code, err = run_cli(main, argv, capsys)
    assert_one_line_error(code, err, "holds results of a run with other settings (changed: ")
    for change in changes:
        assert change in err, f"{change!r} not in: {err}"
    assert "--overwrite to start fresh" in err and "choose another" in err, err
    assert snapshot(run_dir) == before, "the refused command changed the run directory"
    return err


def run_ok(main, argv: list[str], capsys) -> str:
    """`main(argv)` succeeds; its stdout."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    return out


def read_run_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())
