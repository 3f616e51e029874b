"""Shared fixtures: a tiny perturbation screen on disk and a TOML writer, sized for 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

# A CPU-sized network for end-to-end tests (architecture of state_sm, tiny widths).
TINY_MODEL = [
    "model=state_sm", "model.kwargs.hidden_dim=32", "model.kwargs.n_layers=1", "model.kwargs.n_heads=2",
    "model.kwargs.head_dim=16", "model.kwargs.intermediate_size=64", "model.kwargs.n_encoder_layers=2",
    "model.kwargs.n_decoder_layers=2", "model.kwargs.cell_set_len=8", "model.kwargs.dropout=0.0",
]
TINY_SIZES = dict(n_genes=40, n_hvg=24, n_perts=6, cells_per_pert=12, n_controls=30, n_programs=4,
                  cell_types=("K562", "HepG2"), n_batches=2)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it)")


@pytest.fixture(scope="session")
def tiny_adata():
    from state_tx.synthetic import make_perturbation_adata

    return make_perturbation_adata(seed=3, **TINY_SIZES)


@pytest.fixture(scope="session")
def tiny_h5ad(tmp_path_factory, tiny_adata) -> Path:
    path = tmp_path_factory.mktemp("data") / "screen.h5ad"
    tiny_adata.write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def tiny_perts(tiny_adata) -> list[str]:
    return list(tiny_adata.uns["state_tx_synthetic"]["perturbations"])


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_split_toml(path: Path, h5ad: Path, perts: list[str]) -> Path:
    """The tiny split: train on everything but HepG2 perturbations 0-1 (val) and 2-3 (test)."""
    return write_toml(path, f'''
[datasets]
screen = "{h5ad}"
[training]
screen = "train"
[fewshot."screen.HepG2"]
val = ["{perts[0]}", "{perts[1]}"]
test = ["{perts[2]}", "{perts[3]}"]
''')


def write_tiny_screen(directory: Path) -> tuple[Path, Path]:
    """The tiny screen as files, for callers outside these fixtures: (screen.h5ad, train.toml)."""
    from state_tx.synthetic import make_perturbation_adata

    adata = make_perturbation_adata(seed=3, **TINY_SIZES)
    h5ad = directory / "screen.h5ad"
    adata.write_h5ad(h5ad)
    perts = list(adata.uns["state_tx_synthetic"]["perturbations"])
    return h5ad, write_split_toml(directory / "train.toml", h5ad, perts)


@pytest.fixture(scope="session")
def tiny_toml(tmp_path_factory, tiny_h5ad, tiny_perts) -> Path:
    return write_split_toml(tmp_path_factory.mktemp("cfg") / "train.toml", tiny_h5ad, tiny_perts)


def train_args(toml: Path, out: Path, name: str = "run", steps: int = 6, extra: list[str] = ()) -> list[str]:
    return ["train", f"data.kwargs.toml_config_path={toml}", "data.kwargs.pert_col=gene",
            "data.kwargs.cell_type_key=cell_type", "data.kwargs.batch_col=gem_group",
            "data.kwargs.control_pert=non-targeting", f"training.max_steps={steps}", "training.batch_size=4",
            "training.val_freq=3", "training.ckpt_every_n_steps=3", "training.lr=1e-3", "training.progress=false",
            *TINY_MODEL, f"output_dir={out}", f"name={name}", *extra]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_toml) -> Path:
    """One tiny training run shared by the inference / evaluation tests."""
    from state_tx.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(train_args(tiny_toml, out, steps=6)) == 0
    return out / "run"


@pytest.fixture(scope="session")
def make_train_args():
    """train_args(toml, out, name='run', steps=6, extra=()) -> argv for state_tx.cli.main."""
    return train_args


@pytest.fixture(scope="session")
def make_toml():
    return write_toml
