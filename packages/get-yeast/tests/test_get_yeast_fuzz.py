"""Property-based: whatever a tired user types or feeds, every get-yeast command either succeeds (exit 0) or
prints ONE `error:` line and exits 2, never a traceback, never a leftover file (repo_helpers.check_clean_outcome).

Random numeric options (repo_helpers.numeric_texts) go to train (flags and --set keys of both YAML files),
evaluate, make-data and demo; random small mutations of the CSV table and of the two YAML files go to train
and evaluate. A successful example is kept cheap: 1 step of a tiny model on 6 samples x 4 regions (values
that would make a success slow, e.g. embed_dim=10**6, are left out with `assume`). FTCORE_FUZZ_EXAMPLES
sets the examples per test (default 3).
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from get_yeast import demo, synthetic
from get_yeast.cli import main
from get_yeast.config import packaged_config

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from repo_helpers import check_clean_outcome, fuzz_settings, numeric_texts  # noqa: E402

CORPUS = REPO / "tests" / "bad_inputs" / "get-yeast"
FUZZ = fuzz_settings(3)
TINY = str(packaged_config("yeast_model_tiny.yaml"))
QUICK = ["--no-progress", "--from-scratch", "--set", "task.interpret=false", "--set", "task.export_merged=false",
         "--set", "training.device=cpu"]

# --set keys -> the largest value that keeps a success cheap (None: every valid value is cheap)
TRAIN_KEYS = {
    "training.lr": None, "training.weight_decay": None, "training.warmup_steps": None, "training.grad_clip": None,
    "training.patience": None, "training.val_every_steps": None, "training.ckpt_every_steps": None,
    "training.batch_size": None, "experiment.seed": None, "lora.r": 64, "lora.alpha": None, "lora.dropout": None,
    "data.val_fraction": None, "data.test_fraction": None, "task.save_predictions": None,
    "model.region_model.head_hidden_dim": 256, "model.region_model.embed_dim": 64, "model.region_model.num_heads": 64,
    "model.region_model.num_layers": 3, "model.region_model.mlp_ratio": 8, "model.region_model.dropout": None,
    "model.fusion.hidden_dim": 256, "model.condition.embed_dim": 64, "model.condition.max_od600": None,
    "model.condition.log10_molar_scale": None, "model.region_model.num_features": 64,
}
# the originals, for the monkeypatched stand-ins (a function-scoped monkeypatch lasts across examples)
REAL_TABLE, REAL_DEMO_DATA, REAL_DEMO_LOAD = synthetic.make_yeast_table, demo.write_demo_data, demo.load_training_config
FLAGS = {"--batch-size": None, "--seed": None, "--max-steps": 2, "--epochs": 2}


def _number(text) -> float | None:
    try:
        value = float(str(text).strip())
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _cheap(text, limit: float | None) -> bool:
    value = _number(text)
    return limit is None or value is None or value <= limit


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="get_yeast_fuzz_"))


def _run(argv: list[str], capsys, work: Path) -> None:
    try:
        check_clean_outcome(main, argv, capsys, watch=(work, CORPUS))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _train(data: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model-config", TINY, "--output", str(out), *QUICK, *extra]


@FUZZ
@given(key=st.sampled_from(sorted(TRAIN_KEYS)), value=numeric_texts())
def test_train_numeric_overrides(key, value, capsys):
    assume(_cheap(value, TRAIN_KEYS[key]))
    work = _scratch()
    _run(_train(CORPUS / "good.csv", work / "out", "--max-steps", "1", "--set", f"{key}={value}"), capsys, work)


@FUZZ
@given(flag=st.sampled_from(sorted(FLAGS)), value=numeric_texts())
def test_train_numeric_flags(flag, value, capsys):
    assume(_cheap(value, FLAGS[flag]))
    work = _scratch()
    steps = ["--epochs", "1"] if flag == "--max-steps" else ["--max-steps", "1"] if flag != "--epochs" else []
    _run(_train(CORPUS / "good.csv", work / "out", *steps, flag, value), capsys, work)


CELL_VALUES = st.one_of(numeric_texts(), st.sampled_from(["", "NA", "high", "SC", "YPD", "none", " 37 ", "1e38",
                                                          "-1", "glucose", "sucrose", "0,5", "nan"]))


@st.composite
def table_mutations(draw):
    """A few edits of good.csv as text rows: a cell, a dropped/duplicated/renamed column, dropped rows."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO((CORPUS / "good.csv").read_text())))
    header, body = rows[0], rows[1:]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cell", "cell", "cell", "drop_col", "dup_col", "rename_col", "drop_rows"]))
        j = draw(st.integers(0, len(header) - 1))
        if kind == "cell" and body:
            body[draw(st.integers(0, len(body) - 1))][j] = draw(CELL_VALUES)
        elif kind == "drop_col" and len(header) > 1:
            header = header[:j] + header[j + 1:]
            body = [r[:j] + r[j + 1:] for r in body]
        elif kind == "dup_col":
            header = header + [header[j]]
            body = [r + [r[j]] for r in body]
        elif kind == "rename_col":
            header = header[:j] + [draw(st.sampled_from(["", "Sample", "expression ", "motif_X", "accessibility"]))] + header[j + 1:]
        elif kind == "drop_rows" and body:
            keep = draw(st.integers(0, len(body)))
            body = body[:keep]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header, *body])
    return out.getvalue()


@FUZZ
@given(text=table_mutations())
def test_train_table_mutations(text, capsys):
    work = _scratch()
    (work / "data").mkdir()
    (work / "data" / "yeast.csv").write_text(text)
    _run(_train(work / "data" / "yeast.csv", work / "out", "--max-steps", "1"), capsys, work)


YAML_VALUES = st.one_of(numeric_texts().map(lambda t: yaml.safe_load(t) if t.strip() else t),
                        st.sampled_from([None, [], [1, 2], {}, "auto", "cpu", "gpu", True, "~/x.pth", ".nan", "1e3"]))


def _keys(data: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        out += _keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k]
    return out


@FUZZ
@given(which=st.sampled_from(["training", "model"]), data=st.data(), duplicate=st.booleans(), bom=st.booleans())
def test_train_yaml_mutations(which, data, duplicate, bom, capsys):
    source = packaged_config("yeast_training.yaml" if which == "training" else "yeast_model_tiny.yaml")
    cfg = yaml.safe_load(source.read_text())
    key = data.draw(st.sampled_from(_keys(cfg)))
    value = data.draw(YAML_VALUES)
    limit = {"embed_dim": 64, "num_heads": 64, "num_layers": 3, "head_hidden_dim": 256, "hidden_dim": 256,
             "num_features": 64, "epochs": 2, "max_steps": 2, "permutation_repeats": 2}.get(key.split(".")[-1])
    assume(not isinstance(value, (int, float)) or isinstance(value, bool) or _cheap(value, limit))
    node = cfg
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    node[last] = value
    text = yaml.safe_dump(cfg, sort_keys=False)
    if duplicate:  # the section written twice
        first = key.split(".")[0]
        text += yaml.safe_dump({first: {"x": 1}} if path else {first: value})
    work = _scratch()
    (work / "cfg").mkdir()
    path_ = work / "cfg" / f"{which}.yaml"
    path_.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    flag = ["--config", str(path_)] if which == "training" else ["--model-config", str(path_)]
    # (for the model file --model-config is given twice: the second, mutated one wins)
    _run(_train(CORPUS / "good.csv", work / "out", "--max-steps", "1", "--set", "training.epochs=1", *flag), capsys, work)


@FUZZ
@given(device=st.sampled_from(["auto", "cpu", "gpu", "cuda:x", "CPU", "", "mps:0", " cpu "]),
       split=st.sampled_from(["auto", "all", "test", "val", "train"]), repeats=numeric_texts(),
       table=st.one_of(st.none(), table_mutations()))
def test_evaluate(device, split, repeats, table, capsys):
    assume(_cheap(repeats, 2))
    work = _scratch()
    data = CORPUS / "good_sc.csv"
    if table is not None:  # the SC-only table the corpus model was trained for, mutated
        (work / "data").mkdir()
        data = work / "data" / "eval.csv"
        data.write_text(table.replace("YPD", "SC"))
    argv = ["evaluate", "--model", str(CORPUS / "trained_model.pth"), "--data", str(data), "--output", str(work / "out"),
            "--device", device, "--split", split, "--set", f"task.permutation_repeats={repeats}"]
    _run(argv, capsys, work)


@FUZZ
@given(seed=numeric_texts(), suffix=st.sampled_from([".csv", ".CSV", ".xlsx", ".tsv", "", "/"]))
def test_make_data(seed, suffix, capsys, monkeypatch):
    monkeypatch.setattr(synthetic, "make_yeast_table", lambda seed=0: REAL_TABLE(n_conditions=4, n_windows=1, n_regions=4,
                                                                                    seed=seed))
    work = _scratch()
    _run(["make-data", "--output", str(work / "out" / f"yeast{suffix}"), "--seed", seed], capsys, work)


@FUZZ
@given(epochs=numeric_texts(), device=st.sampled_from(["cpu", "gpu", "auto", "cuda:0:0", ""]))
def test_demo(epochs, device, capsys, monkeypatch):
    """The demo's validation with tiny generated assets (a success: two 1-step runs and an evaluation)."""
    import dataclasses

    from get_yeast.config import load_model_config
    from get_yeast.model import GETYeast
    from get_yeast.synthetic import write_get_checkpoint

    tiny = load_model_config(TINY, ["condition.enabled=false"])
    weights = GETYeast(dataclasses.replace(tiny), n_drugs=2).state_dict()
    monkeypatch.setattr(demo, "write_demo_data",
                        lambda path, seed=0: REAL_DEMO_DATA(path, seed, n_conditions=6, n_windows=1, n_regions=4))
    monkeypatch.setattr(demo, "pretrain_tiny_get", lambda path, seed=0, progress=True: write_get_checkpoint(path, weights))
    monkeypatch.setattr(demo, "load_training_config", lambda path, over: REAL_DEMO_LOAD(
        path, [*over, "training.max_steps=1", "task.permutation_repeats=1"]))
    work = _scratch()
    _run(["demo", "--output", str(work / "out"), "--epochs", epochs, "--device", device], capsys, work)
