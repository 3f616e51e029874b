"""The compile setting through a package's own CLI on real-shaped data: samples/s from its history.json.

bench_train_mfu_gpu.py times one resident batch; batches whose shapes change every step (spatial-transfer's
cell graphs: nuclei, edges and spots per window differ; an epoch's last, smaller batch everywhere) recompile
or re-record CUDA graphs, which only the real loop shows. Every run is one subprocess of the package's CLI
with --compile off / on / graphs, the same data, seed and epochs; the figure is the median of the epochs'
train_samples_per_s after the first (which holds the compile), and the run's wall time.

    python benchmarks/bench_compile_real_path_gpu.py --out benchmarks/results/compile_real_path_h200.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# package -> CLI argv (the output directory is appended); each the package's embedded / packaged data
RUNS = {
    "spatial-transfer": ["-m", "spatial_transfer.cli", "run", "--folds", "2", "--epochs", "6", "--bulk-epochs", "6",
                         "--strategy", "full", "--no-progress", "--output"],
    "cellfm-ft 80m": ["-m", "cellfm_ft.cli", "demo", "--config", "80m", "--epochs", "4", "--no-progress", "--output"],
    "cellfm-ft tiny": ["-m", "cellfm_ft.cli", "demo", "--config", "tiny", "--epochs", "6", "--no-progress", "--output"],
}


def rates(out: Path) -> dict:
    """train_samples_per_s of every history.json under out, first epoch of each left out."""
    per_file, later = {}, []
    for path in sorted(out.rglob("history.json")):
        rows = [r for r in json.loads(path.read_text()) if isinstance(r, dict) and r.get("train_samples_per_s")]
        per_file[str(path.relative_to(out))] = [r["train_samples_per_s"] for r in rows]
        later += [r["train_samples_per_s"] for r in rows[1:]]
    return {"median_samples_s_after_first_epoch": statistics.median(later) if later else None, "per_history": per_file}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--modes", default="off,on,graphs")
    ap.add_argument("--only", default="", help="comma-separated keys of RUNS")
    ap.add_argument("--timeout-s", type=float, default=240)
    args = ap.parse_args()
    import torch

    doc = {"command": " ".join(sys.argv), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
           "torch": torch.__version__, "rows": []}
    wanted = [w for w in args.only.split(",") if w]
    for name, argv in RUNS.items():
        if wanted and name not in wanted:
            continue
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory(prefix="compile_") as tmp:
                cmd = [sys.executable, *argv, str(Path(tmp) / "run"), "--compile", mode]
                t0 = time.time()
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_s)
                    rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-3:]
                except subprocess.TimeoutExpired:
                    rc, tail = "timeout", []
                row = {"run": name, "compile": mode, "rc": rc, "wall_s": round(time.time() - t0, 1),
                       "cmd": " ".join(cmd[1:]), "tail": tail, **rates(Path(tmp) / "run")}
            doc["rows"].append(row)
            Path(args.out).write_text(json.dumps(doc, indent=1))
            print(f"{name:18s} compile={mode:6s} rc={rc} wall {row['wall_s']:6.1f} s  "
                  f"samples/s {row['median_samples_s_after_first_epoch']}", flush=True)


if __name__ == "__main__":
    main()
