"""Write the cellfm-ft bad-input corpus (small files + cases.json). Deterministic; re-run to regenerate:

    python tests/bad_inputs/cellfm-ft/make_corpus.py

cases.json maps a case name to the `cellfm-ft` argv (placeholders: {corpus} this folder, {data} a
good .h5ad, {ckpt} a good tiny CellFM checkpoint, {model} a fine-tuned best_model.pth, {out} a
fresh output dir, {ro} an existing directory nothing may be written to, {variants} the broken
real-layout checkpoints below) and the phrase its one-line error must contain. The good inputs
are made by the test (a valid CellFM checkpoint is too large for this corpus), and so are the
broken checkpoints (`write_checkpoint_variants`: the real MindSpore file of the annotation
tutorial's layout, packages/cellfm-ft/tests/fixtures/cellfm_annotation.ckpt written by
make_layout_fixtures.py, with its own entry names, one tensor broken per file). The shared
checkpoint corpus (../checkpoints) is run by the test too.
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
FIXTURES = HERE.parents[2] / "packages" / "cellfm-ft" / "tests" / "fixtures"
REAL_LAYOUT = FIXTURES / "cellfm_annotation.ckpt"  # written by real MindSpore (make_layout_fixtures.py)
# entries of REAL_LAYOUT broken by write_checkpoint_variants (MindSpore's names, as in the file)
INT_ENTRY = "extractor.encoder.0.attn.q_proj.weight"
NAN_ENTRY = "extractor.encoder.1.post_norm1.gamma"
SHORT_ENTRY = "extractor.encoder.0.ffn.u_proj.weight"


def _ms_record(name: str, ms_type: str, dims: tuple, content: bytes) -> bytes:
    """One MindSpore checkpoint record (checkpoint.proto), with `content` as given (may not fit `dims`)."""
    def varint(v: int) -> bytes:
        out = bytearray()
        while True:
            b, v = v & 0x7F, v >> 7
            out.append(b | 0x80 if v else b)
            if not v:
                return bytes(out)

    def field(number: int, data: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(data)) + data

    tensor = b"".join(varint(1 << 3) + varint(d) for d in dims) + field(2, ms_type.encode()) + field(3, content)
    return field(1, field(1, name.encode()) + field(2, tensor))


def write_checkpoint_variants(dest: Path) -> dict[str, Path]:
    """The real-layout CellFM checkpoint with one tensor broken per file: integer weights, a NaN and an inf
    weight, a tensor record shorter than its shape (inside a valid file), the file cut at 60%. Entry names
    and every other tensor stay as MindSpore wrote them."""
    from ftcore.checkpoint.mindspore import _NP_TO_MS, read_mindspore, write_mindspore

    dest.mkdir(parents=True, exist_ok=True)
    real = {name: np.array(t.array) for name, t in read_mindspore(REAL_LAYOUT).items()}
    assert {INT_ENTRY, NAN_ENTRY, SHORT_ENTRY} <= set(real), "the real layout's entry names changed"
    made = {}

    def variant(name: str, tensors: dict) -> None:
        write_mindspore(dest / name, tensors)
        made[name] = dest / name

    variant("int_weights.ckpt", {**real, INT_ENTRY: (real[INT_ENTRY] * 100).astype(np.int32)})
    nan = real[NAN_ENTRY].copy()
    nan[3] = np.nan
    variant("nan_weights.ckpt", {**real, NAN_ENTRY: nan})
    inf = real[INT_ENTRY].copy()
    inf[0, 1] = np.inf
    variant("inf_weights.ckpt", {**real, INT_ENTRY: inf})
    with open(dest / "short_tensor.ckpt", "wb") as fh:
        for name, arr in real.items():
            content = np.ascontiguousarray(arr).tobytes()
            if name == SHORT_ENTRY:
                content = content[: len(content) - 64]  # 16 float32 short: the record still parses
            fh.write(_ms_record(name, _NP_TO_MS[arr.dtype], arr.shape, content))
    made["short_tensor.ckpt"] = dest / "short_tensor.ckpt"
    whole = REAL_LAYOUT.read_bytes()
    (dest / "cut.ckpt").write_bytes(whole[: len(whole) * 6 // 10])
    made["cut.ckpt"] = dest / "cut.ckpt"
    return made


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
    case("test_size_out_of_range", with_data("{data}", "--test-size", "1.5"), "--test-size is 1.5; it must be > 0 and < 1")
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
    case("unwritable_output", with_data("{data}", out="{corpus}/not_h5ad.h5ad/run"),
         "not_h5ad.h5ad is a file, so nothing can be created inside it")
    more_cases(case, h5ad, with_data)
    lines = [f" {json.dumps(name)}: {json.dumps(c)}" for name, c in cases.items()]  # one case a line
    (HERE / "cases.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {len(cases)} cases to {HERE}")




def more_cases(case, h5ad, with_data) -> None:
    """Issue 16: every plausible mistake gets one line and leaves nothing behind."""
    def text(name: str, content: str, bom: bool = False) -> str:
        (HERE / name).write_text(("\ufeff" if bom else "") + content, encoding="utf-8")
        return "{corpus}/" + name

    steps = [a for a in with_data("{data}") if a not in ("--max-steps", "1")]  # TRAIN without its step budget
    donors = with_data("{data}", "--donor-key", "donor")  # {data}: donors D1..D4

    # --- numbers, seeds and devices typed on the command line ---------------------------------------
    for name, flag, value, phrase in [
        ("lr_nan", "--lr", "nan", "--lr is nan; give a finite number (> 0 and <= 1)"),
        ("lr_typed_1e4_for_1e-4", "--lr", "1e4", "--lr is 1e4; it must be > 0 and <= 1"),
        ("lr_inf", "--lr", "inf", "--lr is inf"),
        ("lr_zero", "--lr", "0", "--lr is 0; it must be > 0"),
        ("lr_negative", "--lr", "-1e-4", "--lr is -1e-4; it must be > 0"),
        ("lr_decimal_comma", "--lr", "1,5e-4", "--lr should be a number, got 1,5e-4"),
        ("epochs_negative", "--epochs", "-1", "--epochs is -1; it must be >= 0"),
        ("epochs_fraction", "--epochs", "2.5", "--epochs should be a whole number, got 2.5"),
        ("max_steps_negative", "--max-steps", "-1", "--max-steps is -1; it must be >= 1"),
        ("max_steps_zero", "--max-steps", "0", "--max-steps is 0; it must be >= 1"),
        ("max_steps_nan", "--max-steps", "nan", "--max-steps is nan"),
        ("batch_size_zero", "--batch-size", "0", "--batch-size is 0; it must be >= 1"),
        ("batch_size_negative", "--batch-size", "-16", "--batch-size is -16; it must be >= 1"),
        ("batch_size_empty", "--batch-size", "", "--batch-size should be a number, got ''"),
        ("seed_negative", "--seed", "-1", "--seed is -1; it must be >= 0 and < 4.29497e+09"),
        ("seed_too_large", "--seed", "4294967296", "--seed is 4294967296"),
        ("seed_fraction", "--seed", "1.5", "--seed should be a whole number"),
        ("test_size_zero", "--test-size", "0", "--test-size is 0; it must be > 0 and < 1"),
        ("test_size_one", "--test-size", "1", "--test-size is 1; it must be > 0 and < 1"),
        ("test_size_nan", "--test-size", "nan", "--test-size is nan"),
        ("test_size_percent", "--test-size", "20", "--test-size is 20; it must be > 0 and < 1"),
        ("val_fraction_zero", "--val-fraction", "0", "--val-fraction is 0; it must be > 0 and < 1"),
        ("val_fraction_one", "--val-fraction", "1", "--val-fraction is 1"),
        ("val_fraction_nan", "--val-fraction", "NaN", "--val-fraction is NaN"),
        ("val_fraction_above_one", "--val-fraction", "1.5", "--val-fraction is 1.5"),
        ("mask_ratio_zero", "--mask-ratio", "0", "--mask-ratio is 0; it must be > 0 and < 1"),
        ("mask_ratio_one", "--mask-ratio", "1", "--mask-ratio is 1"),
        ("mask_ratio_negative", "--mask-ratio", "-0.5", "--mask-ratio is -0.5"),
        ("recon_weight_negative", "--recon-weight", "-1", "--recon-weight is -1; it must be >= 0"),
        ("recon_weight_nan", "--recon-weight", "nan", "--recon-weight is nan"),
        ("ckpt_every_steps_zero", "--ckpt-every-steps", "0", "--ckpt-every-steps is 0"),
        ("device_gpu", "--device", "gpu", "unknown device 'gpu'; choose one of auto, cpu, cuda"),
        ("device_cuda0", "--device", "cuda0", "did you mean 'cuda:0'?"),
        ("device_empty", "--device", "", "unknown device ''"),
    ]:
        case(name, with_data("{data}", f"{flag}={value}"), phrase)
    case("epochs_zero_without_max_steps", [*steps, "--epochs", "0"], "--epochs is 0 and --max-steps is not set")

    # --- the same through config files (flags name the good data, checkpoint and output) ---------------
    for name, content, phrase in [
        ("lr_nan.yaml", "lr: .nan\n", "'lr' is nan"),
        ("lr_ten.yaml", "lr: 10.0\n", "'lr' is 10.0; it must be > 0 and <= 1"),
        ("lr_nan_text.yaml", "lr: nan\n", "'lr' is nan"),
        ("lr_nan.toml", "lr = nan\n", "'lr' is nan"),
        ("lr_inf.toml", "lr = inf\n", "'lr' is inf"),
        ("lr_list.yaml", "lr: [0.001]\n", "'lr' should be a number"),
        ("max_steps_negative.yaml", "max_steps: -1\n", "'max_steps' is -1; it must be >= 1"),
        ("batch_size_zero.toml", "batch_size = 0\n", "'batch_size' is 0; it must be >= 1"),
        ("seed_negative.yaml", "seed: -7\n", "'seed' is -7; it must be >= 0"),
        ("test_size_one.toml", "test_size = 1.0\n", "'test_size' is 1.0; it must be > 0 and < 1"),
        ("test_size_nan.yaml", "test_size: .NaN\n", "'test_size' is nan"),
        ("val_fraction_zero.yaml", "val_fraction: 0\n", "'val_fraction' is 0"),
        ("val_fraction_above_one.toml", "val_fraction = 2\n", "'val_fraction' is 2"),
        ("mask_ratio_one.yaml", "mask_ratio: 1\n", "'mask_ratio' is 1.0; it must be > 0 and < 1"),
        ("recon_weight_negative.toml", "recon_weight = -0.5\n", "'recon_weight' is -0.5; it must be >= 0"),
        ("recon_weight_nan.yaml", "recon_weight: .nan\n", "'recon_weight' is nan"),
        ("weight_decay_negative.yaml", "weight_decay: -0.01\n", "'weight_decay' is -0.01; it must be >= 0"),
        ("epochs_fraction.yaml", "epochs: 2.5\n", "'epochs' should be a whole number"),
        ("device_gpu.yaml", "device: gpu\n", "unknown device 'gpu'"),
        ("duplicate_lr.yaml", "lr: 0.001\nepochs: 2\nlr: 10.0\n", "key 'lr' is set twice (lines 1 and 3)"),
        ("duplicate_lr.toml", "lr = 0.001\nlr = 10.0\n", "key 'lr' is set twice (lines 1 and 2)"),
        ("bom_negative_lr.toml", "lr = -1.0\n", "'lr' is -1.0; it must be > 0"),
        ("test_donors_text.yaml", "test_donors: D2\n", "'test_donors' should be a list"),
        ("top_level_list.yaml", "- lr: 0.001\n", "expected a mapping of keys at the top level"),
    ]:
        case(f"config_{name.replace('.', '_')}",
             [*with_data("{data}"), "--config-file", text(name, content, bom=name.startswith("bom_"))], phrase)
    case("config_epochs_zero_without_max_steps",
         [*steps, "--config-file", text("epochs_zero.yaml", "epochs: 0\n")], "--epochs is 0 and --max-steps is not set")
    case("config_same_donor_test_and_val",
         [*donors, "--config-file", text("test_val_overlap.yaml", "test_donors: [D2]\nval_donors: [D2, D3]\n")],
         "'D2' are in both --test-donors and --val-donors")
    tilde = text("tilde_data.toml", 'data = "~/cellfm_corpus_nowhere.h5ad"\n')
    case("config_tilde_data_missing", ["train", "--config-file", tilde, "--checkpoint", "{ckpt}", "--config", "tiny",
                                       "--output", "{out}"], "cellfm_corpus_nowhere.h5ad does not exist")
    case("config_file_missing", [*with_data("{data}"), "--config-file", "{corpus}/nowhere.yaml"], "does not exist")
    case("config_file_is_directory", [*with_data("{data}"), "--config-file", "{corpus}"], "is a directory")

    # --- split plans ------------------------------------------------------------------------------
    case("val_donor_unknown", [*donors, "--val-donors", "D9"], "validation donor(s) 'D9' not in the donor column")
    case("same_donor_test_and_val", [*donors, "--test-donors", "D2", "--val-donors", "D2"],
         "'D2' are in both --test-donors and --val-donors")
    case("val_donor_is_a_test_donor", [*donors, "--test-donors", "D2,D3", "--val-donors", "D3,D4"],
         "'D3' are in both --test-donors and --val-donors")
    case("every_donor_tested", [*donors, "--test-donors", "D1,D2,D3,D4"], "every donor is held out for testing")
    case("every_training_donor_validates", [*donors, "--test-donors", "D1", "--val-donors", "D2,D3,D4"],
         "every training donor is held out for validation")
    case("test_donors_empty", [*donors, "--test-donors", ""], "--test-donors is '': no donor named")
    case("test_donors_only_commas", [*donors, "--test-donors", " , "], "no donor named")
    case("val_donors_without_donor_key", with_data("{data}", "--val-donors", "D1"), "--val-donors needs --donor-key")
    a = cells()
    a.obs["donor"] = "D1"
    case("one_donor", with_data(h5ad("one_donor.h5ad", a), "--donor-key", "donor"), "a donor split needs at least 2 donors")
    a = cells()
    a.obs["donor"] = ["D1"] * 6 + ["D2"] * 6
    a.obs["cell_type"] = ["T"] * 6 + ["T", "B", "NK"] * 2
    case("one_label_after_split", with_data(h5ad("one_label_train.h5ad", a), "--donor-key", "donor", "--test-donors", "D2"),
         "the training split holds one label only ('T'")
    a = cells()
    a.obs["donor"] = [f"D{i % 2 + 1} " for i in range(12)]  # trailing spaces, as exported from a spreadsheet
    case("donor_names_with_spaces", with_data(h5ad("donor_spaces.h5ad", a), "--donor-key", "donor", "--test-donors", "D1"),
         "donors are: 'D1 ', 'D2 '")
    a = cells()
    a.obs.loc["c4", "donor"] = None
    case("donor_missing_value", with_data(h5ad("donor_nan.h5ad", a), "--donor-key", "donor"),
         "obs column 'donor' has 1 missing values")
    a = cells()[:3].copy()  # T, B, NK: one cell each, none left for a per-label test share
    case("test_split_empty", with_data(h5ad("one_cell_per_label.h5ad", a)), "the test split is empty")

    # --- the data edge ----------------------------------------------------------------------------
    a = cells()
    a.obs["cell_type"] = pd.Categorical(["T", "B", None] * 4)
    case("label_categorical_nan", with_data(h5ad("label_categorical_nan.h5ad", a)), "has 4 missing values")
    a = cells()
    a.obs["cell_type"] = [1.0, 2.0, np.nan] * 4
    case("label_numeric_nan", with_data(h5ad("label_numeric_nan.h5ad", a)), "has 4 missing values")
    a = cells()
    a.obs["cell_type"] = ["T", "B", "nan"] * 4
    case("label_nan_as_text", with_data(h5ad("label_nan_text.h5ad", a)), "labels 4 cell(s) 'nan'")
    a = cells()
    a.obs["cell_type"] = ["T", "B", ""] * 4
    case("label_empty_text", with_data(h5ad("label_empty.h5ad", a)), "labels 4 cell(s) ''")
    a = cells()
    a.obs["cell_type"] = ["T", "B", "T "] * 4
    case("labels_differ_by_a_space", with_data(h5ad("label_space.h5ad", a)), "('T', 'T ')")
    a = cells()
    a.var_names = ["CD3D", "CD8A", "MS4A1", "CD3D", "NKG7", "GNLY"]
    case("duplicated_var_names", with_data(h5ad("dup_genes.h5ad", a)), "var_names names 1 gene(s) more than once ('CD3D' x2)")
    a = cells()
    a.var["symbol"] = ["CD3D", "CD8A", "LYZ", "LYZ", "NKG7", "GNLY"]
    case("duplicated_gene_key", with_data(h5ad("dup_symbols.h5ad", a), "--gene-key", "symbol"),
         "var column 'symbol' names 1 gene(s) more than once ('LYZ' x2)")
    a = cells()
    a.obs_names = ["c0", "c1", "c2", "c0"] + [f"c{i}" for i in range(4, 12)]
    case("duplicated_obs_names", with_data(h5ad("dup_cells.h5ad", a)), "obs_names name 1 cell(s) more than once (e.g. 'c0')")
    a = cells()
    a.X = sparse.csr_matrix(a.shape, dtype=np.float32)
    case("all_zero_X", with_data(h5ad("all_zero.h5ad", a)), "X holds only zeros (12 cells x 6 genes)")
    a = cells()
    X = a.X.toarray()
    X[1::2] = 0  # every cell of donor D2 has zero counts
    a.X = sparse.csr_matrix(X)
    case("zero_count_test_donor", with_data(h5ad("zero_d2.h5ad", a), "--donor-key", "donor", "--test-donors", "D2"),
         "the test split is empty (its 6 cells express none of the vocabulary genes)")
    a = cells()
    X = a.X.toarray()
    X[[i for i in range(12) if i % 3]] = 0  # only the T cells have counts
    a.X = sparse.csr_matrix(X)
    case("zero_count_cells_leave_one_label", with_data(h5ad("zero_but_t.h5ad", a)),
         "has 1 distinct label(s) among the 4 cells that express a vocabulary gene (8 express none)")
    a = cells()
    X = a.X.toarray()
    X = X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4  # CP10k, never log-transformed
    a.X = sparse.csr_matrix(X.astype(np.float32))
    case("unlogged_cp10k", with_data(h5ad("unlogged.h5ad", a)), "never log-transformed (CP10k/TPM?)")
    a = cells()
    X = a.X.toarray()
    X[5, 2] = 1e12
    a.X = X
    case("absurd_value", with_data(h5ad("absurd.h5ad", a)), "first at row 5 ('c5'), column 2 ('MS4A1')")
    a = cells()
    a.layers["scaled"] = sparse.csr_matrix(a.X.toarray() - 1.0)
    case("scaled_layer", with_data(h5ad("scaled_layer.h5ad", a), "--layer", "scaled"), "layer 'scaled' has negative values")
    case("layer_missing", with_data("{corpus}/scaled_layer.h5ad", "--layer", "counts"),
         "no layer 'counts'; available layers: scaled")
    case("layer_raw_missing", with_data("{data}", "--layer", "raw"), "has no .raw")
    case("input_kind_scaled", with_data("{data}", "--input-kind", "scaled"), "invalid choice: 'scaled'")
    case("data_is_directory", with_data("{corpus}"), "is a directory; give the .h5ad file inside it")
    (HERE / "zero_bytes.h5ad").write_bytes(b"")
    case("data_zero_bytes", with_data("{corpus}/zero_bytes.h5ad"), "is empty (0 bytes)")
    case("vocab_missing", with_data("{data}", "--vocab", "{corpus}/nowhere_genes.txt"), "--vocab")
    case("vocab_only_blank_lines", with_data("{data}", "--vocab", text("blank_genes.txt", "\n  \n")),
         "vocabulary file")
    case("label_key_empty", with_data("{data}", "--label-key", ""), "--label-key is empty")

    # --- outputs ----------------------------------------------------------------------------------
    case("train_output_is_a_file", with_data("{data}", out="{corpus}/typo.yaml"), "is a file, not a directory")
    case("train_output_read_only", with_data("{data}", out="{ro}/run"), "is not writable")
    case("train_output_is_the_data", with_data("{data}", out="{data}"), "is a file, not a directory")

    # --- checkpoints: the real layout with one tensor broken, another stage's file ------------------
    for name, phrase in [("int_weights.ckpt", "is int32 in the file but the model's is float32"),
                         ("nan_weights.ckpt", "holds 1 of 32 NaN/inf values"),
                         ("inf_weights.ckpt", "holds 1 of 1024 NaN/inf values"),
                         ("short_tensor.ckpt", f"parameter '{SHORT_ENTRY}'"),
                         ("cut.ckpt", "not a readable MindSpore checkpoint")]:
        case(f"train_{name.replace('.', '_')}", with_data("{data}", ckpt="{variants}/" + name), phrase)
    for name, phrase in [("int_weights.ckpt", f"tensor {INT_ENTRY} is int32 in the file but CellFM's is float32"),
                         ("nan_weights.ckpt", f"tensor {NAN_ENTRY} (our extractor.encoder.1.post_norm1.weight) holds 1"),
                         ("inf_weights.ckpt", f"tensor {INT_ENTRY} holds 1 of 1024 NaN/inf values"),
                         ("short_tensor.ckpt", "needs 4096 bytes but the file holds 4032"),
                         ("cut.ckpt", "not a readable MindSpore checkpoint")]:
        case(f"convert_{name.replace('.', '_')}",
             ["convert", "{variants}/" + name, "--output", "{out}/x.safetensors", "--config", "tiny"], phrase)
    # a fine-tuned best_model.pth is a valid starting checkpoint (fine-tuning further); these are not
    case("train_checkpoint_is_the_data", with_data("{data}", ckpt="{data}"),
         "is an HDF5 file (an .h5ad data set), not a checkpoint; were the data and the checkpoint swapped?")
    case("train_data_and_checkpoint_swapped", with_data("{ckpt}", ckpt="{data}"),
         "were the data and the checkpoint swapped?")
    report = text("cellfm_80m.json", json.dumps({"source": "CellFM_80M_weight.ckpt", "counts": {"loaded": 40}}) + "\n")
    case("train_checkpoint_is_the_convert_report", with_data("{data}", ckpt=report),
         "cellfm_80m.json is a JSON text file (a convert report?), not a checkpoint")
    case("convert_the_data_file", ["convert", "{data}", "--output", "{out}/x.safetensors", "--config", "tiny"],
         "is an HDF5 file (an .h5ad data set), not a checkpoint")
    case("predict_model_is_the_convert_report", ["predict", "--model", report, "--data", "{data}", "--output",
                                                 "{out}/p.h5ad"],
         "is a JSON text file (a convert report?), not a checkpoint")
    case("train_checkpoint_missing", with_data("{data}", ckpt="{corpus}/CellFM_80M_weight.ckpt"), "does not exist")
    case("train_checkpoint_is_directory", with_data("{data}", ckpt="{corpus}"), "is a directory")

    # --- convert's output: checked before the checkpoint is read ------------------------------------
    convert = ["convert", "{ckpt}", "--config", "tiny"]
    case("convert_output_is_a_directory", [*convert, "--output", "{corpus}"], "is a directory; give a file path")
    case("convert_output_inside_a_file", [*convert, "--output", "{corpus}/not_h5ad.h5ad/x.safetensors"],
         "is a file, so nothing can be created inside it")
    case("convert_read_only", [*convert, "--output", "{ro}/cellfm.safetensors"], "is not writable (read-only")
    case("convert_report_read_only", [*convert, "--output", "{out}/x.safetensors", "--report", "{ro}/r.json"],
         "--report: ")
    case("convert_report_is_a_directory", [*convert, "--output", "{out}/x.safetensors", "--report", "{corpus}"],
         "--report ")
    case("convert_report_not_json", [*convert, "--output", "{out}/x.safetensors", "--report", "{out}/r.txt"],
         "should end in .json")
    case("convert_output_empty", [*convert, "--output", ""], "--output is empty")
    case("convert_checkpoint_missing", ["convert", "{corpus}/CellFM_80M_weight.ckpt", "--output", "{out}/x.safetensors"],
         "does not exist")
    case("convert_unknown_config", ["convert", "{ckpt}", "--output", "{out}/x.safetensors", "--config", "huge"],
         "unknown config 'huge'")

    # --- predict / evaluate -------------------------------------------------------------------------
    predict = ["predict", "--model", "{model}", "--data", "{data}"]
    case("predict_output_is_a_directory", [*predict, "--output", "{corpus}"], "is a directory; give a file path")
    case("predict_output_no_suffix", [*predict, "--output", "{out}/predictions"], "should end in .h5ad")
    case("predict_output_read_only", [*predict, "--output", "{ro}/p.h5ad"], "is not writable")
    case("predict_output_is_the_data", [*predict, "--output", "{data}"], "is also an input of this command")
    case("predict_batch_size_zero", [*predict, "--output", "{out}/p.h5ad", "--batch-size", "0"], "--batch-size is 0")
    case("predict_batch_size_nan", [*predict, "--output", "{out}/p.h5ad", "--batch-size", "nan"], "--batch-size is nan")
    case("predict_device_gpu", [*predict, "--output", "{out}/p.h5ad", "--device", "GPU"], "unknown device 'GPU'")
    case("predict_model_missing", ["predict", "--model", "{out}/best_model.pth", "--data", "{data}", "--output",
                                   "{out}/p.h5ad"], "--model")
    case("predict_model_is_directory", ["predict", "--model", "{corpus}", "--data", "{data}", "--output", "{out}/p.h5ad"],
         "is a directory")
    to_predict = ["predict", "--model", "{model}", "--output", "{out}/p.h5ad", "--data"]
    case("predict_all_zero", [*to_predict, "{corpus}/all_zero.h5ad"], "X holds only zeros")
    case("predict_duplicated_genes", [*to_predict, "{corpus}/dup_genes.h5ad"], "more than once ('CD3D' x2)")
    case("predict_unlogged", [*to_predict, "{corpus}/unlogged.h5ad"], "never log-transformed")
    a = cells()
    a.var_names = [str(i) for i in range(6)]  # gene names lost on export: 0, 1, 2, ...
    case("predict_integer_gene_names", [*to_predict, h5ad("integer_genes.h5ad", a)], "is in the model vocabulary")
    case("predict_input_kind_typo", [*to_predict, "{data}", "--input-kind", "log1p"], "invalid choice: 'log1p'")
    case("predict_missing_data_flag", ["predict", "--model", "{model}", "--output", "{out}/p.h5ad"],
         "the following arguments are required: --data")
    evaluate = ["evaluate", "--model", "{model}", "--label-key", "cell_type"]
    case("evaluate_output_is_a_file", [*evaluate, "--data", "{data}", "--output", "{corpus}/typo.yaml"],
         "is a file, not a directory")
    case("evaluate_batch_size_zero", [*evaluate, "--data", "{data}", "--output", "{out}", "--batch-size", "0"],
         "--batch-size is 0")
    case("evaluate_label_missing_values", [*evaluate, "--data", "{corpus}/missing_label_values.h5ad", "--output", "{out}"],
         "missing values")
    case("evaluate_device_typo", [*evaluate, "--data", "{data}", "--output", "{out}", "--device", "cuda:x"],
         "unknown device 'cuda:x'")
    case("evaluate_without_label_key", ["evaluate", "--model", "{model}", "--data", "{data}", "--output", "{out}"],
         "the following arguments are required: --label-key")

    # --- demo and the command line itself -------------------------------------------------------------
    demo = ["demo", "--dataset", "synthetic", "--output", "{out}"]
    case("demo_epochs_nan", [*demo, "--epochs", "nan"], "--epochs is nan")
    case("demo_batch_size_zero", [*demo, "--batch-size", "0"], "--batch-size is 0")
    case("demo_device_gpu", [*demo, "--device", "gpu"], "did you mean 'cuda'?")
    case("demo_lr_negative", [*demo, "--lr", "-0.001"], "--lr is -0.001")
    # found by test_cellfm_fuzz (300 examples): AdamW's update overflowed float32 in torch
    case("demo_lr_overflows_adam", [*demo, "--lr", "2.0626115841618694e+51"], "--lr is 2.0626115841618694e+51")
    case("demo_output_is_a_file", ["demo", "--dataset", "synthetic", "--output", "{corpus}/typo.yaml"],
         "is a file, not a directory")
    case("unknown_command", ["trian", "--data", "{data}"], "invalid choice: 'trian'")
    case("unknown_flag", [*with_data("{data}"), "--learning-rate", "1e-3"], "unrecognized arguments: --learning-rate")
    case("flag_without_value", [*with_data("{data}"), "--lr"], "argument --lr: expected one argument")


if __name__ == "__main__":
    main()
