"""Config files: every key the code reads is present in the packaged files; typos and gaps are errors."""

import dataclasses

import pytest
import yaml

from ftcore.errors import UserError
from get_yeast.config import YeastTrainingConfig, load_model_config, load_training_config, packaged_config
from get_yeast.model import RegionModelConfig, YeastModelConfig


def keys_of(cls, prefix=""):
    out = set()
    for f in dataclasses.fields(cls):
        t = cls.__dataclass_fields__[f.name].type
        sub = {"ExperimentConfig", "PretrainedConfig", "DataConfig", "LoraConfig", "TrainingConfig", "TaskConfig",
               "RegionModelConfig", "ConditionConfig", "FusionConfig"}
        name = t if isinstance(t, str) else t.__name__
        if name in sub:
            out |= keys_of(type(getattr(cls(), f.name)), prefix + f.name + ".")
        else:
            out.add(prefix + f.name)
    return out


def flat(d, prefix=""):
    out = set()
    for k, v in d.items():
        out |= flat(v, prefix + k + ".") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.mark.parametrize("name,cls", [("yeast_training.yaml", YeastTrainingConfig), ("yeast_model.yaml", YeastModelConfig),
                                      ("yeast_model_tiny.yaml", YeastModelConfig)])
def test_packaged_files_hold_exactly_the_keys_the_code_reads(name, cls):
    data = yaml.safe_load(packaged_config(name).read_text())
    assert flat(data) == keys_of(cls)


def test_packaged_configs_load():
    cfg, folder = load_training_config(None)
    model = load_model_config(folder / cfg.model_config)
    assert model.region_model == RegionModelConfig()  # the released size
    assert cfg.training.epochs > 0 and cfg.lora.r > 0


def write_without(tmp_path, section, key):
    data = yaml.safe_load(packaged_config("yeast_training.yaml").read_text())
    del data[section][key]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("section,key", [("training", "warmup_steps"), ("task", "save_predictions"), ("training", "batch_size")])
def test_missing_key_is_named(tmp_path, section, key):
    with pytest.raises(UserError, match=f"missing key '{section}.{key}'"):
        load_training_config(write_without(tmp_path, section, key))


def test_seed_typos_are_caught(tmp_path):
    text = packaged_config("yeast_training.yaml").read_text().replace("  epochs: 30", "  max_epochs: 30")
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="unknown key 'training.max_epochs'; did you mean 'training.max_steps'|unknown key 'training.max_epochs'"):
        load_training_config(path)


def test_overrides_and_bad_values():
    cfg, _ = load_training_config(None, ["training.lr=5e-4", "lora.r=4"])
    assert cfg.training.lr == 5e-4 and cfg.lora.r == 4
    with pytest.raises(UserError, match="split_by"):
        load_training_config(None, ["data.split_by=gene"])
    with pytest.raises(UserError, match="not divisible"):
        load_model_config(packaged_config("yeast_model_tiny.yaml"), ["region_model.num_heads=5"])


def test_model_files_without_the_dropout_keys_still_load(tmp_path):
    """condition.dropout and fusion.dropout came later: an older copy of yeast_model.yaml without them loads,
    with the documented defaults (those of the packaged file)."""
    data = yaml.safe_load(packaged_config("yeast_model.yaml").read_text())
    packaged = (data["condition"].pop("dropout"), data["fusion"].pop("dropout"))
    path = tmp_path / "old_model.yaml"
    path.write_text(yaml.safe_dump(data))
    model = load_model_config(path)
    assert (model.condition.dropout, model.fusion.dropout) == packaged
    with pytest.raises(UserError, match="condition.dropout"):
        load_model_config(path, ["condition.dropout=1.0"])
