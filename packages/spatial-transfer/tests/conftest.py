"""Tiny data and sizes for the spatial-transfer tests (seconds on a 2-core CPU)."""

from pathlib import Path

import pytest

from spatial_transfer.synthetic import DemoSpec, write_demo_data

TINY_SPEC = DemoSpec(seed=3, n_cell_types=3, in_dim=16, n_universe_genes=40, bulk_genes=12, spatial_genes=20,
                     n_spatial_samples=4, grid=4, cells_per_spot=4, cells_between_spots=1,
                     n_bulk_samples=8, bulk_region=200.0, bulk_cells=40)

# model / training sizes passed to the CLI as --set overrides
TINY_SETS = [
    "model.in_dim=16", "model.gnn_dim=8", "model.gnn_heads=2", "model.gnn_layers=1", "model.embed_dim=16",
    "model.n_heads=2", "model.ff_dim=16", "model.bulk_layers=2", "model.spatial_layers=1", "model.dropout=0.0",
    "graph.window=2", "graph.k=3", "bulk.epochs=2", "spatial.epochs=2", "bulk.lr=0.001",
    "bulk.batch_size=4", "spatial.batch_size=4",
]


@pytest.fixture
def tiny_args():
    """-> f(*extra): CLI arguments for tiny sizes plus `extra`."""

    def make(*extra):
        out = []
        for s in TINY_SETS:
            out += ["--set", s]
        return out + ["--no-progress", "--device", "cpu", *extra]

    return make


@pytest.fixture
def tiny_config():
    from spatial_transfer.model import Cell2GeneConfig

    return Cell2GeneConfig(in_dim=16, gnn_dim=8, gnn_heads=2, gnn_layers=1, embed_dim=16, n_heads=2, ff_dim=16,
                           bulk_layers=2, spatial_layers=1, bulk_genes=12, spatial_genes=20, dropout=0.0)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture
def tiny_spec() -> DemoSpec:
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("st_tiny") / "data", TINY_SPEC)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("TRANSFER_STRATEGY", "USE_TRANSFER_LEARNING", "FREEZE_BACKBONE", "CV_MODE", "LOO_HELDOUT"):
        monkeypatch.delenv(name, raising=False)
