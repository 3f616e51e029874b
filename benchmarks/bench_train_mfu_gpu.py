"""Training-step speed and model-FLOP utilisation at the real sizes, all five packages, plus inference.

    export PYTHONPATH=$(ls -d $PWD/shared/src $PWD/packages/*/src | tr '\\n' :)
    python benchmarks/bench_train_mfu_gpu.py --out benchmarks/results/train_mfu_h200.json
    python benchmarks/bench_train_mfu_gpu.py --device cpu --tiny --compile-backend aot_eager --out /tmp/mfu_tiny.json
    python benchmarks/mfu_table.py benchmarks/results/train_mfu_h200.json                  # the markdown table

Training (issue 15 item 2): each package's model, loss and one batch of the real shape are built with
the package's own classes and functions, as its train.py builds them; the step timed is the core
Trainer's `_train_step` (forward + loss under bf16 autocast, backward, clipping, fused AdamW,
scheduler), once with TrainConfig(compile="off") and once with compile="on". The batch sits on the
device already (data loading is not timed). FLOPs per step are counted once, eager, with
torch.utils.flop_counter.FlopCounterMode over one forward + backward (matrix products, convolutions,
attention; element-wise work is not counted, nor are Triton kernels: var-st's are switched to their
PyTorch references for the count); MFU = FLOPs / time / --peak-tflops (790, issue 15).

Inference (item 4): var-st generation (241 tokens, KV cache, expected-code decoding) through
var_st.predict.predict_expression at 1, 64 and 1024 spots per call; state-tx's state_tx.predict.simulate
(cells/s); cellfm-ft's cellfm_ft.train.infer (cells/s); each eager and under torch.compile.

Per row: median ms per step over blocks of steps timed with CUDA events (host_ms beside it: the wall
time to issue one step into an idle queue; close to ms_step, the GPU waits for Python), samples/s, FLOPs, TFLOP/s,
MFU, and from torch.profiler over a few steps: device kernels per step, the top 8 kernels by device
time with their share, and gpu_busy_ms (union of kernel intervals per step). Compiled rows also carry
dynamo's graph and graph-break counts with the reasons; with --explain (default under --tiny), what
torch._dynamo.explain finds in the compiled training step, each reason with its file:line.

Every row is measured in its own try/except (the error string lands in the row), the JSON is
rewritten after each row, and once --budget-s has passed the remaining rows are recorded as skipped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import functools
import gc
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ftcore.io import atomic_write_json
from ftcore.training import Trainer, TrainConfig, move_to

PEAK_TFLOPS = 790.0  # H200 dense bf16, as issue 15 counts MFU
MFU_GOAL = 0.45
PACKAGES = ("state-tx", "var-st", "cellfm-ft", "get-yeast", "spatial-transfer")


@dataclass
class TrainCase:
    """What a package's train.py hands the core Trainer, plus the sizes to report."""

    model: torch.nn.Module
    loss_fn: Callable
    train_data: Any
    batch_size: int
    sizes: dict
    unit: str  # what one sample of the batch is
    collate_fn: Callable | None = None
    grad_clip: float | None = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.01
    count_context: Callable[[], Any] = contextlib.nullcontext  # around the FLOP count


@dataclass
class InferCase:
    """One call of a package's prediction path: run(compiled) -> None; samples per call."""

    run: Callable[[bool], Any]
    samples: int
    sizes: dict
    unit: str
    count_context: Callable[[], Any] = contextlib.nullcontext
    notes: str = ""


@dataclass
class Item:
    package: str
    what: str
    kind: str  # train | infer
    build: Callable[[bool, torch.device], Any]  # (tiny, device) -> TrainCase | InferCase


# ----------------------------------------------------------------------------------- state-tx
def _state_tx_sizes(tiny: bool) -> tuple[dict, int, int, int]:
    """(model.kwargs, genes, perturbations, sets per batch): issue 15's 16 sets x 512 cells, 2000 genes."""
    if tiny:
        return dict(hidden_dim=32, cell_set_len=16, n_layers=2, n_heads=2, head_dim=16, intermediate_size=64), 48, 8, 2
    return {}, 2000, 2000, 16


def _state_tx_model(preset: str, tiny: bool):
    from state_tx.config import RunConfig, model_config
    from state_tx.model import StateTransitionModel

    kwargs, genes, perts, sets = _state_tx_sizes(tiny)
    cfg = RunConfig()
    cfg.model.name, cfg.model.kwargs = preset, kwargs
    mcfg = model_config(cfg, input_dim=genes, pert_dim=perts, batch_dim=0)  # one-hot perturbations
    return cfg, mcfg, StateTransitionModel(mcfg), genes, perts, sets


def _state_tx_sentence(g: torch.Generator, S: int, G: int, P: int, pert: int) -> dict:
    """One item of state_tx.data.SentenceDataset's contract (log-normalised values, one-hot pert)."""
    expr = lambda: torch.relu(torch.randn(S, G, generator=g) * 0.8 + 0.5)  # noqa: E731 - log1p-scale
    return {"basal": expr(), "target": expr(), "pert": torch.eye(P)[pert].expand(S, -1).clone(),
            "batch": torch.zeros(S, dtype=torch.long), "pert_idx": torch.tensor(pert),
            "cell_type_idx": torch.tensor(0), "file_id": torch.tensor(0)}


def build_state_tx_train(preset: str):
    def build(tiny: bool, device: torch.device) -> TrainCase:
        from state_tx.train import make_loss_fn
        from state_tx.config import TrainingSection

        cfg, mcfg, model, G, P, sets = _state_tx_model(preset, tiny)
        g = torch.Generator().manual_seed(0)
        data = [_state_tx_sentence(g, mcfg.cell_set_len, G, P, 1 + i % (P - 1)) for i in range(sets)]
        t = TrainingSection()
        return TrainCase(model, make_loss_fn(mcfg), data, sets,
                         {"preset": preset, "cell_set_len": mcfg.cell_set_len, "genes": G, "pert_dim": P,
                          "hidden_dim": mcfg.hidden_dim, "n_layers": mcfg.n_layers, "loss": mcfg.loss},
                         "cell sets", grad_clip=t.gradient_clip_val or None, lr=t.lr, weight_decay=t.weight_decay)
    return build


def build_state_tx_infer(tiny: bool, device: torch.device) -> InferCase:
    """state-tx infer/predict: state_tx.predict.simulate over groups of cells, batch_size 16 sets (the CLI's)."""
    from state_tx.predict import TrainedRun, simulate

    cfg, mcfg, model, G, P, _ = _state_tx_model("state", tiny)
    model = model.to(device).eval()
    S = mcfg.cell_set_len
    n_groups = 4 if tiny else 64
    rng = np.random.default_rng(0)
    cells = np.maximum(rng.normal(0.5, 0.8, (S * 8, G)), 0).astype(np.float32)  # the control pool
    groups = [(np.arange(S), np.arange(len(cells)), 1 + i % (P - 1), np.full(S, -1)) for i in range(n_groups)]
    runs = {}

    def run(compiled: bool):
        if compiled not in runs:
            m = torch.compile(model) if compiled else model
            runs[compiled] = TrainedRun(Path("."), cfg, {}, [str(i) for i in range(P)], [], torch.eye(P), m, Path("-"))
        simulate(runs[compiled], lambda rows: cells[rows], groups, seed=0, batch_size=16)

    return InferCase(run, n_groups * S, {"preset": "state", "cell_set_len": S, "genes": G, "groups": n_groups,
                                         "batch_size_sets": 16, "precision": "fp32 (simulate runs without autocast)"},
                     "cells", notes="includes simulate's host work: control draws, numpy->tensor, copies back")


# ----------------------------------------------------------------------------------- var-st
def _var_st_model(tiny: bool):
    from var_st.model import PRESETS, TwoStageVARST

    torch.manual_seed(0)
    if tiny:
        vq, var = PRESETS["demo"]
        return TwoStageVARST(num_genes=48, vqvae_config=vq, var_config=var), 48
    return TwoStageVARST(num_genes=200), 200  # the user's guide (PRESETS["full"]): 241 tokens


def _kernels_off():
    """FLOP counting sees the PyTorch reference of var-st's Triton kernels (same arithmetic)."""
    from var_st.kernels import kernels_enabled, use_kernels

    @contextlib.contextmanager
    def ctx():
        was = kernels_enabled()
        use_kernels(False)
        try:
            yield
        finally:
            use_kernels(was)
    return ctx


def _var_st_expression(n: int, G: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.relu(torch.randn(n, G, generator=g) + 1.0)  # log-normalised expression


def build_var_st_stage1(batch: int):
    def build(tiny: bool, device: torch.device) -> TrainCase:
        from torch.utils.data import TensorDataset

        model, G = _var_st_model(tiny)
        B = 8 if tiny else batch
        x = _var_st_expression(max(4 * B, 64), G)
        model.set_training_stage(1)
        vqvae = model.vqvae
        # as var_st.train.train_stage1: data-derived gene stats and codebook start
        vqvae.fit_gene_stats(x)
        vqvae.init_codebook(x[:2048], seed=0)

        def loss_fn(m, b):  # var_st/train.py train_stage1's loss_fn (a closure there), verbatim
            out = m(b[0])
            return out["loss"], {"recon_loss": out["recon_loss"].detach()}

        return TrainCase(vqvae, loss_fn, TensorDataset(x), B,
                         {"stage": 1, "genes": G, "tokens": vqvae.seq_len, "codebook": list(vqvae.quantizer.codebook.shape),
                          "hidden_dim": vqvae.cfg.hidden_dim}, "spots", count_context=_kernels_off())
    return build


def build_var_st_stage2(batch: int):
    def build(tiny: bool, device: torch.device) -> TrainCase:
        import torch.nn.functional as F
        from torch.utils.data import TensorDataset
        from var_st.train import stage1_tokens

        model, G = _var_st_model(tiny)
        B = 8 if tiny else batch
        N = max(4 * B, 64)
        x = _var_st_expression(N, G)
        g = torch.Generator().manual_seed(2)
        h = torch.randn(N, model.var_config.histology_dim, generator=g)
        c = torch.randn(N, 2, generator=g)
        model.vqvae.fit_gene_stats(x)
        model.vqvae.init_codebook(x[:2048], seed=0)
        model.stage1_source = "benchmark: stage-1 codebook initialised from the data"
        model.set_training_stage(2)
        tokens = stage1_tokens(model, x, str(device))
        V = model.var_config.vocab_size

        def loss_fn(m, b):  # var_st/train.py train_stage2's loss_fn (a closure there), verbatim
            hb, cb, tb, _ = b
            logits = m(hb, cb, tb)
            loss = F.cross_entropy(logits.reshape(-1, V).float(), tb.reshape(-1))
            return loss, {"token_accuracy": (logits.argmax(-1) == tb).float().mean().detach()}

        vc = model.var_config
        return TrainCase(model, loss_fn, TensorDataset(h, c, tokens, x), B,
                         {"stage": 2, "genes": G, "tokens": sum(model.scale_sizes), "embed_dim": vc.embed_dim,
                          "num_layers": vc.num_layers, "num_heads": vc.num_heads, "vocab": V},
                         "spots", count_context=_kernels_off())
    return build


def build_var_st_generate(batch: int):
    def build(tiny: bool, device: torch.device) -> InferCase:
        from var_st.data import SpotData
        from var_st.predict import predict_expression

        model, G = _var_st_model(tiny)
        B = min(batch, 16) if tiny else batch
        model.vqvae.fit_gene_stats(_var_st_expression(256, G))
        model.set_training_stage(2)
        model = model.to(device).eval()
        g = torch.Generator().manual_seed(3)
        data = SpotData(expression=None, histology=torch.randn(B, model.var_config.histology_dim, generator=g).numpy(),
                        coords=torch.randn(B, 2, generator=g).numpy(), slides=np.array(["s"] * B),
                        gene_names=[f"g{i}" for i in range(G)], obs_names=[f"spot{i}" for i in range(B)])
        inference = {False: model.inference}

        def run(compiled: bool):
            # predict_expression calls model.inference: the compiled variant puts torch.compile of it there
            if compiled not in inference:
                inference[compiled] = torch.compile(inference[False])
            model.inference = inference[compiled]
            predict_expression(model, data, batch_size=B, decoding="expected")

        return InferCase(run, B, {"tokens": sum(model.scale_sizes), "spots_per_call": B, "decoding": "expected",
                                  "precision": "fp32 (predict_expression runs without autocast)"},
                         "spots", count_context=_kernels_off())
    return build


# ----------------------------------------------------------------------------------- cellfm-ft
def _cellfm_model(tiny: bool, device: torch.device):
    """cellfm_ft.train.build_model's order without a checkpoint file: model, fresh gene_emb, the
    cls_encoder freezing strategy (encoder + head train)."""
    from cellfm_ft.model import FREEZE_STRATEGIES, CellFMClassifier, make_config
    from ftcore.freezing import apply_freezing, resolve_strategy

    n_genes = 500 if tiny else 27855  # every data gene gets a gene_emb row; 80M's vocabulary size
    cfg = make_config("tiny" if tiny else "80m", num_cls=8, n_genes=n_genes, decoders=False, mask_layers="all",
                      **({"nonz_len": 64} if tiny else {}))
    torch.manual_seed(0)
    model = CellFMClassifier(cfg)
    model.extractor.reinit_gene_emb(n_genes)
    apply_freezing(model, resolve_strategy("cls_encoder", FREEZE_STRATEGIES), verbose=False)
    return model, cfg, n_genes


def _cellfm_cells(n_cells: int, n_genes: int, expressed: int):
    """A csr token matrix as cellfm_ft.data.token_matrix gives it: `expressed` genes per cell, log values."""
    from scipy import sparse

    rng = np.random.default_rng(0)
    indices = np.concatenate([np.sort(rng.choice(n_genes, expressed, replace=False)) for _ in range(n_cells)])
    data = np.log1p(rng.gamma(1.5, 2.0, n_cells * expressed)).astype(np.float32)
    indptr = np.arange(n_cells + 1) * expressed
    labels = rng.integers(0, 8, n_cells)
    return sparse.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes)), labels


def build_cellfm_train(tiny: bool, device: torch.device) -> TrainCase:
    from cellfm_ft.data import CellDataset, collate
    from cellfm_ft.train import make_loss
    from cellfm_ft.config import RunConfig

    model, cfg, G = _cellfm_model(tiny, device)
    run = RunConfig()  # the user's batch 16, tutorial head
    B = 4 if tiny else run.batch_size
    # more expressed genes than nonz_len: every cell is cut to its nonz_len most expressed (L = 2048)
    tokens, labels = _cellfm_cells(4 * B, G, cfg.nonz_len + 256)
    data = CellDataset(tokens, np.arange(4 * B), labels, cfg.nonz_len)
    return TrainCase(model, make_loss(run), data, B,
                     {"config": "tiny" if tiny else "80m", "enc_dims": cfg.enc_dims, "enc_nlayers": cfg.enc_nlayers,
                      "heads": cfg.enc_num_heads, "genes_per_cell": cfg.nonz_len, "vocab": G, "head": run.head,
                      "strategy": run.strategy}, "cells", collate_fn=collate, lr=run.lr, weight_decay=run.weight_decay)


def build_cellfm_infer(tiny: bool, device: torch.device) -> InferCase:
    """cellfm-ft predict: cellfm_ft.train.infer over a loader of 64 cells a batch (run_inference's)."""
    from cellfm_ft.data import CellDataset
    from cellfm_ft.train import _loader, infer

    model, cfg, G = _cellfm_model(tiny, device)
    model = model.to(device).eval()
    n = 64 if tiny else 2048
    tokens, labels = _cellfm_cells(n, G, cfg.nonz_len + 256)
    loader = _loader(CellDataset(tokens, np.arange(n), labels, cfg.nonz_len), 64)
    models = {False: model}

    def run(compiled: bool):
        if compiled not in models:
            m = copy.deepcopy(model)
            m.extractor.compile()  # infer calls extractor and read_out separately: compile both parts
            m.cls.compile()
            models[compiled] = m
        infer(models[compiled], loader)

    return InferCase(run, n, {"config": "tiny" if tiny else "80m", "genes_per_cell": cfg.nonz_len, "cells": n,
                              "batch_size": 64, "precision": "fp32 (infer runs without autocast)"}, "cells",
                     notes="includes the loader's collate and the copies back to the host")


# ----------------------------------------------------------------------------------- get-yeast
def build_get_yeast_train(tiny: bool, device: torch.device) -> TrainCase:
    """GET's released size (900 regions x 283 features, 768 x 12) with the package's LoRA setup."""
    from ftcore.freezing import apply_freezing
    from get_yeast.adapt import apply_lora, trainable_spec
    from get_yeast.config import LoraConfig, TrainingConfig, load_model_config, packaged_config
    from get_yeast.data import Sample, YeastDataset, YeastTable, collate, drug_vocabulary
    from get_yeast.train import loss_fn

    model_cfg = load_model_config(packaged_config("yeast_model_tiny.yaml" if tiny else "yeast_model.yaml"))
    rm = model_cfg.region_model
    R = 32 if tiny else 900
    t = TrainingConfig()
    B = 2 if tiny else t.batch_size
    rng = np.random.default_rng(0)
    drugs = [None, "rapamycin", "fluconazole"]
    samples = []
    for i in range(4 * B):
        motif = rng.random((R, rm.num_features), dtype=np.float32)
        cond = {"medium": ["SC", "YPD"][i % 2], "temperature": 30.0 + i % 8, "preculture_hours": 3.5,
                "preculture_od600": 0.8, "drug": drugs[i % 3], "drug_concentration_M": 1e-6 if i % 3 else None,
                "drug_hours": 1.0 if i % 3 else None, "carbon_source": "glucose", "nitrogen_source": None}
        samples.append(Sample(f"s{i}", [f"r{j}" for j in range(R)], motif,
                              rng.random((R, rm.output_dim), dtype=np.float32) * 3, cond))
    table = YeastTable(samples, [f"motif_{j}" for j in range(rm.num_features - 1)] + ["accessibility"],
                       ["expression"], "benchmark")
    vocab = drug_vocabulary(table)
    torch.manual_seed(0)
    from get_yeast.model import GETYeast

    lora = LoraConfig()
    model = apply_lora(GETYeast(model_cfg, n_drugs=len(vocab)), lora)
    apply_freezing(model, trainable_spec(lora), verbose=False)  # the package passes the checkpoint's report
    return TrainCase(model, loss_fn, YeastDataset(table, model_cfg.condition, vocab), B,
                     {"regions": R, "features": rm.num_features, "embed_dim": rm.embed_dim, "num_layers": rm.num_layers,
                      "num_heads": rm.num_heads, "lora_r": lora.r, "lora_targets": list(lora.target_modules)},
                     "samples", collate_fn=collate, grad_clip=t.grad_clip, lr=t.lr, weight_decay=t.weight_decay)


# ----------------------------------------------------------------------------------- spatial-transfer
def _spatial_cfg(tiny: bool):
    from spatial_transfer.model import Cell2GeneConfig

    if tiny:
        return Cell2GeneConfig(in_dim=16, gnn_dim=16, gnn_heads=2, embed_dim=32, n_heads=4, ff_dim=64,
                               bulk_genes=20, spatial_genes=30)
    return Cell2GeneConfig()  # the guide's sizes


def build_spatial_train(tiny: bool, device: torch.device) -> TrainCase:
    """SpatialModel fine-tuning: the guide's batch 16 windows of 4 x 4 spots, nuclei at the demo's density."""
    from spatial_transfer.data import GraphConfig, SpatialData, collate, spatial_items
    from spatial_transfer.synthetic import DemoSpec
    from spatial_transfer.model import FREEZE_STRATEGIES, SpatialModel
    from spatial_transfer.train import init_output_bias, mse_loss
    from spatial_transfer.config import TrainSettings
    from ftcore.freezing import apply_freezing

    cfg, graph, spec, settings = _spatial_cfg(tiny), GraphConfig(), DemoSpec(), TrainSettings()
    B = 2 if tiny else settings.batch_size
    grid = graph.window * math.ceil(math.sqrt(B))  # one slide of B windows
    rng = np.random.default_rng(0)
    rc = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), -1).reshape(-1, 2)
    centres = (rc[:, ::-1] + 0.5) * spec.spot_spacing
    xy, spot = [], []
    for i, ctr in enumerate(centres):
        n_in = max(1, rng.poisson(spec.cells_per_spot))
        r, a = spec.spot_radius * np.sqrt(rng.random(n_in)), rng.random(n_in) * 2 * np.pi
        xy.append(ctr + np.stack([r * np.cos(a), r * np.sin(a)], 1))
        spot += [i] * n_in
        n_out = rng.poisson(spec.cells_between_spots)
        xy.append(ctr + rng.uniform(spec.spot_radius, spec.spot_spacing / 2, (n_out, 2)) * rng.choice([-1, 1], (n_out, 2)))
        spot += [-1] * n_out
    xy = np.concatenate(xy).astype(np.float32)
    n_spots = len(rc)
    data = SpatialData(np.log1p(rng.gamma(1.0, 1.0, (n_spots, cfg.spatial_genes))).astype(np.float32),
                       [f"g{i}" for i in range(cfg.spatial_genes)], [f"spot{i}" for i in range(n_spots)],
                       np.array(["slide0"] * n_spots), rc.astype(np.int64),
                       rng.normal(size=(len(xy), cfg.in_dim)).astype(np.float32), xy, np.array(["slide0"] * len(xy)),
                       np.array(spot, dtype=np.int64))
    items = spatial_items(data, graph, ["slide0"])[:B]
    torch.manual_seed(0)
    model = SpatialModel(cfg)
    init_output_bias(model, items)
    apply_freezing(model, FREEZE_STRATEGIES["full"], verbose=False)
    return TrainCase(model, mse_loss, items, B,
                     {"model": "SpatialModel", "window": graph.window, "spots_per_item": graph.window ** 2,
                      "nuclei_per_item": int(np.mean([it.num_nodes for it in items])), "knn": graph.k,
                      "embed_dim": cfg.embed_dim, "layers": cfg.spatial_layers, "genes": cfg.spatial_genes,
                      "strategy": "full"}, "windows", collate_fn=collate, lr=1e-6, weight_decay=settings.weight_decay)


def build_bulk_train(tiny: bool, device: torch.device) -> TrainCase:
    """BulkModel pretraining: batch 16 bulk samples of the demo's size (bulk_cells nuclei, tiles of 100)."""
    from spatial_transfer.data import BulkData, GraphConfig, bulk_items, collate
    from spatial_transfer.synthetic import DemoSpec
    from spatial_transfer.model import BulkModel
    from spatial_transfer.train import init_output_bias, mse_loss
    from spatial_transfer.config import TrainSettings

    cfg, graph, spec, settings = _spatial_cfg(tiny), GraphConfig(), DemoSpec(), TrainSettings()
    B = 2 if tiny else settings.batch_size
    n_cells = 60 if tiny else spec.bulk_cells
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, spec.bulk_region, (B * n_cells, 2)).astype(np.float32)
    data = BulkData(np.log1p(rng.gamma(2.0, 2.0, (B, cfg.bulk_genes))).astype(np.float32),
                    [f"g{i}" for i in range(cfg.bulk_genes)], [f"bulk{i}" for i in range(B)],
                    rng.normal(size=(len(xy), cfg.in_dim)).astype(np.float32), xy, np.repeat(np.arange(B), n_cells))
    items = bulk_items(data, graph, np.arange(B))
    torch.manual_seed(0)
    model = BulkModel(cfg)
    init_output_bias(model, items)
    return TrainCase(model, mse_loss, items, B,
                     {"model": "BulkModel", "nuclei_per_sample": n_cells, "tile_size": graph.tile_size,
                      "tokens_per_sample": int(np.mean([len(it.spot_pos) for it in items])), "embed_dim": cfg.embed_dim,
                      "layers": cfg.bulk_layers, "genes": cfg.bulk_genes}, "bulk samples", collate_fn=collate,
                     lr=1e-4, weight_decay=settings.weight_decay)


# Most-wanted first (issue 15's headline steps, then one inference per package), so a budget that
# runs out drops the tail.
ITEMS = [
    Item("state-tx", "train state", "train", build_state_tx_train("state")),
    Item("var-st", "train stage 2 b64", "train", build_var_st_stage2(64)),
    Item("cellfm-ft", "train 80M b16", "train", build_cellfm_train),
    Item("get-yeast", "train GET LoRA b16", "train", build_get_yeast_train),
    Item("var-st", "generate b64", "infer", build_var_st_generate(64)),
    Item("state-tx", "infer", "infer", build_state_tx_infer),
    Item("cellfm-ft", "predict", "infer", build_cellfm_infer),
    Item("var-st", "train stage 1 b256", "train", build_var_st_stage1(256)),
    Item("state-tx", "train state_lg", "train", build_state_tx_train("state_lg")),
    Item("var-st", "train stage 2 b256", "train", build_var_st_stage2(256)),
    Item("var-st", "train stage 1 b64", "train", build_var_st_stage1(64)),
    Item("var-st", "generate b1", "infer", build_var_st_generate(1)),
    Item("var-st", "generate b1024", "infer", build_var_st_generate(1024)),
    Item("spatial-transfer", "train spatial b16", "train", build_spatial_train),
    Item("spatial-transfer", "train bulk b16", "train", build_bulk_train),
]


# ----------------------------------------------------------------------------------- measuring
class Clock:
    """Elapsed ms between two marks: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def time_steps(step: Callable[[], Any], clock: Clock, blocks: int, per_block: int) -> tuple[float, float]:
    """(median device ms per step over `blocks` blocks of `per_block` steps, median host ms to issue the
    first step of a block into an idle queue: near ms_step, the GPU waits for Python)."""
    dev, host = [], []
    for _ in range(blocks):
        clock.sync()
        start, t0 = clock.mark(), time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)
        for _ in range(per_block - 1):
            step()
        end = clock.mark()
        clock.sync()
        dev.append(clock.ms(start, end) / per_block)
    return statistics.median(dev), statistics.median(host)


def first_step(step: Callable[[], Any], clock: Clock, compiled: bool) -> dict:
    """Time the first step (the compile, when compiled) and, compiled, dynamo's graph and break counts."""
    from torch._dynamo.utils import counters

    counters.clear()
    clock.sync()
    t0 = time.perf_counter()
    step()
    clock.sync()
    out: dict[str, Any] = {"first_step_s": round(time.perf_counter() - t0, 3)}
    if compiled:
        breaks = counters["graph_break"]
        out["graph_breaks"] = {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
                               "breaks": int(sum(breaks.values())),
                               "reasons": [f"{n} x {str(r).splitlines()[0][:200]}" for r, n in breaks.most_common(8)]}
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def profile_steps(step: Callable[[], Any], clock: Clock, steps: int) -> dict:
    """Kernels per step, top 8 by device time with their share, and GPU-busy ms per step (union of
    kernel intervals). On the CPU: top-level aten ops stand in for kernels and busy time is not given."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.cuda else [])
    clock.sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        clock.sync()
    events = prof.events()
    if clock.cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA
                   and not e.name.startswith(("Memcpy", "Memset"))]
        copies = sum(1 for e in events if e.device_type == DeviceType.CUDA and e.name.startswith(("Memcpy", "Memset")))
    else:
        kernels = [e for e in events if e.name.startswith("aten::")
                   and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
        copies = 0
    spans = sorted((e.time_range.start, e.time_range.end) for e in kernels)
    by_name: dict[str, float] = {}
    for e, (a, b) in zip(kernels, ((e.time_range.start, e.time_range.end) for e in kernels)):
        by_name[e.name] = by_name.get(e.name, 0.0) + (b - a)
    total = sum(by_name.values()) or 1.0
    busy, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            busy += 0 if cur_b is None else cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        busy += cur_b - cur_a
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    return {
        "kernels_per_step": len(kernels) / steps,
        "copies_per_step": copies / steps,
        "top_kernels": [{"name": n[:120], "ms_per_step": round(t / 1e3 / steps, 4), "share": round(t / total, 4)}
                        for n, t in top],
        "gpu_busy_ms": round(busy / 1e3 / steps, 4) if clock.cuda else None,
        "profile_unit": "CUDA kernels" if clock.cuda else "top-level aten ops (CPU)",
    }


def graph_breaks(fn: Callable, *args) -> dict:
    """torch._dynamo.explain over the compiled region: graphs, breaks, first reasons with file:line."""
    import torch._dynamo

    torch._dynamo.reset()
    ex = torch._dynamo.explain(fn)(*args)
    reasons: collections.Counter = collections.Counter()
    for r in ex.break_reasons:
        stack = getattr(r, "user_stack", None) or []
        where = f" @ {_short_path(stack[-1].filename)}:{stack[-1].lineno}" if stack else ""
        reasons[f"{str(r.reason).splitlines()[0][:160]}{where}"] += 1
    torch._dynamo.reset()
    return {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "reasons": [f"{n} x {r}" for r, n in reasons.most_common(8)]}


def _short_path(path: str) -> str:
    for marker in ("/packages/", "/shared/src/", "/benchmarks/", "/site-packages/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__


def measure_train(case: TrainCase, compile_mode: str, device: torch.device, args, out_dir: str) -> dict:
    import torch._dynamo

    torch._dynamo.reset()  # every Trainer compiles the same _forward_loss code: fresh caches, no recompile limit
    cfg = TrainConfig(output_dir=out_dir, epochs=1, batch_size=case.batch_size, lr=case.lr,
                      weight_decay=case.weight_decay, schedule="constant", grad_clip=case.grad_clip,
                      precision="bf16", device=str(device), compile=compile_mode, progress=False, shuffle=False,
                      resume=False, best_name=None, curve_name=None)
    trainer = Trainer(case.model, cfg, case.train_data, loss_fn=case.loss_fn, collate_fn=case.collate_fn)
    batch = move_to(next(iter(trainer.train_loader)), trainer.device)  # resident: data loading not timed
    row: dict[str, Any] = {
        "n_params": sum(p.numel() for p in case.model.parameters()),
        "trainable_params": sum(p.numel() for p in case.model.parameters() if p.requires_grad),
    }
    clock = Clock(trainer.device)
    if compile_mode != "off" and args.explain:
        try:
            row["explain"] = graph_breaks(trainer._forward_loss, batch)
        except Exception as err:  # noqa: BLE001 - explain is a diagnostic: the timing goes on without it
            row["explain"] = {"error": _first_line(err)}
    step = lambda: trainer._train_step(batch)  # noqa: E731
    row.update(first_step(step, clock, compile_mode != "off"))
    for _ in range(args.warmup):
        step()
    ms, host = time_steps(step, clock, args.blocks, args.steps_per_block)
    row.update(ms_step=round(ms, 4), host_ms=round(host, 4), samples_s=round(case.batch_size / ms * 1e3, 2))
    if compile_mode == "off":
        def fwd_bwd():
            with case.count_context():
                loss, _ = trainer._forward_loss(batch)
                loss.backward()
        row["flops_step"] = count_flops(fwd_bwd)
        trainer.optimizer.zero_grad(set_to_none=True)
    row.update(profile_steps(step, clock, args.profile_steps))
    if trainer.device.type == "cuda":
        row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def measure_infer(case: InferCase, compiled: bool, device: torch.device, args) -> dict:
    import torch._dynamo

    torch._dynamo.reset()
    clock = Clock(device)
    step = lambda: case.run(compiled)  # noqa: E731
    row: dict[str, Any] = {"notes": case.notes} if case.notes else {}
    with torch.no_grad():
        row.update(first_step(step, clock, compiled))
        for _ in range(args.warmup):
            step()
        ms, host = time_steps(step, clock, args.blocks, max(1, args.steps_per_block // 2))
        row.update(ms_step=round(ms, 4), host_ms=round(host, 4), samples_s=round(case.samples / ms * 1e3, 2))
        if not compiled:
            def once():
                with case.count_context():
                    case.run(False)
            row["flops_step"] = count_flops(once)
        row.update(profile_steps(step, clock, 1))
    return row


def run_item(item: Item, mode: str, device: torch.device, args, eager_flops: dict) -> dict:
    key = (item.package, item.what)
    row: dict[str, Any] = {"package": item.package, "what": item.what, "kind": item.kind, "compile": mode}
    with tempfile.TemporaryDirectory(prefix="mfu_") as tmp:
        case = item.build(args.tiny, device)
        row.update(sizes=case.sizes, batch=case.batch_size if item.kind == "train" else case.samples, unit=case.unit)
        if item.kind == "train":
            row.update(measure_train(case, mode, device, args, tmp))
        else:
            row.update(measure_infer(case, mode == "on", device, args))
    if "flops_step" in row:
        eager_flops[key] = row["flops_step"]
    flops = row.get("flops_step", eager_flops.get(key))  # the same model: eager's count holds for compiled
    row["flops_step"] = flops
    if flops and row.get("ms_step"):
        row["tflops"] = round(flops / (row["ms_step"] * 1e-3) / 1e12, 3)
        row["mfu"] = round(row["tflops"] / args.peak_tflops, 4)
    return row


SCHEMA = ("package", "what", "kind", "sizes", "batch", "unit", "compile", "ms_step", "samples_s", "flops_step",
          "tflops", "mfu", "kernels_per_step", "top_kernels", "host_ms", "gpu_busy_ms", "error")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON written after every row")
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (with --tiny: a check of the code)")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (few layers, small widths): checks every path fast")
    ap.add_argument("--only", default="", help=f"comma-separated packages ({', '.join(PACKAGES)}) or 'package:what' "
                                               "substrings, e.g. 'state-tx,var-st:stage 2'")
    ap.add_argument("--modes", default="off,on", help="compile settings to measure, of off, on and graphs (CUDA graphs; training rows only), e.g. off,on")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="rows starting after this many seconds are skipped (default 420; no limit with --tiny)")
    ap.add_argument("--warmup", type=int, default=3, help="steps after the first (compiling) one, untimed")
    ap.add_argument("--blocks", type=int, default=5, help="timed blocks; the median block gives ms/step")
    ap.add_argument("--steps-per-block", type=int, default=6)
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    ap.add_argument("--compile-backend", default="inductor",
                    help="torch.compile backend for every compiled row (the Trainer's too): inductor (the "
                         "measurement); aot_eager checks tracing, graph breaks and compiled backward on a slow CPU")
    ap.add_argument("--explain", action="store_true",
                    help="also run torch._dynamo.explain on each compiled training step (break reasons with "
                         "file:line; costs one more trace per row; on by default with --tiny)")
    ap.add_argument("--keep-coalesce-analysis", action="store_true",
                    help="compile with inductor's coalesce tiling analysis on (torch's default), which the Trainer "
                         "turns off (ftcore.training.inductor_options): the A/B of that choice")
    args = ap.parse_args()
    if args.keep_coalesce_analysis:
        import ftcore.training

        ftcore.training.INDUCTOR_SKIP_COALESCE_ANALYSIS = False
    if args.tiny:
        args.warmup, args.blocks, args.steps_per_block, args.profile_steps = 1, 2, 2, 1
        args.explain = True
    if args.budget_s is None:
        args.budget_s = math.inf if args.tiny else 420.0
    t_start = time.time()
    device = torch.device(args.device)
    if args.compile_backend != "inductor":
        # the Trainer calls torch.compile(fn) itself: the backend is swapped where it looks the function up
        torch.compile = functools.partial(torch.compile, backend=args.compile_backend)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]

    def selected(item: Item) -> bool:
        if not wanted:
            return True
        label = f"{item.package}:{item.what}"
        return any(w == item.package or (":" in w and w in label) for w in wanted)

    doc = {"command": " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "tiny": args.tiny,
           "compile_backend": args.compile_backend,
           "inductor_coalesce_tiling_analysis": args.keep_coalesce_analysis,
           "peak_tflops": args.peak_tflops, "mfu_goal": MFU_GOAL, "precision": "bf16 autocast (training)",
           "schema": list(SCHEMA),
           "timing": f"median over {args.blocks} blocks of {args.steps_per_block} steps "
                     f"({'CUDA events' if device.type == 'cuda' else 'perf_counter'}), after 1 + {args.warmup} warm-up steps; "
                     "batch resident on the device",
           "flops": "torch.utils.flop_counter.FlopCounterMode over one eager forward + backward (training) "
                    "or one call (inference); matmul/conv/attention only", "rows": []}
    try:
        import triton

        doc["triton"] = triton.__version__
    except ImportError:
        pass
    modes = [m for m in args.modes.split(",") if m in ("off", "on", "graphs")]
    eager_flops: dict = {}
    for item in ITEMS:
        if not selected(item):
            continue
        for mode in modes:
            if mode == "graphs" and item.kind != "train":
                continue  # CUDA graphs are a Trainer setting
            elapsed = time.time() - t_start
            if elapsed > args.budget_s:
                row = {"package": item.package, "what": item.what, "kind": item.kind, "compile": mode,
                       "error": f"skipped: {elapsed:.0f} s of the {args.budget_s:.0f} s budget (--budget-s) spent"}
            else:
                t0 = time.time()
                try:
                    row = run_item(item, mode, device, args, eager_flops)
                    row["error"] = None
                except Exception as err:  # noqa: BLE001 - one failing row must not stop the others
                    row = {"package": item.package, "what": item.what, "kind": item.kind, "compile": mode,
                           "error": _first_line(err),
                           "traceback": traceback.format_exc().strip().splitlines()[-6:]}
                row["wall_s"] = round(time.time() - t0, 1)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
            doc["rows"].append(row)
            doc["elapsed_s"] = round(time.time() - t_start, 1)
            atomic_write_json(args.out, doc)
            shown = (f"{row['ms_step']:.3f} ms/step  {row.get('samples_s', 0):.1f} {row.get('unit', '')}/s"
                     f"  MFU {row['mfu'] if row.get('mfu') is not None else '-'}"
                     f"  kernels/step {row.get('kernels_per_step', '-')}" if row.get("ms_step") is not None
                     else f"ERROR {row['error']}")
            print(f"[{doc['elapsed_s']:6.1f}s] {item.package:16s} {item.what:22s} compile={mode:3s} {shown}", flush=True)
    failed = [r for r in doc["rows"] if r.get("error")]
    print(f"wrote {args.out}: {len(doc['rows'])} rows, {len(failed)} with an error or skipped, "
          f"{doc['elapsed_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
