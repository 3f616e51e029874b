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

from ftcore import options as opt
from ftcore.cli import ArgumentParser, add_compile, add_version
from ftcore.errors import UserError, cli_main

DEMO = "demo"
# The embedded demo's run (documented in the README): small model, a few epochs, CPU minutes.
DEMO_RUN = {"stage1_epochs": 12, "stage2_epochs": 8, "stage1_batch_size": 64, "stage2_batch_size": 32,
            "stage1_lr": 2e-3, "stage2_lr": 2e-3}
SEED_RUN = {"stage1_epochs": 150, "stage2_epochs": 300, "stage1_batch_size": 256, "stage2_batch_size": 64,
            "stage1_lr": 1e-4, "stage2_lr": 1e-4}


# ----------------------------------------------------------------------------- argument parsing
def _text(flag: str, what: str):
    """A name (obsm key, obs column): stripped, never empty."""

    def parse(text: str) -> str:
        if not text.strip():
            raise UserError(f"{flag} is empty; give the {what}")
        return text.strip()

    return parse


def _slide_list(flag: str):
    """Comma-separated slide ids: 'slide3,slide4' -> ('slide3', 'slide4'); no empty names."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(","))
        if not text.strip() or not all(names):
            raise UserError(f"{flag} {text!r} has an empty slide name; give slide ids separated by commas, "
                            "e.g. {flag} slide3,slide4".replace("{flag}", flag))
        return names

    return parse


def _output_dir(flag: str):
    """opt.output_dir, but empty text is refused (it would mean the working directory)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise UserError(f"{flag} is empty; give a directory")
        return opt.check_output_dir(flag, text)

    return parse


def _data_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("--dataset", default=DEMO, type=_text("--dataset", "an .h5ad path or a dataset name"),
                   help="an .h5ad path, or a name read as <data_dir>/<name>.h5ad ('demo': embedded data)")
    p.add_argument("--data_dir", default="data", help="where dataset names are looked up")
    p.add_argument("--histology_key", default="histology", type=_text("--histology_key", "obsm key"),
                   help="obsm key of the histology features [N, F]")
    p.add_argument("--spatial_key", default="spatial", type=_text("--spatial_key", "obsm key"),
                   help="obsm key of the spot coordinates [N, 2]")
    p.add_argument("--slide_key", default=None, type=_text("--slide_key", "obs column of slide ids"),
                   help="obs column of slide ids (held-out slides form val/test; default 'slide')")
    if split:
        p.add_argument("--val_slides", type=_slide_list("--val_slides"), default=(), metavar="ID[,ID...]",
                       help="slides held out for validation (default: the rule in the README)")
        p.add_argument("--test_slides", type=_slide_list("--test_slides"), default=(), metavar="ID[,ID...]",
                       help="slides held out for testing (default: the last slide by name)")
        p.add_argument("--random_split", action="store_true",
                       help="split spots at random 70/15/15 instead of by slide (spatially optimistic; "
                            "for data of one slide)")
    p.add_argument("--log_dir", default=Path("logs"), type=_output_dir("--log_dir"),
                   help="runs go to <log_dir>/<dataset>/TWO_STAGE_VAR_ST/")
    p.add_argument("--seed", type=opt.seed("--seed"), default=0)
    p.add_argument("--gpus", type=opt.number("--gpus", int, ge=0), default=None,
                   help="0: CPU; 1: one GPU (N > 1: launch with torchrun --nproc_per_node=N); default: GPU if present")
    p.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                   help="allow checkpoints that need full unpickling (can run code; only for files you trust)")
    p.add_argument("--debug", action="store_true", help="verbose logs, full tracebacks, autograd anomaly detection")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoding", choices=["expected", "greedy", "sample"], default="expected",
                   help="expected: probability-weighted codes per scale (best point prediction, default); "
                        "greedy: argmax tokens; sample: temperature / top_k / top_p")
    p.add_argument("--temperature", type=opt.number("--temperature", float, gt=0), default=1.0,
                   help="expected and sample decoding (> 0)")
    p.add_argument("--top_k", type=opt.positive_int("--top_k"), default=50, help="sample decoding (>= 1)")
    p.add_argument("--top_p", type=opt.number("--top_p", float, gt=0, le=1), default=0.9,
                   help="sample decoding (0 < top_p <= 1)")
    p.add_argument("--num_samples", type=opt.positive_int("--num_samples"), default=1,
                   help="average this many sampled predictions (--decoding sample only)")
    p.add_argument("--batch_size", type=opt.number("--batch_size", int, ge=1, le=1_000_000), default=256)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="var-st", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version(parser, "var-st")
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train stage 1 (VQ-VAE) or stage 2 (VAR transformer)")
    _data_args(t)
    t.add_argument("--model", default="TWO_STAGE_VAR_ST", choices=["TWO_STAGE_VAR_ST"], help="(as in the user's guide)")
    t.add_argument("--training_stage", type=int, choices=[1, 2], default=1)
    t.add_argument("--stage1_ckpt", default=None, help="stage 2: the stage-1 checkpoint (best_vqvae.ckpt)")
    t.add_argument("--epochs", type=opt.nonnegative_int("--epochs"), default=None,
                   help="default 150 (stage 1) / 300 (stage 2); demo: 12 / 8; 0 with --max_steps")
    t.add_argument("--batch_size", type=opt.number("--batch_size", int, ge=1, le=1_000_000), default=None,
                   help="per process; default 256 / 64; demo: 64 / 32")
    t.add_argument("--lr", type=opt.number("--lr", float, gt=0, le=1e6), default=None,
                   help="default 1e-4; demo: 2e-3 (above 1e6 torch's optimizer overflows float32)")
    t.add_argument("--max_steps", type=opt.positive_int("--max_steps"), default=None,
                   help="stop after this many optimizer steps (with --epochs 0: run exactly this many)")
    add_compile(t)
    t.add_argument("--patience", type=opt.positive_int("--patience"), default=None,
                   help="early stopping after this many epochs without improvement")
    t.add_argument("--num_genes", type=opt.number("--num_genes", int, ge=2), default=None,
                   help="stage 1: top highly variable genes modelled (default 200); stage 2 takes stage 1's")
    t.add_argument("--preset", choices=["full", "demo"], default=None,
                   help="model sizes: full = the user's guide (default), demo = small CPU model (default for --dataset demo)")
    t.add_argument("--config", default=None, help="YAML/TOML with sections vqvae: and var: (keys of the user's guide)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set var.num_layers=6 (repeatable)")

    p = sub.add_parser("predict", help="predict expression from histology + coordinates into an .h5ad (obsm)")
    _data_args(p, split=False)
    p.add_argument("--checkpoint", default=None, help="complete_model.ckpt (default: the dataset's run)")
    p.add_argument("--output", default=None, type=opt.output_file("--output", (".h5ad",)),
                   help="output .h5ad (default <run>/predictions.h5ad)")
    _sampling_args(p)

    e = sub.add_parser("evaluate", help="Pearson / MSE / MAE on a split, next to ridge and the stage-1 ceiling")
    _data_args(e)
    e.add_argument("--checkpoint", default=None, help="complete_model.ckpt (default: the dataset's run)")
    e.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    e.add_argument("--predictions", default=None,
                   help="an .h5ad written by `var-st predict` (else predicts now)")
    e.add_argument("--output", default=None, type=opt.output_file("--output", (".json",)),
                   help="metrics JSON (default <run>/metrics.json; pred_vs_true.png beside it)")
    _sampling_args(e)

    d = sub.add_parser("demo", help="stage 1 -> stage 2 -> predict -> evaluate on the embedded data (the default command)")
    d.add_argument("--log_dir", default=Path("logs"), type=_output_dir("--log_dir"))
    d.add_argument("--seed", type=opt.seed("--seed"), default=0)
    d.add_argument("--gpus", type=opt.number("--gpus", int, ge=0), default=None)
    d.add_argument("--debug", action="store_true")

    m = sub.add_parser("make-demo-data", help="write the embedded demo data set as .h5ad")
    m.add_argument("--output", default=Path("demo.h5ad"), type=opt.output_file("--output", (".h5ad",)))
    m.add_argument("--seed", type=opt.seed("--seed"), default=0)
    m.add_argument("--slides", type=opt.number("--slides", int, ge=1, le=1000), default=5)
    m.add_argument("--grid", type=opt.number("--grid", int, ge=2, le=500), default=18, help="spots per slide = grid^2")
    m.add_argument("--genes", type=opt.number("--genes", int, ge=2, le=50_000), default=300)
    m.add_argument("--histology_dim", type=opt.number("--histology_dim", int, ge=1, le=10_000), default=1024)

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
    """(dataset name, .h5ad path or None for the embedded demo); the file is checked to exist."""
    value = str(args.dataset)
    # a path when it looks like one (a name may hold dots: PRAD.v2 is <data_dir>/PRAD.v2.h5ad)
    if value.endswith(".h5ad") or os.sep in value or value.startswith("~") or Path(value).is_file():
        path = opt.check_input_file("--dataset", value, "data file (.h5ad)")
        if path.suffix != ".h5ad":
            raise UserError(f"--dataset {path} is not an .h5ad file; var-st reads AnnData .h5ad files "
                            "(convert it with anndata, e.g. anndata.read_csv(...).write_h5ad(...))")
        return path.stem, path
    path = Path(args.data_dir).expanduser() / f"{value}.h5ad"
    if value == DEMO and not path.exists():
        return DEMO, None
    if not path.exists():
        raise UserError(f"dataset {value!r}: {path} does not exist; pass --dataset path/to/file.h5ad or set --data_dir")
    return value, opt.check_input_file("--dataset", path, "data file (.h5ad)")


def _read_adata(args, name: str, path: Path | None):
    from var_st.data import read_h5ad
    from var_st.synthetic import make_demo_adata

    if path is None:
        return make_demo_adata(seed=0), f"embedded demo data ({DEMO})"
    return read_h5ad(path), str(path)


def _split_options(args, split: bool = True) -> dict:
    """The load_spots keywords of the data flags: where the slide ids are and how the split is made."""
    from var_st.data import DEFAULT_SLIDE_KEY

    kw = {"histology_key": args.histology_key, "spatial_key": args.spatial_key,
          "slide_key": args.slide_key or DEFAULT_SLIDE_KEY, "slide_key_given": args.slide_key is not None,
          "seed": args.seed, "split": split}
    if split:
        kw.update(val_slides=args.val_slides, test_slides=args.test_slides, random_split=args.random_split)
        if args.random_split and (args.val_slides or args.test_slides):
            raise UserError("--random_split splits spots at random; it cannot be combined with --val_slides / "
                            "--test_slides (choose one)")
        both = sorted(set(args.val_slides) & set(args.test_slides))
        if both:
            raise UserError(f"slide {both[0]!r} is in both --val_slides and --test_slides; a slide can be held out "
                            "for one of them only")
    return kw


# training settings belong on the command line: a config section of them is a common first guess
_RUN_KEYS = {"epochs", "lr", "batch_size", "max_steps", "patience", "seed", "gpus", "learning_rate"}


def _load_model_config(args, preset: str):
    """Preset sizes, then --config file sections, then --set overrides; unknown keys are errors."""
    from ftcore.config import apply_overrides, from_dict, read_config_file
    from var_st.model import PRESETS, VARConfig, VQVAEConfig

    vq, var = PRESETS[preset]
    merged = {"vqvae": asdict(vq), "var": asdict(var)}
    given: dict = {}
    source = "config"
    if args.config is not None:
        if not str(args.config).strip():
            raise UserError("--config is empty; give the path of a YAML or TOML file")
        given = read_config_file(Path(os.path.expandvars(str(args.config).strip())).expanduser())
        source = str(args.config)
        for key in given:
            if key not in merged:
                run_keys = sorted(_RUN_KEYS & set(given[key])) if isinstance(given[key], dict) else []
                hint = ""
                if key in _RUN_KEYS or run_keys:
                    flag = (run_keys or [key])[0]
                    hint = (f"; training settings ({flag}) are command-line flags "
                            f"(--{'lr' if flag == 'learning_rate' else flag} ...)")
                raise UserError(f"{source}: unknown section {key!r}; the sections are vqvae and var{hint}")
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
    return vq_cfg, var_cfg, given


def _run_settings(args, stage: int, demo: bool) -> dict:
    defaults = DEMO_RUN if demo else SEED_RUN
    key = f"stage{stage}"
    run = {"epochs": args.epochs if args.epochs is not None else defaults[f"{key}_epochs"],
           "batch_size": args.batch_size if args.batch_size is not None else defaults[f"{key}_batch_size"],
           "lr": args.lr if args.lr is not None else defaults[f"{key}_lr"],
           "max_steps": args.max_steps, "patience": args.patience, "seed": args.seed,
           "device": _device(args.gpus), "progress": not os.environ.get("VAR_ST_NO_PROGRESS"),
           "compile": getattr(args, "compile", None) or "auto"}
    if run["epochs"] == 0 and not run["max_steps"]:
        raise UserError("--epochs 0 trains nothing; give --epochs >= 1, or --epochs 0 with --max_steps N "
                        "to run exactly N optimizer steps")
    return run


def _debug(args) -> None:
    if getattr(args, "debug", False):
        import torch

        os.environ["FTCORE_TRACEBACK"] = "1"  # cli_main shows full tracebacks
        torch.autograd.set_detect_anomaly(True)
        print(f"[debug] arguments: {vars(args)}")


def _checkpoint_path(args, name: str) -> Path:
    from var_st.train import RunPaths

    if args.checkpoint is None:
        path = RunPaths(args.log_dir, name).complete
        if not path.exists():
            raise UserError(f"checkpoint {path} does not exist; train stage 2 first or pass --checkpoint")
        return path
    path = Path(os.path.expandvars(str(args.checkpoint).strip())).expanduser()
    if path.is_dir():
        inside = next((p for p in (path / "complete_model.ckpt", path / "TWO_STAGE_VAR_ST" / "complete_model.ckpt")
                       if p.is_file()), None)
        raise UserError(f"--checkpoint {path} is a directory; pass the checkpoint file"
                        + (f", e.g. {inside}" if inside else " (complete_model.ckpt)"))
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; train stage 2 first or pass --checkpoint")
    return path


def _sampling(args) -> dict:
    if args.num_samples > 1 and args.decoding != "sample":
        raise UserError(f"--num_samples {args.num_samples} averages sampled predictions; it needs --decoding sample "
                        f"(--decoding {args.decoding} gives one deterministic prediction)")
    return {"decoding": args.decoding, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "num_samples": args.num_samples, "seed": args.seed, "batch_size": args.batch_size}


def _same_file(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> None:
    import torch

    from ftcore.io import claim_outputs
    from ftcore.training import seed_everything
    from var_st.data import load_spots
    from var_st.model import TwoStageVARST
    from var_st.train import RunPaths, is_main_process, train_stage1, train_stage2, train_settings

    # -- validation: everything below may refuse; nothing is written before claim_outputs
    _debug(args)
    seed_everything(args.seed)  # the initial weights too, so a run is reproducible from its command line
    name, path = _resolve_dataset(args)
    demo = path is None
    preset = args.preset or ("demo" if demo else "full")
    stage = args.training_stage
    paths = RunPaths(args.log_dir, name)
    opt.check_output_dir("--log_dir", paths.root)
    split_kw = _split_options(args)
    run = _run_settings(args, stage, demo)
    settings = train_settings({"dataset": name, "histology_key": args.histology_key, "spatial_key": args.spatial_key,
                               "slide_key": split_kw["slide_key"], "seed": args.seed,
                               "val_slides": ",".join(args.val_slides), "test_slides": ",".join(args.test_slides),
                               "random_split": args.random_split})
    if stage == 1:
        if args.stage1_ckpt:
            raise UserError("--stage1_ckpt is for --training_stage 2; stage 1 trains the VQ-VAE from scratch")
        vq_cfg, var_cfg, _ = _load_model_config(args, preset)
        adata, source = _read_adata(args, name, path)
        data = load_spots(adata, source=source, num_genes=args.num_genes or 200, **split_kw)
        model = TwoStageVARST(len(data.gene_names), vq_cfg, var_cfg, current_stage=1)
        _announce(args, model, data, f"stage 1 (VQ-VAE) -> {paths.stage1}")
        demo_copy = paths.root.parent / "demo.h5ad"
        claim_outputs(paths.stage1, demo_copy if demo else None)
        if demo and is_main_process():
            from ftcore.io import atomic_write_h5ad

            atomic_write_h5ad(adata, demo_copy)  # the data the demo trained on, for inspection
        result = train_stage1(model, data, paths.stage1, run, {"data": settings})
        if result.best_path is None or not Path(result.best_path).exists():
            last = next((r["val_loss"] for r in reversed(result.history) if "val_loss" in r), None)
            raise UserError(f"stage 1 finished without a finite val_loss (last: {last}): the run diverged; "
                            f"lower --lr (now {run['lr']:g})")
        if is_main_process():
            print(f"stage 1 done: best val_loss {result.best_metric} -> {result.best_path}\n"
                  f"next: var-st train --dataset {args.dataset} --training_stage 2 --stage1_ckpt {result.best_path}")
        return
    if not args.stage1_ckpt:
        hint = f" (found {paths.stage1_ckpt})" if paths.stage1_ckpt.exists() else ""
        raise UserError(f"stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt {paths.stage1_ckpt}{hint}; "
                        "train it first with --training_stage 1")
    stage1_ckpt, ckpt_extra = _stage1_checkpoint(args)
    _, var_cfg, given = _load_model_config(args, preset)
    _check_against_stage1(args, stage1_ckpt, ckpt_extra, given)
    if "vocab_size" not in given.get("var", {}) and "vocab_size" not in given.get("vqvae", {}):
        var_cfg.vocab_size = int(ckpt_extra["vqvae_config"]["vocab_size"])  # the codebook decides
    explicit_hist = "histology_dim" in given.get("var", {})
    adata, source = _read_adata(args, name, path)
    data = load_spots(adata, source=source, genes=ckpt_extra["gene_names"],
                      histology_dim=var_cfg.histology_dim if explicit_hist else None, **split_kw)
    if not explicit_hist:
        var_cfg.histology_dim = int(data.histology.shape[1])  # the data decides unless the config says otherwise
    model = TwoStageVARST.from_stage1(stage1_ckpt, var_cfg, trust_pickle=args.trust_checkpoint)
    _announce(args, model, data, f"stage 2 (VAR transformer) -> {paths.stage2}")
    claim_outputs(paths.stage2, paths.complete)
    result = train_stage2(model, data, paths.stage2, run, {"data": settings})
    if is_main_process():
        model.save_complete_model(paths.complete, data=settings)
        print(f"stage 2 done: best val_pearson {result.best_metric} -> complete model {paths.complete}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _stage1_checkpoint(args) -> tuple[Path, dict]:
    """--stage1_ckpt read and recognised: (path, its metadata)."""
    from ftcore.checkpoint import read_checkpoint

    path = Path(os.path.expandvars(str(args.stage1_ckpt).strip())).expanduser()
    if path.is_dir():
        inside = path / "best_vqvae.ckpt"
        raise UserError(f"--stage1_ckpt {path} is a directory; pass the checkpoint file"
                        + (f", e.g. {inside}" if inside.is_file() else " (best_vqvae.ckpt)"))
    obj = read_checkpoint(path, trust_pickle=args.trust_checkpoint)
    extra = obj.get("extra", {}) if isinstance(obj, dict) else {}
    extra = extra if isinstance(extra, dict) else {}
    if extra.get("stage") == 2 or extra.get("complete"):
        raise UserError(f"{path} is a stage-2 / complete var-st checkpoint, not a stage-1 one; --stage1_ckpt takes "
                        "the best_vqvae.ckpt written by --training_stage 1 (a complete model goes to predict / evaluate)")
    if extra.get("stage") != 1 or not extra.get("gene_names") or "vqvae_config" not in extra:
        raise UserError(f"{path} is not a var-st stage-1 checkpoint; pass the best_vqvae.ckpt written by --training_stage 1")
    return path, extra


def _check_against_stage1(args, path: Path, extra: dict, given: dict) -> None:
    """Stage 2 takes the VQ-VAE (genes, codebook) from the stage-1 checkpoint: other values given now are errors."""
    n = int(extra.get("num_genes", len(extra["gene_names"])))
    if args.num_genes is not None and args.num_genes != n:
        raise UserError(f"--num_genes {args.num_genes}, but --stage1_ckpt {path} was trained on {n} genes; stage 2 "
                        "uses stage 1's genes: drop --num_genes or pass the matching stage-1 checkpoint")
    saved = dict(extra["vqvae_config"])
    for key, value in given.get("vqvae", {}).items():
        want = list(value) if isinstance(value, (list, tuple)) else value
        if key in saved and saved[key] != want:
            raise UserError(f"config sets vqvae.{key} = {value!r}, but --stage1_ckpt {path} was trained with "
                            f"{saved[key]!r}; stage 2 takes the VQ-VAE from the checkpoint: use stage 1's config "
                            "or the matching checkpoint")
    var_vocab = given.get("var", {}).get("vocab_size")
    if var_vocab is not None and var_vocab != saved.get("vocab_size"):
        raise UserError(f"config sets var.vocab_size = {var_vocab!r}, but the stage-1 codebook of {path} has "
                        f"{saved.get('vocab_size')} codes; they must match (drop var.vocab_size)")


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


def _load_for_inference(args, *, need_expression: bool, split: bool, outputs: tuple[Path, ...]):
    """The shared first half of predict / evaluate: every check, then the model and validated data."""
    from var_st.data import load_spots
    from var_st.model import TwoStageVARST
    from ftcore.training import resolve_device

    _debug(args)
    name, path = _resolve_dataset(args)
    for out in outputs:
        if _same_file(out, path):
            raise UserError(f"--output {out} is the input --dataset file; write to another file")
    ckpt = _checkpoint_path(args, name)
    if _same_file(ckpt, path):
        raise UserError(f"--checkpoint and --dataset are the same file ({path}); swapped arguments?")
    sampling = _sampling(args)
    split_kw = _split_options(args, split=split)
    device = resolve_device(_device(args.gpus))
    model = TwoStageVARST.load_complete_model(ckpt, device="cpu", trust_pickle=args.trust_checkpoint)
    adata, source = _read_adata(args, name, path)
    data = load_spots(adata, source=source, genes=model.gene_names, need_expression=need_expression,
                      histology_dim=model.var_config.histology_dim, **split_kw)
    return name, ckpt, model, adata, data, device, sampling


def cmd_predict(args) -> None:
    import numpy as np

    from ftcore.io import atomic_write_h5ad, claim_outputs
    from var_st.train import PREDICTION_KEY, RunPaths, predict_expression

    name, _ = _resolve_dataset(args)
    out = args.output if args.output is not None else opt.check_output_file(
        "--output", RunPaths(args.log_dir, name).predictions, (".h5ad",))
    _, ckpt, model, adata, data, device, s = _load_for_inference(args, need_expression=False, split=False,
                                                                 outputs=(out,))
    claim_outputs(out)
    pred = predict_expression(model.to(device), data, **s)
    adata.obsm[PREDICTION_KEY] = pred.astype(np.float32)
    adata.uns["var_st"] = {"genes": list(model.gene_names), "checkpoint": str(ckpt), "units": "log1p(CP10k)",
                           **{k: v for k, v in s.items() if k != "batch_size"}}
    atomic_write_h5ad(adata, out)
    print(f"predicted {pred.shape[1]} genes for {pred.shape[0]} spots -> {out} (obsm[{PREDICTION_KEY!r}], "
          f"gene names in uns['var_st']['genes'])")


def cmd_evaluate(args) -> None:
    import numpy as np

    from ftcore.io import atomic_write_json, claim_outputs
    from ftcore.plotting import plot_pred_vs_true
    from var_st.data import read_h5ad
    from var_st.train import PREDICTION_KEY, RunPaths, _split_indices, evaluate, format_report, predict_expression

    name, _ = _resolve_dataset(args)
    out = args.output if args.output is not None else opt.check_output_file(
        "--output", RunPaths(args.log_dir, name).metrics, (".json",))
    plot = out.with_name("pred_vs_true.png")
    predictions = opt.check_input_file("--predictions", args.predictions, "predictions .h5ad") if args.predictions else None
    _, ckpt, model, adata, data, device, s = _load_for_inference(args, need_expression=True, split=True,
                                                                 outputs=(out, plot))
    idx = _split_indices(data, args.split)
    if predictions is not None:
        pred_ad = read_h5ad(predictions)
        if PREDICTION_KEY not in pred_ad.obsm or list(pred_ad.uns.get("var_st", {}).get("genes", [])) != list(model.gene_names):
            raise UserError(f"{predictions} has no obsm[{PREDICTION_KEY!r}] for this model's genes; write it with var-st predict")
        if list(map(str, pred_ad.obs_names)) != data.obs_names:
            raise UserError(f"{predictions} holds other spots than {data.source}; predict on the same file")
        pred = np.asarray(pred_ad.obsm[PREDICTION_KEY])[idx]
        from ftcore.data import check_values

        check_values(pred, f"{predictions}: obsm[{PREDICTION_KEY!r}]")
    else:
        pred = predict_expression(model.to(device), data, idx=idx, **s)
    claim_outputs(out, plot)
    report = evaluate(model, data, args.split, pred)
    report.update({"checkpoint": str(ckpt), "data": data.source})
    atomic_write_json(out, report)
    plot_pred_vs_true(pred, data.expression[idx], plot, title=f"VAR-ST, {args.split} split")
    print(format_report(report) + f"\nmetrics -> {out}")


def cmd_make_demo_data(args) -> None:
    from ftcore.io import atomic_write_h5ad, claim_outputs
    from var_st.synthetic import make_demo_adata

    spots = args.slides * args.grid**2
    if spots * (args.genes + args.histology_dim) > 1e8:  # ~400 MB of float32
        raise UserError(f"--slides {args.slides} x --grid {args.grid}^2 = {spots:,} spots with {args.genes} genes and "
                        f"{args.histology_dim} features is too large for a demo file; make it smaller")
    adata = make_demo_adata(n_slides=args.slides, grid=args.grid, n_genes=args.genes,
                            histology_dim=args.histology_dim, seed=args.seed)
    claim_outputs(args.output)
    atomic_write_h5ad(adata, args.output)
    print(f"wrote {adata.n_obs} spots x {adata.n_vars} genes ({args.slides} slides) -> {args.output}")


def cmd_info(args) -> None:
    from var_st.model import TwoStageVARST

    if Path(args.checkpoint).is_dir():
        raise UserError(f"{args.checkpoint} is a directory; pass the checkpoint file (complete_model.ckpt)")
    model = TwoStageVARST.load_complete_model(args.checkpoint, trust_pickle=args.trust_checkpoint)
    for k, v in model.get_model_info().items():
        print(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}")


def cmd_demo(args) -> None:
    """The embedded end-to-end run, exactly the four commands a user would type."""
    from var_st.train import RunPaths

    common = ["--log_dir", str(args.log_dir), "--seed", str(args.seed)] \
        + (["--gpus", str(args.gpus)] if args.gpus is not None else []) + (["--debug"] if args.debug else [])
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
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
        argv = ["train"] + argv  # the user's-guide spelling: flags only means train
    args = build_parser().parse_args(argv or ["demo"])
    COMMANDS[args.command or "demo"](args)


if __name__ == "__main__":
    sys.exit(main())
