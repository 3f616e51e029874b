"""Generate the state-tx bad-input corpus (small files, each < 50 KB).

    python tests/bad_inputs/state-tx/make_corpus.py

Every file is broken in exactly one way; `packages/state-tx/tests/test_state_tx_bad_inputs.py`
runs the CLI over each and expects one `error: ...` line with the phrase listed in cases.json.
TOML files hold the placeholder @CORPUS@ for this directory (paths in a TOML must be absolute);
the test substitutes it. The good base data has 24 HVG features, like the test suite's tiny run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

HERE = Path(__file__).resolve().parent


def base():
    from state_tx.synthetic import make_perturbation_adata

    return make_perturbation_adata(n_genes=30, n_hvg=24, n_perts=3, cells_per_pert=4, n_controls=6,
                                   cell_types=("K562", "HepG2"), n_batches=2, n_programs=2, seed=11)


def write(adata, name: str) -> None:
    adata.write_h5ad(HERE / name)


def main() -> None:
    good = base()
    write(good, "good.h5ad")

    a = good.copy()
    a.obs = a.obs.rename(columns={"gene": "target_gene"})
    write(a, "missing_pert_col.h5ad")  # the seed's KeyError: 'gene'

    a = good.copy()
    a.obs = a.obs.drop(columns=["cell_type"])
    write(a, "missing_celltype_col.h5ad")

    a = good.copy()
    a.obs["gene"] = a.obs["gene"].astype(str).replace({"non-targeting": "NTC"}).astype("category")
    write(a, "control_label_absent.h5ad")

    a = good.copy()
    a.obsm["X_hvg"][3, 5] = np.nan
    write(a, "nan_values.h5ad")

    a = good.copy()
    a.obsm["X_hvg"][8, 1] = np.inf
    write(a, "inf_values.h5ad")

    write(good[:0].copy(), "empty.h5ad")

    a = good.copy()
    del a.obsm["X_hvg"]
    write(a, "no_x_hvg.h5ad")

    a = good.copy()
    a.obsm["X_hvg"] = sp.csc_matrix(a.obsm["X_hvg"])
    write(a, "csc_matrix.h5ad")

    # other feature count: 55 genes, no HVG matrix (inference: "expects 24 ..., got 55")
    rng = np.random.default_rng(0)
    import anndata as ad

    w = ad.AnnData(rng.random((12, 55), dtype=np.float32))
    w.obs["gene"] = ["non-targeting"] * 6 + [good.obs["gene"].cat.categories[0]] * 6
    w.obs["cell_type"] = "K562"
    write(w, "wrong_feature_count.h5ad")

    a = good[:, :20].copy()  # a second file of the same dataset with a different gene space
    a.obsm["X_hvg"] = a.obsm["X_hvg"][:, :20]
    write(a, "other_gene_space.h5ad")

    a = good.copy()
    a.obs["gene"] = a.obs["gene"].astype(str).replace({a.uns["state_tx_synthetic"]["perturbations"][0]: "UNSEEN1"})
    write(a, "unseen_perturbation.h5ad")

    data = (HERE / "good.h5ad").read_bytes()
    (HERE / "truncated.h5ad").write_bytes(data[: len(data) // 3])

    # TOML typos (the seed's two quoting mistakes) and semantic slips
    toml = {
        "unquoted_path.toml": '[datasets]\nexample = /path/to/data.h5ad\n',
        "unquoted_dotted_key.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscreen = "train"\n'
                                    '[zeroshot]\nscreen.HepG2 = "test"\n',
        "relative_path.toml": '[datasets]\nscreen = "data/good.h5ad"\n[training]\nscreen = "train"\n',
        "unknown_celltype.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscreen = "train"\n'
                                 '[zeroshot]\n"screen.hepg2" = "test"\n',
        "unknown_fewshot_pert.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscreen = "train"\n'
                                     '[fewshot."screen.K562"]\ntest = ["NOT_A_GENE"]\n',
        "bad_split_value.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[zeroshot]\n"screen.K562" = "testing"\n',
        "missing_dataset_path.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscren = "train"\n',
        "no_matching_files.toml": '[datasets]\nscreen = "@CORPUS@/{good,gone}.h5ad"\n[training]\nscreen = "train"\n',
        "mixed_gene_spaces.toml": '[datasets]\nscreen = "@CORPUS@/{good,other_gene_space}.h5ad"\n[training]\nscreen = "train"\n',
    }
    for name, text in toml.items():
        (HERE / name).write_text(text)

    # issue 16: split plans that make no sense, names with dots and spaces, ~ and a byte-order mark
    head = '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscreen = "train"\n'
    p0, p1, p2 = list(good.uns["state_tx_synthetic"]["perturbations"])[:3]
    dotted = '[datasets]\n"my.screen" = "@CORPUS@/good.h5ad"\n[training]\n"my.screen" = "train"\n'
    toml16 = {
        "bom_unknown_celltype.toml": "\ufeff" + head + '[zeroshot]\n"screen.hepg2" = "test"\n',
        "tilde_missing.toml": '[datasets]\nscreen = "~/no_such_dir/good.h5ad"\n[training]\nscreen = "train"\n',
        "dotted_dataset_unknown_celltype.toml": dotted + '[zeroshot]\n"my.screen.hepg2" = "test"\n',
        "dotted_dataset_unknown_pert.toml": dotted + '[fewshot."my.screen.K562"]\ntest = ["NOT_A_GENE"]\n',
        "dotted_dataset_unquoted_training.toml": '[datasets]\n"my.screen" = "@CORPUS@/good.h5ad"\n'
                                                 '[training]\nmy.screen = "train"\n',
        "dotted_dataset_unquoted_datasets.toml": '[datasets]\nmy.screen = "@CORPUS@/good.h5ad"\n',
        "zeroshot_unknown_dataset.toml": head + '[zeroshot]\n"scren.K562" = "test"\n',
        "all_celltypes_held_out.toml": head + '[zeroshot]\n"screen.K562" = "test"\n"screen.HepG2" = "val"\n',
        "all_held_out_mixed.toml": head + f'[zeroshot]\n"screen.HepG2" = "test"\n'
                                          f'[fewshot."screen.K562"]\nval = ["{p0}"]\ntest = ["{p1}", "{p2}"]\n',
        "only_controls_trained.toml": '[datasets]\nscreen = "@CORPUS@/controls_only.h5ad"\n[training]\nscreen = "train"\n',
        "empty_fewshot_list.toml": head + '[fewshot."screen.K562"]\nval = []\n',
        "empty_fewshot_table.toml": head + '[fewshot."screen.K562"]\n',
        "val_asked_but_empty.toml": head + f'[zeroshot]\n"screen.K562" = "val"\n'
                                           f'[fewshot."screen.K562"]\ntest = ["{p0}", "{p1}", "{p2}"]\n',
        "pert_in_val_and_test.toml": head + f'[fewshot."screen.K562"]\nval = ["{p0}"]\ntest = ["{p0}"]\n',
        "pert_listed_twice.toml": head + f'[fewshot."screen.K562"]\ntest = ["{p0}", "{p0}"]\n',
        "duplicate_zeroshot_key.toml": head + '[zeroshot]\n"screen.K562" = "test"\n"screen.K562" = "val"\n',
        "celltype_trailing_space.toml": head + '[zeroshot]\n"screen.K562 " = "test"\n',
        "fewshot_lists_control.toml": head + '[fewshot."screen.K562"]\ntest = ["non-targeting"]\n',
        "empty_dataset_path.toml": '[datasets]\nscreen = ""\n[training]\nscreen = "train"\n',
        "dir_without_h5ad.toml": '[datasets]\nscreen = "@CORPUS@/no_h5ad_here"\n[training]\nscreen = "train"\n',
        "training_value_not_train.toml": '[datasets]\nscreen = "@CORPUS@/good.h5ad"\n[training]\nscreen = "test"\n',
        "mixed_kinds.toml": '[datasets]\nscreen = "@CORPUS@/{good,raw_counts}.h5ad"\n[training]\nscreen = "train"\n',
        "csv_named_h5ad.toml": '[datasets]\nscreen = "@CORPUS@/csv_named.h5ad"\n[training]\nscreen = "train"\n',
        "huge_value.toml": '[datasets]\nscreen = "@CORPUS@/huge_value.h5ad"\n[training]\nscreen = "train"\n',
        "trailing_space_control.toml": '[datasets]\nscreen = "@CORPUS@/control_trailing_space.h5ad"\n'
                                       '[training]\nscreen = "train"\n',
        "datasets_not_a_table.toml": 'datasets = "@CORPUS@/good.h5ad"\n',
    }
    for name, text in toml16.items():
        (HERE / name).write_text(text, encoding="utf-8")
    (HERE / "no_h5ad_here").mkdir(exist_ok=True)
    (HERE / "no_h5ad_here" / "README.txt").write_text("a directory without .h5ad files\n")

    # data: raw counts, an absurd magnitude, a trailing-space control label, controls only, a CSV named .h5ad
    a = good.copy()
    a.obsm["X_hvg"] = np.round(np.expm1(np.asarray(a.obsm["X_hvg"])) * 10).astype(np.float32)
    a.X = np.round(np.expm1(np.asarray(a.X)) * 10).astype(np.float32)
    write(a, "raw_counts.h5ad")
    a = good.copy()
    a.obsm["X_hvg"][4, 7] = 1e12
    a.X[4, 7] = 1e12
    write(a, "huge_value.h5ad")
    a = good.copy()
    a.obs["gene"] = a.obs["gene"].astype(str).replace({"non-targeting": "non-targeting "}).astype("category")
    write(a, "control_trailing_space.h5ad")
    write(good[good.obs["gene"].astype(str) == "non-targeting"].copy(), "controls_only.h5ad")
    (HERE / "csv_named.h5ad").write_text("cell,gene,GENE0000\nc0,non-targeting,1.0\nc1,A,2.0\n")
    a = good.copy()
    a.X[2, 3] = np.nan
    write(a, "nan_in_x.h5ad")  # evaluate reads X
    a = good.copy()
    a.var_names = [f"OTHER{i}" for i in range(a.n_vars)]
    write(a, "renamed_genes.h5ad")

    # run configs with values that pass a `<= 0` check and break later (NaN) or are out of range
    yamls = {
        "lr_nan.yaml": "training:\n  lr: .nan\n",
        "lr_nan_text.yaml": "training:\n  lr: nan\n",
        "max_steps_nan.yaml": "training:\n  max_steps: .nan\n",
        "max_steps_negative.yaml": "training:\n  max_steps: -1\n",
        "batch_size_zero.yaml": "training:\n  batch_size: 0\n",
        "seed_negative.yaml": "training:\n  train_seed: -7\n",
        "lr_twice.yaml": "training:\n  lr: 1.0e-3\n  max_steps: 1\n  lr: 10.0\n",
        "top_level_list.yaml": "- training\n- lr\n",
        "lr_word.yaml": "training:\n  lr: fast\n",
        "device_gpu.yaml": "training:\n  device: gpu\n",
    }
    for name, text in yamls.items():
        (HERE / name).write_text(text)

    # YAML run configs (--config)
    (HERE / "syntax_error.yaml").write_text("training:\n  max_steps: 10\n   batch_size: 4\n")
    (HERE / "unknown_key.yaml").write_text("trainig:\n  max_steps: 10\n")

    # a perturbation-features file lacking a perturbation of the data
    perts = list(good.uns["state_tx_synthetic"]["perturbations"])
    torch.manual_seed(0)
    torch.save({str(p): torch.randn(8) for p in perts[:-1]}, HERE / "features_missing_pert.pt")

    # a weights-only checkpoint of another model size (inference: shape mismatches)
    from state_tx.model import StateTransitionModel, StateTxConfig

    torch.manual_seed(0)
    other = StateTransitionModel(StateTxConfig(input_dim=24, output_dim=24, pert_dim=7, hidden_dim=8, n_layers=1,
                                               n_heads=1, head_dim=8, intermediate_size=8))
    torch.save({"model": other.state_dict()}, HERE / "shape_mismatch.ckpt")

    too_big = [p.name for p in HERE.iterdir() if p.is_file() and p.stat().st_size > 50_000]
    assert not too_big, too_big
    print(json.dumps(sorted(p.name for p in HERE.iterdir() if p.name != "make_corpus.py"), indent=1))


if __name__ == "__main__":
    main()
