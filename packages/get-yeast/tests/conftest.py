"""Shared fixtures: a tiny yeast table on disk, tiny configs, and a GET-layout checkpoint."""

from pathlib import Path

import pytest
import torch

from get_yeast.config import load_model_config, load_training_config, packaged_config
from get_yeast.model import GETYeast
from get_yeast.synthetic import make_yeast_table, write_get_checkpoint

TINY_TRAIN = ["training.epochs=2", "training.batch_size=4", "training.warmup_steps=0", "training.device=cpu",
              "task.permutation_repeats=1"]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture(scope="session")
def tiny_frame():
    """8 conditions x 2 windows x 6 regions of the demo generator (96 rows)."""
    return make_yeast_table(n_conditions=8, n_windows=2, n_regions=6, seed=3)


@pytest.fixture
def tiny_csv(tmp_path, tiny_frame) -> Path:
    path = tmp_path / "yeast.csv"
    tiny_frame.to_csv(path, index=False)
    return path


@pytest.fixture
def tiny_model_cfg():
    return load_model_config(packaged_config("yeast_model_tiny.yaml"))


@pytest.fixture
def tiny_train_cfg():
    return load_training_config(None, TINY_TRAIN)[0]


def get_layout_state_dict(model_cfg, output_dim: int = 2, seed: int = 0) -> dict:
    """Weights of the plain GET region model (no conditions) plus GET pretraining-only entries."""
    import dataclasses

    torch.manual_seed(seed)
    cfg = dataclasses.replace(model_cfg, condition=dataclasses.replace(model_cfg.condition, enabled=False),
                              region_model=dataclasses.replace(model_cfg.region_model, output_dim=output_dim))
    sd = GETYeast(cfg, n_drugs=2).state_dict()
    for v in sd.values():  # non-trivial values so a copy is detectable
        v.add_(torch.randn_like(v) * 0.05)
    sd["mask_token"] = torch.zeros(1, 1, model_cfg.region_model.embed_dim)
    sd["head_mask.weight"] = torch.zeros(model_cfg.region_model.num_features, model_cfg.region_model.embed_dim)
    return sd


@pytest.fixture
def get_layout():
    """The function above (test modules cannot import conftest: every package has one)."""
    return get_layout_state_dict


@pytest.fixture
def train_args():
    """argv of a tiny `get-yeast train` run on `data` into `out`, plus `extra` flags."""

    def make(data, out, *extra):
        sets = [x for kv in TINY_TRAIN for x in ("--set", kv)]
        return ["train", "--data", str(data), "--output", str(out), "--model-config", str(packaged_config("yeast_model_tiny.yaml")),
                "--no-progress", *sets, *extra]

    return make


@pytest.fixture
def get_checkpoint(tmp_path, tiny_model_cfg) -> Path:
    """checkpoint-799.pth as GET writes it: weights under 'model', argparse.Namespace + numpy inside."""
    return write_get_checkpoint(tmp_path / "checkpoint-799.pth", get_layout_state_dict(tiny_model_cfg))
