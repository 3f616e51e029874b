"""Per setting: state-tx's mse and pearson_delta on each seed's heterogeneous screen beside the control mean and the
mean shift, and on how many seeds state-tx beats both on both metrics.
    python benchmarks/state_tx_peer/round3_summary.py OUT/*.json"""
import json
import sys
from collections import defaultdict

rows = defaultdict(dict)
for path in sys.argv[1:]:
    for r in json.load(open(path)):
        rows[r["config"]][r["seed"]] = r
for name, by_seed in rows.items():
    wins = 0
    print(f"== {name}")
    for seed, r in sorted(by_seed.items()):
        m, c, s = r["model"], r["control_mean_baseline"], r["mean_shift_baseline"]
        ok = m["mse"] < min(c["mse"], s["mse"]) and m["pearson_delta"] > max(c["pearson_delta"], s["pearson_delta"])
        wins += ok
        print(f"  seed {seed}: mse {m['mse']:.4f} (ctrl {c['mse']:.4f}, shift {s['mse']:.4f})  pearson_delta "
              f"{m['pearson_delta']:.3f} (ctrl {c['pearson_delta']:.3f}, shift {s['pearson_delta']:.3f})  "
              f"{'beats both' if ok else '-'}  {r['steps']} steps {r['wall_s']} s")
    print(f"  beats both baselines on both metrics on {wins} of {len(by_seed)} seeds")
