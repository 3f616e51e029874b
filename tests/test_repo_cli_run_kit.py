"""The five CLIs share the core's run kit: the user's spellings stay in every --help, every flag of every
sub-command is shown, and a CUDA out-of-memory error becomes one `error:` line naming that CLI's batch-size
flag (ftcore.errors.oom_advice)."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest
import torch

from repo_helpers import packages

PACKAGES = packages()

# The user's notes (shared/seeds, one per package) name these flags (and, for spatial-transfer, environment
# variables) per command; with the core's shared groups every CLI also lists --seed and --trust-checkpoint.
SEED_SPELLINGS = {
    "cellfm-ft": {"train": ["--testcase", "--mtg", "--seed", "--device", "--trust-checkpoint"]},
    "get-yeast": {"train": ["--config", "--data", "--output", "--device", "--seed", "--trust-checkpoint"],
                  "evaluate": ["--config", "--data", "--model", "--output", "--device"]},
    "spatial-transfer": {"run": ["TRANSFER_STRATEGY", "USE_TRANSFER_LEARNING", "FREEZE_BACKBONE", "CV_MODE",
                                 "LOO_HELDOUT", "--seed", "--device", "--trust-checkpoint"]},
    "state-tx": {"infer": ["--adata", "--output", "--model-dir", "--checkpoint", "--pert-col", "--batch-col",
                           "--control-pert", "--seed", "--device", "--trust-checkpoint"],
                 "predict": ["--output_dir", "--checkpoint"],
                 "evaluate": ["-ap", "-ar", "-o", "--control-pert", "--pert-col", "--celltype-col"],
                 "train": ["--trust-checkpoint"]},
    "var-st": {"train": ["--dataset", "--model", "--training_stage", "--epochs", "--batch_size", "--lr", "--gpus",
                         "--stage1_ckpt", "--debug", "--seed", "--trust-checkpoint"]},
}


def _parser(name: str) -> argparse.ArgumentParser:
    return importlib.import_module(f"{PACKAGES[name]['module']}.cli").build_parser()


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_the_table_covers_every_package():
    assert set(SEED_SPELLINGS) == set(PACKAGES)


@pytest.mark.parametrize("name", sorted(SEED_SPELLINGS))
def test_help_lists_the_seed_spellings(name):
    commands = _commands(_parser(name))
    for command, spellings in SEED_SPELLINGS[name].items():
        shown = commands[command].format_help()
        flags = set(re.findall(r"(?<![\w-])-{1,2}[A-Za-z][\w-]*", shown))
        missing = [s for s in spellings if (s not in flags if s.startswith("-") else not re.search(rf"\b{s}\b", shown))]
        assert not missing, f"{name} {command} --help lacks {missing}"


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_help_shows_every_flag_of_every_command(name):
    for command, parser in _commands(_parser(name)).items():
        shown = parser.format_help()
        hidden = [o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings
                  if o not in shown]
        assert not hidden, f"{name} {command} --help hides {hidden}"


def _oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _cases(tmp_path, monkeypatch, name: str) -> list[tuple[list[str], str]]:
    """(argv, the advice that must follow 'error: CUDA ran out of memory') with the command made to OOM."""
    if name == "cellfm-ft":
        monkeypatch.setattr("cellfm_ft.train.finetune", _oom)
        return [(["train", "--data", "x.h5ad", "--checkpoint", "c.ckpt", "--batch-size", "16"],
                 " at batch size 16; lower --batch-size (e.g. 16 -> 8), ")]
    if name == "get-yeast":
        monkeypatch.setattr("get_yeast.cli._train", _oom)
        return [(["train", "--batch-size", "32"], " at batch size 32; lower --batch-size (e.g. 32 -> 16), "),
                (["train"], "; lower --batch-size (training.batch_size in the config) ")]
    if name == "spatial-transfer":
        monkeypatch.setattr("spatial_transfer.cli.cmd_run", _oom)
        return [(["run", "--batch-size", "8"], " at batch size 8; lower --batch-size (e.g. 8 -> 4), ")]
    if name == "state-tx":
        monkeypatch.setattr("state_tx.predict.infer", _oom)
        monkeypatch.setattr("state_tx.config.load_run_config", lambda *a: None)
        monkeypatch.setattr("state_tx.train.train", _oom)
        adata = tmp_path / "in.h5ad"
        adata.write_bytes(b"not read: infer is replaced")
        return [(["infer", "--adata", adata, "--output", tmp_path / "out.h5ad", "--batch-size", "12"],
                 " at batch size 12; lower --batch-size (e.g. 12 -> 6), "),
                (["train", "training.max_steps=1"], "; lower training.batch_size=N ")]
    if name == "var-st":
        monkeypatch.setitem(importlib.import_module("var_st.cli").COMMANDS, "train", _oom)
        return [(["train", "--batch_size", "256"], " at batch size 256; lower --batch_size (e.g. 256 -> 128), ")]
    raise AssertionError(f"no OOM case for {name}")


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_cuda_oom_is_one_line_naming_the_batch_size_flag(name, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    main = importlib.import_module(f"{PACKAGES[name]['module']}.cli").main
    for argv, advice in _cases(tmp_path, monkeypatch, name):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (argv, code, err)
        assert err[0].startswith("error: CUDA ran out of memory" + advice), (argv, err[0])
        assert err[0].endswith("or run on a GPU with more memory"), err[0]
