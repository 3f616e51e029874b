"""Property-based: random numeric options, config files and small AnnData mutations fed to every command
(run, pretrain, compare, predict, make-demo-data). The contract (repo_helpers.check_clean_outcome): exit 0,
or exit 2 with ONE `error:` line and nothing new under the output and data directories; never a traceback.

The example count per test comes from FTCORE_FUZZ_EXAMPLES (default 4: the file runs in about a minute on
one core); `FTCORE_FUZZ_EXAMPLES=300` is the deep run. Training is the corpus' tiny sizes, one or two epochs.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from spatial_transfer.cli import main

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_clean_outcome, fuzz_settings, numeric_texts  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "spatial-transfer"
TINY = json.loads((CORPUS / "expected.json").read_text())["tiny_sets"]
SPATIAL_CKPT = CORPUS / "checkpoints" / "spatial_good.pt"
FILES = ("spatial.h5ad", "spatial_cells.h5ad", "bulk.h5ad", "bulk_cells.h5ad")

FUZZ = fuzz_settings(4)

# flags and config keys whose value is a number; those that set the amount of work are capped so a valid
# example stays a tiny run (a value the option refuses is passed as typed)
FLAGS = ("--epochs", "--bulk-epochs", "--batch-size", "--lr", "--seed", "--folds")
KEYS = ("spatial.epochs", "bulk.epochs", "spatial.lr", "bulk.lr", "spatial.batch_size", "bulk.batch_size", "seed",
        "folds", "spatial.weight_decay", "spatial.patience", "spatial.min_delta", "spatial.warmup_steps",
        "spatial.ckpt_every_steps", "model.dropout", "graph.k", "graph.radius", "graph.window", "graph.tile_size")
WORK = ("epochs", "window", "warmup_steps")


def _capped(name: str, text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        return text
    if any(w in name for w in WORK) and np.isfinite(value) and value > 2:
        return "2"
    return text


@contextmanager
def _dirs():
    root = Path(tempfile.mkdtemp(prefix="st_fuzz_"))
    try:
        data = root / "data"
        shutil.copytree(CORPUS / "good", data)
        yield data, root / "out"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _train_argv(command: str, data: Path, out: Path, *extra: str, skip: frozenset = frozenset()) -> list[str]:
    strategy = {"run": ["--strategy", "scratch"], "compare": ["--strategies", "scratch"]}.get(command, [])
    sets = [x for s in TINY if s.split("=")[0] not in skip for x in ("--set", s)]
    return [command, *sets, "--data", str(data), *strategy, "--output", str(out), "--no-progress", "--device", "cpu",
            *extra]


@pytest.mark.parametrize("command", ["run", "pretrain", "compare"])
@FUZZ
@given(options=st.lists(st.tuples(st.sampled_from(FLAGS + KEYS), numeric_texts()), min_size=1, max_size=3))
def test_numeric_options_of_training_commands(command, options, capsys):
    with _dirs() as (data, out):
        extra = []
        for name, text in options:
            text = _capped(name, text)
            extra += [name, text] if name.startswith("--") else ["--set", f"{name}={text}"]
        check_clean_outcome(main, _train_argv(command, data, out, *extra), capsys, watch=(out, data))


DEVICES = st.sampled_from(["auto", "cpu", "gpu", "cuda:x", "CPU", " cpu", "", "cuda:-1", "mps:0", "tpu", "0"])


@FUZZ
@given(batch=numeric_texts(), device=DEVICES)
def test_numeric_options_of_predict(batch, device, capsys):
    with _dirs() as (data, out):
        argv = ["predict", "--checkpoint", str(SPATIAL_CKPT), "--data", str(data), "--output", str(out),
                "--batch-size", batch, "--device", device]
        code, _ = check_clean_outcome(main, argv, capsys, watch=(out, data))
        if code == 0:
            assert (out / "predictions.h5ad").is_file()


@FUZZ
@given(seed=numeric_texts())
def test_make_demo_data_seed(seed, capsys, monkeypatch):
    from spatial_transfer import synthetic as demo

    # the command imports DemoSpec at call time; its validation is under test, not the demo's size: validation is under test, not the demo's size: a small spec with the user's seed
    monkeypatch.setattr(demo, "DemoSpec", _small_demo_spec)
    with _dirs() as (data, out):
        check_clean_outcome(main, ["make-demo-data", str(out / "demo"), "--seed", seed], capsys, watch=(out, data))


def _small_demo_spec(seed: int = 0):
    from dataclasses import replace

    return replace(SMALL_DEMO, seed=seed)


def _small_spec():
    from spatial_transfer.synthetic import DemoSpec

    return DemoSpec(n_cell_types=3, in_dim=16, n_universe_genes=30, bulk_genes=12, spatial_genes=20,
                    n_spatial_samples=2, grid=2, cells_per_spot=2, cells_between_spots=0, n_bulk_samples=2,
                    bulk_region=100.0, bulk_cells=8)


SMALL_DEMO = _small_spec()


# ---- data: one random small mutation of one file of a valid data directory
def _mutate(data: Path, file: str, kind: str, draw) -> None:
    import anndata

    path = data / file
    if kind == "bytes":  # a file cut short, or replaced by text a user saved under the .h5ad name
        raw = path.read_bytes()
        path.write_bytes(raw[: draw(st.integers(0, len(raw) - 1))] if draw(st.booleans()) else
                         draw(st.text(max_size=40)).encode())
        return
    a = anndata.read_h5ad(path)
    X = np.asarray(a.X, dtype=np.float32).copy()
    if kind == "value":
        r, c = draw(st.integers(0, a.n_obs - 1)), draw(st.integers(0, a.n_vars - 1))
        X[r, c] = draw(st.floats(width=32, allow_nan=True, allow_infinity=True))
        a.X = X
    elif kind == "round":  # counts where log values belong
        a.X = np.round(np.expm1(np.clip(X, 0, 20)) * draw(st.sampled_from([1.0, 10.0]))).astype(np.float32)
    elif kind == "negate":
        a.X = -X
    elif kind == "obs_value":
        col = draw(st.sampled_from(list(a.obs.columns)))
        values = np.array([str(v) for v in a.obs[col].to_numpy()], dtype=object)
        values[draw(st.integers(0, a.n_obs - 1))] = draw(st.one_of(numeric_texts(), st.text(max_size=6)))
        a.obs[col] = values
    elif kind == "drop_obs":
        a.obs = a.obs.drop(columns=[draw(st.sampled_from(list(a.obs.columns)))])
    elif kind == "dup_name":
        names = list(a.obs_names)
        names[draw(st.integers(1, a.n_obs - 1))] = names[0]
        a.obs_names = names
    elif kind == "int_genes":
        a.var_names = [str(i) for i in range(a.n_vars)]
    elif kind == "rows":  # a filter that kept some (or none) of the rows
        keep = draw(st.lists(st.booleans(), min_size=a.n_obs, max_size=a.n_obs))
        a = a[np.array(keep, dtype=bool)].copy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)


MUTATIONS = ("bytes", "value", "round", "negate", "obs_value", "drop_obs", "dup_name", "int_genes", "rows")


@FUZZ
@given(file=st.sampled_from(FILES), kind=st.sampled_from(MUTATIONS), predict=st.booleans(), draw=st.data())
def test_data_mutations(file, kind, predict, draw, capsys):
    with _dirs() as (data, out):
        _mutate(data, file, kind, draw.draw)
        argv = (["predict", "--checkpoint", str(SPATIAL_CKPT), "--data", str(data), "--output", str(out),
                 "--device", "cpu"] if predict else
                _train_argv("run", data, out, "--strategy", "full" if file.startswith("bulk") else "scratch"))
        check_clean_outcome(main, argv, capsys, watch=(out, data))


# ---- config files: random keys and values, TOML or YAML, with the mistakes people make in them
SECTIONS = {"spatial": ("epochs", "lr", "batch_size", "patience", "weight_decay"), "bulk": ("epochs", "lr", "batch_size"),
            "graph": ("k", "radius", "window", "method", "tile_size"), "model": ("dropout", "spatial_genes", "in_dim"),
            "": ("folds", "seed", "device")}


@FUZZ
@given(fmt=st.sampled_from(["toml", "yaml"]), entries=st.lists(
    st.tuples(st.sampled_from(sorted(SECTIONS)), st.data()), min_size=1, max_size=3),
    value=numeric_texts(), bom=st.booleans(), twice=st.booleans())
def test_config_file_mutations(fmt, entries, value, bom, twice, capsys):
    with _dirs() as (data, out):
        lines, keys = [], set()
        for section, d in entries:
            key = d.draw(st.sampled_from(SECTIONS[section]))
            keys.add(f"{section}.{key}" if section else key)
            text = _capped(key, d.draw(st.one_of(st.just(value), numeric_texts(), st.text(max_size=5))))
            shown = json.dumps(text) if not text or d.draw(st.booleans()) else text
            for _ in range(2 if twice else 1):
                lines += ([f"[{section}]"] if section else []) + [f"{key} = {shown}"] if fmt == "toml" else \
                         ([f"{section}:", f"  {key}: {shown}"] if section else [f"{key}: {shown}"])
        out.parent.mkdir(exist_ok=True)
        cfg = out.parent / f"config.{fmt}"
        cfg.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
        # the tiny sizes by --set, except the keys the file sets (--set would beat the file's value)
        argv = _train_argv("run", data, out, "--config", str(cfg), skip=frozenset(keys))
        check_clean_outcome(main, argv, capsys, watch=(out, data))
