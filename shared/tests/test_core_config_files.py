"""ftcore.config.read_config_file: the mistakes config files really carry (issue 16's config class)."""

from __future__ import annotations

import pytest

from ftcore.config import read_config_file
from ftcore.errors import UserError


@pytest.mark.parametrize("name, text, phrase", [
    ("dup.yaml", "training:\n  lr: 1e-3\n  epochs: 3\n  lr: 10.0\n", "key 'lr' is set twice (lines 2 and 4)"),
    ("dup_top.yaml", "seed: 1\nmodel: {}\nseed: 2\n", "key 'seed' is set twice (lines 1 and 3)"),
    ("dup_flow.yaml", "a: {c: 1, c: 2}\n", "key 'c' is set twice (lines 1 and 1)"),
    ("dup.toml", '[datasets]\nx = "a"\n[training]\nlr = 1\nlr = 2\n', "key 'training.lr' is set twice (lines 4 and 5)"),
    ("dup_table.toml", "[a]\nx = 1\n[b]\ny = 2\n[a]\nz = 3\n", "key '[a]' is set twice (lines 1 and 5)"),
    ("dup_quoted.toml", '[fewshot]\n"replogle.hepg2" = 1\n"replogle.hepg2" = 2\n',
     "key 'fewshot.\"replogle.hepg2\"' is set twice (lines 2 and 3)"),
])
def test_a_key_set_twice_is_refused_naming_both_lines(tmp_path, name, text, phrase):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_config_file(path)
    assert phrase in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, text, expected", [
    ("bom.yaml", "\ufefftraining:\n  epochs: 3\n", {"training": {"epochs": 3}}),
    ("bom.toml", '\ufeff[datasets]\nx = "a"\n', {"datasets": {"x": "a"}}),
    ("arrays.toml", "[[f]]\nx = 1\n[[f]]\nx = 2\n", {"f": [{"x": 1}, {"x": 2}]}),  # same key, two elements
    ("nested.yaml", "a:\n  x: 1\nb:\n  x: 2\n", {"a": {"x": 1}, "b": {"x": 2}}),  # same key, two mappings
])
def test_bom_and_legitimate_repeats_read(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_config_file(path) == expected


def test_directory_and_binary_files_get_one_line(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        read_config_file(tmp_path)
    (tmp_path / "x.yaml").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        read_config_file(tmp_path / "x.yaml")
