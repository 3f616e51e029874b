"""Parity with MindSpore: our converted model reproduces the outputs real MindSpore computed.

The fixture (tests/fixtures/make_parity_fixture.py, run with mindspore 2.10.0 on the CPU) holds
a CellFM-shaped annotation Net with fixed random weights, saved by mindspore.save_checkpoint,
and its outputs for three cells of 10, 6 and 3 genes (padded to 10). Tolerance: absolute 2e-5
plus relative 1e-4 (float32 on both sides; the differences measured are <= 3.1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cellfm_ft.model import CellFMClassifier, config_from_state_dict, pad_rows
from cellfm_ft.train import convert, load_cellfm_weights

FIXTURES = Path(__file__).parent / "fixtures"

ATOL, RTOL = 2e-5, 1e-4


@pytest.fixture(scope="module")
def converted(parity_ckpt):
    sd, _ = load_cellfm_weights(str(parity_ckpt))
    cfg = config_from_state_dict(sd, "tiny")
    cfg.num_cls = sd["cls.cluster_emb"].shape[0]
    cfg.enc_dropout = 0.0
    model = CellFMClassifier(cfg).eval()
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def io():
    return dict(np.load(FIXTURES / "cellfm_tiny_io.npz"))


def test_config_read_from_the_checkpoint_matches_the_generator(converted):
    gen = json.loads((FIXTURES / "cellfm_tiny_config.json").read_text())["config"]
    # The table's rows fix the vocabulary only up to the alignment rows (n_genes + 1 rounded up to 8).
    assert pad_rows(converted.cfg.n_genes) == pad_rows(gen["n_genes"])
    assert converted.cfg.enc_nlayers == gen["enc_nlayers"]
    assert converted.cfg.num_cls == gen["num_cls"]


@pytest.mark.parametrize("name", ["tokens", "gw_pred", "cw_pred", "logits1", "logits2"])
def test_outputs_match_mindspore(converted, io, name):
    e, g, z = (torch.from_numpy(io[k]) for k in ("expr", "gene", "zero_idx"))
    with torch.no_grad():
        tokens = converted.extractor(e, g, z)
        gw, cw = converted.extractor.decode(tokens, g)
        l1, l2 = converted.cls(tokens, z)
    ours = dict(tokens=tokens, gw_pred=gw, cw_pred=cw, logits1=l1, logits2=l2)[name].numpy()
    ref = io[name]
    if name == "tokens":  # padded positions are not outputs anyone reads; compare real tokens only
        mask = io["zero_idx"].astype(bool)
        ours, ref = ours[mask], ref[mask]
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=RTOL)
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero tensors


def test_converted_safetensors_gives_the_same_model(parity_ckpt, tmp_path, converted):
    out = tmp_path / "tiny.safetensors"
    report = convert(str(parity_ckpt), str(out), config="tiny")
    assert out.exists() and (tmp_path / "tiny.json").exists()
    assert report["config"]["enc_dims"] == 32 and not report["mapping"]["skipped"]
    sd, _ = load_cellfm_weights(str(out))
    for k, v in converted.state_dict().items():
        torch.testing.assert_close(sd[k], v)
