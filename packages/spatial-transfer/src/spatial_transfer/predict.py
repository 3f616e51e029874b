"""Prediction on slides with or without measured expression: spot-level expression from the nuclei graph,
written as an AnnData with gene var_names and obsm['spatial'] kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ftcore.distributed import is_main_process
from ftcore.errors import UserError
from ftcore.metrics import pearson_mean_gene, pearson_overall

from spatial_transfer.data import GraphConfig, SpatialData, collate, spatial_items
from spatial_transfer.model import (
    SpatialModel,
)
from spatial_transfer.train import log, predict


def predict_spatial(spatial: SpatialData, model: SpatialModel, genes: list[str], graph: GraphConfig, out_path: Path,
                    batch_size: int = 16, device: str = "auto", model_name: str = "") -> dict:
    """Predict the model's `genes` for every spot of `spatial` (histology only: no expression needed) and write
    them in THE output layout (X = predictions; layers['measured'] when the slide measures all those genes).
    Metrics (-> dict, {} without expression) over the genes the slide measures."""
    from ftcore.data import prediction_adata
    from ftcore.training import resolve_device
    from torch.utils.data import DataLoader

    model.to(resolve_device(device))
    loader = DataLoader(spatial_items(spatial, graph, spatial.samples), batch_size=batch_size, collate_fn=collate)
    pred, true, ids = predict(model, loader)
    if not torch.isfinite(pred).all():
        raise UserError("the model predicts NaN/inf for some spots (a diverged or corrupt checkpoint?); "
                        "use another fold's checkpoint or retrain")
    rows = torch.cat(ids).numpy()
    out = np.empty((len(spatial.spot_names), pred.shape[1]), dtype=np.float32)
    out[rows] = pred.numpy()
    metrics: dict = {}
    if spatial.expr is not None:
        cols = [genes.index(g) for g in spatial.genes]
        p, t = torch.from_numpy(out[:, cols]), torch.from_numpy(spatial.expr)
        metrics = {"overall_correlation": pearson_overall(p, t), "gene_correlation": pearson_mean_gene(p, t),
                   "test_loss": float(torch.nn.functional.mse_loss(p, t)), "genes_evaluated": len(cols)}
    if is_main_process():
        from ftcore.io import atomic_write_h5ad

        measured = spatial.expr if spatial.genes == list(genes) else None
        adata = prediction_adata(out, genes, spatial.source, measured=measured, model=model_name)
        adata.uns["spatial_transfer"] = metrics
        atomic_write_h5ad(adata, out_path)
    where = f"predictions of {len(genes)} genes for {len(spatial.spot_names)} spots in {out_path} (X)"
    if metrics:
        part = "" if metrics["genes_evaluated"] == len(genes) else f" (on the {metrics['genes_evaluated']} measured genes)"
        log(f"overall correlation {metrics['overall_correlation']:.4f}, gene correlation "
            f"{metrics['gene_correlation']:.4f}, loss {metrics['test_loss']:.4f}{part}; {where}")
    else:
        log(f"no measured expression of the model's genes in {spatial.path}: histology-only prediction, no evaluation; {where}")
    return metrics
