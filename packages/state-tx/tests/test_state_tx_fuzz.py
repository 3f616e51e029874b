"""Property-based: whatever a tired user types or feeds, every state-tx command either succeeds (exit 0) or
prints ONE `error:` line and exits 2, never a traceback, never a leftover file (repo_helpers.check_clean_outcome).

Random numeric options (repo_helpers.numeric_texts) go to train / infer / predict / demo; random small
mutations of a TOML, of an AnnData and of a YAML run config go to train, infer and evaluate. A successful
example is kept cheap: 1 training step of the tiny model (values that would make a success slow, such as
max_steps=10**9, are left out with `assume`). FTCORE_FUZZ_EXAMPLES sets the examples per test (default 4).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from state_tx.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_clean_outcome, fuzz_settings, numeric_texts  # noqa: E402

FUZZ = fuzz_settings(4)

# keys whose valid values are all cheap, and those where only small valid values are (the rest `assume`d away)
TRAIN_KEYS = {
    "training.lr": None, "training.weight_decay": None, "training.gradient_clip_val": None,
    "training.train_seed": None, "training.warmup_steps": None, "training.ckpt_every_n_steps": None,
    "training.val_freq": None, "training.max_steps": 2, "training.batch_size": 8, "model.kwargs.dropout": None,
    "model.kwargs.blur": None, "model.kwargs.mean_mse_weight": None, "model.kwargs.rms_norm_eps": None, "model.kwargs.cell_set_len": 16,
    "model.kwargs.hidden_dim": 64, "model.kwargs.n_heads": 4, "model.kwargs.head_dim": 32,
    "data.kwargs.num_workers": 0,
}


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _cheap(text: str, limit: float | None) -> bool:
    value = _number(text)
    return limit is None or value is None or value <= limit


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="state_tx_fuzz_"))


def _toml(directory: Path, h5ad: Path, extra: str = "") -> Path:
    path = directory / "train.toml"
    path.write_text(f'[datasets]\nscreen = "{h5ad}"\n[training]\nscreen = "train"\n{extra}', encoding="utf-8")
    return path


@FUZZ
@given(key=st.sampled_from(sorted(TRAIN_KEYS)), value=numeric_texts())
def test_train_numeric_overrides(key, value, tiny_toml, make_train_args, capsys):
    assume(_cheap(value, TRAIN_KEYS[key]))
    work = _scratch()
    try:
        argv = make_train_args(tiny_toml, work / "out", steps=1, extra=[f"{key}={value}"])
        check_clean_outcome(main, argv, capsys, watch=(work, tiny_toml.parent))
    finally:
        shutil.rmtree(work, ignore_errors=True)


YAML_KEYS = ("lr", "max_steps", "batch_size", "train_seed", "val_freq", "weight_decay")


@FUZZ
@given(key=st.sampled_from(YAML_KEYS), value=numeric_texts(), twice=st.booleans())
def test_train_yaml_config(key, value, twice, tiny_toml, make_train_args, capsys):
    assume(_cheap(value, {"max_steps": 2, "batch_size": 8}.get(key)))
    work = _scratch()
    try:
        config = work / "run.yaml"
        lines = ["training:"] + ([] if key == "max_steps" else ["  max_steps: 1"]) + [f"  {key}: {value}"]
        if twice:
            lines.append(f"  {key}: 1")
        config.write_text("\n".join(lines) + "\n")
        argv = [a for a in make_train_args(tiny_toml, work / "out", steps=1) if not a.startswith("training.max_steps")]
        check_clean_outcome(main, argv + ["--config", str(config)], capsys, watch=(work, tiny_toml.parent))
    finally:
        shutil.rmtree(work, ignore_errors=True)


CELL_TYPES = st.sampled_from(["K562", "HepG2", "k562", "K562 ", "", "Jurkat", "HepG2.x"])
SPLIT_VALUES = st.sampled_from(["val", "test", "train", "holdout", ""])


@st.composite
def toml_extras(draw, perts):
    """A random [zeroshot]/[fewshot] plan over the tiny screen's cell types and perturbations (and junk)."""
    parts = []
    zeroshot = draw(st.lists(st.tuples(CELL_TYPES, SPLIT_VALUES), max_size=3))
    if zeroshot:
        parts.append("[zeroshot]\n" + "".join(f'"screen.{c}" = "{s}"\n' for c, s in zeroshot))
    names = st.sampled_from(list(perts) + ["non-targeting", "NOPE", perts[0] + " "])
    for celltype in draw(st.lists(CELL_TYPES, max_size=2, unique=True)):
        body = ""
        for split in draw(st.lists(st.sampled_from(["val", "test", "train"]), max_size=2, unique=True)):
            listed = draw(st.lists(names, max_size=4))
            body += f"{split} = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in listed)}]\n"
        parts.append(f'[fewshot."screen.{celltype}"]\n{body}')
    text = "".join(parts)
    if draw(st.booleans()):
        text = text.replace('"screen.', "screen.", 1)  # an unquoted dotted key
    return text


@FUZZ
@given(data=st.data(), bom=st.booleans())
def test_train_toml_mutations(data, bom, tiny_h5ad, tiny_perts, make_train_args, capsys):
    work = _scratch()
    try:
        toml = _toml(work, tiny_h5ad, data.draw(toml_extras(tiny_perts)))
        if bom:
            toml.write_text("\ufeff" + toml.read_text(encoding="utf-8"), encoding="utf-8")
        argv = make_train_args(toml, work / "out", steps=1)
        check_clean_outcome(main, argv, capsys, watch=(work, tiny_h5ad.parent))
    finally:
        shutil.rmtree(work, ignore_errors=True)


VALUES = st.sampled_from([np.nan, np.inf, -np.inf, 1e12, -1.0, 3.0, 1e-3, 0.0, 1e9 + 1])


@st.composite
def adata_mutations(draw, adata):
    """A small change a user's file might have: an odd value, a renamed column, labels with spaces, fewer rows,
    raw counts, an empty matrix."""
    a = adata.copy()
    kind = draw(st.sampled_from(["value", "rename", "space", "rows", "counts", "drop_controls", "dup_names", "none"]))
    if kind == "value":
        r, c = draw(st.integers(0, a.n_obs - 1)), draw(st.integers(0, a.obsm["X_hvg"].shape[1] - 1))
        a.obsm["X_hvg"][r, c] = draw(VALUES)
    elif kind == "rename":
        col = draw(st.sampled_from(["gene", "cell_type", "gem_group"]))
        a.obs = a.obs.rename(columns={col: col + "_x"})
    elif kind == "space":
        a.obs["gene"] = a.obs["gene"].astype(str).str.replace("non-targeting", draw(
            st.sampled_from(["non-targeting ", " non-targeting", "Non-Targeting", "non targeting"])), regex=False)
    elif kind == "rows":
        a = a[: draw(st.integers(0, a.n_obs))].copy()
    elif kind == "counts":
        a.obsm["X_hvg"] = np.round(np.expm1(np.asarray(a.obsm["X_hvg"])) * 10).astype(np.float32)
    elif kind == "drop_controls":
        a = a[a.obs["gene"].astype(str) != "non-targeting"].copy()
    elif kind == "dup_names":
        a.obs_names = ["cell"] * a.n_obs
    return a


@FUZZ
@given(data=st.data())
def test_train_and_infer_on_mutated_adata(data, tiny_adata, trained_run, make_train_args, capsys):
    import warnings

    work = _scratch()
    try:
        adata = data.draw(adata_mutations(tiny_adata))
        h5ad = work / "data" / "screen.h5ad"
        h5ad.parent.mkdir()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata.write_h5ad(h5ad)
        argv = make_train_args(_toml(work, h5ad), work / "out", steps=1)
        check_clean_outcome(main, argv, capsys, watch=(work,))
        pred = work / "pred" / "pred.h5ad"
        argv = ["infer", "--adata", str(h5ad), "--output", str(pred), "--model-dir", str(trained_run)]
        check_clean_outcome(main, argv, capsys, watch=(work, trained_run))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(flag=st.sampled_from(["--seed", "--batch-size"]), value=numeric_texts())
def test_infer_numeric_options(flag, value, tiny_h5ad, trained_run, capsys):
    work = _scratch()
    try:
        argv = ["infer", "--adata", str(tiny_h5ad), "--output", str(work / "p.h5ad"), "--model-dir",
                str(trained_run), flag, value]
        check_clean_outcome(main, argv, capsys, watch=(work, trained_run, tiny_h5ad.parent))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(flag=st.sampled_from(["--seed", "--batch-size"]), value=numeric_texts())
def test_predict_numeric_options(flag, value, trained_run, capsys):
    before = set(trained_run.iterdir())
    try:
        check_clean_outcome(main, ["predict", "--output-dir", str(trained_run), flag, value], capsys,
                            watch=(trained_run,))
    finally:
        for path in set(trained_run.iterdir()) - before:  # a success's eval_final: not for the other tests
            shutil.rmtree(path, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_evaluate_on_mutated_predictions(data, tiny_adata, capsys):
    import warnings

    work = _scratch()
    try:
        real = tiny_adata[:, tiny_adata.var.highly_variable].copy()
        pred = data.draw(adata_mutations(real))
        pred.X = pred.obsm["X_hvg"] if "X_hvg" in pred.obsm else pred.X
        if data.draw(st.booleans()):
            pred.var_names = [f"G{i}" for i in range(pred.n_vars)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred.write_h5ad(work / "pred.h5ad")
            real.write_h5ad(work / "real.h5ad")
        argv = ["evaluate", "-ap", str(work / "pred.h5ad"), "-ar", str(work / "real.h5ad"), "-o", str(work / "ev")]
        check_clean_outcome(main, argv, capsys, watch=(work,))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(flag=st.sampled_from(["--seed", "--max-steps"]), value=numeric_texts())
def test_demo_numeric_options(flag, value, capsys, monkeypatch):
    """The demo's options are checked at parse time; a valid set is not run here (it is the slow end-to-end
    test in test_state_tx_cli), only its overrides validated."""
    import state_tx.cli as cli
    from state_tx.config import load_run_config

    monkeypatch.setattr(cli, "run_demo", lambda output_dir, steps, seed, extra, design="demo", **_: load_run_config(
        [f"training.max_steps={steps}", f"training.train_seed={seed}"] + list(extra)))
    work = _scratch()
    try:
        check_clean_outcome(main, ["demo", "--output-dir", str(work / "demo"), flag, value], capsys, watch=(work,))
    finally:
        shutil.rmtree(work, ignore_errors=True)
