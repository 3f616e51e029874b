"""cellfm-ft: fine-tune CellFM on your cells.

    cellfm-ft                                   # demo: convert -> fine-tune -> predict, embedded data
    cellfm-ft convert CellFM_80M_weight.ckpt --output cellfm_80m.safetensors
    cellfm-ft train --data adnc.h5ad --label-key ADNC --donor-key "Donor ID" --checkpoint CellFM_80M_weight.ckpt
    cellfm-ft train --testcase                  # the seed's presets (data/testcase.h5ad, outputs/cellfm_testcase)
    cellfm-ft predict --model outputs/cellfm_testcase/best_model.pth --data new.h5ad --output new_pred.h5ad
    cellfm-ft evaluate --model outputs/cellfm_testcase/best_model.pth --data test.h5ad --label-key ADNC
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from ftcore import options as opt
from ftcore.cli import (
    ArgumentParser,
    add_allow_unloaded_frozen,
    add_compile,
    add_device,
    add_seed,
    add_trust_checkpoint,
    add_version,
)
from ftcore.distributed import is_main_process
from ftcore.errors import UserError, cli_main, oom_advice

# The seed's two scenarios as named presets pointing at the user's files (relative to the
# working directory; every value can be overridden by a flag or a --config-file).
PRESETS: dict[str, dict] = {
    "testcase": dict(data="data/testcase.h5ad", label_key="ADNC", donor_key="Donor ID",
                     checkpoint="cellfm/CellFM_80M_weight.ckpt", config="80m", output="outputs/cellfm_testcase"),
    "mtg": dict(data="data/mtg.h5ad", label_key="ADNC", donor_key="Donor ID",
                checkpoint="cellfm/CellFM_80M_weight.ckpt", config="80m", output="outputs/cellfm_mtg"),
}
DEMO_OUTPUT = "runs/cellfm-ft/demo"


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gene-key", help="var column holding gene symbols (default: var_names)")
    p.add_argument("--layer", help="use this .layers entry (or 'raw' for .raw) instead of X")
    p.add_argument("--input-kind", choices=("auto", "counts", "log"),
                   help="what X holds: raw counts (normalised here) or log-normalised values; auto detects")


# The demo's own training settings (a tiny model from random weights learns at a higher rate).
DEMO_TRAIN = dict(epochs=8, batch_size=16, lr=3e-3)


def _add_train_args(p: argparse.ArgumentParser, defaults: dict | None = None) -> None:
    """defaults: what this subcommand uses when a flag is not given (RunConfig's, unless stated)."""
    from cellfm_ft.config import RunConfig

    d = {**{k: getattr(RunConfig, k) for k in ("epochs", "batch_size", "lr")}, **(defaults or {})}
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=opt.positive_int("--batch-size"),
                   help=f"cells per step and process (default {d['batch_size']}; lower it on CUDA OOM)")
    g.add_argument("--epochs", type=opt.nonnegative_int("--epochs"),
                   help=f"epochs (default {d['epochs']}); 0: as many as --max-steps needs")
    g.add_argument("--max-steps", type=opt.positive_int("--max-steps"), help="stop after this many optimizer steps")
    g.add_argument("--lr", type=opt.number("--lr", float, gt=0, le=1), help=f"learning rate (default {d['lr']:g})")
    add_seed(g, "the split, the initialisation and the batches", said="0")
    add_device(g, default=None, said="auto")
    g.add_argument("--ckpt-every-steps", type=opt.positive_int("--ckpt-every-steps"),
                   help="also checkpoint (last.pt) every N steps")
    g.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="no progress bar")
    g.add_argument("--overwrite", action="store_const", const=True,
                   help="--output holds a run of other settings: delete that run's files and start fresh there "
                        "(without it such a run is refused, naming the changed keys; the same settings resume)")
    add_compile(g)  # auto: the 80M step ran 1.99x faster compiled on an H200 (benchmarks/results/README.md)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="cellfm-ft", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    add_version(parser, "cellfm-ft")
    sub = parser.add_subparsers(dest="command")

    d = sub.add_parser("demo", help="run convert -> fine-tune -> predict on the embedded data, beside the same network "
                                    "from scratch and a logistic regression (the default)")
    d.add_argument("--dataset", choices=("pbmc68k", "wu2020", "synthetic"), default="pbmc68k",
                   help="pbmc68k: scanpy's bundled 700 PBMCs (default; needs the [demo] extra, i.e. scanpy); "
                        "wu2020: 200 real T cells of Wu et al. 2020, 16 subtypes (packaged); "
                        "synthetic: generated cells with donors (donor split)")
    d.add_argument("--config", choices=("tiny", "80m"), default="tiny", help="size of the demo checkpoint")
    d.add_argument("--output", type=opt.output_dir("--output"), default=DEMO_OUTPUT,
                   help=f"output directory (default {DEMO_OUTPUT})")
    add_allow_unloaded_frozen(d)
    _add_train_args(d, DEMO_TRAIN)

    c = sub.add_parser("convert", help="MindSpore .ckpt -> safetensors with PyTorch names + a JSON report")
    c.add_argument("checkpoint", type=opt.input_file("checkpoint", "CellFM checkpoint"),
                   help="CellFM checkpoint (MindSpore .ckpt; safetensors/.pth are re-mapped too)")
    c.add_argument("--output", required=True, type=opt.output_file("--output", (".safetensors",)),
                   help="the .safetensors file to write")
    c.add_argument("--report", type=opt.output_file("--report", (".json",)),
                   help="JSON report path (default: next to --output)")
    c.add_argument("--config", default="80m", help="architecture the checkpoint must match: 80m (default) or tiny")
    add_trust_checkpoint(c)

    t = sub.add_parser("train", help="fine-tune on an .h5ad (the teacher's rule: new gene_emb, train cls. + encoder)")
    pre = t.add_mutually_exclusive_group()
    for name, values in PRESETS.items():
        pre.add_argument(f"--{name}", dest="preset", action="store_const", const=name,
                         help=f"preset: {values['data']} -> {values['output']}")
    t.add_argument("--config-file", help="YAML/TOML with any of the train options (flags win)")
    t.add_argument("--data", help=".h5ad with raw counts or log-normalised X")
    t.add_argument("--label-key", help="obs column with the cell labels (default cell_type)")
    t.add_argument("--donor-key", help="obs column with donors: hold out whole donors for the test set")
    t.add_argument("--test-donors", help="comma-separated donors to hold out (default: a seeded choice)")
    t.add_argument("--test-size", type=opt.fraction("--test-size"),
                   help="fraction of donors (or cells) for the test set (default 0.2)")
    t.add_argument("--val-fraction", type=opt.fraction("--val-fraction"),
                   help="fraction of the training donors (or cells) for the validation split that picks the best "
                        "epoch (default 0.1; at least one donor); the test split is scored once, at the end")
    t.add_argument("--val-donors", help="comma-separated training donors for the validation split (default: a seeded choice)")
    _add_data_args(t)
    t.add_argument("--vocab", help="restrict the genes to this list, one per line (default: every data gene, "
                                   "each with a fresh gene_emb row)")
    t.add_argument("--checkpoint-vocab", action="store_const", const=True,
                   help="restrict the genes to the checkpoint's vocabulary, <checkpoint>.genes.txt "
                        "(default: every data gene)")
    t.add_argument("--checkpoint", help="CellFM weights: MindSpore .ckpt, converted .safetensors, or .pth")
    t.add_argument("--config", help="architecture the checkpoint must match: 80m (default) or tiny")
    add_trust_checkpoint(t, default=None)  # None = not given (a --config-file may set it)
    t.add_argument("--strategy", help="trainable set: cls_encoder (default, the seed's), cls_only, full")
    t.add_argument("--from-scratch", action="store_const", const=True,
                   help="the same network (the checkpoint's architecture, --strategy and --head) with random weights: "
                        "nothing is loaded from --checkpoint; the yardstick for what its weights add")
    t.add_argument("--head", choices=("tutorial", "mlp"),
                   help="tutorial (default): the annotation tutorial's head (cluster tokens, two read-outs); "
                        "mlp: CellFM-torch's cls (Linear(D,128)-BatchNorm-LeakyReLU-Linear on the cell token) "
                        "trained with CellFM's masked-reconstruction term (needs a checkpoint with the decoders)")
    t.add_argument("--recon-weight", type=opt.number("--recon-weight", float, ge=0),
                   help="--head mlp: weight of the reconstruction term (default 1; 0 = off)")
    t.add_argument("--mask-ratio", type=opt.fraction("--mask-ratio"),
                   help="--head mlp: share of a cell's genes hidden for it (default 0.5)")
    t.add_argument("--mask-layers", choices=("auto", "upper", "all"),
                   help="layers that mask padded genes: auto (default; upper for a pretraining checkpoint, which "
                        "has the decoders, all for the annotation tutorial's), upper (layers depth//2..), all")
    add_allow_unloaded_frozen(t)
    t.set_defaults(allow_unloaded_frozen=None)  # None = not given (a --config-file may set it)
    t.add_argument("--include", action="append", help="extra trainable parameter-name regex (repeatable)")
    t.add_argument("--exclude", action="append", help="extra frozen parameter-name regex (repeatable)")
    t.add_argument("--baseline", action="store_const", const=True, help="also report a logistic-regression baseline")
    t.add_argument("--output", type=opt.output_dir("--output"),
                   help="output directory (re-running the same command resumes from last.pt)")
    _add_train_args(t)

    for name, helptext in (("predict", "write predictions into a copy of an .h5ad (obs/obsm)"),
                           ("evaluate", "accuracy, per-label recall and a confusion matrix on labelled cells")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--model", required=True, help="best_model.pth written by `cellfm-ft train`")
        s.add_argument("--data", required=True, help=".h5ad to annotate")
        s.add_argument("--output", required=True,
                       type=opt.output_file("--output", (".h5ad",)) if name == "predict" else opt.output_dir("--output"),
                       help="the .h5ad to write" if name == "predict" else "directory for metrics.json and the PNG")
        s.add_argument("--label-key", required=name == "evaluate", help="obs column with true labels")
        _add_data_args(s)
        s.add_argument("--batch-size", type=opt.positive_int("--batch-size"), default=64,
                       help="cells per forward pass (default 64; lower it on CUDA OOM)")
        add_device(s)
        add_trust_checkpoint(s)
    return parser


def run_config(args: argparse.Namespace):
    """Preset < config file < flags (ftcore.config: every RunConfig field given as a flag wins)."""
    from ftcore.config import layered_config

    from cellfm_ft.config import RunConfig

    flags = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(RunConfig)}
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()}
    for key in ("test_donors", "val_donors"):
        if flags[key] is not None:
            named = list(dict.fromkeys(d.strip() for d in flags[key].split(",") if d.strip()))
            if not named:  # an empty shell variable: never a silent seeded choice instead
                raise UserError(f"--{key.replace('_', '-')} is {flags[key]!r}: no donor named; give comma-separated "
                                "donors (e.g. D1,D2) or leave the flag out for a seeded choice")
            flags[key] = named
    preset = PRESETS[args.preset] if getattr(args, "preset", None) else None
    cfg = layered_config(RunConfig, preset=preset, file=args.config_file, flags=flags)
    if args.preset and not Path(cfg.data).exists():
        raise UserError(f"preset --{args.preset} expects the data at {cfg.data} (missing); put the file there or pass --data")
    return cfg


# The demo checkpoint's random weights are drawn from their own seed, never a training --seed: "from
# scratch" must not start from the checkpoint's very numbers.
DEMO_CHECKPOINT_SEED = 1_000_003


def run_demo(args: argparse.Namespace) -> dict:
    """Embedded data + a tiny CellFM checkpoint in MindSpore format -> convert -> fine-tune -> predict, and on
    the same held-out cells the same network trained from scratch and a logistic regression."""
    from ftcore.config import apply_flags
    from ftcore.distributed import wait_for_main
    from ftcore.io import atomic_write_h5ad, atomic_write_json, check_output_dir, claim_outputs
    from ftcore.training import resolve_device

    from cellfm_ft import demo
    from cellfm_ft.config import RunConfig
    from cellfm_ft.predict import predict
    from cellfm_ft.train import convert, finetune

    spec = demo.DATASETS[args.dataset]
    adata = demo.load_dataset(args.dataset)  # a missing optional data set stops here, before anything is written
    claim_outputs(args.output)  # a failed demo takes back what it wrote
    out = check_output_dir(args.output, flag="--output")
    inputs = out / "inputs"
    run = {k: spec[k] for k in ("label_key", "donor_key", "layer")}
    data_path, ckpt_path = inputs / spec["file"], inputs / f"cellfm_{args.config}_demo.ckpt"
    if is_main_process() and not (data_path.exists() and ckpt_path.exists()):
        atomic_write_h5ad(adata, data_path)
        genes = (adata.raw.var_names if run["layer"] == "raw" else adata.var_names).astype(str).tolist()
        demo.write_demo_checkpoint(ckpt_path, demo.demo_vocabulary(genes), config=args.config, seed=DEMO_CHECKPOINT_SEED)
        print(f"wrote the demo data {data_path} ({spec['about']}) and a {args.config} CellFM checkpoint in MindSpore "
              f"format with random weights {ckpt_path}")
    wait_for_main(resolve_device(args.device or RunConfig.device).type)  # the other ranks read rank 0's inputs
    if is_main_process():
        convert(str(ckpt_path), str(inputs / f"cellfm_{args.config}_demo.safetensors"), config=args.config)
    cfg = RunConfig(data=str(data_path), checkpoint=str(ckpt_path), vocab=str(ckpt_path) + ".genes.txt",
                    config=args.config, output=str(out / "finetune"), baseline=True,
                    allow_unloaded_frozen=args.allow_unloaded_frozen, **DEMO_TRAIN, **run)
    cfg = apply_flags(cfg, {k: getattr(args, k, None) for k in ("batch_size", "epochs", "max_steps", "lr", "seed", "device",
                                                                "ckpt_every_steps", "progress", "overwrite")})
    print("== 1/2 fine-tuning from the demo checkpoint")
    results = finetune(cfg)
    # The yardstick: the same network, trainable set, split, seed, steps and learning rate; no weights loaded.
    print("== 2/2 the same network from scratch (same split, seed and steps; no checkpoint weights)")
    scratch = finetune(dataclasses.replace(cfg, output=str(out / "scratch"), from_scratch=True, baseline=False))
    if not is_main_process():
        return results
    predict(str(out / "finetune" / "best_model.pth"), str(data_path), str(out / "predictions.h5ad"), layer=run["layer"])
    tuned, fresh, logreg = results["best_test_acc"], scratch["best_test_acc"], results["baseline_logreg_test_acc"]
    comparison = {"dataset": args.dataset, "seed": cfg.seed, "split": results["split"],
                  "n_test_cells": results["n_test_cells"], "steps": {"fine_tuned": results["steps"], "scratch": scratch["steps"]},
                  "test_accuracy": {"fine_tuned": tuned, "scratch": fresh, "logistic_regression": logreg},
                  "checkpoint": "random weights in CellFM's MindSpore layout (no pretrained CellFM weights at run time)"}
    atomic_write_json(out / "comparison.json", comparison)
    print(f"\ntest accuracy on the same {results['n_test_cells']} held-out cells ({results['split']}; seed {cfg.seed}; "
          f"{results['steps']} steps each, epoch chosen on validation):")
    print(f"  CellFM fine-tuned from the demo checkpoint   {tuned:.3f}")
    print(f"  the same network from scratch                {fresh:.3f}")
    print(f"  logistic regression (same split and genes)   {logreg:.3f}")
    print(f"pretraining adds nothing here: the demo checkpoint is a randomly initialised CellFM in its real MindSpore "
          f"layout, so fine-tuning it is training from a second random start (difference {tuned - fresh:+.3f}); real "
          f"pretrained CellFM-80M weights (--checkpoint CellFM_80M_weight.ckpt --config 80m) are what would add value")
    return results


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv or ["demo"])
    if not is_main_process():  # under torchrun only rank 0 reports (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")
    with oom_advice("--batch-size", getattr(args, "batch_size", None)):
        _run(args)
    return 0


def _run(args: argparse.Namespace) -> None:
    from cellfm_ft import predict, train

    if args.command == "demo":
        run_demo(args)
    elif args.command == "convert":
        train.convert(str(args.checkpoint), str(args.output), config=args.config, report_path=args.report,
                      trust_checkpoint=args.trust_checkpoint)
    elif args.command == "train":
        train.finetune(run_config(args))
    elif args.command == "predict":
        predict.predict(args.model, args.data, args.output, label_key=args.label_key, gene_key=args.gene_key,
                        layer=args.layer, input_kind=args.input_kind, batch_size=args.batch_size,
                        trust_checkpoint=args.trust_checkpoint, device=args.device)
    elif args.command == "evaluate":
        predict.evaluate(args.model, args.data, args.output, label_key=args.label_key, gene_key=args.gene_key,
                         layer=args.layer, input_kind=args.input_kind, batch_size=args.batch_size,
                         trust_checkpoint=args.trust_checkpoint, device=args.device)


if __name__ == "__main__":
    sys.exit(main())
