"""Stage 1 and stage 2 training (on ftcore's Trainer), prediction and evaluation.

    data -> train_stage1 -> best_vqvae.ckpt -> train_stage2 -> complete_model.ckpt
         -> predict (predictions.h5ad: X = predictions) -> evaluate (metrics.json, next to ridge and the stage-1 ceiling)

Everything here takes validated SpotData (var_st.data) and plain config objects; the CLI does
the argument parsing. Files written by rank 0 only; every write is atomic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ftcore.distributed import is_main_process, local_rank, world_size
from ftcore.errors import UserError
from ftcore.io import atomic_write_json
from ftcore.metrics import pearson_mean_gene
from ftcore.training import TrainConfig, Trainer
from torch.utils.data import TensorDataset

from var_st.config import RunSettings
from var_st.data import SpotData
from var_st.model import TwoStageVARST, codebook_stats

MODEL_NAME = "TWO_STAGE_VAR_ST"


class RunPaths:
    """logs/<dataset>/TWO_STAGE_VAR_ST/... as in the user's guide."""

    def __init__(self, log_dir: str | Path, dataset: str):
        self.root = Path(log_dir) / dataset / MODEL_NAME
        self.stage1 = self.root / "stage1_vqvae"
        self.stage1_ckpt = self.stage1 / "best_vqvae.ckpt"
        self.stage2 = self.root / "stage2_var"
        self.complete = self.root / "complete_model.ckpt"
        self.predictions = self.root / "predictions.h5ad"
        self.metrics = self.root / "metrics.json"


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def _train_config(out_dir: Path, run: RunSettings, n_train: int, **kw) -> TrainConfig:
    # Warm the learning rate up over about one epoch (at most 100 steps): without it the VQ-VAE's
    # latent scale and the codebook chase each other in the first steps and the loss spikes.
    warmup = min(100, max(1, n_train // (run.batch_size * world_size())))
    return TrainConfig.from_sections(run, {"warmup_steps": warmup, **run.trainer}, output_dir=str(out_dir),
                                     last_name="last.ckpt", **kw)


# ----------------------------------------------------------------------------- stage 1
def train_stage1(model: TwoStageVARST, data: SpotData, out_dir: Path, run: RunSettings, metadata: dict):
    """Train the VQ-VAE on the training spots' expression; returns the TrainResult (best_vqvae.ckpt)."""
    run = RunSettings.of(run)
    tr, va = data.split["train"], data.split["val"]
    x = _tensor(data.expression)
    model.set_training_stage(1)
    model.gene_names = list(data.gene_names)
    vqvae = model.vqvae
    # data-derived starting point (buffers and codebook); a resumed run replaces it with its checkpoint
    vqvae.fit_gene_stats(x[tr])
    vqvae.init_codebook(x[tr][torch.randperm(len(tr), generator=torch.Generator().manual_seed(run.seed))[:2048]],
                        seed=run.seed)

    def loss_fn(m, batch):
        out = m(batch[0])
        return out["loss"], {"recon_loss": out["recon_loss"].detach()}

    def eval_fn(m, loader):
        # restart first, so the metrics below describe the weights the checkpoint will hold
        restarted = m.restart_dead_codes()
        sums, n, tokens, recon, true = {}, 0, [], [], []
        for (xb,) in loader:
            xb = xb.to(next(m.parameters()).device)
            out = m(xb)
            for key in ("loss", "recon_loss", "vq_loss", "hier_loss"):
                sums[key] = sums.get(key, 0.0) + float(out[key]) * len(xb)
            n += len(xb)
            tokens.append(out["tokens"].cpu())
            recon.append(m.decode_tokens(out["tokens"]).cpu())
            true.append(xb.cpu())
        metrics = {f"val_{k}": v / max(n, 1) for k, v in sums.items()}
        metrics.update(codebook_stats(torch.cat(tokens), m.scale_sizes, m.cfg.vocab_size))
        metrics["val_recon_pearson"] = val_pearson(torch.cat(recon), torch.cat(true))
        metrics["dead_codes_restarted"] = float(restarted)
        return metrics

    cfg = _train_config(out_dir, run, len(tr), best_name="best_vqvae.ckpt", monitor="val_loss", mode="min")
    trainer = Trainer(vqvae, cfg, TensorDataset(x[tr]), TensorDataset(x[va]) if len(va) else None,
                      loss_fn=loss_fn, eval_fn=eval_fn, extra_state=model.metadata(1, **metadata),
                      artefact=model.header(1, **metadata))
    if is_main_process():
        atomic_write_json(out_dir / "split.json", _split_record(data))
    result = trainer.fit()
    model.stage1_source = str(result.best_path or out_dir)  # stage 2 may follow in this process
    return result


# ----------------------------------------------------------------------------- stage 2
def stage1_tokens(model: TwoStageVARST, expression: torch.Tensor, device: str = "auto", batch_size: int = 512) -> torch.Tensor:
    """Frozen stage-1 tokens of every spot [N, L] (the teacher-forcing targets), computed on the
    training device (this process's GPU under torchrun) and returned on the CPU."""
    from ftcore.training import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and world_size() > 1:
        dev = torch.device("cuda", local_rank())
    vq = model.vqvae.to(dev).eval()
    return torch.cat([vq.encode_tokens(expression[i:i + batch_size].to(dev)).cpu()
                      for i in range(0, len(expression), batch_size)])


def spatial_average(expression: np.ndarray, coords: np.ndarray, slides: np.ndarray, k: int) -> np.ndarray:
    """Each spot's expression [N, G] averaged over its k nearest spots of the same slide (itself included)."""
    out = np.empty_like(expression)
    for s in np.unique(slides):
        idx = np.nonzero(slides == s)[0]
        xy = torch.as_tensor(coords[idx], dtype=torch.float64)
        near = torch.cdist(xy, xy).topk(min(k, len(idx)), largest=False).indices.numpy()
        out[idx] = expression[idx][near].mean(1)
    return out


def token_weights(scale_sizes, balance: float) -> torch.Tensor:
    """Training weight of each of the L tokens: n_k^-balance for a token of scale k, scaled to mean 1."""
    sizes = torch.tensor(scale_sizes, dtype=torch.float64)
    w = torch.repeat_interleave(sizes.pow(-float(balance)), torch.tensor(scale_sizes))
    return (w / w.mean()).float()


def token_loss(logits: torch.Tensor, tokens: torch.Tensor, weight: torch.Tensor, label_smoothing: float = 0.0,
               soft: torch.Tensor | None = None):
    """Stage-2 training loss: cross-entropy of logits [B, L, V] against tokens [B, L] (or, given, the
    soft targets [B, L, V] of MultiScaleGeneVQVAE.soft_tokens), each position weighted by weight [L]
    (token_weights), with label smoothing; the mean over B x L."""
    V = logits.shape[-1]
    target = tokens.reshape(-1) if soft is None else soft.reshape(-1, V)
    ce = F.cross_entropy(logits.reshape(-1, V).float(), target, label_smoothing=label_smoothing,
                         reduction="none").view(tokens.shape)
    return (ce * weight.to(ce.device)).mean()


def train_stage2(model: TwoStageVARST, data: SpotData, out_dir: Path, run: RunSettings, metadata: dict):
    """Train the VAR transformer with the frozen VQ-VAE; returns the TrainResult (best_var.ckpt)."""
    run = RunSettings.of(run)
    if model.current_stage != 2 or model.stage1_source is None:
        raise UserError("stage 2 needs the stage-1 VQ-VAE: call set_training_stage(2, stage1_ckpt_path=...) "
                        "(CLI: --stage1_ckpt logs/<dataset>/TWO_STAGE_VAR_ST/stage1_vqvae/best_vqvae.ckpt)")
    tr, va = data.split["train"], data.split["val"]
    x, h, c = _tensor(data.expression), _tensor(data.histology), _tensor(data.coords)
    k_smooth = model.var_config.target_smoothing_spots
    targets = x if k_smooth <= 1 else x.clone()
    if k_smooth > 1:  # training spots only: validation keeps the measured tokens
        targets[tr] = _tensor(spatial_average(data.expression[tr], data.coords[tr], data.slides[tr], k_smooth))
    tokens = stage1_tokens(model, targets, run.device)
    if model.var_config.histology_standardise:  # data-derived, before the pca fit (which sees the scaled features)
        model.var.fit_histology_scaler(h[tr])
    if model.var_config.histology_projection == "pca":  # data-derived; a resumed run loads its checkpoint over it
        model.var.fit_histology_pca(h[tr])
    V, smoothing = model.var_config.vocab_size, model.var_config.label_smoothing
    weight = token_weights(model.scale_sizes, model.var_config.scale_balance)

    soft_t, expected_w = model.var_config.soft_target_temperature, model.var_config.expected_loss_weight

    def loss_fn(m, batch):
        hb, cb, tb, xb = batch
        logits = m(hb, cb, tb, expected_decoding=True) if expected_w > 0 else m(hb, cb, tb)
        logs = {}
        if expected_w > 0:
            logits, pred = logits
            expected_mse = F.mse_loss(pred.float(), model.vqvae.standardise(xb))  # the frozen VQ-VAE (m may be DDP)
            logs["expected_mse"] = expected_mse.detach()
        soft = model.vqvae.soft_tokens(xb, soft_t) if soft_t > 0 else None
        loss = token_loss(logits, tb, weight, smoothing, soft)
        if expected_w > 0:
            loss = loss + expected_w * expected_mse
        return loss, {"token_accuracy": (logits.argmax(-1) == tb).float().mean().detach(), **logs}

    def eval_fn(m, loader):
        ce, correct, per_scale, n, preds, true = 0.0, 0.0, None, 0, [], []
        for hb, cb, tb, xb in loader:
            dev = next(m.parameters()).device
            hb, cb, tb = hb.to(dev), cb.to(dev), tb.to(dev)
            logits = m(hb, cb, tb)
            ce += float(F.cross_entropy(logits.reshape(-1, V).float(), tb.reshape(-1), reduction="sum"))
            hit = (logits.argmax(-1) == tb).float()
            correct += float(hit.sum())
            s = torch.stack([p.mean(1) for p in torch.split(hit, list(m.scale_sizes), 1)], 1).sum(0)
            per_scale = s if per_scale is None else per_scale + s
            n += len(tb)
            preds.append(m.inference(hb, cb, expected=True)["predicted_gene_expression"].cpu())
            true.append(xb)
        L = sum(m.scale_sizes)
        metrics = {"val_loss": ce / max(n * L, 1), "val_token_accuracy": correct / max(n * L, 1)}
        for size, acc in zip(m.scale_sizes, per_scale.tolist()):
            metrics[f"val_token_accuracy_s{size}"] = acc / max(n, 1)
        metrics["val_pearson"] = val_pearson(torch.cat(preds), torch.cat(true))
        return metrics

    # Best = highest mean per-gene Pearson of expected-code predictions on the validation slide: what
    # users select models by (token cross-entropy keeps falling while fine-scale noise is fitted).
    cfg = _train_config(out_dir, run, len(tr), best_name="best_var.ckpt", monitor="val_pearson", mode="max",
                        restore_best=True)
    ds = lambda idx: TensorDataset(h[idx], c[idx], tokens[idx], x[idx])  # noqa: E731
    trainer = Trainer(model, cfg, ds(tr), ds(va) if len(va) else None, loss_fn=loss_fn,
                      eval_fn=eval_fn if len(va) else None, extra_state=model.metadata(2, **metadata),
                      artefact=model.header(2, **metadata))
    return trainer.fit()  # the model holds the best validation's weights (restore_best)


# ----------------------------------------------------------------------------- the split, validation
def _split_record(data: SpotData) -> dict:
    return {"rule": data.split_rule, "source": data.source,
            **{k: [data.obs_names[i] for i in v] for k, v in data.split.items()}}


def val_pearson(pred, true) -> float:
    """THE definition of var-st's `val_pearson` / `val_recon_pearson` (history.json, the stage-2 monitor):
    ftcore.metrics.pearson_mean_gene, the mean over genes of the per-gene Pearson r across the validation
    spots. Where no gene has a defined r (every gene constant) it is -1, below any r, so the checkpoint
    monitor still ranks the epoch (a NaN would never be taken as a best value)."""
    r = pearson_mean_gene(pred, true)
    return r if np.isfinite(r) else -1.0


__all__ = ["RunPaths", "train_stage1", "train_stage2"]
