"""ftcore.config: YAML/TOML files, dotted overrides, coercion into dataclasses, errors naming the key."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from ftcore.config import apply_overrides, from_dict, load_config, parse_override, read_config_file
from ftcore.errors import UserError




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


# ------------------------------------------------------------------ layered_config: defaults < preset < file < --set < flags
@dataclass
class Section:
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16

    def __post_init__(self):
        if self.batch_size > 1000:
            raise UserError(f"batch_size {self.batch_size} is too large")


@dataclass
class Run:
    name: str = "run"
    seed: int = 0
    train: Section = field(default_factory=Section)
    extra: Optional[Section] = None
    kwargs: dict = field(default_factory=dict)


def test_layered_precedence_of_every_layer(tmp_path):
    from ftcore.config import layered_config

    preset = {"name": "preset", "seed": 1, "train": {"epochs": 2, "lr": 0.5}}
    path = write(tmp_path, "run.yaml", """
        seed: 2
        train:
          lr: 0.25
          batch_size: 8
    """)
    assert layered_config(Run) == Run()
    assert layered_config(Run, preset=preset) == Run("preset", 1, Section(2, 0.5, 16))
    # the file beats the preset key by key; the preset's train.epochs survives (sections merged, not replaced)
    assert layered_config(Run, preset=preset, file=path) == Run("preset", 2, Section(2, 0.25, 8))
    cfg = layered_config(Run, preset=preset, file=path, sets=["train.lr=0.125", "seed=3"])
    assert cfg == Run("preset", 3, Section(2, 0.125, 8))
    cfg = layered_config(Run, preset=preset, file=path, sets=["train.lr=0.125", "seed=3"],
                         flags={"train.lr": 0.0625, "seed": None, "name": "flag"})
    assert cfg == Run("flag", 3, Section(2, 0.0625, 8))  # a None flag is "not given": --set's seed stays


def test_layered_nested_merge_at_every_depth_and_inputs_untouched(tmp_path):
    from ftcore.config import merge, merge_layers

    base = {"train": {"epochs": 2}, "kwargs": {"a": {"x": 1, "y": 2}}}
    over = {"train": {"lr": 0.1}, "kwargs": {"a": {"y": 3}}}
    assert merge(base, over) == {"train": {"epochs": 2, "lr": 0.1}, "kwargs": {"a": {"x": 1, "y": 3}}}
    assert base == {"train": {"epochs": 2}, "kwargs": {"a": {"x": 1, "y": 2}}}  # not mutated
    path = write(tmp_path, "run.yaml", "train:\n  lr: 0.1\n")
    layers = merge_layers(Run, preset=base, file=path, sets=["kwargs.a.z=4"])
    assert layers.data == {"train": {"epochs": 2, "lr": 0.1}, "kwargs": {"a": {"x": 1, "y": 2, "z": 4}}}
    assert layers.given == {"train": {"lr": 0.1}, "kwargs": {"a": {"z": 4}}}  # what the user wrote
    assert layers.source == f"{path} / --set"


def test_layered_typo_in_file_names_the_file_and_the_closest_key(tmp_path):
    from ftcore.config import layered_config

    path = write(tmp_path, "run.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(UserError, match=rf"^{path}: unknown key 'train.epoch'; did you mean 'train.epochs'\?$"):
        layered_config(Run, file=path, sets=["seed=1"])
    bad = write(tmp_path, "bad.yaml", "extra:\n  lrr: 3\n")  # an Optional section is checked too
    with pytest.raises(UserError, match="unknown key 'extra.lrr'; did you mean 'extra.lr'"):
        layered_config(Run, file=bad)


def test_layered_typo_in_set_is_named_as_set(tmp_path):
    from ftcore.config import layered_config

    path = write(tmp_path, "run.yaml", "seed: 1\n")
    with pytest.raises(UserError, match=r"^--set: unknown key 'train.batchsize'; did you mean 'train.batch_size'\?$"):
        layered_config(Run, file=path, sets=["train.batchsize=4"])
    with pytest.raises(UserError, match="--set: unknown key 'sed'; did you mean 'seed'"):
        layered_config(Run, sets=["sed=4"])
    layered_config(Run, sets=["kwargs.anything=4"])  # a free mapping field takes any key
    with pytest.raises(UserError, match=r"^--set: 'train' is a value, not a section; give its keys \(train.<key>\)$"):
        layered_config(Run, file=path, sets=["train=3"])
    assert layered_config(Run, sets=["extra=null"]).extra is None  # an Optional section may be null


def test_layered_value_errors_name_the_layers(tmp_path):
    from ftcore.config import layered_config

    path = write(tmp_path, "run.yaml", "seed: 1\n")
    with pytest.raises(UserError, match=rf"^{path} / --set: 'train.epochs'"):
        layered_config(Run, file=path, sets=["train.epochs=many"])
    with pytest.raises(UserError, match="^defaults: 'seed'"):
        layered_config(Run, preset={"seed": "x"})
    with pytest.raises(UserError, match="^my run: "):
        layered_config(Run, sets=["seed=x"], source="my run")


def test_layered_renames_keep_the_users_spelling(tmp_path):
    from ftcore.config import layered_config

    renames = {"model": "name", "train.learning_rate": "train.lr"}
    assert layered_config(Run, sets=["model=exp1", "train.learning_rate=0.5"], renames=renames) == \
        Run("exp1", 0, Section(10, 0.5, 16))
    path = write(tmp_path, "run.yaml", "model: exp2\ntrain:\n  learning_rate: 0.25\n")
    assert layered_config(Run, file=path, renames=renames) == Run("exp2", 0, Section(10, 0.25, 16))
    # the --set spelling beats the file's field spelling: the layers stay ordered after renaming
    cfg = layered_config(Run, file=write(tmp_path, "b.yaml", "name: f\n"), sets=["model=s"], renames=renames)
    assert cfg.name == "s"
    both = write(tmp_path, "both.yaml", "train:\n  lr: 0.1\n  learning_rate: 0.2\n")
    with pytest.raises(UserError, match="'train.learning_rate' and 'train.lr' name the same setting; keep one"):
        layered_config(Run, file=both, renames=renames)
    # without the table the guide's spelling is a typo, with a did-you-mean
    with pytest.raises(UserError, match="unknown key 'train.learning_rate'; known keys: epochs, lr"):
        layered_config(Run, file=write(tmp_path, "guide.yaml", "train:\n  learning_rate: 0.25\n"))


def test_layered_flags_rerun_checks_and_reject_unknown_fields():
    from ftcore.config import apply_flags, layered_config

    with pytest.raises(UserError, match="batch_size 5000 is too large"):  # the section's __post_init__ runs again
        layered_config(Run, flags={"train.batch_size": 5000})
    with pytest.raises(TypeError, match="did you mean 'epochs'"):  # a flag table's typo is a bug in the package
        apply_flags(Run(), {"train.epoch": 3})
    cfg = Run()
    assert apply_flags(cfg, {"seed": None, "train.lr": None}) is cfg


def test_train_config_from_sections():
    from ftcore.training import TrainConfig

    @dataclass
    class Guide:  # a guide's spellings of Trainer settings, and a key that is not one
        max_steps: int = 50
        lr: float = 0.01
        val_freq: int = 5
        train_seed: int = 7
        loss: str = "mse"

    tc = TrainConfig.from_sections(Guide(), {"device": "cpu", "lr": 0.5},
                                   renames={"val_freq": "val_every_steps", "train_seed": "seed"},
                                   output_dir="out", epochs=0)
    assert (tc.max_steps, tc.val_every_steps, tc.seed, tc.device, tc.output_dir, tc.epochs) == (50, 5, 7, "cpu", "out", 0)
    assert tc.lr == 0.5  # a later section wins over an earlier one
    assert TrainConfig.from_sections(Guide(), lr=0.25, epochs=0).lr == 0.25  # an explicit field wins over all
    assert TrainConfig.from_sections(Guide(), renames={"max_steps": None}).max_steps is None  # None: not taken
    with pytest.raises(UserError, match="lr"):  # the core still validates what it was given
        TrainConfig.from_sections({"lr": -1.0})
