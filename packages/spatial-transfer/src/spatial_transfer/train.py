"""Bulk pretraining, bulk -> spatial transfer, and cross-validation (all training via ftcore's Trainer).

Output layout under the run directory (names from the Cell2Gene transfer guide):

    bulk_pretrain/best_bulk_model.pt             BulkModel checkpoint ({"model", "extra"})
    log_normalized_transfer_<strategy>/          per strategy ("log_normalized/" from scratch)
        fold_<k>_metrics.json, fold_<k>_predictions.npy, fold_<k>_training_curve.png, fold_<k>_pred_vs_true.png,
        temp_fold_results.json (rewritten after each fold), final_<n>fold_results.json,
        predictions.h5ad (X = out-of-fold predictions, layers["measured"] = observed: ftcore.data.prediction_adata)
    checkpoints_transfer_<strategy>/best_hest_graph_model_fold_<k>.pt   ("checkpoints/" from scratch)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from ftcore.artefact import kind_of, model_header
from ftcore.checkpoint import extract_state_dict, read_checkpoint
from ftcore.distributed import is_main_process
from ftcore.errors import UserError
from ftcore.freezing import apply_freezing, resolve_strategy
from ftcore.io import atomic_write_json, check_output_dir
from ftcore.loading import LoadReport, load_partial
from ftcore.metrics import pearson_mean_gene, pearson_overall
from ftcore.training import TrainConfig, Trainer, move_to

from spatial_transfer.data import BulkData, SpatialData, bulk_items, collate, spatial_items
from spatial_transfer.model import (
    FREEZE_STRATEGIES,
    STRATEGY_LR,
    BulkModel,
    SpatialModel,
)
from spatial_transfer.config import RunConfig, TrainSettings

STRATEGIES = tuple(FREEZE_STRATEGIES)
CV_MODES = ("kfold", "loo")
BULK_CHECKPOINT = "bulk_pretrain/best_bulk_model.pt"


def log(*args, **kwargs) -> None:
    """print on rank 0 only (under torchrun every rank runs the same code)."""
    if is_main_process():
        print(*args, **{"flush": True, **kwargs})


def strategy_dirs(out: Path, strategy: str) -> tuple[Path, Path]:
    """(log dir, checkpoint dir) of a strategy: the guide's names; from scratch = the plain ones."""
    if strategy == "scratch":
        return out / "log_normalized", out / "checkpoints"
    return out / f"log_normalized_transfer_{strategy}", out / f"checkpoints_transfer_{strategy}"


# ------------------------------------------------------------------------------ loss, eval
def mse_loss(model, batch):
    pred = model(batch)
    return torch.nn.functional.mse_loss(pred.float(), batch.y.float())


def predict(model, loader) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """-> predictions [N, G], targets [N, G], spot row ids per batch (spatial) in loader order."""
    device = next(model.parameters()).device
    preds, trues, ids = [], [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = move_to(batch, device)
            preds.append(model(batch).float().cpu())
            trues.append(batch.y.float().cpu())
            if "spot_ids" in batch:
                ids.append(batch.spot_ids.cpu())
    return torch.cat(preds), torch.cat(trues), ids


def evaluate(model, loader) -> dict[str, float]:
    pred, true, _ = predict(model, loader)
    return {"val_loss": float(torch.nn.functional.mse_loss(pred, true)),
            "val_overall_corr": pearson_overall(pred, true), "val_gene_corr": pearson_mean_gene(pred, true)}


def init_output_bias(model, items) -> None:
    """Start the output layer at the training mean profile: epochs then go to variation, not gene means."""
    mean = torch.cat([it.y for it in items]).float().mean(0)
    with torch.no_grad():
        model.output_projection[-1].bias.copy_(mean)


def _train_config(settings: TrainSettings, cfg: RunConfig, out: Path, lr: float, seed: int, has_val: bool, **names) -> TrainConfig:
    # device/compile/progress from the run, the rest from the job's section (same names as the Trainer's)
    return TrainConfig.from_sections(cfg, settings, output_dir=str(out), lr=lr, seed=seed,
                                     monitor="val_loss" if has_val else "train_loss",
                                     patience=settings.patience if has_val else None, **names)


# ------------------------------------------------------------------------------ model files
# The two kinds of model file (ftcore.artefact); extra["kind"] keeps the marker earlier versions wrote.
BULK_KIND, SPATIAL_KIND = "spatial-transfer/bulk-model", "spatial-transfer/spatial-model"
OLD_MARKERS = {"Cell2Gene BulkModel": BULK_KIND, "Cell2Gene SpatialModel": SPATIAL_KIND}


def _header(kind: str, cfg: RunConfig, genes) -> dict:
    return model_header(kind=kind, config=asdict(cfg.model), data_keys={"genes": list(genes)},
                        package="spatial-transfer")


def legacy_header(obj: dict) -> dict | None:
    """A file of an earlier version (no model header): extra["kind"] named it, extra held config and genes."""
    extra = obj.get("extra")
    if not isinstance(extra, dict) or extra.get("kind") not in OLD_MARKERS:
        return None
    data_keys = {"genes": extra["genes"]} if isinstance(extra.get("genes"), list) else {}
    config = extra["model_config"] if isinstance(extra.get("model_config"), dict) else {}
    return {"kind": OLD_MARKERS[extra["kind"]], "config": config, "data_keys": data_keys}


# ------------------------------------------------------------------------------ bulk
def pretrain_bulk(bulk: BulkData, cfg: RunConfig, out: Path) -> Path:
    """Train the BulkModel (10% of samples validate); -> its best checkpoint. Resumes if killed.
    `bulk` and `cfg` are validated (cli.prepare: the gene count too)."""
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(bulk.sample_names))
    n_val = max(1, round(0.1 * len(order))) if len(order) >= 2 else 0
    val, train = order[:n_val], order[n_val:]
    log(f"=== Bulk pretraining: {len(train)} train / {len(val)} validation samples ===")
    torch.manual_seed(cfg.seed)
    model = BulkModel(cfg.model)
    ckpt_dir = out / Path(BULK_CHECKPOINT).parent
    tc = _train_config(cfg.bulk, cfg, ckpt_dir, cfg.bulk.lr or STRATEGY_LR["scratch"], cfg.seed, n_val > 0,
                       best_name=Path(BULK_CHECKPOINT).name)
    extra = {"model_config": asdict(cfg.model), "genes": list(bulk.genes), "kind": "Cell2Gene BulkModel"}
    train_items = bulk_items(bulk, cfg.graph, train)
    init_output_bias(model, train_items)
    trainer = Trainer(model, tc, train_items, bulk_items(bulk, cfg.graph, val),
                      loss_fn=mse_loss, eval_fn=evaluate, collate_fn=collate, extra_state=extra,
                      artefact=_header(BULK_KIND, cfg, bulk.genes))
    result = trainer.fit()
    best = result.best_path if result.best_path is not None and result.best_path.exists() else result.last_path
    log(f"BulkModel checkpoint: {best}")
    return best


@dataclass
class BulkWeights:
    """A BulkModel checkpoint read once (read_bulk_checkpoint): what every fold of every strategy transfers."""

    path: Path
    state_dict: dict
    genes: list | None  # the bulk panel's gene names, when the checkpoint records them
    kind: str | None  # the file's kind (ftcore.artefact.kind_of): BULK_KIND, SPATIAL_KIND (a fold's: refused) or None (foreign)


def read_bulk_checkpoint(path: str | Path, trust_pickle: bool = False) -> BulkWeights:
    """Read a BulkModel checkpoint (the one read of that file in a command)."""
    try:
        ckpt = read_checkpoint(path, trust_pickle=trust_pickle)
        sd = extract_state_dict(ckpt, source=str(path))
    except UserError as err:
        raise UserError(f"Error loading bulkmodel weights: {err}") from None
    extra = ckpt.get("extra") if isinstance(ckpt, dict) else None
    extra = extra if isinstance(extra, dict) else {}
    return BulkWeights(Path(path), sd, extra.get("genes"), kind_of(ckpt, legacy_header))  # None: a foreign file


def load_bulk_weights(model: SpatialModel, bulk: BulkWeights, spatial_genes: list[str] | None = None) -> LoadReport:
    """Partial load of a BulkModel checkpoint (read_bulk_checkpoint) into the SpatialModel, with the guide's report.

    With `spatial_genes`, the bulk head's rows of the genes both panels share are copied into the spatial
    head by gene name (the head as a whole differs in shape and is skipped by load_partial): what the bulk
    model learnt about each shared gene is kept; genes only the spatial panel has start at random."""
    sd = bulk.state_dict
    log("=== Loading Pretrained Weights from Bulk Model ===")
    log(f"Bulk model path: {bulk.path}")
    log(f"Loaded state dict with {len(sd)} keys\n")
    report = load_partial(model, sd, source="bulk", target="spatial model", verbose=is_main_process())
    if not report.loaded:
        raise UserError(f"Error loading bulkmodel weights: no tensor of {bulk.path} matches the spatial model "
                        "(0 loaded); pass a Cell2Gene BulkModel checkpoint with the same model sizes")
    if spatial_genes is not None:
        bulk_genes = bulk.genes
        n = transfer_gene_rows(model, sd, bulk_genes, spatial_genes) if bulk_genes else 0
        if bulk_genes and n:
            log(f"✓ output_projection.1: the rows of {n} of {len(spatial_genes)} genes (those the bulk panel shares) "
                "copied from the bulk head by gene name")
        elif not bulk_genes:
            log("ℹ the bulk checkpoint names no genes: the spatial head starts at random for every gene")
    return report


def transfer_gene_rows(model: SpatialModel, bulk_sd: dict, bulk_genes: list, spatial_genes: list[str]) -> int:
    """Copy output_projection.1.weight rows of shared genes (by name) from the bulk head; -> genes copied."""
    key = "output_projection.1.weight"
    head = model.output_projection[-1].weight
    source = bulk_sd.get(key)
    if source is None or source.ndim != 2 or source.shape[1] != head.shape[1] or source.shape[0] != len(bulk_genes):
        return 0
    row_of = {str(g): i for i, g in enumerate(bulk_genes)}
    pairs = [(j, row_of[g]) for j, g in enumerate(spatial_genes) if g in row_of]
    if pairs:
        dst, src = (torch.tensor(x) for x in zip(*pairs))
        with torch.no_grad():
            head[dst] = source[src].to(head.dtype)
    return len(pairs)


# ------------------------------------------------------------------------------ CV plan
def make_folds(samples: list[str], cv_mode: str, n_folds: int, heldout: list[str] | None, seed: int) -> list[list[str]]:
    """Test samples of each fold; a sample is never split across folds (no spot leakage).

    Every fold leaves at least one sample to train on: a plan that cannot is refused here, before any output."""
    if cv_mode == "loo":
        if len(samples) < 2:
            raise UserError(f"leave-one-out needs at least 2 samples (slides) but the data have {len(samples)} "
                            f"({', '.join(samples)}): holding it out leaves nothing to train on; add slides")
        if heldout:
            unknown = [s for s in heldout if s not in samples]
            if unknown:
                close = [s for s in samples if s.lower() == unknown[0].strip().lower()]  # Slide00 for slide00
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"LOO_HELDOUT names unknown sample {unknown[0]!r}; samples: {', '.join(samples)}{hint}")
            twice = sorted({s for s in heldout if heldout.count(s) > 1})
            if twice:
                raise UserError(f"LOO_HELDOUT names sample {twice[0]!r} twice; list each held-out sample once")
            return [[s] for s in heldout]
        return [[s] for s in samples]
    if heldout:
        raise UserError("LOO_HELDOUT / --loo-heldout only applies with CV_MODE=loo; unset it or use loo")
    if n_folds < 2:
        raise UserError(f"--folds must be >= 2 for k-fold cross-validation, got {n_folds}")
    if len(samples) < 2:
        raise UserError(f"k-fold cross-validation needs at least 2 samples (slides) but the data have {len(samples)} "
                        f"({', '.join(samples)}): a held-out fold would leave nothing to train on; add slides")
    if n_folds > len(samples):
        raise UserError(f"{n_folds} folds but only {len(samples)} samples (folds split by sample); "
                        f"pass --folds {len(samples)} or fewer, or use CV_MODE=loo")
    order = np.random.default_rng(seed).permutation(len(samples))
    return [sorted(samples[i] for i in part) for part in np.array_split(order, n_folds)]


def _validation_samples(train: list[str], seed: int) -> list[str]:
    if len(train) < 2:
        return []
    n = max(1, round(0.1 * len(train)))
    return sorted(np.random.default_rng(seed).choice(train, size=n, replace=False).tolist())


@dataclass
class CVPlan:
    strategy: str
    cv_mode: str
    folds: list[list[str]]
    lr: float
    seed: int
    allow_unloaded_frozen: bool = False  # --allow-unloaded-frozen: freeze what the bulk model did not supply

    def key(self, cfg: RunConfig) -> dict:
        """What must not change between a run and its resumption."""
        model = asdict(cfg.model)
        if self.strategy == "scratch":  # the bulk model's sizes play no part
            model = {k: v for k, v in model.items() if not k.startswith("bulk_")}
        key = {"strategy": self.strategy, "cv_mode": self.cv_mode, "folds": self.folds, "lr": self.lr,
               "seed": self.seed, "model": model, "graph": asdict(cfg.graph), "train": asdict(cfg.spatial)}
        if self.strategy != "scratch":
            key["head_from_bulk"] = cfg.head_from_bulk
        return key


# --- the run directory (ftcore.rundir) --------------------------------------------------------------------
# bulk_pretrain/ and each strategy's log_normalized*/ hold run_config.yaml: what shapes that part's result (the
# CV plan, model and graph sizes, training settings, the data files by path, size and sha256, the bulk model it
# transfers from). A rerun resumes a part only when its record is the same; --overwrite starts that part fresh.
RUN_CONFIG = "run_config.yaml"
# what does not shape a result: how often resume points are written (where it runs is not in the records)
RESUME_IGNORES = ("train.ckpt_every_steps",)


def data_files(data_dir: Path, names: tuple[str, ...], staged: Path | None = None) -> list[dict]:
    """The run record's identity (ftcore.rundir.file_identity) of data_dir/<name>. `staged`: the directory
    the files are in until the run-directory checks pass (the demo's, generated now): hashed there, named
    where they go."""
    from ftcore.rundir import file_identity

    found = []
    for name in names:
        ident = file_identity(Path(staged or data_dir) / name)
        if staged is not None:
            ident["path"] = str((Path(data_dir) / name).expanduser().absolute())
        found.append(ident)
    return found


def bulk_record(cfg: RunConfig, data_dir: Path, staged: Path | None = None) -> dict:
    """What shapes the BulkModel: its sizes (not the spatial head's), graph, training settings, seed, the bulk files."""
    from spatial_transfer.data import BULK_CELLS_FILE, BULK_FILE

    model = {k: v for k, v in asdict(cfg.model).items() if k != "spatial_genes"}
    return {"model": model, "graph": asdict(cfg.graph), "train": asdict(cfg.bulk), "seed": cfg.seed,
            "data_files": data_files(data_dir, (BULK_FILE, BULK_CELLS_FILE), staged)}


def open_bulk_run(out: Path, cfg: RunConfig, data_dir: Path, overwrite: bool = False, staged: Path | None = None):
    from ftcore.rundir import open_run_dir

    return open_run_dir(out / Path(BULK_CHECKPOINT).parent, bulk_record(cfg, data_dir, staged), config_name=RUN_CONFIG,
                        ignore=RESUME_IGNORES, overwrite=overwrite)


def open_strategy_run(out: Path, cfg: RunConfig, plan: CVPlan, data_dir: Path, bulk: dict | None,
                      overwrite: bool = False, staged: Path | None = None):
    """A strategy's CV (its log and checkpoint folders): new, the same (resumed fold by fold) or refused.
    `bulk`: the BulkModel it transfers from (bulk_record, or a given checkpoint's file identity); None from scratch."""
    from ftcore.rundir import open_run_dir

    from spatial_transfer.data import SPATIAL_CELLS_FILE, SPATIAL_FILE

    log_dir, ckpt_dir = strategy_dirs(out, plan.strategy)
    record = {**plan.key(cfg), "data_files": data_files(data_dir, (SPATIAL_FILE, SPATIAL_CELLS_FILE), staged),
              "bulk": bulk}
    saved = None
    if not overwrite and not (log_dir / RUN_CONFIG).is_file() and (log_dir / "temp_fold_results.json").is_file():
        resumable_folds(out, cfg, plan)  # a CV of an earlier version: its fold record says whether the plan is the same
        saved = record  # it is: resumed fold by fold, as before
    return open_run_dir(out, record, config_name=f"{log_dir.name}/{RUN_CONFIG}", ignore=RESUME_IGNORES,
                        run_files=(log_dir.name, ckpt_dir.name), overwrite=overwrite, label=str(log_dir), saved=saved)


def resumable_folds(out: Path, cfg: RunConfig, plan: CVPlan) -> list[dict]:
    """Finished folds of an earlier run of the same plan in `out` ([] if none); other settings are an error."""
    import json

    log_dir = strategy_dirs(out, plan.strategy)[0]
    temp_path = log_dir / "temp_fold_results.json"
    if not temp_path.is_file():
        return []
    try:
        saved = json.loads(temp_path.read_text())
        saved_plan, folds = saved.get("plan"), list(saved["folds"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{temp_path} is not a readable fold record (cut short or edited?); delete it to start the "
                        "CV of this strategy again, or pass another --output") from None
    if saved_plan != plan.key(cfg):
        changed = [k for k, v in plan.key(cfg).items() if (saved_plan or {}).get(k) != v]
        raise UserError(f"{log_dir} holds results of a run with other settings (changed: {', '.join(changed)}); "
                        "pass another --output or delete that directory")
    return folds


def cross_validate(spatial: SpatialData, cfg: RunConfig, plan: CVPlan, out: Path, bulk: BulkWeights | None) -> dict:
    """Train and test one strategy on every fold; resumable fold by fold. -> final results dict.
    Inputs are validated (cli.prepare); `bulk`: the BulkModel weights every fold transfers (None from scratch)."""
    log_dir, ckpt_dir = strategy_dirs(out, plan.strategy)
    temp_path = log_dir / "temp_fold_results.json"
    done: list[dict] = resumable_folds(out, cfg, plan)
    if done:
        log(f"resuming: {len(done)} of {len(plan.folds)} folds already finished in {temp_path}")
    if is_main_process():
        check_output_dir(log_dir)
        check_output_dir(ckpt_dir)
    n_genes = spatial.expr.shape[1]
    oof = np.full((len(spatial.spot_names), n_genes), np.nan, dtype=np.float32)
    for r in done:  # out-of-fold predictions of finished folds come back from their files
        oof[r["spot_rows"]] = np.load(log_dir / f"fold_{r['fold']}_predictions.npy")
    for k in range(len(done), len(plan.folds)):
        result, pred, rows = _run_fold(spatial, cfg, plan, k, log_dir, ckpt_dir, bulk)
        oof[rows] = pred
        done.append(result)
        if is_main_process():
            atomic_write_json(temp_path, {"plan": plan.key(cfg), "folds": done})
    final = summarise(done)
    final.update({"strategy": plan.strategy, "cv_mode": plan.cv_mode, "lr": plan.lr, "folds": done})
    if is_main_process():
        atomic_write_json(log_dir / f"final_{len(plan.folds)}fold_results.json", final)
        _write_predictions(spatial, oof, final, log_dir / "predictions.h5ad")
    print_summary(final)
    return final


def _run_fold(spatial, cfg, plan, k, log_dir, ckpt_dir, bulk: BulkWeights | None):
    test = plan.folds[k]
    rest = [s for s in spatial.samples if s not in test]
    val = _validation_samples(rest, plan.seed + k)
    train = [s for s in rest if s not in val]
    log(f"\n=== Fold {k + 1}/{len(plan.folds)} ({plan.strategy}): test {', '.join(test)}; "
          f"{len(train)} train / {len(val)} validation samples ===")
    torch.manual_seed(plan.seed + k)
    model = SpatialModel(cfg.model)
    report = None
    if plan.strategy != "scratch":
        report = load_bulk_weights(model, bulk, spatial_genes=list(spatial.genes) if cfg.head_from_bulk else None)
    train_items = spatial_items(spatial, cfg.graph, train)
    init_output_bias(model, train_items)  # same start for every strategy: the bias is the spatial training mean
    freeze = apply_freezing(model, resolve_strategy(plan.strategy, FREEZE_STRATEGIES), pretrained=report,
                            allow_unloaded_frozen=plan.allow_unloaded_frozen, verbose=is_main_process())
    tc = _train_config(cfg.spatial, cfg, ckpt_dir, plan.lr, plan.seed + k, bool(val),
                       best_name=f"best_hest_graph_model_fold_{k}.pt", last_name=f"last_fold_{k}.pt", restore_best=True,
                       history_name=f"fold_{k}_history.json", curve_name=None, tensorboard_dir=f"tensorboard/fold_{k}")
    trainer = Trainer(model, tc, train_items, spatial_items(spatial, cfg.graph, val),
                      loss_fn=mse_loss, eval_fn=evaluate, collate_fn=collate,
                      extra_state={"model_config": asdict(cfg.model), "graph": asdict(cfg.graph), "genes": list(spatial.genes),
                                   "strategy": plan.strategy, "kind": "Cell2Gene SpatialModel"},
                      artefact=_header(SPATIAL_KIND, cfg, spatial.genes))
    fit = trainer.fit()  # restores the best epoch's weights: tested, as the guide does
    from torch.utils.data import DataLoader

    loader = DataLoader(spatial_items(spatial, cfg.graph, test), batch_size=cfg.spatial.batch_size, collate_fn=collate)
    pred, true, ids = predict(model, loader)
    if not torch.isfinite(pred).all():
        raise UserError(f"fold {k} ({plan.strategy}): the trained model predicts NaN/inf (training diverged); lower the "
                        f"learning rate (now {plan.lr:g}) or check the input for NaN/inf")
    rows = torch.cat(ids).numpy()
    result = {
        "fold": k, "test_samples": test, "validation_samples": val, "n_test_spots": int(len(rows)),
        "overall_correlation": pearson_overall(pred, true), "gene_correlation": pearson_mean_gene(pred, true),
        "test_loss": float(torch.nn.functional.mse_loss(pred, true)),
        "best_val_loss": fit.best_metric, "epochs_trained": fit.history[-1]["epoch"] if fit.history else 0,
        "trainable_parameters": freeze.trainable, "total_parameters": freeze.total,
        "weights_loaded": len(report.loaded) if report else 0, "spot_rows": rows.tolist(),
    }
    log(f"fold {k}: overall correlation {result['overall_correlation']:.4f}, gene correlation "
          f"{result['gene_correlation']:.4f}, test loss {result['test_loss']:.4f}")
    if is_main_process():
        from ftcore.io import atomic_path
        from ftcore.plotting import plot_training_curve

        from spatial_transfer.plots import plot_fold_predictions

        with atomic_path(log_dir / f"fold_{k}_predictions.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, pred.numpy())
        # the core marks improving validations with best=True; a flag, not a curve to draw
        curve = [{kk: v for kk, v in h.items() if kk != "best"} for h in fit.history]
        plot_training_curve(curve, log_dir / f"fold_{k}_training_curve.png", title=f"{plan.strategy}, fold {k}")
        plot_fold_predictions(pred.numpy(), true.numpy(), log_dir / f"fold_{k}_pred_vs_true.png",
                              title=f"{plan.strategy}, fold {k}: test {', '.join(test)}")
        atomic_write_json(log_dir / f"fold_{k}_metrics.json", {kk: v for kk, v in result.items() if kk != "spot_rows"} | {
            "spot_names": [spatial.spot_names[i] for i in rows], "history": fit.history})
        # the fold is recorded next; its resume state is no longer needed (it holds optimizer moments)
        (ckpt_dir / f"last_fold_{k}.pt").unlink(missing_ok=True)
    return result, pred.numpy(), rows


def summarise(folds: list[dict]) -> dict:
    out = {}
    for key in ("overall_correlation", "gene_correlation", "test_loss"):
        vals = np.array([f[key] for f in folds], dtype=float)
        out[key] = {"mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals)), "per_fold": vals.tolist()}
    return out


def print_summary(final: dict) -> None:
    log("\n=== Final Summary ===")
    for key, label in (("overall_correlation", "overall correlation"), ("gene_correlation", "gene correlation"),
                       ("test_loss", "final test loss")):
        log(f"Average {label}: {final[key]['mean']:.6f} ± {final[key]['std']:.6f}")


def _write_predictions(spatial: SpatialData, oof: np.ndarray, final: dict, path: Path) -> None:
    """The out-of-fold predictions of the tested spots in THE output layout (ftcore.data.prediction_adata):
    X = predictions, layers['measured'] = the observed expression, obs/obsm['spatial'] of spatial.h5ad."""
    from ftcore.data import prediction_adata
    from ftcore.io import atomic_write_h5ad

    rows = np.nonzero(np.isfinite(oof).all(1))[0]  # LOO of some samples tests only their spots
    adata = prediction_adata(oof[rows], spatial.genes, spatial.source[rows], measured=spatial.expr[rows],
                             model=f"spatial-transfer SpatialModel ({final['strategy']}), out-of-fold {final['cv_mode']} CV")
    adata.uns["spatial_transfer"] = {k: final[k]["mean"] for k in ("overall_correlation", "gene_correlation", "test_loss")}
    adata.uns["spatial_transfer"]["strategy"] = final["strategy"]
    atomic_write_h5ad(adata, path)


def format_comparison(results: dict[str, dict]) -> str:
    """One table: strategy x (overall correlation, gene correlation, test loss), mean ± std over folds."""
    head = f"{'strategy':<16} {'overall correlation':>22} {'gene correlation':>22} {'test loss':>22}"
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        cells = [f"{r[k]['mean']:.4f} ± {r[k]['std']:.4f}" for k in ("overall_correlation", "gene_correlation", "test_loss")]
        lines.append(f"{name:<16} " + " ".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


