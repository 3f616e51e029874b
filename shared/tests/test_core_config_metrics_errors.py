"""Config loading, metrics against numpy/scipy references, CLI errors, freezing, atomic io."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from ftcore import metrics
from ftcore.config import apply_overrides, from_dict, load_config, parse_override, read_config_file
from ftcore.errors import UserError, cli_main
from ftcore.freezing import FreezeSpec, apply_freezing, resolve_strategy
from ftcore.io import (atomic_path, atomic_savefig, atomic_torch_save, atomic_write_json, atomic_write_text,
                       check_output_dir)


# ================================================================================ config
@dataclass
class Training:
    epochs: int = 10
    learning_rate: float = 1e-4
    use_amp: bool = False
    hidden_dims: tuple[int, ...] = (64, 32)
    warmup: Optional[int] = None
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Experiment:
    name: str  # required
    data_path: str = "data.h5ad"
    training: Training = field(default_factory=Training)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_yaml_file_with_nesting_and_coercion(tmp_path):
    path = write(tmp_path, "exp.yaml", """
        name: run1
        training:
          epochs: "5"           # quoted number
          learning_rate: 1e-3   # YAML 1.1 reads this as the string '1e-3'
          use_amp: "yes"
          hidden_dims: [128, 64, 8]
          warmup: 100
    """)
    cfg = load_config(Experiment, path)
    t = cfg.training
    assert cfg.name == "run1" and cfg.data_path == "data.h5ad"
    assert (t.epochs, t.learning_rate, t.use_amp, t.hidden_dims, t.warmup) == (5, 1e-3, True, (128, 64, 8), 100)
    assert isinstance(t.epochs, int) and isinstance(t.learning_rate, float) and isinstance(t.hidden_dims, tuple)


def test_toml_file_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "exp.toml", """
        name = "toml-run"
        [training]
        epochs = 3
        schedule = "constant"
    """)
    cfg = load_config(Experiment, path, overrides=["training.epochs=7", "training.learning_rate=2e-5",
                                                    "data_path=/x/y.h5ad", "training.warmup=null"])
    assert cfg.name == "toml-run" and cfg.data_path == "/x/y.h5ad"
    assert cfg.training.epochs == 7 and cfg.training.learning_rate == 2e-5 and cfg.training.warmup is None
    assert cfg.training.schedule == "constant"


def test_overrides_do_not_mutate_and_create_sections():
    data = {"name": "a"}
    out = apply_overrides(data, ["training.epochs=2"])
    assert data == {"name": "a"} and out == {"name": "a", "training": {"epochs": 2}}
    assert parse_override("a.b.c=[1, 2]") == (["a", "b", "c"], [1, 2])
    with pytest.raises(UserError, match="key=value"):
        parse_override("training.epochs")
    with pytest.raises(UserError, match="is a value, not a section"):
        apply_overrides({"name": "a"}, ["name.first=b"])


@pytest.mark.parametrize("text, line", [
    ("name: a\ntraining:\n  epochs: 3\n   lr: 1\n", 4),
    ("name: a\ndata_path: [1, 2\ntraining: {}\n", 3),
    ("name: 'unterminated\n", 2),
])
def test_yaml_syntax_error_names_line(tmp_path, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_config_file(path)
    msg = str(err.value)
    assert f"line {line}," in msg and str(path) in msg and "\n" not in msg


def test_toml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "a"\n[training]\nepochs = \n')
    with pytest.raises(UserError) as err:
        read_config_file(path)
    msg = str(err.value)
    assert "line 3" in msg and str(path) in msg and "\n" not in msg


def test_toml_on_python_310_reads_with_tomli(tmp_path, monkeypatch):
    """Python 3.10 has no tomllib: the declared tomli backport (same API) is used instead."""
    try:
        import tomllib as parser
    except ModuleNotFoundError:
        import tomli as parser
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", parser)
    assert read_config_file(write(tmp_path, "ok.toml", 'name = "a"\n'))["name"] == "a"
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(UserError, match="line 1"):
        read_config_file(tmp_path / "bad.toml")


@pytest.mark.parametrize("data, phrase", [
    ({"name": "a", "trainig": {}}, "did you mean 'training'"),
    ({"name": "a", "training": {"epoch": 3}}, "did you mean 'training.epochs'"),
    ({"name": "a", "training": {"learnig_rate": 0.1}}, "did you mean 'training.learning_rate'"),
    ({"name": "a", "zzz": 1}, "known keys: name, data_path, training"),
    ({"data_path": "x"}, "missing required key 'name'"),
    ({"name": "a", "training": {"epochs": 3.5}}, "'training.epochs' should be a whole number"),
    ({"name": "a", "training": {"epochs": "ten"}}, "'training.epochs' should be a number"),
    ({"name": "a", "training": {"use_amp": "maybe"}}, "'training.use_amp' should be true or false"),
    ({"name": "a", "training": {"hidden_dims": 5}}, "'training.hidden_dims' should be a list"),
    ({"name": "a", "training": {"schedule": "linear"}}, "allowed: 'cosine', 'constant'"),
    ({"name": "a", "training": 3}, "training should be a mapping"),
    ({"name": ["a"]}, "'name' should be text"),
])
def test_config_errors_name_the_key(data, phrase):
    with pytest.raises(UserError) as err:
        from_dict(Experiment, data, source="exp.yaml")
    msg = str(err.value)
    assert phrase in msg and msg.startswith("exp.yaml") and "\n" not in msg


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Experiment, tmp_path / "nope.yaml")


def test_yaml_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(UserError, match="expected a mapping"):
        read_config_file(path)


# =============================================================================== metrics
@pytest.fixture
def rng():
    return np.random.default_rng()  # fresh inputs every run: the references, not the numbers, are fixed


def test_pearson_per_gene_matches_scipy(rng):
    true = rng.normal(size=(50, 7))
    pred = true + rng.normal(scale=rng.uniform(0.1, 2), size=(50, 7))
    r = metrics.pearson_per_gene(pred, true)
    ref = [stats.pearsonr(pred[:, g], true[:, g])[0] for g in range(7)]
    np.testing.assert_allclose(r, ref, rtol=1e-10, atol=1e-12)
    assert metrics.mean_pearson(pred, true) == pytest.approx(np.mean(ref), rel=1e-10)


def test_constant_columns_are_nan_and_ignored(rng):
    true = rng.normal(size=(30, 5))
    pred = true + rng.normal(size=(30, 5))
    true[:, 1] = 3.0   # constant in truth
    pred[:, 3] = -1.0  # constant in prediction
    r = metrics.pearson_per_gene(pred, true)
    assert np.isnan(r[1]) and np.isnan(r[3]) and np.isfinite(r[[0, 2, 4]]).all()
    sp = metrics.spearman_per_gene(pred, true)
    assert np.isnan(sp[1]) and np.isnan(sp[3]) and np.isfinite(sp[[0, 2, 4]]).all()
    ref = [stats.pearsonr(pred[:, g], true[:, g])[0] for g in (0, 2, 4)]
    assert metrics.mean_pearson(pred, true) == pytest.approx(np.mean(ref), rel=1e-10)
    assert np.isnan(metrics.mean_pearson(np.ones((4, 2)), rng.normal(size=(4, 2))))
    assert np.isnan(metrics.pearson_overall(np.ones((4, 2)), rng.normal(size=(4, 2))))


def test_pearson_overall_and_spearman_match_references(rng):
    true = rng.normal(size=(40, 6))
    pred = np.round(true * 2 + rng.normal(size=(40, 6)))  # rounding makes ties for spearman
    assert metrics.pearson_overall(pred, true) == pytest.approx(np.corrcoef(pred.ravel(), true.ravel())[0, 1], rel=1e-10)
    sp = metrics.spearman_per_gene(pred, true)
    ref = [stats.spearmanr(pred[:, g], true[:, g])[0] for g in range(6)]
    np.testing.assert_allclose(sp, ref, rtol=1e-10)


def test_r2_matches_sklearn(rng):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    true = rng.normal(size=(25, 3))
    pred = true + rng.normal(scale=0.5, size=(25, 3))
    assert metrics.r2_score(pred, true) == pytest.approx(sklearn_metrics.r2_score(true.ravel(), pred.ravel()))


def test_error_metrics_match_numpy_and_torch_input(rng):
    true = rng.normal(size=(25, 3))
    pred = true + rng.normal(scale=0.5, size=(25, 3))
    assert metrics.mse(pred, true) == pytest.approx(np.mean((pred - true) ** 2))
    assert metrics.mae(pred, true) == pytest.approx(np.mean(np.abs(pred - true)))
    assert np.isnan(metrics.r2_score(pred, np.ones_like(true)))
    tp, tt = torch.tensor(pred, dtype=torch.float32, requires_grad=True), torch.tensor(true)
    assert metrics.mse(tp, tt) == pytest.approx(np.mean((pred - true) ** 2), rel=1e-5)
    report = metrics.regression_report(pred, true)
    assert set(report) == {"pearson_overall", "pearson_mean_gene", "spearman_overall", "r2", "mse", "mae"}
    assert report["spearman_overall"] == pytest.approx(stats.spearmanr(pred.ravel(), true.ravel())[0], rel=1e-10)
    one_d = metrics.regression_report(pred[:, 0], true[:, 0])
    assert one_d["pearson_overall"] == pytest.approx(stats.pearsonr(pred[:, 0], true[:, 0])[0], rel=1e-10)


def test_accuracy(rng):
    labels = rng.integers(0, 4, size=100)
    pred = labels.copy()
    flip = rng.choice(100, size=17, replace=False)
    pred[flip] = (pred[flip] + 1) % 4
    assert metrics.accuracy(pred, labels) == pytest.approx(0.83)
    assert metrics.accuracy(np.array(["a", "b"]), np.array(["a", "c"])) == 0.5
    assert np.isnan(metrics.accuracy([], []))


# ================================================================================ errors
@cli_main
def _cli(argv):
    if argv == ["user"]:
        raise UserError("column 'cell_type' not in obs (have: a, b); pass --label-key")
    if argv == ["bug"]:
        raise ZeroDivisionError("a real bug")
    if argv == ["interrupt"]:
        raise KeyboardInterrupt
    if argv == ["oom"]:
        raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")
    return None


def test_cli_main_user_error_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    assert _cli(["ok"]) == 0
    assert _cli(["user"]) == 2
    err = capsys.readouterr().err
    assert err == "error: column 'cell_type' not in obs (have: a, b); pass --label-key\n"
    assert _cli(["interrupt"]) == 130
    assert _cli(["oom"]) == 3
    assert "ran out of memory" in capsys.readouterr().err
    with pytest.raises(ZeroDivisionError):  # real bugs keep their traceback
        _cli(["bug"])


def test_cli_main_oom_names_the_cli_batch_size_flag(capsys, monkeypatch):
    monkeypatch.delenv("FTCORE_TRACEBACK", raising=False)
    assert _cli(["oom"]) == 3
    assert "lower --batch-size " in capsys.readouterr().err  # the default: most CLIs spell it so

    @cli_main(batch_size_hint="--batch_size")
    def underscore_cli(argv):
        raise type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory")

    assert underscore_cli(["oom"]) == 3
    assert "lower --batch_size " in capsys.readouterr().err


def test_cli_main_traceback_opt_in(monkeypatch):
    monkeypatch.setenv("FTCORE_TRACEBACK", "1")
    with pytest.raises(UserError):
        _cli(["user"])


CLI_SCRIPT = """
import sys
from ftcore.errors import UserError, cli_main

@cli_main
def main():
    raise UserError("config x.yaml: unknown key 'lr'; did you mean 'learning_rate'?")

sys.exit(main())
"""


@pytest.mark.parametrize("traceback", [False, True])
def test_cli_main_in_a_real_process(tmp_path, traceback):
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FTCORE_TRACEBACK"}
    if traceback:
        env["FTCORE_TRACEBACK"] = "1"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    if traceback:
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "UserError" in proc.stderr
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines() == ["error: config x.yaml: unknown key 'lr'; did you mean 'learning_rate'?"]


# ============================================================================== freezing
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gnn = nn.Linear(3, 4)
        self.transformer = nn.ModuleDict({"attn": nn.Linear(4, 4), "norm": nn.LayerNorm(4)})
        self.head = nn.Linear(4, 2)


STRATEGIES = {
    "full": FreezeSpec(),
    "frozen_backbone": FreezeSpec(frozen=(r"^gnn\.", r"^transformer\.")),
    "frozen_decoder": FreezeSpec(frozen=(r"^head\.",)),
    "head_only": FreezeSpec(trainable=(r"^head\.",)),
}


def _count(model, prefixes):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefixes))


@pytest.mark.parametrize("name, trainable_prefixes", [
    ("full", ("gnn.", "transformer.", "head.")),
    ("frozen_backbone", ("head.",)),
    ("frozen_decoder", ("gnn.", "transformer.")),
    ("head_only", ("head.",)),
])
def test_strategies_set_requires_grad_and_counts(name, trainable_prefixes, capsys):
    model = Net()
    report = apply_freezing(model, resolve_strategy(name, STRATEGIES))
    for n, p in model.named_parameters():
        assert p.requires_grad == n.startswith(trainable_prefixes), n
    assert report.trainable == _count(model, trainable_prefixes)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert sorted(report.trainable_names + report.frozen_names) == sorted(n for n, _ in model.named_parameters())
    assert f"trainable parameters: {report.trainable:,} / {report.total:,}" in capsys.readouterr().out


def test_include_exclude_on_top_of_a_strategy():
    model = Net()
    spec = STRATEGIES["frozen_backbone"].with_overrides(include=[r"norm"], exclude=[r"head\.bias"])
    report = apply_freezing(model, spec, verbose=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"transformer.norm.weight", "transformer.norm.bias", "head.weight"}
    assert report.trainable == 4 + 4 + 8
    # exclude wins over include
    apply_freezing(model, FreezeSpec(include=("head",), exclude=("head",), frozen=("gnn",)), verbose=False)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("head", "gnn")))


def test_no_trainable_parameters_and_unknown_strategy():
    with pytest.raises(UserError, match="No trainable parameters!"):
        apply_freezing(Net(), FreezeSpec(trainable=("nothing_matches",)))
    with pytest.raises(UserError) as err:
        resolve_strategy("frozen-backbone", STRATEGIES)
    assert "full, frozen_backbone, frozen_decoder, head_only" in str(err.value)


# ==================================================================================== io
def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to a 0500 directory")
def test_check_output_dir_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_output_dir(locked)
        with pytest.raises(UserError, match="not writable"):
            check_output_dir(locked / "sub")
    finally:
        locked.chmod(0o700)


def test_check_output_dir_under_a_file_and_no_space(tmp_path):
    """Also runs as root: a path below a regular file cannot be created by anyone."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError) as err:
        check_output_dir(blocker / "out")
    assert "not writable" in str(err.value) and str(err.value).endswith("; choose another output directory")
    with pytest.raises(UserError, match="choose another with --output-dir$"):  # the caller's own flag
        check_output_dir(blocker / "out", flag="--output-dir")
    with pytest.raises(UserError, match="MiB free but about"):
        check_output_dir(tmp_path / "ok", need_bytes=2**62)
    assert check_output_dir(tmp_path / "ok") == tmp_path / "ok"
    assert _leftovers(tmp_path / "ok") == []


def test_atomic_writes_leave_no_temp_files(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": np.float32(1.5), "n": np.int64(3), "arr": np.arange(2), "p": tmp_path})
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    fig = plt.figure()
    atomic_savefig(fig, tmp_path / "d.png")
    plt.close(fig)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt", "d.png"]
    assert (tmp_path / "b.json").read_text().startswith("{")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.ones(2))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "hello")
        atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
        (tmp_path / "plain.txt").write_text("hello")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.txt": mode, "c.pt": mode, "plain.txt": mode}


def test_atomic_path_failure_keeps_old_file(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old\n"
    assert _leftovers(tmp_path) == []
    with pytest.raises(TypeError):  # not serialisable: nothing written at all
        atomic_write_json(tmp_path / "x.json", {"o": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_cli_main_turns_sigterm_into_a_clean_exit(tmp_path):
    """`docker stop` sends SIGTERM: the run unwinds (finally blocks run), prints one line and exits 143."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "cleaned"
    script = (
        "import time, sys\n"
        "from ftcore.errors import cli_main\n"
        "@cli_main\n"
        "def main():\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert time.monotonic() - start < 10
    assert marker.exists(), "finally blocks must run on SIGTERM"
    assert err.strip().splitlines() == ["terminated (SIGTERM): stopped before finishing; complete checkpoints are kept"]
