"""Write the spatial-transfer bad-input corpus: small broken data directories, configs and checkpoints.

    python tests/bad_inputs/spatial-transfer/make_corpus.py

good/ is a valid tiny data directory. A data case's directory holds only the file(s) it breaks: the
test lays them over a copy of good/ ("remove" lists files to delete). Each case in expected.json:
the command, CLI arguments ({data} = that composed directory, {here} = this directory),
environment variables, and the phrase the one-line error must contain. packages/spatial-transfer/tests/test_spatial_transfer_bad_inputs.py runs them all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from spatial_transfer.synthetic import DemoSpec, generate
from spatial_transfer.model import BulkModel, Cell2GeneConfig

HERE = Path(__file__).resolve().parent
SPEC = DemoSpec(seed=5, n_cell_types=3, in_dim=16, n_universe_genes=30, bulk_genes=12, spatial_genes=20,
                n_spatial_samples=3, grid=2, cells_per_spot=3, cells_between_spots=0.5,
                n_bulk_samples=4, bulk_region=150.0, bulk_cells=15)
FILES = ("spatial.h5ad", "spatial_cells.h5ad", "bulk.h5ad", "bulk_cells.h5ad")
TINY = ["model.in_dim=16", "model.gnn_dim=8", "model.gnn_heads=2", "model.gnn_layers=1", "model.embed_dim=16",
        "model.n_heads=2", "model.ff_dim=16", "model.bulk_layers=2", "model.spatial_layers=1", "spatial.epochs=1",
        "bulk.epochs=1", "graph.window=1", "graph.k=2", "folds=3"]


def _write(adatas: dict, d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, a in adatas.items():
        a.write_h5ad(d / name)


def _same(a, b) -> bool:
    return (a.shape == b.shape and a.obs.equals(b.obs) and list(a.var_names) == list(b.var_names)
            and np.array_equal(np.asarray(a.X), np.asarray(b.X), equal_nan=True))


def main() -> None:
    for old in HERE.iterdir():
        if old.is_dir():
            shutil.rmtree(old)
    good = dict(zip(FILES, generate(SPEC)))
    for a in good.values():  # the demo's ground-truth cell types are not part of the format
        a.obs.drop(columns=["cell_type"], errors="ignore", inplace=True)
    _write(good, HERE / "good")
    cases: dict[str, dict] = {}

    def data_case(name, what, phrase, edit, extra_args=()):
        adatas = {k: v.copy() for k, v in good.items()}
        edit(adatas)
        changed = {k: a for k, a in adatas.items() if not _same(a, good[k])}
        if changed:
            _write(changed, HERE / name)
        cases[name] = {"what": what, "overlay": name if changed else None, "args": ["--data", "{data}", *extra_args], "phrase": phrase}

    def drop_col(file, col):
        return lambda a: a[file].obs.drop(columns=[col], inplace=True)

    def set_x(file, value, where=(1, 2)):
        def edit(a):
            X = np.array(a[file].X)
            X[where] = value
            a[file].X = X
        return edit

    data_case("missing_sample_column", "spatial.h5ad without obs['sample']", "obs has no column 'sample'",
              drop_col("spatial.h5ad", "sample"))
    data_case("missing_spot_column", "nucleus table without obs['spot']", "obs has no column 'spot'",
              drop_col("spatial_cells.h5ad", "spot"))
    data_case("bulk_cells_missing_x", "bulk nucleus table without obs['x']", "obs has no column 'x'",
              drop_col("bulk_cells.h5ad", "x"))
    data_case("nan_features", "a NaN nuclear feature", "nuclear features contain NaN or inf",
              set_x("spatial_cells.h5ad", np.nan))
    data_case("inf_expression", "an inf expression value", "expression values contain NaN or inf",
              set_x("spatial.h5ad", np.inf))
    data_case("nan_bulk_expression", "a NaN bulk expression value", "expression values contain NaN or inf",
              set_x("bulk.h5ad", np.nan))
    def nan_x(a):
        x = a["spatial_cells.h5ad"].obs["x"].to_numpy().copy()
        x[0] = np.nan
        a["spatial_cells.h5ad"].obs["x"] = x
    data_case("nan_coordinates", "a NaN nucleus centroid", "obs columns x, y: 1 value(s) are NaN/inf, first at row 0", nan_x)

    def empty(a):
        a["spatial.h5ad"] = a["spatial.h5ad"][:0].copy()
    data_case("empty_spatial", "spatial.h5ad with no spots", "empty (0 spots", empty)

    def fewer_features(a):
        a["spatial_cells.h5ad"] = a["spatial_cells.h5ad"][:, :12].copy()
    data_case("wrong_feature_dim", "12-d nuclear features for a 16-d model", "nuclei have 12 features but the model expects in_dim=16",
              fewer_features)

    def drop_spot_cells(a):
        c = a["spatial_cells.h5ad"]
        a["spatial_cells.h5ad"] = c[c.obs["spot"] != a["spatial.h5ad"].obs_names[1]].copy()
    data_case("spot_without_nuclei", "a spot whose nuclei were all removed", "spots have no nuclei", drop_spot_cells)

    def unknown_spot(a):
        c = a["spatial_cells.h5ad"]
        spots = c.obs["spot"].astype(str).to_numpy().copy()
        spots[0] = "slideXX_r9c9"
        c.obs["spot"] = spots
    data_case("unknown_spot", "a nucleus naming a spot that does not exist", "refer to spots not in spatial.h5ad", unknown_spot)
    data_case("wrong_gene_count", "a config fixing 25 spatial genes for 20-gene data",
              "has 20 genes but the model predicts 25", lambda a: None, ["--set", "model.spatial_genes=25"])

    (HERE / "not_h5ad").mkdir()
    (HERE / "not_h5ad" / "spatial.h5ad").write_text("sample,array_row,array_col\nslide00,0,0\n")
    cases["not_h5ad"] = {"what": "a CSV saved as spatial.h5ad", "overlay": "not_h5ad", "args": ["--data", "{data}"],
                         "phrase": "not a readable .h5ad file"}
    truncated = (HERE / "good" / "spatial_cells.h5ad").read_bytes()
    (HERE / "truncated_h5ad").mkdir()
    (HERE / "truncated_h5ad" / "spatial_cells.h5ad").write_bytes(truncated[: len(truncated) // 2])
    cases["truncated_h5ad"] = {"what": "spatial_cells.h5ad cut in half", "overlay": "truncated_h5ad", "args": ["--data", "{data}"],
                               "phrase": "not a readable .h5ad file"}
    cases["missing_file"] = {"what": "a data directory without bulk_cells.h5ad", "remove": ["bulk_cells.h5ad"],
                             "args": ["--data", "{data}"], "phrase": "bulk_cells.h5ad does not exist"}

    # ---- configuration files
    cfg = HERE / "configs"
    cfg.mkdir()
    (cfg / "typo_key.yaml").write_text("spatial:\n  epoch: 3\n")
    (cfg / "bad_syntax.yaml").write_text("model:\n  embed_dim: 16\n   n_heads: 2\n")
    (cfg / "typo_key.toml").write_text("[model]\nembed_dimm = 16\n")
    (cfg / "bad_syntax.toml").write_text("[model]\nembed_dim = = 16\n")
    (cfg / "bad_value.yaml").write_text("graph:\n  method: delaunay\n")
    good_args = ["--data", "{data}"]
    cases["yaml_typo_key"] = {"what": "YAML key 'epoch' instead of 'epochs'", "args": [*good_args, "--config", "{here}/configs/typo_key.yaml"],
                              "phrase": "unknown key 'spatial.epoch'; did you mean 'spatial.epochs'?"}
    cases["yaml_syntax"] = {"what": "YAML with a bad indent", "args": [*good_args, "--config", "{here}/configs/bad_syntax.yaml"],
                            "phrase": "YAML syntax error at line 3"}
    cases["toml_typo_key"] = {"what": "TOML key 'embed_dimm'", "args": [*good_args, "--config", "{here}/configs/typo_key.toml"],
                              "phrase": "unknown key 'model.embed_dimm'; did you mean 'model.embed_dim'?"}
    cases["toml_syntax"] = {"what": "TOML with '= ='", "args": [*good_args, "--config", "{here}/configs/bad_syntax.toml"],
                            "phrase": "TOML syntax error"}
    cases["unknown_graph_method"] = {"what": "graph.method delaunay", "args": [*good_args, "--config", "{here}/configs/bad_value.yaml"],
                                     "phrase": "unknown graph method 'delaunay'; choose one of: knn, radius"}

    # ---- strategy / CV names (flags and the guide's variables)
    cases["unknown_strategy_env"] = {"what": "TRANSFER_STRATEGY=frozen_everything", "args": good_args,
                                     "env": {"TRANSFER_STRATEGY": "frozen_everything"},
                                     "phrase": "TRANSFER_STRATEGY='frozen_everything' is not a valid value; allowed: full, frozen_backbone, frozen_decoder, scratch"}
    cases["unknown_strategy_flag"] = {"what": "--strategy partial", "args": [*good_args, "--strategy", "partial"],
                                      "phrase": "unknown strategy 'partial'; allowed: full, frozen_backbone, frozen_decoder, scratch"}
    cases["unknown_compare_strategy"] = {"command": "compare", "what": "compare --strategies full,lora",
                                         "args": [*good_args, "--strategies", "full,lora"], "phrase": "unknown strategy 'lora' in --strategies"}
    cases["bad_bool_env"] = {"what": "USE_TRANSFER_LEARNING=yes-please", "args": good_args,
                             "env": {"USE_TRANSFER_LEARNING": "yes-please"}, "phrase": "allowed: true, false"}
    cases["conflicting_env"] = {"what": "TRANSFER_STRATEGY=full with FREEZE_BACKBONE=true", "args": good_args,
                                "env": {"TRANSFER_STRATEGY": "full", "FREEZE_BACKBONE": "true"}, "phrase": "conflicts with strategy 'full'"}
    cases["unknown_cv_mode"] = {"what": "CV_MODE=lopo", "args": good_args, "env": {"CV_MODE": "lopo"},
                                "phrase": "CV_MODE='lopo' is not a valid value; allowed: kfold, loo"}
    cases["unknown_loo_sample"] = {"what": "LOO_HELDOUT names a missing sample", "args": good_args,
                                   "env": {"CV_MODE": "loo", "LOO_HELDOUT": "slide00,slide77"},
                                   "phrase": "LOO_HELDOUT names unknown sample 'slide77'; samples: slide00, slide01, slide02"}
    cases["too_many_folds"] = {"what": "10 folds over 3 samples", "args": [*good_args, "--folds", "10"],
                               "phrase": "10 folds but only 3 samples"}

    # ---- checkpoints: shape mismatch (a bulk model of other sizes) and a foreign state dict
    torch.manual_seed(0)  # deterministic files
    other = BulkModel(Cell2GeneConfig(in_dim=24, gnn_dim=12, gnn_heads=2, gnn_layers=1, embed_dim=24, n_heads=2, ff_dim=24,
                                      bulk_layers=1, spatial_layers=1, bulk_genes=12, spatial_genes=20))
    ck = HERE / "checkpoints"
    ck.mkdir()
    torch.save({"model": other.state_dict()}, ck / "bulk_other_sizes.pt")
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, ck / "not_cell2gene.pt")
    cases["bulk_checkpoint_shape_mismatch"] = {
        "what": "a BulkModel checkpoint with other sizes", "args": [*good_args, "--bulk-checkpoint", "{here}/checkpoints/bulk_other_sizes.pt"],
        "phrase": "no tensor of"}
    cases["bulk_checkpoint_foreign"] = {
        "what": "a state dict of another model", "args": [*good_args, "--bulk-checkpoint", "{here}/checkpoints/not_cell2gene.pt"],
        "phrase": "none of its 2 names are Cell2Gene layer names"}
    _issue16_cases(cases, good, data_case, set_x, ck)
    for c in cases.values():
        c.setdefault("command", "run")
        c.setdefault("env", {})
        c.setdefault("overlay", None)
        c.setdefault("remove", [])
    # one line per case: the table stays readable in a diff and small
    rows = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in cases.items())
    (HERE / "expected.json").write_text(f'{{\n  "tiny_sets": {json.dumps(TINY)},\n  "cases": {{\n{rows}\n  }}\n}}\n')
    big = [p for p in HERE.rglob("*") if p.is_file() and p.stat().st_size > 50_000]
    assert not big, big


TINY_MODEL = dict(in_dim=16, gnn_dim=8, gnn_heads=2, gnn_layers=1, embed_dim=16, n_heads=2, ff_dim=16, bulk_layers=2,
                  spatial_layers=1, bulk_genes=12, spatial_genes=20)


def _checkpoint(kind: str, genes: list[str], edit=None, seed: int = 0) -> dict:
    """A checkpoint in the layout the Trainer writes ({"model", "extra", ...}) for the corpus' tiny sizes."""
    from dataclasses import asdict

    from spatial_transfer.data import GraphConfig
    from spatial_transfer.model import SpatialModel

    torch.manual_seed(seed)
    cfg = Cell2GeneConfig(**TINY_MODEL)
    model = BulkModel(cfg) if kind == "Cell2Gene BulkModel" else SpatialModel(cfg)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    extra = {"model_config": asdict(cfg), "genes": list(genes), "kind": kind}
    if kind == "Cell2Gene SpatialModel":
        extra.update(graph=asdict(GraphConfig(window=1, k=2)), strategy="full")
    ckpt = {"model": sd, "extra": extra, "epoch": 1, "step": 1}
    if edit:
        edit(ckpt)
    return ckpt


def _issue16_cases(cases: dict, good: dict, data_case, set_x, ck: Path) -> None:
    """Issue 16: every plausible mistake one clear line, nothing written (numbers, config values, split plans,
    outputs, data by THE core rule, checkpoints of the other stage or with integer/NaN weights, predict)."""
    d = ["--data", "{data}"]

    def case(name, what, args, phrase, **kw):
        assert name not in cases, name
        cases[name] = {"what": what, "args": list(args), "phrase": phrase, **kw}

    # ---- numbers typed on the command line
    for name, flag, value, phrase in [
        ("epochs_zero", "--epochs", "0", "--epochs is 0; it must be >= 1"),
        ("epochs_negative", "--epochs", "-1", "--epochs is -1; it must be >= 1"),
        ("epochs_fraction", "--epochs", "2.5", "--epochs should be a whole number, got 2.5"),
        ("epochs_empty", "--epochs", "", "--epochs should be a number"),
        ("bulk_epochs_zero", "--bulk-epochs", "0", "--bulk-epochs is 0; it must be >= 1"),
        ("lr_nan", "--lr", "nan", "--lr is nan; give a finite number"),
        ("lr_inf", "--lr", "inf", "--lr is inf; give a finite number"),
        ("lr_zero", "--lr", "0", "--lr is 0; it must be > 0"),
        ("lr_negative", "--lr", "-1e-4", "--lr is -1e-4; it must be > 0"),
        ("lr_decimal_comma", "--lr", "1,5e-4", "--lr should be a number, got 1,5e-4"),
        ("batch_size_zero", "--batch-size", "0", "--batch-size is 0; it must be >= 1"),
        ("batch_size_nan", "--batch-size", "nan", "--batch-size is nan"),
        ("seed_negative", "--seed", "-1", "--seed is -1; it must be >= 0"),
        ("seed_too_large", "--seed", "4294967296", "--seed is 4294967296"),
        ("folds_one", "--folds", "1", "--folds is 1; it must be >= 2"),
        ("folds_zero", "--folds", "0", "--folds is 0; it must be >= 2"),
        ("device_gpu", "--device", "gpu", "unknown device 'gpu'"),
        ("device_typo", "--device", "cdua", "unknown device 'cdua'"),
    ]:
        case(name, f"{flag} {value!r}", [*d, flag, value], phrase)
    case("compare_epochs_zero", "compare --epochs 0", [*d, "--epochs", "0"], "--epochs is 0", command="compare")
    case("pretrain_bulk_epochs_zero", "pretrain --bulk-epochs 0", [*d, "--bulk-epochs", "0"], "--bulk-epochs is 0",
         command="pretrain")
    case("pretrain_lr_nan", "pretrain --lr nan", [*d, "--lr", "nan"], "--lr is nan", command="pretrain")

    # ---- the same numbers through --set and config files
    for name, setting, phrase in [
        ("set_epochs_zero", "spatial.epochs=0", "'spatial.epochs' is 0; it must be >= 1"),
        ("set_bulk_epochs_zero", "bulk.epochs=0", "'bulk.epochs' is 0; it must be >= 1"),
        ("set_lr_nan", "spatial.lr=nan", "'spatial.lr' is nan"),
        ("set_bulk_lr_negative", "bulk.lr=-0.001", "'bulk.lr' is -0.001; it must be > 0"),
        ("set_batch_size_zero", "spatial.batch_size=0", "'spatial.batch_size' is 0; it must be >= 1"),
        ("set_bulk_batch_size_zero", "bulk.batch_size=0", "'bulk.batch_size' is 0; it must be >= 1"),
        ("set_seed_negative", "seed=-1", "'seed' is -1; it must be >= 0"),
        ("set_folds_one", "folds=1", "'folds' is 1; it must be >= 2"),
        ("set_dropout_one", "model.dropout=1.0", "'model.dropout' is 1.0; it must be >= 0 and < 1"),
        ("set_weight_decay_negative", "spatial.weight_decay=-1", "'spatial.weight_decay' is -1"),
        ("set_patience_zero", "spatial.patience=0", "'spatial.patience' is 0; it must be >= 1"),
        ("set_graph_k_zero", "graph.k=0", "'graph.k' is 0; it must be >= 1"),
        ("set_graph_radius_nan", "graph.radius=nan", "'graph.radius' is nan"),
        ("set_device_gpu", "device=gpu", "unknown device 'gpu'"),
        ("set_embed_dim_zero", "model.embed_dim=0", "'model.embed_dim' is 0; it must be >= 4"),
    ]:
        case(name, f"--set {setting}", [*d, "--set", setting], phrase)
    cfg = HERE / "configs"
    for fname, text in [("epochs_zero.yaml", "spatial:\n  epochs: 0\n"), ("lr_nan.yaml", "spatial:\n  lr: .nan\n"),
                        ("lr_nan.toml", "[spatial]\nlr = nan\n"), ("seed_negative.toml", "seed = -7\n"),
                        ("folds_one.yaml", "folds: 1\n"), ("batch_zero.toml", "[bulk]\nbatch_size = 0\n"),
                        ("duplicate_key.yaml", "spatial:\n  lr: 0.001\n  lr: 10.0\n"),
                        ("duplicate_key.toml", "[spatial]\nepochs = 3\n[spatial]\nepochs = 5\n")]:
        (cfg / fname).write_text(text)
    for name, fname, phrase in [
        ("yaml_epochs_zero", "epochs_zero.yaml", "'spatial.epochs' is 0; it must be >= 1"),
        ("yaml_lr_nan", "lr_nan.yaml", "'spatial.lr' is nan"),
        ("toml_lr_nan", "lr_nan.toml", "'spatial.lr' is nan"),
        ("toml_seed_negative", "seed_negative.toml", "'seed' is -7; it must be >= 0"),
        ("yaml_folds_one", "folds_one.yaml", "'folds' is 1; it must be >= 2"),
        ("toml_batch_size_zero", "batch_zero.toml", "'bulk.batch_size' is 0"),
        ("yaml_duplicate_key", "duplicate_key.yaml", "'lr'"),
        ("toml_duplicate_key", "duplicate_key.toml", "spatial"),
    ]:
        keys = {"epochs_zero.yaml": ["spatial.epochs"], "folds_one.yaml": ["folds"]}.get(fname, [])
        case(name, f"config file {fname}", [*d, "--config", f"{{here}}/configs/{fname}"], phrase,
             **({"drop_sets": keys} if keys else {}))
    case("config_missing", "--config naming a file that does not exist", [*d, "--config", "{here}/configs/tiny.yaml"],
         "--config", )
    case("config_is_directory", "--config given the configs directory", [*d, "--config", "{here}/configs"],
         "is a directory")

    # ---- split plans
    def one_sample(a):
        keep = a["spatial.h5ad"].obs["sample"].astype(str) == "slide00"
        a["spatial.h5ad"] = a["spatial.h5ad"][keep.to_numpy()].copy()
        c = a["spatial_cells.h5ad"]
        a["spatial_cells.h5ad"] = c[(c.obs["sample"].astype(str) == "slide00").to_numpy()].copy()
    data_case("loo_one_sample", "leave-one-out on a single slide (empty training set)",
              "leave-one-out needs at least 2 samples", one_sample, ["--cv", "loo"])
    cases["kfold_one_sample"] = {**cases["loo_one_sample"], "what": "2-fold CV of a single slide",
                                 "args": [*d, "--folds", "2"],
                                 "phrase": "k-fold cross-validation needs at least 2 samples (slides) but the data have 1"}
    case("loo_heldout_flag_unknown", "--loo-heldout naming no sample", [*d, "--cv", "loo", "--loo-heldout", "slide9"],
         "LOO_HELDOUT names unknown sample 'slide9'")
    case("loo_heldout_wrong_case", "--loo-heldout Slide00 (capital S)", [*d, "--cv", "loo", "--loo-heldout", "Slide00"],
         "did you mean 'slide00'?")
    case("loo_heldout_twice", "the same held-out slide twice", [*d, "--cv", "loo", "--loo-heldout", "slide00,slide00"],
         "names sample 'slide00' twice")
    case("loo_heldout_with_kfold", "--loo-heldout without loo", [*d, "--loo-heldout", "slide00"],
         "only applies with CV_MODE=loo")
    case("cv_flag_unknown", "--cv LOO (capitals)", [*d, "--cv", "LOO"], "unknown CV mode 'LOO'")
    case("compare_no_strategy", "--strategies ','", [*d, "--strategies", ","], "names no strategy", command="compare")
    case("compare_strategy_twice", "--strategies full,full", [*d, "--strategies", "full,full"], "names 'full' twice",
         command="compare")

    # ---- outputs and data places
    case("output_is_existing_file", "--output names an existing file", d, "is a file, not a directory",
         output="{data}/spatial.h5ad")
    case("output_inside_a_file", "--output below an existing file", d, "not writable", output="{data}/spatial.h5ad/run")
    case("output_h5ad_name", "--output results.h5ad (a file name for the run directory)", d, "looks like a file name",
         output="{out}/results.h5ad")
    case("output_csv_name", "--output results.csv", d, "looks like a file name", output="{out}/results.csv")
    case("output_empty", "--output ''", d, "--output is empty", output="")
    case("output_unwritable_place", "--output where nothing can be created (/proc)", d, "not writable",
         output="/proc/spatial_transfer_run")
    case("output_result_is_directory", "a directory where the run writes predictions.h5ad", d,
         "is a directory where the run writes a file", mkdirs=["log_normalized_transfer_full/predictions.h5ad"])
    case("output_checkpoint_dir_is_file", "a file where the run's checkpoint directory goes", d,
         "is a file, not a directory", files={"checkpoints_transfer_full": "x"})
    case("resume_other_settings", "--output of a run with other settings (said before bulk pretraining)", d,
         "holds results of a run with other settings",
         files={"log_normalized_transfer_full/temp_fold_results.json": json.dumps({"plan": {"folds": []}, "folds": []})})
    case("resume_record_cut_short", "a temp_fold_results.json cut short", d, "not a readable fold record",
         files={"log_normalized_transfer_full/temp_fold_results.json": '{"plan": {"strat'})
    case("data_is_a_file", "--data given spatial.h5ad itself", ["--data", "{data}/spatial.h5ad"], "is a file; --data is the directory")
    case("data_missing", "--data naming a directory that does not exist", ["--data", "{data}_v2"], "does not exist")
    case("data_empty_string", "--data ''", ["--data", ""], "--data is empty")
    (HERE / "csv_instead").mkdir()
    (HERE / "csv_instead" / "spatial.csv").write_text("spot,sample,array_row,array_col\nslide00_r0c0,slide00,0,0\n")
    case("csv_instead_of_h5ad", "spatial.csv where spatial.h5ad is expected", d, "found spatial.csv",
         overlay="csv_instead", remove=["spatial.h5ad"])
    case("empty_data_dir", "a data directory with none of the four files", d, "spatial.h5ad does not exist",
         remove=list(FILES))

    # ---- data by THE core rule (ftcore.data) and its edge
    def counts(file):
        def edit(a):
            a[file].X = np.round(np.expm1(np.asarray(a[file].X))).astype(np.float32)
        return edit
    data_case("counts_spatial", "raw integer counts in spatial.h5ad", "holds raw counts", counts("spatial.h5ad"))
    data_case("counts_bulk", "raw integer counts in bulk.h5ad", "sc.pp.normalize_total", counts("bulk.h5ad"))

    def scaled(a):
        X = np.asarray(a["spatial.h5ad"].X)
        a["spatial.h5ad"].X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
    data_case("scaled_spatial", "z-scored spatial expression", "negative values", scaled)

    def unlogged(a):
        a["spatial.h5ad"].X = (np.expm1(np.asarray(a["spatial.h5ad"].X)) + 0.5).astype(np.float32)
    data_case("unlogged_spatial", "CP10k (never log-transformed) spatial expression", "never log-transformed", unlogged)
    data_case("huge_expression", "a 1e38 expression value", "beyond ±1e+09, first at row 1", set_x("spatial.h5ad", 1e38))
    data_case("huge_feature", "a 1e38 nuclear feature", "nuclear features: 1 value(s) are beyond", set_x("spatial_cells.h5ad", 1e38))
    data_case("huge_bulk_expression", "a 1e38 bulk expression value", "beyond ±1e+09", set_x("bulk.h5ad", 1e38))

    def obs_edit(file, col, fn):
        def edit(a):
            a[file].obs[col] = fn(a[file].obs[col].to_numpy().copy())
        return edit

    def first(v):  # the column as text (as a CSV import leaves it), its first value replaced
        def fn(x):
            import pandas as pd

            x = np.array([f"{e:g}" if isinstance(e, float) else str(e) for e in x], dtype=object)
            x[0] = v
            return pd.Categorical(x)
        return fn
    data_case("coordinates_as_text", "array_row stored as text 'r0'", "holds 'r0', not a number",
              obs_edit("spatial.h5ad", "array_row", first("r0")))
    data_case("nucleus_x_as_text", "a nucleus x of '12,5' (decimal comma)", "holds '12,5', not a number",
              obs_edit("spatial_cells.h5ad", "x", first("12,5")))
    data_case("grid_position_fraction", "array_col 0.5 (pixel coordinates as grid positions)",
              "are spot grid positions (whole numbers)", obs_edit("spatial.h5ad", "array_col", lambda x: x + 0.5))
    data_case("nan_grid_position", "array_row NaN", "obs columns array_row, array_col: 1 value(s) are NaN/inf",
              obs_edit("spatial.h5ad", "array_row", lambda x: np.where(np.arange(len(x)) == 2, np.nan, x)))
    data_case("huge_nucleus_y", "a nucleus y of 1e38", "beyond ±1e+09",
              obs_edit("spatial_cells.h5ad", "y", lambda x: np.where(np.arange(len(x)) == 0, 1e38, x)))
    data_case("missing_sample_label", "a spot without a sample label", "obs['sample'] is empty for 1 rows",
              obs_edit("spatial.h5ad", "sample", first(np.nan)))

    def dup_spots(a):
        names = list(a["spatial.h5ad"].obs_names)
        names[1] = names[0]
        a["spatial.h5ad"].obs_names = names
    data_case("duplicate_spot_names", "two spots with one obs_name", "spot names (obs_names) are not unique", dup_spots)

    def dup_bulk(a):
        names = list(a["bulk.h5ad"].obs_names)
        names[1] = names[0]
        a["bulk.h5ad"].obs_names = names
    data_case("duplicate_bulk_samples", "two bulk samples with one name", "bulk sample names (obs_names) are not unique",
              dup_bulk)

    def dup_genes(a):
        genes = list(a["spatial.h5ad"].var_names)
        genes[3] = genes[2]
        a["spatial.h5ad"].var_names = genes
    data_case("duplicate_genes", "a gene name twice in spatial.h5ad", "gene names (var_names) are not unique", dup_genes)

    def numeric_genes(a):
        a["spatial.h5ad"].var_names = [str(i) for i in range(a["spatial.h5ad"].n_vars)]
    data_case("genes_as_integers", "var_names 0..19 (genes without names)", "gene names (var_names) are numbers",
              numeric_genes)

    def ensembl_bulk(a):
        a["bulk.h5ad"].var_names = [f"ENSG{i:011d}" for i in range(a["bulk.h5ad"].n_vars)]
    data_case("bulk_genes_disjoint", "bulk genes as Ensembl IDs, spatial as symbols", "share no name", ensembl_bulk)

    def renamed(a):
        a["spatial.h5ad"].obs.rename(columns={"sample": "Sample"}, inplace=True)
    data_case("renamed_sample_column", "obs 'Sample' instead of 'sample'", "rename 'Sample' to 'sample'", renamed)

    def obsm_coords(a):
        c = a["spatial_cells.h5ad"]
        c.obsm["spatial"] = c.obs[["x", "y"]].to_numpy()
        c.obs.drop(columns=["x", "y"], inplace=True)
    data_case("coordinates_in_obsm", "nucleus centroids in obsm['spatial'] instead of obs x/y",
              "obsm['spatial'] are not read", obsm_coords)
    data_case("pretrain_counts_bulk", "pretrain on raw bulk counts", "holds raw counts", counts("bulk.h5ad"))
    cases["pretrain_counts_bulk"]["command"] = "pretrain"

    # ---- checkpoints: the real layouts, integer / NaN weights, the other stage
    spatial_genes = list(good["spatial.h5ad"].var_names)
    bulk_genes = list(good["bulk.h5ad"].var_names)

    def int_weight(ckpt):
        key = "feature_projection.0.weight"
        ckpt["model"][key] = (ckpt["model"][key] * 100).round().to(torch.int64)

    def nan_weight(ckpt):
        ckpt["model"]["gnn.convs.0.lin.weight"][0, 0] = float("nan")

    def drop_genes(ckpt):
        del ckpt["extra"]["genes"]

    def drop_layer(ckpt):
        ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("output_projection")}

    writes = {
        "bulk_good.pt": ("Cell2Gene BulkModel", bulk_genes, None),
        "bulk_int_weights.pt": ("Cell2Gene BulkModel", bulk_genes, int_weight),
        "bulk_nan_weights.pt": ("Cell2Gene BulkModel", bulk_genes, nan_weight),
        "bulk_ensembl_genes.pt": ("Cell2Gene BulkModel", [f"ENSG{i:011d}" for i in range(12)], None),
        "spatial_good.pt": ("Cell2Gene SpatialModel", spatial_genes, None),
        "spatial_int_weights.pt": ("Cell2Gene SpatialModel", spatial_genes, int_weight),
        "spatial_nan_weights.pt": ("Cell2Gene SpatialModel", spatial_genes, nan_weight),
        "spatial_no_genes.pt": ("Cell2Gene SpatialModel", spatial_genes, drop_genes),
        "spatial_missing_layer.pt": ("Cell2Gene SpatialModel", spatial_genes, drop_layer),
    }
    for fname, (kind, genes, edit) in writes.items():
        torch.save(_checkpoint(kind, genes, edit), ck / fname)
    bulk = lambda f: [*d, "--bulk-checkpoint", f"{{here}}/checkpoints/{f}"]  # noqa: E731
    case("bulk_checkpoint_int_weights", "a BulkModel checkpoint (real layout) whose feature_projection.0.weight is int64",
         bulk("bulk_int_weights.pt"), "tensor feature_projection.0.weight is int64 in the file but the model's is float32")
    case("bulk_checkpoint_nan_weights", "a BulkModel checkpoint with a NaN weight", bulk("bulk_nan_weights.pt"),
         "tensor gnn.convs.0.lin.weight holds 1 of")
    case("bulk_checkpoint_is_spatial", "a CV fold's SpatialModel checkpoint as --bulk-checkpoint",
         bulk("spatial_good.pt"), "is a Cell2Gene SpatialModel checkpoint")
    case("bulk_checkpoint_disjoint_genes", "a BulkModel of Ensembl-named genes for symbol-named spatial data",
         bulk("bulk_ensembl_genes.pt"), "share no name")
    case("bulk_checkpoint_directory", "--bulk-checkpoint given the checkpoints directory",
         [*d, "--bulk-checkpoint", "{here}/checkpoints"], "is a directory")
    case("bulk_checkpoint_missing", "--bulk-checkpoint naming a file that does not exist",
         bulk("best_bulk_model.pt"), "does not exist")
    case("compare_bulk_checkpoint_int_weights", "compare with an int-weight BulkModel checkpoint",
         bulk("bulk_int_weights.pt"), "is int64 in the file", command="compare")

    # ---- predict
    pred = lambda f, *more: ["--checkpoint", f"{{here}}/checkpoints/{f}", *d, *more]  # noqa: E731
    for name, args, phrase, extra in [
        ("predict_batch_size_zero", pred("spatial_good.pt", "--batch-size", "0"), "--batch-size is 0", {}),
        ("predict_batch_size_nan", pred("spatial_good.pt", "--batch-size", "nan"), "--batch-size is nan", {}),
        ("predict_batch_size_fraction", pred("spatial_good.pt", "--batch-size", "0.5"), "should be a whole number", {}),
        ("predict_device_gpu", pred("spatial_good.pt", "--device", "gpu"), "unknown device 'gpu'", {}),
        ("predict_bulk_checkpoint", pred("bulk_good.pt"), "is a Cell2Gene BulkModel checkpoint", {}),
        ("predict_int_weights", pred("spatial_int_weights.pt"), "tensor feature_projection.0.weight is int64", {}),
        ("predict_nan_weights", pred("spatial_nan_weights.pt"), "holds 1 of", {}),
        ("predict_checkpoint_without_genes", pred("spatial_no_genes.pt"), "without 'genes'", {}),
        ("predict_checkpoint_missing_layer", pred("spatial_missing_layer.pt"), "4 tensors of the SpatialModel", {}),
        ("predict_missing_checkpoint", pred("best_hest_graph_model_fold_0.pt"), "does not exist", {}),
        ("predict_checkpoint_directory", ["--checkpoint", "{here}/checkpoints", *d], "is a directory", {}),
        ("predict_counts", pred("spatial_good.pt"), "holds raw counts", {"overlay": "counts_spatial"}),
        ("predict_huge_value", pred("spatial_good.pt"), "beyond ±1e+09", {"overlay": "huge_expression"}),
        ("predict_wrong_feature_dim", pred("spatial_good.pt"), "nuclei have 12 features", {"overlay": "wrong_feature_dim"}),
        ("predict_data_is_a_file", ["--checkpoint", "{here}/checkpoints/spatial_good.pt", "--data", "{data}/spatial.h5ad"],
         "is a file; --data is the directory", {}),
        ("predict_output_is_file", pred("spatial_good.pt"), "is a file, not a directory", {"output": "{data}/spatial.h5ad"}),
        ("predict_output_csv_name", pred("spatial_good.pt"), "looks like a file name", {"output": "{out}/predictions.csv"}),
        ("predict_predictions_is_directory", pred("spatial_good.pt"), "is a directory where predict writes its file",
         {"mkdirs": ["predictions.h5ad"]}),
    ]:
        case(name, name.replace("_", " "), args, phrase, command="predict", **extra)

    # genes in another order than the model's are matched by name (and slides without expression are predicted):
    # test_spatial_transfer_cli.py::test_predict_histology_only_and_genes_by_name, not bad inputs

    # ---- make-demo-data
    case("demo_seed_negative", "make-demo-data --seed -1", ["{out}/demo", "--seed", "-1"], "--seed is -1",
         command="make-demo-data")
    case("demo_dataset_unknown", "make-demo-data --dataset mouse", ["{out}/demo", "--dataset", "mouse"],
         "invalid choice: 'mouse' (choose from 'synthetic', 'visium-mouse-brain')", command="make-demo-data")
    case("dataset_unknown", "run --dataset visium (not a data set name)", ["--dataset", "visium"],
         "invalid choice: 'visium'")
    case("dataset_and_data", "run --data DIR --dataset visium-mouse-brain", ["--data", "{data}", "--dataset",
         "visium-mouse-brain"], "--dataset visium-mouse-brain and --data both name the data")
    case("compare_dataset_and_data", "compare --data DIR --dataset synthetic", ["--data", "{data}", "--dataset",
         "synthetic"], "--dataset synthetic and --data both name the data", command="compare")
    case("demo_dir_is_file", "make-demo-data onto an existing file", ["{data}/spatial.h5ad"], "is a file, not a directory",
         command="make-demo-data")
    case("demo_dir_csv_name", "make-demo-data data.csv", ["{out}/data.csv"], "looks like a file name",
         command="make-demo-data")

    # ---- a NaN loss mid-training: the run's files are removed again
    case("nan_loss_removes_outputs", "lr 1e30 from scratch: the loss becomes NaN after files exist",
         [*d, "--strategy", "scratch", "--set", "spatial.lr=1e30", "--set", "spatial.epochs=3"],
         "training loss became")


if __name__ == "__main__":
    main()
