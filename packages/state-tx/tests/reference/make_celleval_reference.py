"""Write the cell-eval reference: a small screen's files and cell-eval's own numbers on them.

    /tmp/arcvenv/bin/python packages/state-tx/tests/reference/make_celleval_reference.py

Needs cell-eval (PyPI cell-eval; 0.8.2 made the committed JSON) and anndata; run it in cell-eval's venv.
Writes next to itself, under celleval/:
    real.h5ad, pred.h5ad     held-out cells of cell types A and B (controls included) and a noisy
                             "model" prediction of them (other cell counts per group: means are compared)
    train.h5ad               training cells of A, B, C (other perturbations in A and B), the mean-shift
                             baseline's input
    celleval_reference.json  cell-eval's per-perturbation values for three prediction files: pred.h5ad,
                             the control-mean baseline and the mean-shift baseline, both built HERE from
                             real.h5ad / train.h5ad as prediction files (independently of state_tx)
tests/test_state_tx_celleval_reference.py compares state-tx's evaluate with the JSON, without cell-eval.
A gene is named like a perturbation, so the target gene's exclusion from the discrimination score counts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent / "celleval"
CONTROL = "non-targeting"
GENES = [f"G{i:03d}" for i in range(40)]
PERTS = ["G003", "G011", "G017", "G024", "G030", "G036"]  # each knocks down the gene of its name
TRAIN_ONLY = ["G005", "G021"]
# cell-eval metrics compared (their definitions; the DE-test metrics are not reimplemented by state-tx)
METRICS = ["pearson_delta", "mse", "mae", "mse_delta", "mae_delta", "discrimination_score_l1"]


def make_files():
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(17)
    G = len(GENES)
    base = {ct: rng.uniform(0.5, 2.5, G) for ct in "ABC"}
    effect = {(ct, p): rng.normal(0, 0.6, G) * (rng.random(G) < 0.3) for ct in "ABC" for p in PERTS + TRAIN_ONLY}
    for (_ct, p), e in effect.items():
        e[GENES.index(p)] = -1.5  # knockdown of the target gene: large, and left out of the discrimination score

    def cells(ct, p, n):
        mu = base[ct] + (0 if p == CONTROL else effect[ct, p])
        return np.clip(mu + rng.normal(0, 0.4, (n, G)), 0, None)

    def adata(groups, noise=None):
        X, obs = [], []
        for ct, p, n in groups:
            x = cells(ct, p, n)
            if noise is not None and p != CONTROL:
                x = np.clip(x + noise(ct, p), 0, None)
            X.append(x)
            obs += [(p, ct)] * n
        obs = pd.DataFrame(obs, columns=["gene", "cell_type"])
        obs.index = [f"c{i:05d}" for i in range(len(obs))]
        return ad.AnnData(np.concatenate(X).astype(np.float32), obs=obs.astype("category"),
                          var=pd.DataFrame(index=GENES))

    held = [(ct, CONTROL, 40) for ct in "AB"] + [(ct, p, int(rng.integers(15, 30))) for ct in "AB" for p in PERTS]
    real = adata(held)
    # the "model": right for some perturbations, partly wrong (another perturbation's effect mixed in) for others
    mix = {(ct, p): rng.uniform(0, 0.9) for ct in "AB" for p in PERTS}
    other = {(ct, p): PERTS[(PERTS.index(p) + 1) % len(PERTS)] for ct in "AB" for p in PERTS}
    pred = adata([(ct, p, n + 7) for ct, p, n in held],
                 noise=lambda ct, p: mix[ct, p] * (effect[ct, other[ct, p]] - effect[ct, p]) + rng.normal(0, 0.1, G))
    train = adata([(ct, CONTROL, 50) for ct in "ABC"] + [(ct, p, 25) for ct in "C" for p in PERTS + TRAIN_ONLY]
                  + [(ct, p, 25) for ct in "AB" for p in TRAIN_ONLY] + [("B", p, 25) for p in PERTS[:3]])
    return real, pred, train


def baseline_files(real, train):
    """The two baselines as prediction files: every cell of a group = the baseline's profile; controls kept.

    Control mean: the cell type's control mean. Mean shift: that + the perturbation's (mean - control mean)
    averaged over the OTHER cell types of train.h5ad that have it, clipped at 0.
    """
    import pandas as pd

    def means(a):
        df = pd.DataFrame(np.asarray(a.X, dtype=np.float64), columns=GENES)
        return df.groupby([a.obs["cell_type"].astype(str).values, a.obs["gene"].astype(str).values]).mean()

    rm, tm = means(real), means(train)
    out = {}
    for name in ("control_mean_baseline", "mean_shift_baseline"):
        b = real.copy()
        X = np.asarray(b.X, dtype=np.float64)
        for i, (ct, p) in enumerate(zip(b.obs["cell_type"].astype(str), b.obs["gene"].astype(str))):
            if p == CONTROL:
                continue
            profile = rm.loc[(ct, CONTROL)].to_numpy()
            if name == "mean_shift_baseline":
                shifts = [tm.loc[(o, p)].to_numpy() - tm.loc[(o, CONTROL)].to_numpy()
                          for o in sorted(set(train.obs["cell_type"].astype(str)) - {ct}) if (o, p) in tm.index]
                # expression is >= 0 (cell-eval refuses negative values): a shift cannot take a gene below 0
                profile = np.clip(profile + (np.mean(shifts, 0) if shifts else 0), 0, None)
            X[i] = profile
        b.X = X.astype(np.float32)
        out[name] = b
    return out


def cell_eval(pred_path: Path, real_path: Path, tmp: Path) -> dict:
    exe = Path(sys.executable).with_name("cell-eval")
    out = tmp / pred_path.stem
    cmd = [str(exe), "run", "-ap", str(pred_path), "-ar", str(real_path), "-o", str(out), "--control-pert", CONTROL,
           "--pert-col", "gene", "--celltype-col", "cell_type", "--profile", "anndata", "--num-threads", "1",
           "--skip-metrics", "clustering_agreement,pearson_edistance,discrimination_score_l2,discrimination_score_cosine"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"cell-eval failed on {pred_path.name}:\n{res.stderr[-3000:]}")
    import pandas as pd

    values = {}
    for ct in "AB":
        t = pd.read_csv(out / f"{ct}_results.csv")
        values[ct] = {str(r["perturbation"]): {m: (None if pd.isna(r[m]) else float(r[m])) for m in METRICS}
                   for _, r in t.iterrows()}
    return values, " ".join(cmd[1:])


def main() -> None:
    from importlib.metadata import version

    HERE.mkdir(exist_ok=True)
    real, pred, train = make_files()
    for name, a in (("real", real), ("pred", pred), ("train", train)):
        a.write_h5ad(HERE / f"{name}.h5ad")
    ref = {"cell_eval_version": version("cell-eval"), "metrics": METRICS, "control_pert": CONTROL,
           "pert_col": "gene", "celltype_col": "cell_type", "predictions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"model": HERE / "pred.h5ad"}
        for name, b in baseline_files(real, train).items():
            files[name] = tmp / f"{name}.h5ad"
            b.write_h5ad(files[name])
        for name, path in files.items():
            ref["predictions"][name], ref["command"] = cell_eval(path, HERE / "real.h5ad", tmp)
    ref["command"] = ref["command"].replace(str(tmp), "<tmp>").replace(str(HERE), "celleval")
    (HERE / "celleval_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {HERE}/celleval_reference.json (cell-eval {ref['cell_eval_version']})")


if __name__ == "__main__":
    main()
