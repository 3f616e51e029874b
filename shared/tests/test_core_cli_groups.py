"""ftcore.cli's shared argument groups: --trust-checkpoint, --seed, --device, spelled in the CLI's style."""

from __future__ import annotations

import pytest

from ftcore.cli import (KEBAB, SNAKE, TRUST_CHECKPOINT_HELP, ArgumentParser, add_device, add_seed,
                        add_trust_checkpoint, flag_names)
from ftcore.errors import UserError


def test_flag_names_follow_the_style():
    assert flag_names("trust checkpoint", KEBAB) == ["--trust-checkpoint"]
    assert flag_names("trust checkpoint", SNAKE) == ["--trust_checkpoint", "--trust-checkpoint"]
    assert flag_names("seed", SNAKE) == flag_names("seed", KEBAB) == ["--seed"]
    with pytest.raises(ValueError, match="style 'camel'"):
        flag_names("batch size", "camel")


@pytest.mark.parametrize("style, spellings", [(KEBAB, ["--trust-checkpoint"]),
                                              (SNAKE, ["--trust_checkpoint", "--trust-checkpoint"])])
def test_trust_checkpoint(style, spellings):
    p = ArgumentParser(prog="x")
    add_trust_checkpoint(p, style)
    assert p.parse_args([]).trust_checkpoint is False
    for flag in spellings:
        assert p.parse_args([flag]).trust_checkpoint is True
    assert TRUST_CHECKPOINT_HELP.split("(")[0].split()[0] in p.format_help()
    if style == KEBAB:
        with pytest.raises(SystemExit):  # a kebab CLI does not grow snake spellings
            p.parse_args(["--trust_checkpoint"])


def test_trust_checkpoint_not_given_stays_none():
    p = ArgumentParser(prog="x")
    add_trust_checkpoint(p, default=None)  # a config file may set it: "not given" must be visible
    assert p.parse_args([]).trust_checkpoint is None
    assert p.parse_args(["--trust-checkpoint"]).trust_checkpoint is True


def test_one_help_text_everywhere():
    texts = set()
    for style in (KEBAB, SNAKE):
        p = ArgumentParser(prog="x")
        add_trust_checkpoint(p, style, default=None if style == SNAKE else False)
        texts |= {a.help for a in p._actions if a.dest == "trust_checkpoint"}
    assert texts == {TRUST_CHECKPOINT_HELP}


def test_seed_defaults_help_and_checks():
    p = ArgumentParser(prog="x")
    add_seed(p, "the split and the batches", said="42")
    assert p.parse_args([]).seed is None  # not given: the config's seed applies
    assert p.parse_args(["--seed", "7"]).seed == 7
    assert "seed of the split and the batches (default 42; 0 <= seed < 2**32)" in " ".join(p.format_help().split())
    with pytest.raises(UserError, match="--seed"):
        p.parse_args(["--seed", "-1"])
    with pytest.raises(UserError, match="--seed"):
        p.parse_args(["--seed", str(2**32)])
    q = ArgumentParser(prog="y")
    add_seed(q, "the data", default=0, style=SNAKE)
    assert q.parse_args([]).seed == 0
    assert "(default 0;" in q.format_help()


def test_device_defaults_help_and_did_you_mean():
    p = ArgumentParser(prog="x")
    add_device(p)
    assert p.parse_args([]).device == "auto"
    assert p.parse_args(["--device", "cpu"]).device == "cpu"
    with pytest.raises(UserError, match=r"--device: unknown device 'gpu'.*did you mean 'cuda'"):
        p.parse_args(["--device", "gpu"])
    q = ArgumentParser(prog="y")
    add_device(q, default=None, said="training.device of the config")
    assert q.parse_args([]).device is None
    assert "(default training.device of the config)" in " ".join(q.format_help().split())
