"""The embedded default: data and a CellFM checkpoint that run with no download.

Data (`DATASETS`, the demo's --dataset):
- pbmc68k (default): scanpy's wheel ships a real data set, `pbmc68k_reduced` (700 PBMCs, 765 genes,
  10 cell types in obs["bulk_labels"]; .raw holds log-normalised values, X is scaled); it needs the
  [demo] extra (scanpy), and without it the demo stops naming the extra.
- wu2020: 200 real T cells of Wu et al. 2020 (raw counts, 16 subtypes in obs["cluster_orig"], 14
  patients), packaged in `cellfm_ft/datasets/wu2020_200.h5ad` (extracted from scirpy's wheel by
  scripts/extract_wu2020.py).
- synthetic: `synthetic.synthetic_cells` generates cell types defined by marker-gene programs, donors with
  their own gene-level batch effects, negative-binomial counts.

Checkpoint: real CellFM-80M weights cannot be fetched at run time, so the demo writes a CellFM
checkpoint of the tiny config with the true MindSpore key layout (pretraining names: gene_emb,
value_enc.value_enc.w1.weight, encoder.0.post_norm1.gamma, value_dec.w1.weight, ...) and random
weights, through ftcore's MindSpore writer, plus its gene vocabulary. The whole pipeline
(convert -> fine-tune -> predict) is thereby the one a user runs on the real file; the accuracy
shows what the architecture learns from these cells, not what CellFM pretraining adds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from ftcore.errors import UserError

from cellfm_ft.model import CellFM, make_config
from cellfm_ft.synthetic import synthetic_cells


def pbmc68k():
    """scanpy's bundled pbmc68k_reduced, or None without scanpy (the [demo] extra)."""
    try:
        import scanpy as sc
    except ImportError:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sc.datasets.pbmc68k_reduced()


WU2020_FILE = "wu2020_200.h5ad"


def wu2020():
    """The packaged 200 T cells of Wu et al. 2020 (raw counts; obs cluster_orig, patient, sample, source)."""
    from importlib import resources

    import anndata as ad

    path = Path(str(resources.files("cellfm_ft") / "datasets" / WU2020_FILE))
    if not path.is_file():
        raise UserError(f"the wu2020 data set {path} is missing from this installation of cellfm-ft; reinstall the "
                        "package, or regenerate it: python packages/cellfm-ft/scripts/extract_wu2020.py <scirpy wheel>")
    return ad.read_h5ad(path)


# name -> (the file the demo writes, obs label column, obs donor column, input layer, description)
DATASETS = {
    "pbmc68k": dict(file="pbmc68k_reduced.h5ad", label_key="bulk_labels", donor_key=None, layer="raw",
                    about="scanpy's pbmc68k_reduced: 700 PBMCs, 10 bulk_labels types, log-normalised .raw"),
    "wu2020": dict(file="wu2020_200.h5ad", label_key="cluster_orig", donor_key=None, layer=None,
                   about="Wu et al. 2020: 200 T cells, raw counts, 16 cluster_orig subtypes, 14 patients"),
    "synthetic": dict(file="synthetic_pbmc.h5ad", label_key="cell_type", donor_key="donor", layer=None,
                      about="generated: 600 cells, 6 types, 6 donors, negative-binomial counts"),
}


def load_dataset(name: str):
    """The demo data set `name` (see DATASETS); a missing optional one is an error naming how to get it."""
    if name == "pbmc68k":
        adata = pbmc68k()
        if adata is None:  # never a silent switch to other data
            raise UserError("the default demo data, pbmc68k_reduced, ships with scanpy, which is not installed here: "
                            "pip install 'packages/cellfm-ft[demo]' (or run `cellfm-ft demo --dataset wu2020` or "
                            "`--dataset synthetic`)")
        return adata
    if name == "wu2020":
        return wu2020()
    if name == "synthetic":
        return synthetic_cells()
    raise UserError(f"unknown --dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def mindspore_names(state_dict: dict) -> dict:
    """Our backbone names -> CellFM's MindSpore names (LayerNorm weight/bias -> gamma/beta)."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"(post_norm\d)\.weight$", r"\1.gamma", k)
        k = re.sub(r"(post_norm\d)\.bias$", r"\1.beta", k)
        out[k] = v
    return out


def demo_vocabulary(data_genes: list[str]) -> list[str]:
    """A stand-in model vocabulary: most data genes (every 25th left out, to show the report) + others."""
    kept = [g for i, g in enumerate(data_genes) if i % 25 != 7]
    return kept + [f"VOCAB{i:03d}" for i in range(32)]


def write_demo_checkpoint(path: Path, vocab: list[str], config: str = "tiny", seed: int = 0) -> Path:
    """A CellFM .ckpt in MindSpore format (true key layout, random weights) + `<path>.genes.txt`."""
    from ftcore.checkpoint.mindspore import write_mindspore
    from ftcore.io import atomic_write_text

    torch.manual_seed(seed)
    model = CellFM(make_config(config, n_genes=len(vocab)))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    sd["global_step"] = np.array(1000, dtype=np.int64)  # as MindSpore's append_dict leaves it
    write_mindspore(path, mindspore_names(sd))
    vocab_path = Path(str(path) + ".genes.txt")
    atomic_write_text(vocab_path, "\n".join(vocab) + "\n")
    return vocab_path
