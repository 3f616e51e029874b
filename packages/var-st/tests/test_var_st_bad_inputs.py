"""Every case of the bad-input corpus: exit 2, ONE `error:` line with the expected phrase, no
traceback, nothing new under the output folder, the corpus folder or the working directory.
Cases: tests/bad_inputs/var-st/cases.json (made by its make_corpus.py) and the shared checkpoint
corpus tests/bad_inputs/checkpoints/ fed to `var-st predict --checkpoint` (the code-running pickle
must not run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from var_st.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_bad_input  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "var-st"
CHECKPOINTS = REPO / "tests" / "bad_inputs" / "checkpoints"
PREDICT = ["predict", "--checkpoint", "{ckpt}", "--dataset", "{corpus}/good.h5ad", "--output", "{out}/pred.h5ad", "--gpus", "0"]


def _cases() -> list[tuple[str, list[str], str]]:
    cases = [(name, c["argv"], c["phrase"]) for name, c in json.loads((CORPUS / "cases.json").read_text()).items()]
    expected = CHECKPOINTS / "expected.json"
    if expected.exists():
        for name, c in json.loads(expected.read_text()).items():
            argv = [a.replace("{ckpt}", str(CHECKPOINTS / name)) for a in PREDICT]
            cases.append((f"checkpoint/{name}", argv, c["phrase"]))
        # with the opt-in the old-style pickle loads, and is then recognised as not a var-st model
        argv = [a.replace("{ckpt}", str(CHECKPOINTS / "needs_trust.pt")) for a in PREDICT] + ["--trust-checkpoint"]
        cases.append(("checkpoint/needs_trust.pt+trust", argv, "is not a complete var-st model"))
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    _, argv, phrase = case
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output path (logs/...) would land here
    out = tmp_path / "out"
    args = [a.replace("{corpus}", str(CORPUS)).replace("{out}", str(out)) for a in argv]
    check_bad_input(main, args, capsys, phrase, watch=(out, CORPUS, work))
    assert not marker.exists()  # the pickle's payload never ran


def test_corpus_is_large_enough():
    assert len(CASES) >= 95
