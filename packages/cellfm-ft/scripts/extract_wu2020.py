"""Write cellfm-ft's packaged real data set from scirpy's wheel (run at development time, with network):

    pip download scirpy==0.22.5 --no-deps -d /tmp/scirpy_wheel
    python packages/cellfm-ft/scripts/extract_wu2020.py /tmp/scirpy_wheel/scirpy-0.22.5-py3-none-any.whl

Source: `scirpy/tests/data/wu2020_200_v0_11.h5ad` inside the wheel (scirpy, BSD-3-Clause): 200 real
T cells of Wu et al. 2020 (Nature 579, 274-278; GEO GSE139555) x 30,727 genes, raw UMI counts,
obs["cluster_orig"] = the authors' 16 T-cell subtypes, obs["patient"] = 14 patients.

Written: `src/cellfm_ft/datasets/wu2020_200.h5ad` (about 0.9 MB, gzip) and, beside it, scirpy's licence
text (`LICENSE.scirpy`, from the wheel's dist-info). Kept: every count of every
cell; the genes detected in at least one of the 200 cells (12,047: a gene of zeros only says nothing
about these cells, and CellFM reads a cell as its expressed genes anyway); obs columns cluster_orig,
patient, sample, source. Dropped: the TCR (IR_*) columns, obsm["X_umap_orig"], var["gene_ids"].
Deterministic: the same wheel gives the same matrix.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

MEMBER = "scirpy/tests/data/wu2020_200_v0_11.h5ad"
OUT = Path(__file__).resolve().parents[1] / "src" / "cellfm_ft" / "datasets" / "wu2020_200.h5ad"
OBS = ["cluster_orig", "patient", "sample", "source"]


def extract(wheel: Path, out: Path = OUT) -> Path:
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
        licence = next(n for n in zf.namelist() if n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE"))
        licence_text = zf.read(licence).decode()
    full = ad.read_h5ad(io.BytesIO(raw))
    X = sparse.csr_matrix(full.X, dtype=np.float32)
    values = X.data
    if not np.array_equal(values, np.round(values)) or values.min() < 0:
        raise SystemExit(f"{MEMBER}: X is not raw counts; was the wheel's file changed?")
    detected = np.asarray((X > 0).sum(0)).ravel() > 0
    obs = full.obs[OBS].copy()
    for col in OBS:
        obs[col] = pd.Categorical(obs[col].astype(str))
    small = ad.AnnData(X[:, detected], obs=obs, var=pd.DataFrame(index=full.var_names[detected].astype(str)))
    small.uns["source"] = {
        "file": f"{wheel.name}:{MEMBER}",
        "data": "Wu et al. 2020, Nature 579, 274-278 (GEO GSE139555)",
        "licence": "distributed in scirpy's wheel under BSD-3-Clause",
        "kept": "all 200 cells and their counts; genes detected in >= 1 cell",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    small.write_h5ad(out, compression="gzip")
    (out.parent / "LICENSE.scirpy").write_text(f"{out.name} is extracted from {wheel.name}:{MEMBER}; scirpy's licence "
                                               f"({licence}):\n\n{licence_text}")
    print(f"wrote {out}: {small.n_obs} cells x {small.n_vars} genes (of {full.n_vars}), "
          f"{obs['cluster_orig'].nunique()} subtypes, {obs['patient'].nunique()} patients, {out.stat().st_size:,} bytes")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="scirpy-*.whl (pip download scirpy --no-deps)")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    extract(args.wheel, args.output)
