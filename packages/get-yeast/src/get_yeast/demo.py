"""The embedded default run: synthetic yeast data + a tiny GET checkpoint (masked-region pretraining, saved in
checkpoint-799's layout), then LoRA fine-tuning with conditions vs a condition-blind baseline, evaluated on
held-out conditions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ftcore.distributed import is_main_process, wait_for_main
from ftcore.training import TrainConfig, Trainer
from get_yeast.config import load_model_config, load_training_config, packaged_config
from get_yeast.data import DataConfig, YeastDataset, collate, drug_vocabulary, validate_frame
from get_yeast.layouts import CHECKPOINT_799_RENAMES, rename_by_prefix
from get_yeast.model import Encoder, RegionEmbed, RegionModelConfig, init_weights
from get_yeast.synthetic import make_yeast_table, write_demo_data, write_get_checkpoint

DEMO_DATA = "yeast_demo.csv"
DEMO_CHECKPOINT = "checkpoint-799.pth"


def ensure_demo_assets(folder: str | Path, seed: int = 0, progress: bool = True) -> tuple[Path, Path]:
    """(data CSV, GET checkpoint) in `folder`, generated on first use (deterministic in `seed`)."""
    folder = Path(folder)
    data = write_demo_data(folder / DEMO_DATA, seed=seed)
    ckpt = folder / DEMO_CHECKPOINT
    if not ckpt.exists():
        pretrain_tiny_get(ckpt, seed=seed, progress=progress)
    return data, ckpt


class MaskedRegionPretraining(nn.Module):
    """GET's pretraining objective (GETRegionPretrain) at the tiny size: a random half of the regions is
    replaced by `mask_token`, the encoder sees them in context, `head_mask` reconstructs their motif
    features. Its parameters are GETRegionPretrain's: region_embed, cls_token, encoder, mask_token, head_mask."""

    def __init__(self, rm: RegionModelConfig, mask_ratio: float = 0.5):
        super().__init__()
        self.mask_ratio = mask_ratio
        self.region_embed = RegionEmbed(rm.num_features, rm.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, rm.embed_dim))
        self.encoder = Encoder(rm)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, rm.embed_dim))
        self.head_mask = nn.Linear(rm.embed_dim, rm.num_features)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def loss(self, batch: dict) -> torch.Tensor:
        """MSE of the reconstructed motif features over the masked real regions."""
        motif, padding = batch["region_motif"], batch["padding"]
        masked = (torch.rand(padding.shape, device=padding.device) < self.mask_ratio) & ~padding
        x = self.region_embed(motif)
        x = torch.where(masked[..., None], self.mask_token.expand_as(x), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        key_padding = torch.cat([padding.new_zeros(padding.shape[0], 1), padding], dim=1)
        recon = self.head_mask(self.encoder(x, key_padding)[:, 1:])
        return F.mse_loss(recon[masked], motif[masked])


# Our names -> GET's MAE-era names: the checkpoint-799 rows of layouts.py, read backwards.
TO_CHECKPOINT_799 = tuple((ours, get) for get, ours in CHECKPOINT_799_RENAMES)


def pretrain_tiny_get(path: Path, seed: int = 0, progress: bool = True) -> Path:
    """Stand-in for GET's released checkpoint-799.pth at the tiny size: masked-region pretraining (as GET's)
    on another synthetic genome, saved in checkpoint-799's layout (MAE-era names and dict), so the demo
    fine-tunes through the same detection and rename a user's real checkpoint-799.pth goes through."""
    model_cfg = load_model_config(packaged_config("yeast_model_tiny.yaml"), ["condition.enabled=false"])
    df = make_yeast_table(n_conditions=10, n_windows=8, seed=seed + 1000)
    table = validate_frame(df, DataConfig(), model_cfg.condition, "GET pretraining stand-in data")
    vocab = drug_vocabulary(table)
    torch.manual_seed(seed)
    model = MaskedRegionPretraining(model_cfg.region_model)
    run = path.parent / "get_pretraining_run"
    trainer = Trainer(model, TrainConfig(output_dir=str(run), epochs=15, batch_size=16, lr=2e-3, warmup_steps=5,
                                         seed=seed, progress=progress, monitor="train_loss", best_name=None,
                                         curve_name=None),
                      YeastDataset(table, model_cfg.condition, vocab), None, loss_fn=lambda m, b: m.loss(b),
                      collate_fn=collate)
    trainer.fit()
    if is_main_process():
        weights = {rename_by_prefix(k, TO_CHECKPOINT_799): v for k, v in model.state_dict().items()}
        write_get_checkpoint(path, weights)
    wait_for_main()  # the other ranks read rank 0's file next
    return path


def run_demo(output: str | Path = "runs/get-yeast", device: str = "auto", epochs: int | None = None,
             progress: bool = True, seed: int | None = None, overwrite: bool = False) -> dict:
    """Train with conditions and condition-blind on the embedded data, evaluate both on held-out conditions.

    seed: experiment.seed (the split of conditions, the initialisation, the batches; default: the packaged
    training config's); the embedded data and the pretraining stand-in stay the same."""
    from ftcore.io import atomic_write_json, claim_outputs
    from get_yeast.train import train, train_settings
    from get_yeast.predict import evaluate

    out = Path(output)
    ckpt = out / "embedded" / DEMO_CHECKPOINT
    overrides = [f"training.device={device}", f"pretrained.checkpoint={ckpt}"]
    if epochs is not None:
        overrides.append(f"training.epochs={epochs}")
    if seed is not None:
        overrides.append(f"experiment.seed={seed}")
    cfg, _ = load_training_config(None, overrides)
    model_cfg = load_model_config(packaged_config("yeast_model_tiny.yaml"))
    train_settings(cfg, out, progress)  # the settings, before the assets are generated
    claim_outputs(out)
    data, ckpt = ensure_demo_assets(out / "embedded", progress=progress)
    print(f"== GET-yeast demo: {data} (embedded synthetic yeast data), pretrained {ckpt} (generated here)")
    print("== 1/3 LoRA fine-tuning with the condition encoder")
    cond = train(cfg, model_cfg, data, out / "yeast_lora_finetune", progress=progress, overwrite=overwrite)
    print("== 2/3 condition-blind baseline (same model and training, conditions not used)")
    blind_cfg = dataclasses.replace(model_cfg, condition=dataclasses.replace(model_cfg.condition, enabled=False))
    blind = train(cfg, blind_cfg, data, out / "condition_blind", progress=progress, overwrite=overwrite)
    print("== 3/3 evaluate the fine-tuned model on the held-out conditions")
    evaluate(cfg, data, out / "yeast_lora_finetune" / "best_model.pth", out / "yeast_lora_eval", device=device)
    keys = ("pearson", "spearman", "r2", "mse", "condition_response_pearson")
    comparison = {"held_out_conditions": {"with_conditions": {k: cond[k] for k in keys},
                                          "condition_blind": {k: blind[k] for k in keys}},
                  "n_test_samples": cond["n_samples"], "seed": cfg.experiment.seed, "epochs": cfg.training.epochs}
    atomic_write_json(out / "comparison.json", comparison)
    print(f"{'held-out conditions':<28}{'with conditions':>16}{'condition-blind':>17}")
    for k in keys:
        print(f"{k:<28}{cond[k]:>16.3f}{blind[k]:>17.3f}")
    print(f"outputs in {out}/ (comparison.json, yeast_lora_finetune/, condition_blind/, yeast_lora_eval/)")
    return comparison
