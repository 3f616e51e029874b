"""CellFM model: shapes, masking, gradients, the gene_emb rule, the checkpoint table, freezing sets."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ftcore.checkpoint import read_state_dict
from ftcore.freezing import apply_freezing

from cellfm_ft.data import collate
from cellfm_ft.demo import mindspore_names
from cellfm_ft.model import (
    CHECKPOINT_MAP,
    FREEZE_STRATEGIES,
    CellFM,
    CellFMClassifier,
    classification_loss,
    config_from_state_dict,
    make_config,
    pad_rows,
)


def tiny(num_cls=3, n_genes=40):
    torch.manual_seed(0)
    return CellFMClassifier(make_config("tiny", n_genes=n_genes, num_cls=num_cls, enc_dropout=0.0)).eval()


def batch(lengths=(7, 3), n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    items = [(rng.choice(np.arange(1, n_genes + 1), n, replace=False), rng.gamma(2, 1, n).astype(np.float32), i % 3)
             for i, n in enumerate(lengths)]
    return collate(items)


def test_shapes():
    m, b = tiny(), batch((7, 3, 5))
    tokens = m.extractor(b["expr"], b["gene"], b["zero_idx"])
    assert tokens.shape == (3, 8, 32)
    l1, l2 = m(b["expr"], b["gene"], b["zero_idx"])
    assert l1.shape == l2.shape == (3, 3)
    gw, cw = m.extractor.decode(tokens, b["gene"])
    assert gw.shape == cw.shape == (3, 7)
    assert m.embed(b["expr"], b["gene"], b["zero_idx"]).shape == (3, 32)


def test_padding_does_not_change_a_cell():
    """A cell's logits are the same alone and batched with a longer cell (padding is masked out)."""
    m = tiny()
    b = batch((3, 9))
    alone = collate([(b["gene"][0, :3].numpy(), b["expr"][0, :3].numpy(), 0)])
    with torch.no_grad():
        batched = m(b["expr"], b["gene"], b["zero_idx"])[0][0]
        single = m(alone["expr"], alone["gene"], alone["zero_idx"])[0][0]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_gene_order_does_not_matter():
    """No positions: permuting a cell's genes leaves its cell embedding unchanged."""
    m = tiny()
    b = batch((6,))
    perm = torch.randperm(6)
    with torch.no_grad():
        a = m.embed(b["expr"], b["gene"], b["zero_idx"])
        p = m.embed(b["expr"][:, perm], b["gene"][:, perm], b["zero_idx"])
    torch.testing.assert_close(a, p, atol=1e-5, rtol=1e-5)


def test_gradients_reach_exactly_the_trainable_parameters():
    m = tiny().train()
    report = apply_freezing(m, FREEZE_STRATEGIES["cls_encoder"], verbose=False)
    assert report.trainable_names and all(("cls." in n or "encoder" in n) for n in report.trainable_names)
    assert all(not ("cls." in n or "encoder" in n) for n in report.frozen_names)
    assert "extractor.gene_emb" in report.frozen_names and "extractor.value_enc.value_enc.w1.weight" in report.frozen_names
    b = batch((7, 3, 5))
    classification_loss(*m(b["expr"], b["gene"], b["zero_idx"]), b["label"]).backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert m.cls.cluster_emb.grad.abs().sum() > 0 and m.extractor.encoder[0].attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 765, 27855, 36601])
def test_pad_rows_matches_cellfm_and_fits_every_gene_id(n):
    assert pad_rows(n) == n + 1 + (-n - 1) % 8  # CellFM's own size rule
    assert pad_rows(n) % 8 == 0 and pad_rows(n) >= n + 1  # ids 1..n and pad row 0 fit


def test_reinit_gene_emb_teachers_rule():
    m = tiny(n_genes=40)
    torch.manual_seed(1)
    m.extractor.reinit_gene_emb(100)
    emb = m.extractor.gene_emb
    assert emb.shape == (pad_rows(100), 32) == (104, 32)
    assert torch.all(emb[0] == 0)
    expected_std = (2.0 / (104 + 32)) ** 0.5  # xavier normal, gain 1
    assert abs(emb[1:].std().item() - expected_std) < 0.2 * expected_std


def test_pad_row_stays_zero_while_gene_emb_trains():
    m = tiny(n_genes=40).train()
    m.extractor.reinit_gene_emb(40)
    apply_freezing(m, FREEZE_STRATEGIES["full"], verbose=False)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    b = batch((7, 3, 5))
    before = m.extractor.gene_emb.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        classification_loss(*m(b["expr"], b["gene"], b["zero_idx"]), b["label"]).backward()
        opt.step()
    assert torch.all(m.extractor.gene_emb[0] == 0)
    assert not torch.equal(before[1:], m.extractor.gene_emb[1:].detach())  # the other rows did train


def test_table_accounts_for_every_key_of_the_pretraining_layout():
    """Pretraining names (no 'extractor.' prefix, gamma/beta) + optimizer entries -> our model, all accounted for."""
    torch.manual_seed(0)
    model = CellFM(make_config("tiny", n_genes=50))
    ms = mindspore_names({k: v.clone() for k, v in model.state_dict().items()})
    assert any(k.endswith(".gamma") for k in ms) and not any(k.startswith("extractor.") for k in ms)
    ms["moment1.encoder.0.attn.q_proj.weight"] = torch.zeros(32, 32)
    ms["global_step"] = torch.tensor(10)
    ms["learning_rate"] = torch.tensor(1e-4)
    ms["query.attn.q_proj.weight"] = torch.zeros(32, 32)  # the pretraining net's optional label head
    ms["proj.0.weight"] = torch.zeros(32, 32)
    ms["value_dec.zero_logit.0.weight"] = torch.zeros(32, 32)
    mapped, report = CHECKPOINT_MAP.apply(ms)
    assert set(report.skipped) == {"moment1.encoder.0.attn.q_proj.weight", "global_step", "learning_rate",
                                   "query.attn.q_proj.weight", "proj.0.weight", "value_dec.zero_logit.0.weight"}
    assert all(report.skipped.values())
    own = {"extractor." + k: v for k, v in model.state_dict().items()}
    assert set(mapped) == set(own)
    for k, v in own.items():
        torch.testing.assert_close(mapped[k], v)


def test_table_accounts_for_every_key_of_the_annotation_checkpoint(parity_ckpt):
    """The MindSpore-written fixture (annotation Net: extractor.*, cluster_emb, query_layer.*, classifier)."""
    raw = read_state_dict(parity_ckpt)
    mapped, report = CHECKPOINT_MAP.apply(raw)
    assert not report.skipped
    cfg = config_from_state_dict(mapped, "tiny")
    cfg.num_cls = mapped["cls.cluster_emb"].shape[0]
    own = CellFMClassifier(cfg).state_dict()
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in own.items())
    assert len(raw) == len(own)


def test_80m_config_has_about_80m_parameters():
    with torch.device("meta"):
        m = CellFM(make_config("80m"))
    n = sum(p.numel() for name, p in m.named_parameters() if not re.match(r"(value_dec|cellwise_dec)\.", name))
    assert m.gene_emb.shape == (27856, 1536)
    assert 79e6 < n < 82e6, n
