"""var-st: train stage 1 / stage 2, predict and evaluate Two-Stage VAR-ST.

    var-st                                   the embedded demo: stage 1 -> stage 2 -> predict -> evaluate
    var-st train --dataset PRAD --training_stage 1 --epochs 150 --batch_size 256 --lr 1e-4 --gpus 1
    var-st train --dataset PRAD --training_stage 2 \\
        --stage1_ckpt logs/PRAD/TWO_STAGE_VAR_ST/stage1_vqvae/best_vqvae.ckpt --epochs 300 --batch_size 64
    var-st predict  --checkpoint logs/PRAD/TWO_STAGE_VAR_ST/complete_model.ckpt --dataset new.h5ad
    var-st evaluate --checkpoint logs/PRAD/TWO_STAGE_VAR_ST/complete_model.ckpt --dataset PRAD

The user's-guide spelling without a subcommand (`var-st --dataset PRAD --model TWO_STAGE_VAR_ST
--training_stage 1 ...`) means `train`. --dataset is an .h5ad path or a name looked up as
<data_dir>/<name>.h5ad; two names are built in: "demo" (the default, the embedded synthetic data set)
and "visium-mouse-brain" (49 real Visium spots with H&E features, shipped with ftcore).
The data keys, gene list, model sizes and split of stage 1 are stored in its checkpoint and used by
stage 2, predict and evaluate unless given again. Under torchrun --batch_size is per process.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ftcore import options as opt
from ftcore.cli import SNAKE, ArgumentParser, add_compile, add_seed, add_trust_checkpoint, add_version
from ftcore.errors import UserError, cli_main, oom_advice

if TYPE_CHECKING:  # the CLI imports torch and the model lazily (fast --help)
    from ftcore.rundir import RunDir
    from var_st.config import RunSettings
    from var_st.data import SpotData
    from var_st.model import TwoStageVARST
    from var_st.train import RunPaths

DEMO = "demo"
VISIUM = "visium-mouse-brain"
BUILTIN = (DEMO, VISIUM)  # dataset names that need no file
# `var-st demo --dataset` / `make-demo-data --dataset`: what each choice is called in train / predict / evaluate
DEMO_DATASETS = {"synthetic": DEMO, VISIUM: VISIUM}
# The default model size for a user's data (--preset not given): the guide's 123M-parameter sizes only where
# they can be trained and fed, on a GPU with at least this many training spots; else the small preset.
FULL_PRESET_MIN_SPOTS = 10_000
# The embedded demo's run (documented in the README): small model, a few epochs, CPU minutes.
DEMO_RUN = {"stage1_epochs": 12, "stage2_epochs": 8, "stage1_batch_size": 64, "stage2_batch_size": 32,
            "stage1_lr": 2e-3, "stage2_lr": 2e-3}
# 49 real spots, one slide (35 training spots after the 70/15/15 random split): more epochs of few steps
VISIUM_RUN = {"stage1_epochs": 30, "stage2_epochs": 15, "stage1_batch_size": 16, "stage2_batch_size": 16,
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
                   help="an .h5ad path, or a name read as <data_dir>/<name>.h5ad; built in: 'demo' (synthetic), "
                        f"'{VISIUM}' (49 real Visium spots)")
    p.add_argument("--data_dir", default="data", help="where dataset names are looked up")
    later = "; default: the one stored in the checkpoint (stage 2, predict, evaluate), else "
    p.add_argument("--histology_key", default=None, type=_text("--histology_key", "obsm key"),
                   help=f"obsm key of the histology features [N, F]{later}'histology'")
    p.add_argument("--spatial_key", default=None, type=_text("--spatial_key", "obsm key"),
                   help=f"obsm key of the spot coordinates [N, 2]{later}'spatial'")
    p.add_argument("--slide_key", default=None, type=_text("--slide_key", "obs column of slide ids"),
                   help=f"obs column of slide ids (held-out slides form val/test){later}'slide'")
    if split:
        p.add_argument("--val_slides", type=_slide_list("--val_slides"), default=(), metavar="ID[,ID...]",
                       help="slides held out for validation (default: the stage-1 run's split, else the rule "
                            "in the README)")
        p.add_argument("--test_slides", type=_slide_list("--test_slides"), default=(), metavar="ID[,ID...]",
                       help="slides held out for testing (default: the stage-1 run's split, else the last slide)")
        p.add_argument("--random_split", action="store_true",
                       help="split spots at random 70/15/15 instead of by slide (spatially optimistic; "
                            "for data of one slide)")
    p.add_argument("--log_dir", default=Path("logs"), type=_output_dir("--log_dir"),
                   help="runs go to <log_dir>/<dataset>/TWO_STAGE_VAR_ST/")
    add_seed(p, "the initialisation, the batches, --random_split and --decoding sample", default=0, style=SNAKE)
    p.add_argument("--gpus", type=opt.number("--gpus", int, ge=0), default=None,
                   help="0: CPU; 1: one GPU (N > 1: launch with torchrun --nproc_per_node=N); default: GPU if present")
    add_trust_checkpoint(p, SNAKE)
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
    add_compile(t, default="graphs")
    t.add_argument("--patience", type=opt.positive_int("--patience"), default=None,
                   help="early stopping after this many epochs without improvement")
    t.add_argument("--num_genes", type=opt.number("--num_genes", int, ge=2), default=None,
                   help="stage 1: top highly variable genes modelled (default 200); stage 2 takes stage 1's")
    t.add_argument("--preset", choices=["full", "demo"], default=None,
                   help="model sizes: full = the user's guide (123M parameters), demo = small (2.2M). Default: "
                        f"full on a GPU with >= {FULL_PRESET_MIN_SPOTS:,} training spots, else demo (built-in data "
                        "sets: demo); stage 2: stage 1's sizes")
    t.add_argument("--config", default=None, help="YAML/TOML with sections vqvae: and var: (keys of the user's guide)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set var.num_layers=6 (repeatable)")
    _add_overwrite(t, "the stage's directory (stage1_vqvae/ or stage2_var/)")

    p = sub.add_parser("predict", help="predict expression from histology + coordinates (no expression needed) "
                                       "into an .h5ad: X = predictions, var_names = genes")
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
                   help="an .h5ad written by `var-st predict` (X = predictions; else predicts now)")
    e.add_argument("--output", default=None, type=opt.output_file("--output", (".json",)),
                   help="metrics JSON (default <run>/metrics.json; pred_vs_true.png beside it)")
    _sampling_args(e)

    d = sub.add_parser("demo", help="stage 1 -> stage 2 -> predict -> evaluate on the embedded data (the default command)")
    d.add_argument("--dataset", choices=list(DEMO_DATASETS), default="synthetic",
                   help=f"synthetic: 5 generated slides (default); {VISIUM}: 49 real Visium spots of one slide "
                        "(split at random, spatially optimistic)")
    d.add_argument("--log_dir", default=Path("logs"), type=_output_dir("--log_dir"))
    add_seed(d, "every stage of the demo", default=0, style=SNAKE)
    d.add_argument("--gpus", type=opt.number("--gpus", int, ge=0), default=None)
    d.add_argument("--debug", action="store_true")
    _add_overwrite(d, "a stage's directory")

    m = sub.add_parser("make-demo-data", help="write an embedded data set (synthetic or the real Visium spots) as .h5ad")
    m.add_argument("--dataset", choices=list(DEMO_DATASETS), default="synthetic",
                   help=f"synthetic (default; sizes below) or {VISIUM} (49 real spots x 1999 genes, H&E features)")
    m.add_argument("--output", default=Path("demo.h5ad"), type=opt.output_file("--output", (".h5ad",)))
    synthetic_only = " (synthetic only)"
    add_seed(m, "the generated data" + synthetic_only, said="0", style=SNAKE)
    m.add_argument("--slides", type=opt.number("--slides", int, ge=1, le=1000), default=None,
                   help="default 5" + synthetic_only)
    m.add_argument("--grid", type=opt.number("--grid", int, ge=2, le=500), default=None,
                   help="spots per slide = grid^2, default 18" + synthetic_only)
    m.add_argument("--genes", type=opt.number("--genes", int, ge=2, le=50_000), default=None,
                   help="default 300" + synthetic_only)
    m.add_argument("--histology_dim", type=opt.number("--histology_dim", int, ge=1, le=10_000), default=None,
                   help="default 1024" + synthetic_only)

    i = sub.add_parser("info", help="print get_model_info() of a complete model checkpoint")
    i.add_argument("checkpoint")
    add_trust_checkpoint(i, SNAKE)
    return parser


def _add_overwrite(p: argparse.ArgumentParser, where: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"{where} holds a run of other settings: delete it and start fresh there (without it such a "
                        "run is refused, naming the changed keys; the same settings resume)")


# ----------------------------------------------------------------------------- the run directory (ftcore.rundir)
# Each stage's directory holds run_config.yaml: the data (file by path, size and sha256), keys, split, model
# sizes and run settings. A rerun resumes only when they are the same; what does not shape the result:
RESUME_IGNORES = ("run.device", "run.progress", "run.compile", "data.source")


def _open_stage(stage_dir: Path, record: dict, overwrite: bool):
    from ftcore.rundir import open_run_dir

    return open_run_dir(stage_dir, record, ignore=RESUME_IGNORES, overwrite=overwrite,
                        output_flag="--log_dir (or --dataset)")


def _stage_record(contract: dict, path: Path | None, run, **sections) -> dict:
    from ftcore.rundir import file_identity

    return {"data": contract, "data_file": file_identity(path) if path is not None else {"builtin": contract["dataset"]},
            **{k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in sections.items()}, "run": run.record()}


# ----------------------------------------------------------------------------- helpers
def _device(gpus: int | None) -> str:
    import torch

    from ftcore.distributed import world_size

    if gpus is None:
        return "auto"
    if gpus == 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise UserError(f"--gpus {gpus} asked for but CUDA is not available here; pass --gpus 0 to run on the CPU")
    if gpus > 1 and world_size() == 1:
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
    if value in BUILTIN and not path.exists():
        return value, None
    if not path.exists():
        raise UserError(f"dataset {value!r}: {path} does not exist; pass --dataset path/to/file.h5ad or set --data_dir")
    return value, opt.check_input_file("--dataset", path, "data file (.h5ad)")


def builtin_adata(name: str):
    """The AnnData of a built-in dataset name (no file): the synthetic demo or the 49 real Visium spots."""
    if name == VISIUM:
        from ftcore.datasets import visium_mouse_brain

        return visium_mouse_brain()  # obsm['spatial'], obsm['histology'] (H&E patch features), obs['slide']
    from var_st.synthetic import make_demo_adata

    return make_demo_adata(seed=0)


def _read_adata(args, name: str, path: Path | None):
    from var_st.data import read_h5ad

    if path is None:
        what = "embedded synthetic demo data" if name == DEMO else "real Visium mouse-brain spots shipped with ftcore"
        return builtin_adata(name), f"{what} ({name})"
    return read_h5ad(path), str(path)


# ----------------------------------------------------------------------------- the run's data contract
# Stage 1 stores where its data lives in the file (obsm / obs keys), its model sizes and its split in every
# checkpoint (extra['data']); stage 2, predict and evaluate take them from there unless given again.
KEY_DEFAULTS = {"histology_key": "histology", "spatial_key": "spatial", "slide_key": "slide"}
SPLIT_FLAGS = ("--val_slides", "--test_slides", "--random_split")


def _stored_contract(extra: dict) -> dict:
    """extra['data'] of a checkpoint as {keys..., preset, split}; files of older versions stored the split
    as the flags they were given (no fingerprints), which remake the same split on the same file."""
    data = dict(extra.get("data") or {}) if isinstance(extra.get("data"), dict) else {}
    if "split" not in data and any(k in data for k in ("val_slides", "test_slides", "random_split")):
        names = lambda v: [n for n in str(v or "").split(",") if n]  # noqa: E731
        data["split"] = {"random_split": bool(data.get("random_split")), "seed": int(data.get("seed") or 0),
                         "val_slides": names(data.get("val_slides")), "test_slides": names(data.get("test_slides")),
                         "rule": "as the flags stored by an older version"}
    return data


def _data_keys(args, stored: dict) -> dict:
    """obsm / obs keys: the command line's, else the checkpoint's, else the defaults (load_spots keywords)."""
    kw = {k: getattr(args, k) or stored.get(k) or default for k, default in KEY_DEFAULTS.items()}
    if args.slide_key is None and stored.get("slide_key") and not stored.get("slide_key_found", True):
        kw["slide_key"] = KEY_DEFAULTS["slide_key"]  # stage 1's file had no slide column (random split)
    kw["slide_key_given"] = args.slide_key is not None
    for key in KEY_DEFAULTS:
        given, kept = getattr(args, key), stored.get(key)
        if given and kept and given != kept and (key != "slide_key" or stored.get("slide_key_found", True)):
            print(f"note: --{key} {given} (the stage-1 run read {kept!r})")
    return kw


def _split_flags_given(args) -> bool:
    return bool(args.val_slides or args.test_slides or args.random_split)


def _check_split_flags(args) -> None:
    if args.random_split and (args.val_slides or args.test_slides):
        raise UserError("--random_split splits spots at random; it cannot be combined with --val_slides / "
                        "--test_slides (choose one)")
    both = sorted(set(args.val_slides) & set(args.test_slides))
    if both:
        raise UserError(f"slide {both[0]!r} is in both --val_slides and --test_slides; a slide can be held out "
                        "for one of them only")


def _split_options(args, stored: dict | None = None, adata=None, slide_key: str = "slide", where: str = "") -> dict:
    """The load_spots split keywords: the split flags when given, else the stored split (its own seed),
    else the default rule. A stored split whose held-out slides this file lacks is an error naming the flags."""
    _check_split_flags(args)
    sp = (stored or {}).get("split")
    if _split_flags_given(args) or not sp:
        return {"val_slides": args.val_slides, "test_slides": args.test_slides, "random_split": args.random_split,
                "seed": args.seed, "split": True}
    kw = {"val_slides": tuple(sp.get("val_slides") or ()), "test_slides": tuple(sp.get("test_slides") or ()),
          "random_split": bool(sp.get("random_split")), "seed": int(sp.get("seed") or 0), "split": True}
    held = [*kw["val_slides"], *kw["test_slides"]]
    if held and adata is not None and slide_key in adata.obs.columns:
        present = set(adata.obs[slide_key].astype(str).tolist())
        lacking = [s for s in held if s not in present]
        if lacking:
            raise UserError(f"the split stored in {where} holds out slide {lacking[0]!r}, which obs[{slide_key!r}] of "
                            "this file does not have: use the training data file, or name this file's held-out "
                            "slides with --val_slides / --test_slides (or --random_split)")
    return kw


def _check_split(data, stored: dict, flags_given: bool, where: str, consequence: str) -> None:
    """The split made now must hold out the stored split's val / test spots where the file shares the run's
    slides: otherwise a later stage would learn from, or score, spots on the wrong side. Refused, not warned."""
    from var_st.data import same_split

    sp = stored.get("split") or {}
    if "fingerprint" not in sp or same_split(data, sp):
        return
    if not sp.get("random_split") and not set(data.slides.tolist()) & set(sp.get("slides") or ()):
        print(f"note: {data.source} shares no slide with the stage-1 run; its own split is used ({data.split_rule})")
        return
    if flags_given:
        raise UserError(f"{' / '.join(SPLIT_FLAGS)} give a split ({data.split_rule}) other than the one stored in "
                        f"{where} ({sp.get('rule')}): {consequence}; drop the split flags (the stored split is used) "
                        "or train stage 1 again with them")
    raise UserError(f"{data.source}: the split stored in {where} ({sp.get('rule')}) holds out other spots on this "
                    f"file than in training (were spots added, dropped or reordered?): {consequence}; use the "
                    "training data file")


def _infer_preset(vqvae_config: dict) -> str:
    """The preset whose VQ-VAE sizes a (stage-1) checkpoint has; 'full' (the old default) otherwise."""
    from var_st.config import PRESETS

    for name, (vq, _) in PRESETS.items():
        mine = asdict(vq)
        if all(_plain_value(mine[k]) == _plain_value(v) for k, v in vqvae_config.items() if k in mine):
            return name
    return "full"


def _plain_value(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def _default_preset(args, n_train: int, builtin: bool) -> tuple[str, str]:
    """(preset, why) for stage 1 when --preset is not given."""
    from ftcore.training import resolve_device

    if args.preset:
        return args.preset, "--preset"
    if builtin:
        return "demo", "built-in data set"
    on_gpu = resolve_device(_device(args.gpus)).type == "cuda"
    if on_gpu and n_train >= FULL_PRESET_MIN_SPOTS:
        return "full", f"default: {n_train:,} training spots on a GPU"
    return "demo", (f"default for {n_train:,} training spots{'' if on_gpu else ' on the CPU'}; "
                    "--preset full: the guide's 123M sizes")


def _contract(name: str, data, keys: dict, preset: str, adata, seed: int) -> dict:
    """What the checkpoints store of the run's data (extra['data']), plain types only."""
    from var_st.data import split_record

    return {"dataset": name, "source": data.source, "seed": int(seed), "preset": preset,
            **{k: keys[k] for k in KEY_DEFAULTS}, "slide_key_found": keys["slide_key"] in adata.obs.columns,
            "split": split_record(data)}


def _data_flags(args) -> list[str]:
    """--dataset (and --data_dir where a dataset name is looked up in it) as this command was given them."""
    flags = ["--dataset", str(args.dataset)]
    if args.data_dir != "data" and not (str(args.dataset).endswith(".h5ad") or os.sep in str(args.dataset)):
        flags += ["--data_dir", str(args.data_dir)]
    return flags


def _stage2_command(args, stage1_ckpt, stored: dict, preset: str, without: str | None = None) -> str:
    """The complete stage-2 command line of a run (everything stage 1 decided spelt out), to paste;
    `without`: a config key (e.g. 'vqvae.vocab_size') left out, with the --config file that sets it."""
    import shlex

    cmd = ["var-st", "train", *_data_flags(args)]
    cmd += ["--training_stage", "2", "--stage1_ckpt", str(stage1_ckpt), "--preset", preset,
            "--histology_key", stored["histology_key"], "--spatial_key", stored["spatial_key"]]
    if stored.get("slide_key_found", True):
        cmd += ["--slide_key", stored["slide_key"]]
    sp = stored.get("split") or {}
    if sp.get("random_split"):
        cmd += ["--random_split"]
    else:
        cmd += (["--val_slides", ",".join(sp["val_slides"])] if sp.get("val_slides") else []) \
            + (["--test_slides", ",".join(sp["test_slides"])] if sp.get("test_slides") else [])
    if args.seed:
        cmd += ["--seed", str(args.seed)]
    if str(args.log_dir) != "logs":
        cmd += ["--log_dir", str(args.log_dir)]
    dropped = [o for o in args.overrides if without and o.split("=", 1)[0].strip() == without]
    if args.config and not (without and not dropped):  # a key not set by --set came from the file
        cmd += ["--config", str(args.config)]
    for item in args.overrides:
        cmd += [] if item in dropped else ["--set", item]
    if args.gpus is not None:
        cmd += ["--gpus", str(args.gpus)]
    return shlex.join(cmd)


# training settings belong on the command line: a config section of them is a common first guess
_RUN_KEYS = {"epochs", "lr", "batch_size", "max_steps", "patience", "seed", "gpus", "learning_rate"}


def _load_model_config(args, preset: str, base: dict | None = None):
    """Preset sizes (or `base`: stage 1's configs), then --config file sections, then --set overrides
    (ftcore.config); unknown keys are errors."""
    from dataclasses import fields, make_dataclass

    from ftcore.config import apply_overrides, from_dict, merge, merge_layers, read_config_file
    from var_st.config import PRESETS, VARConfig, VQVAEConfig

    # the file's two sections as one config: errors name their keys vqvae.<key> / var.<key>
    Sections = make_dataclass("Sections", [("vqvae", VQVAEConfig), ("var", VARConfig)])
    vq, var = PRESETS[preset]
    stage1 = {section: {k: v for k, v in ((base or {}).get(section) or {}).items() if k in {f.name for f in fields(cls)}}
              for section, cls in (("vqvae", VQVAEConfig), ("var", VARConfig))}
    given, source = None, "config"
    if args.config is not None:
        if not str(args.config).strip():
            raise UserError("--config is empty; give the path of a YAML or TOML file")
        given = read_config_file(Path(os.path.expandvars(str(args.config).strip())).expanduser())
        source = str(args.config)
        _check_sections(given, source, in_file=True)
    _check_sections(apply_overrides({}, args.overrides), source, in_file=False)
    layers = merge_layers(Sections, preset=merge({"vqvae": asdict(vq), "var": asdict(var)}, stage1), file=given,
                          sets=args.overrides, source=source)
    given = layers.given
    if "vocab_size" in given.get("vqvae", {}) and "vocab_size" not in given.get("var", {}):
        layers.data["var"]["vocab_size"] = layers.data["vqvae"]["vocab_size"]
    cfg = from_dict(Sections, layers.data, source)
    return cfg.vqvae, cfg.var, given


def _check_sections(layer: dict, source: str, in_file: bool) -> None:
    """A model config has two sections, vqvae and var: any other top-level key is named as such."""
    for key, value in layer.items():
        if key not in ("vqvae", "var") and in_file:
            run_keys = sorted(_RUN_KEYS & set(value)) if isinstance(value, dict) else []
            hint = ""
            if key in _RUN_KEYS or run_keys:
                flag = (run_keys or [key])[0]
                hint = (f"; training settings ({flag}) are command-line flags "
                        f"(--{'lr' if flag == 'learning_rate' else flag} ...)")
            raise UserError(f"{source}: unknown section {key!r}; the sections are vqvae and var{hint}")
        if key not in ("vqvae", "var"):
            raise UserError(f"--set/--config: unknown section {key!r}; use vqvae.<key> or var.<key>")
        if not isinstance(value, dict):
            raise UserError(f"{source}: section {key!r} must be a mapping of keys")


def _run_settings(args, stage: int, builtin: str | None):
    from var_st.config import RunSettings

    defaults = {DEMO: DEMO_RUN, VISIUM: VISIUM_RUN}.get(builtin, SEED_RUN)
    key = f"stage{stage}"
    run = RunSettings(epochs=args.epochs if args.epochs is not None else defaults[f"{key}_epochs"],
                      batch_size=args.batch_size if args.batch_size is not None else defaults[f"{key}_batch_size"],
                      lr=args.lr if args.lr is not None else defaults[f"{key}_lr"],
                      max_steps=args.max_steps, patience=args.patience, seed=args.seed,
                      device=_device(args.gpus), progress=not os.environ.get("VAR_ST_NO_PROGRESS"),
                      compile=getattr(args, "compile", None) or "graphs")
    if run.epochs == 0 and not run.max_steps:
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
@dataclass
class TrainJob:
    """What `var-st train` runs, every check passed (prepare_train); nothing is written yet."""

    stage: int
    name: str  # the dataset's name (logs/<name>/...)
    paths: RunPaths
    run: RunSettings
    data: SpotData
    model: TwoStageVARST
    contract: dict  # extra['data'] of the checkpoints: keys, preset, split
    preset: str
    stage_run: RunDir  # the stage directory's contract (ftcore.rundir): decided, not started
    outputs: tuple  # what the command creates (claim_outputs)
    demo_copy: Path | None = None  # stage 1 on the built-in demo: its data, written beside the run
    adata: object = None


def prepare_train(args) -> TrainJob:
    """Every check of `var-st train`, once, before anything is written: flags, data file, keys, split, model
    config, the stage-1 checkpoint (stage 2: read once, here) and the stage directory's run contract."""
    from ftcore.training import seed_everything
    from var_st.train import RunPaths

    _debug(args)
    seed_everything(args.seed)  # the initial weights too, so a run is reproducible from its command line
    name, path = _resolve_dataset(args)
    paths = RunPaths(args.log_dir, name)
    opt.check_output_dir("--log_dir", paths.root)
    run = _run_settings(args, args.training_stage, name if path is None else None)
    if args.training_stage == 1:
        return _prepare_stage1(args, name, path, paths, run)
    return _prepare_stage2(args, name, path, paths, run)


def _prepare_stage1(args, name: str, path: Path | None, paths, run) -> TrainJob:
    from var_st.data import load_spots
    from var_st.model import TwoStageVARST

    if args.stage1_ckpt:
        raise UserError("--stage1_ckpt is for --training_stage 2; stage 1 trains the VQ-VAE from scratch")
    builtin = path is None
    keys = _data_keys(args, {})
    split_kw = _split_options(args)
    adata, source = _read_adata(args, name, path)
    data = load_spots(adata, source=source, num_genes=args.num_genes or 200, **keys, **split_kw)
    preset, why = _default_preset(args, len(data.split["train"]), builtin)
    vq_cfg, var_cfg, _ = _load_model_config(args, preset)
    model = TwoStageVARST(len(data.gene_names), vq_cfg, var_cfg, current_stage=1)
    contract = _contract(name, data, keys, preset, adata, args.seed)
    _announce(args, model, data, f"stage 1 (VQ-VAE) -> {paths.stage1}", f"{preset} ({why})")
    demo_copy = paths.root.parent / "demo.h5ad" if name == DEMO and builtin else None
    stage_run = _open_stage(paths.stage1, _stage_record(contract, path, run, num_genes=len(data.gene_names),
                                                        vqvae=vq_cfg, var=var_cfg), args.overwrite)
    return TrainJob(1, name, paths, run, data, model, contract, preset, stage_run, (paths.stage1, demo_copy),
                    demo_copy=demo_copy, adata=adata)


def _prepare_stage2(args, name: str, path: Path | None, paths, run) -> TrainJob:
    from ftcore.rundir import file_identity
    from var_st.data import load_spots
    from var_st.model import TwoStageVARST

    if not args.stage1_ckpt:
        hint = f" (found {paths.stage1_ckpt})" if paths.stage1_ckpt.exists() else ""
        raise UserError(f"stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt {paths.stage1_ckpt}{hint}; "
                        "train it first with --training_stage 1")
    stage1_ckpt, ckpt, ckpt_extra = _stage1_checkpoint(args)  # the one read of the stage-1 file
    stored = _stored_contract(ckpt_extra)
    preset = args.preset or stored.get("preset") or _infer_preset(ckpt_extra["vqvae_config"])
    # stage 1's sizes (preset + its config) are the base unless --preset names others
    base = None if args.preset else {"var": ckpt_extra.get("var_config") or {}}
    _, var_cfg, given = _load_model_config(args, preset, base)
    full = {**KEY_DEFAULTS, **stored, **{k: getattr(args, k) for k in KEY_DEFAULTS if getattr(args, k)}}
    _check_against_stage1(args, stage1_ckpt, ckpt_extra, given,
                          lambda key: _stage2_command(args, stage1_ckpt, full, preset, without=key))
    if "vocab_size" not in given.get("var", {}) and "vocab_size" not in given.get("vqvae", {}):
        var_cfg.vocab_size = int(ckpt_extra["vqvae_config"]["vocab_size"])  # the codebook decides
    explicit_hist = "histology_dim" in given.get("var", {})
    keys = _data_keys(args, stored)
    adata, source = _read_adata(args, name, path)
    split_kw = _split_options(args, stored, adata, keys["slide_key"], str(stage1_ckpt))
    data = load_spots(adata, source=source, genes=ckpt_extra["gene_names"],
                      histology_dim=var_cfg.histology_dim if explicit_hist else None, **keys, **split_kw)
    _check_split(data, stored, _split_flags_given(args), str(stage1_ckpt),
                 "stage 2 would train on spots stage 1 held out (or hold out spots it trained on)")
    if not explicit_hist:
        var_cfg.histology_dim = int(data.histology.shape[1])  # the data decides unless the config says otherwise
    model = TwoStageVARST.from_stage1(stage1_ckpt, var_cfg, checkpoint=ckpt)
    contract = {**_contract(name, data, keys, preset, adata, args.seed), "stage1_ckpt": str(stage1_ckpt)}
    _announce(args, model, data, f"stage 2 (VAR transformer) -> {paths.stage2}", f"{preset} (stage 1's)"
              if not args.preset else f"{preset} (--preset)")
    stage_run = _open_stage(paths.stage2, _stage_record(contract, path, run, stage1_file=file_identity(stage1_ckpt),
                                                        var=var_cfg), args.overwrite)
    return TrainJob(2, name, paths, run, data, model, contract, preset, stage_run, (paths.stage2, paths.complete))


def cmd_train(args) -> None:
    from ftcore.distributed import is_main_process, wait_for_main
    from ftcore.io import claim_outputs
    from var_st.train import train_stage1, train_stage2

    job = prepare_train(args)  # may refuse; nothing is written before claim_outputs
    claim_outputs(*job.outputs)
    job.stage_run.start()
    if job.stage == 1:
        if job.demo_copy is not None and is_main_process():
            from ftcore.io import atomic_write_h5ad

            atomic_write_h5ad(job.adata, job.demo_copy)  # the data the demo trained on, for inspection
        result = train_stage1(job.model, job.data, job.paths.stage1, job.run, {"data": job.contract})
        if result.best_path is None or not Path(result.best_path).exists():
            last = next((r["val_loss"] for r in reversed(result.history) if "val_loss" in r), None)
            raise UserError(f"stage 1 finished without a finite val_loss (last: {last}): the run diverged; "
                            f"lower --lr (now {job.run.lr:g})")
        if is_main_process():
            print(f"stage 1 done: best val_loss {result.best_metric} -> {result.best_path}\n"
                  f"next: {_stage2_command(args, result.best_path, job.contract, job.preset)}")
        return
    result = train_stage2(job.model, job.data, job.paths.stage2, job.run, {"data": job.contract})
    if is_main_process():
        job.model.save_complete_model(job.paths.complete, data=job.contract)
        import shlex

        # this run's data and run folder: predict / evaluate write beside the complete model
        where = shlex.join(_data_flags(args) + ["--checkpoint", str(job.paths.complete)]
                           + (["--log_dir", str(args.log_dir)] if str(args.log_dir) != "logs" else []))
        print(f"stage 2 done: best val_pearson {result.best_metric} -> complete model {job.paths.complete}\n"
              f"next: var-st predict {where}\n"
              f"      var-st evaluate {where}")
    wait_for_main()  # the other ranks return once complete_model.ckpt is written


def _stage1_checkpoint(args) -> tuple[Path, object, dict]:
    """--stage1_ckpt read (the one read of that file) and recognised: (path, its ModelFile, its metadata)."""
    from var_st.model import COMPLETE_KIND, STAGE1_KIND, read_stage_file

    path = Path(os.path.expandvars(str(args.stage1_ckpt).strip())).expanduser()
    if path.is_dir():
        inside = path / "best_vqvae.ckpt"
        raise UserError(f"--stage1_ckpt {path} is a directory; pass the checkpoint file"
                        + (f", e.g. {inside}" if inside.is_file() else " (best_vqvae.ckpt)"))
    stage1 = "the best_vqvae.ckpt written by --training_stage 1"
    mf = read_stage_file(path, STAGE1_KIND, args.trust_checkpoint, what="a var-st stage-1 checkpoint", hint=f"pass {stage1}",
                         other_kinds={COMPLETE_KIND: "{path} is a stage-2 / complete var-st checkpoint, not a stage-1 one; "
                                      f"--stage1_ckpt takes {stage1} (a complete model goes to predict / evaluate)"})
    if not mf.data_keys.get("gene_names"):
        raise UserError(f"{path} is not a var-st stage-1 checkpoint (no gene names inside); pass {stage1}")
    return path, mf, {**mf.extra, **mf.config, **mf.data_keys}


def _check_against_stage1(args, path: Path, extra: dict, given: dict, command) -> None:
    """Stage 2 takes the VQ-VAE (genes, codebook) from the stage-1 checkpoint: other values given now are
    errors, each ending with the complete stage-2 command of this run without the key (`command(key)`)."""
    n = int(extra.get("num_genes", len(extra["gene_names"])))
    if args.num_genes is not None and args.num_genes != n:
        raise UserError(f"--num_genes {args.num_genes}, but --stage1_ckpt {path} was trained on {n} genes; stage 2 "
                        "uses stage 1's genes: drop --num_genes or pass the matching stage-1 checkpoint")
    saved = dict(extra["vqvae_config"])
    for key, value in given.get("vqvae", {}).items():
        want = list(value) if isinstance(value, (list, tuple)) else value
        if key in saved and saved[key] != want:
            raise UserError(f"config sets vqvae.{key} = {value!r}, but --stage1_ckpt {path} was trained with "
                            f"{saved[key]!r}; stage 2 takes the VQ-VAE from the checkpoint: drop the vqvae "
                            f"settings (stage 1's are used), e.g. {command(f'vqvae.{key}')}")
    var_vocab = given.get("var", {}).get("vocab_size")
    if var_vocab is not None and var_vocab != saved.get("vocab_size"):
        raise UserError(f"config sets var.vocab_size = {var_vocab!r}, but the stage-1 codebook of {path} has "
                        f"{saved.get('vocab_size')} codes; they must match: drop var.vocab_size, e.g. "
                        f"{command('var.vocab_size')}")


def _announce(args, model, data, what: str, preset: str) -> None:
    from ftcore.distributed import is_main_process

    if not is_main_process():
        return
    info = model.get_model_info()
    print(f"{what}\n  data: {data.source}: {len(data)} spots, {len(data.gene_names)} genes, "
          f"histology {data.histology.shape[1]}-d; split {data.split_rule} "
          f"(train {len(data.split['train'])}, val {len(data.split['val'])}, test {len(data.split['test'])})\n"
          f"  model: preset {preset}: {info['total_parameters']:,} parameters ({info['trainable_parameters']:,} "
          f"trainable), scales {info['scale_sizes']} -> {info['sequence_length']} tokens, vocab {info['vocab_size']}")
    if args.debug:
        print(f"[debug] model info: {info}\n[debug] genes: {data.gene_names[:10]} ...")


def _complete_model(path: Path, trust: bool, device="cpu"):
    """A complete model from its checkpoint, read once; a stage-1 file is named with the flag that takes it."""
    from var_st.model import COMPLETE_KIND, STAGE1_KIND, TwoStageVARST, read_stage_file

    mf = read_stage_file(path, COMPLETE_KIND, trust, what="a complete var-st model",
                         hint="pass complete_model.ckpt written by training stage 2", other_kinds={
                             STAGE1_KIND: "{path} is a stage-1 (VQ-VAE only) checkpoint; train stage 2 with "
                                          "--stage1_ckpt {path} and load its complete_model.ckpt"})
    return TwoStageVARST.load_complete_model(path, device=device, checkpoint=mf)


@dataclass
class InferenceJob:
    """What predict / evaluate run on, every check passed (prepare_inference); nothing is written yet."""

    name: str
    checkpoint: Path
    model: TwoStageVARST
    adata: object
    data: SpotData
    device: object  # torch.device
    sampling: dict  # predict_expression keywords


def prepare_inference(args, *, need_expression: bool, split: bool, outputs: tuple[Path, ...]) -> InferenceJob:
    """The shared first half of predict / evaluate: every check, then the model and validated data.
    Data keys and split come from the checkpoint (the stage-1 run's) unless given on the command line."""
    from var_st.data import load_spots
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
    if split:
        _check_split_flags(args)
    device = resolve_device(_device(args.gpus))
    model = _complete_model(ckpt, args.trust_checkpoint)
    stored = _stored_contract(getattr(model, "checkpoint_extra", {}) or {})
    keys = _data_keys(args, stored)
    adata, source = _read_adata(args, name, path)
    split_kw = _split_options(args, stored, adata, keys["slide_key"], str(ckpt)) if split else {"split": False}
    data = load_spots(adata, source=source, genes=model.gene_names, need_expression=need_expression,
                      histology_dim=model.var_config.histology_dim, **keys, **split_kw)
    if split:
        _check_split(data, stored, _split_flags_given(args), str(ckpt),
                     "the evaluation would score spots the model was trained or selected on")
    return InferenceJob(name, ckpt, model, adata, data, device, sampling)


def cmd_predict(args) -> None:
    from ftcore.data import prediction_adata
    from ftcore.io import atomic_write_h5ad, claim_outputs
    from var_st.train import RunPaths
    from var_st.predict import predict_expression

    name, _ = _resolve_dataset(args)
    out = args.output if args.output is not None else opt.check_output_file(
        "--output", RunPaths(args.log_dir, name).predictions, (".h5ad",))
    job = prepare_inference(args, need_expression=False, split=False, outputs=(out,))
    ckpt, model, adata, data, device, s = job.checkpoint, job.model, job.adata, job.data, job.device, job.sampling
    claim_outputs(out)
    pred = predict_expression(model.to(device), data, **s)
    result = prediction_adata(pred, model.gene_names, adata, model="var-st", measured=data.expression)
    result.uns["var_st"] = {"checkpoint": str(ckpt), "units": "log1p(CP10k)",
                            **{k: v for k, v in s.items() if k != "batch_size"}}
    atomic_write_h5ad(result, out)
    measured = "layers['measured'] = the file's values of the same genes" if data.expression is not None \
        else f"no layers['measured']: {data.expression_note}"
    print(f"predicted {pred.shape[1]} genes for {pred.shape[0]} spots -> {out} (X = predictions, var_names = genes; "
          f"{measured})")


def read_predictions(path: Path, genes: list[str], obs_names: list[str]):
    """Predictions [spots, genes] of a `var-st predict` file, columns in `genes` order: X with var_names = genes
    (this version), or obsm['var_st_prediction'] with uns['var_st']['genes'] (files of older versions)."""
    import numpy as np

    from ftcore.data import check_values, dense
    from var_st.data import read_h5ad

    ad = read_h5ad(path)
    old = "var_st_prediction" in ad.obsm and "genes" in (ad.uns.get("var_st") or {})
    if not old and (ad.X is None or "prediction" not in ad.uns):
        raise UserError(f"{path} is not a predictions file (no uns['prediction']: X holds no predictions); "
                        "write it with var-st predict")
    names = [str(g) for g in (ad.uns["var_st"]["genes"] if old else ad.var_names)]
    index = {g: i for i, g in enumerate(names)}
    missing = [g for g in genes if g not in index]
    if missing:
        raise UserError(f"{path}: {len(missing)} of this model's {len(genes)} genes are not predicted there "
                        f"(e.g. {missing[0]!r}); write it with var-st predict and this checkpoint")
    if list(map(str, ad.obs_names)) != list(obs_names):
        raise UserError(f"{path} holds other spots than the --dataset file; predict on the same file")
    values = dense(ad.obsm["var_st_prediction"] if old else ad.X, np.float32)
    values = values[:, [index[g] for g in genes]]
    check_values(values, f"{path}: {'obsm[var_st_prediction]' if old else 'X'} (predictions)")
    return values


def cmd_evaluate(args) -> None:
    from ftcore.io import atomic_write_json, claim_outputs
    from var_st.plots import plot_evaluation
    from var_st.train import RunPaths
    from var_st.predict import _split_indices, evaluate, format_report, predict_expression

    name, _ = _resolve_dataset(args)
    out = args.output if args.output is not None else opt.check_output_file(
        "--output", RunPaths(args.log_dir, name).metrics, (".json",))
    plot = out.with_name("pred_vs_true.png")
    predictions = opt.check_input_file("--predictions", args.predictions, "predictions .h5ad") if args.predictions else None
    job = prepare_inference(args, need_expression=True, split=True, outputs=(out, plot))
    ckpt, model, data, device, s = job.checkpoint, job.model, job.data, job.device, job.sampling
    idx = _split_indices(data, args.split)
    if predictions is not None:
        pred = read_predictions(predictions, list(model.gene_names), data.obs_names)[idx]
    else:
        pred = predict_expression(model.to(device), data, idx=idx, **s)
    claim_outputs(out, plot)
    report, per_gene = evaluate(model, data, args.split, pred, per_gene=True)
    report.update({"checkpoint": str(ckpt), "data": data.source})
    atomic_write_json(out, report)
    plot_evaluation(pred, data.expression[idx], per_gene, report, plot)
    print(format_report(report) + f"\nmetrics -> {out}, figure -> {plot}")


def cmd_make_demo_data(args) -> None:
    from ftcore.io import atomic_write_h5ad, claim_outputs
    from var_st.synthetic import make_demo_adata

    sizes = {"seed": (args.seed, 0), "slides": (args.slides, 5), "grid": (args.grid, 18), "genes": (args.genes, 300),
             "histology_dim": (args.histology_dim, 1024)}
    if args.dataset == VISIUM:
        given = [k for k, (v, _) in sizes.items() if v is not None]
        if given:
            raise UserError(f"--{given[0]} sets the size of the synthetic data set; --dataset {VISIUM} is the 49 real "
                            "spots as they are: drop it")
        adata = builtin_adata(VISIUM)
        claim_outputs(args.output)
        atomic_write_h5ad(adata, args.output)
        print(f"wrote {adata.n_obs} spots x {adata.n_vars} genes (one Visium slide, obsm['histology'] = "
              f"{adata.obsm['histology'].shape[1]} H&E patch features) -> {args.output}")
        return
    v = {k: value if value is not None else default for k, (value, default) in sizes.items()}
    spots = v["slides"] * v["grid"]**2
    if spots * (v["genes"] + v["histology_dim"]) > 1e8:  # ~400 MB of float32
        raise UserError(f"--slides {v['slides']} x --grid {v['grid']}^2 = {spots:,} spots with {v['genes']} genes and "
                        f"{v['histology_dim']} features is too large for a demo file; make it smaller")
    adata = make_demo_adata(n_slides=v["slides"], grid=v["grid"], n_genes=v["genes"],
                            histology_dim=v["histology_dim"], seed=v["seed"])
    claim_outputs(args.output)
    atomic_write_h5ad(adata, args.output)
    print(f"wrote {adata.n_obs} spots x {adata.n_vars} genes ({v['slides']} slides) -> {args.output}")


def cmd_info(args) -> None:
    if Path(args.checkpoint).is_dir():
        raise UserError(f"{args.checkpoint} is a directory; pass the checkpoint file (complete_model.ckpt)")
    model = _complete_model(args.checkpoint, args.trust_checkpoint)
    for k, v in model.get_model_info().items():
        print(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}")


def cmd_demo(args) -> None:
    """The embedded end-to-end run, exactly the four commands a user would type."""
    from var_st.train import RunPaths

    name = DEMO_DATASETS[args.dataset]
    common = ["--log_dir", str(args.log_dir), "--seed", str(args.seed)] \
        + (["--gpus", str(args.gpus)] if args.gpus is not None else []) + (["--debug"] if args.debug else [])
    if name != DEMO:
        common = ["--dataset", name] + common
    paths = RunPaths(args.log_dir, name)
    # one slide: no slide can be held out, so the split is random spots, asked for explicitly
    split = ["--random_split"] if name == VISIUM else []
    steps = [["train", "--training_stage", "1", *split],
             ["train", "--training_stage", "2", "--stage1_ckpt", str(paths.stage1_ckpt)],
             ["predict"], ["evaluate", "--predictions", str(paths.predictions)]]
    if args.overwrite:
        steps = [step + ["--overwrite"] if step[0] == "train" else step for step in steps]
    for step in steps:
        print(f"\n$ var-st {' '.join(step + common)}", flush=True)
        COMMANDS[step[0]](build_parser().parse_args(step + common))


COMMANDS = {"train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate, "demo": cmd_demo,
            "make-demo-data": cmd_make_demo_data, "info": cmd_info}


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version"):
        argv = ["train"] + argv  # the user's-guide spelling: flags only means train
    args = build_parser().parse_args(argv or ["demo"])
    with oom_advice("--batch_size", getattr(args, "batch_size", None)):
        COMMANDS[args.command or "demo"](args)


if __name__ == "__main__":
    sys.exit(main())
