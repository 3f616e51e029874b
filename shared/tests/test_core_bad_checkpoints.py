"""Every file of tests/bad_inputs/checkpoints gives one clear line, and the evil pickle never runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from ftcore.checkpoint import read_checkpoint, read_state_dict
from ftcore.errors import UserError, cli_main

CORPUS = Path(__file__).resolve().parents[2] / "tests" / "bad_inputs" / "checkpoints"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())
MARKER_ENV = "FTCORE_EVIL_MARKER"


def test_corpus_is_complete_and_small():
    names = {p.name for p in CORPUS.iterdir()} - {"README.md", "expected.json", "make_corpus.py"}
    assert names == set(EXPECTED)
    for name in names:
        assert (CORPUS / name).stat().st_size < 50_000
    readme = (CORPUS / "README.md").read_text()
    for name, case in EXPECTED.items():
        assert f"`{name}`" in readme and f"`{case['phrase']}`" in readme


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_checkpoint_one_line_error(name, tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path / "marker"))
    path = CORPUS / name
    with pytest.raises(UserError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400
    assert str(path) in msg
    assert EXPECTED[name]["phrase"] in msg
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_checkpoint_through_a_cli(name, capsys):
    """What a package CLI prints: exactly one 'error:' line and exit code 2."""

    @cli_main
    def main(argv):
        read_state_dict(argv[0])

    assert main([str(CORPUS / name)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and EXPECTED[name]["phrase"] in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_evil_pickle_refused_then_proven_real(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    path = CORPUS / "evil_pickle.pt"
    for load in (read_state_dict, read_checkpoint):
        with pytest.raises(UserError, match="--trust-checkpoint"):
            load(path)
    with pytest.raises(Exception):  # noqa: B017 - torch's own safe loader refuses it too
        torch.load(path, weights_only=True)
    assert not marker.exists()
    # The opt-in really unpickles: the harmless payload runs, proving the refusal above mattered.
    obj = read_checkpoint(path, trust_pickle=True)
    assert marker.read_text() == "pwned"
    assert obj["hook"] is None and torch.equal(obj["state_dict"]["w"], torch.zeros(2))


def test_needs_trust_loads_with_opt_in():
    sd = read_state_dict(CORPUS / "needs_trust.pt", trust_pickle=True)
    assert sorted(sd) == ["encoder.bias", "encoder.weight", "head.weight"]
    assert sd["encoder.weight"].shape == (32, 16)
    obj = read_checkpoint(CORPUS / "needs_trust.pt", trust_pickle=True)
    assert obj["args"].lr == 1e-3 and float(obj["best_score"]) == pytest.approx(0.87)


def test_generator_reproduces_the_same_cases(tmp_path):
    """make_corpus.py regenerates every case, and each regenerated file fails the same way."""
    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.make(tmp_path)
    assert json.loads((tmp_path / "expected.json").read_text()) == EXPECTED
    for name in EXPECTED:
        if name in ("evil_pickle.pt", "needs_trust.pt"):
            continue  # covered above; the fresh copies are the same objects
        with pytest.raises(UserError, match=EXPECTED[name]["phrase"].replace("(", r"\(").replace(")", r"\)")):
            read_state_dict(tmp_path / name)


def test_truncated_record_is_real_and_refused():
    """torch's own mmap reader loads the corpus file with garbage weights; ours names the record."""
    path = CORPUS / "truncated_record.pt"
    sd = torch.load(path, weights_only=True, mmap=True)["state_dict"]
    assert sd["encoder.weight"].shape == (32, 16)  # loaded, although 8 of its bytes are missing
    with pytest.raises(UserError, match="tensor record data/0 holds 2040 bytes, its tensor needs 2048"):
        read_state_dict(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8])
def test_every_dtypes_record_size_is_checked(dtype, tmp_path):
    import zipfile

    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    torch.save({"a": torch.ones(300, dtype=dtype), "b": torch.ones(200, dtype=dtype)}, full)
    assert set(read_state_dict(full)) == {"a", "b"}
    with zipfile.ZipFile(full) as zin, zipfile.ZipFile(cut, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            record = zin.read(info.filename)
            zout.writestr(info, record[:-1] if info.filename.endswith("/data/0") else record)
    with pytest.raises(UserError, match="tensor record data/0 holds"):
        read_state_dict(cut)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_never_loaded(bad):
    from torch import nn

    from ftcore.loading import load_partial

    model = nn.Linear(3, 2)
    before = model.weight.detach().clone()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["weight"][1, 2] = bad
    with pytest.raises(UserError, match=r"tensor weight holds 1 of 6 NaN/inf values"):
        load_partial(model, sd, source="ckpt.pt", verbose=False)
    assert torch.equal(model.weight, before)


def test_minus_inf_mask_buffers_still_load():
    from torch import nn

    from ftcore.loading import load_partial

    model = nn.Module()
    model.register_buffer("mask", torch.zeros(2, 2))
    report = load_partial(model, {"mask": torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])}, verbose=False)
    assert report.loaded == ["mask"] and model.mask[0, 1] == float("-inf")
