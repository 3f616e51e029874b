"""The ST model: shapes, gradients, set semantics, the losses on known cases, presets, checkpoint table."""

from __future__ import annotations

import pytest
import torch

from ftcore.errors import UserError
from ftcore.loading import load_partial
from state_tx.model import (ARC_STATE_SKIP, PRESETS, StateTransitionModel, StateTxConfig, arc_state_to_ours,
                            energy_loss, mmd_loss, set_loss)


def tiny(**kw) -> StateTxConfig:
    base = dict(input_dim=12, output_dim=12, pert_dim=5, batch_dim=3, hidden_dim=16, cell_set_len=6,
                n_layers=2, n_heads=2, head_dim=8, intermediate_size=24, n_encoder_layers=2, n_decoder_layers=2,
                dropout=0.0)
    base.update(kw)
    return StateTxConfig(**base)


def inputs(c: StateTxConfig, b: int = 3):
    torch.manual_seed(0)
    basal = torch.rand(b, c.cell_set_len, c.input_dim)
    pert = torch.nn.functional.one_hot(torch.randint(0, c.pert_dim, (b,)), c.pert_dim).float()
    return basal, pert[:, None].expand(-1, c.cell_set_len, -1), torch.randint(0, max(c.batch_dim, 1), (b, c.cell_set_len))


@pytest.mark.parametrize("space,residual,batch_enc,basal_proj", [
    ("gene", True, False, True), ("gene", False, True, False), ("all", True, True, True), ("all", False, False, False)])
def test_forward_shapes_and_gradients(space, residual, batch_enc, basal_proj):
    c = tiny(output_space=space, predict_residual=residual, batch_encoder=batch_enc, use_basal_projection=basal_proj)
    model = StateTransitionModel(c)
    basal, pert, batch = inputs(c)
    out = model(basal, pert, batch)
    assert out.shape == (3, c.cell_set_len, c.output_dim)
    assert (out >= 0).all()  # ReLU: log-normalised expression
    loss = set_loss(out, torch.rand_like(out), c.loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert grads["transformer_backbone.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    assert ("final_down_then_up.0.weight" in grads) == (space == "all" and residual)
    assert ("batch_encoder.weight" in grads) == batch_enc


def test_set_is_permutation_equivariant():
    """No positions: permuting the cells of a set permutes the predictions the same way."""
    c = tiny()
    model = StateTransitionModel(c).eval()
    basal, pert, batch = inputs(c, 1)
    perm = torch.randperm(c.cell_set_len)
    out = model(basal, pert, batch)
    out_perm = model(basal[:, perm], pert[:, perm], batch[:, perm])
    torch.testing.assert_close(out[:, perm], out_perm, atol=1e-5, rtol=1e-5)


def test_cells_attend_to_the_set():
    """Changing one cell's basal changes another cell's prediction (set-to-set, not per cell)."""
    c = tiny(n_layers=1)
    model = StateTransitionModel(c).eval()
    basal, pert, batch = inputs(c, 1)
    out = model(basal, pert)
    basal2 = basal.clone()
    basal2[0, 0] += 5.0
    assert not torch.allclose(model(basal2, pert)[0, 1:], out[0, 1:])


def test_unknown_batch_gets_no_offset():
    c = tiny(batch_encoder=True)
    model = StateTransitionModel(c).eval()
    basal, pert, _ = inputs(c, 1)
    none = torch.full((1, c.cell_set_len), -1)
    with torch.no_grad():
        model.batch_encoder.weight.add_(10.0)
    torch.testing.assert_close(model(basal, pert, none), model(basal, pert, None))


def brute_energy(x: torch.Tensor, y: torch.Tensor) -> float:
    d = lambda a, b: torch.stack([torch.stack([(ai - bj).norm() for bj in b]) for ai in a]).mean()  # noqa: E731
    return float(d(x, y) - 0.5 * d(x, x) - 0.5 * d(y, y))


def test_energy_loss_known_cases():
    torch.manual_seed(1)
    x, y = torch.randn(5, 3), torch.randn(7, 3) + 2
    assert float(energy_loss(x[None], y[None])) == pytest.approx(brute_energy(x, y), rel=1e-5)
    assert float(energy_loss(x[None], x[None])) == pytest.approx(0.0, abs=1e-5)
    # order of cells is irrelevant; a shift costs more the larger it is
    assert float(energy_loss(x[None], x[torch.randperm(5)][None])) == pytest.approx(0.0, abs=1e-5)
    assert float(energy_loss(x[None], (x + 1)[None])) < float(energy_loss(x[None], (x + 3)[None]))
    # 1-d point masses: energy = |a - b| (half of 2|a-b|)
    assert float(energy_loss(torch.zeros(1, 1, 1), torch.full((1, 1, 1), 3.0))) == pytest.approx(3.0, rel=1e-5)


def test_energy_loss_gradient_finite_at_identical_sets():
    x = torch.randn(1, 4, 3, requires_grad=True)
    energy_loss(x, x.detach().clone()).backward()
    assert torch.isfinite(x.grad).all()


def test_mmd_loss_zero_for_same_and_positive_otherwise():
    x = torch.randn(1, 6, 4)
    assert float(mmd_loss(x, x, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(mmd_loss(x, x + 2, 1.0)) > 0.01


def test_mean_mse_term_adds_the_squared_error_of_the_set_means():
    torch.manual_seed(2)
    x, y = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    base = float(set_loss(x, y, "energy"))
    want = base + 3.0 * float(((x.mean(1) - y.mean(1)) ** 2).mean())
    assert float(set_loss(x, y, "energy", mean_mse_weight=3.0)) == pytest.approx(want, rel=1e-5)
    # unpaired cells: shuffling the cells of a set changes nothing; sets with equal means add nothing
    assert float(set_loss(x, x[:, torch.randperm(6)], "energy", mean_mse_weight=3.0)) == pytest.approx(0.0, abs=1e-5)
    assert float(set_loss(x, y, "mmd", 1.0, mean_mse_weight=0.0)) == pytest.approx(float(mmd_loss(x, y, 1.0).mean()))


def test_config_errors():
    with pytest.raises(UserError, match="loss"):
        tiny(loss="sinkhorn2")
    with pytest.raises(UserError, match="cell_set_len"):
        tiny(cell_set_len=1)
    with pytest.raises(UserError, match="predict_residual"):
        tiny(output_space="all", output_dim=7)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_the_released_sizes(name):
    """Backbone parameter count of each preset from its LlamaConfig numbers (no data dims)."""
    p = PRESETS[name]
    c = StateTxConfig(input_dim=8, output_dim=8, pert_dim=4, **p)
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = StateTransitionModel(c)
    h, inner, ff = p["hidden_dim"], p["n_heads"] * p["head_dim"], p["intermediate_size"]
    per_layer = 4 * h * inner + 3 * h * ff + 2 * h
    got = sum(v.numel() for k, v in model.state_dict().items() if k.startswith("transformer_backbone."))
    assert got == p["n_layers"] * per_layer + h


def test_arc_state_checkpoint_table_loads_everything_but_the_skipped():
    """A state dict laid out like arc-state's Lightning module (plus its extra keys) loads fully."""
    c = tiny()
    src = StateTransitionModel(c)
    sd = {f"model.{k}": v.clone() for k, v in src.state_dict().items()}
    sd["model.transformer_backbone.embed_tokens.weight"] = torch.zeros(32000, c.hidden_dim)
    sd["model.gene_decoder.decoder.0.weight"] = torch.zeros(3, 3)
    dst = StateTransitionModel(c)
    report = load_partial(dst, arc_state_to_ours(sd), skip=ARC_STATE_SKIP, verbose=False)
    assert not report.not_in_checkpoint and not report.shape_mismatch and not report.not_in_model
    assert set(report.skipped) == {"transformer_backbone.embed_tokens.weight", "gene_decoder.decoder.0.weight"}
    basal, pert, batch = inputs(c, 1)
    torch.testing.assert_close(dst.eval()(basal, pert), src.eval()(basal, pert))


@pytest.mark.parametrize("space", ["gene", "all"])
def test_output_bias_init_starts_every_gene_alive(space):
    """With PyTorch's default init, some genes start below 0 for every cell and the ReLU keeps them at 0 (no
    gradient); the training mean as the output bias starts them at the level of highly expressed genes."""
    torch.manual_seed(0)
    c = tiny(input_dim=64, output_dim=64, output_space=space)
    mean = torch.linspace(0.5, 6.0, 64)
    basal, pert = torch.rand(4, 6, 64) * 2, torch.eye(5)[torch.randint(0, 5, (4, 6))]
    default = StateTransitionModel(c)
    dead = (default(basal, pert) == 0).all(dim=(0, 1))
    model = StateTransitionModel(c)
    model.init_output_bias(mean)
    out = model(basal, pert)
    assert dead.any() and not (out == 0).all(dim=(0, 1)).any()
    err_default = (default(basal, pert).mean((0, 1)) - mean).abs().mean()
    assert (out.mean((0, 1)) - mean).abs().mean() < err_default / 2
    with pytest.raises(UserError, match="output_bias_init"):
        StateTxConfig(input_dim=4, output_dim=4, pert_dim=2, output_bias_init="zeros")


def test_basal_residual_starts_as_the_basal_cells_and_learns_a_shift():
    """model.kwargs.basal_residual: the zero-initialised delta head predicts the control (basal) cells at step 0,
    and its last layer gets a gradient (it can learn the shift); refused outside the gene space."""
    c = tiny(basal_residual=True)
    model = StateTransitionModel(c)
    basal, pert, batch = inputs(c)
    out = model(basal, pert, batch)
    torch.testing.assert_close(out, basal)
    set_loss(out, basal + 0.5, c.loss).backward()
    assert model.project_out[-1].bias.grad.abs().sum() > 0
    assert not torch.equal(StateTransitionModel(tiny())(basal, pert, batch), basal)  # the default is not so
    with pytest.raises(UserError, match="basal_residual"):
        tiny(basal_residual=True, output_space="all")
