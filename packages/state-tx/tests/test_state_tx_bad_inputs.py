"""The bad-input corpus (tests/bad_inputs/state-tx, shared checkpoints in tests/bad_inputs/checkpoints):
every case exits 2 with ONE `error:` line naming the problem, no traceback, and leaves nothing new in the
output place, the corpus, the trained run or the home directory (repo_helpers.check_bad_input)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from state_tx.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_bad_input  # noqa: E402
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
    # ---- issue 16: numbers that pass a `<= 0` check (NaN) or are out of range, as dotted overrides
    ("override training.lr=nan", "override", "", "training.lr=nan", "'training.lr' is nan; give a finite number"),
    ("override training.lr=inf", "override", "", "training.lr=inf", "give a finite number"),
    ("override training.lr=0", "override", "", "training.lr=0", "must be > 0"),
    ("override training.lr=1e300 (overflows a float32 step)", "override", "", "training.lr=1e300", "<= 1000"),
    ("override training.lr negative", "override", "", "training.lr=-1e-3", "must be > 0"),
    ("override training.lr not a number", "override", "", "training.lr=1e-3x", "should be a number"),
    ("override training.lr empty", "override", "", "training.lr=", "should be a number"),
    ("override training.max_steps=nan", "override", "", "training.max_steps=nan", "'training.max_steps' is nan"),
    ("override training.max_steps=-1", "override", "", "training.max_steps=-1", "must be >= 1"),
    ("override training.max_steps=0", "override", "", "training.max_steps=0", "must be >= 1"),
    ("override training.max_steps fractional", "override", "", "training.max_steps=2.5", "whole number"),
    ("override training.batch_size=0", "override", "", "training.batch_size=0", "'training.batch_size' is 0"),
    ("override training.batch_size absurd", "override", "", "training.batch_size=1e9", "<= 65536"),
    ("override negative seed", "override", "", "training.train_seed=-1", "'training.train_seed' is -1"),
    ("override seed 2**32", "override", "", "training.train_seed=4294967296", "< 4.29497e+09"),
    ("override val_freq=0", "override", "", "training.val_freq=0", "'training.val_freq' is 0"),
    ("override ckpt_every_n_steps negative", "override", "", "training.ckpt_every_n_steps=-5", "must be >= 1"),
    ("override weight_decay negative", "override", "", "training.weight_decay=-0.1", "must be >= 0"),
    ("override gradient_clip_val nan", "override", "", "training.gradient_clip_val=nan", "finite"),
    ("override warmup_steps negative", "override", "", "training.warmup_steps=-1", "must be >= 0"),
    ("override device gpu", "override", "", "training.device=gpu", "did you mean 'cuda'"),
    ("override device cuda:99", "override", "", "training.device=cuda:99", "'cuda:99'"),
    ("override precision fp16", "override", "", "training.precision=fp16", "choose one of auto, bf16, fp32"),
    ("override lr_schedule linear", "override", "", "training.lr_schedule=linear", "choose cosine or constant"),
    ("override dropout 1.5", "override", "", "model.kwargs.dropout=1.5", "'dropout' is 1.5"),
    ("override cell_set_len 1", "override", "", "model.kwargs.cell_set_len=1", "cell_set_len must be >= 2"),
    ("override hidden_dim 0", "override", "", "model.kwargs.hidden_dim=0", "must be >= 1"),
    ("override hidden_dim nan", "override", "", "model.kwargs.hidden_dim=nan", "'hidden_dim' is nan"),
    ("override blur 0", "override", "", "model.kwargs.blur=0", "'blur' is 0"),
    ("override mean_mse_weight negative", "override", "", "model.kwargs.mean_mse_weight=-1", "must be >= 0"),
    ("override num_workers negative", "override", "", "data.kwargs.num_workers=-1", "must be >= 0"),
    ("override empty run name", "override", "", "name=", "name is empty"),
    ("override init_from_columns order", "override", "", "model.kwargs.init_from_columns=order", "choose name"),
    ("override toml path empty", "override", "", "data.kwargs.toml_config_path=", "toml_config_path is required"),
    ("override toml path is an h5ad", "override", "", "data.kwargs.toml_config_path=@CORPUS@/good.h5ad",
     "is not a .toml file"),
    ("override output_dir is a file", "override", "", "output_dir=@CORPUS@/good.h5ad", "nothing can be created inside it"),
    ("override onto a run of other data", "override", "", ("output_dir=@RUN@/..", "name=run"), "holds a run on other data"),
    ("override toml path is a directory", "override", "", "data.kwargs.toml_config_path=@CORPUS@", "is a directory"),
    ("override toml path misspelt", "override", "", "data.kwargs.toml_config_path=@CORPUS@/nope.toml", "nope.toml does not exist"),
    ("override features file is a directory", "override", "", "data.kwargs.perturbation_features_file=@CORPUS@",
     "data.kwargs.perturbation_features_file"),
    ("override features file is an h5ad", "override", "", "data.kwargs.perturbation_features_file=@CORPUS@/good.h5ad",
     "unrecognised checkpoint format"),
    ("override init_from is a directory", "override", "", "model.kwargs.init_from=@RUN@", "model.kwargs.init_from"),
    ("override init_from under ~ missing", "override", "", "model.kwargs.init_from=~/x.ckpt", "@HOME@/x.ckpt does not exist"),
    ("override empty pert_col", "override", "", "data.kwargs.pert_col=", "no column ''"),
    # the NaN-loss guard fires mid-training: the run folder it had written must go again
    ("NaN loss mid-training leaves nothing", "override", "", ("training.weight_decay=1e300", "training.max_steps=3",
     "training.lr_schedule=constant"), "training loss became nan"),
    # ---- the same through --config (YAML)
    ("--config lr .nan", "config", "lr_nan.yaml", None, "'training.lr' is nan"),
    ("--config lr nan as text", "config", "lr_nan_text.yaml", None, "'training.lr' is nan"),
    ("--config max_steps .nan", "config", "max_steps_nan.yaml", None, "'training.max_steps' is nan"),
    ("--config max_steps -1", "config", "max_steps_negative.yaml", None, "must be >= 1"),
    ("--config batch_size 0", "config", "batch_size_zero.yaml", None, "'training.batch_size' is 0"),
    ("--config negative seed", "config", "seed_negative.yaml", None, "'training.train_seed' is -7"),
    ("--config key written twice", "config", "lr_twice.yaml", None, "'lr' is set twice (lines 2 and 4)"),
    ("--config top level is a list", "config", "top_level_list.yaml", None, "expected a mapping"),
    ("--config lr is a word", "config", "lr_word.yaml", None, "should be a number, got fast"),
    ("--config device gpu", "config", "device_gpu.yaml", None, "did you mean 'cuda'"),
    ("--config is a directory", "train_argv", "", ["--config", "@CORPUS@"], "is a directory"),
    ("--config does not exist", "train_argv", "", ["--config", "@CORPUS@/no_such.yaml"], "does not exist"),
    # ---- TOML splits
    ("TOML with a BOM is read (then: unknown cell type)", "toml", "bom_unknown_celltype.toml", None, "no cell type 'hepg2'"),
    ("TOML ~/ path expands to the home directory", "toml", "tilde_missing.toml", None, "@HOME@/no_such_dir/good.h5ad"),
    ("TOML dotted dataset name: cell type", "toml", "dotted_dataset_unknown_celltype.toml", None,
     "dataset 'my.screen' has no cell type 'hepg2'"),
    ("TOML dotted dataset name: perturbation", "toml", "dotted_dataset_unknown_pert.toml", None, "'NOT_A_GENE'"),
    ("TOML dotted dataset name unquoted in [training]", "toml", "dotted_dataset_unquoted_training.toml", None,
     '"my.screen" = "train"'),
    ("TOML dotted dataset name unquoted in [datasets]", "toml", "dotted_dataset_unquoted_datasets.toml", None,
     "read as nested tables"),
    ("TOML held-out dataset misspelt", "toml", "zeroshot_unknown_dataset.toml", None, 'did you mean "screen.K562"'),
    ("TOML holds out every cell type", "toml", "all_celltypes_held_out.toml", None, "no perturbed cell is left for training"),
    ("TOML holds out every cell type (zeroshot+fewshot)", "toml", "all_held_out_mixed.toml", None,
     "no perturbed cell is left for training"),
    ("TOML trains on a file of controls only", "toml", "only_controls_trained.toml", None,
     "no perturbed cell is left for training"),
    ("TOML fewshot val = []", "toml", "empty_fewshot_list.toml", None, "lists no perturbations"),
    ("TOML fewshot table empty", "toml", "empty_fewshot_table.toml", None, "is empty; add val"),
    ("TOML val asked for but empty", "toml", "val_asked_but_empty.toml", None, "asks for a val split"),
    ("TOML perturbation in val and test", "toml", "pert_in_val_and_test.toml", None, "in both val and test"),
    ("TOML perturbation listed twice", "toml", "pert_listed_twice.toml", None, "twice; list each once"),
    ("TOML held-out key written twice", "toml", "duplicate_zeroshot_key.toml", None, "set twice"),
    ("TOML cell type with a trailing space", "toml", "celltype_trailing_space.toml", None, "differs only in spaces"),
    ("TOML fewshot lists the control", "toml", "fewshot_lists_control.toml", None, "control label"),
    ("TOML empty dataset path", "toml", "empty_dataset_path.toml", None, "is empty"),
    ("TOML dataset dir without h5ad", "toml", "dir_without_h5ad.toml", None, "matches no .h5ad"),
    ("TOML [training] value test", "toml", "training_value_not_train.toml", None, 'the only value is "train"'),
    ("TOML datasets not a table", "toml", "datasets_not_a_table.toml", None, "must be a table"),
    # ---- data at the edge (ftcore.data's rules)
    ("files of one run hold counts and log values", "toml", "mixed_kinds.toml", None, "holds counts values"),
    ("absurd magnitude names row and column", "toml", "huge_value.toml", None, "first at row 4 ('cell000004'), column 7"),
    ("NaN names row and column", "h5ad", "nan_values.h5ad", None, "first at row 3 ('cell000003'), column 5"),
    ("CSV named .h5ad in the TOML", "toml", "csv_named_h5ad.toml", None, "cannot be read"),
    ("control label with a trailing space is shown quoted", "toml", "trailing_space_control.toml", None,
     "'non-targeting '"),
    # ---- infer
    ("infer --output is an existing directory", "infer_args", "", ["--output", "@OUT@"], "is a directory; give a file path"),
    ("infer --output .csv", "infer_args", "", ["--output", "@OUT@/pred.csv"], "should end in .h5ad"),
    ("infer --output empty", "infer_args", "", ["--output", ""], "--output is empty"),
    ("infer --output inside a file", "infer_args", "", ["--output", "@CORPUS@/good.h5ad/pred.h5ad"],
     "nothing can be created inside it"),
    ("infer --output is the --adata file", "infer_args", "", ["--output", "@CORPUS@/good.h5ad"], "is the --adata file"),
    ("infer --batch-size 0", "infer_args", "", ["--batch-size", "0"], "--batch-size is 0"),
    ("infer --batch-size nan", "infer_args", "", ["--batch-size", "nan"], "--batch-size is nan"),
    ("infer --seed -1", "infer_args", "", ["--seed", "-1"], "--seed is -1"),
    ("infer --seed 1.5", "infer_args", "", ["--seed", "1.5"], "whole number"),
    ("infer --device gpu", "infer_args", "", ["--device", "gpu"], "did you mean 'cuda'"),
    ("infer --device tpu", "infer_args", "", ["--device", "tpu"], "unknown device 'tpu'"),
    ("infer --adata is a directory", "infer_args", "", ["--adata", "@CORPUS@"], "is a directory"),
    ("infer --adata missing", "infer_args", "", ["--adata", "@CORPUS@/god.h5ad"], "did you mean"),
    ("infer --adata empty file", "infer_args", "", ["--adata", "@CORPUS@/no_h5ad_here/README.txt"], "cannot be read as .h5ad"),
    ("infer --adata CSV named .h5ad", "infer", "csv_named.h5ad", None, "cannot be read as .h5ad"),
    ("infer raw counts into a log model", "infer", "raw_counts.h5ad", None, "trained on log values"),
    ("infer absurd magnitude", "infer", "huge_value.h5ad", None, "beyond ±1e+09, first at row 4 ('cell000004')"),
    ("infer --model-dir missing", "infer_args", "", ["--model-dir", "@OUT@/no_run"], "does not exist"),
    ("infer --model-dir is a checkpoint file", "infer_args", "", ["--model-dir", "@CORPUS@/shape_mismatch.ckpt"],
     "a checkpoint file goes to --checkpoint"),
    ("infer --model-dir is not a run", "infer_args", "", ["--model-dir", "@CORPUS@"], "is not a state-tx training run"),
    ("infer --checkpoint is a directory", "infer_args", "", ["--checkpoint", "@RUN@/checkpoints"], "is a directory"),
    ("infer --checkpoint missing name", "infer_args", "", ["--checkpoint", "step=99.ckpt"], "does not exist"),
    ("infer --pert-col missing", "infer_args", "", ["--pert-col", "target_gene"], "no column 'target_gene'"),
    ("infer --control-pert with a trailing space", "infer_args", "", ["--control-pert", "non-targeting "],
     "differs only in spaces"),
    ("infer unknown flag", "infer_args", "", ["--outptu", "x.h5ad"], "unrecognized arguments"),
    # ---- predict, evaluate, demo, the top parser
    ("predict --batch-size 0", "cli", "", ["predict", "--output-dir", "@RUN@", "--batch-size", "0"], "--batch-size is 0"),
    ("predict --split train", "cli", "", ["predict", "--output-dir", "@RUN@", "--split", "train"], "invalid choice"),
    ("predict --output-dir missing", "cli", "", ["predict", "--output-dir", "@OUT@/none"], "does not exist"),
    ("predict --seed nan", "cli", "", ["predict", "--output-dir", "@RUN@", "--seed", "nan"], "--seed is nan"),
    ("predict --device cuda:x", "cli", "", ["predict", "--output-dir", "@RUN@", "--device", "cuda:x"], "unknown device"),
    ("evaluate -ap missing", "cli", "", ["evaluate", "-ap", "@CORPUS@/pred.h5ad", "-ar", "@CORPUS@/good.h5ad",
                                         "-o", "@OUT@"], "does not exist"),
    ("evaluate -o is a file", "cli", "", ["evaluate", "-ap", "@CORPUS@/good.h5ad", "-ar", "@CORPUS@/good.h5ad",
                                          "-o", "@CORPUS@/good.h5ad"], "is a file, not a directory"),
    ("evaluate NaN in predictions", "cli", "", ["evaluate", "-ap", "@CORPUS@/nan_in_x.h5ad", "-ar",
                                                "@CORPUS@/good.h5ad", "-o", "@OUT@/ev"], "first at row 2 ('cell000002')"),
    ("evaluate different gene names", "cli", "", ["evaluate", "-ap", "@CORPUS@/renamed_genes.h5ad", "-ar",
                                                  "@CORPUS@/good.h5ad", "-o", "@OUT@/ev"], "name different genes"),
    ("evaluate CSV named .h5ad", "cli", "", ["evaluate", "-ap", "@CORPUS@/csv_named.h5ad", "-ar",
                                             "@CORPUS@/good.h5ad", "-o", "@OUT@/ev"], "cannot be read as .h5ad"),
    ("evaluate wrong pert col", "cli", "", ["evaluate", "-ap", "@CORPUS@/good.h5ad", "-ar", "@CORPUS@/good.h5ad",
                                            "-o", "@OUT@/ev", "--pert-col", "target"], "no column 'target'"),
    ("evaluate truncated file", "cli", "", ["evaluate", "-ap", "@CORPUS@/truncated.h5ad", "-ar", "@CORPUS@/good.h5ad",
                                            "-o", "@OUT@/ev"], "cannot be read as .h5ad"),
    ("demo --max-steps 0", "cli", "", ["demo", "--output-dir", "@OUT@", "--max-steps", "0"], "--max-steps is 0"),
    ("demo --max-steps nan", "cli", "", ["demo", "--output-dir", "@OUT@", "--max-steps", "nan"], "--max-steps is nan"),
    ("demo --seed -1", "cli", "", ["demo", "--output-dir", "@OUT@", "--seed", "-1"], "--seed is -1"),
    ("demo --output-dir is a file", "cli", "", ["demo", "--output-dir", "@CORPUS@/good.h5ad"], "is a file"),
    ("demo override lr=nan writes no demo data", "cli", "", ["demo", "--output-dir", "@OUT@", "training.lr=nan"],
     "'training.lr' is nan"),
    ("unknown subcommand", "cli", "", ["trian"], "invalid choice: 'trian'"),
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


def _fill(text: str, places: dict[str, Path]) -> str:
    for key, value in places.items():
        text = text.replace(f"@{key}@", str(value))
    return text


@pytest.mark.parametrize("case,kind,file,extra,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(case, kind, file, extra, phrase, tmp_path, capsys, monkeypatch,
                                        make_train_args, trained_run):
    if kind == "missing":
        pytest.skip(f"{CKPTS} is not there yet (the core's shared corpus)")
    marker = tmp_path / "evil_marker"
    monkeypatch.setenv("FTCORE_EVIL_MARKER", str(marker))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "out"
    out.mkdir()  # an existing, empty output place: a case must leave it empty
    places = {"CORPUS": CORPUS, "OUT": out, "RUN": trained_run, "HOME": home}
    good_toml = _data_toml(tmp_path, "good.h5ad")
    if kind in ("infer", "infer_ckpt", "infer_ckpt_shared", "infer_args"):
        pred = out / "pred.h5ad"
        adata = CORPUS / (file if kind == "infer" else "good.h5ad")
        argv = ["infer", "--adata", str(adata), "--output", str(pred), "--model-dir", str(trained_run)]
        if kind in ("infer_ckpt", "infer_ckpt_shared"):
            argv += ["--checkpoint", str((CORPUS if kind == "infer_ckpt" else CKPTS) / file)]
        if kind == "infer_args":  # a later flag wins in argparse: the case's value replaces the good one
            argv += [_fill(a, places) for a in extra]
    elif kind == "cli":
        argv = [_fill(a, places) for a in extra]
    elif kind == "toml":
        argv = make_train_args(_toml(tmp_path, (CORPUS / file).read_text(encoding="utf-8")), out, steps=1)
    elif kind == "config":  # the file's training.* values must not be overridden by the command line's
        argv = [a for a in make_train_args(good_toml, out, steps=1) if not a.startswith("training.")]
        argv += ["--config", str(CORPUS / file)]
    elif kind == "train_argv":
        argv = make_train_args(good_toml, out, steps=1) + [_fill(a, places) for a in extra]
    else:
        extra_args = {
            "h5ad": [],
            "override": [_fill(e, places) for e in ((extra,) if isinstance(extra, str) else tuple(extra or ()))],
            "features": [f"data.kwargs.perturbation_features_file={CORPUS / file}"],
            "init_from": [f"model.kwargs.init_from={CKPTS / file}"],
        }[kind]
        data = file if kind == "h5ad" else "good.h5ad"
        argv = make_train_args(_data_toml(tmp_path, data), out, steps=1, extra=extra_args)
    # one error line with the phrase, exit 2, nothing new in the output place, the corpus, the run, the home dir
    check_bad_input(main, argv, capsys, _fill(phrase, places), watch=(out, CORPUS, trained_run, home))
    assert not marker.exists()
