"""The embedded default run: synthetic yeast data + a tiny GET-layout "pretrained" checkpoint,
then LoRA fine-tuning with conditions vs a condition-blind baseline, evaluated on held-out conditions."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from ftcore.training import TrainConfig, Trainer
from get_yeast.config import load_model_config, load_training_config, packaged_config
from get_yeast.data import DataConfig, YeastDataset, collate, drug_vocabulary, validate_frame
from get_yeast.model import GETYeast
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


def pretrain_tiny_get(path: Path, seed: int = 0, progress: bool = True) -> Path:
    """Stand-in for GET's released checkpoint at the tiny size: the plain GET region model (no
    conditions) trained briefly on another synthetic genome to predict expression on both strands
    (output_dim 2, like the released head), saved in GET's checkpoint-799.pth layout."""
    import torch

    model_cfg = load_model_config(packaged_config("yeast_model_tiny.yaml"),
                                  ["condition.enabled=false", "region_model.output_dim=2"])
    df = make_yeast_table(n_conditions=10, n_windows=8, seed=seed + 1000)
    table = validate_frame(df, DataConfig(), model_cfg.condition, "GET pretraining stand-in data")
    for s in table.samples:  # two strands: sense expression and a weaker antisense copy
        s.exp_label = np.concatenate([s.exp_label, 0.4 * s.exp_label], axis=1)
    vocab = drug_vocabulary(table)
    torch.manual_seed(seed)
    model = GETYeast(model_cfg, n_drugs=len(vocab))
    run = path.parent / "get_pretraining_run"

    def loss(m, batch):
        pred = m(batch["region_motif"], None, batch["padding"])
        valid = ~batch["padding"]
        return torch.nn.functional.mse_loss(pred[valid], batch["exp_label"][valid])

    trainer = Trainer(model, TrainConfig(output_dir=str(run), epochs=15, batch_size=16, lr=2e-3, warmup_steps=5,
                                         seed=seed, progress=progress, monitor="train_loss", best_name=None,
                                         curve_name=None),
                      YeastDataset(table, model_cfg.condition, vocab), None, loss_fn=loss, collate_fn=collate)
    trainer.fit()
    if int(os.environ.get("RANK", "0")) == 0:
        write_get_checkpoint(path, model.state_dict())
    if trainer.env.enabled:
        import torch.distributed as dist

        dist.barrier()  # other ranks wait for rank 0's file
    return path


def run_demo(output: str | Path = "runs/get-yeast", device: str = "auto", epochs: int | None = None,
             progress: bool = True) -> dict:
    """Train with conditions and condition-blind on the embedded data, evaluate both on held-out conditions."""
    from ftcore.io import atomic_write_json
    from get_yeast.train import evaluate, train

    out = Path(output)
    data, ckpt = ensure_demo_assets(out / "embedded", progress=progress)
    overrides = [f"training.device={device}", f"pretrained.checkpoint={ckpt}"]
    if epochs is not None:
        overrides.append(f"training.epochs={epochs}")
    cfg, _ = load_training_config(None, overrides)
    model_cfg = load_model_config(packaged_config("yeast_model_tiny.yaml"))
    print(f"== GET-yeast demo: {data} (embedded synthetic yeast data), pretrained {ckpt} (generated here, trusted)")
    print("== 1/3 LoRA fine-tuning with the condition encoder")
    cond = train(cfg, model_cfg, data, out / "yeast_lora_finetune", trust_checkpoint=True, progress=progress)
    print("== 2/3 condition-blind baseline (same model and training, conditions not used)")
    blind_cfg = dataclasses.replace(model_cfg, condition=dataclasses.replace(model_cfg.condition, enabled=False))
    blind = train(cfg, blind_cfg, data, out / "condition_blind", trust_checkpoint=True, progress=progress)
    print("== 3/3 evaluate the fine-tuned model on the held-out conditions")
    evaluate(cfg, data, out / "yeast_lora_finetune" / "best_model.pth", out / "yeast_lora_eval", device=device)
    keys = ("pearson", "spearman", "r2", "mse", "condition_response_pearson")
    comparison = {"held_out_conditions": {"with_conditions": {k: cond[k] for k in keys},
                                          "condition_blind": {k: blind[k] for k in keys}},
                  "n_test_samples": cond["n_samples"]}
    atomic_write_json(out / "comparison.json", comparison)
    print(f"{'held-out conditions':<28}{'with conditions':>16}{'condition-blind':>17}")
    for k in keys:
        print(f"{k:<28}{cond[k]:>16.3f}{blind[k]:>17.3f}")
    print(f"outputs in {out}/ (comparison.json, yeast_lora_finetune/, condition_blind/, yeast_lora_eval/)")
    return comparison
