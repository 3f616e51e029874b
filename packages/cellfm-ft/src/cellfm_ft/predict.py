"""Prediction and evaluation with a fine-tuned CellFM classifier: cell types (obs), probabilities and
embeddings (obsm) on the user's AnnData, and accuracy / confusion on labelled cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ftcore import options as opt
from ftcore.artefact import load_model
from ftcore.errors import UserError
from ftcore.io import atomic_write_json, check_output_dir, claim_outputs

from cellfm_ft.config import _checkpoint_path
from cellfm_ft.data import (
    INPUT_KINDS,
    CellDataset,
    GeneVocab,
    expressed_rows,
    read_cells,
    token_matrix,
)
from cellfm_ft.model import (
    CellFMClassifier,
    CellFMConfig,
)
from cellfm_ft.train import (
    EMB_KEY,
    KIND,
    PRED_KEY,
    PROBA_KEY,
    _accuracy,
    _legacy_header,
    _loader,
    _not_an_input,
    _plot_confusion,
    _written,
    infer,
    write_predictions,
)


def load_finetuned(path: str, trust_checkpoint: bool = False, device: str = "cpu") -> tuple[CellFMClassifier, dict]:
    """best_model.pth (or last.pt / checkpoint_epoch_<n>.pth) -> (model, its data keys: genes, labels, ...)."""
    mf = load_model(path, kind=KIND, trust=trust_checkpoint, legacy=_legacy_header, require=("genes", "labels"),
                    what="a cellfm-ft fine-tuned model", hint="pass the best_model.pth a `cellfm-ft train` run wrote")
    model = CellFMClassifier(CellFMConfig(**mf.config))
    model.extractor.reinit_gene_emb(len(mf.data_keys["genes"]))
    model.load_state_dict(mf.state)
    return model.to(device).eval(), {"label_key": "", "gene_key": "", "layer": "", **mf.data_keys}


def run_inference(model_path: str, data: str, *, label_key: str | None = None, gene_key: str | None = None,
                  layer: str | None = None, input_kind: str | None = None, batch_size: int = 64,
                  trust_checkpoint: bool = False, device: str = "auto"):
    """Shared by predict and evaluate: -> (cells, rows, results, label names, the label_key the model was trained on)."""
    from ftcore.training import resolve_device

    opt.check_number("--batch-size", batch_size, int, ge=1)
    opt.device("--device")(device)
    if input_kind is not None and input_kind not in INPUT_KINDS:
        raise UserError(f"unknown --input-kind {input_kind!r}; choose one of: {', '.join(INPUT_KINDS)}")
    model_path = str(_checkpoint_path("--model", model_path))
    data = str(opt.check_input_file("--data", data, ".h5ad file"))
    dev = resolve_device(device)
    model, extra = load_finetuned(model_path, trust_checkpoint, str(dev))
    cells = read_cells(data, label_key=label_key, gene_key=gene_key if gene_key is not None else (extra["gene_key"] or None),
                       layer=layer if layer is not None else (extra["layer"] or None), input_kind=input_kind or "auto")
    vocab = GeneVocab.build(cells.genes, extra["genes"], data)
    print(vocab.report())
    missing = len(extra["genes"]) - len(vocab.genes)
    if missing:
        print(f"note: {missing} of the model's {len(extra['genes'])} genes are absent from {data} (treated as not expressed)")
    tokens = token_matrix(cells, extra["genes"])
    rows = expressed_rows(tokens)
    if len(rows) == 0:
        raise UserError(f"{data}: no cell expresses any of the model's genes; check X and --layer")
    labels = extra["labels"]
    ids = None
    if label_key:
        index = {lab: i for i, lab in enumerate(labels)}
        ids = np.array([index.get(lab, -1) for lab in cells.labels], dtype=np.int64)
    res = infer(model, _loader(CellDataset(tokens, rows, ids, model.cfg.nonz_len), batch_size))
    return cells, rows, res, labels, extra.get("label_key") or None


def predict(model_path: str, data: str, output: str, **kw) -> Path:
    output = opt.check_output_file("--output", output, (".h5ad",))
    _not_an_input("--output", output, data, model_path)
    cells, rows, res, labels, trained_key = run_inference(model_path, data, **kw)
    claim_outputs(output)
    try:
        write_predictions(cells, rows, res, labels, output, split="predict", every_cell=True,
                          label_key=kw.get("label_key") or trained_key)
    except OSError as err:
        raise _written("the predictions", output, err) from None
    unscored = cells.n_cells - len(rows)
    print(f"predictions for {len(rows)} cells -> {output} (obs[{PRED_KEY!r}], obs['cellfm_confidence'], "
          f"obsm[{PROBA_KEY!r}], obsm[{EMB_KEY!r}]; every input cell and obs_name kept"
          + (f"; {unscored} cells express none of the model's genes: no label (NaN)" if unscored else "") + ")")
    return output


def evaluate(model_path: str, data: str, output: str, *, label_key: str, **kw) -> dict:
    output = opt.check_output_dir("--output", output)
    _not_an_input("--output", output, data, model_path)
    if not str(label_key or "").strip():
        raise UserError("--label-key is empty; name the obs column with the true labels")
    cells, rows, res, labels, _ = run_inference(model_path, data, label_key=label_key, **kw)
    known = res["label"] >= 0
    if not known.any():
        raise UserError(f"none of the labels in obs[{label_key!r}] is one the model was trained on ({', '.join(labels)})")
    claim_outputs(output)
    check_output_dir(output)
    m = _plot_confusion(res, labels, Path(output) / "confusion_matrix.png")
    recall = np.diag(m) / np.maximum(m.sum(1), 1)
    metrics = {"accuracy": _accuracy(res), "n_cells": int(known.sum()),
               "n_cells_unknown_label": int((~known).sum()),
               "balanced_accuracy": float(recall[m.sum(1) > 0].mean()),
               "per_label_recall": {lab: float(r) for lab, r, n in zip(labels, recall, m.sum(1)) if n},
               "confusion_matrix": m.tolist(), "labels": labels}
    atomic_write_json(Path(output) / "metrics.json", metrics)
    print(f"accuracy {metrics['accuracy']:.4f} (balanced {metrics['balanced_accuracy']:.4f}) on {metrics['n_cells']} cells")
    return metrics
