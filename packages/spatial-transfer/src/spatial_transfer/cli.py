"""spatial-transfer: Cell2Gene BulkModel -> SpatialModel transfer learning with cross-validation.

    spatial-transfer                          the demo: the whole flow on the embedded data, transfer vs scratch
    spatial-transfer --dataset visium-mouse-brain
                                              the same on the core's 49 real Visium spots + H&E (pseudo-bulk)
    spatial-transfer run --data DIR           bulk pretraining -> transfer -> CV on your data
    spatial-transfer pretrain --data DIR      bulk pretraining only
    spatial-transfer compare --data DIR       transfer strategies vs from-scratch on the same folds
    spatial-transfer predict --checkpoint best_hest_graph_model_fold_0.pt --data DIR
                                              a trained SpatialModel on new slides (expression optional)
                                              -> predictions.h5ad (X = predictions)
    spatial-transfer make-demo-data DIR [--dataset NAME]
                                              write a demo data set in the on-disk format

The guide's environment variables are read here, once: TRANSFER_STRATEGY, USE_TRANSFER_LEARNING,
FREEZE_BACKBONE, CV_MODE, LOO_HELDOUT. A command-line flag beats its variable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from ftcore import options as opt
from ftcore.cli import (ArgumentParser, add_allow_unloaded_frozen, add_compile, add_device, add_seed,
                        add_trust_checkpoint, add_version)
from ftcore.errors import UserError, cli_main, oom_advice

DEFAULT_OUTPUT = "runs/spatial-transfer"
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")

# The embedded demo's schedule: a few epochs of a small problem, sized for a 2-core CPU.
# Learning rates keep the guide's ordering (full <= frozen <= scratch) but are raised for the short
# schedule, each the best of those tried on the demo data (README, Measured; scratch diverges at 1e-2);
# the guide's own values (model.STRATEGY_LR) are the defaults for user data.
DEMO_PRESET = {
    "bulk": {"epochs": 12, "batch_size": 8, "lr": 1e-3},
    "spatial": {"epochs": 8, "batch_size": 8},
    "model": {"ff_dim": 256},
    "graph": {"window": 2},
}
DEMO_STRATEGY_LR = {"full": 1e-3, "frozen_backbone": 1e-3, "frozen_decoder": 1e-3, "scratch": 3e-3}
# The demo's strategy when neither --strategy nor the guide's variables pick one: the one that wins on the
# demo data, both metrics, 3 seeds (README, "Measured"). It is the guide's default too, at the demo's rate.
DEMO_STRATEGY = "full"
# the data sets a run without --data uses (--dataset): name -> the directory under --output they are written to
DATASETS = {"synthetic": "demo_data", "visium-mouse-brain": "visium_mouse_brain_data"}


def demo_preset(dataset: str) -> dict:
    if dataset == "visium-mouse-brain":
        from spatial_transfer.visium import PRESET

        return PRESET
    return DEMO_PRESET


# ------------------------------------------------------------------- environment + flags
@dataclass
class Setting:
    value: object
    source: str | None  # "flag", "env" or None (default)


def _env_bool(name: str, env: Mapping[str, str]) -> Setting:
    raw = env.get(name)
    if raw is None or raw == "":
        return Setting(None, None)
    if raw.lower() in TRUE:
        return Setting(True, "env")
    if raw.lower() in FALSE:
        return Setting(False, "env")
    raise UserError(f"{name}={raw!r} is not a valid value; allowed: true, false")


def _env_choice(name: str, allowed: tuple[str, ...], env: Mapping[str, str]) -> Setting:
    raw = env.get(name)
    if raw is None or raw == "":
        return Setting(None, None)
    if raw not in allowed:
        raise UserError(f"{name}={raw!r} is not a valid value; allowed: {', '.join(allowed)}")
    return Setting(raw, "env")


def _pick(flag, env_setting: Setting) -> Setting:
    return Setting(flag, "flag") if flag is not None else env_setting


def resolve_strategy(args, env: Mapping[str, str], default: str = "full") -> str:
    """Strategy from --strategy/--transfer/--freeze-backbone and the guide's variables (`default` when none says)."""
    from spatial_transfer.train import STRATEGIES

    if args.strategy is not None and args.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {args.strategy!r}; allowed: {', '.join(STRATEGIES)}")
    strategy = _pick(args.strategy, _env_choice("TRANSFER_STRATEGY", STRATEGIES, env))
    transfer = _pick(args.transfer, _env_bool("USE_TRANSFER_LEARNING", env))
    freeze = _pick(args.freeze_backbone, _env_bool("FREEZE_BACKBONE", env))

    def outranks(a: Setting, b: Setting) -> bool:  # flag beats variable; equal sources must agree
        return a.source == "flag" and b.source != "flag"

    if strategy.value is not None:
        if transfer.value is False and strategy.value != "scratch" and not outranks(strategy, transfer):
            if outranks(transfer, strategy):
                return "scratch"
            raise UserError(f"strategy {strategy.value!r} needs transfer learning but USE_TRANSFER_LEARNING/--no-transfer "
                            "turns it off; drop one of them (or use strategy scratch)")
        if freeze.value and strategy.value != "frozen_backbone" and not outranks(strategy, freeze):
            if outranks(freeze, strategy):
                return "frozen_backbone"
            raise UserError(f"FREEZE_BACKBONE/--freeze-backbone conflicts with strategy {strategy.value!r}; "
                            "use strategy frozen_backbone or drop the freeze setting")
        return str(strategy.value)
    if transfer.value is False:
        if freeze.value and freeze.source == transfer.source:
            raise UserError("FREEZE_BACKBONE=true needs transfer learning (the frozen layers would stay random); "
                            "set USE_TRANSFER_LEARNING=true or FREEZE_BACKBONE=false")
        if freeze.value and outranks(freeze, transfer):
            return "frozen_backbone"
        return "scratch"
    return "frozen_backbone" if freeze.value else default


def resolve_cv(args, env: Mapping[str, str]) -> tuple[str, list[str] | None]:
    from spatial_transfer.train import CV_MODES

    if args.cv is not None and args.cv not in CV_MODES:
        raise UserError(f"unknown CV mode {args.cv!r}; allowed: {', '.join(CV_MODES)}")
    mode = _pick(args.cv, _env_choice("CV_MODE", CV_MODES, env)).value or "kfold"
    raw = args.loo_heldout if args.loo_heldout is not None else env.get("LOO_HELDOUT")
    heldout = [s.strip() for s in raw.split(",") if s.strip()] if raw else None
    return str(mode), heldout


# ------------------------------------------------------------------- configuration
def build_config(args, demo: bool):
    """RunConfig: defaults < demo preset < --config file < --set overrides < flags (ftcore.config)."""
    from ftcore.config import apply_flags, from_dict, merge_layers

    from spatial_transfer.config import RunConfig

    layers = merge_layers(RunConfig, preset=demo_preset(args.dataset) if demo else None, file=args.config,
                          sets=list(args.set or []))
    explicit_genes = {k for k in ("bulk_genes", "spatial_genes") if k in (layers.data.get("model") or {})}
    cfg = from_dict(RunConfig, layers.data, source=layers.source)
    # --batch-size sizes both trainings; --epochs/--lr the spatial one (the bulk one has --bulk-epochs)
    cfg = apply_flags(cfg, {"spatial.epochs": args.epochs, "spatial.batch_size": args.batch_size, "spatial.lr": args.lr,
                            "bulk.epochs": getattr(args, "bulk_epochs", None), "bulk.batch_size": args.batch_size,
                            "folds": args.folds, "seed": args.seed, "device": args.device,
                            "compile": getattr(args, "compile", None), "progress": False if args.no_progress else None})
    return cfg, explicit_genes


def fit_genes(cfg, explicit: set[str], spatial=None, bulk=None) -> None:
    """Gene counts come from the data unless the config fixes them (then they must agree: data.py)."""
    model = cfg.model
    if spatial is not None and "spatial_genes" not in explicit:
        model = replace(model, spatial_genes=spatial.expr.shape[1])
    if bulk is not None and "bulk_genes" not in explicit:
        model = replace(model, bulk_genes=bulk.expr.shape[1])
    cfg.model = model


# ------------------------------------------------------------------- commands
def _demo_data(dataset: str, where: Path) -> Path | None:
    """The demo's data set for a run without --data: None when `where` holds it already (read there), else
    the temporary directory it is generated into now. It goes to `where` only after every check of the run,
    the run directory's too, has passed (Prepared.place_demo_data): a refused run writes nothing."""
    import tempfile

    from spatial_transfer import data as d

    if all((where / name).is_file() for name in (d.SPATIAL_FILE, d.SPATIAL_CELLS_FILE, d.BULK_FILE, d.BULK_CELLS_FILE)):
        return None
    staged = Path(tempfile.mkdtemp(prefix="spatial-transfer-demo-"))
    return write_dataset(dataset, staged)


def write_dataset(name: str, where: Path, seed: int = 0) -> Path:
    """A --dataset in the on-disk format: the embedded synthetic set, or the core's real Visium section."""
    if name == "visium-mouse-brain":
        from spatial_transfer.visium import write

        return write(where, seed=seed)
    from spatial_transfer import synthetic as demo

    return demo.write_demo_data(where, demo.DemoSpec() if seed == 0 else demo.DemoSpec(seed=seed))


def _read_bulk_checkpoint(path: str | None, trust: bool):
    """A user's bulk checkpoint (train.BulkWeights), read once, before any output exists; None without one."""
    if path is None:
        return None
    from spatial_transfer.train import SPATIAL_KIND, read_bulk_checkpoint

    weights = read_bulk_checkpoint(path, trust)
    if weights.kind == SPATIAL_KIND:  # a foreign bulk checkpoint (no kind) is welcome
        raise UserError(f"Error loading bulkmodel weights: {path} is a Cell2Gene SpatialModel checkpoint (a CV fold's); "
                        "--bulk-checkpoint takes the BulkModel of `spatial-transfer pretrain` "
                        "(bulk_pretrain/best_bulk_model.pt)")
    return weights


def _check_transferable(sd: dict, path: str, cfg, strategies: list[str], allow_unloaded_frozen: bool) -> None:
    """Dry run of the partial load: a checkpoint of which nothing fits is an error, not a silent scratch run,
    and a strategy that would freeze layers the checkpoint does not supply is refused now, before any output."""
    from ftcore.freezing import check_frozen_loaded
    from ftcore.loading import load_partial

    from spatial_transfer.model import FREEZE_STRATEGIES, SpatialModel

    model = SpatialModel(cfg.model)
    try:  # integer or NaN weights are refused by the core, named
        report = load_partial(model, sd, verbose=False, source=str(path), target="spatial model")
    except UserError as err:
        raise UserError(f"Error loading bulkmodel weights: {err}") from None
    if not report.loaded:
        first = report.shape_mismatch[0] if report.shape_mismatch else None
        why = (f"e.g. {first[0]}: spatial model {first[1]} vs bulk {first[2]}" if first
               else f"none of its {len(sd)} names are Cell2Gene layer names")
        raise UserError(f"Error loading bulkmodel weights: no tensor of {path} matches the spatial model ({why}); "
                        "pass a Cell2Gene BulkModel checkpoint trained with the same model sizes (--config)")
    for name in strategies:
        spec = FREEZE_STRATEGIES.get(name)
        if spec is not None:
            frozen = [n for n, _ in model.named_parameters() if not spec.is_trainable(n)]
            check_frozen_loaded(frozen, report, allow=allow_unloaded_frozen)


def _check_gene_overlap(spatial_genes: list[str], bulk_genes, where: str) -> None:
    """Bulk and spatial panels share genes in every real pairing: none in common is a naming mismatch."""
    if spatial_genes is None or not bulk_genes:
        return
    if not set(map(str, bulk_genes)) & set(spatial_genes):
        raise UserError(f"{where}: the bulk genes ({', '.join(map(str, list(bulk_genes)[:3]))}, ...) share no name with "
                        f"spatial.h5ad's ({', '.join(spatial_genes[:3])}, ...); use the same gene naming for both "
                        "(symbols vs Ensembl IDs?)")


def _output_paths(out: Path, strategies: list[str], need_bulk_pretrain: bool, n_folds: int) -> list[Path]:
    """What a run writes, checked as a whole now (a file where a result directory goes fails here, not after training)."""
    from spatial_transfer.train import BULK_CHECKPOINT, strategy_dirs

    dirs = [out / Path(BULK_CHECKPOINT).parent] if need_bulk_pretrain else []
    for name in strategies:
        dirs += list(strategy_dirs(out, name))
    for d in dirs:
        opt.check_output_dir("--output", d)
    files = [out / "comparison.txt", out / "comparison.json"]
    for name in strategies:
        log_dir = strategy_dirs(out, name)[0]
        files += [log_dir / "predictions.h5ad", log_dir / f"final_{n_folds}fold_results.json"]
    for f in files:
        if f.is_dir():
            raise UserError(f"{f} is a directory where the run writes a file; remove it or choose another --output")
    return dirs


@dataclass
class Prepared:
    """What a run / pretrain / compare command trains on, every check passed (prepare): validated data and
    config, the CV plan of each strategy (folds made once), the --bulk-checkpoint read once. Nothing is
    written yet; the demo's data, when generated now, wait in `staged` (place_demo_data)."""

    out: Path
    cfg: object  # train.RunConfig
    strategy: str | None  # `run`'s strategy (None for pretrain)
    cv_mode: str
    heldout: list[str] | None
    spatial: object  # data.SpatialData, or None (pretrain)
    bulk: object  # data.BulkData, or None (bulk weights not needed, or given as a checkpoint)
    bulk_weights: object  # train.BulkWeights of --bulk-checkpoint, or None
    demo: bool
    dataset: str  # the demo's data set (--dataset), when demo
    data_dir: Path  # where the data are (the demo's: where they go)
    folds: list  # the test samples of each fold (train.make_folds), [] for pretrain
    plans: dict = field(default_factory=dict)  # strategy -> train.CVPlan, all on `folds`
    staged: Path | None = None  # the demo's data, generated now: moved to data_dir by place_demo_data

    def place_demo_data(self) -> None:
        """After the run directory's checks: the generated demo data go to data_dir (rank 0; atomically)."""
        import shutil

        from ftcore.distributed import is_main_process

        if self.staged is None:
            return
        if is_main_process():
            from ftcore.io import claim_outputs

            claim_outputs(self.data_dir)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            for src in sorted(self.staged.iterdir()):
                part = self.data_dir / f".{src.name}.part"
                shutil.move(str(src), part)
                os.replace(part, self.data_dir / src.name)
            print(f"wrote the {self.dataset} demo data set to {self.data_dir}")
        shutil.rmtree(self.staged, ignore_errors=True)
        self.staged = None


def prepare(args, need_spatial: bool, need_bulk: bool | None = None, strategies: list[str] | None = None,
            allow_unloaded_frozen: bool = False) -> Prepared:
    """Everything validated once, before anything is written: env/flags, config, data (each file read once),
    gene counts, the CV folds, the bulk checkpoint (read once), the output paths."""
    from spatial_transfer import data as d

    out = Path(args.output)
    demo = args.data is None
    if not demo and args.dataset is not None:
        raise UserError(f"--dataset {args.dataset} and --data both name the data; give one of them")
    args.dataset = args.dataset or "synthetic"
    strategy = resolve_strategy(args, os.environ, default=DEMO_STRATEGY if demo else "full") if need_spatial else None
    cv_mode, heldout = resolve_cv(args, os.environ) if need_spatial else ("kfold", None)
    strategies = strategies or ([strategy] if strategy else [])
    if need_bulk is None:  # bulk data only matter when weights are transferred
        need_bulk = strategy != "scratch"
    cfg, explicit = build_config(args, demo)
    bulk_path = getattr(args, "bulk_checkpoint", None) if need_bulk else None
    bulk_weights = _read_bulk_checkpoint(bulk_path, args.trust_checkpoint)
    if not demo:
        for name in ((d.SPATIAL_FILE, d.SPATIAL_CELLS_FILE) if need_spatial else ()) + (
                (d.BULK_FILE, d.BULK_CELLS_FILE) if need_bulk and bulk_weights is None else ()):
            if not (Path(args.data) / name).exists():
                stem = Path(name).stem
                other = sorted(p.name for p in Path(args.data).glob(f"{stem}.*") if p.name != name)
                found = (f"; found {other[0]}: convert it to .h5ad (e.g. anndata.read_csv(...).write_h5ad(...))"
                         if other else "")
                raise UserError(f"{Path(args.data) / name} does not exist{found}; a data directory holds "
                                f"{', '.join((d.SPATIAL_FILE, d.SPATIAL_CELLS_FILE, d.BULK_FILE, d.BULK_CELLS_FILE))} "
                                "(see README; `spatial-transfer make-demo-data DIR` writes an example)")
    data_dir = Path(args.data) if not demo else out / DATASETS[args.dataset]
    staged = _demo_data(args.dataset, data_dir) if demo else None
    if demo:
        print(f"no --data given: running on the {args.dataset} demo data set ({data_dir})")
    prep = Prepared(out, cfg, strategy, cv_mode, heldout, None, None, bulk_weights, demo, args.dataset, data_dir,
                    [], {}, staged)
    with _drop_on_error(staged):
        _read_and_check(prep, args, explicit, strategies, need_spatial, need_bulk, allow_unloaded_frozen)
    return prep


@contextlib.contextmanager
def _drop_on_error(staged: Path | None):
    """The demo data generated into `staged` go with the command when it fails before they are placed."""
    try:
        yield
    except BaseException:
        if staged is not None:
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
        raise


def _read_and_check(prep: Prepared, args, explicit: set[str], strategies: list[str], need_spatial: bool,
                    need_bulk: bool, allow_unloaded_frozen: bool) -> None:
    """prepare's second half: each data file read once, gene counts, folds, bulk weights, output paths."""
    from ftcore.io import check_output_dir, claim_outputs

    from spatial_transfer import data as d

    cfg, bulk_weights = prep.cfg, prep.bulk_weights
    read_from = prep.staged or prep.data_dir
    spatial = d.read_spatial(read_from, cfg.model.in_dim) if need_spatial else None
    bulk = d.read_bulk(read_from, cfg.model.in_dim) if need_bulk and bulk_weights is None else None
    for part in (spatial, bulk):  # named where they are (or go), not where they were generated
        if part is not None:
            part.path = prep.data_dir
    prep.spatial, prep.bulk = spatial, bulk
    fit_genes(cfg, explicit, spatial, bulk)
    if spatial is not None:
        d.check_gene_count(spatial.expr.shape[1], cfg.model.spatial_genes, spatial.path, "spatial.h5ad", "spatial_genes")
        folds = None  # made once, by the first plan; every strategy of the command is tested on the same folds
        for name in strategies:
            prep.plans[name] = _plan(spatial, cfg, name, prep.cv_mode, prep.heldout, prep.demo, allow_unloaded_frozen,
                                     folds)
            folds = prep.folds = prep.plans[name].folds
    if bulk is not None:
        d.check_gene_count(bulk.expr.shape[1], cfg.model.bulk_genes, bulk.path, "bulk.h5ad", "bulk_genes")
        if spatial is not None:
            _check_gene_overlap(spatial.genes, bulk.genes, str(bulk.path / d.BULK_FILE))
    if bulk_weights is not None:
        if spatial is not None:
            _check_gene_overlap(spatial.genes, bulk_weights.genes, str(bulk_weights.path))
        _check_transferable(bulk_weights.state_dict, str(bulk_weights.path), cfg, strategies, args.allow_unloaded_frozen)
    _output_paths(prep.out, strategies, bulk is not None, len(prep.folds))
    claim_outputs(prep.out)  # from here a failure (a NaN loss too) removes what this run created
    check_output_dir(prep.out, flag="--output")  # full disk: said now, not after the bulk pretraining


def _plan(spatial, cfg, strategy: str, cv_mode: str, heldout, demo: bool, allow_unloaded_frozen: bool = False,
          folds: list | None = None):
    """A strategy's CV plan. `folds`: the command's folds when made already (its strategies share them);
    otherwise made here (train.make_folds: a plan that cannot be made is refused before any output)."""
    from spatial_transfer.model import STRATEGY_LR
    from spatial_transfer.train import CVPlan, make_folds

    lr = cfg.spatial.lr or (DEMO_STRATEGY_LR if demo else STRATEGY_LR)[strategy]
    if folds is None:
        folds = make_folds(spatial.samples, cv_mode, cfg.folds, heldout, cfg.seed)
    return CVPlan(strategy, cv_mode, [list(f) for f in folds], lr, cfg.seed, allow_unloaded_frozen=allow_unloaded_frozen)


def cmd_run(args) -> None:
    from ftcore.distributed import is_main_process
    from ftcore.io import atomic_write_json, atomic_write_text

    from spatial_transfer.train import cross_validate, format_comparison, log

    prep = prepare(args, need_spatial=True, allow_unloaded_frozen=args.allow_unloaded_frozen)
    strategy, plans = prep.strategy, prep.plans
    if prep.demo and strategy != "scratch":  # the demo shows the transfer beside its baseline: the same model from scratch
        plans["scratch"] = _plan(prep.spatial, prep.cfg, "scratch", prep.cv_mode, prep.heldout, True, folds=prep.folds)
    _open_runs(prep, args.overwrite)  # other settings: refused before anything is written
    log(f"strategy: {strategy}; CV: {prep.cv_mode}" + (f" ({', '.join(prep.heldout)})" if prep.heldout else "")
        + ("; then the scratch baseline on the same folds" if len(plans) > 1 else ""))
    bulk = _bulk_weights(prep, args) if strategy != "scratch" else None
    results = {name: cross_validate(prep.spatial, prep.cfg, plan, prep.out, None if name == "scratch" else bulk)
               for name, plan in plans.items()}
    if len(results) > 1 and is_main_process():
        table = format_comparison(results)
        log("\n=== Transfer vs from scratch (same folds) ===\n" + table)
        atomic_write_text(prep.out / "comparison.txt", table + "\n")
        atomic_write_json(prep.out / "comparison.json", _comparison_record(results))
        t, b = results[strategy], results["scratch"]
        log(f"\ndemo: transfer ({strategy}) gene correlation {t['gene_correlation']['mean']:.4f} vs from scratch "
            f"{b['gene_correlation']['mean']:.4f}; overall correlation {t['overall_correlation']['mean']:.4f} vs "
            f"{b['overall_correlation']['mean']:.4f}")
    _print_next(args, prep.out, strategy, len(plans[strategy].folds))


def _bulk_weights(prep: Prepared, args):
    """The BulkModel every fold transfers: --bulk-checkpoint (read by prepare), else pretrained now and read
    once (train.read_bulk_checkpoint): one read per command, not one per fold."""
    from spatial_transfer.train import pretrain_bulk, read_bulk_checkpoint

    if prep.bulk_weights is not None:
        return prep.bulk_weights
    return read_bulk_checkpoint(pretrain_bulk(prep.bulk, prep.cfg, prep.out), args.trust_checkpoint)


def _open_runs(prep: Prepared, overwrite: bool) -> None:
    """The run directory contract (ftcore.rundir) for each strategy's CV and the bulk pretraining of this run:
    every part is checked first (a part of other settings is refused, naming the changed keys, with nothing
    written: the demo's data neither), then the demo data are put in place and the parts started."""
    with _drop_on_error(prep.staged):
        _check_and_start(prep, overwrite)


def _check_and_start(prep: Prepared, overwrite: bool) -> None:
    from ftcore.rundir import file_identity

    from spatial_transfer.train import bulk_record, open_bulk_run, open_strategy_run, resumable_folds

    out, cfg, staged = prep.out, prep.cfg, prep.staged
    given = prep.bulk_weights.path if prep.bulk_weights is not None else None
    pretrain_here = prep.bulk is not None and given is None and any(name != "scratch" for name in prep.plans)
    source = (bulk_record(cfg, prep.data_dir, staged) if pretrain_here
              else {"checkpoint": file_identity(given)} if given else None)
    runs = [open_strategy_run(out, cfg, plan, prep.data_dir, None if name == "scratch" else source, overwrite, staged)
            for name, plan in prep.plans.items()] if prep.spatial is not None else []
    if pretrain_here or prep.spatial is None:
        runs.append(open_bulk_run(out, cfg, prep.data_dir, overwrite, staged))
    prep.place_demo_data()
    for run in runs:
        run.start()
    for plan in prep.plans.values():
        resumable_folds(out, cfg, plan)


def _comparison_record(results: dict) -> dict:
    return {k: {m: v[m] for m in ("overall_correlation", "gene_correlation", "test_loss", "lr")} for k, v in results.items()}


def _print_next(args, out: Path, strategy: str, n_folds: int) -> None:
    """The command that uses what the run wrote, complete (it runs as printed)."""
    import shlex

    from spatial_transfer.train import log, strategy_dirs

    ckpt = strategy_dirs(out, strategy)[1] / "best_hest_graph_model_fold_0.pt"
    data = Path(args.data) if args.data is not None else out / DATASETS[args.dataset]
    cmd = ["spatial-transfer", "predict", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out / "predict")]
    if args.trust_checkpoint:
        cmd.append("--trust-checkpoint")
    log(f"next: {shlex.join(cmd)}   # fold 0's model (of {n_folds}) on slides with or without expression")


def cmd_pretrain(args) -> None:
    from spatial_transfer.train import pretrain_bulk

    prep = prepare(args, need_spatial=False, need_bulk=True)
    _open_runs(prep, args.overwrite)
    pretrain_bulk(prep.bulk, prep.cfg, prep.out)


def cmd_compare(args) -> None:
    from ftcore.distributed import is_main_process
    from ftcore.io import atomic_write_json, atomic_write_text

    from spatial_transfer.train import STRATEGIES, cross_validate, format_comparison

    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not names:
        raise UserError(f"--strategies {args.strategies!r} names no strategy; give a comma-separated list of: "
                        f"{', '.join(STRATEGIES)}")
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise UserError(f"unknown strategy {unknown[0]!r} in --strategies; allowed: {', '.join(STRATEGIES)}")
    twice = sorted({s for s in names if names.count(s) > 1})
    if twice:
        raise UserError(f"--strategies names {twice[0]!r} twice; each strategy is compared once")
    args.strategy = names[0]  # validated env/flags; the CV plan is shared by all strategies
    prep = prepare(args, need_spatial=True, need_bulk=any(s != "scratch" for s in names), strategies=names,
                   allow_unloaded_frozen=args.allow_unloaded_frozen)
    _open_runs(prep, args.overwrite)
    bulk = _bulk_weights(prep, args) if any(s != "scratch" for s in names) else None
    results = {}
    for name, plan in prep.plans.items():
        results[name] = cross_validate(prep.spatial, prep.cfg, plan, prep.out, None if name == "scratch" else bulk)
    table = format_comparison(results)
    if is_main_process():
        print("\n=== Transfer vs from scratch (same folds) ===\n" + table)
        atomic_write_text(prep.out / "comparison.txt", table + "\n")
        atomic_write_json(prep.out / "comparison.json", _comparison_record(results))


def cmd_predict(args) -> None:
    from ftcore.artefact import load_model
    from ftcore.config import from_dict
    from ftcore.io import check_output_dir, claim_outputs
    from ftcore.loading import load_partial

    from spatial_transfer.data import GraphConfig, read_spatial
    from spatial_transfer.model import Cell2GeneConfig, SpatialModel
    from spatial_transfer.train import BULK_KIND, SPATIAL_KIND, legacy_header
    from spatial_transfer.predict import predict_spatial

    where = ("pass a checkpoints_transfer_<strategy>/best_hest_graph_model_fold_<k>.pt written by "
             "`spatial-transfer run`")
    mf = load_model(args.checkpoint, kind=SPATIAL_KIND, trust=args.trust_checkpoint, legacy=legacy_header,
                    require=("genes",), what="a spatial-transfer checkpoint", hint=where,
                    other_kinds={BULK_KIND: f"{{path}} is a Cell2Gene BulkModel checkpoint; {where}"})
    if not mf.config:
        raise UserError(f"{args.checkpoint}: a SpatialModel checkpoint without 'model_config' "
                        "(written by another version, or edited?); use one written by `spatial-transfer run`")
    cfg = from_dict(Cell2GeneConfig, mf.config, source=str(args.checkpoint))
    graph = from_dict(GraphConfig, mf.extra.get("graph", {}), source=str(args.checkpoint))
    out_file = Path(args.output) / "predictions.h5ad"
    if out_file.is_dir():
        raise UserError(f"{out_file} is a directory where predict writes its file; remove it or choose another --output")
    opt.check_output_file("--output", out_file, (".h5ad",))
    genes = [str(g) for g in mf.data_keys["genes"]]  # the data contract of the run: predictions are of these genes
    if len(genes) != cfg.spatial_genes:
        raise UserError(f"{args.checkpoint}: its gene list has {len(genes)} names for a model of {cfg.spatial_genes} "
                        "genes (edited?); use the checkpoint as `spatial-transfer run` wrote it")
    # expression is optional: a histology-only slide is predicted; measured model genes (any order) are evaluated
    spatial = read_spatial(args.data, cfg.in_dim, model_genes=genes)
    model = SpatialModel(cfg)
    absent = [k for k in model.state_dict() if k not in mf.state]
    if absent:
        raise UserError(f"{args.checkpoint}: {len(absent)} tensors of the SpatialModel it describes are missing (first: "
                        f"{absent[0]}); use the checkpoint as `spatial-transfer run` wrote it")
    # strict: every tensor, of the right shape and kind (integer or NaN weights refused by name)
    load_partial(model, mf.state, strict=True, source=str(args.checkpoint), target="spatial model", verbose=False)
    claim_outputs(args.output)  # the directory too, when predict creates it
    out = check_output_dir(args.output, flag="--output")
    predict_spatial(spatial, model, genes, graph, out / out_file.name, batch_size=args.batch_size, device=args.device,
                    model_name=f"spatial-transfer SpatialModel ({mf.extra.get('strategy', '?')}) {args.checkpoint}")


def cmd_make_demo_data(args) -> None:
    from ftcore.io import claim_outputs

    claim_outputs(args.dir)
    out = write_dataset(args.dataset, Path(args.dir), seed=args.seed)
    print(f"wrote the {args.dataset} data set to {out}")


# ------------------------------------------------------------------- parser
FILE_SUFFIXES = (".h5ad", ".csv", ".tsv", ".txt", ".json", ".pt", ".pth", ".ckpt", ".npy", ".png", ".yaml", ".toml")


def run_dir(flag: str):
    """An argparse `type=` for a run directory: opt.output_dir, and no file name where a directory goes."""
    def parse(text: str) -> Path:
        if not text.strip():  # Path("") is "." (the working directory): never what an empty value meant
            raise UserError(f"{flag} is empty; give a directory")
        path = opt._path(text)
        if not path.exists():  # said as "output directory ... not writable", the run's wording
            here = path.parent
            while not here.exists() and here.parent != here:
                here = here.parent
            if not here.is_dir():
                raise UserError(f"output directory {path} is not writable ({here} is a file, so nothing can be created "
                                f"inside it); choose another with {flag}")
            if not os.access(here, os.W_OK | os.X_OK):
                raise UserError(f"output directory {path} is not writable ({here} is read-only or owned by another "
                                f"user); choose another with {flag}")
        path = opt.check_output_dir(flag, text)
        if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
            raise UserError(f"{flag} {path} looks like a file name, but {flag} is the directory the results go into; "
                            f"give a directory (e.g. {path.with_suffix('')})")
        return path

    return parse


def data_dir(flag: str):
    """An argparse `type=` for a data directory: it must exist and be a directory (not one of its files)."""

    def parse(text: str) -> Path:
        if not text.strip():
            raise UserError(f"{flag} is empty; give the data directory")
        path = opt._path(text)
        if path.is_file():
            raise UserError(f"{flag} {path} is a file; {flag} is the directory holding spatial.h5ad, "
                            f"spatial_cells.h5ad, bulk.h5ad and bulk_cells.h5ad (e.g. {path.parent})")
        if not path.exists():
            raise UserError(f"{flag} {path} does not exist{opt._near_names(path)}; "
                            "`spatial-transfer make-demo-data DIR` writes an example")
        return path

    return parse


def _common(p: argparse.ArgumentParser, spatial: bool) -> None:
    p.add_argument("--data", type=data_dir("--data"),
                   help="data directory (spatial.h5ad, spatial_cells.h5ad, bulk.h5ad, bulk_cells.h5ad); "
                        "default: the embedded demo data")
    p.add_argument("--dataset", choices=tuple(DATASETS),
                   help="the data set used without --data: synthetic (default; the embedded demo) or "
                        "visium-mouse-brain (49 real Visium spots + H&E, with pseudo-bulk: see README)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, type=run_dir("--output"),
                   help=f"run directory (default {DEFAULT_OUTPUT})")
    p.add_argument("--config", type=opt.input_file("--config", "YAML/TOML config"),
                   help="YAML/TOML with sections model, graph, bulk, spatial (see README)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, e.g. spatial.epochs=20")
    p.add_argument("--epochs", type=opt.positive_int("--epochs"), help="spatial training epochs per fold (guide: 70)")
    p.add_argument("--bulk-epochs", type=opt.positive_int("--bulk-epochs"), help="bulk pretraining epochs")
    p.add_argument("--batch-size", type=opt.positive_int("--batch-size"),
                   help="graphs per batch and per process (guide: 16)")
    p.add_argument("--lr", type=opt.number("--lr", float, gt=0),
                   help="learning rate (default: the strategy's: full 1e-6, frozen 1e-5, scratch 1e-4)")
    add_seed(p, "the splits, the initialisation and the batches", said="42")
    add_device(p, default=None, said="auto")
    add_trust_checkpoint(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="--output holds a run of other settings (bulk pretraining or a strategy's CV): delete that "
                        "part and start it fresh (without it such a run is refused, naming the changed keys; the "
                        "same settings resume)")
    add_compile(p, default="off", why="; off by default here: the graph batches change shape every step, so a short "
                "run spends longer recompiling than it saves (try on for long runs)")
    if spatial:
        p.add_argument("--bulk-checkpoint", type=checkpoint_file("--bulk-checkpoint", "BulkModel checkpoint"),
                       help="use this BulkModel checkpoint instead of pretraining one")
        add_allow_unloaded_frozen(p)
        p.add_argument("--cv", help="kfold or loo (env CV_MODE; default kfold)")
        p.add_argument("--folds", type=opt.number("--folds", int, ge=2), help="number of k-fold folds (default 10)")
        p.add_argument("--loo-heldout", help="comma-separated samples to hold out in LOO (env LOO_HELDOUT)")
    else:
        p.set_defaults(folds=None, cv=None, loo_heldout=None, allow_unloaded_frozen=False)


def checkpoint_file(flag: str, what: str):
    """opt.input_file, except that an empty file is left to the checkpoint reader (its message says more)."""
    check = opt.input_file(flag, what)

    def parse(text: str) -> Path:
        path = opt._path(text)
        if str(text).strip() and path.is_file() and path.stat().st_size == 0:
            return path
        return check(text)

    return parse


NUMERIC_FLAGS = ("--lr", "--seed", "--epochs", "--bulk-epochs", "--batch-size", "--folds")


def _attach_negative_numbers(argv: list[str]) -> list[str]:
    """`--lr -1e-4` -> `--lr=-1e-4`: argparse takes '-1e-4' (and '-inf') for an option and says only
    'expected one argument'; attached, the typed option says what is wrong with the number."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in NUMERIC_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            try:
                float(argv[i + 1])
            except ValueError:
                pass
            else:
                out.append(f"{a}={argv[i + 1]}")
                i += 2
                continue
        out.append(a)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="spatial-transfer", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="Run `spatial-transfer` alone for the demo; see <command> --help.")
    add_version(parser, "spatial-transfer")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="bulk pretraining -> transfer -> cross-validation")
    _common(run, spatial=True)
    run.add_argument("--strategy", help="full, frozen_backbone, frozen_decoder or scratch (env TRANSFER_STRATEGY)")
    run.add_argument("--transfer", action=argparse.BooleanOptionalAction, default=None,
                     help="load bulk weights (env USE_TRANSFER_LEARNING; --no-transfer = scratch)")
    run.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                     help="freeze GNN + feature projection (env FREEZE_BACKBONE)")
    run.set_defaults(func=cmd_run)
    pre = sub.add_parser("pretrain", help="bulk pretraining only (BulkModel checkpoint)")
    _common(pre, spatial=False)
    pre.set_defaults(func=cmd_pretrain, strategy=None, transfer=None, freeze_backbone=None)
    cmp_ = sub.add_parser("compare", help="transfer strategies vs from scratch on the same folds, one table")
    _common(cmp_, spatial=True)
    cmp_.add_argument("--strategies", default="full,frozen_backbone,scratch",
                      help="comma-separated strategies (default full,frozen_backbone,scratch)")
    cmp_.set_defaults(func=cmd_compare, strategy=None, transfer=None, freeze_backbone=None)
    pred = sub.add_parser("predict", help="a trained SpatialModel on slides (expression optional) -> predictions.h5ad "
                                           "(X = predictions)")
    pred.add_argument("--checkpoint", required=True, type=checkpoint_file("--checkpoint", "SpatialModel checkpoint"),
                      help="best_hest_graph_model_fold_<k>.pt of a run")
    pred.add_argument("--data", required=True, type=data_dir("--data"),
                      help="directory with spatial.h5ad (spots; expression optional) and spatial_cells.h5ad")
    pred.add_argument("--output", default=DEFAULT_OUTPUT + "/predict", type=run_dir("--output"),
                      help="where predictions.h5ad goes")
    pred.add_argument("--batch-size", type=opt.positive_int("--batch-size"), default=16)
    add_device(pred)
    add_trust_checkpoint(pred)
    pred.set_defaults(func=cmd_predict)
    demo = sub.add_parser("make-demo-data", help="write the embedded demo data set to DIR")
    demo.add_argument("dir", type=run_dir("DIR"))
    add_seed(demo, "the generated data", default=0)
    demo.add_argument("--dataset", choices=tuple(DATASETS), default="synthetic",
                      help="synthetic (default) or visium-mouse-brain (the core's real 49-spot section)")
    demo.set_defaults(func=cmd_make_demo_data)
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["run"] + argv  # no command: the whole flow (on the demo data unless --data)
    args = build_parser().parse_args(_attach_negative_numbers(argv))
    with oom_advice("--batch-size", getattr(args, "batch_size", None)):
        args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
