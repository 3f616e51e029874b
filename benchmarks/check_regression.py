"""Compare a pytest-benchmark run with the committed baseline, corrected for machine speed.

    python benchmarks/check_regression.py benchmarks/baseline/cpu-2core.json .benchmarks/current.json
    python benchmarks/check_regression.py --update BASELINE CURRENT     (accept CURRENT as the new baseline)

Why calibrate: the baseline was measured on one machine, CI runs on another (or on the same one
shared with other jobs). Every run also times `test_reference_workload` (fixed numpy/torch/Python
work that no code of ours touches), and each benchmark's ratio current/baseline is divided by the
reference's ratio. A machine twice as slow therefore reads as 1.0x, a code change that makes one
benchmark twice as slow reads as 2.0x.

Why two statistics: a benchmark regresses only when BOTH its calibrated median ratio and its
calibrated min ratio exceed the threshold (default 1.6). Noise from other processes inflates some
rounds (the median moves, the min rarely does) or, when the reference happened to run in a quiet
moment, inflates everything by a similar factor; a real slowdown moves both. 1.6 is below the 2x
the gate must catch and above the +-25% this 2-core machine shows between runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REFERENCE = "test_reference_workload"
THRESHOLD = 1.6


def load(path: str | Path) -> dict[str, dict]:
    """{benchmark name: stats dict with 'median' and 'min' in seconds} of a pytest-benchmark JSON file."""
    data = json.loads(Path(path).read_text())
    return {b["name"]: b["stats"] for b in data["benchmarks"]}


def compare(baseline: dict[str, dict], current: dict[str, dict], threshold: float = THRESHOLD) -> tuple[list[dict], list[str]]:
    """Rows (one per benchmark in both runs, reference excluded) and the names that regressed."""
    if REFERENCE not in baseline or REFERENCE not in current:
        raise SystemExit(f"error: both runs must include {REFERENCE} (the calibration workload)")
    speed = {stat: current[REFERENCE][stat] / baseline[REFERENCE][stat] for stat in ("median", "min")}
    rows, regressed = [], []
    for name in sorted(baseline):
        if name == REFERENCE or name not in current:
            continue
        ratio = {stat: current[name][stat] / baseline[name][stat] / speed[stat] for stat in ("median", "min")}
        bad = all(r > threshold for r in ratio.values())
        rows.append({"name": name, "baseline_median_s": baseline[name]["median"],
                     "current_median_s": current[name]["median"], "median_ratio": ratio["median"],
                     "min_ratio": ratio["min"], "regressed": bad})
        if bad:
            regressed.append(name)
    return rows, regressed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline")
    parser.add_argument("current")
    parser.add_argument("--threshold", type=float, default=THRESHOLD,
                        help="calibrated slowdown factor above which a benchmark fails (default %(default)s)")
    parser.add_argument("--update", action="store_true", help="copy CURRENT over BASELINE instead of checking")
    args = parser.parse_args(argv)
    if args.update:
        load(args.current)  # refuse to install a file that is not a benchmark run
        Path(args.baseline).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.current, args.baseline)
        print(f"baseline updated: {args.baseline}")
        return 0
    baseline, current = load(args.baseline), load(args.current)
    rows, regressed = compare(baseline, current, args.threshold)
    speed = current[REFERENCE]["median"] / baseline[REFERENCE]["median"]
    print(f"machine speed factor (reference median, current/baseline): {speed:.2f}")
    print(f"{'benchmark':48} {'baseline':>10} {'current':>10} {'median x':>9} {'min x':>7}")
    for r in rows:
        flag = "  REGRESSED" if r["regressed"] else ""
        print(f"{r['name'][:48]:48} {r['baseline_median_s'] * 1e3:9.2f}ms {r['current_median_s'] * 1e3:9.2f}ms "
              f"{r['median_ratio']:9.2f} {r['min_ratio']:7.2f}{flag}")
    for name in sorted(set(baseline) - set(current)):
        print(f"{name}: in the baseline but not run now (renamed? update the baseline)")
    for name in sorted(set(current) - set(baseline)):
        print(f"{name}: new, no baseline yet (./nox -s bench -- update)")
    if regressed:
        print(f"error: {len(regressed)} benchmark(s) more than {args.threshold}x slower than the baseline "
              f"after calibration: {', '.join(regressed)}", file=sys.stderr)
        return 1
    print(f"no regression above {args.threshold}x ({len(rows)} benchmarks compared)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
