"""bench_train_mfu_gpu.py's JSON -> markdown tables: training eager / compiled / goal, and inference.

    python benchmarks/mfu_table.py benchmarks/results/train_mfu_h200.json [> table.md]

Training: one line per (package, what) with eager and compiled ms/step and MFU, the 45% goal (the
transformer packages; spatial-transfer's GNN has none) and whether the better of the two meets it,
kernels per step and what bounds the faster step: "host" when the GPU is busy for less than 70% of
the step (launches / Python / syncs leave it waiting), else "GPU". Inference: samples/s eager and
compiled, and the speed-up. A row that failed or was skipped shows its error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRANSFORMER_PACKAGES = ("state-tx", "var-st", "cellfm-ft", "get-yeast")
BUSY_FOR_GPU_BOUND = 0.7


def _fmt(value, spec: str = ".2f", scale: float = 1.0, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"


def _pairs(rows: list[dict], kind: str) -> list[tuple[str, str, dict, dict]]:
    seen: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        if r.get("kind") == kind:
            seen.setdefault((r["package"], r["what"]), {})[r["compile"]] = r
    return [(p, w, modes.get("off", {}), modes.get("on", {})) for (p, w), modes in seen.items()]


def _bound(r: dict) -> str:
    busy, ms = r.get("gpu_busy_ms"), r.get("ms_step")
    if not busy or not ms:
        return "-"
    share = busy / ms
    return f"{'GPU' if share >= BUSY_FOR_GPU_BOUND else 'host'} ({share:.0%} busy)"


def _error(*rows: dict) -> str:
    errs = [f"{r['compile']}: {r['error']}" for r in rows if r.get("error")]
    return "; ".join(e[:90] for e in errs)


def train_table(doc: dict) -> str:
    goal = doc.get("mfu_goal", 0.45)
    head = ("| package | step | batch | eager ms | eager MFU | compiled ms | compiled MFU | goal | met? "
            "| kernels/step eager → compiled | bound (faster) | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for package, what, off, on in _pairs(doc["rows"], "train"):
        mfus = [r["mfu"] for r in (off, on) if r.get("mfu") is not None]
        has_goal = package in TRANSFORMER_PACKAGES
        met = "-" if not (has_goal and mfus) else ("yes" if max(mfus) >= goal else f"no ({(max(mfus) - goal) * 100:+.1f} pts)")
        timed = [r for r in (off, on) if r.get("ms_step")]
        faster = min(timed, key=lambda r: r["ms_step"]) if timed else {}
        lines.append(
            f"| {package} | {what} | {off.get('batch', on.get('batch', '-'))} | {_fmt(off.get('ms_step'))} "
            f"| {_fmt(off.get('mfu'), '.1f', 100, '%')} | {_fmt(on.get('ms_step'))} | {_fmt(on.get('mfu'), '.1f', 100, '%')} "
            f"| {f'{goal:.0%}' if has_goal else '-'} | {met} "
            f"| {_fmt(off.get('kernels_per_step'), '.0f')} → {_fmt(on.get('kernels_per_step'), '.0f')} "
            f"| {_bound(faster)} | {_error(off, on)} |")
    return "\n".join(lines)


def infer_table(doc: dict) -> str:
    head = "| package | call | samples per call | eager /s | compiled /s | speed-up | eager MFU | note |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for package, what, off, on in _pairs(doc["rows"], "infer"):
        unit = off.get("unit", on.get("unit", ""))
        a, b = off.get("samples_s"), on.get("samples_s")
        speedup = f"{b / a:.2f}x" if a and b else "-"
        lines.append(f"| {package} | {what} | {off.get('batch', on.get('batch', '-'))} | {_fmt(a, '.1f', suffix=' ' + unit)} "
                     f"| {_fmt(b, '.1f', suffix=' ' + unit)} | {speedup} | {_fmt(off.get('mfu'), '.2f', 100, '%')} "
                     f"| {_error(off, on)} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="the file bench_train_mfu_gpu.py --out wrote")
    args = ap.parse_args()
    doc = json.loads(Path(args.json).read_text())
    print(f"{doc.get('device')}, torch {doc.get('torch')}, {doc.get('precision')}; MFU against "
          f"{doc.get('peak_tflops')} TFLOP/s; {doc.get('timing')}\n")
    print("Training step (core Trainer `_train_step`, compile off vs on)\n")
    print(train_table(doc))
    print("\nInference\n")
    print(infer_table(doc))
    print(f"\n`{doc.get('command')}`")


if __name__ == "__main__":
    main()
