"""Property-based: random numbers for every numeric option and random small AnnData / YAML mutations,
fed to each var-st command. The contract (repo_helpers.check_clean_outcome): exit 0, or exit 2 with
ONE `error:` line and nothing new on disk; never a traceback.

    FTCORE_FUZZ_EXAMPLES=300 pytest packages/var-st/tests/test_var_st_fuzz.py    # a long run

Training runs are capped at 2 optimizer steps on 27 spots, so a successful example takes seconds.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from var_st.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_clean_outcome, fuzz_settings, numeric_texts  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "var-st"
FUZZ = fuzz_settings(6)

TRAIN_NUMBERS = ["--lr", "--epochs", "--max_steps", "--batch_size", "--seed", "--patience", "--num_genes", "--gpus"]
SAMPLING_NUMBERS = ["--batch_size", "--temperature", "--top_k", "--top_p", "--num_samples", "--seed", "--gpus"]
DEMO_DATA_NUMBERS = ["--slides", "--grid", "--genes", "--histology_dim", "--seed"]


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A fresh working directory per test; examples get their own output folders inside it."""
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    monkeypatch.setenv("VAR_ST_NO_PROGRESS", "1")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    return tmp_path


def _run(main_argv, place, capsys, extra_watch=()):
    out = Path(tempfile.mkdtemp(dir=place, prefix="out_")) / "run"
    argv = [a.replace("{out}", str(out)).replace("{corpus}", str(CORPUS)) for a in main_argv]
    watch = (out.parent, place / "data", CORPUS, *extra_watch)
    code, err = check_clean_outcome(main, argv, capsys, watch)
    shutil.rmtree(out.parent, ignore_errors=True)  # a successful example's files
    return code, err


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def _flag_value(flag: str, value: str) -> list[str]:
    # argparse reads "-1e-3" after a flag as another flag: "--lr=-1e-3" is how such a value is given
    return [f"{flag}={value}"] if value.startswith("-") else [flag, value]


def _numbers(base: list[str], flags: list[str], draws: list[tuple[str, str]]) -> list[str]:
    argv = list(base)
    for flag, value in draws:
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
        argv += _flag_value(flag, value)
    return argv


def _bounded(draws: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A drawn --max_steps comes with --epochs 1 (one epoch of 18 spots is a few steps), never a drawn --epochs:
    both large would be a long, valid run; a drawn --epochs keeps the base --max_steps 2."""
    if any(f == "--max_steps" for f, _ in draws):
        return [(f, v) for f, v in draws if f != "--epochs"]
    return draws


def _draws(flags):
    return st.lists(st.tuples(st.sampled_from(flags), numeric_texts()), min_size=1, max_size=3,
                    unique_by=lambda d: d[0])


TRAIN = ["train", "--dataset", "{corpus}/good.h5ad", "--config", "{corpus}/tiny.yaml", "--num_genes", "12",
         "--epochs", "1", "--max_steps", "2", "--log_dir", "{out}", "--gpus", "0"]
STAGE2 = TRAIN + ["--training_stage", "2", "--stage1_ckpt", "{corpus}/tiny_stage1.ckpt"]
PREDICT = ["predict", "--checkpoint", "{corpus}/tiny_complete.ckpt", "--dataset", "{corpus}/good.h5ad",
           "--output", "{out}/pred.h5ad", "--gpus", "0"]
EVALUATE = ["evaluate", "--checkpoint", "{corpus}/tiny_complete.ckpt", "--dataset", "{corpus}/good.h5ad",
            "--output", "{out}/metrics.json", "--gpus", "0", "--split", "all"]


@FUZZ
@given(draws=_draws(TRAIN_NUMBERS))
def test_train_stage1_numbers(draws, place, capsys):
    _run(_numbers(TRAIN, TRAIN_NUMBERS, _bounded(draws)), place, capsys)


@FUZZ
@given(draws=_draws(TRAIN_NUMBERS))
def test_train_stage2_numbers(draws, place, capsys):
    _run(_numbers(STAGE2, TRAIN_NUMBERS, _bounded(draws)), place, capsys)


@FUZZ
@given(draws=_draws(SAMPLING_NUMBERS), decoding=st.sampled_from(["expected", "greedy", "sample"]))
def test_predict_numbers(draws, decoding, place, capsys):
    _run(_numbers(PREDICT, SAMPLING_NUMBERS, draws) + ["--decoding", decoding], place, capsys)


@FUZZ
@given(draws=_draws(SAMPLING_NUMBERS))
def test_evaluate_numbers(draws, place, capsys):
    _run(_numbers(EVALUATE, SAMPLING_NUMBERS, draws), place, capsys)


@FUZZ
@given(draws=_draws(DEMO_DATA_NUMBERS))
def test_make_demo_data_numbers(draws, place, capsys):
    base = ["make-demo-data", "--output", "{out}/demo.h5ad", "--slides", "2", "--grid", "3", "--genes", "10",
            "--histology_dim", "4"]
    _run(_numbers(base, DEMO_DATA_NUMBERS, draws), place, capsys)


@FUZZ
@given(draws=_draws(["--seed", "--gpus"]))
def test_demo_numbers(draws, place, capsys, monkeypatch):
    import var_st.cli as cli

    for name in ("train", "predict", "evaluate"):  # the demo's validation layer only: no four-stage run
        monkeypatch.setitem(cli.COMMANDS, name, lambda args: None)
    _run(_numbers(["demo", "--log_dir", "{out}"], ["--seed", "--gpus"], draws), place, capsys)


@FUZZ
@given(name=st.sampled_from(sorted(p.name for p in CORPUS.iterdir() if p.is_file())))
def test_info_any_corpus_file(name, place, capsys):
    _run(["info", f"{{corpus}}/{name}"], place, capsys)


# -- data mutations -------------------------------------------------------------------------------
BAD_NUMBERS = [np.nan, np.inf, -np.inf, 1e38, -1.0, 0.5, 1e9 + 1, 3.0, 0.0]


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["x_value", "hist_value", "coord_value", "coord_text", "drop_obsm", "slides",
                                 "names", "x_scale", "subset"]))
    return kind, draw(st.integers(0, 10**6)), draw(st.sampled_from(BAD_NUMBERS))


def _mutated(kind: str, seed: int, value: float, path: Path) -> None:
    import anndata
    import pandas as pd

    ad = anndata.read_h5ad(CORPUS / "good.h5ad")
    rng = np.random.default_rng(seed)
    r, c = int(rng.integers(ad.n_obs)), int(rng.integers(ad.n_vars))
    if kind == "x_value":
        x = np.asarray(ad.X, dtype=np.float32).copy()
        x[r, c] = value
        ad.X = x
    elif kind == "hist_value":
        ad.obsm["histology"] = ad.obsm["histology"].astype(np.float64)
        ad.obsm["histology"][r, int(rng.integers(ad.obsm["histology"].shape[1]))] = value
    elif kind == "coord_value":
        ad.obsm["spatial"] = ad.obsm["spatial"].astype(np.float64)
        ad.obsm["spatial"][r, int(rng.integers(2))] = value
    elif kind == "coord_text":
        xy = ad.obsm["spatial"].astype(str).astype(object)
        xy[r, int(rng.integers(2))] = str(rng.choice(["12px", "", " 3.5 ", "1,5", "nan", "x"]))
        ad.obsm["spatial"] = xy
    elif kind == "drop_obsm":
        del ad.obsm[str(rng.choice(["spatial", "histology"]))]
    elif kind == "slides":
        choice = int(rng.integers(3))
        if choice == 0:
            del ad.obs["slide"]
        elif choice == 1:
            ad.obs["slide"] = "only"
        else:
            ad.obs["slide"] = pd.Categorical([str(rng.integers(2)) for _ in range(ad.n_obs)])
    elif kind == "names":
        if rng.integers(2):
            ad.var_names = list(ad.var_names[:-1]) + [ad.var_names[0]]
        else:
            ad.obs_names = list(ad.obs_names[:-1]) + [ad.obs_names[0]]
    elif kind == "x_scale":
        ad.X = (np.asarray(ad.X, dtype=np.float32) * float(rng.choice([1e-3, 0.37, 100.5, -1.0]))).astype(np.float32)
    elif kind == "subset":
        keep = rng.random(ad.n_obs) < float(rng.choice([0.0, 0.1, 0.5]))
        ad = ad[keep].copy()
    ad.write_h5ad(path)


@FUZZ
@given(mutation=mutations(), command=st.sampled_from(["train", "predict", "evaluate"]))
def test_mutated_anndata(mutation, command, place, capsys):
    import warnings

    path = place / "data" / f"m{abs(hash(mutation)) % 10**8}.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's duplicate-name warnings while writing
        _mutated(*mutation, path)
    base = {"train": TRAIN, "predict": PREDICT, "evaluate": EVALUATE}[command]
    try:
        _run(_with(base, "--dataset", str(path)), place, capsys)
    finally:
        path.unlink(missing_ok=True)


YAML_VALUES = st.one_of(numeric_texts(), st.sampled_from(["[1, 2]", "{a: 1}", "true", "~", "'16'", "[1, 4, 2]"]))
YAML_KEYS = ["vqvae.vocab_size", "vqvae.embed_dim", "vqvae.beta", "vqvae.hidden_dim", "vqvae.coarse_scales",
             "vqvae.phi_ratio", "vqvae.reservoir_size", "var.embed_dim", "var.num_heads", "var.num_layers",
             "var.dropout", "var.attention_dropout", "var.max_sequence_length", "var.histology_dim", "var.coord_dim"]


@FUZZ
@given(key=st.sampled_from(YAML_KEYS), value=YAML_VALUES, how=st.sampled_from(["yaml", "toml", "set"]))
def test_config_values(key, value, how, place, capsys):
    section, name = key.split(".")
    tiny = (CORPUS / "tiny.yaml").read_text()
    if how == "set":
        argv = TRAIN + ["--set", f"{key}={value}"]
    else:
        import yaml

        data = yaml.safe_load(tiny)
        if how == "yaml":  # the tiny config with this key's value replaced by the drawn text
            path = place / "data" / "c.yaml"
            merged = {**data, section: {**data[section]}}
            merged[section].pop(name, None)
            body = yaml.safe_dump(merged).replace(f"{section}:\n", f"{section}:\n  {name}: {value}\n", 1)
            path.write_text(body)
        else:
            path = place / "data" / "c.toml"
            lines = []
            for sec, items in data.items():
                lines.append(f"[{sec}]")
                for k, v in items.items():
                    if not (sec == section and k == name):
                        lines.append(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}")
                if sec == section:
                    lines.append(f"{name} = {value}")
            path.write_text("\n".join(lines) + "\n")
        argv = _with(TRAIN, "--config", str(path))
    _run(argv, place, capsys)
