"""Data contract: CSV/Excel reading, validation messages, missing values, held-out-condition split."""

import numpy as np
import pytest

from ftcore.errors import UserError
from get_yeast.data import DataConfig, YeastDataset, drug_vocabulary, read_table, split_samples, validate_frame
from get_yeast.model import ConditionConfig

CC = ConditionConfig()


def test_csv_groups_rows_into_samples(tiny_csv, tiny_frame):
    table = read_table(tiny_csv, DataConfig(), CC)
    assert len(table.samples) == tiny_frame["sample"].nunique() == 16
    s = table.samples[0]
    assert s.region_motif.shape == (6, 24) and s.exp_label.shape == (6, 1)
    rows = tiny_frame[tiny_frame["sample"] == s.name]
    np.testing.assert_allclose(s.region_motif[:, -1], rows["accessibility"].to_numpy(), rtol=1e-6)  # accessibility last
    assert table.feature_names[0].startswith("motif_") and table.feature_names[-1] == "accessibility"


def test_excel_reads_like_csv(tmp_path, tiny_frame, tiny_csv):
    xlsx = tmp_path / "yeast.xlsx"
    tiny_frame.head(24).to_excel(xlsx, index=False)
    a = read_table(xlsx, DataConfig(), CC)
    b = validate_frame(tiny_frame.head(24).copy(), DataConfig(), CC)
    assert [s.name for s in a.samples] == [s.name for s in b.samples]
    np.testing.assert_allclose(a.samples[0].region_motif, b.samples[0].region_motif)
    assert a.samples[0].condition == b.samples[0].condition


def bad(frame, **changes):
    df = frame.copy()
    for col, value in changes.items():
        if value is KeyError:
            df = df.drop(columns=[col])
        else:
            df[col] = df[col].astype(object)
            df.loc[df.index[5], col] = value
    return df


@pytest.mark.parametrize("changes,phrase", [
    ({"medium": "LB"}, "unknown medium 'LB'"),
    ({"temperature": 60.0}, "outside 20-45 C"),
    ({"temperature": float("nan")}, "'temperature' is blank"),
    ({"accessibility": float("nan")}, "'accessibility' has 1 non-finite"),
    ({"expression": float("inf")}, "'expression' has 1 non-finite"),
    ({"motif_RAP1": "high"}, "'motif_RAP1' has 1 non-finite"),
    ({"medium": KeyError}, "missing column 'medium'"),
    ({"preculture_od600": 4.2}, "preculture_od600 4.2"),
    ({"carbon_source": "sucrose"}, "unknown carbon_source 'sucrose'"),
    ({"drug_concentration_M": -1.0}, "must be > 0"),
])
def test_validation_errors_name_the_problem(tiny_frame, changes, phrase):
    with pytest.raises(UserError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        validate_frame(bad(tiny_frame, **changes), DataConfig(), CC)


def test_condition_must_be_constant_within_a_sample(tiny_frame):
    df = tiny_frame.copy()
    df.loc[1, "temperature"] = 42.0 if df.loc[0, "temperature"] != 42.0 else 25.0
    with pytest.raises(UserError, match="two values of 'temperature'"):
        validate_frame(df, DataConfig(), CC)


def test_medium_is_case_insensitive_and_unknown_is_explicit(tiny_frame):
    df = tiny_frame.copy()
    df["medium"] = df["medium"].str.lower()
    df.loc[df["sample"] == df["sample"].iloc[0], "medium"] = "unknown"
    table = validate_frame(df, DataConfig(), CC)
    assert table.samples[0].condition["medium"] == "unknown"
    assert {s.condition["medium"] for s in table.samples} <= {"SC", "YPD", "unknown"}


def test_blank_optional_values_are_marked_missing(tiny_frame):
    df = tiny_frame.copy()
    first = df["sample"] == df["sample"].iloc[0]
    df.loc[first, "preculture_hours"] = None
    df.loc[first, "carbon_source"] = None
    table = validate_frame(df, DataConfig(), CC)
    ds = YeastDataset(table, CC, drug_vocabulary(table))
    assert not ds.conditions["numeric_present"][0, 1]  # preculture_hours
    assert ds.conditions["carbon"][0] == 0  # "not given" index
    assert ds.conditions["numeric_present"][:, 0].all()  # temperature always present


def test_no_drug_and_unseen_drug(tiny_frame):
    table = validate_frame(tiny_frame.copy(), DataConfig(), CC)
    vocab = drug_vocabulary(table)
    assert vocab[:2] == ["none", "<unknown>"]
    untreated = [i for i, s in enumerate(table.samples) if s.condition["drug"] == "none"]
    ds = YeastDataset(table, CC, ["none", "<unknown>"])  # a vocabulary without any drug seen in training
    assert (ds.conditions["drug"][untreated] == 0).all()
    treated = [i for i in range(len(table.samples)) if i not in untreated]
    assert (ds.conditions["drug"][treated] == 1).all()


def test_split_holds_out_whole_conditions(tiny_frame):
    table = validate_frame(tiny_frame.copy(), DataConfig(), CC)
    splits = split_samples(table, DataConfig(val_fraction=0.25, test_fraction=0.25), seed=0)
    key = {s.name: s.condition_key for s in table.samples}
    sets = {k: {key[n] for n in v} for k, v in splits.items()}
    assert sets["train"].isdisjoint(sets["test"]) and sets["train"].isdisjoint(sets["val"])
    assert sorted(sum(splits.values(), [])) == sorted(key)
    assert splits == split_samples(table, DataConfig(val_fraction=0.25, test_fraction=0.25), seed=0)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UserError, match="empty"):
        read_table(empty, DataConfig(), CC)
    with pytest.raises(UserError, match="does not exist"):
        read_table(tmp_path / "nope.csv", DataConfig(), CC)
