"""Every case of tests/bad_inputs/spatial-transfer (and the shared broken checkpoints, through `run
--bulk-checkpoint` and `predict --checkpoint`): exit 2, one `error:` line naming the problem, no traceback,
nothing new in the output directory, the data directory or the corpus (repo_helpers.check_bad_input)."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from spatial_transfer.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_bad_input  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "spatial-transfer"
SHARED_CKPTS = REPO / "tests" / "bad_inputs" / "checkpoints"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
TRAINING = ("run", "pretrain", "compare")


def _shared_checkpoint_cases() -> list[tuple[str, dict]]:
    table = SHARED_CKPTS / "expected.json"
    if not table.exists():
        return []
    cases = []
    for name, c in json.loads(table.read_text()).items():
        base = {"what": c["what"], "env": {}, "overlay": None, "remove": [], "phrase": c["phrase"]}
        cases.append((f"checkpoint:{name}", {**base, "command": "run",
                                             "args": ["--data", "{data}", "--bulk-checkpoint", str(SHARED_CKPTS / name)]}))
        cases.append((f"checkpoint-predict:{name}", {**base, "command": "predict",
                                                     "args": ["--checkpoint", str(SHARED_CKPTS / name), "--data", "{data}"]}))
    return cases


# (case id, case): one entry per case (a repository test counts them)
CASES = list(EXPECTED["cases"].items()) + _shared_checkpoint_cases()


def _argv(case: dict, data: Path, out: Path) -> list[str]:
    def fill(a: str) -> str:
        return a.replace("{data}", str(data)).replace("{here}", str(CORPUS)).replace("{out}", str(out))

    args = [fill(a) for a in case["args"]]
    output = fill(case.get("output", "{out}"))
    if case["command"] in TRAINING:  # the corpus' tiny sizes first: a case's own --set wins
        # a case whose config file sets a key of the tiny sizes drops that one (--set beats the file)
        sets = [x for s in EXPECTED["tiny_sets"] if s.split("=")[0] not in case.get("drop_sets", ())
                for x in ("--set", s)]
        return [case["command"], *sets, *args, "--output", output, "--no-progress", "--device", "cpu"]
    if case["command"] == "predict":
        return ["predict", *args, "--output", output, "--device", "cpu"]
    return [case["command"], *args]


@pytest.mark.parametrize("name,case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(name, case, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(CORPUS / "good", data)
    if case["overlay"]:
        for f in (CORPUS / case["overlay"]).iterdir():
            shutil.copy(f, data / f.name)
    for fname in case["remove"]:
        (data / fname).unlink()
    for key, value in case["env"].items():
        monkeypatch.setenv(key, value)
    marker = tmp_path / "evil_ran"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    for rel in case.get("mkdirs", []):  # a run directory as a tired user left it
        (out / rel).mkdir(parents=True)
    for rel, text in case.get("files", {}).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    check_bad_input(main, _argv(case, data, out), capsys, case["phrase"],
                    watch=(out, data, CORPUS / "checkpoints", CORPUS / "configs"))
    assert not marker.exists()  # the code-running pickle never ran


def test_unwritable_output_dir_is_said_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    code = main(["run", "--data", str(CORPUS / "good"), "--output", str(blocker / "run"), "--no-progress",
                 *[x for s in EXPECTED["tiny_sets"] for x in ("--set", s)]])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: output directory") and "not writable" in err
