"""Property-based: whatever a tired user types or feeds, each `cellfm-ft` command either succeeds (exit 0) or
says ONE `error:` line (exit 2) and leaves no file behind; never a traceback (repo_helpers.check_clean_outcome).

Random numeric options (repo_helpers.numeric_texts), random small AnnData mutations, random YAML/TOML
config files and randomly broken real-layout checkpoints go to train, predict, evaluate, convert and demo.
Runs that pass validation train for 1-2 steps of the tiny model. Examples per test: env FTCORE_FUZZ_EXAMPLES
(default 6; e.g. FTCORE_FUZZ_EXAMPLES=300 for a long hunt).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from cellfm_ft.cli import main

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))
from repo_helpers import check_clean_outcome, fuzz_settings, numeric_texts  # noqa: E402

FUZZ = fuzz_settings(6)
EXAMPLES = FUZZ.max_examples
FIXTURES = Path(__file__).parent / "fixtures"

TRAIN_NUMBERS = ("--lr", "--epochs", "--max-steps", "--batch-size", "--seed", "--test-size", "--val-fraction",
                 "--mask-ratio", "--recon-weight", "--ckpt-every-steps")
CONFIG_KEYS = ("lr", "epochs", "max_steps", "batch_size", "seed", "test_size", "val_fraction", "mask_ratio",
               "recon_weight", "weight_decay", "warmup_steps", "nonz_len", "ckpt_every_steps")
DEVICES = st.sampled_from(["auto", "cpu", "gpu", "GPU", "cuda:x", "", " cpu", "cpu:0", "cuda:99", "mps:1", "tpu"])


def _fresh() -> Path:
    return Path(tempfile.mkdtemp(prefix="cellfm_fuzz_"))


def _options(names, draw_values):
    """A few of `names` with random numeric text (each at most once)."""
    return st.lists(st.tuples(st.sampled_from(names), draw_values), max_size=3, unique_by=lambda t: t[0])


def _budgeted(options: list[tuple[str, str]]) -> list[str]:
    """Flags in `--flag=value` form (a value may start with '-'), then a step budget that keeps a run tiny:
    --epochs 1 where only --max-steps is fuzzed (a huge value trains one epoch), else --max-steps 2."""
    argv = [f"{flag}={value}" for flag, value in options]
    fuzzed = {flag for flag, _ in options}
    # a later flag wins, but every occurrence is still parsed and checked
    return argv + (["--epochs", "1"] if "--max-steps" in fuzzed and "--epochs" not in fuzzed else ["--max-steps", "2"])


# ------------------------------------------------------------------------------ AnnData mutations
MUTATIONS = ("none", "nan", "inf", "negative", "huge", "zero_row", "zero_all", "dup_gene", "dup_cell", "label_nan",
             "one_label", "log", "unlogged", "no_label_column", "one_donor", "label_space", "int_genes", "dense")


def _mutated(adata, mutation: str, r: int, c: int):
    a = adata.copy()
    X = a.X.toarray().astype(np.float32)
    r, c = r % a.n_obs, c % a.n_vars
    if mutation == "nan":
        X[r, c] = np.nan
    elif mutation == "inf":
        X[r, c] = -np.inf
    elif mutation == "negative":
        X[r, c] = -1.5
    elif mutation == "huge":
        X[r, c] = 3e38
    elif mutation == "zero_row":
        X[r] = 0
    elif mutation == "zero_all":
        X[:] = 0
    elif mutation == "log":
        X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    elif mutation == "unlogged":
        X = X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4
    a.X = X if mutation == "dense" else sparse.csr_matrix(X)
    if mutation == "dup_gene":
        names = a.var_names.tolist()
        names[c] = names[(c + 1) % a.n_vars]
        a.var_names = names
    elif mutation == "dup_cell":
        names = a.obs_names.tolist()
        names[r] = names[(r + 1) % a.n_obs]
        a.obs_names = names
    elif mutation == "label_nan":
        labels = a.obs["cell_type"].astype(object).to_numpy()
        labels[r] = None
        a.obs["cell_type"] = labels
    elif mutation == "one_label":
        a.obs["cell_type"] = "T"
    elif mutation == "no_label_column":
        del a.obs["cell_type"]
    elif mutation == "one_donor":
        a.obs["donor"] = "D1"
    elif mutation == "label_space":
        labels = a.obs["cell_type"].astype(str).to_numpy()
        labels[r] = labels[r] + " "
        a.obs["cell_type"] = labels
    elif mutation == "int_genes":
        a.var_names = [str(i) for i in range(a.n_vars)]
    return a


@pytest.fixture(scope="module")
def small(cellfm_inputs, tmp_path_factory) -> dict:
    """A 48-cell slice of the shared cells (3 donors) and the tiny checkpoint: quick to train on."""
    adata = cellfm_inputs["adata"]
    keep = np.flatnonzero(adata.obs["donor"].isin(["D1", "D2", "D3"]).to_numpy())[:48]
    a = adata[keep].copy()
    a.obs["donor"] = a.obs["donor"].astype(str)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    return {"adata": a, "ckpt": cellfm_inputs["ckpt"]}


def _clean(argv, capsys, *watch: Path) -> int:
    code, _ = check_clean_outcome(main, [str(a) for a in argv], capsys, watch=tuple(watch))
    return code


# --------------------------------------------------------------------------------------- train
@FUZZ
@given(options=_options(TRAIN_NUMBERS, numeric_texts()), device=st.one_of(st.none(), DEVICES),
       donors=st.booleans())
def test_train_numeric_options(options, device, donors, small, tmp_path, capsys):
    work = _fresh()
    try:
        data = work / "in" / "cells.h5ad"
        data.parent.mkdir()
        small["adata"].write_h5ad(data)
        argv = ["train", "--data", data, "--label-key", "cell_type", "--checkpoint", small["ckpt"], "--config", "tiny",
                "--output", work / "out", "--no-progress", "--batch-size", "16", *_budgeted(options)]
        argv += ["--donor-key", "donor"] if donors else []
        argv += [f"--device={device}"] if device is not None else []
        _clean(argv, capsys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(mutation=st.sampled_from(MUTATIONS), r=st.integers(0, 10**6), c=st.integers(0, 10**6),
       donors=st.booleans(), test_donors=st.sampled_from([None, "D1", "D2,D3", "D9", "D1,D2,D3", ""]),
       val_donors=st.sampled_from([None, "D2", "D1", "D4", "D2,D3"]))
def test_train_data_mutations(mutation, r, c, donors, test_donors, val_donors, small, capsys):
    work = _fresh()
    try:
        data = work / "in" / "cells.h5ad"
        data.parent.mkdir()
        _mutated(small["adata"], mutation, r, c).write_h5ad(data)
        argv = ["train", "--data", data, "--label-key", "cell_type", "--checkpoint", small["ckpt"], "--config", "tiny",
                "--output", work / "out", "--no-progress", "--max-steps", "1", "--batch-size", "16"]
        argv += ["--donor-key", "donor"] if donors else []
        argv += ["--test-donors", test_donors] if test_donors is not None else []
        argv += ["--val-donors", val_donors] if val_donors is not None else []
        _clean(argv, capsys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _config_text(fmt: str, pairs: list[tuple[str, str]], bom: bool, quote: bool) -> str:
    lines = []
    for key, value in pairs:
        shown = f'"{value}"' if quote else value
        lines.append(f"{key} = {shown}" if fmt == "toml" else f"{key}: {shown}")
    return ("\ufeff" if bom else "") + "\n".join(lines) + "\n"


@FUZZ
@given(fmt=st.sampled_from(["yaml", "toml"]),
       pairs=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), numeric_texts()), min_size=1, max_size=3),
       bom=st.booleans(), quote=st.booleans())
def test_train_config_files(fmt, pairs, bom, quote, small, capsys):
    work = _fresh()
    try:
        data = work / "in" / "cells.h5ad"
        data.parent.mkdir()
        small["adata"].write_h5ad(data)
        config = work / "in" / f"run.{fmt}"
        config.write_text(_config_text(fmt, pairs, bom, quote), encoding="utf-8")
        # the flags keep the run tiny whatever the file says (flags win over the file)
        argv = ["train", "--config-file", config, "--data", data, "--label-key", "cell_type", "--checkpoint",
                small["ckpt"], "--config", "tiny", "--output", work / "out", "--no-progress", "--max-steps", "2",
                "--batch-size", "16"]
        _clean(argv, capsys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------ predict / evaluate
@FUZZ
@given(command=st.sampled_from(["predict", "evaluate"]), batch=numeric_texts(), device=DEVICES,
       mutation=st.sampled_from(MUTATIONS), r=st.integers(0, 10**6), c=st.integers(0, 10**6),
       output=st.sampled_from(["new", "existing_dir", "inside_file", "no_suffix", "the_data"]))
def test_predict_and_evaluate(command, batch, device, mutation, r, c, output, trained, small, capsys):
    work = _fresh()
    try:
        data = work / "in" / "cells.h5ad"
        data.parent.mkdir()
        _mutated(small["adata"], mutation, r, c).write_h5ad(data)
        (work / "existing").mkdir()
        target = {"new": work / "out" / ("p.h5ad" if command == "predict" else "eval"),
                  "existing_dir": work / "existing", "inside_file": data / "p.h5ad",
                  "no_suffix": work / "out" / "predictions", "the_data": data}[output]
        argv = [command, "--model", trained / "best_model.pth", "--data", data, "--output", target,
                f"--batch-size={batch}", f"--device={device}"]
        argv += ["--label-key", "cell_type"] if command == "evaluate" else []
        _clean(argv, capsys, work, trained)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------ convert
@FUZZ
@given(entry=st.integers(0, 10**6), damage=st.sampled_from(["none", "nan", "inf", "int", "float64", "cut", "short"]),
       output=st.sampled_from(["new", "existing_dir", "inside_file", "wrong_suffix", "empty"]),
       report=st.sampled_from([None, "new", "existing_dir", "txt"]))
def test_convert(entry, damage, output, report, capsys):
    from ftcore.checkpoint.mindspore import read_mindspore, write_mindspore

    work = _fresh()
    try:
        src = work / "in" / "cellfm.ckpt"
        src.parent.mkdir()
        real = {k: np.array(t.array) for k, t in read_mindspore(FIXTURES / "cellfm_annotation.ckpt").items()}
        name = sorted(real)[entry % len(real)]
        arr = real[name]
        if damage in ("nan", "inf") and arr.dtype.kind == "f":
            arr = arr.copy()
            arr.reshape(-1)[entry % arr.size] = np.nan if damage == "nan" else np.inf
        elif damage == "int":
            arr = arr.astype(np.int32)
        elif damage in ("float64", "short"):
            arr = arr.astype(np.float64)
        real[name] = arr
        write_mindspore(src, real)
        if damage == "cut":
            whole = src.read_bytes()
            src.write_bytes(whole[: max(1, (entry % 100) * len(whole) // 100)])
        if damage == "short":  # a float64 record relabelled float32: twice the bytes its shape needs
            whole = src.read_bytes().replace(b"Float64", b"Float32", 1)
            src.write_bytes(whole)
        (work / "existing").mkdir()
        target = {"new": work / "out" / "x.safetensors", "existing_dir": work / "existing",
                  "inside_file": src / "x.safetensors", "wrong_suffix": work / "out" / "x.pt", "empty": ""}[output]
        argv = ["convert", src, "--output", target, "--config", "tiny"]
        if report is not None:
            argv += ["--report", {"new": work / "out" / "r.json", "existing_dir": work / "existing",
                                  "txt": work / "out" / "r.txt"}[report]]
        _clean(argv, capsys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------- demo
@settings(FUZZ, max_examples=max(2, EXAMPLES // 3))
@given(options=_options(("--lr", "--epochs", "--batch-size", "--seed"), numeric_texts()),
       device=st.one_of(st.none(), DEVICES), output_is_file=st.booleans())
def test_demo(options, device, output_is_file, capsys):
    work = _fresh()
    try:
        out = work / "demo"
        if output_is_file:
            out.write_text("not a directory\n")
        argv = ["demo", "--dataset", "synthetic", "--output", out, "--no-progress", *_budgeted(options)]
        argv += [f"--device={device}"] if device is not None else []
        _clean(argv, capsys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
