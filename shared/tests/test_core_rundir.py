"""The run directory contract (ftcore.rundir) and the Trainer's CSV / TensorBoard logs."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from torch import nn

from ftcore.errors import UserError
from ftcore.rundir import changed_keys, file_identity, flatten, open_run_dir
from ftcore.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_train import make_data, make_model  # noqa: E402

CONFIG = {"model": {"hidden": 16, "layers": 2}, "training": {"lr": 1e-3, "device": "cpu", "epochs": 3},
          "seed": 0, "split": ["a", "b"]}
IGNORE = ("training.device",)


def changed(**over):
    cfg = json.loads(json.dumps(CONFIG))
    for dotted, value in over.items():
        node = cfg
        *head, last = dotted.split("__")
        for k in head:
            node = node[k]
        node[last] = value
    return cfg


def started(tmp_path, cfg=CONFIG):
    run = open_run_dir(tmp_path / "run", cfg, ignore=IGNORE)
    assert run.state == "new"
    run.start()
    (tmp_path / "run" / "last.pt").write_bytes(b"checkpoint")
    return tmp_path / "run"


def snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_flatten_and_changed_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    assert changed_keys(CONFIG, changed(training__lr=1e-2, seed=3)) == [("training.lr", 1e-3, 1e-2), ("seed", 0, 3)]
    assert changed_keys(CONFIG, changed(training__device="cuda"), IGNORE) == []
    assert changed_keys(CONFIG, changed(training__device="cuda")) == [("training.device", "cpu", "cuda")]
    # a key only one side has is a change too, said as (unset)
    assert changed_keys({"a": 1}, {"a": 1, "b": 2}) == [("b", None, 2)]
    assert changed_keys({"a": 1, "b": 2}, {"a": 1}) == [("b", 2, None)]


def test_new_run_dumps_the_effective_config_as_yaml(tmp_path):
    out = started(tmp_path)
    assert yaml.safe_load((out / "run_config.yaml").read_text()) == CONFIG


def test_identical_config_resumes_and_ignored_keys_do_not_count(tmp_path):
    out = started(tmp_path)
    run = open_run_dir(out, changed(training__device="cuda"), ignore=IGNORE)
    assert run.state == "resume"
    run.start()  # the effective config of this command is what the file now says
    assert yaml.safe_load((out / "run_config.yaml").read_text())["training"]["device"] == "cuda"
    assert (out / "last.pt").read_bytes() == b"checkpoint"


def test_changed_config_is_refused_naming_the_keys_and_nothing_is_written(tmp_path):
    out = started(tmp_path)
    before = snapshot(out)
    with pytest.raises(UserError) as err:
        open_run_dir(out, changed(training__lr=1e-2, seed=7, split=["a", "c"]), ignore=IGNORE)
    text = str(err.value)
    assert "\n" not in text
    assert "(changed: training.lr, seed, split;" in text
    assert "training.lr 0.001 -> 0.01" in text and "seed 0 -> 7" in text and "split ['a', 'b'] -> ['a', 'c']" in text
    assert "choose another --output" in text and "--overwrite to start fresh" in text
    assert snapshot(out) == before


def test_overwrite_removes_the_run_files_only_and_starts_fresh(tmp_path):
    out = started(tmp_path)
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "step=2.ckpt").write_bytes(b"x")
    (out / "my_data.csv").write_text("the user's own file")
    run = open_run_dir(out, changed(seed=7), run_files=("last.pt", "checkpoints"), overwrite=True)
    assert run.state == "overwrite" and [k for k, _, _ in run.changes] == ["seed"]
    assert (out / "last.pt").exists()  # deciding writes nothing
    run.start()
    assert not (out / "last.pt").exists() and not (out / "checkpoints").exists()
    assert (out / "my_data.csv").read_text() == "the user's own file"
    assert yaml.safe_load((out / "run_config.yaml").read_text())["seed"] == 7


def test_flags_named_in_the_refusal_are_the_callers(tmp_path):
    out = started(tmp_path)
    with pytest.raises(UserError, match=r"choose another --log_dir .* pass --overwrite"):
        open_run_dir(out, changed(seed=1), output_flag="--log_dir")


def test_a_run_without_a_saved_config_is_refused_unless_overwritten(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "last.pt").write_bytes(b"old")
    with pytest.raises(UserError, match="holds a run \\(last.pt\\) without run_config.yaml"):
        open_run_dir(out, CONFIG, run_files=("last.pt",))
    assert open_run_dir(out, CONFIG, run_files=("last.pt",), overwrite=True).state == "overwrite"
    # files that are not the run's (the user's data) do not make a run
    (out / "last.pt").unlink()
    (out / "data.h5ad").write_bytes(b"data")
    assert open_run_dir(out, CONFIG, run_files=("last.pt",)).state == "new"


def test_unreadable_saved_config_is_one_line(tmp_path):
    out = started(tmp_path)
    (out / "run_config.yaml").write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not a readable run config"):
        open_run_dir(out, CONFIG)


def test_file_identity_follows_content_not_time(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n1,2\n")
    first = file_identity(f)
    f.write_text("a,b\n1,2\n")  # written again, same content: the same data
    assert file_identity(f) == first and first["bytes"] == 8 and len(first["sha256"]) == 64
    f.write_text("a,b\n1,3\n")
    assert file_identity(f)["sha256"] != first["sha256"]
    assert file_identity(None) is None


# ------------------------------------------------------------------ the Trainer's logs
def mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def fit(tmp_path, **kw):
    train, val = make_data()
    cfg = TrainConfig(**{"output_dir": str(tmp_path / "run"), "epochs": 3, "batch_size": 8, "lr": 5e-2, "seed": 3,
                         "progress": False, "curve_name": None, **kw})
    return Trainer(make_model(0.0), cfg, train, val, loss_fn=mse).fit()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_history_csv_is_written_beside_history_json_and_grows_on_resume(tmp_path):
    result = fit(tmp_path, epochs=2)
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert len(rows) == 2 and [int(r["step"]) for r in rows] == [h["step"] for h in result.history]
    for row, record in zip(rows, result.history):
        assert float(row["val_loss"]) == pytest.approx(record["val_loss"], rel=1e-12)
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"], rel=1e-12)
    result = fit(tmp_path, epochs=4)  # extending the run: the CSV holds the whole history
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert len(rows) == len(result.history) == 4
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["step"] == int(rows[-1]["step"])


def test_csv_name_follows_history_name_and_can_be_turned_off(tmp_path):
    fit(tmp_path / "a", epochs=1, history_name="fold_0_history.json")
    assert (tmp_path / "a" / "run" / "fold_0_history.csv").is_file()
    fit(tmp_path / "b", epochs=1, csv_name=None)
    assert not list((tmp_path / "b" / "run").glob("*.csv"))


def test_without_tensorboard_nothing_is_written_and_nothing_fails(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError("TensorBoard logging requires TensorBoard")  # what torch says without the package
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    fit(tmp_path, epochs=1)
    assert not (tmp_path / "run" / "tensorboard").exists() and (tmp_path / "run" / "history.csv").is_file()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard not installed (pip install 'ftcore[tensorboard]'): the TensorBoard path is not tested")
def test_tensorboard_events_hold_the_history_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = fit(tmp_path, epochs=3)
    logdir = tmp_path / "run" / "tensorboard"
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train_loss", "val_loss", "lr"} <= tags and "epoch" not in tags and "step" not in tags
    events = acc.Scalars("val_loss")
    assert [e.step for e in events] == [h["step"] for h in result.history]
    assert [e.value for e in events] == pytest.approx([h["val_loss"] for h in result.history], rel=1e-6)
