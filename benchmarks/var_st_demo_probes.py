"""Why VAR-ST trails ridge on the embedded demo, and what closes the gap: probes on the demo's split.

    PYTHONPATH=packages/var-st/src:shared/src OMP_NUM_THREADS=1 \
        python benchmarks/var_st_demo_probes.py --seeds 0 1 2 --out probes.json [--variant NAME=JSON ...]

Each variant trains stage 1 and stage 2 with the package's own train_stage1 / train_stage2 on the
demo data (make_demo_adata, top-200 HVGs, the demo's slide split) and reports, on the held-out
test slide:
  - teacher-forced token accuracy per scale (true coarser tokens as inputs);
  - mean per-gene Pearson of decoding with the TRUE tokens of the first p scales and the model's
    expected codes for the rest (p = 0: the model alone; p = all: the stage-1 ceiling), so each
    scale's share of the loss is visible;
  - greedy decoding, and ridge regression (histology -> expression) on the same split;
  - on the validation slide too (where settings are chosen): the best epoch's Pearson and ridge's;
  - the model with its coordinate embedding's output zeroed (how much the coordinates cost across slides);
  - regression bounds from the features alone (`--bounds` prints only these): ridge on 16 / 32 principal
    components, RBF kernel ridge on 32 (how much a nonlinear map could add over ridge) and a one-layer
    network on 32 (with and without the coordinates) trained for the demo's stage-2 steps;
  - ridge's own prediction encoded into stage-1 tokens and decoded again (do tokens that reach ridge exist?).
A variant is JSON: {"vq": {...VQVAEConfig keys}, "var": {...VARConfig keys}, "s1": {epochs, lr, weight_decay,
batch_size}, "s2": {...}, "data": {"grid": 18, "seed": 0}}, merged over the demo's settings.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ftcore.metrics import pearson_per_gene
from var_st import cli
from var_st.data import SpotData
from var_st.model import PRESETS, TwoStageVARST, VARConfig, VQVAEConfig
from var_st.predict import predict_expression, ridge_baseline
from var_st.train import train_stage1, train_stage2

BASE = {"vq": {}, "var": {}, "data": {"grid": 18, "seed": 0},
        "s1": {"epochs": cli.DEMO_RUN["stage1_epochs"], "lr": cli.DEMO_RUN["stage1_lr"],
               "batch_size": cli.DEMO_RUN["stage1_batch_size"]},
        "s2": {"epochs": cli.DEMO_RUN["stage2_epochs"], "lr": cli.DEMO_RUN["stage2_lr"],
               "batch_size": cli.DEMO_RUN["stage2_batch_size"]}}


def merged(spec: dict) -> dict:
    out = copy.deepcopy(BASE)
    for k, v in spec.items():
        out[k].update(v)
    return out


def pearson(pred, true) -> float:
    return float(np.nanmean(pearson_per_gene(np.asarray(pred), np.asarray(true))))


@torch.no_grad()
def prefix_decode(model: TwoStageVARST, h, c, true_tokens, p: int) -> torch.Tensor:
    """True tokens for scales < p, expected codes for the rest -> expression [B, G]."""
    q, var = model.vqvae.quantizer, model.var
    cond = var.condition(h, c)
    from var_st.model import KVCache

    caches = [KVCache() for _ in var.blocks]
    split = model.vqvae.split_scales(true_tokens)
    f_hat, inputs = None, None
    for k in range(len(model.scale_sizes)):
        logits = var.step(cond, inputs, k, caches)
        if k < p:
            contrib = q.embed_scale(split[k], k)
        else:
            contrib = q.contribution(logits.float().softmax(-1) @ q.codebook, k)
        f_hat = contrib if f_hat is None else f_hat + contrib
        if k + 1 < len(model.scale_sizes):
            inputs = q.next_scale_input(f_hat, k + 1)
    return model.vqvae.decode_f_hat(f_hat)


def data_name(d: dict) -> str:
    return f"demo_seed{d['seed']}_grid{d['grid']}_slides{d.get('slides', 5)}.npz"


def load_data(d: dict, data_dir: Path | None):
    """SpotData of the demo data set `d` and the top-50 HVG columns of its training spots. With
    data_dir: read (or, where anndata/scanpy are installed, first write) an .npz of the arrays, so
    the probes also run on a machine without them."""
    data, top = _load_data(d, data_dir)
    if d.get("slide_centred"):  # each slide's mean feature vector removed (a per-slide stain offset)
        h = data.histology.copy()
        for s in np.unique(data.slides):
            h[data.slides == s] -= h[data.slides == s].mean(0)
        data.histology = h
    return data, top


def _load_data(d: dict, data_dir: Path | None):
    path = data_dir / data_name(d) if data_dir else None
    if path is None or not path.exists():
        from var_st.data import load_spots, top_variable_genes
        from var_st.synthetic import make_demo_adata

        adata = make_demo_adata(seed=d["seed"], grid=d["grid"], n_slides=d.get("slides", 5))
        data = load_spots(adata, source="demo", num_genes=200, seed=0)
        top = top_variable_genes(data.expression[data.split["train"]], 50)
        if path is not None:
            np.savez(path, expression=data.expression, histology=data.histology, coords=data.coords,
                     slides=data.slides.astype(str), genes=np.array(data.gene_names), obs=np.array(data.obs_names),
                     top=top, rule=data.split_rule, **{f"split_{k}": v for k, v in data.split.items()})
        return data, top
    z = np.load(path)
    data = SpotData(z["expression"], z["histology"], z["coords"], z["slides"], list(map(str, z["genes"])),
                    list(map(str, z["obs"])), "demo", {k: z[f"split_{k}"] for k in ("train", "val", "test")},
                    str(z["rule"]))
    return data, z["top"]


def regression_bounds(data) -> dict:
    """What regressors on the histology features alone reach on the val and test slides (no seed): ridge
    on the top 16 / 32 principal components of the per-spot standardised features (the information a
    32-d PCA condition keeps) and RBF kernel ridge on the 32 components (headroom of a nonlinear map;
    gamma and alpha picked on the validation slide from a 3 x 2 grid)."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import RidgeCV

    tr, y = data.split["train"], data.expression
    z = data.histology - data.histology.mean(1, keepdims=True)
    z = z / z.std(1, keepdims=True)
    mu = z[tr].mean(0)
    vt = np.linalg.svd(z[tr] - mu, full_matrices=False)[2]
    out = {}
    for k in (16, 32):
        pc = (z - mu) @ vt[:k].T
        fit = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(pc[tr], y[tr])
        out[f"pcr{k}"] = {s: pearson(fit.predict(pc[data.split[s]]), y[data.split[s]]) for s in ("val", "test")}
    pc = (z - mu) @ vt[:32].T
    pc = pc / pc[tr].std()
    ym = y[tr].mean(0)
    fit = KernelRidge(kernel="rbf", gamma=0.015, alpha=1.0).fit(pc[tr], y[tr] - ym)
    out["kernel_ridge_pc32"] = {s: pearson(fit.predict(pc[data.split[s]]), y[data.split[s]]) for s in ("val", "test")}
    # a small neural regressor on the same 32 components, trained for as many steps as the demo's stage 2
    # (8 epochs of batch 32, Adam 2e-3): what a network, rather than 241 token classifications, gets from
    # them; and the same with the per-slide coordinates appended (the condition VAR-ST sees)
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    ys = (y[tr] - ym) / (y[tr].std(0) + 1e-3)
    for name, feats in (("mlp_pc32", pc), ("mlp_pc32_coords", np.c_[pc, data.coords * 3])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            net = MLPRegressor(hidden_layer_sizes=(64,), alpha=10.0, max_iter=8, batch_size=32,
                               learning_rate_init=2e-3, random_state=0).fit(feats[tr], ys)
        out[name] = {s: pearson(net.predict(feats[data.split[s]]), y[data.split[s]]) for s in ("val", "test")}
    return out


def ridge_round_trip(spec: dict, seed: int, cache: dict, device: str = "cpu", data_dir: Path | None = None) -> dict:
    """Stage 1 alone (trained as run_variant does, or its cached checkpoint): ridge's prediction of the val
    and test slides encoded into tokens and decoded with the first 1 .. K scales; and the measured
    expression's round trip (the ceiling)."""
    spec = merged(spec)
    key = json.dumps(spec["data"], sort_keys=True)
    if key not in cache:
        cache[key] = load_data(spec["data"], data_dir)
    data, _ = cache[key]
    model = run_variant(spec, seed, cache, device, data_dir, stage1_only=True)
    q, out = model.vqvae.quantizer, {"seed": seed}
    for s in ("val", "test"):
        idx = data.split[s]
        true = data.expression[idx]
        ridge = ridge_baseline(data, data.split["train"], idx)
        tokens = model.vqvae.split_scales(model.vqvae.encode_tokens(torch.as_tensor(ridge, device=device)))
        f_hat, prefix = None, []
        for k, t in enumerate(tokens):
            h = q.embed_scale(t, k)
            f_hat = h if f_hat is None else f_hat + h
            prefix.append(pearson(model.vqvae.decode_f_hat(f_hat).cpu(), true))
        out[s] = {"ridge": pearson(ridge, true), "ridge_tokens_first_k_scales": prefix,
                  "measured_round_trip": pearson(model.vqvae.reconstruct(torch.as_tensor(true, device=device)).cpu(), true)}
    return out


def run_variant(spec: dict, seed: int, cache: dict, device: str = "cpu", data_dir: Path | None = None,
                stage1_only: bool = False):
    t0 = time.time()
    spec = merged(spec)
    key = json.dumps(spec["data"], sort_keys=True)
    if key not in cache:
        cache[key] = load_data(spec["data"], data_dir)
    data, top = cache[key]
    vq0, var0 = PRESETS["demo"]
    vq = VQVAEConfig(**{**asdict(vq0), **spec["vq"]})
    var = VARConfig(**{**asdict(var0), "vocab_size": vq.vocab_size, **spec["var"]})
    var.histology_dim = data.histology.shape[1]
    torch.manual_seed(seed)
    model = TwoStageVARST(len(data.gene_names), vq, var, current_stage=1)
    common = {"max_steps": None, "patience": None, "seed": seed, "device": device, "progress": False,
              "compile": "off", "precision": "fp32"}
    s1_key = hashlib.sha1(json.dumps([spec["vq"], spec["s1"], spec["data"], seed, device], sort_keys=True)
                          .encode()).hexdigest()[:16]
    s1_path = (data_dir / "stage1_cache" / f"{s1_key}.ckpt") if data_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        if s1_path is None or not s1_path.exists():  # stage 1 of this config, data and seed: once
            r1 = train_stage1(model, data, Path(tmp) / "s1", {**common, **spec["s1"]}, {})
            if s1_path is not None:
                s1_path.parent.mkdir(exist_ok=True)
                shutil.copy(r1.best_path, s1_path)
            s1_path = s1_path or r1.best_path
        if stage1_only:
            return TwoStageVARST.from_stage1(s1_path, var).eval().to(device)
        t1 = time.time() - t0
        torch.manual_seed(seed)
        model = TwoStageVARST.from_stage1(s1_path, var)
        r2 = train_stage2(model, data, Path(tmp) / "s2", {**common, **spec["s2"]}, {})
        if data_dir is not None:
            (data_dir / "models").mkdir(exist_ok=True)
            model.save_complete_model(data_dir / "models" / f"{s1_key}_{hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]}.ckpt")
    t2 = time.time() - t0 - t1
    model.eval().to(device)
    te, tr = data.split["test"], data.split["train"]
    x = torch.as_tensor(data.expression[te], device=device)
    h = torch.as_tensor(data.histology[te], device=device)
    c = torch.as_tensor(data.coords[te], device=device)
    true_tok = model.vqvae.encode_tokens(x)
    logits = model(h, c, true_tok)
    hit = (logits.argmax(-1) == true_tok).float()
    acc = {f"s{n}": float(a.mean()) for n, a in zip(model.scale_sizes, torch.split(hit, list(model.scale_sizes), 1))}
    # the majority token of each position in training: what a condition-blind model would get
    tr_tok = model.vqvae.encode_tokens(torch.as_tensor(data.expression[tr], device=device))
    mode = torch.mode(tr_tok, 0).values
    maj = {f"s{n}": float(a.float().mean()) for n, a in
           zip(model.scale_sizes, torch.split(true_tok == mode, list(model.scale_sizes), 1))}
    true = data.expression[te]
    prefix = {f"true_first_{p}": pearson(prefix_decode(model, h, c, true_tok, p).cpu(), true)
              for p in range(len(model.scale_sizes) + 1)}
    ridge = ridge_baseline(data, tr, te)
    # stage 1's share: ridge's prediction encoded into tokens and decoded again (hard tokens, no stage 2);
    # if this kept ridge's number, tokens that reach ridge exist and the gap is stage 2's
    ridge_tokens_decoded = pearson(model.vqvae.reconstruct(torch.as_tensor(ridge, device=device)).cpu(), true)
    va = data.split["val"]  # settings are chosen on the validation slide: ridge's number there
    ridge_val = pearson(ridge_baseline(data, tr, va), data.expression[va])
    # the condition embedding: how much of the expression a ridge fit on it recovers (train -> test)
    from sklearn.linear_model import RidgeCV

    @torch.no_grad()
    def cond_of(idx):
        return model.var.condition(torch.as_tensor(data.histology[idx], device=device),
                                   torch.as_tensor(data.coords[idx], device=device)).cpu().numpy()
    cond_ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(cond_of(tr), data.expression[tr]).predict(cond_of(te))
    by_temperature = {str(t): pearson(predict_expression(model, data, te, decoding="expected", temperature=t), true)
                      for t in (0.5, 0.7, 1.5)}
    exp_pred = predict_expression(model, data, te, decoding="expected")
    # the coordinates' share: the same model with its coordinate embedding's output set to zero
    lin = model.var.coord_embed[-1]
    saved = lin.weight.detach().clone(), lin.bias.detach().clone()
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
    no_coords = {s: pearson(predict_expression(model, data, data.split[s], decoding="expected"),
                            data.expression[data.split[s]]) for s in ("val", "test")}
    with torch.no_grad():
        lin.weight.copy_(saved[0])
        lin.bias.copy_(saved[1])
    greedy = predict_expression(model, data, te, decoding="greedy")
    hist = r2.history
    return {"seed": seed, "spec": spec, "stage1_s": round(t1, 1), "stage2_s": round(t2, 1),
            "var_st_expected": pearson(exp_pred, true), "var_st_greedy": pearson(greedy, true),
            "var_st_expected_top50": float(np.nanmean(pearson_per_gene(exp_pred, true)[top])),
            "ridge": pearson(ridge, true), "ridge_val": ridge_val, "ridge_tokens_decoded": ridge_tokens_decoded, "ridge_on_condition_embedding": pearson(cond_ridge, true),
            "expected_by_temperature": by_temperature, "ridge_top50": float(np.nanmean(pearson_per_gene(ridge, true)[top])),
            "expected_coord_embedding_zeroed": no_coords, "bounds": regression_bounds(data),
            "teacher_forced_acc": acc, "majority_acc": maj, "prefix": prefix,
            "best_epoch_val_pearson": r2.best_metric,
            "val_pearson_by_epoch": [round(r["val_pearson"], 4) for r in hist if "val_pearson" in r]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON (default: the demo as it is)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data_dir", type=Path, default=None, help="npz copies of the data sets (written if missing)")
    ap.add_argument("--only_data", action="store_true", help="write the npz files of the variants' data and stop")
    ap.add_argument("--bounds", action="store_true", help="print the regression bounds of the variants' data and stop")
    ap.add_argument("--round_trip", action="store_true",
                    help="stage 1 only: ridge's prediction through the VQ-VAE, per seed (prints JSON lines)")
    args = ap.parse_args()
    variants = dict(v.split("=", 1) for v in args.variant) or {"demo": "{}"}
    results, cache = [], {}
    if args.bounds:
        for name, spec in variants.items():
            d = merged(json.loads(spec))["data"]
            data, _ = load_data(d, args.data_dir)
            tr, va, te = (data.split[k] for k in ("train", "val", "test"))
            ridge = {s: pearson(ridge_baseline(data, tr, i), data.expression[i]) for s, i in (("val", va), ("test", te))}
            print(json.dumps({"variant": name, "data": d, "n_train": int(len(tr)), "ridge": ridge,
                              **regression_bounds(data)}), flush=True)
        return
    if args.round_trip:
        for name, spec in variants.items():
            for seed in args.seeds:
                print(json.dumps({"variant": name, **ridge_round_trip(json.loads(spec), seed, cache, args.device,
                                                                       args.data_dir)}), flush=True)
        return
    if args.only_data:
        for spec in variants.values():
            load_data(merged(json.loads(spec))["data"], args.data_dir)
        return
    for name, spec in variants.items():
        for seed in args.seeds:
            r = run_variant(json.loads(spec), seed, cache, args.device, args.data_dir)
            r["variant"] = name
            results.append(r)
            print(json.dumps({k: r[k] for k in ("variant", "seed", "var_st_expected", "var_st_greedy", "ridge",
                                                "best_epoch_val_pearson", "ridge_val", "ridge_tokens_decoded",
                                                "expected_coord_embedding_zeroed",
                                                "bounds",
                                                "teacher_forced_acc", "prefix",
                                                "ridge_on_condition_embedding", "expected_by_temperature", "stage1_s", "stage2_s",
                                                "val_pearson_by_epoch")}), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1))
    for name in variants:
        rs = [r for r in results if r["variant"] == name]
        v = np.array([r["var_st_expected"] for r in rs])
        g = np.array([r["ridge"] for r in rs])
        print(f"{name:30s} VAR-ST {v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}   "
              f"ridge {g.mean():.3f} +- {g.std(ddof=1) if len(g) > 1 else 0:.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
