"""get-yeast: fine-tune GET's region model on yeast expression under experimental conditions.

    get-yeast                                   # the embedded demo: train -> evaluate, with a baseline
    get-yeast train --config yeast_training.yaml --data my.csv --output out/yeast_lora_finetune --device cuda
    get-yeast evaluate --config yeast_training.yaml --data my.csv --model out/yeast_lora_finetune/best_model.pth \
                       --output out/yeast_lora_eval --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftcore.errors import UserError, cli_main
from ftcore.cli import add_allow_unloaded_frozen, add_version

DEFAULT_OUTPUT = "runs/get-yeast"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="get-yeast", description="GET region model + yeast condition encoder, LoRA fine-tuning. "
                                "Without a subcommand: the embedded demo (synthetic yeast data, tiny model) end to end.")
    add_version(p, "get-yeast")
    sub = p.add_subparsers(dest="command")

    d = sub.add_parser("demo", help="embedded data: train with conditions and condition-blind, evaluate (default)")
    d.add_argument("--output", default=DEFAULT_OUTPUT, help=f"output folder (default {DEFAULT_OUTPUT})")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    d.add_argument("--epochs", type=int, default=None, help="override training.epochs")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")

    t = sub.add_parser("train", help="LoRA fine-tuning of a GET checkpoint on a CSV/Excel table")
    t.add_argument("--config", help="yeast_training.yaml (default: the packaged one)")
    t.add_argument("--model-config", help="yeast_model.yaml, or 'released' / 'tiny' for the packaged sizes (default: the "
                   "training config's model_config; tiny when --data is not given)")
    t.add_argument("--data", help="CSV/TSV/Excel table, one row per (sample, region); "
                   "without it: the embedded synthetic yeast data set and a tiny GET checkpoint")
    t.add_argument("--output", default=f"{DEFAULT_OUTPUT}/yeast_lora_finetune", help="run folder (re-run to resume)")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: training.device)")
    t.add_argument("--checkpoint", help="GET checkpoint to start from (overrides pretrained.checkpoint)")
    t.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of the checkpoint, which can run code; only for files you trust (GET's own "
                   "checkpoints do not need it: their argparse/numpy/omegaconf objects are read as inert stand-ins)")
    t.add_argument("--from-scratch", action="store_true",
                   help="no checkpoint on purpose: start every weight at its random initialisation (pretrained.from_scratch); "
                   "without a checkpoint, LoRA training is refused unless this is given")
    add_allow_unloaded_frozen(t)
    t.add_argument("--epochs", type=int, help="override training.epochs")
    t.add_argument("--max-steps", type=int, help="override training.max_steps")
    t.add_argument("--batch-size", type=int, help="override training.batch_size (per process under torchrun)")
    t.add_argument("--seed", type=int, help="override experiment.seed")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. training.lr=5e-4 or model.fusion.hidden_dim=128 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="metrics, predictions, plots and condition importance of a trained model")
    e.add_argument("--model", required=True, help="best_model.pth (or merged_model.safetensors) from get-yeast train")
    e.add_argument("--config", help="yeast_training.yaml (data columns, task options; default: the packaged one)")
    e.add_argument("--data", help="CSV/Excel table (default: the data the model was trained on, from run_config.json)")
    e.add_argument("--output", default=f"{DEFAULT_OUTPUT}/yeast_lora_eval", help="output folder")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    e.add_argument("--split", default="auto", choices=("auto", "test", "val", "train", "all"),
                   help="samples to evaluate: auto = the model's held-out test samples if the file has them, else all")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config key (e.g. task.interpret=false)")

    m = sub.add_parser("make-data", help="write the embedded synthetic yeast table (CSV or .xlsx)")
    m.add_argument("--output", required=True, help="file to write (.csv or .xlsx)")
    m.add_argument("--seed", type=int, default=0)
    return p


def _train(args) -> None:
    from get_yeast.config import load_model_config, load_training_config, packaged_config, split_overrides
    from get_yeast.train import train

    train_over, model_over = split_overrides(args.overrides)
    for flag, key in (("epochs", "training.epochs"), ("max_steps", "training.max_steps"),
                      ("batch_size", "training.batch_size"), ("seed", "experiment.seed"), ("device", "training.device")):
        if getattr(args, flag) is not None:
            train_over.append(f"{key}={getattr(args, flag)}")
    if args.from_scratch:
        train_over.append("pretrained.from_scratch=true")
    embedded = args.data is None
    cfg, cfg_dir = load_training_config(args.config, train_over)
    if embedded:
        from get_yeast.demo import ensure_demo_assets

        if args.model_config is None:
            args.model_config = str(packaged_config("yeast_model_tiny.yaml"))
        data, demo_ckpt = ensure_demo_assets(Path(args.output) / "embedded", progress=not args.no_progress)
        if args.checkpoint is None and cfg.pretrained.checkpoint is None and not cfg.pretrained.from_scratch:
            args.checkpoint = str(demo_ckpt)  # generated by this package just now, in checkpoint-799's layout
            print(f"no --data: embedded synthetic yeast data {data} and tiny GET checkpoint {demo_ckpt}")
    else:
        data = Path(args.data)
    if args.checkpoint is not None:
        cfg.pretrained.checkpoint = args.checkpoint
    packaged = {"released": "yeast_model.yaml", "tiny": "yeast_model_tiny.yaml"}
    if args.model_config in packaged:
        args.model_config = str(packaged_config(packaged[args.model_config]))
    model_path = Path(args.model_config) if args.model_config else cfg_dir / cfg.model_config
    if not model_path.exists():
        named_by = "--model-config" if args.model_config else f"model_config: {cfg.model_config} in {args.config}, relative to its folder"
        raise UserError(f"model config {model_path} does not exist ({named_by}); copy the packaged yeast_model.yaml "
                        "there or pass --model-config released|tiny|FILE")
    model_cfg = load_model_config(model_path, model_over)
    train(cfg, model_cfg, data, args.output, trust_checkpoint=args.trust_checkpoint, allow_unloaded_frozen=args.allow_unloaded_frozen,
          progress=not args.no_progress)


def _evaluate(args) -> None:
    from get_yeast.config import load_training_config
    from get_yeast.train import evaluate

    cfg, _ = load_training_config(args.config, args.overrides)
    data = args.data
    if data is None:
        run_config = Path(args.model).parent / "run_config.json"
        if not run_config.exists():
            raise UserError(f"no --data given and no {run_config} beside the model; pass --data")
        data = json.loads(run_config.read_text())["data"]
    evaluate(cfg, data, args.model, args.output, device=args.device, split=args.split)


def _make_data(args) -> None:
    from ftcore.io import atomic_path
    from get_yeast.synthetic import make_yeast_table

    out = Path(args.output)
    if out.suffix.lower() not in (".csv", ".xlsx"):
        raise UserError(f"--output {out}: use a .csv or .xlsx file name")
    df = make_yeast_table(seed=args.seed)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_excel(tmp, index=False, engine="openpyxl")
    print(f"wrote {out}: {df['sample'].nunique()} samples, {len(df)} rows")


@cli_main(batch_size_hint="--batch-size (training.batch_size in the config)")
def main(argv: list[str] | None = None) -> int | None:
    args = build_parser().parse_args(argv)
    if args.command in (None, "demo"):
        from get_yeast.demo import run_demo

        run_demo(getattr(args, "output", DEFAULT_OUTPUT), device=getattr(args, "device", "auto"),
                 epochs=getattr(args, "epochs", None), progress=not getattr(args, "no_progress", False))
    elif args.command == "train":
        _train(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "make-data":
        _make_data(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
