"""var-st: train stage 1 / stage 2, predict and evaluate Two-Stage VAR-ST.

    var-st                                   the embedded demo: stage 1 -> stage 2 -> predict -> evaluate
    var-st train --dataset PRAD --training_stage 1 --epochs 150 --batch_size 256 --lr 1e-4 --gpus 1
    var-st train --dataset PRAD --training_stage 2 \\
        --stage1_ckpt logs/PRAD/TWO_STAGE_VAR_ST/stage1_vqvae/best_vqvae.ckpt --epochs 300 --batch_size 64
    var-st predict  --checkpoint logs/PRAD/TWO_STAGE_VAR_ST/complete_model.ckpt --dataset new.h5ad
    var-st evaluate --checkpoint logs/PRAD/TWO_STAGE_VAR_ST/complete_model.ckpt --dataset PRAD

The user's-guide spelling without a subcommand (`var-st --dataset PRAD --model TWO_STAGE_VAR_ST
--training_stage 1 ...`) means `train`. --dataset is an .h5ad path or a name looked up as
<data_dir>/<name>.h5ad; the name "demo" (the default) is the embedded generated data set.
Under torchrun --batch_size is per process.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

from ftcore.errors import UserError, cli_main
from ftcore.cli import add_version

DEMO = "demo"
# The embedded demo's run (documented in the README): small model, a few epochs, CPU minutes.
DEMO_RUN = {"stage1_epochs": 12, "stage2_epochs": 8, "stage1_batch_size": 64, "stage2_batch_size": 32,
            "stage1_lr": 2e-3, "stage2_lr": 2e-3}
SEED_RUN = {"stage1_epochs": 150, "stage2_epochs": 300, "stage1_batch_size": 256, "stage2_batch_size": 64,
            "stage1_lr": 1e-4, "stage2_lr": 1e-4}


# ----------------------------------------------------------------------------- argument parsing
class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `error:` line (exit 2) like every other input error."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=DEMO, help="an .h5ad path, or a name read as <data_dir>/<name>.h5ad ('demo': embedded data)")
    p.add_argument("--data_dir", default="data", help="where dataset names are looked up")
    p.add_argument("--histology_key", default="histology", help="obsm key of the histology features [N, F]")
    p.add_argument("--spatial_key", default="spatial", help="obsm key of the spot coordinates [N, 2]")
    p.add_argument("--slide_key", default="slide", help="obs column of slide ids (held-out slides form val/test)")
    p.add_argument("--log_dir", default="logs", help="runs go to <log_dir>/<dataset>/TWO_STAGE_VAR_ST/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpus", type=int, default=None, help="0: CPU; 1: one GPU (N > 1: launch with torchrun --nproc_per_node=N); default: GPU if present")
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="allow checkpoints that need full unpickling (can run code; only for files you trust)")
    p.add_argument("--debug", action="store_true", help="verbose logs, full tracebacks, autograd anomaly detection")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoding", choices=["expected", "greedy", "sample"], default="expected",
                   help="expected: probability-weighted codes per scale (best point prediction, default); "
                        "greedy: argmax tokens; sample: temperature / top_k / top_p")
    p.add_argument("--temperature", type=float, default=1.0, help="expected and sample decoding")
    p.add_argument("--top_k", type=int, default=50, help="sample decoding")
    p.add_argument("--top_p", type=float, default=0.9, help="sample decoding")
    p.add_argument("--num_samples", type=int, default=1, help="average this many sampled predictions (sampling only)")
    p.add_argument("--batch_size", type=int, default=256)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="var-st", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser, "var-st")
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train stage 1 (VQ-VAE) or stage 2 (VAR transformer)")
    _data_args(t)
    t.add_argument("--model", default="TWO_STAGE_VAR_ST", choices=["TWO_STAGE_VAR_ST"], help="(as in the user's guide)")
    t.add_argument("--training_stage", type=int, choices=[1, 2], default=1)
    t.add_argument("--stage1_ckpt", default=None, help="stage 2: the stage-1 checkpoint (best_vqvae.ckpt)")
    t.add_argument("--epochs", type=int, default=None, help="default 150 (stage 1) / 300 (stage 2); demo: 12 / 8")
    t.add_argument("--batch_size", type=int, default=None, help="per process; default 256 / 64; demo: 64 / 32")
    t.add_argument("--lr", type=float, default=None, help="default 1e-4; demo: 2e-3")
    t.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps (with --epochs 0: run exactly this many)")
    t.add_argument("--patience", type=int, default=None, help="early stopping after this many epochs without improvement")
    t.add_argument("--num_genes", type=int, default=200, help="stage 1: top highly variable genes modelled")
    t.add_argument("--preset", choices=["full", "demo"], default=None,
                   help="model sizes: full = the user's guide (default), demo = small CPU model (default for --dataset demo)")
    t.add_argument("--config", default=None, help="YAML/TOML with sections vqvae: and var: (keys of the user's guide)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set var.num_layers=6 (repeatable)")

    p = sub.add_parser("predict", help="predict expression from histology + coordinates into an .h5ad (obsm)")
    _data_args(p)
    p.add_argument("--checkpoint", default=None, help="complete_model.ckpt (default: the dataset's run)")
    p.add_argument("--output", default=None, help="output .h5ad (default <run>/predictions.h5ad)")
    _sampling_args(p)

    e = sub.add_parser("evaluate", help="Pearson / MSE / MAE on a split, next to ridge and the stage-1 ceiling")
    _data_args(e)
    e.add_argument("--checkpoint", default=None, help="complete_model.ckpt (default: the dataset's run)")
    e.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    e.add_argument("--predictions", default=None, help="an .h5ad written by `var-st predict` (else predicts now)")
    e.add_argument("--output", default=None, help="metrics JSON (default <run>/metrics.json)")
    _sampling_args(e)

    d = sub.add_parser("demo", help="stage 1 -> stage 2 -> predict -> evaluate on the embedded data (the default command)")
    d.add_argument("--log_dir", default="logs")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gpus", type=int, default=None)
    d.add_argument("--debug", action="store_true")

    m = sub.add_parser("make-demo-data", help="write the embedded demo data set as .h5ad")
    m.add_argument("--output", default="demo.h5ad")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--slides", type=int, default=5)
    m.add_argument("--grid", type=int, default=18, help="spots per slide = grid^2")
    m.add_argument("--genes", type=int, default=300)
    m.add_argument("--histology_dim", type=int, default=1024)

    i = sub.add_parser("info", help="print get_model_info() of a complete model checkpoint")
    i.add_argument("checkpoint")
    i.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true")
    return parser


# ----------------------------------------------------------------------------- helpers
def _device(gpus: int | None) -> str:
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gpus is None:
        return "auto"
    if gpus == 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(f"--gpus {gpus} asked for but CUDA is not available here; pass --gpus 0 to run on the CPU")
    if gpus > 1 and world == 1:
        raise UserError(f"--gpus {gpus}: launch multi-GPU training with torchrun --nproc_per_node={gpus} "
                        "-m var_st.cli train ... (the same flags; --batch_size is per GPU)")
    return "cuda"


def _resolve_dataset(args) -> tuple[str, Path | None]:
    """(dataset name, .h5ad path or None for the embedded demo)."""
    value = str(args.dataset)
    if value.endswith(".h5ad") or os.sep in value:
        return Path(value).stem, Path(value)
    path = Path(args.data_dir) / f"{value}.h5ad"
    if value == DEMO and not path.exists():
        return DEMO, None
    if not path.exists():
        raise UserError(f"dataset {value!r}: {path} does not exist; pass --dataset path/to/file.h5ad or set --data_dir")
    return value, path


def _read_adata(args, name: str, path: Path | None):
    from var_st.data import read_h5ad
    from var_st.synthetic import make_demo_adata

    if path is None:
        return make_demo_adata(seed=0), f"embedded demo data ({DEMO})"
    return read_h5ad(path), str(path)


def _load_model_config(args, preset: str):
    """Preset sizes, then --config file sections, then --set overrides; unknown keys are errors."""
    from ftcore.config import apply_overrides, from_dict, read_config_file
    from var_st.model import PRESETS, VARConfig, VQVAEConfig

    vq, var = PRESETS[preset]
    merged = {"vqvae": asdict(vq), "var": asdict(var)}
    given: dict = {}
    source = "config"
    if args.config:
        given = read_config_file(args.config)
        source = str(args.config)
        for key in given:
            if key not in merged:
                raise UserError(f"{source}: unknown section {key!r}; the sections are vqvae and var")
    given = apply_overrides(given, args.overrides)
    for key in given:
        if key not in merged:
            raise UserError(f"--set/--config: unknown section {key!r}; use vqvae.<key> or var.<key>")
        if not isinstance(given[key], dict):
            raise UserError(f"{source}: section {key!r} must be a mapping of keys")
        merged[key].update(given[key])
    if "vocab_size" in given.get("vqvae", {}) and "vocab_size" not in given.get("var", {}):
        merged["var"]["vocab_size"] = merged["vqvae"]["vocab_size"]
    vq_cfg = from_dict(VQVAEConfig, merged["vqvae"], source, prefix="vqvae.")
    var_cfg = from_dict(VARConfig, merged["var"], source, prefix="var.")
    return vq_cfg, var_cfg, "histology_dim" in given.get("var", {})


def _run_settings(args, stage: int, demo: bool) -> dict:
    defaults = DEMO_RUN if demo else SEED_RUN
    key = f"stage{stage}"
    run = {"epochs": args.epochs if args.epochs is not None else defaults[f"{key}_epochs"],
           "batch_size": args.batch_size if args.batch_size is not None else defaults[f"{key}_batch_size"],
           "lr": args.lr if args.lr is not None else defaults[f"{key}_lr"],
           "max_steps": args.max_steps, "patience": args.patience, "seed": args.seed,
           "device": _device(args.gpus), "progress": not os.environ.get("VAR_ST_NO_PROGRESS")}
    if run["epochs"] < 0 or (run["epochs"] == 0 and not run["max_steps"]) or run["batch_size"] < 1 or run["lr"] <= 0:
        raise UserError("--epochs must be >= 1 (or 0 with --max_steps), --batch_size >= 1 and --lr > 0")
    return run


def _debug(args) -> None:
    if getattr(args, "debug", False):
        import torch

        os.environ["FTCORE_TRACEBACK"] = "1"  # cli_main shows full tracebacks
        torch.autograd.set_detect_anomaly(True)
        print(f"[debug] arguments: {vars(args)}")


def _checkpoint_path(args, name: str) -> Path:
    from var_st.train import RunPaths

    path = Path(args.checkpoint) if args.checkpoint else RunPaths(args.log_dir, name).complete
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; train stage 2 first or pass --checkpoint")
    return path


def _sampling(args) -> dict:
    if args.num_samples < 1:
        raise UserError("--num_samples must be >= 1")
    return {"decoding": args.decoding, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "num_samples": args.num_samples, "seed": args.seed, "batch_size": args.batch_size}


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> None:
    import torch

    from var_st.data import load_spots
    from var_st.model import TwoStageVARST
    from var_st.train import RunPaths, is_main_process, train_stage1, train_stage2, train_settings

    from ftcore.training import seed_everything

    _debug(args)
    seed_everything(args.seed)  # the initial weights too, so a run is reproducible from its command line
    name, path = _resolve_dataset(args)
    demo = path is None
    preset = args.preset or ("demo" if demo else "full")
    stage = args.training_stage
    paths = RunPaths(args.log_dir, name)
    run = _run_settings(args, stage, demo)
    settings = train_settings({"dataset": name, "histology_key": args.histology_key, "spatial_key": args.spatial_key,
                               "slide_key": args.slide_key, "seed": args.seed})
    if stage == 1:
        if args.stage1_ckpt:
            raise UserError("--stage1_ckpt is for --training_stage 2; stage 1 trains the VQ-VAE from scratch")
        vq_cfg, var_cfg, _ = _load_model_config(args, preset)
        adata, source = _read_adata(args, name, path)
        data = load_spots(adata, source=source, histology_key=args.histology_key, spatial_key=args.spatial_key,
                          slide_key=args.slide_key, num_genes=args.num_genes, seed=args.seed)
        model = TwoStageVARST(len(data.gene_names), vq_cfg, var_cfg, current_stage=1)
        _announce(args, model, data, f"stage 1 (VQ-VAE) -> {paths.stage1}")
        if demo and is_main_process():
            from ftcore.io import atomic_write_h5ad

            atomic_write_h5ad(adata, paths.root.parent / "demo.h5ad")  # the data the demo trained on, for inspection
        result = train_stage1(model, data, paths.stage1, run, {"data": settings})
        if is_main_process():
            print(f"stage 1 done: best val_loss {result.best_metric} -> {result.best_path}\n"
                  f"next: var-st train --dataset {args.dataset} --training_stage 2 --stage1_ckpt {result.best_path}")
        return
    if not args.stage1_ckpt:
        hint = f" (found {paths.stage1_ckpt})" if paths.stage1_ckpt.exists() else ""
        raise UserError(f"stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt {paths.stage1_ckpt}{hint}; "
                        "train it first with --training_stage 1")
    from ftcore.checkpoint import read_checkpoint

    ckpt_extra = read_checkpoint(args.stage1_ckpt, trust_pickle=args.trust_checkpoint)
    ckpt_extra = ckpt_extra.get("extra", {}) if isinstance(ckpt_extra, dict) else {}
    if ckpt_extra.get("stage") != 1 or not ckpt_extra.get("gene_names"):
        raise UserError(f"{args.stage1_ckpt} is not a var-st stage-1 checkpoint; pass the best_vqvae.ckpt written by --training_stage 1")
    _, var_cfg, explicit_hist = _load_model_config(args, preset)
    adata, source = _read_adata(args, name, path)
    data = load_spots(adata, source=source, histology_key=args.histology_key, spatial_key=args.spatial_key,
                      slide_key=args.slide_key, genes=ckpt_extra["gene_names"], seed=args.seed,
                      histology_dim=var_cfg.histology_dim if explicit_hist else None)
    if not explicit_hist:
        var_cfg.histology_dim = int(data.histology.shape[1])  # the data decides unless the config says otherwise
    model = TwoStageVARST.from_stage1(args.stage1_ckpt, var_cfg, trust_pickle=args.trust_checkpoint)
    _announce(args, model, data, f"stage 2 (VAR transformer) -> {paths.stage2}")
    result = train_stage2(model, data, paths.stage2, run, {"data": settings})
    if is_main_process():
        model.save_complete_model(paths.complete, data=settings)
        print(f"stage 2 done: best val_pearson {result.best_metric} -> complete model {paths.complete}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _announce(args, model, data, what: str) -> None:
    from var_st.train import is_main_process

    if not is_main_process():
        return
    info = model.get_model_info()
    print(f"{what}\n  data: {data.source}: {len(data)} spots, {len(data.gene_names)} genes, "
          f"histology {data.histology.shape[1]}-d; split {data.split_rule} "
          f"(train {len(data.split['train'])}, val {len(data.split['val'])}, test {len(data.split['test'])})\n"
          f"  model: {info['total_parameters']:,} parameters ({info['trainable_parameters']:,} trainable), "
          f"scales {info['scale_sizes']} -> {info['sequence_length']} tokens, vocab {info['vocab_size']}")
    if args.debug:
        print(f"[debug] model info: {info}\n[debug] genes: {data.gene_names[:10]} ...")


def _load_for_inference(args):
    from var_st.data import load_spots
    from var_st.model import TwoStageVARST
    from var_st.train import RunPaths
    from ftcore.training import resolve_device

    _debug(args)
    name, path = _resolve_dataset(args)
    ckpt = _checkpoint_path(args, name)
    model = TwoStageVARST.load_complete_model(ckpt, device="cpu", trust_pickle=args.trust_checkpoint)
    adata, source = _read_adata(args, name, path)
    return name, ckpt, model, adata, source, RunPaths(args.log_dir, name), resolve_device(_device(args.gpus)), load_spots


def cmd_predict(args) -> None:
    import numpy as np

    from ftcore.io import atomic_write_h5ad, check_output_dir
    from var_st.train import PREDICTION_KEY, predict_expression

    name, ckpt, model, adata, source, paths, device, load_spots = _load_for_inference(args)
    data = load_spots(adata, source=source, histology_key=args.histology_key, spatial_key=args.spatial_key,
                      slide_key=args.slide_key, genes=model.gene_names, need_expression=False,
                      histology_dim=model.var_config.histology_dim, seed=args.seed)
    out = Path(args.output) if args.output else paths.predictions
    if out.suffix != ".h5ad":
        raise UserError(f"--output {out} must end in .h5ad")
    check_output_dir(out.parent)
    s = _sampling(args)
    pred = predict_expression(model.to(device), data, **s)
    adata.obsm[PREDICTION_KEY] = pred.astype(np.float32)
    adata.uns["var_st"] = {"genes": list(model.gene_names), "checkpoint": str(ckpt), "units": "log1p(CP10k)",
                           **{k: v for k, v in s.items() if k != "batch_size"}}
    atomic_write_h5ad(adata, out)
    print(f"predicted {pred.shape[1]} genes for {pred.shape[0]} spots -> {out} (obsm[{PREDICTION_KEY!r}], "
          f"gene names in uns['var_st']['genes'])")


def cmd_evaluate(args) -> None:
    import numpy as np

    from ftcore.io import atomic_write_json, check_output_dir
    from ftcore.plotting import plot_pred_vs_true
    from var_st.data import read_h5ad
    from var_st.train import PREDICTION_KEY, _split_indices, evaluate, format_report, predict_expression

    name, ckpt, model, adata, source, paths, device, load_spots = _load_for_inference(args)
    data = load_spots(adata, source=source, histology_key=args.histology_key, spatial_key=args.spatial_key,
                      slide_key=args.slide_key, genes=model.gene_names, need_expression=True,
                      histology_dim=model.var_config.histology_dim, seed=args.seed)
    idx = _split_indices(data, args.split)
    if args.predictions:
        pred_ad = read_h5ad(args.predictions)
        if PREDICTION_KEY not in pred_ad.obsm or list(pred_ad.uns.get("var_st", {}).get("genes", [])) != list(model.gene_names):
            raise UserError(f"{args.predictions} has no obsm[{PREDICTION_KEY!r}] for this model's genes; write it with var-st predict")
        if list(map(str, pred_ad.obs_names)) != data.obs_names:
            raise UserError(f"{args.predictions} holds other spots than {source}; predict on the same file")
        pred = np.asarray(pred_ad.obsm[PREDICTION_KEY])[idx]
    else:
        pred = predict_expression(model.to(device), data, idx=idx, **_sampling(args))
    out = Path(args.output) if args.output else paths.metrics
    check_output_dir(out.parent)
    report = evaluate(model, data, args.split, pred)
    report.update({"checkpoint": str(ckpt), "data": source})
    atomic_write_json(out, report)
    plot_pred_vs_true(pred, data.expression[idx], out.with_name("pred_vs_true.png"), title=f"VAR-ST, {args.split} split")
    print(format_report(report) + f"\nmetrics -> {out}")


def cmd_make_demo_data(args) -> None:
    from ftcore.io import atomic_write_h5ad
    from var_st.synthetic import make_demo_adata

    if args.slides < 1 or args.grid < 2 or args.genes < 2:
        raise UserError("--slides must be >= 1, --grid >= 2 and --genes >= 2")
    adata = make_demo_adata(n_slides=args.slides, grid=args.grid, n_genes=args.genes,
                            histology_dim=args.histology_dim, seed=args.seed)
    atomic_write_h5ad(adata, args.output)
    print(f"wrote {adata.n_obs} spots x {adata.n_vars} genes ({args.slides} slides) -> {args.output}")


def cmd_info(args) -> None:
    from var_st.model import TwoStageVARST

    model = TwoStageVARST.load_complete_model(args.checkpoint, trust_pickle=args.trust_checkpoint)
    for k, v in model.get_model_info().items():
        print(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}")


def cmd_demo(args) -> None:
    """The embedded end-to-end run, exactly the four commands a user would type."""
    from var_st.train import RunPaths

    common = ["--log_dir", args.log_dir, "--seed", str(args.seed)] + (["--gpus", str(args.gpus)] if args.gpus is not None else []) \
        + (["--debug"] if args.debug else [])
    paths = RunPaths(args.log_dir, DEMO)
    steps = [["train", "--training_stage", "1"], ["train", "--training_stage", "2", "--stage1_ckpt", str(paths.stage1_ckpt)],
             ["predict"], ["evaluate", "--predictions", str(paths.predictions)]]
    for step in steps:
        print(f"\n$ var-st {' '.join(step + common)}", flush=True)
        COMMANDS[step[0]](build_parser().parse_args(step + common))


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate, "demo": cmd_demo,
            "make-demo-data": cmd_make_demo_data, "info": cmd_info}


@cli_main(batch_size_hint="--batch_size")
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "--version"):
        argv = ["train"] + argv  # the user's-guide spelling: flags only means train
    args = build_parser().parse_args(argv or ["demo"])
    COMMANDS[args.command or "demo"](args)


if __name__ == "__main__":
    sys.exit(main())
