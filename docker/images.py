#!/usr/bin/env python3
"""Build the package images from docker/Dockerfile and smoke-run them, with a real engine.

    python3 docker/images.py                      # all five, CPU variant (what `./nox -s images` runs)
    python3 docker/images.py var-st --variant cuda --no-smoke
    python3 docker/images.py --report docker/images.md   # also write the size / build-time table

Everything an image needs on a bare machine, in order: a container engine (Debian's docker.io,
installed with apt-get when we are root and it is missing; dockerd started in the background with
no iptables/bridge setup, overlay2 first, vfs if that fails), a base image (the Dockerfile's pinned
registry base if it is present or pullable, else a local Debian bookworm rootfs with python3 + venv +
ca-certificates made by mmdebstrap and `docker import`ed), the build context's docker/local/ (the
host pip's CA bundle; for the CPU variant torch's CPU wheel), then `docker build` (classic builder,
--network host: it reaches PyPI as the host does) and the smoke runs of SMOKE below.

Standard library only: tests/test_images.py imports it (CI builds and runs var-st inside
`./nox -s tests`), the `images` nox session runs it as a script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
LOCAL = ROOT / "docker" / "local"  # build-context additions of this machine (docker/local/README.md)
LOCAL_BASE = "ft-local/bookworm-python3:3.11"  # made here when no registry base is reachable
TORCH = "2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
IMAGE_UID = 10001  # the image's user (docker/Dockerfile)
OTHER_UID = 4321  # an arbitrary `docker run --user` uid with no passwd entry
LOG_DIR = Path(tempfile.gettempdir()) / "ft-images"
CORPUS = ROOT / "tests" / "bad_inputs"


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def sh(*cmd: str, timeout: float | None = None, check: bool = False, env: dict | None = None,
       **kw) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                         env=None if env is None else {**os.environ, **env}, **kw)
    if check and run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run


def logged(name: str, *cmd: str, env: dict | None = None, timeout: float | None = None) -> tuple[int, Path]:
    """Run cmd with its output in LOG_DIR/name.log; (exit code, log path)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / f"{name}.log"
    with path.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                              env=None if env is None else {**os.environ, **env}).returncode
    return code, path


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


# ---------------------------------------------------------------- engine

def engine_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return sh("docker", "version", "--format", "{{.Server.Version}}", timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_engine() -> str | None:
    """A running engine: None when there is one (already, or started now), else why there is none."""
    if engine_ready():
        return None
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if shutil.which("dockerd") is None:
        if not (is_root and shutil.which("apt-get")):
            return "no container engine (dockerd) and not root with apt-get to install docker.io"
        log("installing Debian's docker.io (apt-get)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        code, path = logged("apt-docker", "sh", "-c", "apt-get update -q && apt-get install -y -q --no-install-recommends "
                            "docker.io", env=env, timeout=900)
        if code != 0 or shutil.which("dockerd") is None:
            return f"apt-get install docker.io failed (exit {code}); {path}:\n{tail(path, 15)}"
    if not is_root:
        return "dockerd is installed but not running, and only root can start it here"
    # no iptables / bridge: builds use --network host, smoke runs --network none
    base = ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none"]
    tried = []
    for extra in ([], ["--storage-driver=vfs"]):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        path = LOG_DIR / f"dockerd{'-vfs' if extra else ''}.log"
        log(f"starting {' '.join(base + extra)} (log {path})")
        proc = subprocess.Popen(base + extra, stdout=path.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(60):
            if proc.poll() is not None:
                break
            if engine_ready():
                log(f"engine up: dockerd pid {proc.pid} ({' '.join(extra) or 'default storage driver'})")
                return None
            time.sleep(1)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        tried.append(f"{' '.join(base + extra)}: {tail(path, 5)}")
    return "dockerd did not start:\n" + "\n".join(tried)


# ---------------------------------------------------------------- base image

def default_base() -> str:
    return re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M).group(1)


def have_image(name: str) -> bool:
    return sh("docker", "image", "inspect", name).returncode == 0


def ensure_base(requested: str | None = None) -> str:
    """The BASE_IMAGE to build on: the requested one, the Dockerfile's registry default, or a local one."""
    if requested:
        if not have_image(requested):
            sh("docker", "pull", requested, check=True, timeout=900)
        return requested
    registry = default_base()
    if have_image(registry):
        return registry
    try:
        if sh("docker", "pull", registry, timeout=300).returncode == 0:
            return registry
    except subprocess.TimeoutExpired:
        pass
    log(f"registry base {registry} not reachable: using the local Debian bookworm base {LOCAL_BASE}")
    if not have_image(LOCAL_BASE):
        make_local_base()
    return LOCAL_BASE


def make_local_base() -> None:
    """Debian bookworm with python3, python3-venv, ca-certificates (mmdebstrap), as LOCAL_BASE."""
    if shutil.which("mmdebstrap") is None:
        code, path = logged("apt-mmdebstrap", "sh", "-c", "apt-get update -q && apt-get install -y -q mmdebstrap",
                            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
        if code != 0:
            raise RuntimeError(f"apt-get install mmdebstrap failed; {path}:\n{tail(path)}")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        t0 = time.monotonic()
        # no documentation, man pages or translations in the image (copyright files stay)
        code, path = logged(
            "mmdebstrap", "mmdebstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "--aptopt=Acquire::Retries \"3\"",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/info/*",
            "bookworm", str(tar), "http://deb.debian.org/debian", timeout=1800)
        if code != 0:
            raise RuntimeError(f"mmdebstrap failed; {path}:\n{tail(path)}")
        sh("docker", "import", "--change", 'CMD ["/bin/bash"]', "--message", "mmdebstrap bookworm minbase "
           "+ python3 python3-venv ca-certificates (docker/images.py)", str(tar), LOCAL_BASE, check=True, timeout=600)
        log(f"made {LOCAL_BASE} in {time.monotonic() - t0:.0f} s ({image_size(LOCAL_BASE) / 1e6:.0f} MB)")


# ---------------------------------------------------------------- build context

def host_ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (a network may intercept TLS with its own CA)."""
    candidates = [os.environ.get("PIP_CERT")]
    got = sh(sys.executable, "-m", "pip", "config", "get", "global.cert")
    candidates.append(got.stdout.strip() if got.returncode == 0 else None)
    candidates += ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def cpu_wheel() -> Path | None:
    found = sorted((LOCAL / "torch-cpu").glob(f"torch-{TORCH}+cpu-cp311-*.whl"))
    return found[-1] if found else None


def stage_context(variant: str) -> dict[str, str]:
    """Fill docker/local/; the extra --build-arg values the build then needs."""
    LOCAL.mkdir(exist_ok=True)
    ca = host_ca_bundle()
    here = LOCAL / "ca-bundle.crt"
    if ca and (not here.exists() or here.read_bytes() != ca.read_bytes()):  # unchanged: leave it (a build may be reading it)
        shutil.copyfile(ca, here)
    if variant != "cpu" or cpu_wheel():
        return {}
    # the image's python is 3.11 (Debian bookworm): ask for that wheel whatever python runs this
    target = ["--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
              "--platform", "manylinux_2_28_x86_64", "--retries", "1", "--timeout", "30"]
    with tempfile.TemporaryDirectory() as tmp:
        for index in (["--index-url", CPU_INDEX], []):  # then the host pip's own sources (find-links, a local disk)
            sh(sys.executable, "-m", "pip", "download", f"torch=={TORCH}", *target, *index, "-d", tmp, timeout=1800)
            wheels = [w for w in Path(tmp).glob("torch-*.whl") if "+cpu" in w.name]
            if wheels:
                (LOCAL / "torch-cpu").mkdir(exist_ok=True)
                shutil.move(str(wheels[0]), LOCAL / "torch-cpu" / wheels[0].name)
                log(f"CPU wheel for the build: docker/local/torch-cpu/{wheels[0].name}")
                return {}
            for w in Path(tmp).glob("*.whl"):
                w.unlink()  # PyPI's default wheel is the CUDA build: not for the CPU image
    log(f"no CPU torch wheel from the host's pip: the build will ask {CPU_INDEX}")
    return {"TORCH_INDEX_URL": CPU_INDEX}


# ---------------------------------------------------------------- build

def image_name(package: str, variant: str) -> str:
    return f"ft/{package}:{variant}"


def image_size(name: str) -> int:
    return int(sh("docker", "image", "inspect", "--format", "{{.Size}}", name, check=True).stdout.strip())


def build(package: str, variant: str, base: str, extra_args: dict[str, str] | None = None) -> float:
    """docker build of one image; its wall time in seconds."""
    args = {"PACKAGE": package, "TORCH_VARIANT": variant, "BASE_IMAGE": base, **(extra_args or {})}
    cmd = ["docker", "build", "--network", "host", "-f", str(DOCKERFILE.relative_to(ROOT)),
           *(x for k, v in args.items() for x in ("--build-arg", f"{k}={v}")), "-t", image_name(package, variant), "."]
    log(f"building {image_name(package, variant)}: DOCKER_BUILDKIT=0 {' '.join(cmd)}")
    t0 = time.monotonic()
    code, path = logged(f"build-{package}-{variant}", *cmd, env={"DOCKER_BUILDKIT": "0"}, timeout=3600)
    seconds = time.monotonic() - t0
    if code != 0:
        raise RuntimeError(f"docker build of {package} ({variant}) failed after {seconds:.0f} s; {path}:\n{tail(path)}")
    log(f"built {image_name(package, variant)} in {seconds:.0f} s, {image_size(image_name(package, variant)) / 1e9:.2f} GB")
    return seconds


def largest_parts(name: str, n: int = 4) -> list[tuple[str, int]]:
    """The n largest entries of the image's site-packages, (name, bytes)."""
    run = sh("docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", name, "-c",
             "du -sk /opt/venv/lib/python3*/site-packages/* | sort -n | tail -n " + str(n), check=True, timeout=300)
    parts = [line.split("\t") for line in run.stdout.strip().splitlines()]
    return [(Path(p).name, int(k) * 1024) for k, p in reversed(parts)]


# ---------------------------------------------------------------- smoke runs

@dataclasses.dataclass
class Smoke:
    """What one image must do. Paths: /data = the inputs (read-only mount), relative = /work (the outputs)."""
    dist: str
    inputs: list[str]  # files or dirs under tests/bad_inputs/<package>/ copied into the /data volume
    demo: list[str]  # the package's demo, made tiny: must write `demo_writes` under /work
    demo_writes: str
    read: list[str]  # a run on an input file from /data: must write `read_writes`
    read_writes: str
    bad: list[str]  # a bad input file from /data: exit 2, one `error:` line containing `phrase`
    phrase: str
    write: dict[str, str] = dataclasses.field(default_factory=dict)  # extra files for /data: name -> text
    stop: list[str] = dataclasses.field(default_factory=list)  # the long run `docker stop` ends: the default demo


_SPATIAL_TINY = [x for s in json.loads((CORPUS / "spatial-transfer" / "expected.json").read_text())["tiny_sets"]
                 for x in ("--set", s)] if (CORPUS / "spatial-transfer" / "expected.json").exists() else []
_STATE_TRAIN = ["train", "data.kwargs.pert_col=gene", "data.kwargs.cell_type_key=cell_type",
                "data.kwargs.batch_col=gem_group", "data.kwargs.control_pert=non-targeting", "training.max_steps=2",
                "training.batch_size=4", "training.val_freq=2", "training.ckpt_every_n_steps=2", "training.progress=false",
                "model=state_sm", "model.kwargs.hidden_dim=32", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
                "model.kwargs.head_dim=16", "model.kwargs.intermediate_size=64", "model.kwargs.n_encoder_layers=2",
                "model.kwargs.n_decoder_layers=2", "model.kwargs.cell_set_len=8", "output_dir=runs/state-tx/smoke"]

SMOKE: dict[str, Smoke] = {
    "var-st": Smoke(
        dist="var-st", inputs=["good.h5ad", "tiny.yaml", "tiny_complete.ckpt", "missing_histology.h5ad"],
        # var-st keeps the user's logs/<dataset>/ layout: with /work mounted it lands in the volume
        demo=["train", "--dataset", "/data/good.h5ad", "--config", "/data/tiny.yaml", "--num_genes", "12",
              "--epochs", "1", "--training_stage", "1", "--gpus", "0"],
        demo_writes="logs/good/TWO_STAGE_VAR_ST/stage1_vqvae/best_vqvae.ckpt",
        read=["predict", "--checkpoint", "/data/tiny_complete.ckpt", "--dataset", "/data/good.h5ad",
              "--output", "runs/var-st/pred.h5ad", "--gpus", "0"],
        read_writes="runs/var-st/pred.h5ad",
        bad=["predict", "--checkpoint", "/data/tiny_complete.ckpt", "--dataset", "/data/missing_histology.h5ad",
             "--output", "runs/var-st/bad.h5ad", "--gpus", "0"],
        phrase="obsm['histology'] (histology features) is missing"),
    "cellfm-ft": Smoke(
        dist="cellfm-ft", inputs=["not_cellfm.ckpt"],
        demo=["demo", "--dataset", "synthetic", "--max-steps", "2", "--no-progress"],
        demo_writes="runs/cellfm-ft/demo",
        # the demo's own outputs, read back from the /work volume: its fine-tuned model on its data
        read=["predict", "--model", "runs/cellfm-ft/demo/finetune/best_model.pth", "--data",
              "runs/cellfm-ft/demo/inputs/synthetic_pbmc.h5ad", "--output", "runs/cellfm-ft/smoke/pred.h5ad"],
        read_writes="runs/cellfm-ft/smoke/pred.h5ad",
        bad=["convert", "/data/not_cellfm.ckpt", "--output", "runs/cellfm-ft/x.safetensors", "--config", "tiny"],
        phrase="not a CellFM checkpoint"),
    "get-yeast": Smoke(
        dist="get-yeast", inputs=["good.csv", "missing_medium_column.csv"],
        demo=["demo", "--epochs", "1", "--no-progress"],
        demo_writes="runs/get-yeast",
        read=["train", "--data", "/data/good.csv", "--model-config", "tiny", "--output", "runs/get-yeast/smoke",
              "--max-steps", "1", "--no-progress"],
        read_writes="runs/get-yeast/smoke",
        bad=["train", "--data", "/data/missing_medium_column.csv", "--model-config", "tiny", "--output",
             "runs/get-yeast/bad", "--max-steps", "1", "--no-progress"],
        phrase="missing column 'medium'"),
    "spatial-transfer": Smoke(
        dist="spatial-transfer", inputs=["good"],
        # the embedded demo data (128-d nuclear features) with a short schedule; the tiny sizes fit the corpus only
        demo=["run", "--no-progress", "--device", "cpu", "--epochs", "1", "--bulk-epochs", "1", "--folds", "2"],
        demo_writes="runs/spatial-transfer",
        read=["run", "--data", "/data/good", "--output", "runs/spatial-transfer/good", "--no-progress", "--device",
              "cpu", *_SPATIAL_TINY],
        read_writes="runs/spatial-transfer/good",
        bad=["run", "--data", "/data/good", "--output", "runs/spatial-transfer/bad", "--no-progress", "--device", "cpu",
             *_SPATIAL_TINY, "--folds", "10"],
        phrase="10 folds but only 3 samples"),
    "state-tx": Smoke(
        dist="state-tx", inputs=["good.h5ad", "missing_pert_col.h5ad"],
        demo=["demo", "--max-steps", "2"],
        demo_writes="runs/state-tx",
        read=[*_STATE_TRAIN, "data.kwargs.toml_config_path=/data/good.toml", "name=good"],
        read_writes="runs/state-tx/smoke/good",
        write={"good.toml": '[datasets]\nscreen = "/data/good.h5ad"\n[training]\nscreen = "train"\n',
               "bad.toml": '[datasets]\nscreen = "/data/missing_pert_col.h5ad"\n[training]\nscreen = "train"\n'},
        bad=[*_STATE_TRAIN, "data.kwargs.toml_config_path=/data/bad.toml", "name=bad"],
        phrase="no column 'gene'"),
}


class SmokeFailure(AssertionError):
    pass


def _check(ok: bool, what: str, run: subprocess.CompletedProcess | None = None) -> None:
    if not ok:
        detail = "" if run is None else f"\nexit {run.returncode}\nstdout:\n{run.stdout[-2500:]}\nstderr:\n{run.stderr[-2500:]}"
        raise SmokeFailure(what + detail)


def _docker_run(image: str, args: list[str], *, user: str | None, volumes: dict[Path, str],
                timeout: float = 900) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "--network", "none"]
    if user:
        cmd += ["--user", user]
    for host, spec in volumes.items():
        cmd += ["-v", f"{host}:{spec}"]
    return sh(*cmd, image, *args, timeout=timeout)


def _owned_dir(parent: Path, name: str, uid: int) -> Path:
    d = parent / name
    d.mkdir()
    if os.geteuid() == 0:
        os.chown(d, uid, uid)
    else:
        d.chmod(0o777)
    return d


def smoke(package: str, image: str) -> list[str]:
    """Every check of the issue on one image; the lines of what was checked (raises SmokeFailure)."""
    spec, done = SMOKE[package], []
    version = sh("python3", "-c", "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['project']['version'])",
                 str(ROOT / "packages" / package / "pyproject.toml"), check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix=f"ft-smoke-{package}-") as tmp:
        tmp_path = Path(tmp)
        tmp_path.chmod(0o755)
        data = tmp_path / "data"
        data.mkdir()
        for name in spec.inputs:
            src = CORPUS / package / name
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, data / name)
        for name, text in spec.write.items():
            (data / name).write_text(text)
        for p in [data, *data.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        ro = {data: "/data:ro"}

        for user, uid in ((None, IMAGE_UID), (f"{OTHER_UID}:{OTHER_UID}", OTHER_UID)):
            who = "the image's user (10001)" if user is None else f"--user {user}"
            run = _docker_run(image, ["--help"], user=user, volumes={})
            _check(run.returncode == 0 and "usage:" in run.stdout, f"--help as {who}", run)
            run = _docker_run(image, ["--version"], user=user, volumes={})
            _check(run.returncode == 0 and run.stdout.startswith(f"{spec.dist} {version} (ftcore ")
                   and "torch 2.13.0" in run.stdout, f"--version as {who}", run)
            done.append(f"--help, --version as {who}: {run.stdout.strip()}")

            out = _owned_dir(tmp_path, f"out-{uid}", uid)
            for label, argv, writes in (("demo", spec.demo, spec.demo_writes), ("input run", spec.read, spec.read_writes)):
                t0 = time.monotonic()
                run = _docker_run(image, argv, user=user, volumes={**ro, out: "/work"})
                target = out / writes
                _check(run.returncode == 0, f"{label} as {who}: {' '.join(argv)}", run)
                _check(target.exists(), f"{label} as {who} did not write {writes} into the /work volume", run)
                files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
                owners = {p.stat().st_uid for p in files}
                _check(bool(files) and owners == {uid}, f"{label} as {who}: files under {writes} owned by {owners}", run)
                done.append(f"{label} as {who}: wrote {len(files)} file(s) under /work/{writes} "
                            f"(uid {uid}) in {time.monotonic() - t0:.0f} s")

            run = _docker_run(image, spec.bad, user=user, volumes={**ro, out: "/work"})
            lines = run.stderr.strip().splitlines()
            _check(run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and spec.phrase in lines[0]
                   and "Traceback" not in run.stderr, f"bad input as {who}: exit 2 and one `error:` line", run)
            done.append(f"bad input as {who}: exit 2, {lines[0]!r}")

        done.append(stop(image, spec, _owned_dir(tmp_path, "out-stop", IMAGE_UID)))
    return done


def stop(image: str, spec: Smoke, out: Path, grace: int = 30) -> str:
    """`docker stop` on the package's default demo: SIGTERM (via tini) ends it with exit 143 and one line."""
    name = f"ft-smoke-{uuid.uuid4().hex[:10]}"
    sh("docker", "run", "-d", "--name", name, "--network", "none", "-v", f"{out}:/work", image, *spec.stop, check=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # running for real: it has written into /work
            state = sh("docker", "inspect", "--format", "{{.State.Running}}", name).stdout.strip()
            _check(state == "true", f"the demo ended before docker stop:\n{sh('docker', 'logs', name).stderr[-2000:]}")
            if any(p.is_file() for p in out.rglob("*")):
                break
            time.sleep(1)
        time.sleep(2)
        t0 = time.monotonic()
        sh("docker", "stop", "--time", str(grace), name, check=True, timeout=grace + 60)
        took = time.monotonic() - t0
        code = int(sh("docker", "inspect", "--format", "{{.State.ExitCode}}", name, check=True).stdout.strip())
        logs = sh("docker", "logs", name)
        sigterm = [x for x in logs.stderr.splitlines() if "SIGTERM" in x]
        _check(code == 143 and took < grace and len(sigterm) == 1 and "Traceback" not in logs.stderr,
               f"docker stop: exit {code} after {took:.1f} s (137 = killed after the {grace} s grace)\n{logs.stderr[-2000:]}")
        return f"docker stop during the default demo: exit 143 after {took:.1f} s, {sigterm[0]!r}"
    finally:
        sh("docker", "rm", "-f", name)


# ---------------------------------------------------------------- whole run

def human(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", default=sorted(SMOKE), help="default: all five")
    parser.add_argument("--variant", choices=("cpu", "cuda"), default="cpu", help="torch wheels (default cpu)")
    parser.add_argument("--base", help="BASE_IMAGE (default: the Dockerfile's if reachable, else a local one)")
    parser.add_argument("--no-smoke", action="store_true", help="build only")
    parser.add_argument("--report", type=Path, help="write the size / build-time table (markdown) here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.packages) - set(SMOKE))
    if unknown:
        parser.error(f"unknown package(s) {unknown}; choose from {sorted(SMOKE)}")
    reason = ensure_engine()
    if reason:
        print(f"error: no container engine: {reason}", file=sys.stderr)
        return 1
    base = ensure_base(args.base)
    extra = stage_context(args.variant)
    rows, failed = [], []
    for package in args.packages:
        image = image_name(package, args.variant)
        try:
            seconds = build(package, args.variant, base, extra)
        except RuntimeError as err:
            failed.append(package)
            log(f"{package}: BUILD FAILED: {err}")
            continue
        size, parts = image_size(image), largest_parts(image)
        checks = [] if args.no_smoke else None
        if not args.no_smoke:
            try:
                checks = smoke(package, image)
                for line in checks:
                    log(f"{package}: ok: {line}")
            except SmokeFailure as err:
                failed.append(package)
                log(f"{package}: FAILED: {err}")
        rows.append((package, seconds, size, parts, "not run" if args.no_smoke else ("FAILED" if package in failed else "passed")))
    table = ["| image | build (wall) | size | largest in the venv | smoke |", "| --- | --- | --- | --- | --- |"]
    for package, seconds, size, parts, status in rows:
        table.append(f"| `{image_name(package, args.variant)}` | {seconds / 60:.1f} min | {human(size)} | "
                     + ", ".join(f"{n} {human(b)}" for n, b in parts) + f" | {status} |")
    print("\n".join(table))
    if args.report:
        args.report.write_text("\n".join(table) + "\n")
    if failed:
        print(f"error: build or smoke run failed for {', '.join(failed)} (details above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
