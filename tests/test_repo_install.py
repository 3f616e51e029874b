"""`pip install packages/<name>` in a clean venv installs the package AND the core, nothing else needed.

To stay fast and offline the clean venv sees the current environment's site-packages through a
.pth line (torch, numpy, ... are already there, so pip downloads nothing). Such a line does not
run the parent's own .pth files, so the parent's editable ftcore and packages stay invisible:
before the install `import ftcore` fails in the new venv, and afterwards ftcore must be a regular
install inside the new venv whose direct_url points at this repository's shared/. The nox session
`package(<name>)` repeats the proof in a venv with no parent at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from repo_helpers import ROOT, packages

PACKAGES = packages()


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_pip_install_package_brings_the_core(name, tmp_path):
    info = PACKAGES[name]
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    py = venv / "bin" / "python"
    site = run(py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip()
    parent = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (tmp_path / "venv" / os.path.relpath(site, venv) / "_parent_env.pth").write_text("\n".join(sorted(parent)) + "\n")

    before = run(py, "-c", "import ftcore")
    assert before.returncode != 0, "ftcore importable before the install: the venv is not clean"

    # --no-index: nothing may come from an index; --no-build-isolation: hatchling from the parent env
    # (the nox tests session installs it for this).
    install = run(py, "-m", "pip", "install", "--no-compile", "--no-index", "--no-build-isolation", "-c", ROOT / "constraints" / "cpu.txt",
                  ROOT / "packages" / name, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    probe = run(py, "-c", (
        "import json, importlib.metadata as m, ftcore, {mod}; "
        "print(json.dumps({{'ftcore': ftcore.__file__, 'mod': {mod}.__file__, "
        "'url': json.loads(m.distribution('ftcore').read_text('direct_url.json'))['url']}}))").format(mod=info["module"]),
        cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-2000:]
    where = json.loads(probe.stdout)
    assert where["ftcore"].startswith(site), f"ftcore imported from {where['ftcore']}, not the new venv"
    assert where["mod"].startswith(site), f"{info['module']} imported from {where['mod']}, not the new venv"
    assert where["url"].rstrip("/") == (ROOT / "shared").as_uri(), f"ftcore installed from {where['url']}"
    # the data beside the code comes along (ftcore's Visium files + LICENSE.squidpy, cellfm-ft's wu2020 + its
    # licence, packaged templates): every non-Python file of the source tree is in the installed copy
    for src, module in ((ROOT / "shared" / "src" / "ftcore", "ftcore"),
                        (ROOT / "packages" / name / "src" / info["module"], info["module"])):
        data = [p.relative_to(src) for p in src.rglob("*")
                if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
        missing = [str(rel) for rel in data if not (Path(site) / module / rel).is_file()]
        assert not missing, f"pip install packages/{name} left out {module}'s {missing}"

    helped = run(venv / "bin" / info["script"], "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]
    assert "usage" in helped.stdout.lower()
