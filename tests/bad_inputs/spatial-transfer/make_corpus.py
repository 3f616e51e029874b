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

from spatial_transfer.demo import DemoSpec, generate
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
    data_case("nan_coordinates", "a NaN nucleus centroid", "contain NaN or inf; fix the coordinates", nan_x)

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
    for c in cases.values():
        c.setdefault("command", "run")
        c.setdefault("env", {})
        c.setdefault("overlay", None)
        c.setdefault("remove", [])
    (HERE / "expected.json").write_text(json.dumps({"tiny_sets": TINY, "cases": cases}, indent=2) + "\n")
    big = [p for p in HERE.rglob("*") if p.is_file() and p.stat().st_size > 50_000]
    assert not big, big


if __name__ == "__main__":
    main()
