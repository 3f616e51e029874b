"""Every case of the bad-input corpus: non-zero exit, ONE `error:` line with the expected phrase, no
traceback, and no partial output. Cases: tests/bad_inputs/get-yeast/cases.json (made by its
make_corpus.py) and the shared checkpoint corpus tests/bad_inputs/checkpoints/ fed to
`get-yeast train --checkpoint` (plus the code-running pickle with a marker check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from get_yeast.cli import main
from get_yeast.config import packaged_config

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "bad_inputs" / "get-yeast"
CHECKPOINTS = ROOT / "tests" / "bad_inputs" / "checkpoints"
TRAIN = ["train", "--data", "{corpus}/good.csv", "--model-config", "{tiny_model}", "--output", "{out}",
         "--max-steps", "1", "--no-progress"]


def _cases() -> list:
    cases = [pytest.param(c["argv"], c["phrase"], id=name)
             for name, c in json.loads((CORPUS / "cases.json").read_text()).items()]
    expected = CHECKPOINTS / "expected.json"
    if expected.exists():
        for name, c in json.loads(expected.read_text()).items():
            cases.append(pytest.param(TRAIN + ["--checkpoint", str(CHECKPOINTS / name)], c["phrase"], id=f"checkpoint/{name}"))
        # With the opt-in, the legitimate old checkpoint loads but holds no GET weights.
        cases.append(pytest.param(TRAIN + ["--checkpoint", str(CHECKPOINTS / "needs_trust.pt"), "--trust-checkpoint"],
                                  "matches the GET region model", id="checkpoint/needs_trust.pt+trust"))
    else:
        cases.append(pytest.param(None, None, id="checkpoint-corpus",
                                  marks=pytest.mark.skip(reason="tests/bad_inputs/checkpoints/ not generated yet")))
    return cases


@pytest.mark.parametrize("argv, phrase", _cases())
def test_bad_input(argv, phrase, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    subs = {"{corpus}": str(CORPUS), "{out}": str(out), "{tiny_model}": str(packaged_config("yeast_model_tiny.yaml"))}
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    code = main(args)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    assert not marker.exists()  # the pickle's payload never ran
