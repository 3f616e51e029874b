"""state-tx: train / infer / predict / evaluate a State Transition perturbation model.

    state-tx                       # the embedded demo: generate data, train, predict, evaluate
    state-tx train data.kwargs.toml_config_path=/abs/train.toml model=state_sm training.max_steps=40000 \\
                   output_dir=results name=exp1
    state-tx infer --adata test.h5ad --output pred.h5ad --model-dir results/exp1 --pert-col gene
    state-tx predict --output-dir results/exp1 --checkpoint last.ckpt
    state-tx evaluate -ap pred.h5ad -ar real.h5ad --pert-col gene --control-pert non-targeting --celltype-col cell_type -o eval/
    state-tx copy-config configs/   # example_training_config.toml + train_config.yaml to edit
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path

from ftcore import options as opt
from ftcore.cli import ArgumentParser, add_copy_config, add_device, add_seed, add_trust_checkpoint, add_version
from ftcore.errors import UserError, cli_main, oom_advice

from state_tx.synthetic import DESIGNS

DEMO_DIR = "runs/state-tx"
# the files a user's workflow edits (`state-tx copy-config DIR`)
TEMPLATES = {name: Path(__file__).parent / "templates" / name
             for name in ("example_training_config.toml", "train_config.yaml")}
# A CPU-sized state_sm for the demo (same architecture, smaller widths); see README.
DEMO_OVERRIDES = (
    "model=state_sm", "model.kwargs.hidden_dim=128", "model.kwargs.n_layers=2", "model.kwargs.n_heads=4",
    "model.kwargs.head_dim=32", "model.kwargs.intermediate_size=256", "model.kwargs.n_encoder_layers=2",
    "model.kwargs.n_decoder_layers=2", "model.kwargs.cell_set_len=32", "model.kwargs.dropout=0.0",
    "training.batch_size=16", "training.lr=2e-3", "training.warmup_steps=20",
    "data.kwargs.pert_col=gene", "data.kwargs.cell_type_key=cell_type", "data.kwargs.batch_col=gem_group",
    "data.kwargs.control_pert=non-targeting", "data.kwargs.output_space=gene",
)
# per generated design (state_tx.synthetic.DESIGNS): training steps and settings on top of DEMO_OVERRIDES
# (heterogeneous, the default: the settings at which state-tx beat both baselines on 3 seeds, README "The demo";
# demo: the shared-effect screen of earlier versions, where the mean shift is close to the best possible predictor)
DEMO_DESIGN = "heterogeneous"
DESIGN_STEPS = {"demo": 400, "heterogeneous": 2000}
DESIGN_OVERRIDES: dict[str, tuple[str, ...]] = {
    "demo": (), "heterogeneous": ("model.kwargs.batch_encoder=True", "data.kwargs.basal_mapping_strategy=batch")}


def _keys_help() -> str:
    """Every dotted key `train` accepts, with its default (generated, so it cannot go stale)."""
    from state_tx.model import PRESETS, TUNABLE, StateTxConfig
    from state_tx.config import RunConfig

    lines = ["overrides (key=value, as in `state tx train`):"]

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            elif f.name != "kwargs" or prefix != "model.":
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                lines.append(f"  {prefix}{f.name}={default}")

    walk(RunConfig, "")
    lines.append(f"  model=<preset>               one of {', '.join(PRESETS)} (default state)")
    defaults = {f.name: f.default for f in dataclasses.fields(StateTxConfig)} | PRESETS["state"]
    lines.append("  model.kwargs.* (override the preset; values shown for model=state):")
    lines += [f"  model.kwargs.{k}={defaults[k]}" for k in TUNABLE]
    lines.append("  model.kwargs.init_from=None         warm start from a state-tx or arc-state checkpoint")
    lines.append("  model.kwargs.init_from_columns=name one-hot columns (perturbation, batch) matched by name through the")
    lines.append("                                      source run's maps; position = the checkpoint's order (no maps)")
    for name, sizes in PRESETS.items():
        lines.append(f"    preset {name}: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="state-tx", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser, "state-tx")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train from a cell-load TOML (dotted overrides)", epilog=_keys_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="key=value, e.g. training.max_steps=1000 model=state_sm")
    p.add_argument("--config", type=opt.input_file("--config", "YAML/TOML run config"),
                   help="a YAML/TOML of the same keys (e.g. a run's config.yaml); overrides win")
    add_trust_checkpoint(p)  # model.kwargs.init_from, data.kwargs.perturbation_features_file
    _add_overwrite(p)

    p = sub.add_parser("infer", help="predict perturbed cells for an .h5ad (X of the output holds predictions)")
    p.add_argument("--adata", required=True, type=opt.input_file("--adata", ".h5ad file"),
                   help="input .h5ad (log-normalised; obsm['X_hvg'] for output_space gene)")
    p.add_argument("--output", required=True, type=opt.output_file("--output", (".h5ad",)), help="output .h5ad")
    p.add_argument("--model-dir", type=_run_dir("--model-dir"), help="output_dir/name of a training run: state-tx's, or arc-state's `state tx "
                   "train` run (config.yaml, var_dims.pkl, pert_onehot_map.pt, ...); default: the run directory "
                   "of --checkpoint")
    p.add_argument("--checkpoint", help="checkpoint file or name in model-dir/checkpoints (default final.ckpt); "
                   "an arc-state Lightning .ckpt loads with its run's one-hot maps")
    p.add_argument("--pert-col", help="obs column of perturbation labels (default: the training pert_col)")
    p.add_argument("--batch-col", help="obs column of batches (used by a batch encoder / batch mapping)")
    p.add_argument("--control-pert", help="this file's control label (default: the training control_pert); "
                   "its cells are encoded as the trained control")
    p.add_argument("--celltype-col", help="obs column of cell types (default: the training cell_type_key)")
    _common_predict_args(p)

    p = sub.add_parser("predict", help="predict + evaluate the training TOML's test split")
    p.add_argument("--output-dir", "--output_dir", "--model-dir", dest="model_dir", required=True,
                   type=_run_dir("--output-dir"), help="output_dir/name of a training run")
    p.add_argument("--checkpoint", default="final.ckpt", help="file or name in checkpoints/ (default final.ckpt)")
    p.add_argument("--split", choices=("test", "val"), default="test")
    _common_predict_args(p)

    p = sub.add_parser("evaluate", help="metrics of predictions vs ground truth, with the control-mean (and mean-shift) baselines")
    p.add_argument("-ap", "--adata-pred", required=True, type=opt.input_file("-ap/--adata-pred", "predictions .h5ad"))
    p.add_argument("-ar", "--adata-real", required=True, type=opt.input_file("-ar/--adata-real", "ground-truth .h5ad"))
    p.add_argument("-o", "--outdir", required=True, type=opt.output_dir("-o/--outdir"))
    p.add_argument("--pert-col", default="gene")
    p.add_argument("--control-pert", default="non-targeting")
    p.add_argument("--celltype-col", default="cell_type")
    p.add_argument("--adata-train", type=opt.input_file("--adata-train", "training-cells .h5ad"),
                   help="the training cells (same obs columns; the predictions' genes in X or obsm['X_hvg']): "
                   "adds the mean-shift baseline (each perturbation's shift carried over from the other cell types)")

    add_copy_config(sub, TEMPLATES, "the split TOML and the run config that `state-tx train --config` reads; "
                    "edit, then train")

    p = sub.add_parser("demo", help="generate the embedded data set, train, predict, evaluate (the default)")
    p.add_argument("--output-dir", default=DEMO_DIR, type=opt.output_dir("--output-dir"))
    p.add_argument("--max-steps", type=opt.positive_int("--max-steps"),
                   help="training steps (default: 2000; --design demo: 400)")
    add_seed(p, "the data generator and of training", default=0)
    p.add_argument("--design", choices=DESIGNS, default=DEMO_DESIGN,
                   help="the generated screen: heterogeneous (default: counts, perturbations without effect, "
                   "cell-type-specific effects, gem-group shifts) or demo (the earlier shared-effect screen, where "
                   "the mean-shift baseline is close to the best possible predictor); see the README")
    p.add_argument("overrides", nargs="*", help="extra train overrides, e.g. training.device=cpu")
    _add_overwrite(p)
    return parser


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="output_dir/name holds a run of other settings: delete it and start fresh there (without it "
                        "such a run is refused, naming the changed keys; the same settings resume)")


def _run_dir(flag: str):
    """An argparse `type=` for an existing training-run directory (`~` and $VARS expanded)."""

    def parse(text: str) -> str:
        import os

        path = Path(os.path.expandvars(text.strip())).expanduser() if text.strip() else None
        if path is None:
            raise UserError(f"{flag} is empty; give the output_dir/name directory of a training run")
        if not path.exists():
            raise UserError(f"{flag} {path} does not exist; give the output_dir/name directory of a training run")
        if not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a training-run directory; give output_dir/name "
                            "(a checkpoint file goes to --checkpoint)")
        return str(path)

    return parse


def _common_predict_args(p: argparse.ArgumentParser) -> None:
    add_seed(p, "the control (basal) sampling", default=42)
    p.add_argument("--batch-size", type=opt.positive_int("--batch-size"), default=16, help="cell sets per forward pass")
    add_device(p)
    add_trust_checkpoint(p)


def run_demo(output_dir: str, max_steps: int | None, seed: int, extra: list[str], design: str = DEMO_DESIGN,
             overwrite: bool = False) -> dict:
    from ftcore.distributed import is_main_process
    from state_tx.evaluate import format_summary
    from state_tx.predict import predict
    from state_tx.synthetic import write_demo
    from state_tx.train import open_run, train
    from state_tx.config import load_run_config

    from ftcore.io import claim_outputs

    name = "demo" if design == "demo" else design
    data_dir = (Path(output_dir) / name / "data").resolve()
    steps = max(max_steps or DESIGN_STEPS[design], 1)
    every = max(steps // 4, 1)
    # the run settings are checked before the demo data is written (the TOML's path is known in advance)
    cfg = load_run_config(list(DEMO_OVERRIDES) + list(DESIGN_OVERRIDES[design]) + [
        f"data.kwargs.toml_config_path={data_dir / f'{design}.toml'}", f"training.max_steps={steps}",
        f"training.val_freq={every}", f"training.ckpt_every_n_steps={every}", f"training.train_seed={seed}",
        f"output_dir={output_dir}", f"name={name}"] + list(extra))
    open_run(cfg, overwrite)  # a demo run of other settings there: refused before the data is written again
    claim_outputs(output_dir)
    write_demo(data_dir, seed=seed, design=design)
    result = train(cfg, overwrite=overwrite)
    if not is_main_process():
        return result
    out_dir, summary = predict(str(cfg.run_dir), "final.ckpt", seed=seed, device=cfg.training.device)
    print(f"\ntest split ({summary['n_perturbations']} held-out perturbation x cell type pairs), {out_dir}:")
    print(format_summary(summary))
    return {**result, "summary": summary, "eval_dir": str(out_dir)}


@cli_main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv or ["demo"])
    # infer / predict set it with --batch-size; train and the demo with the override training.batch_size=N
    with oom_advice(*(("--batch-size", args.batch_size) if "batch_size" in args else ("training.batch_size=N",))):
        _run(args)
    return 0


def _run(args) -> None:
    if args.command == "train":
        from state_tx.train import train
        from state_tx.config import load_run_config

        train(load_run_config(args.overrides, args.config), trust_checkpoint=args.trust_checkpoint,
              overwrite=args.overwrite)
    elif args.command == "infer":
        from state_tx.predict import infer

        infer(args.adata, args.output, args.model_dir, args.checkpoint, args.pert_col, args.batch_col,
              args.control_pert, args.celltype_col, args.seed, args.batch_size, args.trust_checkpoint, args.device)
    elif args.command == "predict":
        from state_tx.evaluate import format_summary
        from state_tx.predict import predict

        out_dir, summary = predict(args.model_dir, args.checkpoint, args.split, args.seed, args.batch_size,
                                   args.trust_checkpoint, args.device)
        print(f"wrote {out_dir}/adata_pred.h5ad, adata_real.h5ad and metrics\n{format_summary(summary)}")
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "copy-config":
        from ftcore.cli import copy_config

        copy_config(args)
    elif args.command == "demo":
        run_demo(args.output_dir, args.max_steps or DESIGN_STEPS[args.design], args.seed, args.overrides,
                 design=args.design, overwrite=args.overwrite)
    else:
        raise UserError(f"unknown command {args.command!r}")


def _evaluate(args) -> None:
    from state_tx.evaluate import evaluate, format_summary

    from ftcore.data import read_h5ad

    pred = read_h5ad(args.adata_pred, flag="-ap/--adata-pred")
    real = read_h5ad(args.adata_real, flag="-ar/--adata-real")
    shifts = None
    if args.adata_train:
        from state_tx.predict import shifts_from_adata

        shifts = shifts_from_adata(read_h5ad(args.adata_train, flag="--adata-train"), list(map(str, pred.var_names)),
                                   args.pert_col, args.celltype_col, args.control_pert)
    summary = evaluate(pred, real, args.pert_col, args.control_pert, args.celltype_col, args.outdir,
                       train_shifts=shifts)
    print(format_summary(summary))


if __name__ == "__main__":
    sys.exit(main())
