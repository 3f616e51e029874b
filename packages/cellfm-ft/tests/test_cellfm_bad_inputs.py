"""Every case of the bad-input corpus: non-zero exit, ONE `error:` line with the expected phrase,
no traceback, and no partial output. Cases: tests/bad_inputs/cellfm-ft/cases.json (made by its
make_corpus.py; {model} is a best_model.pth of a tiny run) and the shared checkpoint corpus tests/bad_inputs/checkpoints/ fed to
`cellfm-ft train --checkpoint` (plus the code-running pickle with a marker check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellfm_ft.cli import main

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "bad_inputs" / "cellfm-ft"
CHECKPOINTS = ROOT / "tests" / "bad_inputs" / "checkpoints"
TRAIN = ["train", "--data", "{data}", "--label-key", "cell_type", "--checkpoint", "{ckpt}", "--config", "tiny",
         "--output", "{out}", "--max-steps", "1", "--no-progress"]


def _restricted(argv: list[str], phrase: str) -> list[str]:
    """`train` keeps every data gene by default now (a fresh gene_emb for the user's genes), so "no gene in
    the model vocabulary" can only happen when the genes are restricted to the checkpoint's vocabulary."""
    if argv[0] == "train" and "is in the model vocabulary" in phrase:
        return [*argv, "--checkpoint-vocab"]
    return argv


def _cases() -> list:
    cases = [pytest.param(_restricted(c["argv"], c["phrase"]), c["phrase"], id=name)
             for name, c in json.loads((CORPUS / "cases.json").read_text()).items()]
    expected = CHECKPOINTS / "expected.json"
    if expected.exists():
        for name, c in json.loads(expected.read_text()).items():
            argv = [a.replace("{ckpt}", str(CHECKPOINTS / name)) for a in TRAIN]
            cases.append(pytest.param(argv, c["phrase"], id=f"checkpoint/{name}"))
        # With the opt-in, the legitimate old checkpoint loads but is not CellFM.
        argv = [a.replace("{ckpt}", str(CHECKPOINTS / "needs_trust.pt")) for a in TRAIN] + ["--trust-checkpoint"]
        cases.append(pytest.param(argv, "not a CellFM checkpoint", id="checkpoint/needs_trust.pt+trust"))
    else:
        cases.append(pytest.param(None, None, id="checkpoint-corpus",
                                  marks=pytest.mark.skip(reason="tests/bad_inputs/checkpoints/ not generated yet")))
    return cases


@pytest.mark.parametrize("argv, phrase", _cases())
def test_bad_input(argv, phrase, cellfm_inputs, tmp_path, capsys, monkeypatch, request):
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    subs = {"{corpus}": str(CORPUS), "{data}": str(cellfm_inputs["data"]), "{ckpt}": str(cellfm_inputs["ckpt"]),
            "{out}": str(out)}
    if any("{model}" in a for a in argv):  # predict/evaluate cases need a fine-tuned model
        subs["{model}"] = str(request.getfixturevalue("trained") / "best_model.pth")
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
    assert phrase in lines[0]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    assert not marker.exists()  # the pickle's payload never ran
