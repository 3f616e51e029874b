"""The var-st image, built and smoke-run with a real container engine on every CI run.

The same code as `./nox -s images` (docker/images.py): start the engine (apt-get docker.io and
dockerd when needed), make the local Debian base if no registry is reachable, build
docker/Dockerfile for var-st (CPU), then --help/--version, the demo writing into a mounted /work,
a run on an input file from a mounted /data, a bad input (exit 2, one `error:` line), each as the
image's user and as an arbitrary --user uid, and `docker stop` ending the default demo (exit 143).

Takes ~8 min on a fresh 2-core machine (most of it pip inside the build); the noxfile's tests session
puts this file first so it overlaps the other tests under pytest-xdist. No engine -> a loud skip with
the reason (`-rs` shows it in the summary); FT_IMAGES=0 skips it on purpose, also visibly.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from repo_helpers import ROOT

_spec = importlib.util.spec_from_file_location("ft_images", ROOT / "docker" / "images.py")
images = importlib.util.module_from_spec(_spec)
sys.modules["ft_images"] = images  # dataclasses look their module up by name
_spec.loader.exec_module(images)

PACKAGE = "var-st"


@pytest.fixture(scope="module")
def engine():
    if os.environ.get("FT_IMAGES") == "0":
        pytest.skip("IMAGE NOT BUILT: FT_IMAGES=0 turns the var-st image build + smoke run off")
    reason = images.ensure_engine()
    if reason:
        pytest.skip(f"IMAGE NOT BUILT: no container engine could be started: {reason}")


def test_smoke_specs_cover_every_package():
    from repo_helpers import packages

    assert sorted(images.SMOKE) == sorted(packages())
    for name, spec in images.SMOKE.items():
        assert spec.dist == packages()[name]["dist"]
        for item in spec.inputs:
            assert (images.CORPUS / name / item).exists(), f"{name}: smoke input {item} is not in tests/bad_inputs"


def test_var_st_image_builds_and_smoke_runs(engine):
    base = images.ensure_base()
    extra = images.stage_context("cpu")
    seconds = images.build(PACKAGE, "cpu", base, extra)
    image = images.image_name(PACKAGE, "cpu")
    size = images.image_size(image)
    checks = images.smoke(PACKAGE, image)
    print(f"\n{image}: built in {seconds:.0f} s, {size / 1e9:.2f} GB on {base}")
    for line in checks:
        print(f"  ok: {line}")
