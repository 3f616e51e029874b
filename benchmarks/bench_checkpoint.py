"""Checkpoint reading and conversion on a ~20M-parameter transformer-shaped file.

The same weights are written once per session as MindSpore .ckpt, torch .pt and safetensors;
each benchmark reads one of them the way the packages do (ftcore.checkpoint.read_state_dict),
or maps MindSpore names to torch names (ftcore.mapping.KeyMap).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftcore.checkpoint import read_state_dict, write_checkpoint
from ftcore.checkpoint.mindspore import read_mindspore
from ftcore.mapping import MINDSPORE_RENAMES, KeyMap, Rename, transpose

LAYERS, DIM, FFN, VOCAB = 10, 384, 1536, 6000  # 10 x 1.77M + 2.3M embedding ~ 20M parameters


def mindspore_named_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """CellFM-like names (gamma/beta, embedding_table), float32, about 20M parameters."""
    g = torch.Generator().manual_seed(seed)
    sd = {"gene_emb.embedding_table": torch.randn(VOCAB, DIM, generator=g)}
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for w in ("w_q", "w_k", "w_v", "w_o"):
            sd[p + f"attn.{w}.weight"] = torch.randn(DIM, DIM, generator=g)
        sd[p + "ffn.fc1.weight"] = torch.randn(FFN, DIM, generator=g)
        sd[p + "ffn.fc2.weight"] = torch.randn(DIM, FFN, generator=g)
        for norm in ("norm1", "norm2"):
            sd[p + f"{norm}.gamma"] = torch.ones(DIM)
            sd[p + f"{norm}.beta"] = torch.zeros(DIM)
    return sd


CELLFM_LIKE_MAP = KeyMap(
    renames=MINDSPORE_RENAMES + (Rename.prefix("gene_emb.", "embedding."),),
    transforms=((r"\.attn\.w_[qkv]\.weight$", transpose),),
    skip=((r"^value_dec\.", "pretraining decoder"),),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    sd = mindspore_named_weights()
    n = sum(t.numel() for t in sd.values())
    assert 18e6 < n < 22e6, n
    out = tmp_path_factory.mktemp("ckpt")
    paths = {"mindspore": out / "model.ckpt", "torch": out / "model.pt", "safetensors": out / "model.safetensors"}
    for fmt, path in paths.items():
        write_checkpoint(path, sd, fmt)
    return paths


def test_read_mindspore_views(benchmark, files):
    """Parse the protobuf into zero-copy numpy views of the memory-mapped file."""
    benchmark.extra_info["calibrate_with"] = "python"
    tensors = benchmark(read_mindspore, files["mindspore"])
    assert isinstance(next(iter(tensors.values())).array, np.ndarray)


def test_read_state_dict_mindspore(benchmark, files):
    """MindSpore .ckpt -> {name: torch.Tensor}: parsing plus the one copy into torch."""
    benchmark.extra_info["calibrate_with"] = "memory"  # the one copy of 80 MB dominates
    sd = benchmark(read_state_dict, files["mindspore"])
    assert sd["encoder.layers.0.ffn.fc1.weight"].shape == (FFN, DIM)


def test_read_state_dict_torch(benchmark, files):
    benchmark.extra_info["calibrate_with"] = "python"  # mmap: unpickling the index, tensors stay lazy
    sd = benchmark(read_state_dict, files["torch"])
    assert sd["encoder.layers.0.ffn.fc1.weight"].shape == (FFN, DIM)


def test_read_state_dict_safetensors(benchmark, files):
    benchmark.extra_info["calibrate_with"] = "python"
    sd = benchmark(read_state_dict, files["safetensors"])
    assert sd["encoder.layers.0.ffn.fc1.weight"].shape == (FFN, DIM)


def test_keymap_apply(benchmark, files):
    """MindSpore names -> torch names, with a transpose of the q/k/v projections (30 copies of 147k floats)."""
    sd = read_state_dict(files["mindspore"])
    benchmark.extra_info["calibrate_with"] = "python"
    mapped, report = benchmark(CELLFM_LIKE_MAP.apply, sd)
    assert "embedding.weight" in mapped and len(report.transformed) == 3 * LAYERS
