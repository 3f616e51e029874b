"""Cell2Gene: cell graphs of segmented nuclei -> gene expression, for bulk samples and spots.

Both models read a cell graph (nodes = nuclei with 128-d HoVer-Net-style features, edges from
centroids) and group the cells into tokens: spots for the SpatialModel, tiles of the slide for
the BulkModel. The layers share names so the bulk weights transfer by name:

    x [N_cells, in_dim]
      -> gnn                 GAT over the cell graph            [N_cells, gnn_dim]
      -> feature_projection  gnn_dim -> embed_dim               [N_cells, embed_dim]
      -> mean over the cells of each token (spot / tile)        [N_tokens, embed_dim]
      -> (+ pos_encoding of spot coordinates, SpatialModel only)
      -> transformer         over the tokens of one graph       [N_tokens, embed_dim]
      -> BulkModel: mean over tokens -> output_projection       [B, bulk_genes]
         SpatialModel: output_projection per spot               [N_spots, spatial_genes]

Transfer (bulk checkpoint -> SpatialModel): `gnn.*` and `feature_projection.*` match exactly,
`transformer.layers.{0,1}.*` match (the bulk model's extra layer 2 is not present in the spatial
model), `output_projection.1.*` differs in gene count and is skipped by shape, `pos_encoding.*`
exists only in the spatial model and keeps its initialisation. BULK_TO_SPATIAL states this as
a table; FREEZE_STRATEGIES names the module groups each strategy freezes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter

from ftcore.freezing import FreezeSpec
from ftcore.options import bounds


@dataclass
class Cell2GeneConfig:
    """Sizes of the BulkModel / SpatialModel pair (defaults: the Cell2Gene guide's)."""

    in_dim: int = field(default=128, metadata=bounds(ge=1))  # nuclear feature dimension (HoVer-Net style)
    gnn_dim: int = field(default=128, metadata=bounds(ge=1))  # GAT output
    gnn_layers: int = field(default=2, metadata=bounds(ge=1))
    gnn_heads: int = field(default=4, metadata=bounds(ge=1))  # attention heads of each GAT layer (concatenated to gnn_dim)
    embed_dim: int = field(default=256, metadata=bounds(ge=4))  # feature_projection output = transformer width
    n_heads: int = field(default=8, metadata=bounds(ge=1))
    ff_dim: int = field(default=512, metadata=bounds(ge=1))
    bulk_layers: int = field(default=3, metadata=bounds(ge=1))
    spatial_layers: int = field(default=2, metadata=bounds(ge=1))
    bulk_genes: int = field(default=372, metadata=bounds(ge=1))
    spatial_genes: int = field(default=897, metadata=bounds(ge=1))
    dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))

    def __post_init__(self) -> None:
        from ftcore.errors import UserError

        if self.gnn_dim % self.gnn_heads:
            raise UserError(f"gnn_dim {self.gnn_dim} must be divisible by gnn_heads {self.gnn_heads}")
        if self.embed_dim % self.n_heads:
            raise UserError(f"embed_dim {self.embed_dim} must be divisible by n_heads {self.n_heads}")
        if self.embed_dim % 4:
            raise UserError(f"embed_dim {self.embed_dim} must be divisible by 4 (2-d sinusoidal spot encoding)")


class CellGNN(nn.Module):
    """GAT layers over the cell graph; x [N, in_dim], edge_index [2, E] -> [N, gnn_dim]."""

    def __init__(self, cfg: Cell2GeneConfig):
        super().__init__()
        dims = [cfg.in_dim] + [cfg.gnn_dim] * cfg.gnn_layers
        # Self loops are added here once (the data's graphs have none: data.py builds them with loop=False)
        # instead of by each GATConv, whose remove-then-add step masks edges by value: a data-dependent
        # shape that breaks torch.compile's graph. The edge order is GATConv's own (loops appended last).
        self.convs = nn.ModuleList(
            GATConv(d_in, cfg.gnn_dim // cfg.gnn_heads, heads=cfg.gnn_heads, dropout=cfg.dropout, add_self_loops=False)
            for d_in in dims[:-1]
        )
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.gnn_dim) for _ in self.convs)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        loops = torch.arange(x.shape[0], device=edge_index.device)
        edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
        for conv, norm in zip(self.convs, self.norms):
            h = nn.functional.elu(conv(x, edge_index))
            # residual once the width is gnn_dim: neighbourhood context is added to the cell's own features
            x = norm(h + x if h.shape == x.shape else h)
        return x


class SpotPositionalEncoding(nn.Module):
    """Sinusoidal encoding of 2-d spot coordinates (array row, col) followed by a linear map.

    pos [S, 2] (spot grid units) -> [S, embed_dim]. Coordinates are taken relative to the window's
    first spot by the data module, so the encoding describes layout, not absolute slide position.
    """

    def __init__(self, embed_dim: int, max_period: float = 64.0):
        super().__init__()
        n = embed_dim // 4
        freqs = torch.exp(-math.log(max_period) * torch.arange(n, dtype=torch.float32) / max(n, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        angles = pos.float()[:, :, None] * self.freqs  # [S, 2, n]
        feats = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(1)  # [S, 4n]
        return self.proj(feats)


def pad_tokens(tokens: torch.Tensor, token_batch: torch.Tensor, n_graphs: int, max_tokens: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens sorted by graph [N, D] -> zero-padded [n_graphs, max_tokens, D], the mask of real tokens and
    each token's row in the flattened padded tensor (torch_geometric's to_dense_batch with both sizes given,
    plus the rows, so that the readout gathers instead of masking by value)."""
    counts = torch.zeros(n_graphs, dtype=torch.long, device=tokens.device).index_add_(
        0, token_batch, torch.ones_like(token_batch))
    starts = torch.cumsum(counts, 0) - counts
    flat = token_batch * max_tokens + torch.arange(tokens.shape[0], device=tokens.device) - starts[token_batch]
    dense = tokens.new_zeros(n_graphs * max_tokens, tokens.shape[1]).index_copy(0, flat, tokens)
    mask = torch.zeros(n_graphs * max_tokens, dtype=torch.bool, device=tokens.device).index_fill(0, flat, True)
    return dense.view(n_graphs, max_tokens, -1), mask.view(n_graphs, max_tokens), flat


class _Cell2Gene(nn.Module):
    """The part both models share; subclasses decide tokens' position encoding and the readout."""

    def __init__(self, cfg: Cell2GeneConfig, n_layers: int, n_genes: int):
        super().__init__()
        self.config = cfg
        self.gnn = CellGNN(cfg)
        self.feature_projection = nn.Sequential(
            nn.Linear(cfg.gnn_dim, cfg.embed_dim), nn.LayerNorm(cfg.embed_dim), nn.GELU()
        )
        layer = nn.TransformerEncoderLayer(
            cfg.embed_dim, cfg.n_heads, cfg.ff_dim, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.output_projection = nn.Sequential(nn.LayerNorm(cfg.embed_dim), nn.Linear(cfg.embed_dim, n_genes))

    def spot_tokens(self, batch) -> torch.Tensor:
        """Cell features pooled per token: [N_tokens_total, embed_dim] in batch order."""
        h = self.feature_projection(self.gnn(batch.x, batch.edge_index))
        # cells outside every spot give context to the GAT only: they are pooled into one extra slot that is
        # dropped (a mask would index by value, a data-dependent shape that breaks torch.compile's graph)
        n_tokens = batch.spot_pos.shape[0]
        slot = torch.where(batch.cell_in_spot, batch.cell_spot, n_tokens)
        return scatter(h, slot, dim=0, dim_size=n_tokens + 1, reduce="mean")[:n_tokens]

    def encode(self, tokens: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transformer over the tokens of each graph; -> dense [B, S_max, D], mask [B, S_max] and each token's row
        in dense.flatten(0, 1). B and S_max are the batch's host-side numbers (collate), so no device value is read."""
        dense, mask, flat = pad_tokens(tokens, batch.spot_pos_batch, batch.num_graphs, batch.max_tokens)
        return self.transformer(dense, src_key_padding_mask=~mask), mask, flat


class BulkModel(_Cell2Gene):
    """One expression profile per bulk sample: batch of cell graphs -> [B, bulk_genes]."""

    def __init__(self, cfg: Cell2GeneConfig):
        super().__init__(cfg, cfg.bulk_layers, cfg.bulk_genes)

    def forward(self, batch) -> torch.Tensor:
        tokens = self.spot_tokens(batch)
        dense, mask, _ = self.encode(tokens, batch)
        pooled = (dense * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.output_projection(pooled)


class SpatialModel(_Cell2Gene):
    """One expression profile per spot: batch of cell graphs -> [N_spots_total, spatial_genes]."""

    def __init__(self, cfg: Cell2GeneConfig):
        super().__init__(cfg, cfg.spatial_layers, cfg.spatial_genes)
        self.pos_encoding = SpotPositionalEncoding(cfg.embed_dim)

    def forward(self, batch) -> torch.Tensor:
        tokens = self.spot_tokens(batch) + self.pos_encoding(batch.spot_pos)
        dense, _, flat = self.encode(tokens, batch)
        return self.output_projection(dense.flatten(0, 1)[flat])  # the tokens in batch order


# ---------------------------------------------------------------------------------------------
# Checkpoint mapping: BulkModel -> SpatialModel. Names are shared, so there are no renames; the
# table says what happens to each group (load_partial decides by name and shape and reports it).
BULK_TO_SPATIAL = {
    r"^gnn\.": "loaded: same input/output sizes",
    r"^feature_projection\.": "loaded: gnn_dim -> embed_dim in both",
    r"^transformer\.layers\.": "loaded for the spatial model's layers; the bulk model's extra layers are not present",
    r"^output_projection\.0\.": "loaded: the final LayerNorm has embed_dim in both",
    r"^output_projection\.1\.": "skipped by shape: bulk_genes vs spatial_genes outputs",
    r"^pos_encoding\.": "spatial only: keeps its initialisation",
}

# Freezing strategies of the transfer guide, as module patterns (ftcore.freezing applies them).
FREEZE_STRATEGIES = {
    "full": FreezeSpec(),
    "frozen_backbone": FreezeSpec(frozen=(r"^gnn\.", r"^feature_projection\.")),
    "frozen_decoder": FreezeSpec(frozen=(r"^gnn\.", r"^transformer\.")),
    "scratch": FreezeSpec(),
}

# Default learning rate per strategy (guide: conservative for full fine-tuning, higher from scratch).
# frozen_decoder trains only the projections, like frozen_backbone trains only the upper layers.
STRATEGY_LR = {"full": 1e-6, "frozen_backbone": 1e-5, "frozen_decoder": 1e-5, "scratch": 1e-4}
