"""Shared fixtures for the var-st tests: a tiny spatial data set and a tiny model config."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VAR_ST_NO_PROGRESS", "1")

TINY_CONFIG = """\
vqvae:
  vocab_size: 32
  embed_dim: 8
  hidden_dim: 32
  coarse_scales: [1, 4, 8]
  reservoir_size: 256
var:
  embed_dim: 16
  num_heads: 2
  num_layers: 1
  feedforward_dim: 32
  condition_embed_dim: 16
  max_sequence_length: 64
"""
TINY_GENES = 24
TINY_HIST = 16


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def make_tiny_adata(seed: int = 0, slides: int = 3, grid: int = 5, genes: int = 40):
    from var_st.synthetic import make_demo_adata

    return make_demo_adata(n_slides=slides, grid=grid, n_genes=genes, n_programs=3, histology_dim=TINY_HIST, seed=seed)


@pytest.fixture(scope="session")
def tiny_h5ad(tmp_path_factory):
    path = tmp_path_factory.mktemp("var_st_data") / "tiny.h5ad"
    make_tiny_adata().write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("var_st_cfg") / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path


def tiny_train_args(h5ad, config, log_dir, stage=1, epochs=2, extra=()):
    args = ["train", "--dataset", str(h5ad), "--training_stage", str(stage), "--config", str(config),
            "--num_genes", str(TINY_GENES), "--epochs", str(epochs), "--batch_size", "16", "--lr", "3e-3",
            "--log_dir", str(log_dir), "--gpus", "0"]
    if stage == 2:
        args += ["--stage1_ckpt", str(log_dir / "tiny" / "TWO_STAGE_VAR_ST" / "stage1_vqvae" / "best_vqvae.ckpt")]
    return args + list(extra)


@pytest.fixture(scope="session")
def tiny():
    """Helpers for tests: tiny.adata(seed=...), tiny.train_args(h5ad, config, log_dir, stage=...), sizes."""
    import types

    return types.SimpleNamespace(adata=make_tiny_adata, train_args=tiny_train_args, genes=TINY_GENES,
                                 hist=TINY_HIST, config_text=TINY_CONFIG)


@pytest.fixture(scope="session")
def trained_run(tiny_h5ad, tiny_config, tmp_path_factory):
    """Both stages trained once on the tiny data (shared by the CLI tests); returns the log dir."""
    from var_st.cli import main

    log_dir = tmp_path_factory.mktemp("var_st_run")
    assert main(tiny_train_args(tiny_h5ad, tiny_config, log_dir, stage=1)) == 0
    assert main(tiny_train_args(tiny_h5ad, tiny_config, log_dir, stage=2)) == 0
    return log_dir
