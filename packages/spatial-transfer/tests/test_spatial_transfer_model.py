"""Cell2Gene models: shapes, gradients, graph building, bulk -> spatial transfer report, freezing sets."""

import pytest
import torch

from ftcore.errors import UserError
from ftcore.freezing import FreezeSpec, apply_freezing
from ftcore.loading import load_partial
from spatial_transfer.data import GraphConfig, bulk_items, collate, knn_edges, radius_edges, read_bulk, read_spatial, spatial_items
from spatial_transfer.model import FREEZE_STRATEGIES, BulkModel, SpatialModel


@pytest.fixture
def batches(tiny_data):
    g = GraphConfig(window=2, k=3)
    sp = read_spatial(tiny_data, 16)
    bk = read_bulk(tiny_data, 16)
    return collate(spatial_items(sp, g, sp.samples[:2])), collate(bulk_items(bk, g, [0, 1, 2]))


def test_forward_shapes_and_gradients(tiny_config, batches):
    spatial_batch, bulk_batch = batches
    torch.manual_seed(0)
    sm, bm = SpatialModel(tiny_config), BulkModel(tiny_config)
    out = sm(spatial_batch)
    assert out.shape == spatial_batch.y.shape == (spatial_batch.spot_pos.shape[0], 20)
    out_b = bm(bulk_batch)
    assert out_b.shape == (3, 12) == bulk_batch.y.shape
    loss = torch.nn.functional.mse_loss(out, spatial_batch.y)
    loss.backward()
    for name, p in sm.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert sm.gnn.convs[0].lin.weight.grad.abs().sum() > 0  # the GAT learns through the pooling


def test_spot_output_depends_only_on_its_own_window(tiny_config, batches):
    spatial_batch, _ = batches
    sm = SpatialModel(tiny_config).eval()
    with torch.no_grad():
        a = sm(spatial_batch)
        b = spatial_batch.clone()
        first = b.batch == 0
        b.x[first] += 5.0  # change the nuclei of the first window only
        out = sm(b)
    n0 = int((b.spot_pos_batch == 0).sum())
    assert not torch.allclose(a[:n0], out[:n0])
    torch.testing.assert_close(a[n0:], out[n0:])


def test_knn_edges_known_case():
    pos = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.5, 0.0]])
    e = knn_edges(pos, 1)
    pairs = {(int(s), int(t)) for s, t in e.t()}
    assert pairs == {(1, 0), (0, 1), (3, 2), (2, 3)}  # (neighbour, nucleus)
    r = radius_edges(pos, 1.2)
    assert {(int(s), int(t)) for s, t in r.t()} == {(0, 1), (1, 0)}
    assert knn_edges(pos[:1], 3).shape == (2, 0)


def test_transfer_report_matches_the_guide(tiny_config, capsys):
    bulk, spatial = BulkModel(tiny_config), SpatialModel(tiny_config)
    report = load_partial(spatial, bulk.state_dict(), source="bulk", target="spatial model")
    text = capsys.readouterr().out
    mism = {k: (m, c) for k, m, c in report.shape_mismatch}
    assert mism == {"output_projection.1.weight": ((20, 16), (12, 16)), "output_projection.1.bias": ((20,), (12,))}
    assert "output_projection.1.weight: spatial model (20, 16) vs bulk (12, 16)" in text
    # bulk_layers=2 vs spatial_layers=1: layer 1 is not present in the spatial model
    assert report.not_in_model and all(k.startswith("transformer.layers.1.") for k in report.not_in_model)
    assert set(report.not_in_checkpoint) == {"pos_encoding.proj.weight", "pos_encoding.proj.bias"}
    assert any(k.startswith("gnn.") for k in report.loaded) and any(k.startswith("transformer.layers.0.") for k in report.loaded)
    for k in report.loaded:
        torch.testing.assert_close(spatial.state_dict()[k], bulk.state_dict()[k])


@pytest.mark.parametrize("strategy,frozen_prefixes", [
    ("full", ()), ("scratch", ()),
    ("frozen_backbone", ("gnn.", "feature_projection.")),
    ("frozen_decoder", ("gnn.", "transformer.")),
])
def test_strategy_trainable_sets(tiny_config, strategy, frozen_prefixes):
    model = SpatialModel(tiny_config)
    report = apply_freezing(model, FREEZE_STRATEGIES[strategy], verbose=False)
    for name, p in model.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name
    groups = {n.split(".")[0] for n in report.trainable_names}
    if strategy == "frozen_backbone":
        assert groups == {"transformer", "output_projection", "pos_encoding"}
    if strategy == "frozen_decoder":
        assert groups == {"feature_projection", "output_projection", "pos_encoding"}


def test_freezing_everything_is_an_error(tiny_config):
    with pytest.raises(UserError, match="No trainable parameters!"):
        apply_freezing(SpatialModel(tiny_config), FreezeSpec(frozen=(".",)), verbose=False)


def test_config_checks_divisibility():
    from spatial_transfer.model import Cell2GeneConfig

    with pytest.raises(UserError, match="n_heads"):
        Cell2GeneConfig(embed_dim=20, n_heads=8)


def test_mapping_table_covers_every_tensor(tiny_config):
    """BULK_TO_SPATIAL documents every weight of both models (a new layer must be added to the table)."""
    import re

    from spatial_transfer.model import BULK_TO_SPATIAL

    names = set(BulkModel(tiny_config).state_dict()) | set(SpatialModel(tiny_config).state_dict())
    for name in names:
        hits = [p for p in BULK_TO_SPATIAL if re.search(p, name)]
        assert len(hits) == 1, (name, hits)


def _reference_forward(model, batch):
    """The models' forward as first written, with torch_geometric's own pieces: GATConv adding its self loops,
    pooling by a boolean mask, to_dense_batch and a masked readout (each reads device values or shapes by value)."""
    from torch_geometric.nn import GATConv
    from torch_geometric.utils import scatter, to_dense_batch

    x = batch.x
    for conv, norm in zip(model.gnn.convs, model.gnn.norms):
        ref = GATConv(conv.in_channels, conv.out_channels, heads=conv.heads, dropout=conv.dropout)  # add_self_loops
        ref.load_state_dict(conv.state_dict())
        h = torch.nn.functional.elu(ref.train(conv.training)(x, batch.edge_index))
        x = norm(h + x if h.shape == x.shape else h)
    h = model.feature_projection(x)
    inside = batch.cell_in_spot
    tokens = scatter(h[inside], batch.cell_spot[inside], dim=0, dim_size=batch.spot_pos.shape[0], reduce="mean")
    if isinstance(model, SpatialModel):
        tokens = tokens + model.pos_encoding(batch.spot_pos)
    dense, mask = to_dense_batch(tokens, batch.spot_pos_batch)
    dense = model.transformer(dense, src_key_padding_mask=~mask)
    if isinstance(model, SpatialModel):
        return model.output_projection(dense[mask])
    return model.output_projection((dense * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compile_friendly_forward_equals_the_reference(tiny_config, tiny_data, seed):
    # fresh random weights and inputs; windows of unequal size (padding) and nuclei outside every spot
    g = GraphConfig(window=3, k=3)
    sp, bk = read_spatial(tiny_data, 16), read_bulk(tiny_data, 16)
    torch.manual_seed(seed)
    exercised = set()
    for model, batch in ((SpatialModel(tiny_config), collate(spatial_items(sp, g, sp.samples[:2]))),
                         (BulkModel(tiny_config), collate(bulk_items(bk, g, [0, 1, 2])))):
        batch.x = torch.randn_like(batch.x)
        sizes = torch.bincount(batch.spot_pos_batch).tolist()
        assert batch.max_tokens == max(sizes)
        exercised |= {"padding"} if len(set(sizes)) > 1 else set()
        exercised |= {"outside"} if (~batch.cell_in_spot).any() else set()
        model.eval()
        with torch.no_grad():
            got, want = model(batch), _reference_forward(model, batch)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # fp32: summation order only
    assert exercised == {"padding", "outside"}


def test_forward_has_no_graph_break(tiny_config, batches):
    # torch.compile sees one graph: no device value read on the host, no shape that depends on values
    import torch._dynamo

    for model, batch in zip((SpatialModel(tiny_config), BulkModel(tiny_config)), batches):
        explained = torch._dynamo.explain(model)(batch)
        assert explained.graph_break_count == 0, [str(r.reason)[:200] for r in explained.break_reasons]
