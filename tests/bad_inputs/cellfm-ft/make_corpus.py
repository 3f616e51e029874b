"""Write the cellfm-ft bad-input corpus (small files + cases.json). Deterministic; re-run to regenerate:

    python tests/bad_inputs/cellfm-ft/make_corpus.py

cases.json maps a case name to the `cellfm-ft` argv (placeholders: {corpus} this folder, {data} a
good .h5ad, {ckpt} a good tiny CellFM checkpoint, {model} a fine-tuned best_model.pth, {out} a
fresh output dir) and the phrase its
one-line error must contain. The good inputs are made by the test (a valid CellFM checkpoint is
too large for this corpus). The shared checkpoint corpus (../checkpoints) is run by the test too.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

HERE = Path(__file__).parent
TRAIN = ["train", "--data", "{data}", "--label-key", "cell_type", "--checkpoint", "{ckpt}", "--config", "tiny",
         "--output", "{out}", "--max-steps", "1", "--no-progress"]


def cells(n=12, genes=("CD3D", "CD8A", "MS4A1", "LYZ", "NKG7", "GNLY"), seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, (n, len(genes))).astype(np.float32)
    obs = pd.DataFrame({"cell_type": ["T", "B", "NK"] * (n // 3), "donor": ["D1", "D2"] * (n // 2)},
                       index=[f"c{i}" for i in range(n)])
    return ad.AnnData(sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=list(genes)))


def main() -> None:
    cases: dict[str, dict] = {}

    def h5ad(name: str, adata: ad.AnnData) -> str:
        adata.write_h5ad(HERE / name)
        return "{corpus}/" + name

    def case(name: str, argv: list[str], phrase: str) -> None:
        cases[name] = {"argv": argv, "phrase": phrase}

    def with_data(path: str, *extra: str, ckpt: str = "{ckpt}", out: str = "{out}") -> list[str]:
        swap = {"{data}": path, "{ckpt}": ckpt, "{out}": out}
        return [swap.get(a, a) for a in TRAIN] + list(extra)

    a = cells()
    a.obs = a.obs.rename(columns={"cell_type": "celltype"})
    case("missing_label_column", with_data(h5ad("missing_label.h5ad", a)), "no obs column 'cell_type'; available obs columns: celltype, donor")
    case("missing_donor_column", with_data("{data}", "--donor-key", "Donor ID"), "no obs column 'Donor ID'")
    case("missing_gene_column", with_data("{data}", "--gene-key", "symbol"), "no var column 'symbol'")
    a = cells()
    a.X = a.X.toarray()
    a.X[2, 3] = np.nan
    case("nan_in_X", with_data(h5ad("nan.h5ad", a)), "NaN/inf")
    a.X[2, 3] = np.inf
    case("inf_in_X", with_data(h5ad("inf.h5ad", a)), "NaN/inf")
    case("empty", with_data(h5ad("empty.h5ad", cells()[:0].copy())), "the data set is empty")
    a = cells()
    a.X = sparse.csr_matrix(a.X.toarray() - 2.0)  # z-scored-looking values
    case("scaled_X", with_data(h5ad("scaled.h5ad", a)), "negative values")
    a = cells(genes=tuple(f"ENSG{i:011d}" for i in range(6)))
    case("no_gene_overlap", with_data(h5ad("no_overlap.h5ad", a)), "is in the model vocabulary")
    a = cells()
    a.obs["cell_type"] = "T"
    case("one_label", with_data(h5ad("one_label.h5ad", a)), "a classifier needs at least 2")
    a = cells()
    a.obs.loc["c1", "cell_type"] = None
    case("missing_label_values", with_data(h5ad("missing_label_values.h5ad", a)), "missing values")
    (HERE / "not_h5ad.h5ad").write_text("cell,gene,count\nc1,CD3D,4\n")
    case("not_h5ad", with_data("{corpus}/not_h5ad.h5ad"), "not a readable .h5ad file")
    whole = (HERE / "missing_label.h5ad").read_bytes()
    (HERE / "truncated.h5ad").write_bytes(whole[: len(whole) // 2])
    case("truncated_h5ad", with_data("{corpus}/truncated.h5ad"), "not a readable .h5ad file")
    case("missing_data_file", with_data("{corpus}/nowhere.h5ad"), "does not exist")
    case("unknown_test_donor", with_data("{data}", "--donor-key", "donor", "--test-donors", "D9"), "not in the donor column")
    case("unknown_strategy", with_data("{data}", "--strategy", "frozen_all"), "unknown strategy 'frozen_all'")
    case("no_trainable_parameters", with_data("{data}", "--strategy", "cls_only", "--exclude", "cls"), "No trainable parameters")
    case("wrong_config_width", with_data("{data}", "--config", "80m"), "enc_dims 32 but config '80m' expects 1536")
    case("unknown_config", with_data("{data}", "--config", "huge"), "unknown config 'huge'")
    case("test_size_out_of_range", with_data("{data}", "--test-size", "1.5"), "--test-size must be between 0 and 1")
    (HERE / "typo.yaml").write_text("data: x.h5ad\nlabel_key: cell_type\nlearning_rate: 0.001\n")
    case("yaml_unknown_key", ["train", "--config-file", "{corpus}/typo.yaml", "--output", "{out}"], "learning_rate")
    (HERE / "bad_syntax.yaml").write_text("data: x.h5ad\nlabel_key: [cell_type\nepochs: 3\n")
    case("yaml_syntax_error", ["train", "--config-file", "{corpus}/bad_syntax.yaml", "--output", "{out}"], "YAML syntax error")
    (HERE / "bad_syntax.toml").write_text('data = "x.h5ad"\nlabel_key = cell_type\n')
    case("toml_syntax_error", ["train", "--config-file", "{corpus}/bad_syntax.toml", "--output", "{out}"], "TOML syntax error")
    (HERE / "wrong_type.toml").write_text('data = "x.h5ad"\nepochs = "three"\n')
    case("toml_wrong_type", ["train", "--config-file", "{corpus}/wrong_type.toml", "--output", "{out}"], "epochs")
    from ftcore.checkpoint.mindspore import write_mindspore

    write_mindspore(HERE / "not_cellfm.ckpt", {"dense.weight": np.ones((4, 3), np.float32),
                                               "dense.bias": np.zeros(4, np.float32)})
    (HERE / "not_cellfm.ckpt").chmod(0o644)
    case("not_cellfm_checkpoint", ["convert", "{corpus}/not_cellfm.ckpt", "--output", "{out}/x.safetensors", "--config", "tiny"],
         "not a CellFM checkpoint")
    case("not_cellfm_checkpoint_train", with_data("{data}", ckpt="{corpus}/not_cellfm.ckpt"), "not a CellFM checkpoint")
    case("convert_wrong_suffix", ["convert", "{ckpt}", "--output", "{out}/x.pt", "--config", "tiny"], "should end in .safetensors")
    case("predict_with_pretrained_checkpoint", ["predict", "--model", "{ckpt}", "--data", "{data}", "--output", "{out}/p.h5ad"],
         "not a cellfm-ft fine-tuned model")
    predict = ["predict", "--model", "{model}", "--output", "{out}/p.h5ad", "--data"]
    case("predict_no_gene_overlap", [*predict, "{corpus}/no_overlap.h5ad"], "is in the model vocabulary")
    case("predict_nan", [*predict, "{corpus}/nan.h5ad"], "NaN/inf")
    case("predict_output_not_h5ad", ["predict", "--model", "{model}", "--data", "{data}", "--output", "{out}/p.csv"],
         "should end in .h5ad")
    case("evaluate_missing_label_column", ["evaluate", "--model", "{model}", "--data", "{corpus}/missing_label.h5ad",
                                           "--label-key", "cell_type", "--output", "{out}"], "no obs column 'cell_type'")
    case("evaluate_unknown_labels", ["evaluate", "--model", "{model}", "--data", "{corpus}/unknown_labels.h5ad",
                                     "--label-key", "cell_type", "--output", "{out}"], "is one the model was trained on")
    a = cells()
    a.obs["cell_type"] = ["Erythrocyte", "Platelet", "Mast"] * 4
    h5ad("unknown_labels.h5ad", a)
    case("unwritable_output", with_data("{data}", out="{corpus}/not_h5ad.h5ad/run"), "is not writable")
    (HERE / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {HERE}")


if __name__ == "__main__":
    main()
