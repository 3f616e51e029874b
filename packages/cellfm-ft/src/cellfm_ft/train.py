"""Convert, fine-tune, predict, evaluate: the jobs behind the CLI, callable from Python.

    convert("CellFM_80M_weight.ckpt", "cellfm_80m.safetensors")
    results = finetune(RunConfig(data="adnc.h5ad", label_key="ADNC", donor_key="Donor ID",
                                 checkpoint="CellFM_80M_weight.ckpt", output="outputs/cellfm_testcase"))
    predict("outputs/cellfm_testcase/best_model.pth", "new.h5ad", "new_pred.h5ad")

Fine-tuning follows the teacher's rule (seed 001): build the model, re-initialise gene_emb for
our vocabulary (by default every gene of the data; pad_rows(G) rows, xavier normal, pad row 0
zero), load every other layer from the checkpoint (gene_emb skipped, with a logged line), train
only `cls.` and `encoder` parameters. A frozen parameter that was neither loaded nor deliberately
re-initialised is refused (the core's check; --allow-unloaded-frozen to accept it). The best
epoch is chosen on a validation split; the test split is scored once, by that model. The core
Trainer does the training (AdamW, checkpoints, resume, DDP).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ftcore import options as opt
from ftcore.artefact import model_header
from ftcore.checkpoint import read_state_dict, write_checkpoint
from ftcore.distributed import is_main_process
from ftcore.errors import UserError
from ftcore.freezing import apply_freezing, resolve_strategy
from ftcore.io import atomic_write_h5ad, atomic_write_json, check_output_dir, claim_outputs
from ftcore.loading import load_partial
from ftcore.training import TrainConfig, Trainer, seed_everything

from cellfm_ft.config import RunConfig, _checkpoint_path, check_settings
from cellfm_ft.data import (
    CellDataset,
    Cells,
    GeneVocab,
    Split,
    add_validation,
    collate,
    expressed_rows,
    make_split,
    read_cells,
    read_gene_list,
    token_matrix,
)
from cellfm_ft.model import (
    CHECKPOINT_MAP,
    FREEZE_STRATEGIES,
    HEADS,
    MASK_LAYERS,
    PRETRAINING_PARTS,
    CellFMClassifier,
    CellFMConfig,
    config_from_state_dict,
    hide_genes,
    pad_rows,
    readout_loss,
)

PRED_KEY = "cellfm_pred"  # obs: predicted label
PROBA_KEY = "cellfm_proba"  # obsm: [n_cells, n_labels] probabilities (label order in uns["cellfm"])
EMB_KEY = "X_cellfm"  # obsm: [n_cells, enc_dims] cell embeddings
TRAIN_ACC_CELLS = 2048  # training accuracy per epoch is measured on this many fixed training cells
# Frozen parameters that are deliberately not loaded: gene_emb is re-initialised for our vocabulary (the
# teacher's rule); zero_emb is never used by this model (pad_zero), whatever its value.
FRESH = (r"(^|\.)gene_emb$", r"(^|\.)zero_emb$")
MISSING_PART_REASON = ("not in this checkpoint: the annotation tutorial's Backbone has no zero_emb and no "
                       "pretraining decoders; fine-tuning does not build them (the tutorial head does not use them; "
                       "--head mlp's reconstruction term needs the decoders)")


def layout_of(cfg: CellFMConfig) -> str:
    if cfg.decoders:
        return "CellFM pretraining model (has the decoders): padded keys masked in layers depth//2 .. depth-1"
    return "annotation tutorial Backbone (no zero_emb / decoders): padded keys masked in every layer"


# ------------------------------------------------------------------------------ convert
def load_cellfm_weights(path: str, trust_checkpoint: bool = False) -> tuple[dict, dict]:
    """Any CellFM checkpoint (MindSpore .ckpt, safetensors, our .pth) -> (our names, mapping report)."""
    sd = read_state_dict(path, trust_pickle=trust_checkpoint)
    sd, report = CHECKPOINT_MAP.apply(sd)
    return sd, report.to_dict()


def convert(checkpoint: str, output: str, *, config: str = "80m", report_path: str | None = None,
            trust_checkpoint: bool = False) -> dict:
    """MindSpore .ckpt -> safetensors with our parameter names, plus a JSON report.

    Accepted layouts: CellFM's pretraining model, the annotation tutorial's Net(Backbone) (no zero_emb,
    value_dec, cellwise_dec: reported as missing, not fatal), files with ST_emb / ST_enc (skipped, with the
    reason) and MindSpore ModelCheckpoint training files (optimizer moments and counters skipped). The
    report's "entries" holds every entry of the file (loaded as <our name> / skipped + reason) and every
    backbone parameter the file lacks (missing + reason), each as a JSON object.
    """
    # Every path first: a read-only place or a directory named as the file is one line before anything is read.
    checkpoint = str(_checkpoint_path("checkpoint", checkpoint))
    output = opt.check_output_file("--output", output, (".safetensors",))
    report_file = opt.check_output_file("--report", report_path or output.with_suffix(".json"), (".json",))
    vocab = Path(str(checkpoint) + ".genes.txt")
    vocab_out = Path(str(output) + ".genes.txt")
    _not_an_input("--output", output, checkpoint, vocab)
    _not_an_input("--report", report_file, checkpoint, vocab, output)
    raw = read_state_dict(checkpoint, trust_pickle=trust_checkpoint)
    sd, mapping = CHECKPOINT_MAP.apply(raw)
    cfg = config_from_state_dict(sd, config)
    backbone = {k: v for k, v in sd.items() if k.startswith("extractor.")}
    # Every mapped tensor must land on a parameter of the same shape (strict: the table is complete);
    # only the pretraining model's own parts may be absent (the tutorial's Backbone has none of them).
    from cellfm_ft.model import CellFM

    with torch.device("meta"):  # shapes only: no memory for an 80M-parameter copy
        model = CellFM(dataclasses.replace(cfg, decoders=True))
    own = {"extractor." + k: v for k, v in model.state_dict().items()}
    absent = [k for k in own if k not in backbone]
    optional = [k for k in absent if re.match(PRETRAINING_PARTS, k)]
    missing = [k for k in absent if k not in optional]
    extra = [k for k in backbone if k not in own]
    wrong = [k for k in own if k in backbone and tuple(own[k].shape) != tuple(backbone[k].shape)]
    if missing or extra or wrong:
        raise UserError(
            f"{checkpoint}: does not match the CellFM layout ({len(missing)} parameters missing, e.g. "
            f"{missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}; {len(wrong)} of another shape, e.g. {wrong[:2]})"
        )
    origin = {ours: theirs for theirs, ours in mapping.renamed.items()}
    _check_weights(sd, own, checkpoint, origin)
    claim_outputs(output, report_file, vocab_out if vocab.exists() else None)
    try:
        _write_converted(sd, output, vocab, vocab_out)
    except OSError as err:
        raise _written("the converted checkpoint", output, err) from None
    entries: dict[str, dict] = {}
    for key in raw:
        if key in mapping.skipped:
            entries[key] = {"status": "skipped", "reason": mapping.skipped[key]}
        else:
            target = mapping.renamed.get(key, key)
            entries[key] = {"status": "loaded", "as": target, "shape": list(sd[target].shape),
                            "dtype": str(sd[target].dtype).removeprefix("torch.")}
    for key in optional:
        entries[key] = {"status": "missing", "shape": list(own[key].shape), "reason": MISSING_PART_REASON}
    counts = {status: sum(e["status"] == status for e in entries.values()) for status in ("loaded", "skipped", "missing")}
    report = {
        "source": str(checkpoint),
        "output": str(output),
        "layout": layout_of(cfg),
        "config": dataclasses.asdict(cfg),
        "n_parameters": int(sum(v.numel() for v in backbone.values())),
        "counts": counts,
        "entries": entries,
        "tensors": {k: list(v.shape) for k, v in sd.items()},
        "mapping": mapping.to_dict(),
    }
    if vocab.exists():  # the gene list travels with the weights it indexes
        report["vocabulary"] = str(vocab_out)
    try:
        atomic_write_json(report_file, report)
    except OSError as err:
        raise _written("the report", report_file, err) from None
    print(f"converted {len(sd)} tensors ({report['n_parameters']:,} backbone parameters) -> {output}")
    print(f"layout: {report['layout']}")
    print(f"entries: {counts['loaded']} loaded, {counts['skipped']} skipped, {counts['missing']} missing")
    by_reason: dict[str, list[str]] = {}
    for key, why in mapping.skipped.items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        shown = ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")
        print(f"skipped {len(keys)} ({why}): {shown}")
    if optional:
        print(f"missing {len(optional)} ({', '.join(optional)}): {MISSING_PART_REASON}")
    return report


def _check_weights(sd: dict, own: dict, source: str, origin: dict) -> None:
    """Integer values for a floating-point parameter (or the reverse) and NaN/inf weights are refused by name
    (the file's name and ours): casting them would write a checkpoint that loads and predicts garbage."""
    for key, value in sd.items():
        shown = f"{origin[key]} (our {key})" if key in origin and origin[key] != key else key
        if key in own and value.is_floating_point() != own[key].is_floating_point():
            raise UserError(
                f"{source}: tensor {shown} is {str(value.dtype).removeprefix('torch.')} in the file but CellFM's is "
                f"{str(own[key].dtype).removeprefix('torch.')}; this is not a CellFM checkpoint of floating-point "
                "weights (a quantised or converted file?): use the original weights"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise UserError(f"{source}: tensor {shown} holds {bad} of {value.numel()} NaN/inf values; the file is "
                            "corrupt or the run that wrote it diverged: use another checkpoint or re-download it")


def _write_converted(sd: dict, output: Path, vocab: Path, vocab_out: Path) -> None:
    write_checkpoint(output, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, "safetensors")
    if vocab.exists():
        from ftcore.io import atomic_write_text

        atomic_write_text(vocab_out, vocab.read_text())


# ----------------------------------------------------------------------------- finetune


def _vocab_for(cfg: RunConfig) -> list[str] | None:
    """None (the default): every data gene, each with a fresh gene_emb row (the teacher's rule)."""
    if cfg.vocab:
        return read_gene_list(cfg.vocab)
    if cfg.checkpoint_vocab:
        sidecar = Path(cfg.checkpoint + ".genes.txt")
        if not sidecar.exists():
            raise UserError(f"--checkpoint-vocab reads the checkpoint's gene list from {sidecar}, which does not "
                            "exist; put it there, pass --vocab FILE, or drop the flag (every data gene is used)")
        return read_gene_list(sidecar)
    return None


@dataclass
class Prepared:
    cells: Cells
    vocab: GeneVocab
    tokens: object  # csr [n_cells, G]
    keep: np.ndarray  # cells with >= 1 vocabulary gene
    label_names: list[str]
    label_ids: np.ndarray  # [n_cells], -1 for labels outside label_names
    state_dict: dict
    model_cfg: CellFMConfig


def prepare(cfg: RunConfig) -> Prepared:
    """Everything that can fail on the user's input, before any output is written (cfg: from `check_settings`)."""
    resolve_strategy(cfg.strategy, FREEZE_STRATEGIES)
    if cfg.head not in HEADS:
        raise UserError(f"unknown --head {cfg.head!r}; choose one of: {', '.join(HEADS)}")
    if cfg.mask_layers not in ("auto",) + MASK_LAYERS:
        raise UserError(f"unknown --mask-layers {cfg.mask_layers!r}; choose one of: auto, {', '.join(MASK_LAYERS)}")
    cells = read_cells(cfg.data, label_key=cfg.label_key, donor_key=cfg.donor_key, gene_key=cfg.gene_key,
                       layer=cfg.layer, input_kind=cfg.input_kind)
    _check_training_cells(cells, cfg)
    print(f"data: {cells.n_cells} cells x {len(cells.genes)} genes from {cfg.data} (X holds {cells.input_kind})")
    vocab = GeneVocab.build(cells.genes, _vocab_for(cfg), cfg.data)
    print(vocab.report())
    tokens = token_matrix(cells, vocab.genes)
    keep = expressed_rows(tokens)
    if len(keep) < cells.n_cells:
        print(f"note: {cells.n_cells - len(keep)} cells express none of the vocabulary genes and are left out")
    if len(keep) == 0:
        raise UserError(f"{cfg.data}: no cell expresses any of the {len(vocab.genes)} vocabulary genes; check X and --layer")
    label_names = sorted(set(cells.labels[keep]))
    if len(label_names) < 2:
        dropped = (f" among the {len(keep)} cells that express a vocabulary gene ({cells.n_cells - len(keep)} express "
                   "none)") if len(keep) < cells.n_cells else ""
        raise UserError(f"obs column {cfg.label_key!r} has {len(label_names)} distinct label(s){dropped}; a classifier "
                        "needs at least 2")
    index = {lab: i for i, lab in enumerate(label_names)}
    label_ids = np.array([index.get(lab, -1) for lab in cells.labels], dtype=np.int64)
    sd, _ = load_cellfm_weights(cfg.checkpoint, cfg.trust_checkpoint)
    model_cfg = config_from_state_dict(sd, cfg.config)
    model_cfg = dataclasses.replace(model_cfg, num_cls=len(label_names), nonz_len=cfg.nonz_len or model_cfg.nonz_len,
                                    head=cfg.head,
                                    mask_layers=model_cfg.mask_layers if cfg.mask_layers == "auto" else cfg.mask_layers)
    if cfg.head == "mlp" and cfg.recon_weight > 0 and not model_cfg.decoders:
        raise UserError(
            f"--head mlp adds CellFM's masked-reconstruction term, which needs the pretraining decoders (value_dec, "
            f"cellwise_dec); {cfg.checkpoint} has none (the annotation tutorial's layout): use a pretraining "
            "checkpoint, pass --recon-weight 0 (the mlp head alone), or use the default --head tutorial"
        )
    return Prepared(cells, vocab, tokens, keep, label_names, label_ids, sd, model_cfg)


def _check_training_cells(cells: Cells, cfg: RunConfig) -> None:
    """What only training needs: cell names a split file can refer to, labels that are real, distinct classes."""
    names = cells.adata.obs_names.astype(str)
    if not names.is_unique:
        dup = names[names.duplicated()].unique()
        raise UserError(f"{cfg.data}: obs_names name {len(dup)} cell(s) more than once (e.g. {dup[0]!r}); the split "
                        "is saved by cell name: adata.obs_names_make_unique() first")
    labels = cells.labels
    texts = [lab for lab in ("", "nan", "NaN", "None", "none", "<NA>") if (labels == lab).any()]
    if texts or any(not lab.strip() for lab in np.unique(labels)):
        bad = texts[0] if texts else next(lab for lab in np.unique(labels) if not lab.strip())
        raise UserError(f"{cfg.data}: obs column {cfg.label_key!r} labels {int((labels == bad).sum())} cell(s) {bad!r}: "
                        "missing values written as text? fill or drop those cells first")
    by_key: dict[str, list[str]] = {}
    for lab in np.unique(labels):
        by_key.setdefault(" ".join(lab.split()).casefold(), []).append(lab)
    twins = next((v for v in by_key.values() if len(v) > 1), None)
    if twins:
        raise UserError(f"{cfg.data}: obs column {cfg.label_key!r} has labels that differ only in spaces or case "
                        f"({', '.join(map(repr, twins))}); they would be separate classes: clean the column first")


def build_model(p: Prepared, cfg: RunConfig) -> CellFMClassifier:
    """The seed's loading order: init, re-init gene_emb, load the rest (gene_emb skipped), freeze."""
    model = CellFMClassifier(p.model_cfg)
    G = len(p.vocab.genes)
    model.extractor.reinit_gene_emb(G)
    print(f"Re-initializing gene embedding: {G} genes -> gene_emb ({pad_rows(G)}, {p.model_cfg.enc_dims}), "
          "xavier normal, pad row 0 zero")
    ckpt_rows = tuple(p.state_dict["extractor.gene_emb"].shape)
    print(f"Skipping gene embedding: extractor.gene_emb (checkpoint {ckpt_rows} indexes the model's own vocabulary)")
    print(f"checkpoint layout: {layout_of(p.model_cfg)}; masking used: "
          f"{'upper half of the layers' if p.model_cfg.mask_layers == 'upper' else 'every layer'}"
          + (" (--mask-layers)" if cfg.mask_layers != "auto" else ""))
    if not p.model_cfg.decoders:
        print(f"Pretraining decoders (value_dec, cellwise_dec) and zero_emb: {MISSING_PART_REASON}")
    spec = resolve_strategy(cfg.strategy, FREEZE_STRATEGIES).with_overrides(cfg.include, cfg.exclude)
    if cfg.from_scratch:  # random weights on purpose: the frozen ones stay random too, as in the comparison asked for
        print(f"from scratch: no weights loaded from {Path(cfg.checkpoint).name} (its architecture only); every "
              f"parameter starts at its random initialisation (seed {cfg.seed}), the same parameters train")
        # nothing was loaded, on purpose: any frozen tensor stays at its random start, said above
        apply_freezing(model, spec, pretrained=None, fresh=FRESH, allow_unloaded_frozen=True)
        return model
    report = load_partial(model, p.state_dict, skip=((r"^extractor\.gene_emb$", "re-initialised for our vocabulary"),),
                          source=Path(cfg.checkpoint).name, target="CellFM classifier")
    apply_freezing(model, spec, pretrained=report, fresh=FRESH, allow_unloaded_frozen=cfg.allow_unloaded_frozen)
    model.load_report = report  # kept for training_results.json
    return model


def _loss(model, batch):
    """The tutorial head's loss: cross-entropy of both read-outs, summed."""
    return readout_loss(model(batch["expr"], batch["gene"], batch["zero_idx"]), batch["label"])


def make_loss(cfg: RunConfig):
    """The training loss: the head's cross-entropy; for --head mlp (CellFM-torch's fine-tuning) plus
    recon_weight x the masked-reconstruction term on mask_ratio of each cell's genes."""
    if cfg.head != "mlp" or cfg.recon_weight == 0:
        return _loss

    def loss(model, batch):
        hidden = hide_genes(batch["zero_idx"], cfg.mask_ratio)
        readouts, recon = model(batch["expr"], batch["gene"], batch["zero_idx"], hidden=hidden)
        ce = readout_loss(readouts, batch["label"])
        return ce + cfg.recon_weight * recon, {"cls_loss": ce.detach(), "recon_loss": recon.detach()}

    return loss


@torch.no_grad()
@torch.no_grad()
def infer(model: CellFMClassifier, loader) -> dict[str, np.ndarray]:
    """-> proba [N, C] (softmax of the gene-wise read-out, as the tutorial predicts), emb [N, D], loss.

    On CUDA under bf16 autocast, as the model trains (fp32 took 9.4 s per 2048 cells at 80M on an H200:
    benchmarks/results/train_mfu_h200.json); outputs are returned in fp32.
    """
    model.eval()
    device = next(model.parameters()).device
    probs, embs, labels, loss, n = [], [], [], 0.0, 0
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            tokens = model.extractor(batch["expr"], batch["gene"], batch["zero_idx"])
            readouts = model.read_out(tokens, batch["zero_idx"])
        known = batch["label"] >= 0
        if known.any():
            loss += float(readout_loss(tuple(r[known].float() for r in readouts), batch["label"][known])) * int(known.sum())
            n += int(known.sum())
        probs.append(torch.softmax(readouts[0].float(), -1).cpu())
        embs.append(tokens[:, 0].float().cpu())
        labels.append(batch["label"].cpu())
    return {"proba": torch.cat(probs).numpy(), "emb": torch.cat(embs).numpy(), "label": torch.cat(labels).numpy(),
            "loss": loss / max(n, 1)}


def _accuracy(out: dict) -> float:
    known = out["label"] >= 0
    return float((out["proba"][known].argmax(1) == out["label"][known]).mean()) if known.any() else float("nan")


def _loader(dataset, batch_size: int):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


# --- the run directory (ftcore.rundir) ------------------------------------------------------------------
RUN_CONFIG = "run_config.yaml"  # every RunConfig key + the data, checkpoint and vocabulary files by path, size, sha256
# What does not shape the trained model: where and how it runs, how often it checkpoints, the opt-in to unpickling,
# the logistic-regression yardstick (fitted after training, on every run) and the file paths, whose files are
# compared by identity instead (data_file.*, checkpoint_file.*, vocab_file.*: a moved file still counts by path).
RESUME_IGNORES = ("output", "device", "compile", "progress", "ckpt_every_steps", "trust_checkpoint", "baseline",
                  "data", "checkpoint", "vocab", "overwrite")
# what `cellfm-ft train` writes in --output: --overwrite removes these and nothing else
RUN_FILES = (RUN_CONFIG, "best_model.pth", "checkpoint_epoch_*.pth", "last.pt", "history.json", "history.csv",
             "training_curve.png", "tensorboard", "split.json", "train.h5ad", "val.h5ad", "test.h5ad",
             "confusion_matrix.png", "training_results.json")


def open_run(cfg: RunConfig, overwrite: bool = False):
    """--output: a new run, the same run (resumed), or refused naming the changed keys; writes nothing."""
    from ftcore.rundir import file_identity, open_run_dir

    record = {**dataclasses.asdict(cfg), "data_file": file_identity(cfg.data),
              "checkpoint_file": file_identity(cfg.checkpoint), "vocab_file": file_identity(cfg.vocab)}
    return open_run_dir(cfg.output, record, config_name=RUN_CONFIG, ignore=RESUME_IGNORES, run_files=RUN_FILES,
                        overwrite=overwrite)


def finetune(cfg: RunConfig) -> dict:
    """Fine-tune on cfg.data; write the seed's outputs into cfg.output; return training_results.

    Three splits: test (held-out donors or cells: scored ONCE, at the end, by the chosen model),
    validation (carved out of the training donors or cells: picks the best epoch), training.
    An --output holding a run resumes it only when run_config.yaml shapes the same result (ftcore.rundir);
    cfg.overwrite removes that run's files and starts fresh.
    """
    cfg = check_settings(cfg)
    run = open_run(cfg, cfg.overwrite)  # before the data is read: a refusal costs nothing
    p = prepare(cfg)
    out = Path(cfg.output)
    split_path = out / "split.json"
    if split_path.exists() and run.state != "overwrite":  # a resumed run keeps its split
        split = Split.from_file(split_path, p.cells)
        print(f"split: reusing {split_path} ({split.how})")
        if split.val is None:
            print("⚠ that split.json (from an earlier version) has no validation split: this resumed run keeps "
                  "choosing the best epoch on its test split, as it started; start a new --output for a validation split")
            split = dataclasses.replace(split, val=split.test)
    else:
        split = make_split(p.cells, test_donors=cfg.test_donors or None, test_size=cfg.test_size, seed=cfg.seed)
        split = add_validation(p.cells, split, val_fraction=cfg.val_fraction, val_donors=cfg.val_donors or None,
                               seed=cfg.seed)
    keep = set(p.keep.tolist())
    train_rows = np.array([i for i in split.train if i in keep and p.label_ids[i] >= 0], dtype=np.int64)
    val_rows = np.array([i for i in split.val if i in keep], dtype=np.int64)
    test_rows = np.array([i for i in split.test if i in keep], dtype=np.int64)
    unseen = sorted(set(p.cells.labels[test_rows]) - set(p.cells.labels[train_rows]))
    print(f"split: {len(train_rows)} training / {len(val_rows)} validation / {len(test_rows)} test cells ({split.how})"
          + (f"; test labels never seen in training: {', '.join(unseen)}" if unseen else ""))
    def silent(rows) -> str:
        return f" (its {len(rows)} cells express none of the vocabulary genes)" if len(rows) else ""

    if len(test_rows) == 0:
        raise UserError(f"the test split is empty{silent(split.test)}; raise --test-size or choose other --test-donors")
    if len(val_rows) == 0:
        raise UserError(f"the validation split is empty{silent(split.val)}; raise --val-fraction or choose --val-donors")
    if len(train_rows) == 0:
        raise UserError("no training cells are left after the test and validation splits; lower --test-size / --val-fraction")
    trained_labels = sorted(set(p.cells.labels[train_rows]))
    if len(trained_labels) < 2:
        raise UserError(f"the training split holds one label only ({trained_labels[0]!r}; {split.how}): a classifier "
                        "learns nothing from it; choose other --test-donors / --val-donors, or split by cells")
    seed_everything(cfg.seed)  # the new gene_emb and the head start the same on every run and rank
    model = build_model(p, cfg)
    tcfg = TrainConfig.from_sections(  # epochs, lr, seed, device ...: RunConfig's fields of the Trainer's names
        cfg, output_dir=str(out),
        monitor="val_acc", mode="max", best_name="best_model.pth", epoch_name="checkpoint_epoch_{epoch}.pth",
        last_name="last.pt", restore_best=True,
        # The mlp head's BatchNorm needs batches of 2+; CellFM-torch's loader drops the last partial batch too.
        drop_last=cfg.head == "mlp" and len(train_rows) > cfg.batch_size,
    )
    # Inputs and settings are valid and the model is built: only now is anything written, and a run that
    # fails from here on (a NaN loss, a crash) takes back what it wrote (a resumed run's files are kept).
    claim_outputs(out)
    check_output_dir(out)
    run.start()  # --overwrite: the earlier run's files go (split.json too, so the split is made anew below)
    if is_main_process() and not split_path.exists():
        atomic_write_json(split_path, split.to_dict(p.cells))
    nonz = p.model_cfg.nonz_len
    train_set = CellDataset(p.tokens, train_rows, p.label_ids, nonz)
    val_set = CellDataset(p.tokens, val_rows, p.label_ids, nonz)
    test_set = CellDataset(p.tokens, test_rows, p.label_ids, nonz)
    probe_rows = train_rows[np.random.default_rng(cfg.seed).permutation(len(train_rows))[:TRAIN_ACC_CELLS]]
    probe_set = CellDataset(p.tokens, np.sort(probe_rows), p.label_ids, nonz)

    def evaluate(m, val_loader):
        val = infer(m, val_loader)
        train = infer(m, _loader(probe_set, cfg.batch_size))
        return {"val_loss": val["loss"], "val_acc": _accuracy(val), "train_acc": _accuracy(train)}

    extra = {"genes": p.vocab.genes, "labels": p.label_names, "model_config": dataclasses.asdict(p.model_cfg),
             "label_key": cfg.label_key, "gene_key": cfg.gene_key or "", "layer": cfg.layer or "",
             "input_kind": p.cells.input_kind}
    header = model_header(kind=KIND, config=extra["model_config"], data_keys={k: extra[k] for k in DATA_KEYS},
                          package="cellfm-ft")
    trainer = Trainer(model, tcfg, train_set, val_set, loss_fn=make_loss(cfg), eval_fn=evaluate, collate_fn=collate,
                      extra_state=extra, artefact=header)
    result = trainer.fit()
    if not is_main_process():
        return {}
    # The best model on the validation split (the seed's best_model.pth, restored by fit), scored once on the test split.
    test_out = infer(model, _loader(test_set, cfg.batch_size))
    val_out = infer(model, _loader(val_set, cfg.batch_size))
    train_out = infer(model, _loader(CellDataset(p.tokens, train_rows, p.label_ids, nonz), cfg.batch_size))
    for rows, res, name in ((train_rows, train_out, "train"), (val_rows, val_out, "val"), (test_rows, test_out, "test")):
        write_predictions(p.cells, rows, res, p.label_names, out / f"{name}.h5ad", split=name, label_key=cfg.label_key)
    _plot_confusion(test_out, p.label_names, out / "confusion_matrix.png")
    history = result.history
    best_epoch = next((h["epoch"] for h in history if h.get("val_acc") == result.best_metric), None)
    test_acc = _accuracy(test_out)
    results = {
        "train_acc_history": [h.get("train_acc") for h in history],
        "val_acc_history": [h.get("val_acc") for h in history],
        # The test split is scored once, by the model chosen on the validation split: one entry.
        "test_acc_history": [test_acc],
        "best_val_acc": result.best_metric,
        "best_epoch": best_epoch,
        "best_test_acc": test_acc,
        "n_genes": len(p.vocab.genes),
        "gene_embedding": "reinitialized_for_our_vocab",
        "vocabulary": "restricted to a model vocabulary" if p.vocab.restricted else "every data gene",
        "test_acc_best_model": test_acc,
        "n_train_cells": int(len(train_rows)),
        "n_val_cells": int(len(val_rows)),
        "n_test_cells": int(len(test_rows)),
        "split": split.how,
        "labels": p.label_names,
        "genes_absent_from_vocab": len(p.vocab.absent),
        "input_kind": p.cells.input_kind,
        "checkpoint_layout": layout_of(p.model_cfg),
        "mask_layers": p.model_cfg.mask_layers,
        "head": p.model_cfg.head,
        "trainable_parameters": int(sum(v.numel() for v in model.parameters() if v.requires_grad)),
        "load_report": model.load_report.to_dict() if hasattr(model, "load_report") else {},
        "weights": "random initialisation (--from-scratch)" if cfg.from_scratch else f"loaded from {cfg.checkpoint}",
        "steps": result.steps,
    }
    if cfg.baseline:
        results["baseline_logreg_test_acc"] = logistic_baseline(p, train_rows, test_rows, cfg.seed)
    atomic_write_json(out / "training_results.json", results)
    print(f"best validation accuracy {results['best_val_acc']:.4f} (epoch {best_epoch}); "
          f"test accuracy of that model {test_acc:.4f}; outputs in {out}")
    return results


def logistic_baseline(p: Prepared, train_rows, test_rows, seed: int) -> float:
    """Logistic regression on the same genes (log-normalised) and split: the yardstick."""
    from sklearn.linear_model import LogisticRegression

    X = p.tokens
    y = p.label_ids
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(X[train_rows], y[train_rows])
    known = y[test_rows] >= 0
    return float((clf.predict(X[test_rows][known]) == y[test_rows][known]).mean())


def write_predictions(cells: Cells, rows, res: dict, label_names: list[str], path: Path, split: str = "",
                      every_cell: bool = False, label_key: str | None = None) -> None:
    """A copy of the cells with obs[cellfm_pred], obs[cellfm_confidence], obsm[cellfm_proba], obsm[X_cellfm].

    rows: the cells `res` scored. every_cell (predict): the copy keeps every cell of the input, in its order,
    with its obs_names, obs, obsm and X, so `adata.obs["cellfm_pred"] = pred.obs["cellfm_pred"]` lines up;
    a cell expressing none of the model's genes gets no label (NaN) and NaN probabilities. Otherwise (the
    train/val/test files) the copy holds the scored rows only.
    """
    import pandas as pd
    from ftcore.data import write_predictions as write_into

    rows = np.asarray(rows)
    adata = (cells.adata if every_cell else cells.adata[rows]).copy()
    at = rows if every_cell else np.arange(len(rows))
    proba = np.full((adata.n_obs, len(label_names)), np.nan, dtype=np.float32)
    emb = np.full((adata.n_obs, res["emb"].shape[1]), np.nan, dtype=np.float32)
    proba[at], emb[at] = res["proba"], res["emb"]
    codes = np.full(adata.n_obs, -1)
    codes[at] = res["proba"].argmax(1)
    # the core's writer, scanpy's way (key_added; X never replaced)
    write_into(adata, pd.Categorical.from_codes(codes, categories=label_names), PRED_KEY, where="obs")
    write_into(adata, proba.max(1), "cellfm_confidence", where="obs")  # NaN where not scored
    write_into(adata, proba, PROBA_KEY)
    write_into(adata, emb, EMB_KEY)
    adata.uns["cellfm"] = {"labels": list(label_names), "split": split, "proba_key": PROBA_KEY,
                           "n_unscored": int(adata.n_obs - len(rows))}
    colours = _label_colours(adata, label_key, label_names)
    if colours:  # scanpy then draws a predicted label in the colour of the same true label
        adata.uns[f"{PRED_KEY}_colors"] = colours
    atomic_write_h5ad(adata, path)


def _label_colours(adata, label_key: str | None, label_names: list[str]) -> list[str] | None:
    """The colours scanpy keeps for the label column (uns['<label_key>_colors']), in the model's label order."""
    column = adata.obs.get(label_key) if label_key else None
    colours = adata.uns.get(f"{label_key}_colors") if label_key else None
    if column is None or colours is None or not hasattr(column, "cat") or len(colours) != len(column.cat.categories):
        return None
    by_label = dict(zip(column.cat.categories.astype(str), colours))
    return [str(by_label.get(name, "#bbbbbb")) for name in label_names]


def _plot_confusion(res: dict, label_names: list[str], path: Path) -> np.ndarray:
    from ftcore.plotting import plot_confusion

    known = res["label"] >= 0
    C = len(label_names)
    m = np.zeros((C, C), dtype=np.int64)
    np.add.at(m, (res["label"][known], res["proba"][known].argmax(1)), 1)
    plot_confusion(m, label_names, path, title=f"test accuracy {_accuracy(res):.3f}")
    return m


# ----------------------------------------------------------------- the model file, output errors
KIND = "cellfm-ft/classifier"  # best_model.pth, last.pt, checkpoint_epoch_<n>.pth (ftcore.artefact)
DATA_KEYS = ("genes", "labels", "label_key", "gene_key", "layer", "input_kind")


def _legacy_header(obj: dict) -> dict | None:
    """A file of an earlier cellfm-ft (no model header): its extra held the config and the data keys."""
    extra = obj.get("extra")
    if not isinstance(extra, dict) or "genes" not in extra or "model_config" not in extra:
        return None
    return {"kind": KIND, "config": extra["model_config"], "data_keys": {k: extra[k] for k in DATA_KEYS if k in extra}}


def _not_an_input(flag: str, output: Path, *inputs: str) -> None:
    """An output path that names one of the command's inputs would overwrite it."""
    for path in inputs:
        if Path(os.path.expandvars(str(path))).expanduser().resolve() == output.resolve():
            raise UserError(f"{flag} {output} is also an input of this command; writing it would replace that "
                            "file: give a new name")


def _written(what: str, path, err: OSError) -> UserError:
    return UserError(f"could not write {what} {path} ({err.strerror or err}); check the disk space and permissions "
                     "or choose another path")


