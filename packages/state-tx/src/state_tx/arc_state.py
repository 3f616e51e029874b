"""What arc-state (ArcInstitute/state, PyPI arc-state) writes, read safely, and its one-hot columns by name.

A `state tx train` run directory (arc-state 0.11.1; older versions wrote the .pkl names):

    config.yaml                     OmegaConf.to_yaml of the whole run config (plain YAML)
    var_dims.pkl                    pickle of {input_dim, gene_dim, hvg_dim, output_dim, pert_dim, batch_dim,
                                    gene_names, pert_names}
    pert_onehot_map.pt              torch.save of {name: one-hot tensor} (or {name: feature vector})
    cell_type_onehot_map.torch|pkl  torch.save / pickle.dump of {name: one-hot tensor}
    batch_onehot_map.torch|pkl      the same for batches
    checkpoints/final.ckpt          Lightning: state_dict (arc-state's names), hyper_parameters, loops, ...

cell-load builds every map with its names SORTED (generate_onehot_map: sorted(set(names)) -> rows of
eye(n)), so the control label sits wherever it sorts ("non-targeting" after upper-case genes: last);
state-tx puts the control first. Columns are therefore matched by NAME, never by position. The
names are numpy.str_ (cell-load decodes h5 categories into a numpy string array), so even the torch
files need numpy scalars: they are read with torch's weights-only unpickler plus the numpy string
scalar/dtype constructors, and the .pkl files with an unpickler that admits only tensors, numpy
scalars/arrays and containers. Anything else is refused unless --trust-checkpoint.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ftcore.errors import UserError

MAP_FILES: dict[str, tuple[str, ...]] = {
    "pert": ("pert_onehot_map.pt", "pert_onehot_map.torch", "pert_onehot_map.pkl"),
    "cell_type": ("cell_type_onehot_map.torch", "cell_type_onehot_map.pt", "cell_type_onehot_map.pkl"),
    "batch": ("batch_onehot_map.torch", "batch_onehot_map.pt", "batch_onehot_map.pkl"),
}
STATE_TX_MAP_FILES = {"pert": "pert_onehot_map.json", "cell_type": "cell_type_onehot_map.json",
                      "batch": "batch_onehot_map.json"}
# Lightning checkpoint entries that are training state, not weights (read, never loaded into the model)
LIGHTNING_EXTRAS = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step",
                    "pytorch-lightning_version", "hparams_name", "hyper_parameters")
TRUST = "pass --trust-checkpoint only if you trust where the run directory came from"


# ------------------------------------------------------------------------------- safe reading
def _numpy_multiarray():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray


def _storage_from_bytes(data: bytes):
    # torch pickles a storage inside a plain pickle as torch.save bytes: read those weights-only
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed(module: str, name: str):
    """The constructors a map / var_dims pickle may name; None for anything else."""
    ma = _numpy_multiarray()
    table = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "scalar")] = ma.scalar
        table[(mod, "_reconstruct")] = ma._reconstruct
    if (module, name) in table:
        return table[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith("numpy.dtypes") and name.endswith("DType") and name != "ObjectDType":
        import numpy.dtypes

        return getattr(numpy.dtypes, name, None)
    return None


class _Refused(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        obj = _allowed(module, name)
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj


def _torch_safe_globals() -> list:
    ma = _numpy_multiarray()
    import numpy.dtypes

    kinds = [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    return [ma.scalar, np.dtype, *[k for k in kinds if isinstance(k, type)]]


def read_pickled(path: str | Path, trust: bool = False) -> Any:
    """A torch file or plain pickle holding tensors, numpy scalars/arrays and containers, read without
    running code; anything else is refused (UserError) unless `trust`."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise UserError(f"{path} is empty; re-copy the run directory")
    try:
        if head == b"PK\x03\x04":
            with torch.serialization.safe_globals(_torch_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        with open(path, "rb") as fh:
            return _SafeUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        if not trust:
            what = str(err)
            for marker in ("GLOBAL ",):
                if marker in what:
                    what = what.split(marker, 1)[1].split()[0]
            raise UserError(f"{path}: refusing to unpickle {what[:120]} (loading it could run code); {TRUST}") from None
    except Exception as err:  # noqa: BLE001 - truncated/corrupt files raise many types
        raise UserError(f"{path}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}); "
                        "it is truncated or not a map/var_dims file") from None
    try:
        if head == b"PK\x03\x04":
            return torch.load(path, map_location="cpu", weights_only=False)
        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the user passed --trust-checkpoint
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{path}: could not be read even with --trust-checkpoint ({type(err).__name__}: {err})") from None


def plain(obj: Any) -> Any:
    """numpy scalars -> Python scalars (numpy.str_ -> str), recursively through dicts/lists/tuples;
    the core's inert stand-ins (omegaconf, Namespace) -> plain containers where the core provides them."""
    try:  # the core's safe reader returns stand-ins for omegaconf / argparse objects
        from ftcore.checkpoint.inert import plain as core_plain  # type: ignore[import-not-found]

        obj = core_plain(obj)
    except ImportError:
        pass
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "US":
        return [str(x) for x in obj.tolist()]
    if isinstance(obj, Mapping):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------------- the maps
@dataclass
class ColumnMap:
    """The encoder input columns of a run: names in column order, and their vectors."""

    kind: str  # pert | cell_type | batch
    path: Path
    names: list[str]
    vectors: torch.Tensor  # [n, width]; identity rows for one-hot maps
    onehot: bool

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def read_map(path: str | Path, kind: str, trust: bool = False) -> ColumnMap:
    """An arc-state {name: one-hot (or feature) tensor} file, or a state-tx {name: column} JSON."""
    path = Path(path)
    if path.suffix == ".json":
        import json

        table = json.loads(path.read_text())
        names = sorted(table, key=table.get)
        if [table[n] for n in names] != list(range(len(names))):
            raise UserError(f"{path}: columns are not 0..{len(names) - 1}; the file is damaged")
        return ColumnMap(kind, path, names, torch.eye(len(names)), True)
    obj = plain(read_pickled(path, trust))
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path}: expected a non-empty {{name: tensor}} map, found {type(obj).__name__}")
    names = [str(k) for k in obj]
    try:
        vectors = torch.stack([torch.as_tensor(v).float().reshape(-1) for v in obj.values()])
    except (TypeError, RuntimeError) as err:
        raise UserError(f"{path}: the map's values are not vectors of one width ({err})") from None
    onehot = bool(((vectors == 0) | (vectors == 1)).all() and (vectors.sum(1) == 1).all())
    if onehot:
        cols = vectors.argmax(1).tolist()
        if sorted(cols) != list(range(vectors.shape[1])) or len(cols) != vectors.shape[1]:
            raise UserError(f"{path}: one-hot vectors do not cover columns 0..{vectors.shape[1] - 1} once each")
        names = [n for _, n in sorted(zip(cols, names))]
        vectors = torch.eye(len(names))
    return ColumnMap(kind, path, names, vectors, onehot)


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory of a checkpoint: run/checkpoints/x.ckpt -> run; run/x.ckpt -> run."""
    parent = Path(checkpoint).resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def is_arc_run(run_dir: Path) -> bool:
    return (run_dir / "pert_onehot_map.pt").exists() and not (run_dir / "var_dims.json").exists()


def is_lightning(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and (
        "pytorch-lightning_version" in obj or "hyper_parameters" in obj)


def find_map(run_dir: Path, kind: str) -> Path | None:
    for name in (STATE_TX_MAP_FILES[kind],) + MAP_FILES[kind]:
        if (run_dir / name).exists():
            return run_dir / name
    return None


def read_run_maps(run_dir: Path, trust: bool = False) -> dict[str, ColumnMap | None]:
    return {kind: (read_map(p, kind, trust) if (p := find_map(run_dir, kind)) else None) for kind in MAP_FILES}


def source_control(run_dir: Path, hp: Mapping | None = None) -> str | None:
    """The control label of a source run (arc-state config.yaml / hyper_parameters, state-tx var_dims.json)."""
    import json

    import yaml

    if (run_dir / "var_dims.json").exists():
        return json.loads((run_dir / "var_dims.json").read_text()).get("control_pert")
    if (run_dir / "config.yaml").exists():
        try:
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            ctrl = ((cfg.get("data") or {}).get("kwargs") or {}).get("control_pert")
            if ctrl:
                return str(ctrl)
        except yaml.YAMLError:
            pass
    return str(hp["control_pert"]) if hp and hp.get("control_pert") else None


# ------------------------------------------------------------------------ arc-state -> config
def arc_model_config(hp: Mapping, source: str):
    """StateTxConfig from an arc-state checkpoint's hyper_parameters; what state-tx cannot run is refused."""
    from state_tx.model import LOSSES, StateTxConfig

    hp = plain(hp)
    key = str(hp.get("transformer_backbone_key", "GPT2"))
    bk = dict(hp.get("transformer_backbone_kwargs") or {})
    problems = []
    if key != "llama":
        problems.append(f"transformer_backbone_key={key} (state-tx runs the bidirectional llama backbone)")
    elif not bk.get("bidirectional_attention", False):
        problems.append("a causal llama backbone (bidirectional_attention false)")
    heads = int(bk.get("num_attention_heads", 0) or 0)
    if int(bk.get("num_key_value_heads", heads) or heads) != heads:
        problems.append("grouped key/value heads (num_key_value_heads != num_attention_heads)")
    for flag, what in (("confidence_token", "the confidence token"), ("use_batch_token", "the batch token"),
                       ("batch_predictor", "the batch predictor"), ("mask_attn", "masked attention"),
                       ("finetune_vci_decoder", "the VCI counts decoder")):
        if hp.get(flag):
            problems.append(what)
    if (hp.get("lora") or {}).get("enable"):
        problems.append("LoRA adapters (merge them into the backbone first)")
    if str(hp.get("activation", "gelu")) != "gelu":
        problems.append(f"activation={hp.get('activation')}")
    space = str(hp.get("output_space", "gene"))
    if space not in ("gene", "all") or (hp.get("embed_key") not in (None, "X_hvg") and space == "gene"):
        problems.append(f"output_space={space} with embed_key={hp.get('embed_key')} (embedding-space training)")
    if problems:
        raise UserError(f"{source}: this arc-state model uses {'; '.join(problems)}, which state-tx does not implement")
    hidden = int(hp["hidden_dim"])
    batch_encoder = bool(hp.get("batch_encoder", False)) and hp.get("batch_dim") is not None
    loss = str(hp.get("loss", "energy"))
    return StateTxConfig(
        input_dim=int(hp["input_dim"]), output_dim=int(hp["output_dim"]), pert_dim=int(hp["pert_dim"]),
        batch_dim=int(hp["batch_dim"]) if batch_encoder else 0, output_space=space, hidden_dim=hidden,
        cell_set_len=int(hp.get("cell_set_len", 256)), n_encoder_layers=int(hp.get("n_encoder_layers", 2)),
        n_decoder_layers=int(hp.get("n_decoder_layers", 2)),
        use_basal_projection=bool(hp.get("use_basal_projection", True)),
        n_layers=int(bk["num_hidden_layers"]), n_heads=heads,
        head_dim=int(bk.get("head_dim") or hidden // heads), intermediate_size=int(bk["intermediate_size"]),
        rms_norm_eps=float(bk.get("rms_norm_eps", 1e-6)), dropout=float(hp.get("dropout", 0.1)),
        predict_residual=bool(hp.get("predict_residual", True)), batch_encoder=batch_encoder,
        loss=loss if loss in LOSSES else "energy", blur=float(hp.get("blur", 0.05)),
    )


# ------------------------------------------------------------------- columns matched by name
@dataclass
class ColumnReport:
    kind: str
    source: str
    key: str
    matched: int = 0
    total: int = 0
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def lines(self) -> list[str]:
        what = {"pert": "perturbation"}.get(self.kind, self.kind)
        if self.note:
            return [f"ℹ {what} columns: {self.note}"]
        out = [f"✓ {self.key}: {self.matched} of {self.total} {what} columns matched BY NAME to {self.source}"]
        out += [f"    control {new!r} takes the source control {old!r}" for new, old in self.renamed.items()]
        if self.fresh:
            out.append(f"⚠ {len(self.fresh)} {what} names not in the source get a FRESH column (initialised, "
                       f"not loaded): {', '.join(self.fresh[:10])}{' ...' if len(self.fresh) > 10 else ''}")
        if self.dropped:
            out.append(f"ℹ {len(self.dropped)} source {what} names are not in this data (their columns are "
                       f"dropped): {', '.join(self.dropped[:10])}{' ...' if len(self.dropped) > 10 else ''}")
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "key": self.key, "matched": self.matched,
                "total": self.total, "fresh": self.fresh, "dropped": self.dropped, "renamed": self.renamed,
                "note": self.note}


def align_columns(weight_src: torch.Tensor, weight_new: torch.Tensor, src: ColumnMap, new_names: list[str],
                  dim: int, *, src_control: str | None = None, new_control: str | None = None,
                  key: str = "") -> tuple[torch.Tensor, ColumnReport]:
    """A tensor whose slice `dim` = j is the source's slice for new_names[j]'s source column (by name);
    names the source lacks keep weight_new's (fresh) slice. The control is matched by role."""
    rep = ColumnReport(src.kind, str(src.path), key, total=len(new_names))
    if weight_src.shape[dim] != len(src.names):
        raise UserError(f"{key} has {weight_src.shape[dim]} {src.kind} columns but {src.path} lists "
                        f"{len(src.names)} names: the map does not belong to this checkpoint")
    out = weight_new.detach().clone()
    index = src.index()
    used = set()
    for j, name in enumerate(new_names):
        look = name
        if new_control is not None and name == new_control and src_control is not None and name not in index:
            look = src_control
            if look in index:
                rep.renamed[name] = look
        if look in index:
            out.select(dim, j).copy_(weight_src.select(dim, index[look]).to(out.dtype))
            used.add(look)
            rep.matched += 1
        else:
            rep.fresh.append(name)
    rep.dropped = [n for n in src.names if n not in used]
    return out, rep
