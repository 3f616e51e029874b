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
from torch_geometric.utils import scatter, to_dense_batch

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
        self.convs = nn.ModuleList(
            GATConv(d_in, cfg.gnn_dim // cfg.gnn_heads, heads=cfg.gnn_heads, dropout=cfg.dropout)
            for d_in in dims[:-1]
        )
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.gnn_dim) for _ in self.convs)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
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
        inside = batch.cell_in_spot  # cells outside every spot give context to the GAT only
        return scatter(h[inside], batch.cell_spot[inside], dim=0, dim_size=batch.spot_pos.shape[0], reduce="mean")

    def encode(self, tokens: torch.Tensor, token_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transformer over the tokens of each graph; -> dense [B, S_max, D] and mask [B, S_max]."""
        dense, mask = to_dense_batch(tokens, token_batch)
        return self.transformer(dense, src_key_padding_mask=~mask), mask


class BulkModel(_Cell2Gene):
    """One expression profile per bulk sample: batch of cell graphs -> [B, bulk_genes]."""

    def __init__(self, cfg: Cell2GeneConfig):
        super().__init__(cfg, cfg.bulk_layers, cfg.bulk_genes)

    def forward(self, batch) -> torch.Tensor:
        tokens = self.spot_tokens(batch)
        dense, mask = self.encode(tokens, batch.spot_pos_batch)
        pooled = (dense * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return self.output_projection(pooled)


class SpatialModel(_Cell2Gene):
    """One expression profile per spot: batch of cell graphs -> [N_spots_total, spatial_genes]."""

    def __init__(self, cfg: Cell2GeneConfig):
        super().__init__(cfg, cfg.spatial_layers, cfg.spatial_genes)
        self.pos_encoding = SpotPositionalEncoding(cfg.embed_dim)

    def forward(self, batch) -> torch.Tensor:
        tokens = self.spot_tokens(batch) + self.pos_encoding(batch.spot_pos)
        dense, mask = self.encode(tokens, batch.spot_pos_batch)
        return self.output_projection(dense[mask])


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
