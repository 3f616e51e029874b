"""ftcore.options (typed CLI values), the one-line parser, config bounds, and nothing-half-written."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftcore import options as opt
from ftcore.cli import ArgumentParser
from ftcore.config import from_dict
from ftcore.errors import UserError, cli_main
from ftcore.io import atomic_write_text, claim_outputs
from ftcore.loading import load_partial


@pytest.mark.parametrize("text,kind,limits,phrase", [
    ("nan", float, {"gt": 0}, "--x is nan; give a finite number (> 0)"),
    ("inf", float, {}, "give a finite number"),
    ("-1e400", float, {}, "give a finite number"),
    ("0", float, {"gt": 0}, "--x is 0; it must be > 0"),
    ("2.5", int, {}, "whole number"),
    ("1,5", float, {}, "should be a number"),
    ("", int, {}, "should be a number"),
    ("-1", int, {"ge": 1}, "it must be >= 1"),
    ("1.0", float, {"gt": 0, "lt": 1}, "it must be > 0 and < 1"),
])
def test_number_refuses_with_the_flag(text, kind, limits, phrase):
    with pytest.raises(UserError, match=None) as err:
        opt.number("--x", kind, **limits)(text)
    assert phrase in str(err.value)


@pytest.mark.parametrize("text,kind,expected", [("1e-4", float, 1e-4), ("1e3", int, 1000), (" 7 ", int, 7),
                                                ("-0", float, 0.0), ("3.", float, 3.0)])
def test_number_accepts_what_a_user_means(text, kind, expected):
    value = opt.number("--x", kind)(text)
    assert value == expected and type(value) is kind


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6),
                 st.integers(-2**70, 2**70).map(str)))
def test_number_is_finite_in_range_or_one_user_error(text):
    try:
        value = opt.number("--x", float, ge=0, le=10)(text)
    except UserError as err:
        assert "\n" not in str(err) and str(err).startswith("--x")
    else:
        assert math.isfinite(value) and 0 <= value <= 10


@pytest.mark.parametrize("text", ["-1", "4294967296", "1.5", "nan"])
def test_seed_range(text):
    with pytest.raises(UserError, match="--seed"):
        opt.seed()(text)
    assert opt.seed()("4294967295") == 2**32 - 1


def test_device_names_flag_and_choices():
    with pytest.raises(UserError, match=r"--device: unknown device 'gpu'.*did you mean 'cuda'"):
        opt.device()("gpu")
    assert opt.device()("cpu") == "cpu"


def test_output_paths(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="is a directory; give a file path"):
        opt.output_file("--output")(str(tmp_path / "d"))
    with pytest.raises(UserError, match="should end in .h5ad"):
        opt.output_file("--output", (".h5ad",))(str(tmp_path / "p.csv"))
    with pytest.raises(UserError, match="is a file, so nothing can be created inside it"):
        opt.output_file("--output")(str(tmp_path / "f.txt" / "p.h5ad"))
    with pytest.raises(UserError, match="is a file, not a directory"):
        opt.output_dir("--out")(str(tmp_path / "f.txt"))
    assert opt.output_dir("--out")(str(tmp_path / "new" / "deeper")) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_output_in_read_only_place(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="is not writable"):
            opt.output_file("--output")(str(ro / "x.h5ad"))
    finally:
        ro.chmod(0o700)


def test_input_file(tmp_path, monkeypatch):
    (tmp_path / "data.h5ad").write_bytes(b"x")
    (tmp_path / "empty.h5ad").write_bytes(b"")
    with pytest.raises(UserError, match="did you mean .*data.h5ad"):
        opt.input_file("--adata")(str(tmp_path / "dta.h5ad"))
    with pytest.raises(UserError, match="is empty"):
        opt.input_file("--adata")(str(tmp_path / "empty.h5ad"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert opt.input_file("--adata")("~/data.h5ad") == tmp_path / "data.h5ad"


def test_parser_errors_are_one_line(capsys):
    parser = ArgumentParser(prog="tool")
    sub = parser.add_subparsers(dest="cmd", required=True)
    train = sub.add_parser("train")
    train.add_argument("--mode", choices=["a", "b"])
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["train", "--mode", "c"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: tool train: argument --mode: invalid choice: 'c'") and "see tool train --help" in err


@dataclasses.dataclass
class _Cfg:
    lr: float = 1e-3
    steps: int = 10
    dropout: float = dataclasses.field(default=0.1, metadata=opt.bounds(ge=0, lt=1))


@pytest.mark.parametrize("data,phrase", [({"lr": float("nan")}, "'lr' is nan"), ({"steps": "nan"}, "'steps' is nan"),
                                         ({"steps": float("inf")}, "give a finite number"),
                                         ({"dropout": 1.0}, "'dropout' is 1.0; it must be >= 0 and < 1")])
def test_config_numbers_finite_and_bounded(data, phrase):
    with pytest.raises(UserError) as err:
        from_dict(_Cfg, data, "run.yaml")
    assert str(err.value).startswith("run.yaml: ") and phrase in str(err.value), err.value


def test_failed_command_leaves_nothing(tmp_path):
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "last.pt").write_text("kept")

    @cli_main
    def fails(argv):
        claim_outputs(tmp_path / "new" / "run", existing, tmp_path / "pred.h5ad")
        atomic_write_text(tmp_path / "new" / "run" / "config.yaml", "lr: 1")
        atomic_write_text(existing / "history.json", "[]")
        atomic_write_text(tmp_path / "pred.h5ad", "x")
        raise UserError("loss became NaN at step 3")

    assert fails([]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["last.pt", "old"]

    @cli_main
    def succeeds(argv):
        claim_outputs(tmp_path / "ok")
        atomic_write_text(tmp_path / "ok" / "a.txt", "done")

    assert succeeds([]) == 0 and (tmp_path / "ok" / "a.txt").exists()


def test_interrupted_command_keeps_its_checkpoints(tmp_path):
    @cli_main
    def interrupted(argv):
        claim_outputs(tmp_path / "run")
        atomic_write_text(tmp_path / "run" / "last.pt", "complete")
        raise KeyboardInterrupt

    assert interrupted([]) == 130 and (tmp_path / "run" / "last.pt").exists()


def test_integer_weights_are_refused_by_name():
    model = torch.nn.Linear(2, 2)
    state = {"weight": torch.ones(2, 2, dtype=torch.int64), "bias": torch.zeros(2)}
    with pytest.raises(UserError, match="tensor weight is int64 in the file but the model's is float32"):
        load_partial(model, state, verbose=False)
    load_partial(model, {"weight": torch.ones(2, 2, dtype=torch.float16)}, verbose=False)  # precision may differ


def test_json_outputs_are_standard(tmp_path):
    import json

    import numpy as np

    from ftcore.io import atomic_write_json

    atomic_write_json(tmp_path / "h.json", {"val_pearson": float("nan"), "r": [np.float32(np.inf), 1.5],
                                            "n": np.int64(3), "a": np.array([np.nan, 2.0])})
    text = (tmp_path / "h.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"val_pearson": None, "r": [None, 1.5], "n": 3, "a": [None, 2.0]}


def test_failed_command_leaves_a_sibling_in_the_same_new_folder(tmp_path):
    """Two runs into a new folder (a sweep): the one that fails removes its own run, never the folder's others."""
    sweep = tmp_path / "sweep"

    @cli_main
    def fails(argv):
        claim_outputs(sweep / "lr1")
        atomic_write_text(sweep / "lr1" / "last.pt", "mine")
        atomic_write_text(sweep / "lr2" / "last.pt", "another run's, written meanwhile")
        raise UserError("loss became NaN")

    assert fails([]) == 2
    assert not (sweep / "lr1").exists() and (sweep / "lr2" / "last.pt").read_text().startswith("another")

    @cli_main
    def fails_alone(argv):
        claim_outputs(tmp_path / "new" / "deep" / "run")
        atomic_write_text(tmp_path / "new" / "deep" / "run" / "a.txt", "x")
        raise UserError("bad")

    assert fails_alone([]) == 2 and not (tmp_path / "new").exists()  # the parents it made, empty again, go too


def _copy_config_parser(templates):
    from ftcore.cli import add_copy_config

    parser = ArgumentParser(prog="tool")
    add_copy_config(parser.add_subparsers(dest="command"), templates, "edit, then pass with --config")
    return parser


def test_copy_config_writes_every_template_or_none(tmp_path):
    from ftcore.cli import copy_config
    from ftcore.errors import UserError

    src = tmp_path / "packaged.yaml"
    src.write_text("lr: 0.001\n")
    templates = {"training.yaml": src, "splits.toml": "[datasets]\n"}
    dest = tmp_path / "new" / "configs"
    written = copy_config(_copy_config_parser(templates).parse_args(["copy-config", str(dest)]))
    assert [p.name for p in written] == ["training.yaml", "splits.toml"]
    assert (dest / "training.yaml").read_text() == "lr: 0.001\n" and (dest / "splits.toml").read_text() == "[datasets]\n"
    (dest / "training.yaml").write_text("lr: 0.5\n")  # the user's edit survives a second copy-config
    with pytest.raises(UserError, match="already has training.yaml, splits.toml.*--overwrite"):
        copy_config(_copy_config_parser(templates).parse_args(["copy-config", str(dest)]))
    assert (dest / "training.yaml").read_text() == "lr: 0.5\n"
    copy_config(_copy_config_parser(templates).parse_args(["copy-config", str(dest), "--overwrite"]))
    assert (dest / "training.yaml").read_text() == "lr: 0.001\n"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        _copy_config_parser(templates).parse_args(["copy-config", str(a_file)])
