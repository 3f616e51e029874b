"""Every case of the bad-input corpus: exit 2, ONE `error:` line with the expected phrase, no traceback,
and nothing new under the output dir, the case's scratch dir or the corpus folder (repo_helpers.check_bad_input).

Cases: tests/bad_inputs/get-yeast/cases.json (made by its make_corpus.py; placeholders explained there)
and the shared checkpoint corpus tests/bad_inputs/checkpoints/ fed to `get-yeast train --checkpoint`
(plus the code-running pickle with a marker check)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from get_yeast.cli import main
from get_yeast.config import packaged_config

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_bad_input  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "get-yeast"
CHECKPOINTS = REPO / "tests" / "bad_inputs" / "checkpoints"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "get_layouts"
TRAIN = ["train", "--data", "{corpus}/good.csv", "--model-config", "{tiny_model}", "--output", "{out}",
         "--max-steps", "1", "--no-progress"]


def _cases() -> list[tuple[str, list[str], str, dict]]:
    """(case id, argv, phrase, env) per case."""
    cases = [(name, c["argv"], c["phrase"], c.get("env", {}))
             for name, c in json.loads((CORPUS / "cases.json").read_text()).items()]
    for name, c in json.loads((CHECKPOINTS / "expected.json").read_text()).items():
        cases.append((f"checkpoint/{name}", TRAIN + ["--checkpoint", str(CHECKPOINTS / name)], c["phrase"], {}))
    # With the opt-in, the legitimate old checkpoint loads but holds no GET weights.
    cases.append(("checkpoint/needs_trust.pt+trust", TRAIN + ["--checkpoint", str(CHECKPOINTS / "needs_trust.pt"),
                                                              "--trust-checkpoint"], "matches the GET region model", {}))
    return cases


CASES = _cases()


@pytest.mark.parametrize("argv, phrase, env", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, phrase, env, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    (scratch / "a_folder").mkdir(parents=True)
    for name in ("metrics.json", "predictions.csv"):  # folders where the command writes files
        (scratch / "has_dirs" / name).mkdir(parents=True)
    subs = {"{corpus}": str(CORPUS), "{out}": str(out), "{tmp}": str(scratch), "{fixtures}": str(FIXTURES),
            "{tiny_model}": str(packaged_config("yeast_model_tiny.yaml")),
            "{training_yaml}": str(packaged_config("yeast_training.yaml"))}

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    for key, value in env.items():
        monkeypatch.setenv(key, fill(value))
    check_bad_input(main, [fill(a) for a in argv], capsys, fill(phrase), watch=(tmp_path, CORPUS, FIXTURES))
    assert not marker.exists()  # the pickle's payload never ran
