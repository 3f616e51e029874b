"""Compare a pytest-benchmark run with the committed baseline, corrected for machine speed.

    python benchmarks/check_regression.py benchmarks/baseline/cpu-2core.json .benchmarks/current.json
    python benchmarks/check_regression.py --update BASELINE CURRENT     (accept CURRENT as the new baseline)

Why calibrate: the baseline was measured on one machine, CI runs on another, or on the same one
shared with other jobs. Every run also times reference workloads (benchmarks/bench_reference.py:
fixed work no code of ours touches, one per resource: memory, compute, python) and each
benchmark's ratio current/baseline is divided by the ratio of the reference named in its
`calibrate_with` extra info. A machine twice as slow reads as 1.0x; a code change that makes one
benchmark twice as slow reads as 2.0x. Benchmarks are timed in process CPU time
(--benchmark-timer=time.process_time), so time the cores spend on other processes is not counted.

Why two statistics: a benchmark regresses only when BOTH its calibrated median ratio and its
calibrated min ratio exceed the threshold (default 1.6). Noise inflates some rounds (the median
moves, the min rarely does); a real slowdown moves both. 1.6 is below the 2x the gate must catch
and above the +-25% seen between runs on this loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REFERENCE = "test_reference_"  # + memory | compute | python
DEFAULT_KIND = "python"
THRESHOLD = 1.6


def load(path: str | Path) -> dict[str, dict]:
    """{benchmark name: {'median', 'min' (seconds), 'calibrate_with'}} of a pytest-benchmark JSON file."""
    data = json.loads(Path(path).read_text())
    return {b["name"]: {"median": b["stats"]["median"], "min": b["stats"]["min"],
                        "calibrate_with": b.get("extra_info", {}).get("calibrate_with", DEFAULT_KIND)}
            for b in data["benchmarks"]}


def speed_factors(baseline: dict[str, dict], current: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{kind: {stat: current/baseline}} of each reference workload present in both runs."""
    kinds = {n[len(REFERENCE):] for n in baseline if n.startswith(REFERENCE)} & \
            {n[len(REFERENCE):] for n in current if n.startswith(REFERENCE)}
    return {k: {s: current[REFERENCE + k][s] / baseline[REFERENCE + k][s] for s in ("median", "min")} for k in kinds}


def compare(baseline: dict[str, dict], current: dict[str, dict], threshold: float = THRESHOLD) -> tuple[list[dict], list[str]]:
    """Rows (one per benchmark in both runs, reference excluded) and the names that regressed."""
    speeds = speed_factors(baseline, current)
    rows, regressed = [], []
    for name in sorted(baseline):
        if name.startswith(REFERENCE) or name not in current:
            continue
        kind = current[name]["calibrate_with"]
        if kind not in speeds:
            raise SystemExit(f"error: {name} calibrates with {REFERENCE}{kind}, which is missing from a run")
        speed = speeds[kind]
        ratio = {stat: current[name][stat] / baseline[name][stat] / speed[stat] for stat in ("median", "min")}
        bad = all(r > threshold for r in ratio.values())
        rows.append({"name": name, "kind": kind, "baseline_median_s": baseline[name]["median"],
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
    for kind, speed in sorted(speed_factors(baseline, current).items()):
        print(f"machine speed, {kind} reference (current/baseline): median {speed['median']:.2f}, min {speed['min']:.2f}")
    print(f"{'benchmark':40} {'calib':>7} {'baseline':>10} {'current':>10} {'median x':>9} {'min x':>7}")
    for r in rows:
        flag = "  REGRESSED" if r["regressed"] else ""
        print(f"{r['name'][:40]:40} {r['kind']:>7} {r['baseline_median_s'] * 1e3:9.2f}ms {r['current_median_s'] * 1e3:9.2f}ms "
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
