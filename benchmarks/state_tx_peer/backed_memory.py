"""Peak memory of `state-tx train` on large h5ad files: the data is read lazily, so RAM does not grow
with the number of cells (only ~30 bytes of index per cell).

    python benchmarks/state_tx_peer/backed_memory.py --cells 20000 200000 --genes 2000 --out /tmp/stx_mem

Writes a dense float32 X (cells x genes, log-normalised-like values) chunk by chunk with h5py (the
file is never in memory), trains a few steps (output_space=all: X is the model input), and
records the peak RSS of the training process (ru_maxrss) next to the file size in results JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_big_h5ad(path: Path, n_cells: int, n_genes: int, n_perts: int = 50, seed: int = 0) -> None:
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    perts = np.array(["non-targeting"] + [f"GENE{i:04d}" for i in range(n_perts)])
    labels = perts[rng.integers(0, len(perts), n_cells)]
    labels[rng.random(n_cells) < 0.1] = "non-targeting"
    obs = pd.DataFrame({
        "gene": pd.Categorical(labels),
        "cell_type": pd.Categorical(np.where(rng.random(n_cells) < 0.5, "K562", "HepG2")),
        "gem_group": pd.Categorical([f"batch{b}" for b in rng.integers(0, 4, n_cells)]),
    }, index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    base = rng.gamma(2.0, 0.4, n_genes).astype(np.float32)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        ad.AnnData(obs=obs, var=var)  # validates the frames
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "layers", "obsp", "varp", "uns"):
            write_elem(f, key, {})
        ds = f.create_dataset("X", shape=(n_cells, n_genes), dtype="f4", chunks=(min(256, n_cells), n_genes))
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        step = 8192
        for s in range(0, n_cells, step):
            e = min(s + step, n_cells)
            ds[s:e] = np.clip(base + rng.normal(0, 0.3, (e - s, n_genes)).astype(np.float32), 0, None)
    os.replace(tmp, path)


def train_peak_rss(h5ad: Path, out: Path, steps: int) -> dict:
    toml = out / f"{h5ad.stem}.toml"
    toml.write_text(f'[datasets]\nbig = "{h5ad}"\n[training]\nbig = "train"\n')
    cmd = [sys.executable, "-m", "state_tx.cli", "train", f"data.kwargs.toml_config_path={toml}",
           "data.kwargs.output_space=all", "model=state_sm", "model.kwargs.cell_set_len=64",
           "training.batch_size=8", f"training.max_steps={steps}", f"training.val_freq={steps}",
           f"training.ckpt_every_n_steps={steps}", "training.progress=false", f"output_dir={out}", f"name=run_{h5ad.stem}"]
    t0 = time.time()
    # the child's peak RSS: run it alone as a grandchild so RUSAGE_CHILDREN holds just this run
    code = ("import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]);"
            "print('MAXRSS_KB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);sys.exit(r.returncode)")
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    rss_kb = int(next(l for l in res.stdout.splitlines() if l.startswith("MAXRSS_KB")).split()[1])
    return {"peak_rss_mib": round(rss_kb / 1024, 1), "train_wall_s": round(time.time() - t0, 1), "steps": steps,
            "command": " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="/tmp/stx_mem")
    ap.add_argument("--json", default=str(Path(__file__).with_name("backed_memory_results.json")))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.cells:
        h5ad = out / f"cells{n}.h5ad"
        t0 = time.time()
        if not h5ad.exists():
            write_big_h5ad(h5ad, n, args.genes)
        row = {"cells": n, "genes": args.genes, "file_mib": round(h5ad.stat().st_size / 2**20, 1),
               "dense_X_in_ram_mib": round(n * args.genes * 4 / 2**20, 1), "write_s": round(time.time() - t0, 1)}
        row.update(train_peak_rss(h5ad, out, args.steps))
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.json).write_text(json.dumps({"rows": rows, "python": sys.version.split()[0],
                                           "ru_maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
