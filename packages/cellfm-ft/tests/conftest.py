"""Shared fixtures: a small labelled .h5ad with donors and a tiny CellFM checkpoint in MindSpore format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture(scope="session")
def cellfm_inputs(tmp_path_factory) -> dict:
    """{'data': h5ad of raw counts (obs cell_type, donor), 'ckpt': tiny MindSpore .ckpt, 'vocab': gene list}."""
    from cellfm_ft.demo import demo_vocabulary, write_demo_checkpoint
    from cellfm_ft.synthetic import synthetic_cells

    root = tmp_path_factory.mktemp("cellfm_inputs")
    adata = synthetic_cells(n_cells=96, n_genes=64, n_donors=4, seed=1)
    data = root / "cells.h5ad"
    adata.write_h5ad(data)
    ckpt = root / "cellfm_tiny.ckpt"
    vocab = write_demo_checkpoint(ckpt, demo_vocabulary(adata.var_names.tolist()), config="tiny", seed=0)
    return {"data": data, "ckpt": ckpt, "vocab": vocab, "adata": adata}


def _train_argv(inputs: dict, out: Path, *extra: str) -> list[str]:
    """A tiny but complete `cellfm-ft train` command line."""
    return ["train", "--data", str(inputs["data"]), "--label-key", "cell_type", "--donor-key", "donor",
            "--checkpoint", str(inputs["ckpt"]), "--config", "tiny", "--output", str(out),
            "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--no-progress", *extra]


@pytest.fixture(scope="session")
def parity_ckpt() -> Path:
    """The CellFM-shaped checkpoint written by real MindSpore (make_parity_fixture.py)."""
    return FIXTURES / "cellfm_tiny.ckpt"


@pytest.fixture(scope="session")
def trained(cellfm_inputs, tmp_path_factory) -> Path:
    """Output dir of one tiny `cellfm-ft train` run (donor D2 held out, with the baseline)."""
    from cellfm_ft.cli import main

    out = tmp_path_factory.mktemp("cellfm_run") / "run"
    assert main(_train_argv(cellfm_inputs, out, "--test-donors", "D2", "--baseline")) == 0
    return out


@pytest.fixture(scope="session")
def train_argv():
    """train_argv(inputs, out, *extra) -> argv of a tiny `cellfm-ft train` run (a fixture: test modules
    must not import conftest, whose module name every package's tests share)."""
    return _train_argv
