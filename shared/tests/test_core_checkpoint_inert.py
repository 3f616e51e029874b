"""Real training checkpoints (argparse, numpy 1.x / 2.x scalars, omegaconf) read without the opt-in;
pickles that would run code stay refused. Fixtures: fixtures/real_pickles/make_real_pickles.py
writes them with the real libraries (omegaconf, numpy 1.26 and 2.x) in throwaway venvs."""

from __future__ import annotations

import collections
import io
import os
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ftcore.checkpoint import plain, read_checkpoint, read_state_dict
from ftcore.checkpoint.inert import InertNamespace
from ftcore.errors import UserError

REAL = Path(__file__).parent / "fixtures" / "real_pickles"


def pickled_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(io.BytesIO(data)) if op.name == "GLOBAL"}


def test_fixtures_hold_the_real_libraries_globals():
    assert "numpy._core.multiarray scalar" in pickled_globals(REAL / "mae_numpy2.pth")
    assert "numpy.core.multiarray scalar" in pickled_globals(REAL / "mae_numpy1.pth")
    assert {"argparse Namespace", "numpy dtype"} <= pickled_globals(REAL / "mae_numpy1.pth")
    found = pickled_globals(REAL / "lightning_omegaconf.ckpt")
    assert {"omegaconf.dictconfig DictConfig", "omegaconf.listconfig ListConfig", "omegaconf.nodes AnyNode",
            "omegaconf.base ContainerMetadata", "typing Any", "collections defaultdict"} <= found


def test_torch_alone_refuses_them():
    for name in ("mae_numpy1.pth", "mae_numpy2.pth", "lightning_omegaconf.ckpt"):
        with pytest.raises(Exception, match="Unsupported global"):
            torch.load(REAL / name, weights_only=True)


@pytest.mark.parametrize("name", ["mae_numpy1.pth", "mae_numpy2.pth"])
def test_mae_era_checkpoint_reads_without_trust(name):
    obj = read_checkpoint(REAL / name)
    assert isinstance(obj["args"], InertNamespace) and obj["args"].epochs == 800
    assert obj["args"].lr == 5e-4 and type(obj["args"].lr) is float
    group = obj["optimizer"]["param_groups"][0]
    assert (group["lr"], group["weight_decay"]) == (1.5e-6, 0.05) and type(group["lr"]) is float
    assert obj["epoch"] == 799 and obj["scaler"]["_growth_tracker"] == 17
    sd = read_state_dict(REAL / name)
    assert sorted(sd) == ["encoder.bias", "encoder.weight", "head.weight"]
    g = torch.Generator().manual_seed(0)  # the generator's weights, bit for bit
    assert torch.equal(sd["encoder.weight"], torch.randn(8, 4, generator=g))


def test_lightning_omegaconf_checkpoint_reads_without_trust():
    obj = read_checkpoint(REAL / "lightning_omegaconf.ckpt")
    hp = plain(obj["hyper_parameters"])
    assert hp["model"]["cfg"]["num_layers"] == 12 and hp["training"]["devices"] == [0, 1]
    assert hp["finetune"] == {"checkpoint": None, "strict": True, "rename_config": {"model.": ""},
                              "patterns_to_freeze": []}
    assert obj["hparams_type"].__name__ == "DictConfig"
    assert sorted(read_state_dict(REAL / "lightning_omegaconf.ckpt")) == [
        "model.encoder.bias", "model.encoder.weight", "model.head.weight"]


def test_reading_imports_none_of_the_pickled_libraries():
    code = ("import sys; from ftcore.checkpoint import read_checkpoint; "
            f"read_checkpoint({str(REAL / 'lightning_omegaconf.ckpt')!r}); read_checkpoint({str(REAL / 'mae_numpy1.pth')!r}); "
            "sys.exit('omegaconf imported' if 'omegaconf' in sys.modules else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


class _Payload:
    """Pickles as a call of `func(*args)`: what an attacker writes into a checkpoint."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path):
    cmd = f"touch {marker}"
    return {
        "os.system": _Payload(os.system, cmd),
        "eval": _Payload(eval, f"open({str(marker)!r}, 'w')"),
        "exec": _Payload(exec, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", str(marker)]),
        "getattr": _Payload(getattr, torch.Tensor, "__init__"),
        # an allowed stand-in's name carrying a dangerous argument: the argument itself is refused
        "defaultdict(os.system)": _Payload(collections.defaultdict, os.system),
        "Namespace(built from eval)": {"args": InertNamespace(x=_Payload(eval, "1"))},
    }


@pytest.mark.parametrize("case", list(_payloads(Path("x"))))
def test_pickles_that_would_run_code_stay_refused(case, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hook": _payloads(marker)[case]}, path)
    for read in (read_checkpoint, read_state_dict):
        with pytest.raises(UserError, match="refusing to unpickle .*--trust-checkpoint"):
            read(path)
    assert not marker.exists()


def test_numpy_strings_bytes_and_complex_scalars_read(tmp_path):
    """arc-state's one-hot maps are keyed by numpy.str_; numpy bytes and complex scalars decode too."""
    import numpy as np

    path = tmp_path / "pert_onehot_map.pt"
    torch.save({np.str_("non-targeting"): torch.zeros(3), np.str_("ABL1"): torch.ones(3),
                "b": np.bytes_(b"ab"), "c": np.complex128(1.5 - 2j), "f16": np.float16(0.5), "u8": np.uint8(7)}, path)
    assert {"numpy._core.multiarray scalar", "numpy dtype"} <= pickled_globals(path) or \
        {"numpy.core.multiarray scalar", "numpy dtype"} <= pickled_globals(path)
    obj = read_checkpoint(path)
    assert sorted(k for k in obj if k.isupper() or "-" in k) == ["ABL1", "non-targeting"]
    assert (obj["b"], obj["c"], obj["f16"], obj["u8"]) == (b"ab", 1.5 - 2j, 0.5, 7)


def test_other_numpy_scalars_are_refused_and_read_with_trust(tmp_path):
    import numpy as np

    path = tmp_path / "dates.pt"
    torch.save({"w": torch.zeros(2), "when": np.datetime64("2023-05-01")}, path)
    with pytest.raises(UserError, match="refusing to unpickle.*--trust-checkpoint"):
        read_checkpoint(path)
    assert read_checkpoint(path, trust_pickle=True)["when"] == np.datetime64("2023-05-01")


def test_build_state_cannot_smuggle_dunders():
    ns = InertNamespace()
    ns.__setstate__({"__setstate__": print, "__class__": int, "lr": 1.0, 3: "x"})
    assert vars(ns) == {"lr": 1.0} and type(ns) is InertNamespace


def test_a_library_registering_the_real_defaultdict_changes_nothing():
    """torch_geometric registers collections.defaultdict with torch at import (so in any process that imported
    it, e.g. a test run after spatial-transfer's): the omegaconf checkpoint still reads, and the registration
    is left as it was."""
    import collections

    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([collections.defaultdict])
    try:
        obj = read_checkpoint(REAL / "lightning_omegaconf.ckpt")
        assert isinstance(obj, dict)
        assert collections.defaultdict in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)
