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
