"""Write the var-st bad-input corpus (small files) and cases.json next to this script.

    python tests/bad_inputs/var-st/make_corpus.py

Each case is a `var-st` command line (placeholders: {corpus} = this folder, {out} = a fresh
output folder) and the phrase its one-line error must contain. Deterministic (seed 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from var_st.data import load_spots, split_record
from var_st.model import TwoStageVARST
from var_st.synthetic import make_demo_adata

HERE = Path(__file__).resolve().parent
GENES, HIST = 12, 8
TINY_YAML = """\
vqvae: {vocab_size: 16, embed_dim: 4, hidden_dim: 16, coarse_scales: [1, 2, 4], reservoir_size: 64}
var: {embed_dim: 8, num_heads: 2, num_layers: 1, feedforward_dim: 16, condition_embed_dim: 8, max_sequence_length: 32}
"""
TINY_VQ = {"vocab_size": 16, "embed_dim": 4, "hidden_dim": 16, "coarse_scales": (1, 2, 4), "reservoir_size": 64}
TINY_VAR = {"embed_dim": 8, "num_heads": 2, "num_layers": 1, "feedforward_dim": 16, "condition_embed_dim": 8,
            "max_sequence_length": 32, "histology_dim": HIST}


def good():
    ad = make_demo_adata(n_slides=3, grid=3, n_genes=GENES, n_programs=2, histology_dim=HIST, seed=0)
    ad.obs["spot_id"] = [f"id{i}" for i in range(ad.n_obs)]  # a per-spot column, not slide ids
    return ad


def tiny_model(genes=None) -> TwoStageVARST:
    torch.manual_seed(0)
    model = TwoStageVARST(GENES, TINY_VQ, TINY_VAR, current_stage=1)
    model.gene_names = list(genes or good().var_names)
    return model


def stable(path: Path) -> None:
    """Re-save a checkpoint under its own name: the model's atomic save names the zip's records after a random
    temporary file, so the bytes would differ between runs."""
    torch.save(torch.load(path, weights_only=True), path)


def anndata_without_x(ad):
    import anndata

    return anndata.AnnData(obs=ad.obs.copy(), obsm={k: ad.obsm[k] for k in ad.obsm})


def write(name: str, adata) -> None:
    adata.write_h5ad(HERE / name)


def config_files() -> dict[str, str]:
    return {
        "tiny.yaml": TINY_YAML,
        "bad_key.yaml": TINY_YAML.replace("vocab_size: 16", "vocab_sise: 16"),
        "bad_syntax.yaml": "vqvae:\n  vocab_size: 16\n   embed_dim: 4\n",
        "unknown_section.yaml": "trainer:\n  epochs: 3\n",
        "training_section.yaml": TINY_YAML + "training:\n  lr: 1.0e-3\n  epochs: 5\n",
        "bad_key.toml": "[var]\nnum_layer = 2\n",
        "bad_syntax.toml": "[var]\nnum_layers = two\n",
        "nan.yaml": TINY_YAML.replace("vocab_size: 16", "vocab_size: .nan"),
        "nan_dropout.toml": "[var]\ndropout = nan\n",
        "inf_beta.yaml": TINY_YAML.replace("vocab_size: 16,", "vocab_size: 16, beta: .inf,"),
        "dup_key.yaml": TINY_YAML + "var:\n  num_layers: 10\n",
        "dup_key_inner.yaml": "var:\n  dropout: 0.1\n  dropout: 0.9\n",
        "dup_key.toml": "[var]\nnum_layers = 1\nnum_layers = 12\n",
        "bom_bad_key.toml": "\ufeff[var]\nnum_layerz = 1\n",
        "dropout_too_big.yaml": TINY_YAML.replace("num_layers: 1,", "num_layers: 1, dropout: 1.5,"),
        "zero_heads.yaml": TINY_YAML.replace("num_heads: 2", "num_heads: 0"),
        "heads_not_dividing.yaml": TINY_YAML.replace("num_heads: 2", "num_heads: 3"),
        "negative_hidden.yaml": TINY_YAML.replace("hidden_dim: 16", "hidden_dim: -16"),
        "vocab_one.yaml": TINY_YAML.replace("vocab_size: 16", "vocab_size: 1"),
        "scales_not_rising.yaml": TINY_YAML.replace("[1, 2, 4]", "[1, 4, 2]"),
        "scales_too_big.yaml": TINY_YAML.replace("[1, 2, 4]", "[1, 4, 40]"),
        "scales_text.yaml": TINY_YAML.replace("[1, 2, 4]", "[1, two, 4]"),
        "short_sequence.yaml": TINY_YAML.replace("max_sequence_length: 32", "max_sequence_length: 5"),
        "list_top.yaml": "- vqvae\n- var\n",
        "section_not_mapping.yaml": "vqvae: 16\n",
        "vocab_mismatch.yaml": TINY_YAML.replace("num_heads: 2,", "num_heads: 2, vocab_size: 32,"),
        "stage2_other_vocab.yaml": TINY_YAML.replace("vocab_size: 16", "vocab_size: 32"),
        "lr_as_text.yaml": "vqvae:\n  beta: one\n",
        "coord_dim.yaml": "var:\n  coord_dim: 3\n",
        "empty.toml": "",
    }


def main() -> None:
    for old in HERE.iterdir():
        if old.name != "make_corpus.py" and old.is_file():
            old.unlink()
    write("good.h5ad", good())
    for name, text in config_files().items():
        (HERE / name).write_text(text, encoding="utf-8")
    ad = good(); del ad.obsm["histology"]; write("missing_histology.h5ad", ad)  # noqa: E702
    ad = good(); del ad.obsm["spatial"]; write("missing_spatial.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["histology"][4, 2] = np.nan; write("nan_histology.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["histology"][5, 1] = 1e38; write("huge_histology.h5ad", ad)  # noqa: E702
    ad = good(); ad.X[3, 1] = np.inf; write("inf_expression.h5ad", ad)  # noqa: E702
    ad = good(); ad.X[2, 3] = 1e38; write("huge_expression.h5ad", ad)  # noqa: E702
    ad = good(); ad.X[0, 0] = -2.0; write("negative_expression.h5ad", ad)  # noqa: E702
    ad = good(); ad.X = (ad.X / ad.X.sum(1, keepdims=True) * 1e4 + 0.5).astype(np.float32)  # noqa: E702
    write("unlogged_cp10k.h5ad", ad)
    ad = good(); ad.X = (np.log1p(ad.X) - np.log1p(ad.X).mean(0)).astype(np.float32)  # noqa: E702
    write("scaled_expression.h5ad", ad)
    write("empty.h5ad", good()[:0].copy())
    write("no_genes.h5ad", good()[:, :0].copy())
    ad = good(); write("histology_only.h5ad", anndata_without_x(ad))  # noqa: E702
    ad = good(); ad.obsm["histology"] = ad.obsm["histology"][:, :5].copy(); write("wrong_feature_dim.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["histology"] = ad.obsm["histology"][:, 0].copy(); write("histology_1d.h5ad", ad)  # noqa: E702
    ad = good(); ad.var_names = [f"OTHER{i}" for i in range(GENES)]; write("wrong_genes.h5ad", ad)  # noqa: E702
    ad = good(); ad.var_names = [str(i) for i in range(GENES)]; write("integer_genes.h5ad", ad)  # noqa: E702
    ad = good(); ad.var_names = list(ad.var_names[:-1]) + [ad.var_names[0]]; write("dup_genes.h5ad", ad)  # noqa: E702
    ad = good(); ad.obs_names = list(ad.obs_names[:-1]) + [ad.obs_names[0]]; write("dup_spots.h5ad", ad)  # noqa: E702
    # coordinates: text with a unit, text numbers beside one bad cell in a DataFrame, NaN, one column, 1e38
    ad = good(); xy = ad.obsm["spatial"].astype(str).astype(object); xy[6, 1] = "12px"  # noqa: E702
    ad.obsm["spatial"] = xy; write("text_coords.h5ad", ad)  # noqa: E702
    ad = good(); xy = ad.obsm["spatial"]  # noqa: E702
    ad.obsm["spatial"] = pd.DataFrame({"x": [str(v) for v in xy[:, 0]], "y": [str(v) for v in xy[:, 1]]},
                                      index=ad.obs_names)
    ad.obsm["spatial"].iloc[2, 0] = "n/a"; write("text_coords_frame.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["spatial"] = ad.obsm["spatial"].astype(np.float64); ad.obsm["spatial"][8, 0] = np.nan  # noqa: E702
    write("nan_coords.h5ad", ad)
    ad = good(); ad.obsm["spatial"] = ad.obsm["spatial"][:, :1].copy(); write("coords_one_column.h5ad", ad)  # noqa: E702
    ad = good(); ad.obsm["spatial"] = ad.obsm["spatial"].astype(np.float64); ad.obsm["spatial"][1, 1] = 1e38  # noqa: E702
    write("huge_coords.h5ad", ad)
    # slides: none at all, one, a missing id, text ids
    ad = good(); del ad.obs["slide"]; write("no_slide_column.h5ad", ad)  # noqa: E702
    ad = good(); ad.obs["slide"] = "slideA"; write("one_slide.h5ad", ad)  # noqa: E702
    ad = good(); s = ad.obs["slide"].astype(object).to_numpy(); s[7] = None  # noqa: E702
    ad.obs["slide"] = pd.Categorical(s); write("slide_missing_id.h5ad", ad)  # noqa: E702
    (HERE / "not_h5ad.h5ad").write_text("spot,gene0\nspot0,1\n")
    (HERE / "data.csv").write_text("spot,gene0\nspot0,1\n")
    (HERE / "zero_bytes.h5ad").write_bytes(b"")
    (HERE / "a_file.txt").write_text("a file where an output directory is asked for\n")
    # checkpoints
    model = tiny_model()
    model.vqvae.fit_gene_stats(torch.rand(20, GENES))
    model.save_stage_checkpoint(HERE / "tiny_stage1.ckpt", stage=1)
    stable(HERE / "tiny_stage1.ckpt")
    raw = (HERE / "tiny_stage1.ckpt").read_bytes()
    (HERE / "truncated_stage1.ckpt").write_bytes(raw[: len(raw) // 2])
    model.set_training_stage(2)
    model.save_complete_model(HERE / "tiny_complete.ckpt")
    model.save_stage_checkpoint(HERE / "tiny_stage2_best.ckpt", stage=2)
    stable(HERE / "tiny_complete.ckpt")
    stable(HERE / "tiny_stage2_best.ckpt")
    raw = (HERE / "tiny_complete.ckpt").read_bytes()
    (HERE / "truncated_complete.ckpt").write_bytes(raw[: len(raw) // 2])
    obj = torch.load(HERE / "tiny_complete.ckpt", weights_only=True)
    obj["extra"]["var_config"]["embed_dim"] = 16  # weights are 8 wide: a shape mismatch
    if "artefact" in obj:  # the model header (ftcore.artefact) is what load_complete_model reads
        obj["artefact"]["config"]["var_config"]["embed_dim"] = 16
    torch.save(obj, HERE / "mismatched_complete.ckpt")
    obj = torch.load(HERE / "tiny_complete.ckpt", weights_only=True)
    obj["model"]["var.head.weight"] = (obj["model"]["var.head.weight"] * 100).to(torch.int32)
    torch.save(obj, HERE / "int_weights_complete.ckpt")
    obj = torch.load(HERE / "tiny_complete.ckpt", weights_only=True)
    obj["model"]["var.head.weight"][0, 0] = float("nan")
    torch.save(obj, HERE / "nan_weights_complete.ckpt")
    obj = torch.load(HERE / "tiny_stage1.ckpt", weights_only=True)
    key = next(k for k, v in obj["model"].items() if v.is_floating_point() and v.ndim == 2)
    obj["model"][key][0, 0] = float("nan")
    torch.save(obj, HERE / "nan_weights_stage1.ckpt")
    # a stage-1 checkpoint that stores its run's data contract: keys, preset and the split of good.h5ad
    data = load_spots(good(), source="good.h5ad", genes=list(good().var_names))
    contract = {"dataset": "good", "source": "good.h5ad", "seed": 0, "preset": "demo", "histology_key": "histology",
                "spatial_key": "spatial", "slide_key": "slide", "slide_key_found": True, "split": split_record(data)}
    model = tiny_model()
    model.vqvae.fit_gene_stats(torch.rand(20, GENES))
    model.save_stage_checkpoint(HERE / "stage1_with_split.ckpt", stage=1, data=contract)
    stable(HERE / "stage1_with_split.ckpt")
    other = tiny_model(genes=[f"OTHER{i}" for i in range(GENES)])
    other.save_stage_checkpoint(HERE / "stage1_other_genes.ckpt", stage=1)
    stable(HERE / "stage1_other_genes.ckpt")
    obj = torch.load(HERE / "tiny_complete.ckpt", weights_only=True)
    torch.save({"state_dict": obj["model"]}, HERE / "no_metadata.ckpt")  # weights without var-st's metadata

    cases = make_cases()
    lines = [f" {json.dumps(k)}: {json.dumps({'argv': a, 'phrase': p}, ensure_ascii=False, separators=(',', ':'))}" for k, a, p in cases]
    (HERE / "cases.json").write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")  # one case a line
    sizes = {p.name: p.stat().st_size for p in HERE.iterdir()}
    too_big = {k: v for k, v in sizes.items() if v > 50_000 and k != "cases.json"}  # data files stay small
    assert not too_big, too_big
    print(f"wrote {len(sizes)} files, {len(cases)} cases to {HERE}")


def make_cases() -> list[tuple[str, list[str], str]]:
    c = "{corpus}"
    train = ["train", "--dataset", f"{c}/good.h5ad", "--config", f"{c}/tiny.yaml", "--num_genes", str(GENES),
             "--epochs", "1", "--log_dir", "{out}", "--gpus", "0"]
    stage2 = train + ["--training_stage", "2", "--stage1_ckpt", f"{c}/tiny_stage1.ckpt"]
    predict = ["predict", "--checkpoint", f"{c}/tiny_complete.ckpt", "--dataset", f"{c}/good.h5ad",
               "--output", "{out}/pred.h5ad", "--gpus", "0"]
    evaluate = ["evaluate", "--checkpoint", f"{c}/tiny_complete.ckpt", "--dataset", f"{c}/good.h5ad",
                "--output", "{out}/metrics.json", "--gpus", "0"]
    demo_data = ["make-demo-data", "--output", "{out}/demo.h5ad", "--slides", "2", "--grid", "3", "--genes", "10",
                 "--histology_dim", "4"]

    def swap(argv, flag, value):
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv

    def data(argv, name):
        return swap(argv, "--dataset", f"{c}/{name}")

    def config(name):
        return swap(train, "--config", f"{c}/{name}")

    cases = [
        # -- the data file itself
        ("missing_histology_obsm", data(predict, "missing_histology.h5ad"),
         "obsm['histology'] (histology features) is missing; obsm has: spatial"),
        ("missing_spatial_obsm", data(train, "missing_spatial.h5ad"), "obsm['spatial'] (spot coordinates) is missing"),
        ("nan_histology", data(predict, "nan_histology.h5ad"), "obsm['histology']: 1 value(s) are NaN/inf, first at row 4"),
        ("huge_histology", data(predict, "huge_histology.h5ad"), "are beyond ±1e+09, first at row 5"),
        ("inf_expression", data(train, "inf_expression.h5ad"), "X: 1 value(s) are NaN/inf, first at row 3"),
        ("huge_expression_1e38", data(train, "huge_expression.h5ad"), "X: 1 value(s) are beyond ±1e+09, first at row 2"),
        ("huge_expression_names_gene", data(train, "huge_expression.h5ad"), "column 3 ('gene003')"),
        ("huge_expression_evaluate", data(evaluate, "huge_expression.h5ad"), "beyond ±1e+09"),
        ("negative_expression", data(train, "negative_expression.h5ad"), "X: it holds negative values (centred or scaled"),
        ("scaled_expression", data(train, "scaled_expression.h5ad"), "it holds negative values"),
        ("scaled_expression_evaluate", data(evaluate, "scaled_expression.h5ad"), "it holds negative values"),
        ("unlogged_cp10k", data(train, "unlogged_cp10k.h5ad"), "normalised and never log-transformed"),
        ("unlogged_cp10k_stage2", data(stage2, "unlogged_cp10k.h5ad"), "normalised and never log-transformed"),
        ("empty_h5ad", data(train, "empty.h5ad"), "the file holds 0 spots"),
        ("empty_h5ad_predict", data(predict, "empty.h5ad"), "the file holds 0 spots"),
        ("no_genes_h5ad", data(train, "no_genes.h5ad"), "x 0 genes; it needs at least one of each"),
        ("wrong_feature_dim", data(predict, "wrong_feature_dim.h5ad"), "histology features have 5 dims but the model expects 8"),
        ("histology_one_dimensional", data(predict, "histology_1d.h5ad"), "histology features have 1 dims but the model expects 8"),
        ("genes_not_overlapping", data(evaluate, "wrong_genes.h5ad"), "12 of the model's 12 genes are not in var_names"),
        ("integer_gene_names", data(evaluate, "integer_genes.h5ad"), "genes are not in var_names (e.g. gene0"),
        ("integer_gene_names_stage2", data(stage2, "integer_genes.h5ad"), "genes are not in var_names"),
        ("duplicated_genes", data(train, "dup_genes.h5ad"), "var_names (genes) are not unique: 'gene000' appears 2 times"),
        ("duplicated_spots", data(train, "dup_spots.h5ad"), "obs_names (spots) are not unique"),
        ("duplicated_spots_evaluate", data(evaluate, "dup_spots.h5ad"), "obs_names (spots) are not unique"),
        ("too_few_genes", swap(train, "--num_genes", "200"), "the file has 12 genes but the model needs 200"),
        ("not_h5ad", data(train, "not_h5ad.h5ad"), "not a readable .h5ad file"),
        ("csv_as_dataset", data(train, "data.csv"), "is not an .h5ad file"),
        ("zero_byte_dataset", data(train, "zero_bytes.h5ad"), "is empty (0 bytes)"),
        ("missing_data_file", data(train, "absent.h5ad"), "does not exist"),
        ("misspelt_data_file", data(train, "god.h5ad"), "did you mean"),
        ("dataset_is_a_directory", swap(train, "--dataset", c), "is a directory"),
        ("dataset_empty_string", swap(train, "--dataset", ""), "--dataset is empty"),
        ("dataset_name_not_in_data_dir", swap(train, "--dataset", "PRAD") + ["--data_dir", c],
         "dataset 'PRAD'"),
        ("dataset_name_with_a_dot", swap(train, "--dataset", "PRAD.v2") + ["--data_dir", c],
         "PRAD.v2.h5ad does not exist; pass --dataset path/to/file.h5ad"),
        ("checkpoint_as_dataset", data(predict, "tiny_complete.ckpt"), "is not an .h5ad file"),
        ("histology_key_wrong", train + ["--histology_key", "uni_features"], "obsm['uni_features'] (histology features) is missing"),
        ("spatial_key_empty", train + ["--spatial_key", " "], "--spatial_key is empty"),
        # -- coordinates
        ("coords_text_with_unit", data(train, "text_coords.h5ad"), "row 6 ('"),
        ("coords_text_predict", data(predict, "text_coords.h5ad"), "holds '12px', not a number"),
        ("coords_text_frame", data(predict, "text_coords_frame.h5ad"), "holds 'n/a', not a number"),
        ("coords_nan", data(train, "nan_coords.h5ad"), "obsm['spatial']: 1 value(s) are NaN/inf, first at row 8"),
        ("coords_one_column", data(predict, "coords_one_column.h5ad"), "expected an (n_spots, 2) array"),
        ("coords_1e38", data(predict, "huge_coords.h5ad"), "beyond ±1e+09, first at row 1"),
        # -- split plan
        ("slide_key_missing_column", train + ["--slide_key", "sample"], "obs has no column 'sample'"),
        ("slide_key_missing_lists_columns", train + ["--slide_key", "Slide"], "obs columns: 'slide', 'spot_id'"),
        ("slide_key_missing_predict", predict + ["--slide_key", "sample"], "obs has no column 'sample'"),
        ("slide_key_missing_evaluate", evaluate + ["--slide_key", "section"], "obs has no column 'section'"),
        ("slide_key_missing_with_random", train + ["--slide_key", "sample", "--random_split"], "obs has no column 'sample'"),
        ("slide_key_per_spot_column", train + ["--slide_key", "spot_id"], "has 27 distinct values for 27 spots"),
        ("slide_key_empty", train + ["--slide_key", ""], "--slide_key is empty"),
        ("no_slide_column_default", data(train, "no_slide_column.h5ad"), "or --random_split to split spots at random"),
        ("no_slide_column_stage2", data(stage2, "no_slide_column.h5ad"), "obs has no column 'slide'"),
        ("one_slide_only", data(train, "one_slide.h5ad"), "holds one slide ('slideA')"),
        ("one_slide_evaluate", data(evaluate, "one_slide.h5ad"), "would leave nothing to train on"),
        ("slide_id_missing", data(train, "slide_missing_id.h5ad"), "has no slide id for 1 spots (first row 7"),
        ("val_slide_does_not_exist", train + ["--val_slides", "slide9"], "--val_slides: slide 'slide9' is not in obs['slide']"),
        ("test_slide_does_not_exist", train + ["--test_slides", "Slide2"], "the slides are: 'slide0', 'slide1', 'slide2'"),
        ("test_slide_trailing_space_is_stripped_then_unknown", train + ["--test_slides", "slide 2"], "'slide 2' is not in"),
        ("val_equals_test", train + ["--val_slides", "slide1", "--test_slides", "slide1"],
         "'slide1' is in both --val_slides and --test_slides"),
        ("val_test_overlap_lists", train + ["--val_slides", "slide0,slide1", "--test_slides", "slide1,slide2"],
         "is in both --val_slides and --test_slides"),
        ("held_out_everything", train + ["--val_slides", "slide0,slide1", "--test_slides", "slide2"],
         "no slide is left for training"),
        ("held_out_all_as_val", train + ["--val_slides", "slide0,slide1,slide2"], "no slide is left for training"),
        ("val_slides_empty", train + ["--val_slides", ""], "has an empty slide name"),
        ("val_slides_double_comma", train + ["--val_slides", "slide0,,slide1"], "has an empty slide name"),
        ("val_slides_twice", train + ["--val_slides", "slide0,slide0"], "names slide 'slide0' twice"),
        ("random_split_with_held_out", train + ["--random_split", "--test_slides", "slide2"], "cannot be combined"),
        ("held_out_unknown_evaluate", evaluate + ["--test_slides", "slide7"], "slide 'slide7' is not in"),
        # -- model config files and overrides
        ("yaml_unknown_key", config("bad_key.yaml"), "unknown key 'vqvae.vocab_sise'; did you mean"),
        ("yaml_syntax", config("bad_syntax.yaml"), "YAML syntax error at line 3"),
        ("yaml_unknown_section", config("unknown_section.yaml"), "unknown section 'trainer'; the sections are vqvae and var"),
        ("yaml_run_settings_section", config("unknown_section.yaml"), "training settings (epochs) are command-line flags"),
        ("yaml_training_section", config("training_section.yaml"), "training settings (epochs) are command-line flags"),
        ("toml_unknown_key", config("bad_key.toml"), "unknown key 'var.num_layer'; did you mean"),
        ("toml_syntax", config("bad_syntax.toml"), "TOML syntax error"),
        ("toml_bom_unknown_key", config("bom_bad_key.toml"), "unknown key 'var.num_layerz'"),
        ("yaml_nan", config("nan.yaml"), "'vqvae.vocab_size' is nan"),
        ("toml_nan_dropout", config("nan_dropout.toml"), "'var.dropout' is nan"),
        ("yaml_inf_beta", config("inf_beta.yaml"), "'vqvae.beta' is inf"),
        ("yaml_duplicate_section", config("dup_key.yaml"), "key 'var' is set twice (lines 2 and 3)"),
        ("yaml_duplicate_key", config("dup_key_inner.yaml"), "key 'dropout' is set twice (lines 2 and 3)"),
        ("toml_duplicate_key", config("dup_key.toml"), "key 'var.num_layers' is set twice (lines 2 and 3)"),
        ("yaml_dropout_above_one", config("dropout_too_big.yaml"), "'var.dropout' is 1.5; it must be >= 0 and < 1"),
        ("yaml_zero_heads", config("zero_heads.yaml"), "'var.num_heads' is 0; it must be >= 1"),
        ("yaml_heads_not_dividing", config("heads_not_dividing.yaml"), "embed_dim 8 is not divisible by num_heads 3"),
        ("yaml_negative_hidden", config("negative_hidden.yaml"), "'vqvae.hidden_dim' is -16"),
        ("yaml_vocab_one", config("vocab_one.yaml"), "'vqvae.vocab_size' is 1; it must be >= 2"),
        ("yaml_scales_not_rising", config("scales_not_rising.yaml"), "must start with 1 and increase"),
        ("yaml_scales_above_genes", config("scales_too_big.yaml"), "must all be below num_genes 12"),
        ("yaml_scales_text", config("scales_text.yaml"), "should be a number, got two"),
        ("yaml_sequence_too_short", config("short_sequence.yaml"), "exceed max_sequence_length 5"),
        ("yaml_top_level_list", config("list_top.yaml"), "expected a mapping of keys at the top level"),
        ("yaml_section_not_mapping", config("section_not_mapping.yaml"), "section 'vqvae' must be a mapping"),
        ("yaml_vocab_mismatch", config("vocab_mismatch.yaml"), "differs from vqvae_config.vocab_size 16"),
        ("yaml_text_for_number", config("lr_as_text.yaml"), "'vqvae.beta' should be a number, got one"),
        ("yaml_coord_dim", config("coord_dim.yaml"), "'var.coord_dim' is 3"),
        ("config_missing", config("absent.yaml"), "config file"),
        ("config_is_directory", swap(train, "--config", c), "is a directory"),
        ("config_is_the_h5ad", config("good.h5ad"), "not a UTF-8 text file"),
        ("config_empty_string", swap(train, "--config", ""), "--config is empty"),
        ("override_unknown_key", train + ["--set", "var.num_head=4"], "unknown key 'var.num_head'; did you mean"),
        ("override_no_equals", train + ["--set", "var.num_layers"], "is not key=value"),
        ("override_nan", train + ["--set", "var.num_layers=nan"], "'var.num_layers' is nan"),
        ("override_unknown_section", train + ["--set", "model.depth=3"], "unknown section 'model'"),
        ("override_section_value", train + ["--set", "var=3"], "section 'var' must be a mapping"),
        ("override_negative_dropout", train + ["--set", "var.attention_dropout=-0.1"], "'var.attention_dropout' is -0.1"),
        ("unknown_preset", train + ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
        ("vocab_mismatch", train + ["--set", "var.vocab_size=99"], "differs from vqvae_config.vocab_size 16"),
        # -- training numbers (and what they used to crash into)
        ("lr_nan", train + ["--lr", "nan"], "--lr is nan; give a finite number"),
        ("lr_inf", train + ["--lr", "inf"], "--lr is inf"),
        ("lr_zero", train + ["--lr", "0"], "--lr is 0; it must be > 0"),
        ("lr_negative", train + ["--lr", "-0.001"], "--lr is -0.001; it must be > 0"),
        ("lr_negative_equals", train + ["--lr=-1e-3"], "--lr is -1e-3; it must be > 0"),
        ("lr_negative_exponent_needs_equals", train + ["--lr", "-1e-3"], "argument --lr: expected one argument"),
        ("lr_comma", train + ["--lr", "1e-3,"], "--lr should be a number, got 1e-3,"),
        ("lr_empty", train + ["--lr", ""], "--lr should be a number, got ''"),
        ("lr_double_dash_equals", train + ["--lr=--"], "--lr should be a number, got --"),
        ("max_steps_double_dash_equals", train + ["--max_steps=--"], "--max_steps should be a number, got --"),
        ("lr_huge_nan_loss", train + ["--lr", "1e6", "--max_steps", "3"], "the run diverged"),
        ("lr_beyond_float32_optimizer", train + ["--lr", "3.6e37"], "--lr is 3.6e37; it must be > 0 and <= 1e+06"),
        ("epochs_zero_without_max_steps", swap(train, "--epochs", "0"), "--epochs 0 trains nothing"),
        ("epochs_zero_stage2", swap(stage2, "--epochs", "0"), "--epochs 0 trains nothing"),
        ("epochs_negative", swap(train, "--epochs", "-1"), "--epochs is -1; it must be >= 0"),
        ("epochs_fraction", swap(train, "--epochs", "1.5"), "--epochs should be a whole number, got 1.5"),
        ("epochs_nan", swap(train, "--epochs", "nan"), "--epochs is nan"),
        ("max_steps_negative", train + ["--max_steps", "-1"], "--max_steps is -1; it must be >= 1"),
        ("max_steps_zero", swap(train, "--epochs", "0") + ["--max_steps", "0"], "--max_steps is 0; it must be >= 1"),
        ("max_steps_nan", train + ["--max_steps", "nan"], "--max_steps is nan"),
        ("batch_size_zero", train + ["--batch_size", "0"], "--batch_size is 0; it must be >= 1"),
        ("batch_size_negative", train + ["--batch_size", "-16"], "--batch_size is -16"),
        ("batch_size_text", train + ["--batch_size", "sixteen"], "--batch_size should be a number, got sixteen"),
        ("patience_zero", train + ["--patience", "0"], "--patience is 0; it must be >= 1"),
        ("seed_negative", train + ["--seed", "-1"], "--seed is -1; it must be >= 0 and < 4.29497e+09"),
        ("seed_too_big", train + ["--seed", str(2**32)], "--seed is 4294967296"),
        ("seed_fraction", train + ["--seed", "0.5"], "--seed should be a whole number"),
        ("gpus_negative", train + ["--gpus", "-1"], "--gpus is -1; it must be >= 0"),
        ("gpus_word", train + ["--gpus", "gpu"], "--gpus should be a number, got gpu"),
        ("num_genes_zero", swap(train, "--num_genes", "0"), "--num_genes is 0; it must be >= 2"),
        ("num_genes_negative", swap(train, "--num_genes", "-5"), "--num_genes is -5"),
        ("training_stage_three", train + ["--training_stage", "3"], "argument --training_stage: invalid choice: 3"),
        ("training_stage_word", train + ["--training_stage", "two"], "argument --training_stage: invalid int value"),
        ("unknown_flag_dash_spelling", train + ["--batch-size", "16"], "unrecognized arguments: --batch-size"),
        ("guide_spelling_bad_lr", train[1:] + ["--lr", "nan"], "--lr is nan"),
        ("log_dir_is_a_file", swap(train, "--log_dir", f"{c}/a_file.txt"), "is a file, not a directory"),
        ("log_dir_inside_a_file", swap(train, "--log_dir", f"{c}/a_file.txt/logs"), "is a file, so nothing can be created inside it"),
        ("log_dir_empty", swap(train, "--log_dir", ""), "--log_dir is empty"),
        # -- stages and checkpoints in training
        ("stage2_without_stage1_ckpt", train + ["--training_stage", "2"], "stage 2 needs the trained stage-1 VQ-VAE: pass --stage1_ckpt"),
        ("stage1_with_stage1_ckpt", train + ["--stage1_ckpt", f"{c}/tiny_stage1.ckpt"], "--stage1_ckpt is for --training_stage 2"),
        ("stage2_with_complete_ckpt", swap(stage2, "--stage1_ckpt", f"{c}/tiny_complete.ckpt"),
         "is a stage-2 / complete var-st checkpoint, not a stage-1 one"),
        ("stage2_with_stage2_best_ckpt", swap(stage2, "--stage1_ckpt", f"{c}/tiny_stage2_best.ckpt"),
         "is a stage-2 / complete var-st checkpoint"),
        ("stage2_with_plain_weights", swap(stage2, "--stage1_ckpt", f"{c}/no_metadata.ckpt"), "is not a var-st stage-1 checkpoint"),
        ("stage2_truncated_stage1", swap(stage2, "--stage1_ckpt", f"{c}/truncated_stage1.ckpt"), "truncated or corrupt"),
        ("stage2_nan_stage1_weights", swap(stage2, "--stage1_ckpt", f"{c}/nan_weights_stage1.ckpt"), "NaN/inf values"),
        ("stage2_stage1_dir", swap(stage2, "--stage1_ckpt", c), "--stage1_ckpt"),
        ("stage2_stage1_missing", swap(stage2, "--stage1_ckpt", f"{c}/nowhere/best_vqvae.ckpt"), "does not exist"),
        ("stage2_stage1_is_h5ad", swap(stage2, "--stage1_ckpt", f"{c}/good.h5ad"), "checkpoint"),
        ("stage2_other_genes", swap(stage2, "--stage1_ckpt", f"{c}/stage1_other_genes.ckpt"),
         "12 of the model's 12 genes are not in var_names"),
        ("stage2_other_num_genes", swap(stage2, "--num_genes", "10"), "--num_genes 10, but --stage1_ckpt"),
        ("stage2_other_vocab_config", swap(stage2, "--config", f"{c}/stage2_other_vocab.yaml"),
         "config sets vqvae.vocab_size = 32, but --stage1_ckpt"),
        ("stage2_other_vocab_override", stage2 + ["--set", "var.vocab_size=32"], "config sets var.vocab_size = 32"),
        ("stage2_lr_nan", stage2 + ["--lr", "nan"], "--lr is nan"),
        ("stage2_split_contradicts_stage1", swap(stage2, "--stage1_ckpt", f"{c}/stage1_with_split.ckpt")
         + ["--test_slides", "slide0"], "give a split (by slide: test slide0"),
        ("stage2_random_split_contradicts_stage1", swap(stage2, "--stage1_ckpt", f"{c}/stage1_with_split.ckpt")
         + ["--random_split"], "stage 2 would train on spots stage 1 held out"),
        ("stage2_stored_slide_not_in_file", data(swap(stage2, "--stage1_ckpt", f"{c}/stage1_with_split.ckpt"),
                                                 "one_slide.h5ad"), "holds out slide 'slide1', which obs['slide']"),
        ("stage2_wrong_feature_dim", data(stage2, "wrong_feature_dim.h5ad") + ["--set", "var.histology_dim=8"],
         "histology features have 5 dims but the model expects 8"),
        # -- predict
        ("stage1_ckpt_for_predict", swap(predict, "--checkpoint", f"{c}/tiny_stage1.ckpt"), "is a stage-1 (VQ-VAE only) checkpoint"),
        ("truncated_checkpoint", swap(predict, "--checkpoint", f"{c}/truncated_complete.ckpt"), "truncated or corrupt"),
        ("shape_mismatch_checkpoint", swap(predict, "--checkpoint", f"{c}/mismatched_complete.ckpt"), "weights do not fit this model"),
        ("integer_weights_checkpoint", swap(predict, "--checkpoint", f"{c}/int_weights_complete.ckpt"),
         "tensor var.head.weight is int32 in the file"),
        ("nan_weights_checkpoint", swap(predict, "--checkpoint", f"{c}/nan_weights_complete.ckpt"),
         "tensor var.head.weight holds 1 of"),
        ("plain_weights_checkpoint", swap(predict, "--checkpoint", f"{c}/no_metadata.ckpt"), "is not a complete var-st model"),
        ("checkpoint_is_directory", swap(predict, "--checkpoint", c), "is a directory; pass the checkpoint file"),
        ("checkpoint_missing", swap(predict, "--checkpoint", f"{c}/nowhere.ckpt"), "does not exist"),
        ("checkpoint_is_the_dataset", swap(predict, "--checkpoint", f"{c}/good.h5ad"), "are the same file"),
        ("checkpoint_is_an_h5ad", swap(predict, "--checkpoint", f"{c}/wrong_genes.h5ad"), "unrecognised checkpoint format"),
        ("predict_output_not_h5ad", swap(predict, "--output", "{out}/pred.csv"), "should end in .h5ad"),
        ("predict_output_is_directory", swap(predict, "--output", c), "is a directory; give a file path"),
        ("predict_output_is_out_dir", swap(predict, "--output", f"{c}/"), "is a directory"),
        ("predict_output_empty", swap(predict, "--output", ""), "--output is empty"),
        ("predict_output_inside_file", swap(predict, "--output", f"{c}/a_file.txt/pred.h5ad"), "is a file, so nothing can be created"),
        ("predict_output_is_input", swap(predict, "--output", f"{c}/good.h5ad"), "is the input --dataset file"),
        ("predict_batch_size_zero", predict + ["--batch_size", "0"], "--batch_size is 0; it must be >= 1"),
        ("predict_batch_size_nan", predict + ["--batch_size", "nan"], "--batch_size is nan"),
        ("zero_temperature", predict + ["--decoding", "sample", "--temperature", "0"], "--temperature is 0; it must be > 0"),
        ("negative_temperature", predict + ["--temperature", "-1"], "--temperature is -1"),
        ("nan_temperature", predict + ["--temperature", "nan"], "--temperature is nan"),
        ("top_k_zero", predict + ["--decoding", "sample", "--top_k", "0"], "--top_k is 0; it must be >= 1"),
        ("top_k_fraction", predict + ["--top_k", "2.5"], "--top_k should be a whole number"),
        ("top_p_zero", predict + ["--top_p", "0"], "--top_p is 0; it must be > 0 and <= 1"),
        ("top_p_above_one", predict + ["--top_p", "1.5"], "--top_p is 1.5"),
        ("top_p_percent", predict + ["--top_p", "90"], "--top_p is 90"),
        ("num_samples_zero", predict + ["--decoding", "sample", "--num_samples", "0"], "--num_samples is 0; it must be >= 1"),
        ("num_samples_without_sampling", predict + ["--num_samples", "5"], "it needs --decoding sample"),
        ("decoding_unknown", predict + ["--decoding", "beam"], "argument --decoding: invalid choice: 'beam'"),
        ("predict_seed_negative", predict + ["--seed", "-3"], "--seed is -3"),
        ("predict_gpus_negative", predict + ["--gpus", "-1"], "--gpus is -1"),
        ("predict_split_flag", predict + ["--val_slides", "slide0"], "unrecognized arguments: --val_slides"),
        # -- evaluate
        ("evaluate_output_not_json", swap(evaluate, "--output", "{out}/metrics.csv"), "should end in .json"),
        ("evaluate_output_is_directory", swap(evaluate, "--output", c), "is a directory"),
        ("evaluate_predictions_missing", evaluate + ["--predictions", f"{c}/pred.h5ad"], "--predictions"),
        ("evaluate_predictions_directory", evaluate + ["--predictions", c], "is a directory"),
        ("evaluate_predictions_not_predictions", evaluate + ["--predictions", f"{c}/good.h5ad"],
         "is not a predictions file (no uns['prediction']"),
        ("evaluate_histology_only", data(evaluate, "histology_only.h5ad"), "X is empty (a histology-only file)"),
        ("train_histology_only", data(train, "histology_only.h5ad"), "X is empty (a histology-only file)"),
        ("evaluate_split_unknown", evaluate + ["--split", "validation"], "argument --split: invalid choice: 'validation'"),
        # -- make-demo-data, info, demo
        ("demo_data_zero_slides", swap(demo_data, "--slides", "0"), "--slides is 0; it must be >= 1"),
        ("demo_data_grid_one", swap(demo_data, "--grid", "1"), "--grid is 1; it must be >= 2"),
        ("demo_data_genes_one", swap(demo_data, "--genes", "1"), "--genes is 1"),
        ("demo_data_hist_zero", swap(demo_data, "--histology_dim", "0"), "--histology_dim is 0"),
        ("demo_data_too_big", swap(swap(demo_data, "--grid", "500"), "--slides", "1000"), "too large for a demo file"),
        ("demo_data_grid_huge", swap(demo_data, "--grid", "1000"), "--grid is 1000; it must be >= 2 and <= 500"),
        ("demo_data_output_dir", swap(demo_data, "--output", c), "is a directory"),
        ("demo_data_output_csv", swap(demo_data, "--output", "{out}/demo.csv"), "should end in .h5ad"),
        ("demo_data_seed_nan", demo_data + ["--seed", "nan"], "--seed is nan"),
        ("demo_data_visium_with_sizes", demo_data + ["--dataset", "visium-mouse-brain"],
         "--slides sets the size of the synthetic data set"),
        ("demo_data_unknown_dataset", demo_data + ["--dataset", "pbmc"], "argument --dataset: invalid choice: 'pbmc'"),
        ("demo_unknown_dataset", ["demo", "--dataset", "mouse", "--log_dir", "{out}"], "invalid choice: 'mouse'"),
        ("info_missing", ["info", f"{c}/nowhere.ckpt"], "nowhere.ckpt does not exist"),
        ("info_directory", ["info", c], "is a directory"),
        ("info_stage1", ["info", f"{c}/tiny_stage1.ckpt"], "is a stage-1 (VQ-VAE only) checkpoint"),
        ("info_truncated", ["info", f"{c}/truncated_complete.ckpt"], "truncated or corrupt"),
        ("info_zero_bytes", ["info", f"{c}/zero_bytes.h5ad"], "checkpoint file is empty"),
        ("demo_seed_negative", ["demo", "--seed", "-1", "--log_dir", "{out}"], "--seed is -1"),
        ("demo_gpus_negative", ["demo", "--gpus", "-2", "--log_dir", "{out}"], "--gpus is -2"),
        ("demo_log_dir_file", ["demo", "--log_dir", f"{c}/a_file.txt"], "is a file, not a directory"),
        ("unknown_command", ["trian", "--dataset", f"{c}/good.h5ad"], "invalid choice: 'trian'"),
    ]
    assert len({k for k, _, _ in cases}) == len(cases), "duplicate case ids"
    return cases


if __name__ == "__main__":
    main()
