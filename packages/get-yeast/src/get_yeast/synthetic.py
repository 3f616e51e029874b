"""The embedded demo data: a small yeast data set with known condition effects.

Genes (one promoter region each) are laid out in genomic windows; each gene belongs to a
regulatory module whose motifs (named after the yeast TFs that read them) are enriched in its
promoter. Experimental conditions set TF activities through rules from yeast physiology:

    heat (> ~36 C)          HSF1 up, MSN2/4 up                      (heat-shock response)
    YPD vs SC               ribosome biogenesis (RAP1/SFP1) up, GCN4 down (rich medium)
    pre-culture OD600       RAP1/SFP1 down as cells approach the diauxic shift
    rapamycin               RAP1/SFP1 strongly down, MSN2/4 and GLN3 up (TOR inhibition)
    fluconazole             PDR1/3 up (pleiotropic drug resistance)
    H2O2                    YAP1 up, MSN2/4 up (oxidative stress)
    galactose / raffinose   GAL4 up, MIG1 repression off; glycerol/ethanol: HAP2/3/4/5 up
    poor nitrogen (proline, urea)  GLN3 up

Drug effects follow a Hill dose response in log10 molar concentration times a saturating
exposure time. Expression (log scale) = base + accessibility + sum_TF activity x motif score +
a neighbouring-region term (what GET's attention between regions can learn) + noise.
Some metadata cells are left blank / medium "unknown", as in real sample sheets.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

TFS = ("RAP1", "SFP1", "MSN2_4", "HSF1", "GAL4", "MIG1", "GCN4", "PDR1_3", "YAP1", "HAP2345", "GLN3", "CRZ1",
       "ABF1", "REB1", "CBF1", "MCM1", "SWI4_6", "FKH1_2", "STE12", "TEC1", "UME6", "ROX1", "AFT1")
MODULES = {  # module -> motifs enriched in its promoters
    "ribosome": ("RAP1", "SFP1"), "stress": ("MSN2_4",), "heat_shock": ("HSF1", "MSN2_4"), "galactose": ("GAL4", "MIG1"),
    "amino_acid": ("GCN4",), "drug_efflux": ("PDR1_3", "YAP1"), "oxidative": ("YAP1",), "respiration": ("HAP2345",),
    "nitrogen": ("GLN3",), "housekeeping": ("ABF1", "REB1"), "cell_cycle": ("SWI4_6", "FKH1_2", "MCM1"),
}
DRUGS = {  # name -> (EC50 in M, typical log10 molar range)
    "rapamycin": (2e-8, (-9.0, -6.5)),
    "fluconazole": (1e-5, (-6.5, -3.5)),
    "H2O2": (2e-4, (-5.0, -2.5)),
}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def tf_activity(c: dict) -> dict[str, float]:
    """The true TF activities of a condition (the rules the model should learn)."""
    a = dict.fromkeys(TFS, 0.0)
    heat = _sigmoid((c["temperature"] - 36.0) / 1.5)
    a["HSF1"] += 1.6 * heat
    a["MSN2_4"] += 0.8 * heat + (0.3 if c["temperature"] < 24 else 0.0)
    rich = 1.0 if c["medium"] == "YPD" else 0.0
    a["RAP1"] += 0.5 * rich
    a["SFP1"] += 0.4 * rich
    a["GCN4"] += 0.7 * (1 - rich)
    od = c["preculture_od600"]
    a["RAP1"] -= 0.4 * (od - 1.0)
    a["SFP1"] -= 0.3 * (od - 1.0)
    a["ABF1"] += 0.1 * (c["preculture_hours"] - 3.5)
    drug = c["drug"]
    if drug != "none":
        ec50, _ = DRUGS[drug]
        dose = _sigmoid(2.0 * (math.log10(c["drug_concentration_M"]) - math.log10(ec50)))
        dose *= 1 - math.exp(-c["drug_hours"] / 1.0)
        if drug == "rapamycin":
            a["RAP1"] -= 1.3 * dose
            a["SFP1"] -= 1.0 * dose
            a["MSN2_4"] += 0.8 * dose
            a["GLN3"] += 1.0 * dose
        elif drug == "fluconazole":
            a["PDR1_3"] += 1.4 * dose
        elif drug == "H2O2":
            a["YAP1"] += 1.5 * dose
            a["MSN2_4"] += 0.6 * dose
    carbon = c["carbon_source"]
    a["GAL4"] += {"galactose": 2.0, "raffinose": 0.5}.get(carbon, -0.3)
    a["MIG1"] += 0.6 if carbon == "glucose" else -0.4
    a["HAP2345"] += 1.2 if carbon in ("glycerol", "ethanol") else 0.0
    a["RAP1"] -= 0.5 if carbon in ("glycerol", "ethanol") else 0.0
    a["GLN3"] += 1.0 if c["nitrogen_source"] in ("proline", "urea") else 0.0
    return a


def _conditions(rng: np.random.Generator, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        drug = rng.choice(["none", "none", "rapamycin", "fluconazole", "H2O2"])
        c = {
            "medium": str(rng.choice(["SC", "YPD"])),
            "temperature": float(rng.choice([25.0, 30.0, 30.0, 37.0, 42.0])),
            "preculture_hours": float(np.round(rng.uniform(3.0, 4.0), 1)),
            "preculture_od600": float(np.round(rng.uniform(0.3, 1.6), 2)),
            "drug": str(drug),
            "drug_concentration_M": None, "drug_hours": None,
            "carbon_source": str(rng.choice(["glucose", "glucose", "galactose", "raffinose", "glycerol"])),
            "nitrogen_source": str(rng.choice(["ammonium_sulfate", "ammonium_sulfate", "glutamine", "proline", "urea"])),
        }
        if drug != "none":
            lo, hi = DRUGS[drug][1]
            c["drug_concentration_M"] = float(f"{10 ** rng.uniform(lo, hi):.3g}")
            c["drug_hours"] = float(rng.choice([0.5, 1.0, 2.0, 4.0]))
        out.append(c)
    return out


def _genome(rng: np.random.Generator, n_windows: int, n_regions: int):
    """Module per gene, motif scores [W, R, n_tf], base accessibility [W, R]."""
    modules = list(MODULES)
    module = rng.integers(0, len(modules), size=(n_windows, n_regions))
    # ~65 % of motif scores are zero (no site), the rest exponential; module motifs get strong sites.
    motifs = rng.exponential(0.3, size=(n_windows, n_regions, len(TFS))) * (rng.random((n_windows, n_regions, len(TFS))) < 0.35)
    for w in range(n_windows):
        for r in range(n_regions):
            for tf in MODULES[modules[module[w, r]]]:
                motifs[w, r, TFS.index(tf)] += rng.gamma(3.0, 0.6)
    access = rng.lognormal(0.0, 0.4, size=(n_windows, n_regions))
    return module, motifs, access


def make_yeast_table(n_conditions: int = 40, n_windows: int = 8, n_regions: int = 24, seed: int = 0,
                     missing_fraction: float = 0.12):
    """A pandas DataFrame in the package's CSV layout (see data.py), deterministic in `seed`."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    module, motifs, access0 = _genome(rng, n_windows, n_regions)
    conds = _conditions(rng, n_conditions)
    stress_genes = np.isin(module, [list(MODULES).index(m) for m in ("stress", "heat_shock", "oxidative", "drug_efflux")])
    rows = []
    for ci, c in enumerate(conds):
        act = np.array([tf_activity(c)[tf] for tf in TFS])
        stress = float(act[TFS.index("MSN2_4")] + act[TFS.index("HSF1")] + act[TFS.index("YAP1")])
        recorded = _recorded(c, rng, missing_fraction)
        for w in range(n_windows):
            # Stress opens chromatin at stress-responsive promoters.
            access = access0[w] * (1 + 0.25 * max(stress, 0.0) * stress_genes[w]) * rng.lognormal(0, 0.05, n_regions)
            drive = (motifs[w] * act).sum(1) * np.sqrt(access)
            neighbour = 0.15 * (np.roll(drive, 1) + np.roll(drive, -1))  # enhancer-like help from adjacent regions
            expr = 2.0 + 0.6 * np.log1p(access) + 0.5 * drive + neighbour + rng.normal(0, 0.15, n_regions)
            expr = np.log1p(np.exp(expr))  # softplus: expression is non-negative
            for r in range(n_regions):
                row = {"sample": f"cond{ci:02d}_win{w:02d}", "region": f"YG{w:02d}{r:03d}W"}
                row.update({f"motif_{tf}": round(float(motifs[w, r, k]), 4) for k, tf in enumerate(TFS)})
                row["accessibility"] = round(float(access[r]), 4)
                row["expression"] = round(float(expr[r]), 4)
                row.update(recorded)
                rows.append(row)
    return pd.DataFrame(rows)


def _recorded(c: dict, rng: np.random.Generator, p: float) -> dict:
    """What a sample sheet records: the true condition with some optional cells left blank."""
    rec = dict(c)
    if rng.random() < p * 0.7:
        rec["medium"] = "unknown"
    for k in ("preculture_hours", "preculture_od600", "carbon_source", "nitrogen_source"):
        if rng.random() < p:
            rec[k] = None
    if rec["drug"] != "none" and rng.random() < p * 0.5:
        rec["drug_hours"] = None
    return rec


def write_demo_data(path: str | Path, seed: int = 0, **sizes) -> Path:
    """Write the demo CSV atomically (kept if it already exists: the generator is deterministic)."""
    from ftcore.io import atomic_path

    path = Path(path)
    if not path.exists():
        df = make_yeast_table(seed=seed, **sizes)
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    return path


def write_get_checkpoint(path: str | Path, state_dict: dict, epoch: int = 799, extra_args: dict | None = None) -> Path:
    """Save weights the way GET's training script does (checkpoint-799.pth): the weights under
    'model' beside optimizer/epoch/scaler entries and an argparse.Namespace of the run's arguments.
    The Namespace and numpy scalars make the file need full unpickling (torch>=2.6 refuses it by default)."""
    import argparse

    from ftcore.io import atomic_torch_save

    args = argparse.Namespace(model="get_finetune_motif", batch_size=32, epochs=800, lr=np.float64(1e-3),
                              **(extra_args or {}))
    atomic_torch_save({"model": dict(state_dict), "optimizer": {"state": {}, "param_groups": []},
                       "epoch": epoch, "scaler": {"scale": np.float32(65536.0)}, "args": args}, path)
    return Path(path)
