"""Write the var-st bad-input corpus (small files) and cases.json next to this script.

    python tests/bad_inputs/var-st/make_corpus.py

Each case is a `var-st` command line (placeholders: {corpus} = this folder, {out} = a fresh
output folder) and the phrase its one-line error must contain. Deterministic (seed 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from var_st.model import TwoStageVARST
from var_st.synthetic import make_demo_adata

HERE = Path(__file__).resolve().parent
GENES, HIST = 12, 8
TINY_YAML = """\
vqvae: {vocab_size: 16, embed_dim: 4, hidden_dim: 16, coarse_scales: [1, 2, 4], reservoir_size: 64}
var: {embed_dim: 8, num_heads: 2, num_layers: 1, feedforward_dim: 16, condition_embed_dim: 8, max_sequence_length: 32}
"""


def good():
    return make_demo_adata(n_slides=3, grid=3, n_genes=GENES, n_programs=2, histology_dim=HIST, seed=0)


def tiny_model() -> TwoStageVARST:
    torch.manual_seed(0)
    vq = {"vocab_size": 16, "embed_dim": 4, "hidden_dim": 16, "coarse_scales": (1, 2, 4), "reservoir_size": 64}
    var = {"embed_dim": 8, "num_heads": 2, "num_layers": 1, "feedforward_dim": 16, "condition_embed_dim": 8,
           "max_sequence_length": 32, "histology_dim": HIST}
    model = TwoStageVARST(GENES, vq, var, current_stage=1)
    model.gene_names = list(good().var_names)
    return model


def write(name: str, adata) -> None:
    adata.write_h5ad(HERE / name)


def main() -> None:
    for old in HERE.iterdir():
        if old.name != "make_corpus.py" and old.is_file():
            old.unlink()
    write("good.h5ad", good())
    (HERE / "tiny.yaml").write_text(TINY_YAML)
    ad = good(); del ad.obsm["histology"]; write("missing_histology.h5ad", ad)  # noqa: E702
    ad = good(); del ad.obsm["spatial"]; write("missing_spatial.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["histology"][4, 2] = np.nan; write("nan_histology.h5ad", ad)  # noqa: E702
    ad = good(); ad.X[3, 1] = np.inf; write("inf_expression.h5ad", ad)  # noqa: E702
    ad = good(); ad.X[0, 0] = -2.0; write("negative_expression.h5ad", ad)  # noqa: E702
    write("empty.h5ad", good()[:0].copy())
    ad = good(); ad.obsm["histology"] = ad.obsm["histology"][:, :5].copy(); write("wrong_feature_dim.h5ad", ad)  # noqa: E702
    ad = good(); ad.var_names = [f"OTHER{i}" for i in range(GENES)]; write("wrong_genes.h5ad", ad)  # noqa: E702
    (HERE / "not_h5ad.h5ad").write_text("spot,gene0\nspot0,1\n")
    (HERE / "a_file.txt").write_text("a file where an output directory is asked for\n")
    (HERE / "bad_key.yaml").write_text(TINY_YAML.replace("vocab_size: 16", "vocab_sise: 16"))
    (HERE / "bad_syntax.yaml").write_text("vqvae:\n  vocab_size: 16\n   embed_dim: 4\n")
    (HERE / "unknown_section.yaml").write_text("trainer:\n  epochs: 3\n")
    (HERE / "bad_key.toml").write_text("[var]\nnum_layer = 2\n")
    (HERE / "bad_syntax.toml").write_text("[var]\nnum_layers = two\n")
    model = tiny_model()
    model.vqvae.fit_gene_stats(torch.rand(20, GENES))
    model.save_stage_checkpoint(HERE / "tiny_stage1.ckpt", stage=1)
    model.set_training_stage(2)
    model.save_complete_model(HERE / "tiny_complete.ckpt")
    raw = (HERE / "tiny_complete.ckpt").read_bytes()
    (HERE / "truncated_complete.ckpt").write_bytes(raw[: len(raw) // 2])
    obj = torch.load(HERE / "tiny_complete.ckpt", weights_only=True)
    obj["extra"]["var_config"]["embed_dim"] = 16  # weights are 8 wide: a shape mismatch
    torch.save(obj, HERE / "mismatched_complete.ckpt")

    train = ["train", "--dataset", "{corpus}/good.h5ad", "--config", "{corpus}/tiny.yaml", "--num_genes", str(GENES),
             "--epochs", "1", "--log_dir", "{out}", "--gpus", "0"]
    predict = ["predict", "--checkpoint", "{corpus}/tiny_complete.ckpt", "--dataset", "{corpus}/good.h5ad",
               "--output", "{out}/pred.h5ad", "--gpus", "0"]

    def swap(argv, flag, value):
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv

    cases = {
        "missing_histology_obsm": (swap(predict, "--dataset", "{corpus}/missing_histology.h5ad"),
                                   "obsm['histology'] (histology features) is missing; obsm has: spatial"),
        "missing_spatial_obsm": (swap(train, "--dataset", "{corpus}/missing_spatial.h5ad"),
                                 "obsm['spatial'] (spot coordinates) is missing"),
        "nan_histology": (swap(predict, "--dataset", "{corpus}/nan_histology.h5ad"), "contains NaN or inf in 1 spots"),
        "inf_expression": (swap(train, "--dataset", "{corpus}/inf_expression.h5ad"), "X contains NaN or inf"),
        "negative_expression": (swap(train, "--dataset", "{corpus}/negative_expression.h5ad"), "X has negative values"),
        "empty_h5ad": (swap(train, "--dataset", "{corpus}/empty.h5ad"), "the file holds 0 spots"),
        "wrong_feature_dim": (swap(predict, "--dataset", "{corpus}/wrong_feature_dim.h5ad"),
                              "histology features have 5 dims but the model expects 8"),
        "genes_not_overlapping": (["evaluate", "--checkpoint", "{corpus}/tiny_complete.ckpt", "--dataset",
                                   "{corpus}/wrong_genes.h5ad", "--output", "{out}/metrics.json", "--gpus", "0"],
                                  "12 of the model's 12 genes are not in var_names"),
        "too_few_genes": (swap(train, "--num_genes", "200"), "the file has 12 genes but the model needs 200"),
        "not_h5ad": (swap(train, "--dataset", "{corpus}/not_h5ad.h5ad"), "not a readable .h5ad file"),
        "missing_data_file": (swap(train, "--dataset", "{corpus}/absent.h5ad"), "does not exist"),
        "yaml_unknown_key": (swap(train, "--config", "{corpus}/bad_key.yaml"), "unknown key 'vqvae.vocab_sise'; did you mean"),
        "yaml_syntax": (swap(train, "--config", "{corpus}/bad_syntax.yaml"), "YAML syntax error at line 3"),
        "yaml_unknown_section": (swap(train, "--config", "{corpus}/unknown_section.yaml"),
                                 "unknown section 'trainer'; the sections are vqvae and var"),
        "toml_unknown_key": (swap(train, "--config", "{corpus}/bad_key.toml"), "unknown key 'var.num_layer'; did you mean"),
        "toml_syntax": (swap(train, "--config", "{corpus}/bad_syntax.toml"), "TOML syntax error"),
        "override_unknown_key": (train + ["--set", "var.num_head=4"], "unknown key 'var.num_head'; did you mean"),
        "unknown_preset": (train + ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        "vocab_mismatch": (train + ["--set", "var.vocab_size=99"], "differs from vqvae_config.vocab_size 16"),
        "stage2_without_stage1_ckpt": (swap(train, "--epochs", "1") + ["--training_stage", "2"],
                                       "stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt"),
        "stage2_with_complete_ckpt": (train + ["--training_stage", "2", "--stage1_ckpt", "{corpus}/tiny_complete.ckpt"],
                                      "is not a var-st stage-1 checkpoint"),
        "stage1_ckpt_for_predict": (swap(predict, "--checkpoint", "{corpus}/tiny_stage1.ckpt"),
                                    "is a stage-1 (VQ-VAE only) checkpoint"),
        "truncated_checkpoint": (swap(predict, "--checkpoint", "{corpus}/truncated_complete.ckpt"),
                                 "truncated or corrupt"),
        "shape_mismatch_checkpoint": (swap(predict, "--checkpoint", "{corpus}/mismatched_complete.ckpt"),
                                      "weights do not fit this model"),
        "predict_output_not_h5ad": (swap(predict, "--output", "{out}/pred.csv"), "must end in .h5ad"),
        "zero_temperature": (predict + ["--decoding", "sample", "--temperature", "0"], "temperature must be > 0"),
        "unwritable_output_dir": (swap(train, "--log_dir", "{corpus}/a_file.txt/logs"), "is not writable"),
    }
    (HERE / "cases.json").write_text(json.dumps({k: {"argv": a, "phrase": p} for k, (a, p) in cases.items()}, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in HERE.iterdir()}
    too_big = {k: v for k, v in sizes.items() if v > 50_000}
    assert not too_big, too_big
    print(f"wrote {len(sizes)} files, {len(cases)} cases to {HERE}")


if __name__ == "__main__":
    main()
