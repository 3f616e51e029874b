"""The bad-input corpus (tests/bad_inputs/state-tx, shared checkpoints in tests/bad_inputs/checkpoints):
every case exits non-zero with ONE `error:` line naming the problem, no traceback, no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from state_tx.cli import main

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "bad_inputs" / "state-tx"
CKPTS = REPO / "tests" / "bad_inputs" / "checkpoints"

# (case id, kind, corpus file, extra, expected phrase)
#   kind h5ad: train on a TOML naming the file; toml: train with that TOML; config: train --config FILE;
#   override: train good.h5ad with an extra override; features: perturbation_features_file;
#   init_from: model.kwargs.init_from=<shared checkpoint>; infer: infer --adata FILE; infer_ckpt: --checkpoint FILE
CASES = [
    ("missing pert col (seed KeyError 'gene')", "h5ad", "missing_pert_col.h5ad", None, "no column 'gene'"),
    ("missing cell type col", "h5ad", "missing_celltype_col.h5ad", None, "no column 'cell_type'"),
    ("control label absent", "h5ad", "control_label_absent.h5ad", None, "control label"),
    ("NaN in X_hvg", "h5ad", "nan_values.h5ad", None, "NaN/inf"),
    ("inf in X_hvg", "h5ad", "inf_values.h5ad", None, "NaN/inf"),
    ("empty file", "h5ad", "empty.h5ad", None, "is empty"),
    ("no X_hvg for output_space gene", "h5ad", "no_x_hvg.h5ad", None, "obsm['X_hvg']"),
    ("CSC matrix", "h5ad", "csc_matrix.h5ad", None, "CSC"),
    ("truncated h5ad", "h5ad", "truncated.h5ad", None, "cannot be read"),
    ("TOML unquoted path", "toml", "unquoted_path.toml", None, "line 2"),
    ("TOML unquoted dotted key", "toml", "unquoted_dotted_key.toml", None, "quote keys that contain dots"),
    ("TOML relative path", "toml", "relative_path.toml", None, "not an absolute path"),
    ("TOML unknown cell type", "toml", "unknown_celltype.toml", None, "no cell type 'hepg2'"),
    ("TOML unknown fewshot perturbation", "toml", "unknown_fewshot_pert.toml", None, "'NOT_A_GENE'"),
    ("TOML bad split value", "toml", "bad_split_value.toml", None, 'choose "val" or "test"'),
    ("TOML dataset without path", "toml", "missing_dataset_path.toml", None, "no path in [datasets]"),
    ("TOML brace alternative missing", "toml", "no_matching_files.toml", None, "does not exist"),
    ("two gene spaces in one dataset", "toml", "mixed_gene_spaces.toml", None, "one gene space"),
    ("YAML syntax error", "config", "syntax_error.yaml", None, "YAML syntax error at line 3"),
    ("YAML unknown key", "config", "unknown_key.yaml", None, "did you mean 'training'"),
    ("unknown mapping strategy", "override", "good.h5ad", "data.kwargs.basal_mapping_strategy=nearest", "choose random or batch"),
    ("unknown model preset", "override", "good.h5ad", "model=state_xxl", "choose one of state_sm"),
    ("unknown loss", "override", "good.h5ad", "model.kwargs.loss=sinkhorn", "unknown model.kwargs.loss"),
    ("features file lacks a perturbation", "features", "features_missing_pert.pt", None, "no feature vector"),
    ("infer: wrong feature count (seed 2000 vs 18080)", "infer", "wrong_feature_count.h5ad", None, "expected 24 input features (the HVG matrix obsm['X_hvg']), got 55"),
    ("infer: unseen perturbation", "infer", "unseen_perturbation.h5ad", None, "not seen in training"),
    ("infer: missing pert col", "infer", "missing_pert_col.h5ad", None, "no column 'gene'"),
    ("infer: NaN", "infer", "nan_values.h5ad", None, "NaN/inf"),
    ("infer: truncated h5ad", "infer", "truncated.h5ad", None, "cannot be read"),
    ("infer: checkpoint of another model size", "infer_ckpt", "shape_mismatch.ckpt", None, "shape mismatches"),
]
if (CKPTS / "expected.json").exists():
    for name, info in json.loads((CKPTS / "expected.json").read_text()).items():
        CASES.append((f"init_from {name}", "init_from", name, None, info["phrase"]))
    for name in ("truncated.pt", "truncated.safetensors", "evil_pickle.pt", "truncated_mindspore.ckpt"):
        info = json.loads((CKPTS / "expected.json").read_text()).get(name)
        if info:
            CASES.append((f"infer --checkpoint {name}", "infer_ckpt_shared", name, None, info["phrase"]))
else:  # the shared checkpoint corpus belongs to the core; say so rather than pass silently
    CASES.append(("shared checkpoint corpus", "missing", "", None, ""))


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(text.replace("@CORPUS@", str(CORPUS)))
    return path


def _data_toml(tmp_path: Path, file: str) -> Path:
    return _toml(tmp_path, f'[datasets]\nscreen = "{CORPUS / file}"\n[training]\nscreen = "train"\n')


@pytest.mark.parametrize("case,kind,file,extra,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(case, kind, file, extra, phrase, tmp_path, capsys, monkeypatch,
                                        make_train_args, trained_run):
    if kind == "missing":
        pytest.skip(f"{CKPTS} is not there yet (the core's shared corpus)")
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    out = tmp_path / "out"
    if kind in ("infer", "infer_ckpt", "infer_ckpt_shared"):
        pred = out / "pred.h5ad"
        adata = CORPUS / (file if kind == "infer" else "good.h5ad")
        argv = ["infer", "--adata", str(adata), "--output", str(pred), "--model-dir", str(trained_run)]
        if kind != "infer":
            argv += ["--checkpoint", str((CORPUS if kind == "infer_ckpt" else CKPTS) / file)]
    elif kind == "toml":
        argv = make_train_args(_toml(tmp_path, (CORPUS / file).read_text()), out, steps=1)
    elif kind == "config":
        argv = make_train_args(_data_toml(tmp_path, "good.h5ad"), out, steps=1) + ["--config", str(CORPUS / file)]
    else:
        extra_args = {
            "h5ad": [],
            "override": [extra],
            "features": [f"data.kwargs.perturbation_features_file={CORPUS / file}"],
            "init_from": [f"model.kwargs.init_from={CKPTS / file}"],
        }[kind]
        data = file if kind == "h5ad" else "good.h5ad"
        argv = make_train_args(_data_toml(tmp_path, data), out, steps=1, extra=extra_args)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert phrase in err, err
    # nothing half-written: no output directory content, no prediction file, no executed payload
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), sorted(out.rglob("*"))
    assert not marker.exists()
