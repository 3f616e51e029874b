"""Every case of the bad-input corpus: exit 2, ONE `error:` line with the expected phrase, no traceback,
and nothing new under the output dir or the input dirs (repo_helpers.check_bad_input). Cases:
tests/bad_inputs/cellfm-ft/cases.json (made by its make_corpus.py; {model} is a best_model.pth of a tiny
run, {variants} the real-layout CellFM checkpoint with one tensor broken per file, {ro} a directory
nothing may be written to) and the shared checkpoint corpus tests/bad_inputs/checkpoints/ fed to
`cellfm-ft train --checkpoint` (plus the code-running pickle with a marker check)."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

import pytest

from cellfm_ft.cli import main

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from repo_helpers import check_bad_input  # noqa: E402

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


def _all_cases() -> list[tuple[str, list[str], str]]:
    """(case id, argv with placeholders, phrase) for every case."""
    cases = [(name, _restricted(c["argv"], c["phrase"]), c["phrase"])
             for name, c in json.loads((CORPUS / "cases.json").read_text()).items()]
    expected = CHECKPOINTS / "expected.json"
    if expected.exists():
        for name, c in json.loads(expected.read_text()).items():
            cases.append((f"checkpoint/{name}", [a.replace("{ckpt}", str(CHECKPOINTS / name)) for a in TRAIN],
                          c["phrase"]))
        # With the opt-in, the legitimate old checkpoint loads but is not CellFM.
        cases.append(("checkpoint/needs_trust.pt+trust",
                      [a.replace("{ckpt}", str(CHECKPOINTS / "needs_trust.pt")) for a in TRAIN] + ["--trust-checkpoint"],
                      "not a CellFM checkpoint"))
    return cases


CASES = _all_cases()  # the repo counts len(CASES)


@pytest.fixture(scope="session")
def variants(tmp_path_factory) -> Path:
    """The real-layout checkpoint with one tensor broken per file (make_corpus.write_checkpoint_variants);
    run_path, not import: no bytecode cache is written into the corpus folder."""
    dest = tmp_path_factory.mktemp("cellfm_variants")
    runpy.run_path(str(CORPUS / "make_corpus.py"))["write_checkpoint_variants"](dest)
    return dest


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch) -> Path:
    """A directory nothing can be written to: mode 0555, and where permission bits do not stop this process
    (root), os.access answers as on a read-only mount, so ftcore.options' own writability check decides."""
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    if not os.access(ro, os.W_OK):
        yield ro
    else:  # root: the bits are ignored; a read-only file system is what os.access still reports
        real_access = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and Path(path).absolute() == ro.absolute():
                return False
            return real_access(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
        yield ro
    ro.chmod(0o755)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, cellfm_inputs, tmp_path, capsys, monkeypatch, request):
    _, argv, phrase = case
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    subs = {"{corpus}": str(CORPUS), "{data}": str(cellfm_inputs["data"]), "{ckpt}": str(cellfm_inputs["ckpt"]),
            "{out}": str(out)}
    watch = [out, CORPUS, Path(cellfm_inputs["data"]).parent]
    text = " ".join(argv)
    if "{model}" in text:  # predict/evaluate cases need a fine-tuned model
        model_dir = request.getfixturevalue("trained")
        subs["{model}"] = str(model_dir / "best_model.pth")
        watch.append(model_dir)
    if "{variants}" in text:
        subs["{variants}"] = str(request.getfixturevalue("variants"))
        watch.append(Path(subs["{variants}"]))
    if "{ro}" in text:
        subs["{ro}"] = str(request.getfixturevalue("read_only_dir"))
        watch.append(Path(subs["{ro}"]))
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    capsys.readouterr()  # what fixtures printed (a tiny training run) is not this case's output
    check_bad_input(main, args, capsys, phrase, watch=tuple(watch))
    assert not marker.exists()  # the pickle's payload never ran


def test_corpus_is_large_enough():
    assert len(CASES) >= 95
    assert len({c[0] for c in CASES}) == len(CASES)
