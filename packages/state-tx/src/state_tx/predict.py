"""`state-tx infer` (any .h5ad -> predictions) and `state-tx predict` (the training TOML's test split).

Both simulate as arc-state's `tx infer` does: cells are grouped by (cell type, perturbation), cut
into sets of at most cell_set_len, and each set gets basal cells drawn (seeded, with replacement)
from the control cells of its cell type (and batch, under basal_mapping_strategy=batch); control
cells are simulated too (control perturbation), so a prediction file is self-contained for
cell-eval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ftcore.config import from_dict
from ftcore.data import dense, read_h5ad, require_key
from ftcore.errors import UserError
from ftcore.io import atomic_write_h5ad, check_output_dir, claim_outputs
from ftcore.training import resolve_device

from state_tx.data import pert_inputs
from state_tx.model import ARC_STATE_SKIP, StateTransitionModel, StateTxConfig, arc_state_to_ours, check_finite_params
from state_tx.config import RunConfig, load_run_config

RUN_FILES = ("config.yaml", "var_dims.json", "pert_onehot_map.json", "batch_onehot_map.json", "data_module.json")


@dataclass
class TrainedRun:
    model_dir: Path
    cfg: RunConfig
    var_dims: dict
    perts: list[str]
    batches: list[str]
    pert_table: torch.Tensor
    model: StateTransitionModel
    checkpoint: Path
    # data.kwargs.pert_train_shift: [n_cell_types + 1, n_perts, G] (data.train_shift_table) and its cell types
    shift_table: torch.Tensor | None = None
    cell_types: list[str] | None = None

    def cell_type_index(self, name: str) -> int:
        """Row of shift_table for a cell type (a cell type training never saw: the last row)."""
        names = self.cell_types or []
        return names.index(name) if name in names else len(names)


def resolve_checkpoint(model_dir: Path, checkpoint: str | None) -> Path:
    """None -> checkpoints/final.ckpt; a bare name like 'last.ckpt' -> checkpoints/last.ckpt."""
    if checkpoint is None:
        path = model_dir / "checkpoints" / "final.ckpt"
    else:
        path = Path(checkpoint)
        if not path.exists() and (model_dir / "checkpoints" / checkpoint).exists():
            path = model_dir / "checkpoints" / checkpoint
    have = sorted(p.name for p in (model_dir / "checkpoints").glob("*.ckpt")) if (model_dir / "checkpoints").is_dir() else []
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; {model_dir}/checkpoints has [{', '.join(have) or 'nothing'}]")
    if path.is_dir():
        raise UserError(f"--checkpoint {path} is a directory; give a checkpoint file (or a name in "
                        f"{model_dir}/checkpoints: {', '.join(have) or 'none there'})")
    return path


def read_json(path: Path, keys: tuple[str, ...] = ()) -> dict:
    """A run file as a dict, or one line saying it is damaged (a copy cut short, an edit gone wrong)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"{path} is not readable JSON ({type(err).__name__}); the run directory is damaged: "
                        "copy it again or retrain") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if not isinstance(data, dict) or missing:
        raise UserError(f"{path} lacks {', '.join(missing) or 'its mapping'}; the run directory is damaged or of "
                        "another program: copy it again or retrain")
    return data


def load_run(model_dir: str | Path | None, checkpoint: str | None = None, trust_checkpoint: bool = False,
             device: str = "auto") -> TrainedRun:
    """A state-tx run directory, or an arc-state one (its Lightning checkpoint, config.yaml, var_dims.pkl and
    one-hot maps); with only a checkpoint path, the run directory is the one it lies in."""
    from ftcore.checkpoint import read_checkpoint, read_state_dict
    from ftcore.loading import load_partial

    from state_tx import arc_state as arc

    if model_dir is None:
        if checkpoint is None:
            raise UserError("pass --model-dir (a training run directory) or --checkpoint (a checkpoint inside one)")
        model_dir = arc.run_dir_of(checkpoint)
    model_dir = Path(model_dir)
    if arc.is_arc_run(model_dir):
        return load_arc_run(model_dir, checkpoint, trust_checkpoint, device)
    missing = [f for f in RUN_FILES if not (model_dir / f).exists()]
    if missing:
        raise UserError(f"{model_dir} is not a state-tx training run (missing {', '.join(missing)}) nor an arc-state "
                        "one (config.yaml, var_dims.pkl, pert_onehot_map.pt); pass --model-dir output_dir/name of "
                        "`state-tx train` or `state tx train`")
    ckpt = resolve_checkpoint(model_dir, checkpoint)
    if arc.is_arc_run(arc.run_dir_of(ckpt)) and arc.run_dir_of(ckpt) != model_dir.resolve():
        raise UserError(f"{ckpt} belongs to the arc-state run {arc.run_dir_of(ckpt)}: its perturbation columns are "
                        f"defined by that run's one-hot maps, not by {model_dir}'s; pass --model-dir "
                        f"{arc.run_dir_of(ckpt)} (or leave --model-dir out)")
    cfg = load_run_config(config_file=str(model_dir / "config.yaml"))
    var_dims = read_json(model_dir / "var_dims.json", ("input_dim", "gene_names", "pert_rep", "output_space"))
    pert_map = read_json(model_dir / "pert_onehot_map.json")
    batch_map = read_json(model_dir / "batch_onehot_map.json")
    perts = sorted(pert_map, key=pert_map.get)
    batches = sorted(batch_map, key=batch_map.get)
    mcfg = from_dict(StateTxConfig, read_json(model_dir / "data_module.json", ("model_config",))["model_config"],
                     source=str(model_dir / "data_module.json"))
    if var_dims["pert_rep"] == "features":
        sd = read_state_dict(model_dir / "pert_features.safetensors")
        pert_table = sd["pert_features"]
    else:
        pert_table = torch.eye(len(perts))
    shift_table = None
    if var_dims.get("pert_train_shift", "off") != "off":
        shift_table = read_state_dict(model_dir / "pert_train_shift.safetensors")["pert_train_shift"]
        if var_dims["pert_train_shift"] == "only":
            pert_table = pert_table[:, :0]
    model = StateTransitionModel(mcfg)
    obj = read_checkpoint(ckpt, trust_pickle=trust_checkpoint)
    if arc.is_lightning(obj):
        raise UserError(f"{ckpt} is an arc-state (Lightning) checkpoint but {model_dir} is a state-tx run: the "
                        "perturbation columns would not match; pass the arc-state run directory as --model-dir")
    from ftcore.artefact import model_file

    from state_tx.train import KIND, legacy_header

    mf = model_file(obj, ckpt, kind=KIND, legacy=legacy_header, what="a state-tx checkpoint",
                    hint=f"pass a checkpoint in {model_dir}/checkpoints (final.ckpt)")
    # strict, except the names arc-state writes that state-tx has no use for (each reported, never silent)
    report = load_partial(model, mf.state, strict=True, skip=ARC_STATE_SKIP,
                          source=str(ckpt), target="state-tx model", verbose=False)
    if report.skipped:
        print(report.format(str(ckpt), "state-tx model"))
    check_finite_params(model)
    model.to(resolve_device(device)).eval()
    return TrainedRun(model_dir, cfg, var_dims, perts, batches, pert_table, model, ckpt, shift_table,
                      var_dims.get("cell_types"))


def load_arc_run(model_dir: Path, checkpoint: str | None, trust_checkpoint: bool, device: str) -> TrainedRun:
    """An arc-state `state tx train` run: the model from its Lightning checkpoint's hyper_parameters, the
    columns from its own one-hot maps (so every name keeps the column arc-state trained), with the report."""
    import yaml

    from ftcore.checkpoint import read_checkpoint
    from ftcore.loading import load_partial

    from state_tx import arc_state as arc

    ckpt = resolve_checkpoint(model_dir, checkpoint)
    obj = read_checkpoint(ckpt, trust_pickle=trust_checkpoint)
    if not arc.is_lightning(obj):
        raise UserError(f"{ckpt} is not a Lightning checkpoint (no state_dict + hyper_parameters) although "
                        f"{model_dir} is an arc-state run; pass the run's checkpoints/final.ckpt")
    hp = arc.plain(obj["hyper_parameters"])
    mcfg = arc.arc_model_config(hp, str(ckpt))
    try:
        acfg = yaml.safe_load((model_dir / "config.yaml").read_text()) or {} if (model_dir / "config.yaml").exists() else {}
    except yaml.YAMLError as err:
        raise UserError(f"{model_dir}/config.yaml is not valid YAML ({err})") from None
    dk = ((acfg.get("data") or {}).get("kwargs") or {})
    maps = arc.read_run_maps(model_dir, trust_checkpoint)
    pmap = maps["pert"]
    if pmap is None or pmap.vectors.shape[1] != mcfg.pert_dim:
        raise UserError(f"{model_dir}: pert_onehot_map.pt {'is missing' if pmap is None else f'has width {pmap.vectors.shape[1]}'}"
                        f" but the checkpoint's perturbation encoder takes {mcfg.pert_dim} inputs")
    bmap = maps["batch"]
    if mcfg.batch_encoder and (bmap is None or len(bmap.names) != mcfg.batch_dim):
        raise UserError(f"{model_dir}: the checkpoint has a batch encoder over {mcfg.batch_dim} batches but "
                        f"batch_onehot_map.{{torch,pkl}} {'is missing' if bmap is None else f'lists {len(bmap.names)}'}")
    vd_path = model_dir / "var_dims.pkl"
    avd = arc.plain(arc.read_pickled(vd_path, trust_checkpoint)) if vd_path.exists() else {}
    gene_names = [str(g) for g in (avd.get("gene_names") or hp.get("gene_names") or [])]
    if len(gene_names) != mcfg.input_dim:
        # e.g. var_dims.pkl lists every gene while the model reads the 2000 HVGs of obsm['X_hvg']
        print(f"⚠ {model_dir}: var_dims.pkl names {len(gene_names)} genes but the model reads {mcfg.input_dim} "
              f"features; the output's feature names are feature_0 .. feature_{mcfg.input_dim - 1}")
        gene_names = [f"feature_{i}" for i in range(mcfg.input_dim)]
    control = arc.source_control(model_dir, hp)
    if control is None:
        control = "non-targeting"
        print(f"⚠ {model_dir}: the run does not name its control perturbation; using {control!r} "
              "(set data.kwargs.control_pert in its config.yaml if that is wrong)")
    pick = {"pert_col": "gene", "cell_type_key": "cell_type", "batch_col": "gem_group", "control_pert": control,
            "output_space": mcfg.output_space, "basal_mapping_strategy": "random"}
    over = [f"data.kwargs.{k}={dk.get(k) if dk.get(k) is not None else v}" for k, v in pick.items()]
    if dk.get("toml_config_path"):
        over.append(f"data.kwargs.toml_config_path={dk['toml_config_path']}")
    cfg = load_run_config(over)
    var_dims = {
        "input_dim": mcfg.input_dim, "output_dim": mcfg.output_dim, "pert_dim": mcfg.pert_dim,
        "batch_dim": mcfg.batch_dim, "gene_dim": len(gene_names), "output_space": mcfg.output_space,
        "matrix_key": "obsm/X_hvg" if mcfg.output_space == "gene" else "X", "gene_names": gene_names,
        "pert_col": cfg.data.kwargs.pert_col, "cell_type_key": cfg.data.kwargs.cell_type_key,
        "batch_col": cfg.data.kwargs.batch_col, "control_pert": control,
        "pert_rep": "onehot" if pmap.onehot else "features", "layout": "arc-state",
    }
    model = StateTransitionModel(mcfg)
    sd = arc_state_to_ours({str(k): v for k, v in obj["state_dict"].items() if isinstance(v, torch.Tensor)})
    load_partial(model, sd, strict=True, skip=ARC_STATE_SKIP, source=str(ckpt), target="state-tx model", verbose=True)
    print(f"ℹ Lightning entries not loaded (training state and settings, not weights): "
          f"{', '.join(str(k) for k in obj if k != 'state_dict')}")
    print(f"ℹ columns from {model_dir}: {len(pmap.names)} perturbations ({pmap.path.name}, control {control!r} at "
          f"column {pmap.names.index(control) if control in pmap.names else '?'})"
          + (f", {len(bmap.names)} batches ({bmap.path.name})" if mcfg.batch_encoder else ""))
    check_finite_params(model)
    model.to(resolve_device(device)).eval()
    batches = bmap.names if bmap is not None else []
    return TrainedRun(model_dir, cfg, var_dims, pmap.names, batches, pmap.vectors, model, ckpt)


@torch.no_grad()
def simulate(run: TrainedRun, read: Callable[[np.ndarray], np.ndarray],
             groups: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]], seed: int, batch_size: int = 16) -> list[np.ndarray]:
    """Predictions per group. groups: (rows [n], control pool rows [m], pert index, batch codes [n], cell type
    row of run.shift_table (used with data.kwargs.pert_train_shift)).

    Full-length sets run batch_size at a time; a group's last, shorter set runs on its own (the
    model has no positions, so any set size is valid).
    """
    model, S = run.model, run.model.config.cell_set_len
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    out = [np.zeros((len(g[0]), model.config.output_dim), np.float32) for g in groups]
    windows = []  # (group id, start, end, basal rows)
    for gid, (rows, pool, *_) in enumerate(groups):
        for start in range(0, len(rows), S):
            end = min(start + S, len(rows))
            windows.append((gid, start, end, rng.choice(pool, end - start, replace=True)))
    full = [w for w in windows if w[2] - w[1] == S]
    short = [[w] for w in windows if w[2] - w[1] != S]
    chunks = [full[i:i + batch_size] for i in range(0, len(full), batch_size)] + short
    for chunk in chunks:
        basal = torch.from_numpy(np.stack([read(w[3]) for w in chunk])).to(device)
        pert = torch.stack([pert_inputs(run.pert_table, run.shift_table, groups[w[0]][2], groups[w[0]][4])
                            .expand(w[2] - w[1], -1) for w in chunk]).to(device)
        batch = torch.from_numpy(np.stack([groups[w[0]][3][w[1]:w[2]] for w in chunk]).astype(np.int64)).to(device)
        pred = model(basal, pert, batch).float().cpu().numpy()
        for w, p in zip(chunk, pred):
            out[w[0]][w[1]:w[2]] = p
    return out


def _feature_matrix(adata, run: TrainedRun) -> tuple[np.ndarray, str]:
    """The matrix the model reads, or the seed's "expected 2000, got 18080" error with the fix."""
    vd = run.var_dims
    want, genes = vd["input_dim"], vd["gene_names"]
    if vd["output_space"] == "gene" and "X_hvg" in adata.obsm:
        M, where = adata.obsm["X_hvg"], "obsm['X_hvg']"
    elif adata.n_vars == want:
        M, where = adata.X, "X"
    elif set(genes) <= set(map(str, adata.var_names)):
        # the training genes are all there by name: take them in training order
        M, where = adata[:, genes].X, f"X[:, {len(genes)} training genes by name]"
    else:
        got = adata.obsm["X_hvg"].shape[1] if "X_hvg" in adata.obsm else adata.n_vars
        space = "the HVG matrix obsm['X_hvg']" if vd["output_space"] == "gene" else "all genes in X"
        raise UserError(
            f"feature mismatch: expected {want} input features ({space}), got {got}; fix: prepare the data "
            f"like the training data: adata.obsm['X_hvg'] = adata[:, hvg_names].X with hvg_names = "
            f"var_dims.json['gene_names'] in {run.model_dir} (or restrict X to those {want} genes)")
    from ftcore.data import check_values

    M = dense(M)
    if M.ndim != 2 or M.shape[1] != want:
        raise UserError(f"feature mismatch: expected {want} input features, got {M.shape[1:]} in {where}; "
                        f"use the genes listed in {run.model_dir}/var_dims.json ('gene_names')")
    check_values(M, f"--adata {where}: NaN/inf or absurd values", row_names=list(map(str, adata.obs_names)),
                 col_names=genes if len(genes) == want else None)
    M = np.asarray(M, dtype=np.float32)
    check_kind(M, run, where)
    return M, where


def check_kind(M: np.ndarray, run: TrainedRun, where: str) -> None:
    """The input holds the kind of values the model was trained on (ftcore.data's rule): counts into a model
    of log-normalised data gives predictions that look fine and mean nothing."""
    from ftcore.data import KIND_ADVICE, expression_kind

    trained = run.var_dims.get("expression_kind")
    kind = expression_kind(M[: max(1, 1_000_000 // max(M.shape[1], 1))])
    if trained is None:  # a run from before the kind was recorded, or arc-state's: STATE expects log values
        if kind != "log":
            print(f"warning: --adata {where}: {KIND_ADVICE[kind]} (STATE models expect log-normalised values)")
        return
    if kind != trained:
        raise UserError(f"--adata {where} holds {kind} values but {run.model_dir} was trained on {trained} values "
                        f"(ftcore.data's rule): {KIND_ADVICE[kind]}")


def infer(adata_path: str, output: str, model_dir: str, checkpoint: str | None = None, pert_col: str | None = None,
          batch_col: str | None = None, control_pert: str | None = None, celltype_col: str | None = None,
          seed: int = 42, batch_size: int = 16, trust_checkpoint: bool = False, device: str = "auto") -> Path:
    import pandas as pd

    from ftcore import options as opt

    from state_tx.data import near_label, show_labels

    output = opt.check_output_file("--output", output, (".h5ad",))
    adata_path = opt.check_input_file("--adata", adata_path, ".h5ad file")
    if output.resolve() == adata_path.resolve():
        raise UserError(f"--output {output} is the --adata file; write the predictions to another file")
    run = load_run(model_dir, checkpoint, trust_checkpoint, device)
    vd = run.var_dims
    pert_col = pert_col or vd["pert_col"]
    celltype_col = celltype_col or vd["cell_type_key"]
    control_pert = control_pert or vd["control_pert"]
    adata = read_h5ad(adata_path, flag="--adata")
    for flag, col in (("--pert-col", pert_col), ("--celltype-col", celltype_col)) + ((("--batch-col", batch_col),) if batch_col else ()):
        require_key(col, adata.obs.columns, str(adata_path), what=flag, fix=f"pass {flag} with one of them")
    if adata.n_obs == 0:
        raise UserError(f"{adata_path} has no cells")
    M, where = _feature_matrix(adata, run)
    pert = adata.obs[pert_col].astype(str).to_numpy()
    ct = adata.obs[celltype_col].astype(str).to_numpy()
    is_ctrl = pert == control_pert
    if not is_ctrl.any():
        top = pd.Series(pert).value_counts().index[:8]
        raise UserError(f"{adata_path}: no control cells ({control_pert!r} in obs[{pert_col!r}]; most frequent labels: "
                        f"{show_labels(top)}{near_label(control_pert, set(pert))}); basal cells are drawn from controls: include them or pass --control-pert "
                        "with the file's control label")
    p_ix = {p: i for i, p in enumerate(run.perts)}
    # --control-pert names this file's control label ("DMSO" here, "non-targeting" in training):
    # its cells take the trained control's encoding
    p_ix[control_pert] = p_ix[vd["control_pert"]]
    unknown = sorted(set(pert) - set(p_ix))
    if unknown:
        raise UserError(f"{len(unknown)} perturbations were not seen in training (first: {show_labels(unknown[:5])}); "
                        f"the model knows {len(run.perts)} (see {run.model_dir}/pert_onehot_map.json): drop those cells "
                        "or train with them / a perturbation_features_file")
    b_ix = {b: i for i, b in enumerate(run.batches)}
    bcol = batch_col or (vd["batch_col"] if vd["batch_col"] in adata.obs else None)
    batch = (np.array([b_ix.get(b, -1) for b in adata.obs[bcol].astype(str)]) if bcol
             else np.full(adata.n_obs, -1))
    by_batch = run.cfg.data.kwargs.basal_mapping_strategy == "batch" and bcol is not None
    claim_outputs(output)  # everything is checked: a failure from here on leaves no file behind

    groups, index = [], []
    all_ctrl = np.flatnonzero(is_ctrl)
    for c in np.unique(ct):
        ct_ctrl = np.flatnonzero(is_ctrl & (ct == c))
        for p in np.unique(pert[ct == c]):
            rows = np.flatnonzero((ct == c) & (pert == p))
            keys = batch[rows] if by_batch else np.zeros(len(rows), int)
            for k in np.unique(keys):
                sub = rows[keys == k]
                pool = ct_ctrl[batch[ct_ctrl] == k] if by_batch else ct_ctrl
                pool = pool if len(pool) else (ct_ctrl if len(ct_ctrl) else all_ctrl)  # fall back as arc-state
                groups.append((sub, pool, p_ix[p], batch[sub], run.cell_type_index(str(c))))
                index.append(sub)
    preds = simulate(run, lambda r: M[r], groups, seed, batch_size)
    X = np.zeros((adata.n_obs, run.model.config.output_dim), np.float32)
    for rows, p in zip(index, preds):
        X[rows] = p
    if X.shape[1] == adata.n_vars:
        var = adata.var.copy()
    elif "highly_variable" in adata.var and int(adata.var["highly_variable"].sum()) == X.shape[1]:
        var = adata.var[adata.var["highly_variable"].astype(bool).to_numpy()].copy()
    else:
        var = pd.DataFrame(index=vd["gene_names"])
    from ftcore.data import prediction_adata

    # the core's layout: X = predictions, var_names = genes, obs / obs_names / obsm kept; layers['measured'] =
    # the input's own values of the same genes (what these cells measured; for controls relabelled with a
    # perturbation, their control expression)
    out = prediction_adata(X, list(map(str, var.index)), adata, model="state-tx", measured=M)
    out.var = var.set_axis(out.var_names)  # the input's gene annotation (highly_variable, ...) kept
    out.obsm.pop("X_hvg", None)  # the INPUT's HVG matrix, now layers['measured']: never mistaken for predictions
    out.uns["state_tx"] = {"model_dir": str(run.model_dir), "checkpoint": str(run.checkpoint), "input": where,
                           "output_space": vd["output_space"], "control_pert": control_pert, "pert_col": pert_col}
    atomic_write_h5ad(out, output)
    print(f"wrote {output}: {out.n_obs} cells x {out.n_vars} genes of predictions in X (input from {where})")
    return Path(output)


def predict(model_dir: str, checkpoint: str | None = "final.ckpt", split: str = "test", seed: int = 42,
            batch_size: int = 16, trust_checkpoint: bool = False, device: str = "auto") -> tuple[Path, dict]:
    """Predict the TOML's test (or val) split of a training run; write adata_pred/adata_real + metrics."""
    import anndata as ad
    import pandas as pd

    from state_tx.data import plan_splits, read_experiment_toml
    from state_tx.evaluate import evaluate

    run = load_run(model_dir, checkpoint, trust_checkpoint, device)
    kw = run.cfg.data.kwargs
    exp = read_experiment_toml(kw.toml_config_path)
    metas, vocab, plans, _ = plan_splits(exp, kw, run.cfg.training.train_seed, need_batch=run.model.batch_encoder is not None)
    if vocab.perts != run.perts:
        raise UserError(f"the data of {kw.toml_config_path} changed since training (perturbation list differs); "
                        "predict with the files the model was trained on, or use `state-tx infer`")
    plan = plans[split]
    if not plan.groups:
        raise UserError(f"the TOML {kw.toml_config_path} puts no cells in the {split} split; "
                        f"add a [zeroshot] or [fewshot] {split} entry, or use --split val")
    from ftcore import options as opt

    out_dir = opt.check_output_dir("predict's output", Path(model_dir) / f"eval_{run.checkpoint.stem}")
    claim_outputs(out_dir)
    check_output_dir(out_dir)  # creates it (claimed) and tries a write
    entries = [(fid, rows, plan.group_pool[g]) for g, (fid, rows) in enumerate(plan.groups)]
    entries += [(fid, plan.pools[pid][1], pid) for fid, pid in plan.controls]  # controls: simulated as well
    preds, reals, obs = [], [], []
    for fid, meta in enumerate(metas):
        mine = [e for e in entries if e[0] == fid]
        if not mine:
            continue
        groups = [(rows, plan.pools[pid][1], int(meta.pert[rows[0]]), meta.batch[rows],
                   run.cell_type_index(vocab.cell_types[meta.cell_type[rows[0]]])) for _, rows, pid in mine]
        preds += simulate(run, meta.source.read_rows, groups, seed, batch_size)
        for _, rows, _ in mine:
            reals.append(meta.source.read_rows(rows))
            obs.append(pd.DataFrame({
                kw.pert_col: np.asarray(vocab.perts)[meta.pert[rows]],
                kw.cell_type_key: np.asarray(vocab.cell_types)[meta.cell_type[rows]],
                kw.batch_col: np.asarray(vocab.batches)[meta.batch[rows]],
                "dataset": meta.dataset, "file": meta.source.name,
                "obs_name": meta.source.obs_names[rows] if meta.source.obs_names is not None else rows.astype(str),
            }))
    obs_df = pd.concat(obs, ignore_index=True)
    # the cells' own names (scanpy users join on them); prefixed with the file where names repeat across files
    names = obs_df["obs_name"].astype(str)
    if not names.is_unique:
        names = obs_df["file"].astype(str) + ":" + names
    obs_df.index = names.values if names.is_unique else obs_df.index.astype(str)
    for col in (kw.pert_col, kw.cell_type_key, kw.batch_col):
        obs_df[col] = obs_df[col].astype("category")
    from ftcore.data import prediction_adata

    genes = [str(g) for g in run.var_dims["gene_names"]]
    adata_real = ad.AnnData(X=np.concatenate(reals).astype(np.float32), obs=obs_df, var=pd.DataFrame(index=genes))
    # the core's prediction layout (X = predictions, var_names = genes, obs of the cells); the measured values
    # are adata_real.h5ad, the file cell-eval reads beside it
    adata_pred = prediction_adata(np.concatenate(preds), genes, adata_real, model="state-tx")
    atomic_write_h5ad(adata_pred, out_dir / "adata_pred.h5ad")
    atomic_write_h5ad(adata_real, out_dir / "adata_real.h5ad")
    shifts = training_shifts(metas, vocab, plans["train"], kw.control_pert)
    summary = evaluate(adata_pred, adata_real, kw.pert_col, kw.control_pert, kw.cell_type_key, out_dir,
                       train_shifts=shifts)
    summary.update({"split": split, "checkpoint": str(run.checkpoint)})
    from ftcore.io import atomic_write_json

    atomic_write_json(out_dir / "summary.json", summary)
    return out_dir, summary


def training_shifts(metas: list, vocab, plan, control_pert: str) -> dict:
    """Each training cell type's mean shift per perturbation (the mean-shift baseline's input), read from the
    training split's cells file by file in chunks (evaluate.mean_shifts)."""
    from state_tx.evaluate import mean_shifts

    rows_of: dict[int, list[np.ndarray]] = {}
    for fid, rows in plan.groups:
        rows_of.setdefault(fid, []).append(rows)
    for fid, pid in plan.controls:
        rows_of.setdefault(fid, []).append(plan.pools[pid][1])
    sources = []
    for fid, parts in sorted(rows_of.items()):
        meta, rows = metas[fid], np.unique(np.concatenate(parts))
        sources.append((lambda pos, src=meta.source, rows=rows: src.read_rows(rows[pos]),
                        np.asarray(vocab.perts)[meta.pert[rows]], np.asarray(vocab.cell_types)[meta.cell_type[rows]]))
    return mean_shifts(sources, control_pert)


def shifts_from_adata(adata, genes: list[str], pert_col: str, celltype_col: str, control_pert: str,
                      flag: str = "--adata-train") -> dict:
    """The mean-shift baseline's input from a file of training cells: the genes of the predictions taken by
    name from X, or obsm['X_hvg'] when its columns (var.highly_variable) are those genes."""
    from state_tx.evaluate import check_columns, mean_shifts

    check_columns(adata, {"--pert-col": pert_col, "--celltype-col": celltype_col}, flag)
    names = list(map(str, adata.var_names))
    if set(genes) <= set(names):
        M = adata[:, genes].X
    elif ("X_hvg" in adata.obsm and "highly_variable" in adata.var
          and [n for n, h in zip(names, adata.var["highly_variable"].astype(bool)) if h] == list(genes)):
        M = adata.obsm["X_hvg"]
    else:
        missing = [g for g in genes if g not in set(names)]
        raise UserError(f"{flag}: {len(missing)} genes of the predictions are not in its var_names (first: "
                        f"{missing[0]!r}) and obsm['X_hvg'] does not hold them; give the training cells with the "
                        "same genes")
    if (adata.obs[pert_col].astype(str) == control_pert).sum() == 0:
        raise UserError(f"{flag}: no control cells ({control_pert!r} in obs[{pert_col!r}]); shifts are measured "
                        "from each cell type's controls")
    return mean_shifts([(lambda rows: M[rows], adata.obs[pert_col].to_numpy(), adata.obs[celltype_col].to_numpy())],
                       control_pert)
