"""Every case of tests/bad_inputs/spatial-transfer (and the shared broken checkpoints): one `error:` line
naming the problem, a non-zero exit, no traceback, and no file left in the output directory."""

import json
import shutil
from pathlib import Path

import pytest

from spatial_transfer.cli import main

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "bad_inputs" / "spatial-transfer"
SHARED_CKPTS = REPO / "tests" / "bad_inputs" / "checkpoints"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def _shared_checkpoint_cases():
    table = SHARED_CKPTS / "expected.json"
    if not table.exists():
        return []
    cases = []
    for name, c in json.loads(table.read_text()).items():
        cases.append(pytest.param(
            {"command": "run", "what": c["what"], "env": {}, "overlay": None, "remove": [],
             "args": ["--data", "{data}", "--bulk-checkpoint", str(SHARED_CKPTS / name)],
             "phrase": c["phrase"]}, id=f"checkpoint:{name}"))
    return cases


CASES = [pytest.param(c, id=name) for name, c in EXPECTED["cases"].items()] + _shared_checkpoint_cases()


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clear_line(case, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(CORPUS / "good", data)
    if case["overlay"]:
        for f in (CORPUS / case["overlay"]).iterdir():
            shutil.copy(f, data / f.name)
    for name in case["remove"]:
        (data / name).unlink()
    for key, value in case["env"].items():
        monkeypatch.setenv(key, value)
    marker = tmp_path / "evil_ran"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    args = [a.replace("{data}", str(data)).replace("{here}", str(CORPUS)) for a in case["args"]]
    sets = [x for s in EXPECTED["tiny_sets"] for x in ("--set", s)]
    code = main([case["command"], *args, "--output", str(out), "--no-progress", "--device", "cpu", *sets])
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case["phrase"] in lines[0], (case["phrase"], lines[0])
    assert "Traceback" not in err
    assert _files_under(out) == []
    assert not marker.exists()  # the code-running pickle never ran


def test_unwritable_output_dir_is_said_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = main(["run", "--data", str(CORPUS / "good"), "--output", str(blocker / "run"), "--no-progress",
                 *[x for s in EXPECTED["tiny_sets"] for x in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: output directory") and "not writable" in err
