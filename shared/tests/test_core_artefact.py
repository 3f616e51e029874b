"""ftcore.artefact: the self-describing model file (save_model / load_model) and the Trainer's header."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import ftcore
from ftcore.artefact import load_model, model_header, plain_data, save_model
from ftcore.errors import UserError
from ftcore.training import Trainer, TrainConfig


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return nn.Linear(3, 2).state_dict()


def _save(path, **kw):
    args = dict(kind="toy/linear", config={"d_in": 3, "d_out": 2, "dims": (4, 5)},
                data_keys={"genes": ["a", "b", "c"], "label_key": "cell_type"}, extra={"note": "x"}, package="ftcore")
    args.update(kw)
    return save_model(path, _state(), **args)


def test_round_trip_keeps_weights_config_data_keys_and_extra(tmp_path):
    path = _save(tmp_path / "m.pth", step=7)
    got = load_model(path, kind="toy/linear")
    want = _state()
    assert got.state.keys() == want.keys() and all(torch.equal(got.state[k], want[k]) for k in want)
    assert got.kind == "toy/linear" and got.config == {"d_in": 3, "d_out": 2, "dims": (4, 5)}
    assert got.data_keys == {"genes": ["a", "b", "c"], "label_key": "cell_type"}
    assert got.extra == {"note": "x"} and got.raw["step"] == 7


def test_versions_recorded(tmp_path):
    got = load_model(_save(tmp_path / "m.pth", package="ftcore"), kind="toy/linear")
    assert got.versions == {"ftcore": ftcore.__version__, "torch": torch.__version__.split("+")[0]}
    got = load_model(_save(tmp_path / "n.pth", package="no-such-package-xyz"), kind="toy/linear")
    assert got.versions["no-such-package-xyz"] == "unknown" and got.versions["ftcore"] == ftcore.__version__


def test_file_loads_weights_only(tmp_path):
    """No pickle trust needed: plain torch with weights_only=True reads it, and so does any '["model"]' reader."""
    obj = torch.load(_save(tmp_path / "m.pth"), weights_only=True)
    assert obj["artefact"]["kind"] == "toy/linear" and set(obj["model"]) == {"weight", "bias"}


def test_wrong_kind_is_one_line_naming_the_kind(tmp_path):
    path = _save(tmp_path / "m.pth", kind="toy/other")
    with pytest.raises(UserError, match=r"m.pth is a toy/other model file, not a toy/linear model file; retrain") as err:
        load_model(path, kind="toy/linear", hint="retrain")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"^.*m.pth is the other toy; pass it as --other$"):
        load_model(path, kind="toy/linear", other_kinds={"toy/other": "{path} is the other toy; pass it as --other"})
    assert load_model(path, kind=("toy/linear", "toy/other")).kind == "toy/other"


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupted_file_is_one_line(tmp_path, damage):
    path = _save(tmp_path / "m.pth")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "flip": data[:200] + bytes(b ^ 0xFF for b in data[200:400])
                      + data[400:], "empty": b""}[damage])
    with pytest.raises(UserError) as err:
        load_model(path, kind="toy/linear")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_header_fields_and_required_keys(tmp_path):
    path = _save(tmp_path / "m.pth")
    obj = torch.load(path, weights_only=True)
    del obj["artefact"]["config"]
    torch.save(obj, tmp_path / "edited.pth")
    with pytest.raises(UserError, match="header lacks config"):
        load_model(tmp_path / "edited.pth", kind="toy/linear")
    with pytest.raises(UserError, match="without 'labels'"):
        load_model(path, kind="toy/linear", require=("genes", "labels"))
    torch.save({"weight": torch.ones(2)}, tmp_path / "bare.pth")
    with pytest.raises(UserError, match="is not a toy classifier .no 'model' weights"):
        load_model(tmp_path / "bare.pth", kind="toy/linear", what="a toy classifier")


def test_file_without_header_goes_through_legacy(tmp_path):
    torch.save({"model": _state(), "extra": {"kind": "Old", "cfg": {"d": 3}, "genes": ["g"]}}, tmp_path / "old.pth")
    with pytest.raises(UserError, match="no model header"):
        load_model(tmp_path / "old.pth", kind="toy/linear")

    def legacy(obj):
        extra = obj["extra"]
        if extra.get("kind") != "Old":
            return None
        return {"kind": "toy/linear", "config": extra["cfg"], "data_keys": {"genes": extra["genes"]}}

    got = load_model(tmp_path / "old.pth", kind="toy/linear", legacy=legacy)
    assert got.config == {"d": 3} and got.data_keys == {"genes": ["g"]} and got.versions == {}


def test_newer_format_is_refused(tmp_path):
    obj = torch.load(_save(tmp_path / "m.pth"), weights_only=True)
    obj["artefact"]["format"] = 99
    torch.save(obj, tmp_path / "new.pth")
    with pytest.raises(UserError, match="format 99 is not one this ftcore reads"):
        load_model(tmp_path / "new.pth", kind="toy/linear")


def test_plain_data_converts_numpy_and_paths_and_refuses_objects(tmp_path):
    got = plain_data({"g": [np.str_("a")], "n": np.int64(3), "x": np.float32(0.5), "p": tmp_path, "t": (1, 2)})
    assert got == {"g": ["a"], "n": 3, "x": 0.5, "p": str(tmp_path), "t": (1, 2)}
    assert type(got["g"][0]) is str and type(got["n"]) is int
    with pytest.raises(TypeError, match=r"config\['bad'\] is a object"):
        model_header(kind="toy/linear", config={"bad": object()})
    with pytest.raises(TypeError, match="ndarray"):
        save_model(tmp_path / "m.pth", _state(), kind="toy/linear", config={}, extra={"a": np.zeros(2)})
    assert not (tmp_path / "m.pth").exists()


def test_trainer_checkpoints_carry_the_header(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 3)
    data = torch.utils.data.TensorDataset(x, x[:, :2])
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=2, batch_size=4, lr=1e-2, progress=False, curve_name=None,
                      device="cpu", restore_best=True)
    header = model_header(kind="toy/linear", config={"d_in": 3}, data_keys={"genes": ["a", "b", "c"]}, package="ftcore")
    trainer = Trainer(nn.Linear(3, 2), cfg, data, data, artefact=header,
                      loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]))
    result = trainer.fit()
    for path in (result.best_path, result.last_path):
        got = load_model(path, kind="toy/linear")
        assert got.data_keys == {"genes": ["a", "b", "c"]} and got.versions["ftcore"] == ftcore.__version__
    best = load_model(result.best_path, kind="toy/linear")
    assert all(torch.equal(best.state[k], v) for k, v in trainer.model.state_dict().items())  # restore_best
    assert "optimizer" in torch.load(result.last_path, weights_only=True)  # the resume state is still there
