"""get-yeast: fine-tune GET's region model on yeast expression under experimental conditions.

    get-yeast                                   # the embedded demo: train -> evaluate, with a baseline
    get-yeast copy-config my_configs/             # the packaged YAMLs, to edit
    get-yeast train --config yeast_training.yaml --data my.csv --output out/yeast_lora_finetune --device cuda
    get-yeast evaluate --config yeast_training.yaml --data my.csv --model out/yeast_lora_finetune/best_model.pth \
                       --output out/yeast_lora_eval --device cuda
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ftcore import options as opt
from ftcore.cli import (ArgumentParser, add_allow_unloaded_frozen, add_compile, add_copy_config, add_device, add_seed,
                        add_trust_checkpoint, add_version, copy_config)
from ftcore.errors import UserError, cli_main, oom_advice

DEFAULT_OUTPUT = "runs/get-yeast"
# The packaged YAMLs a user's workflow edits (get_yeast/config/): copied out by `get-yeast copy-config DIR`.
CONFIG_TEMPLATES = ("yeast_training.yaml", "yeast_model.yaml", "yeast_model_tiny.yaml")


def _templates() -> dict[str, Path]:
    from importlib import resources

    return {name: Path(str(resources.files("get_yeast") / "config" / name)) for name in CONFIG_TEMPLATES}


def _expanded(text: str) -> str:
    """A path with `~` and $VARS expanded; the reader checks the file (its messages say what kind of file)."""
    from get_yeast.config import user_path

    return str(user_path(text)) if text.strip() else text


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="get-yeast", description="GET region model + yeast condition encoder, LoRA fine-tuning. "
                                "Without a subcommand: the embedded demo (synthetic yeast data, tiny model) end to end.")
    add_version(p, "get-yeast")
    sub = p.add_subparsers(dest="command")

    d = sub.add_parser("demo", help="embedded data: train with conditions and condition-blind, evaluate (default)")
    d.add_argument("--output", default=DEFAULT_OUTPUT, type=opt.output_dir("--output"),
                   help=f"output folder (default {DEFAULT_OUTPUT})")
    add_device(d)
    d.add_argument("--epochs", type=opt.positive_int("--epochs"), default=None, help="override training.epochs")
    add_seed(d, "the split of the conditions, the initialisation and the batches", said="experiment.seed of the training config")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_overwrite(d)

    t = sub.add_parser("train", help="LoRA fine-tuning of a GET checkpoint on a CSV/Excel table")
    t.add_argument("--config", type=opt.input_file("--config", "training config (yeast_training.yaml)"),
                   help="yeast_training.yaml (default: the packaged one)")
    t.add_argument("--model-config", help="yeast_model.yaml, or 'released' / 'tiny' for the packaged sizes (default: the "
                   "training config's model_config; tiny when --data is not given)")
    t.add_argument("--data", type=opt.input_file("--data", "data table (.csv/.tsv/.xlsx)"), help="CSV/TSV/Excel table, one row per (sample, region); "
                   "without it: the embedded synthetic yeast data set and a tiny GET checkpoint")
    t.add_argument("--output", default=f"{DEFAULT_OUTPUT}/yeast_lora_finetune", type=opt.output_dir("--output"),
                   help="run folder (re-run to resume)")
    add_device(t, default=None, said="training.device of the config")
    t.add_argument("--checkpoint", type=_expanded, help="GET checkpoint to start from (overrides pretrained.checkpoint)")
    add_trust_checkpoint(t)
    t.add_argument("--from-scratch", action="store_true",
                   help="no checkpoint on purpose: start every weight at its random initialisation (pretrained.from_scratch); "
                   "without a checkpoint, LoRA training is refused unless this is given")
    add_allow_unloaded_frozen(t)
    t.add_argument("--epochs", type=opt.nonnegative_int("--epochs"), help="override training.epochs (0: only with --max-steps)")
    t.add_argument("--max-steps", type=opt.positive_int("--max-steps"), help="override training.max_steps")
    t.add_argument("--batch-size", type=opt.positive_int("--batch-size"),
                   help="override training.batch_size (per process under torchrun)")
    add_seed(t, "the split of the conditions, the initialisation and the batches", said="experiment.seed of the config")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. training.lr=5e-4 or model.fusion.hidden_dim=128 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compile(t, default="graphs")
    _add_overwrite(t)

    e = sub.add_parser("evaluate", help="metrics, predictions, plots and condition importance of a trained model")
    e.add_argument("--model", required=True, type=opt.input_file("--model", "trained model (best_model.pth)"),
                   help="best_model.pth (or merged_model.safetensors) from get-yeast train")
    e.add_argument("--config", type=opt.input_file("--config", "training config (yeast_training.yaml)"),
                   help="yeast_training.yaml (data columns, task options; default: the packaged one)")
    e.add_argument("--data", type=opt.input_file("--data", "data table (.csv/.tsv/.xlsx)"), help="CSV/Excel table (default: the data the model was trained on, from run_config.json)")
    e.add_argument("--output", default=f"{DEFAULT_OUTPUT}/yeast_lora_eval", type=opt.output_dir("--output"),
                   help="output folder")
    add_device(e)
    e.add_argument("--split", default="auto", choices=("auto", "test", "val", "train", "all"),
                   help="samples to evaluate: auto = the model's held-out test samples if the file has them, else all")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training-config key (e.g. task.interpret=false)")

    add_copy_config(sub, _templates(), "edit them, then `get-yeast train --config DIR/yeast_training.yaml` (its "
                    "model_config: yeast_model.yaml is read from DIR too)")

    m = sub.add_parser("make-data", help="write the embedded synthetic yeast table (CSV or .xlsx)")
    m.add_argument("--output", required=True, type=opt.output_file("--output", (".csv", ".xlsx")),
                   help="file to write (.csv or .xlsx)")
    add_seed(m, "the generated table", default=0)
    return p


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="--output holds a run of other settings: delete that run's files and start fresh there (without "
                        "it such a run is refused, naming the changed keys; the same settings resume)")


def _train(args) -> None:
    from ftcore.io import claim_outputs
    from get_yeast.config import (load_model_config, load_training_config, packaged_config, split_overrides,
                                  user_path)
    from get_yeast.train import train, train_settings

    train_over, model_over = split_overrides(args.overrides)
    flags = {"training.epochs": args.epochs, "training.max_steps": args.max_steps, "training.batch_size": args.batch_size,
             "experiment.seed": args.seed, "training.device": args.device, "training.compile": args.compile,
             "pretrained.from_scratch": True if args.from_scratch else None}
    embedded = args.data is None
    cfg, cfg_dir = load_training_config(args.config, train_over, flags)
    if args.checkpoint is not None:
        cfg.pretrained.checkpoint = str(args.checkpoint)
    if embedded and args.model_config is None:
        args.model_config = "tiny"
    packaged = {"released": "yeast_model.yaml", "tiny": "yeast_model_tiny.yaml"}
    if args.model_config in packaged:
        model_path = packaged_config(packaged[args.model_config])
    elif args.model_config:
        model_path = user_path(args.model_config)
    else:
        model_path = user_path(cfg.model_config, cfg_dir)
    if not model_path.exists() or model_path.is_dir():
        named_by = "--model-config" if args.model_config else f"model_config: {cfg.model_config} in {args.config}, relative to its folder"
        what = "is a directory" if model_path.is_dir() else "does not exist"
        raise UserError(f"model config {model_path} {what} ({named_by}); copy the packaged yeast_model.yaml "
                        "there or pass --model-config released|tiny|FILE")
    model_cfg = load_model_config(model_path, model_over)
    demo_checkpoint = embedded and args.checkpoint is None and cfg.pretrained.checkpoint is None \
        and not cfg.pretrained.from_scratch
    if demo_checkpoint:
        cfg.pretrained.checkpoint = "<the embedded tiny GET checkpoint>"  # stands in while the settings are checked
    train_settings(cfg, args.output)  # every setting that needs no data, before the embedded assets are written
    if embedded:
        from get_yeast.demo import ensure_demo_assets

        claim_outputs(args.output)
        data, demo_ckpt = ensure_demo_assets(Path(args.output) / "embedded", progress=not args.no_progress)
        if demo_checkpoint:
            cfg.pretrained.checkpoint = str(demo_ckpt)  # generated by this package just now, in checkpoint-799's layout
            print(f"no --data: embedded synthetic yeast data {data} and tiny GET checkpoint {demo_ckpt}")
    else:
        data = Path(args.data)
    train(cfg, model_cfg, data, args.output, trust_checkpoint=args.trust_checkpoint, allow_unloaded_frozen=args.allow_unloaded_frozen,
          progress=not args.no_progress, overwrite=args.overwrite)


def _evaluate(args) -> None:
    from ftcore.options import check_input_file
    from get_yeast.config import load_training_config
    from get_yeast.predict import evaluate

    cfg, _ = load_training_config(args.config, args.overrides)
    data = args.data
    if data is None:
        run_config = Path(args.model).parent / "run_config.json"
        if not run_config.exists():
            raise UserError(f"no --data given and no {run_config} beside the model; pass --data")
        try:
            data = json.loads(run_config.read_text())["data"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{run_config} is not a get-yeast run_config.json (no 'data' entry); pass --data") from None
        data = check_input_file(f"--data (from {run_config})", data, "data table")
    evaluate(cfg, data, args.model, args.output, device=args.device, split=args.split)


def _make_data(args) -> None:
    from ftcore.io import atomic_path, claim_outputs
    from get_yeast.synthetic import make_yeast_table

    out = Path(args.output)
    df = make_yeast_table(seed=args.seed)
    claim_outputs(out)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_excel(tmp, index=False, engine="openpyxl")
    print(f"wrote {out}: {df['sample'].nunique()} samples, {len(df)} rows")


@cli_main
def main(argv: list[str] | None = None) -> int | None:
    args = build_parser().parse_args(argv)
    size = getattr(args, "batch_size", None)  # train's flag, when given; else the config's key
    with oom_advice("--batch-size" if size else "--batch-size (training.batch_size in the config)", size):
        _run(args)
    return 0


def _run(args) -> None:
    if args.command in (None, "demo"):
        from get_yeast.demo import run_demo

        run_demo(getattr(args, "output", None) or opt.check_output_dir("--output", DEFAULT_OUTPUT), device=getattr(args, "device", "auto"),
                 epochs=getattr(args, "epochs", None), progress=not getattr(args, "no_progress", False),
                 seed=getattr(args, "seed", None), overwrite=getattr(args, "overwrite", False))
    elif args.command == "train":
        _train(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "make-data":
        _make_data(args)
    elif args.command == "copy-config":
        copy_config(args)
        print(f"next: edit {Path(args.dir) / 'yeast_training.yaml'} (and yeast_model.yaml beside it), then "
              f"get-yeast train --config {Path(args.dir) / 'yeast_training.yaml'} --data my.csv --output out/yeast_run")


if __name__ == "__main__":
    raise SystemExit(main())
