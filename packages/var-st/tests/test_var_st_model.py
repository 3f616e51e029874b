"""Model: shapes, gradients, quantiser known case, KV cache == full forward, sampling, checkpoints."""

from __future__ import annotations

import pytest
import torch

from ftcore.errors import UserError
from var_st.model import (KVCache, MultiScaleGeneVQVAE, TwoStageVARST, VARConfig, VQVAEConfig, codebook_stats,
                          sample_tokens)

VQ = {"vocab_size": 32, "embed_dim": 8, "hidden_dim": 32, "coarse_scales": (1, 4, 8), "reservoir_size": 64}
VAR = {"embed_dim": 16, "num_heads": 2, "num_layers": 2, "feedforward_dim": 32, "condition_embed_dim": 16,
       "histology_dim": 12, "max_sequence_length": 64}
G = 20


def tiny_model(stage=1, seed=0) -> TwoStageVARST:
    torch.manual_seed(seed)
    return TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config=VAR, current_stage=stage)


def randomise_ada(model: TwoStageVARST) -> None:
    """AdaLN-Zero starts every block as the identity; give the gates values so tests see the blocks."""
    with torch.no_grad():
        for block in model.var.blocks:
            block.ada[1].weight.normal_(0, 0.3)
            block.ada[1].bias.normal_(0, 0.3)


def test_default_sizes_give_241_tokens():
    vq = MultiScaleGeneVQVAE(200, VQVAEConfig(vocab_size=64, embed_dim=4, hidden_dim=8))
    assert vq.scale_sizes == (1, 8, 32, 200) and vq.seq_len == 241
    assert VQVAEConfig().vocab_size == 4096 and VQVAEConfig().embed_dim == 128
    cfg = VARConfig()
    assert (cfg.embed_dim, cfg.num_heads, cfg.num_layers, cfg.feedforward_dim, cfg.condition_embed_dim) == (640, 8, 12, 2560, 640)
    x = torch.rand(3, 200)
    assert vq.encode_tokens(x).shape == (3, 241)
    assert vq.reconstruct(x).shape == (3, 200)


def test_stage1_forward_shapes_and_straight_through_gradients():
    model = tiny_model()
    vq = model.vqvae
    vq.fit_gene_stats(torch.rand(50, G) * 3)
    out = vq(torch.rand(6, G) * 3)
    assert out["tokens"].shape == (6, 1 + 4 + 8 + G)
    out["loss"].backward()
    for name in ("encoder.0.weight", "quantizer.codebook", "quantizer.phi.0.weight", "decoder.0.weight", "readout"):
        grad = dict(vq.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.var.parameters())  # stage 1 leaves the VAR alone


def test_quantiser_known_case_picks_nearest_codes_per_scale():
    cfg = VQVAEConfig(vocab_size=3, embed_dim=2, hidden_dim=4, coarse_scales=(1, 2), phi_ratio=0.0)
    vq = MultiScaleGeneVQVAE(4, cfg)
    q = vq.quantizer
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [-2.0, 0.0]]))
    f = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # all positions at code 1
    _, tokens, _, _, pooled = q(f)
    assert tokens[0].tolist() == [[1]]  # global: mean is (1, 1) -> code 1
    assert tokens[1].tolist() == [[0, 0]]  # nothing left -> code 0 (the zero vector)
    assert tokens[2].tolist() == [[0, 0, 0, 0]]
    torch.testing.assert_close(pooled[0], torch.ones(1, 1, 2))  # what each scale quantised
    torch.testing.assert_close(pooled[1], torch.zeros(1, 2, 2))


def test_teacher_forcing_inputs_have_one_row_per_non_first_token():
    model = tiny_model(stage=2)
    tokens = torch.randint(0, 32, (3, model.vqvae.seq_len))
    inputs = model.vqvae.quantizer.teacher_forcing_inputs(model.vqvae.split_scales(tokens))
    assert inputs.shape == (3, model.vqvae.seq_len - 1, 8)


def cached_step_logits(model, cond, tokens):
    """The logits of scale-by-scale decoding with the KV cache, fed the true tokens of each scale."""
    q, caches = model.vqvae.quantizer, [KVCache() for _ in model.var.blocks]
    scales, f_hat, inputs, outs = model.vqvae.split_scales(tokens), None, None, []
    for k in range(len(scales)):
        outs.append(model.var.step(cond, inputs, k, caches))
        part = q.embed_scale(scales[k], k)
        f_hat = part if f_hat is None else f_hat + part
        if k + 1 < len(scales):
            inputs = q.next_scale_input(f_hat, k + 1)
    return torch.cat(outs, 1)


def test_kv_cached_decoding_matches_full_block_causal_forward():
    model = tiny_model(stage=2)
    randomise_ada(model)
    model.eval()
    tokens = torch.randint(0, 32, (4, model.vqvae.seq_len))
    h, c = torch.randn(4, 12), torch.randn(4, 2)
    full = model(h, c, tokens)
    torch.testing.assert_close(cached_step_logits(model, model.var.condition(h, c), tokens), full, atol=1e-5, rtol=1e-4)


def test_block_causal_future_scales_do_not_change_earlier_logits():
    model = tiny_model(stage=2)
    randomise_ada(model)
    model.eval()
    tokens = torch.randint(0, 32, (2, model.vqvae.seq_len))
    changed = tokens.clone()
    changed[:, 1 + 4:] = torch.randint(0, 32, changed[:, 1 + 4:].shape)  # scales 8 and G differ
    h, c = torch.randn(2, 12), torch.randn(2, 2)
    a, b = model(h, c, tokens), model(h, c, changed)
    # scale-8 logits depend on tokens of scales 1 and 4 only (their f_hat); scales 1 and 4 too
    torch.testing.assert_close(a[:, : 1 + 4 + 8], b[:, : 1 + 4 + 8])
    assert not torch.allclose(a[:, 1 + 4 + 8:], b[:, 1 + 4 + 8:])


def test_stage2_gradients_reach_var_only():
    model = tiny_model(stage=2)
    randomise_ada(model)
    model.train()
    tokens = torch.randint(0, 32, (3, model.vqvae.seq_len))
    logits = model(torch.randn(3, 12), torch.randn(3, 2), tokens)
    assert logits.shape == (3, model.vqvae.seq_len, 32)
    torch.nn.functional.cross_entropy(logits.reshape(-1, 32), tokens.flatten()).backward()
    assert all(p.grad is None for p in model.vqvae.parameters())
    assert model.var.histology_embed[1].weight.grad.abs().sum() > 0
    assert model.var.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_inference_shapes_and_seed_reproducibility():
    model = tiny_model(stage=2)
    randomise_ada(model)
    h, c = torch.randn(5, 12), torch.randn(5, 2)
    a = model.inference(h, c, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    b = model.inference(h, c, temperature=1.0, top_k=10, top_p=0.9, seed=7)
    other = model.inference(h, c, temperature=1.0, top_k=None, top_p=None, seed=8)
    assert a["predicted_gene_expression"].shape == (5, G) and a["tokens"].shape == (5, model.vqvae.seq_len)
    assert torch.equal(a["tokens"], b["tokens"])
    assert torch.equal(a["predicted_gene_expression"], b["predicted_gene_expression"])
    assert not torch.equal(a["tokens"], other["tokens"])
    e1 = model.inference(h, c, expected=True)
    assert torch.equal(e1["predicted_gene_expression"], model.inference(h, c, expected=True)["predicted_gene_expression"])
    with pytest.raises(UserError, match="not both"):
        model.inference(h, c, greedy=True, expected=True)
    g1 = model.inference(h, c, greedy=True)["tokens"]
    assert torch.equal(g1, model.inference(h, c, greedy=True)["tokens"])
    with pytest.raises(UserError, match="expects"):
        model.inference(torch.randn(5, 13), c)


def test_sample_tokens_filters():
    logits = torch.tensor([[[5.0, 4.0, 0.0, -1.0]]])
    assert sample_tokens(logits, greedy=True).item() == 0
    gen = torch.Generator().manual_seed(0)
    draws = {sample_tokens(logits, top_k=2, generator=gen).item() for _ in range(200)}
    assert draws == {0, 1}
    # top_p: p(0) = 0.72 -> keeping mass >= 0.5 keeps only token 0
    assert {sample_tokens(logits, top_p=0.5, generator=gen).item() for _ in range(50)} == {0}
    with pytest.raises(UserError, match="temperature"):
        sample_tokens(logits, temperature=0.0)


def test_codebook_stats_known_case():
    tokens = torch.tensor([[0, 1, 1], [0, 2, 3]])  # scale 1: codes {0}; scale 2: {1, 2, 3}
    stats = codebook_stats(tokens, (1, 2), vocab_size=4)
    assert stats["utilisation_s1"] == 0.25 and stats["perplexity_s1"] == pytest.approx(1.0)
    assert stats["utilisation_s2"] == 0.75
    p = torch.tensor([0.5, 0.25, 0.25])
    assert stats["perplexity_s2"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())))
    assert stats["utilisation"] == 1.0


def test_dead_code_restart_moves_unused_codes_onto_data():
    model = tiny_model()
    vq = model.vqvae
    vq.fit_gene_stats(torch.rand(40, G))
    vq.train()
    vq(torch.rand(16, G))
    used = vq.code_counts.sum(0) > 0
    before = vq.quantizer.codebook.detach().clone()
    n = vq.restart_dead_codes()
    after = vq.quantizer.codebook.detach()
    assert n == int((~used).sum()) > 0
    assert torch.equal(after[used], before[used])
    assert not torch.allclose(after[~used], before[~used])
    assert vq.code_counts.sum() == 0 and int(vq.restart_round) == 1


def test_configs_from_dicts_with_clear_errors():
    with pytest.raises(UserError, match="did you mean"):
        TwoStageVARST(G, {**VQ, "vocab_sise": 8}, VAR)
    with pytest.raises(UserError, match="must match"):
        TwoStageVARST(G, VQ, {**VAR, "vocab_size": 64})
    with pytest.raises(UserError, match="below num_genes"):
        TwoStageVARST(6, VQ, VAR)
    model = TwoStageVARST(G, VQ, VAR)  # var_config without vocab_size inherits the codebook size
    assert model.var_config.vocab_size == 32


def test_training_stage_freezing_and_info():
    model = tiny_model(stage=1)
    info = model.get_model_info()
    assert info["current_stage"] == 1 and info["trainable_parameters"] == info["stage1_parameters"]
    assert info["total_parameters"] == sum(p.numel() for p in model.parameters())
    model.set_training_stage(2)
    info = model.get_model_info()
    assert info["current_stage"] == 2 and info["trainable_parameters"] == info["stage2_parameters"]
    with pytest.raises(UserError):
        model.set_training_stage(3)


def test_stage_and_complete_checkpoints_round_trip(tmp_path):
    model = tiny_model(stage=1)
    model.vqvae.fit_gene_stats(torch.rand(30, G))
    model.gene_names = [f"g{i}" for i in range(G)]
    model.save_stage_checkpoint(tmp_path / "stage1.ckpt", stage=1)
    other = tiny_model(stage=1, seed=1)
    other.set_training_stage(2, stage1_ckpt_path=tmp_path / "stage1.ckpt")
    for (k, a), b in zip(model.vqvae.state_dict().items(), other.vqvae.state_dict().values()):
        assert torch.equal(a, b), k
    assert other.gene_names == model.gene_names and other.current_stage == 2
    randomise_ada(other)
    other.save_complete_model(tmp_path / "complete.ckpt")
    loaded = TwoStageVARST.load_complete_model(tmp_path / "complete.ckpt", device="cpu")
    h, c = torch.randn(3, 12), torch.randn(3, 2)
    torch.testing.assert_close(loaded.inference(h, c, seed=3)["predicted_gene_expression"],
                               other.inference(h, c, seed=3)["predicted_gene_expression"])
    with pytest.raises(UserError, match="stage-1"):
        TwoStageVARST.load_complete_model(tmp_path / "stage1.ckpt")
    fresh = TwoStageVARST.from_stage1(tmp_path / "stage1.ckpt", VAR)
    assert fresh.current_stage == 2 and fresh.num_genes == G
    with pytest.raises(UserError, match="genes"):
        TwoStageVARST(G + 1, VQ, VAR).set_training_stage(2, stage1_ckpt_path=tmp_path / "stage1.ckpt")


def test_lightning_prefixed_checkpoint_loads(tmp_path):
    model = tiny_model(stage=2)
    randomise_ada(model)
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "extra": model.metadata(2)}, tmp_path / "lightning.ckpt")
    # read_checkpoint keeps the whole object; load_complete_model maps "model.var." -> "var."
    obj = torch.load(tmp_path / "lightning.ckpt", weights_only=True)
    torch.save({"model": obj["state_dict"], "extra": obj["extra"]}, tmp_path / "wrapped.ckpt")
    loaded = TwoStageVARST.load_complete_model(tmp_path / "wrapped.ckpt")
    assert torch.equal(loaded.var.head.weight, model.var.head.weight)


def test_gene_order_puts_coexpressed_genes_next_to_each_other():
    from var_st.model import _coexpression_order

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 1, generator=gen), torch.randn(400, 1, generator=gen)
    # genes 0, 2, 4, ... follow program a; 1, 3, 5, ... follow program b
    x = torch.cat([(a if g % 2 == 0 else b) + 0.3 * torch.randn(400, 1, generator=gen) for g in range(10)], 1)
    order = _coexpression_order(x.double()).tolist()
    assert sorted(order) == list(range(10))
    assert {g % 2 for g in order[:5]} == {order[0] % 2} and {g % 2 for g in order[5:]} == {order[5] % 2}
    vq = MultiScaleGeneVQVAE(10, VQVAEConfig(vocab_size=8, embed_dim=2, hidden_dim=4, coarse_scales=(1, 2)))
    vq.fit_gene_stats(x)
    assert vq.gene_order.tolist() == order
    torch.testing.assert_close(vq.gene_mean, x.mean(0))


def test_codebook_init_places_codes_on_each_scales_residuals():
    model = tiny_model()
    vq = model.vqvae
    x = torch.rand(40, G) * 3
    vq.fit_gene_stats(x)
    vq.init_codebook(x, seed=0)
    f, _ = vq._encode(x)
    coarse = vq.quantizer._down(f, 1).reshape(-1, 8)
    share = 32 // 4
    # the global scale's share of the codebook are global-scale latents of the data
    d = torch.cdist(vq.quantizer.codebook[:share].detach(), coarse).min(1).values
    assert torch.allclose(d, torch.zeros_like(d), atol=1e-3)  # cdist rounding
    cb = vq.quantizer.codebook.detach().clone()
    vq.init_codebook(x, seed=0)
    assert torch.equal(cb, vq.quantizer.codebook.detach())  # deterministic (identical on every DDP rank)


def test_expected_decoding_is_the_mean_contribution_of_the_codes():
    model = tiny_model(stage=2)
    q = model.vqvae.quantizer
    p = torch.softmax(torch.randn(32), -1)  # one distribution for every position of scale 1 (4 tokens)
    expected = q.contribution((p @ q.codebook).expand(2, 4, -1), 1)
    mixture = sum(p[v] * q.embed_scale(torch.full((2, 4), v), 1) for v in range(32))
    torch.testing.assert_close(expected, mixture, atol=1e-5, rtol=1e-4)


def test_stage2_stage_checkpoint_round_trips(tmp_path):
    # save_stage_checkpoint(stage=2) holds the VAR and the frozen VQ-VAE it decodes with, like best_var.ckpt
    model = tiny_model(stage=2)
    randomise_ada(model)
    model.vqvae.fit_gene_stats(torch.rand(30, G))
    model.save_stage_checkpoint(tmp_path / "stage2.ckpt", stage=2)
    loaded = TwoStageVARST.load_complete_model(tmp_path / "stage2.ckpt")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    h, c = torch.randn(3, 12), torch.randn(3, 2)
    torch.testing.assert_close(loaded.inference(h, c, seed=3)["predicted_gene_expression"],
                               model.inference(h, c, seed=3)["predicted_gene_expression"])
    other = tiny_model(stage=1, seed=1)
    other.set_training_stage(2, stage1_ckpt_path=tmp_path / "stage2.ckpt")  # its VQ-VAE part starts a new stage 2
    assert torch.equal(other.vqvae.gene_mean, model.vqvae.gene_mean)
    with pytest.raises(UserError, match="stage must be 1 or 2"):
        model.save_stage_checkpoint(tmp_path / "x.ckpt", stage=3)


def test_inference_rejects_bad_coords_and_non_finite_inputs():
    model = tiny_model(stage=2)
    h, c = torch.randn(4, 12), torch.randn(4, 2)
    with pytest.raises(UserError, match=r"spatial coords have shape \(4, 3\)"):
        model.inference(h, torch.randn(4, 3))
    with pytest.raises(UserError, match=r"spatial coords have shape \(3, 2\)"):
        model.inference(h, torch.randn(3, 2))
    h[2, 5] = float("nan")
    with pytest.raises(UserError, match="histology features contain NaN or inf in 1 rows"):
        model.inference(h, c)
    c[1, 0] = float("inf")
    with pytest.raises(UserError, match="spatial coords contain NaN or inf"):
        model.inference(torch.randn(4, 12), c)


def test_stage2_training_without_a_stage1_vqvae_is_a_clear_error(tiny, tmp_path):
    from var_st.data import load_spots
    from var_st.train import train_stage2

    data = load_spots(tiny.adata(), source="t", num_genes=G)
    run = {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0, "device": "cpu"}
    model = tiny_model(stage=2)  # stage 2 selected, but no trained VQ-VAE behind it
    with pytest.raises(UserError, match="stage 2 needs the stage-1 VQ-VAE"):
        train_stage2(model, data, tmp_path / "s2", run, {})
    assert not (tmp_path / "s2").exists()


def test_guide_loss_weights_are_the_defaults():
    cfg = VQVAEConfig()
    assert (cfg.beta, cfg.hierarchical_loss_weight, cfg.vq_loss_weight) == (0.25, 0.1, 0.25)
    var = VARConfig()
    assert var.dropout == 0.1 and var.vocab_size == cfg.vocab_size and var.max_sequence_length >= 241


def test_straight_through_estimator_passes_the_decoder_gradient_unchanged():
    # the quantised output carries f_hat's value but d(out)/d(f) = identity (no detour through argmin)
    model = tiny_model()
    q = model.vqvae.quantizer
    f = torch.randn(2, G, 8, requires_grad=True)
    out, tokens, _, _, _ = q(f)
    torch.testing.assert_close(out.detach(), q.tokens_to_f_hat(tokens))
    w = torch.randn_like(out)
    (out * w).sum().backward()
    torch.testing.assert_close(f.grad, w)


def test_token_weights_balance_scales():
    from var_st.train import token_weights

    sizes = (1, 4, 8, G)
    L = sum(sizes)
    flat = token_weights(sizes, 0.0)
    torch.testing.assert_close(flat, torch.ones(L))  # VAR: every token alike
    per_scale = torch.stack([w.sum() for w in torch.split(token_weights(sizes, 1.0), list(sizes))])
    torch.testing.assert_close(per_scale, torch.full((4,), L / 4))  # every scale alike
    half = token_weights(sizes, 0.5)
    assert half.mean().item() == pytest.approx(1.0) and half[0] > half[1] > half[5] > half[-1]


def test_token_loss_weights_and_label_smoothing_known_case():
    from var_st.train import token_loss, token_weights

    torch.manual_seed(0)
    logits, tokens = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), tokens.flatten(), reduction="none").view(3, 5)
    torch.testing.assert_close(token_loss(logits, tokens, torch.ones(5)), ce.mean())
    w = token_weights((1, 4), 1.0)  # the one coarse token weighs as much as the four fine ones together
    torch.testing.assert_close(token_loss(logits, tokens, w), (ce[:, 0] * 2.5 + ce[:, 1:].sum(1) * 2.5 / 4).mean() / 5)
    eps = 0.2
    uniform = -torch.log_softmax(logits, -1).mean(-1)
    torch.testing.assert_close(token_loss(logits, tokens, torch.ones(5), eps), ((1 - eps) * ce + eps * uniform).mean())


def test_soft_targets_peak_at_the_stage1_token_and_follow_the_code_distances():
    from var_st.train import token_loss

    model = tiny_model()
    vq = model.vqvae
    torch.manual_seed(1)
    vq.init_codebook(torch.rand(64, G) * 3)
    x = torch.rand(6, G) * 3
    hard = vq.encode_tokens(x)
    soft = vq.soft_tokens(x, 1.0)
    assert soft.shape == (6, sum(vq.scale_sizes), VQ["vocab_size"])
    torch.testing.assert_close(soft.sum(-1), torch.ones(6, sum(vq.scale_sizes)))
    assert torch.equal(soft.argmax(-1), hard)  # the nearest code keeps the most mass
    # a known case at scale 1: the target is softmax(-(d - d_min) / tau), tau = t x (d_2nd - d_min) averaged
    f, _ = vq._encode(x)
    r = vq.quantizer(f)[4][0]  # [6, 1, D] residual of the global scale
    d = torch.cdist(r.flatten(0, 1), vq.quantizer.codebook).pow(2)  # [6, V]
    two = d.topk(2, dim=-1, largest=False).values
    tau = 2.0 * (two[:, 1] - two[:, 0]).mean()
    torch.testing.assert_close(vq.soft_tokens(x, 2.0)[:, 0], (-(d - two[:, :1]) / tau).softmax(-1), atol=1e-4, rtol=1e-4)
    sharp = vq.soft_tokens(x, 1e-4)  # a small temperature: the hard tokens, and the hard loss
    assert (sharp.gather(-1, hard[..., None]) > 0.99).float().mean() > 0.95
    logits = torch.randn(6, sum(vq.scale_sizes), VQ["vocab_size"])
    w = torch.ones(sum(vq.scale_sizes))
    onehot = torch.nn.functional.one_hot(hard, VQ["vocab_size"]).float()
    torch.testing.assert_close(token_loss(logits, hard, w, soft=onehot), token_loss(logits, hard, w))
    assert token_loss(logits, hard, w, soft=soft) != token_loss(logits, hard, w)


def test_histology_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config={**VAR, "histology_dropout": 0.5}, current_stage=2)
    h, c = torch.randn(4, 12), torch.randn(4, 2)
    model.train()
    assert not torch.equal(model.var.condition(h, c), model.var.condition(h, c))
    model.eval()
    torch.testing.assert_close(model.var.condition(h, c), model.var.condition(h, c))
    plain = tiny_model(stage=2)  # the default (0) keeps the condition deterministic while training
    plain.train()
    torch.testing.assert_close(plain.var.condition(h, c), plain.var.condition(h, c))
    assert set(plain.state_dict()) == set(model.state_dict())  # no new weights: old checkpoints load


def test_histology_pca_projection_keeps_the_top_principal_directions_and_is_frozen():
    torch.manual_seed(0)
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config={**VAR, "histology_projection": "pca"},
                          current_stage=2)
    basis = torch.linalg.qr(torch.randn(12, 12))[0]
    # 200 spots whose features vary strongly along 3 known directions and weakly along the rest
    h = (torch.randn(200, 3) * 5) @ basis[:, :3].T + torch.randn(200, 9) * 0.1 @ basis[:, 3:].T + 2.0
    model.var.fit_histology_pca(h)
    norm, proj = model.var.histology_embed
    z = norm(h)
    out = proj(z)
    assert out.mean(0).abs().max() < 1e-4  # centred on the training spots
    assert out.var(0)[:12].mean().item() == pytest.approx(1.0, rel=1e-3)
    # the three strongest components span the layer-normed features' top principal subspace
    zc = z - z.mean(0)
    top = torch.linalg.svd(zc, full_matrices=False)[2][:3]
    w = proj.weight[:3] / proj.weight[:3].norm(dim=1, keepdim=True)
    torch.testing.assert_close(torch.linalg.svdvals(w @ top.T), torch.ones(3), atol=1e-4, rtol=0)
    assert not any(p.requires_grad for p in model.var.histology_embed.parameters())
    assert model.var.blocks[0].attn.qkv.weight.requires_grad
    with pytest.raises(UserError, match="learned or pca"):
        VARConfig(histology_projection="ridge")


def test_model_split_keeps_every_old_import_path():
    # issue 14: model.py split into config / vqvae / transformer; `from var_st.model import X` must keep
    # working for every name that lived there, as the very object of its new module
    import var_st.config as config
    import var_st.model as model
    import var_st.transformer as transformer
    import var_st.vqvae as vqvae

    homes = {config: ["_b", "VQVAEConfig", "VARConfig", "PRESETS", "_as_config"],
             vqvae: ["MultiScaleResidualQuantizer", "MultiScaleGeneVQVAE", "_coexpression_order", "codebook_stats"],
             transformer: ["KVCache", "ScaleCausalSelfAttention", "AdaLNBlock", "GeneVARTransformer", "sample_tokens"]}
    for module, names in homes.items():
        for name in names:
            assert getattr(model, name) is getattr(module, name), name
    for name in ["TwoStageVARST", "CHECKPOINT_KEYMAP", "_plain", "_load_strict", *model.__all__]:
        assert hasattr(model, name), name


def test_expected_decoding_forward_matches_inference_and_carries_gradients():
    # var.expected_loss_weight trains on this prediction: it must be exactly what predict writes by default
    model = tiny_model(stage=2)
    randomise_ada(model)
    model.vqvae.fit_gene_stats(torch.rand(40, G) * 3)
    x, h, c = torch.rand(5, G) * 3, torch.randn(5, 12), torch.randn(5, 2)
    tokens = model.vqvae.encode_tokens(x)
    model.eval()
    logits, z = model(h, c, tokens, expected_decoding=True)
    torch.testing.assert_close(logits, model(h, c, tokens))
    expected = model.inference(h, c, expected=True)["predicted_gene_expression"]
    torch.testing.assert_close(model.vqvae._unstandardise(z), expected, atol=1e-5, rtol=1e-5)
    model.train()
    _, z = model(h, c, tokens, expected_decoding=True)
    (z - model.vqvae.standardise(x)).pow(2).mean().backward()
    head, hist = model.var.head.weight.grad, model.var.histology_embed[1].weight.grad
    assert head is not None and head.abs().sum() > 0 and hist is not None and hist.abs().sum() > 0
    assert all(p.grad is None for p in model.vqvae.parameters())  # the VQ-VAE stays frozen


def test_coord_dropout_one_leaves_the_coordinates_out_of_the_condition():
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config={**VAR, "coord_dropout": 1.0}, current_stage=2)
    h = torch.randn(4, 12)
    for training in (True, False):  # training and prediction alike
        model.train(training)
        torch.testing.assert_close(model.var.condition(h, torch.randn(4, 2)), model.var.condition(h, torch.randn(4, 2) * 10))
    with_coords = tiny_model(stage=2).eval()
    assert not torch.allclose(with_coords.var.condition(h, torch.zeros(4, 2)), with_coords.var.condition(h, torch.ones(4, 2)))
    assert set(with_coords.state_dict()) == set(model.state_dict())  # same weights: checkpoints keep their keys
    with pytest.raises(UserError, match="coord_dropout"):
        from ftcore.config import from_dict
        from_dict(VARConfig, {"coord_dropout": 1.5}, "test")


def test_spatial_average_known_case_stays_within_each_slide():
    from var_st.train import spatial_average

    x = torch.arange(10, dtype=torch.float32).reshape(5, 2).numpy()
    xy = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, 0.0], [0.1, 0.0]]).numpy()
    slides = torch.tensor([0, 0, 0, 1, 1]).numpy().astype(str)
    out = spatial_average(x, xy, slides, 2)
    # spot 0's nearest pair is {0, 1}; spot 2's is {2, 1}; slide 1's two spots average each other only
    torch.testing.assert_close(torch.as_tensor(out), torch.tensor([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [7.0, 8.0], [7.0, 8.0]]))
    torch.testing.assert_close(torch.as_tensor(spatial_average(x, xy, slides, 1)), torch.as_tensor(x))


def test_condition_path_knobs_are_opt_in_and_keep_the_kv_cache_exact():
    # round 4 of the demo probes: condition_to_tokens, adaln_init_std, condition_layers, histology_standardise
    plain = tiny_model(stage=2)
    torch.manual_seed(0)
    knobs = {"condition_to_tokens": True, "adaln_init_std": 0.05, "condition_layers": 2, "histology_standardise": True}
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config={**VAR, **knobs}, current_stage=2)
    new = set(model.state_dict()) - set(plain.state_dict())
    assert new == {"var.condition_tokens.weight", "var.condition_tokens.bias", "var.condition_mlp.3.weight",
                   "var.condition_mlp.3.bias", "var.histology_mean", "var.histology_scale"}
    assert set(plain.state_dict()) <= set(model.state_dict())  # the defaults keep the old keys exactly
    assert all(float(b.ada[1].weight.detach().abs().sum()) == 0 for b in plain.var.blocks)  # AdaLN-Zero by default
    assert all(float(b.ada[1].weight.detach().std()) == pytest.approx(0.05, rel=0.2) for b in model.var.blocks)
    # condition_to_tokens: the condition reaches every token's embedding, not only the start token
    h, c = torch.randn(4, 12), torch.randn(4, 2)
    nxt = torch.randn(4, model.vqvae.seq_len - 1, VQ["embed_dim"])
    cond = model.var.condition(h, c)
    emb = model.var._embed(cond, nxt, 0, model.vqvae.seq_len)
    emb_other = model.var._embed(cond + 1.0, nxt, 0, model.vqvae.seq_len)
    assert (emb - emb_other)[:, 1:].abs().amax() > 0
    plain_emb = plain.var._embed(cond, nxt, 0, model.vqvae.seq_len)
    torch.testing.assert_close(plain_emb[:, 1:], plain.var._embed(cond + 1.0, nxt, 0, model.vqvae.seq_len)[:, 1:])
    # the cached scale-by-scale decoding still equals the full teacher-forced forward with every knob on
    model.eval()
    tokens = torch.randint(0, 32, (4, model.vqvae.seq_len))
    full = model(h, c, tokens)
    torch.testing.assert_close(cached_step_logits(model, cond, tokens), full, atol=1e-5, rtol=1e-4)


def test_histology_standardise_makes_the_condition_blind_to_per_feature_units():
    # fit on the training features, the condition of features in other units (per-feature scale and offset,
    # as ridge's StandardScaler sees them) is the same
    torch.manual_seed(0)
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ, var_config={**VAR, "histology_standardise": True},
                          current_stage=2).eval()
    h, c = torch.randn(50, 12), torch.randn(50, 2)
    scale, offset = torch.rand(12) * 10 + 0.1, torch.randn(12) * 5
    model.var.fit_histology_scaler(h)
    a = model.var.condition(h, c)
    model.var.fit_histology_scaler(h * scale + offset)
    torch.testing.assert_close(model.var.condition(h * scale + offset, c), a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.var.histology_mean, (h * scale + offset).mean(0))
    plain = tiny_model(stage=2).eval()  # without it the units matter
    assert not torch.allclose(plain.var.condition(h * scale + offset, c), plain.var.condition(h, c), atol=1e-3)


def test_stage2_training_fits_the_histology_scaler_on_the_training_spots(tiny, tmp_path):
    from var_st.data import load_spots
    from var_st.train import train_stage2

    data = load_spots(tiny.adata(), source="t", num_genes=G)
    torch.manual_seed(0)
    model = TwoStageVARST(num_genes=G, vqvae_config=VQ,
                          var_config={**VAR, "histology_dim": tiny.hist, "histology_standardise": True,
                                      "histology_projection": "pca"}, current_stage=2)
    model.vqvae.fit_gene_stats(torch.as_tensor(data.expression[data.split["train"]]))
    model.stage1_source = "in memory"
    train_stage2(model, data, tmp_path / "s2", {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 0, "device": "cpu",
                                                "progress": False, "compile": "off"}, {})
    tr = torch.as_tensor(data.histology[data.split["train"]]).double()
    torch.testing.assert_close(model.var.histology_mean.double(), tr.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.var.histology_scale.double(), tr.std(0), atol=1e-4, rtol=1e-4)
    # the pca projection was fitted on the standardised features: they come out centred
    z = (tr.float() - model.var.histology_mean) / model.var.histology_scale
    assert model.var.histology_embed(z).mean(0).abs().max() < 1e-3
