"""Table of a round-4 screen: per variant, mean ± sd over seeds of VAR-ST (expected decoding) on the validation
slide (best epoch: where settings are chosen) and on the test slide, beside ridge.
    python benchmarks/var_st_round4/summarise.py runs.jsonl"""
import json
import sys
from collections import defaultdict

import numpy as np

def sd(a: np.ndarray) -> float:
    return float(a.std(ddof=1)) if len(a) > 1 else 0.0


rows = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[r["variant"]].append(r)
print(f"{'variant':22s} seeds  val (best epoch)      test              ridge val / test   greedy test")
for name, rs in sorted(rows.items(), key=lambda kv: -np.mean([r["best_epoch_val_pearson"] for r in kv[1]])):
    v = np.array([r["best_epoch_val_pearson"] for r in rs])
    t = np.array([r["var_st_expected"] for r in rs])
    g = np.array([r["var_st_greedy"] for r in rs])
    print(f"{name:22s} {len(rs):5d}  {v.mean():.3f} ± {sd(v):.3f}   {t.mean():.3f} ± {sd(t):.3f}   "
          f"{np.mean([r['ridge_val'] for r in rs]):.3f} / {np.mean([r['ridge'] for r in rs]):.3f}      {g.mean():.3f}")
