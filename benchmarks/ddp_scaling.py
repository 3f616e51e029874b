"""DDP equivalence and scaling of every package's training CLI: 1 process x global batch G against
N processes (torchrun) x G/N, same seed, same data, same number of steps.

    python benchmarks/ddp_scaling.py --device cpu --nproc 2 --out benchmarks/results/ddp_equivalence_cpu_gloo.json
    python benchmarks/ddp_scaling.py --device cuda --nproc 2 --out benchmarks/results/ddp_scaling_h200x2.json
    python benchmarks/ddp_scaling.py --packages get-yeast state-tx ...

Per package the data and sizes are the package's own tests' (packages/<name>/tests/conftest.py,
loaded as tests/test_gpu_smoke.py loads them), dropout 0 where the CLI allows it (where it does not,
a control run makes nn.Dropout the identity, to show what is left without it). Both runs are
real CLI invocations (`python -m <pkg>.cli ...` and `python -m torch.distributed.run --standalone
--nproc_per_node=N -m <pkg>.cli ...`); the Trainer picks gloo on the CPU and NCCL on CUDA
(ftcore.distributed.init_distributed). The figures come from the history JSON files the runs write:
`train_loss` per validation (the mean over the stretch's global batches, so both runs log it
after the same samples) and `train_samples_per_s` (global samples per second of training).

At equal global batch the N-process run takes the same optimizer steps on the same samples
(EpochSampler gives rank r every N-th index of the epoch's order; DDP averages the per-rank mean
gradients), as long as every global batch splits evenly over the ranks: the training sets are
chosen with sizes that do, and each comparison says what else may make its runs differ and the
tolerance stated for it. Throughput of tiny models on a shared CPU measures overhead, not scaling:
the scaling figure needs the GPUs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from repo_helpers import package_tests  # noqa: E402  (each package's tiny test sizes)
FP32_RTOL = 1e-4  # same steps on the same samples in float32: only the order of sums differs
BF16_RTOL = 2e-2  # CUDA runs train under bf16 autocast: per-rank batch shapes change the rounding


# A control, not the CLI as users run it: the CLI with every nn.Dropout made the identity by this harness
# (for a package whose dropout is no CLI option), to show what remains of a difference without it.
NO_DROPOUT = "import runpy, torch; torch.nn.Dropout.forward = lambda self, x: x; runpy.run_module({!r}, run_name='__main__')"


@dataclass
class Comparison:
    """One training command compared between 1 process and N."""

    name: str  # its run folder
    label: str  # what is trained
    module: str  # the package's CLI module, run with python -m
    argv: Callable[[Path, int], list[str]]  # (output dir, batch per process) -> CLI arguments
    histories: tuple[str, ...]  # history JSON files under the output dir, in training order
    global_batch: int
    rtol: float = FP32_RTOL  # stated tolerance on the CPU (fp32); on CUDA at least BF16_RTOL
    differs: str = ""  # why the runs need not agree exactly ("" = they should, up to float sums)
    report: tuple[str, ...] = ()  # further history keys copied into the records
    no_dropout: bool = False  # run through the NO_DROPOUT control instead of python -m

    def command(self, out: Path, nproc: int) -> list[str]:
        """The run on 1 process (global batch) or under torchrun on nproc (global batch / nproc each)."""
        cli = ["-c", NO_DROPOUT.format(self.module)] if self.no_dropout else ["-m", self.module]
        args = self.argv(out, self.global_batch // nproc)
        if nproc == 1:
            return [sys.executable, *cli, *args]
        # torchrun runs a module with -m; the control's `python -c` goes through --no-python
        launch = ["--no-python", sys.executable, *cli] if self.no_dropout else cli
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                *launch, *args]


def replace_args(argv: list[str], values: dict[str, object]) -> list[str]:
    """argv (a test's command line) with our values: `--flag` replaces the word after the flag and
    `key=` the whole `key=...` word; appended where absent."""
    out = list(argv)
    for key, value in values.items():
        if key.endswith("="):
            hits = [i for i, a in enumerate(out) if a.startswith(key)]
            if hits:
                out[hits[-1]] = f"{key}{value}"
            else:
                out.append(f"{key}{value}")
        else:
            hits = [i for i, a in enumerate(out) if a == key]
            if hits:
                out[hits[-1] + 1] = str(value)
            else:
                out += [key, str(value)]
    return out


# ----------------------------------------------------------------------------- packages
def setup_cellfm_ft(work: Path, device: str) -> list[Comparison]:
    from cellfm_ft.demo import demo_vocabulary, write_demo_checkpoint
    from cellfm_ft.synthetic import synthetic_cells

    conf = package_tests("cellfm-ft")
    inputs = {"data": work / "cells.h5ad", "ckpt": work / "cellfm_tiny.ckpt"}
    adata = synthetic_cells(n_cells=96, n_genes=64, n_donors=4, seed=1)  # the cellfm_inputs fixture's
    adata.write_h5ad(inputs["data"])
    write_demo_checkpoint(inputs["ckpt"], demo_vocabulary(adata.var_names.tolist()), config="tiny", seed=0)
    # donor D2 held out (as the smoke test): 76 training cells, global batch 16 -> 4 x 16 + 12, even per rank
    def argv(out: Path, b: int) -> list[str]:
        return replace_args(conf._train_argv(inputs, out, "--test-donors", "D2"),
                            {"--batch-size": b, "--seed": 0, "--device": device})

    return [
        Comparison("finetune", "classifier fine-tuning (tiny CellFM, cls_encoder), as users run it", "cellfm_ft.cli",
                   argv, ("history.json",), global_batch=16, rtol=5e-2,
                   differs="dropout is part of the CellFM architecture (enc_dropout 0.1, no CLI option): each rank "
                           "draws its own masks for its part of the batch, so the runs differ by dropout noise "
                           "(the control below runs without it)"),
        Comparison("finetune_no_dropout", "control: the same command, nn.Dropout made the identity by this "
                   "harness", "cellfm_ft.cli", argv, ("history.json",), global_batch=16, no_dropout=True),
    ]


def setup_get_yeast(work: Path, device: str) -> list[Comparison]:
    from get_yeast.config import load_model_config, packaged_config
    from get_yeast.synthetic import make_yeast_table, write_get_checkpoint

    conf = package_tests("get-yeast")
    model_yaml = packaged_config("yeast_model_tiny.yaml")
    data = work / "yeast.csv"
    make_yeast_table(n_conditions=8, n_windows=2, n_regions=6, seed=3).to_csv(data, index=False)  # tiny_frame
    ckpt = write_get_checkpoint(work / "checkpoint-799.pth", conf.get_layout_state_dict(load_model_config(model_yaml)))
    sets = [x for kv in [*conf.TINY_TRAIN, "lora.dropout=0.0"] for x in ("--set", kv)]
    # 10 training samples (conditions held out): batches 4 + 4 + 2, even per rank
    return [Comparison(
        "train", "LoRA fine-tuning (tiny GET + conditions, LoRA dropout 0)", "get_yeast.cli",
        lambda out, b: ["train", "--data", str(data), "--output", str(out), "--model-config", str(model_yaml),
                        "--no-progress", *sets, "--checkpoint", str(ckpt), "--trust-checkpoint", "--epochs", "3",
                        "--batch-size", str(b), "--seed", "0", "--device", device],
        ("history.json",), global_batch=4)]


def setup_spatial_transfer(work: Path, device: str) -> list[Comparison]:
    from spatial_transfer.synthetic import write_demo_data

    conf = package_tests("spatial-transfer")
    # The tests' data with 9 bulk samples instead of 8: 1 validates, 8 train, so every global batch of 4
    # splits evenly over 2 ranks (7 would pad the last rank's batch with a repeated sample).
    data = write_demo_data(work / "data", dataclasses.replace(conf.TINY_SPEC, n_bulk_samples=9))
    sets = [x for s in conf.TINY_SETS for x in ("--set", s)]
    return [Comparison(
        "run", "bulk pretraining -> transfer (full) -> 2-fold CV", "spatial_transfer.cli",
        lambda out, b: ["run", "--data", str(data), "--output", str(out), "--folds", "2", "--lr", "1e-3", *sets,
                        "--batch-size", str(b), "--seed", "1", "--no-progress", "--device", device],
        ("bulk_pretrain/history.json", "checkpoints_transfer_full/fold_0_history.json",
         "checkpoints_transfer_full/fold_1_history.json"), global_batch=4)]


def setup_state_tx(work: Path, device: str) -> list[Comparison]:
    conf = package_tests("state-tx")
    _, toml = conf.write_tiny_screen(work)
    return [Comparison(
        "train", "perturbation model (tiny state_sm, cell sets)", "state_tx.cli",
        lambda out, b: replace_args(conf.train_args(toml, out, steps=9), {
            "training.batch_size=": b, "training.train_seed=": 0, "training.device=": device}),
        ("run/history.json",), global_batch=4)]


def setup_var_st(work: Path, device: str) -> list[Comparison]:
    conf = package_tests("var-st")
    h5ad, config = work / "tiny.h5ad", work / "tiny.yaml"
    # 4 slides of the tests' generator: 2 train (50 spots: 3 x 16 + 2, even per rank), 1 val, 1 test
    conf.make_tiny_adata(slides=4).write_h5ad(h5ad)
    config.write_text(conf.TINY_CONFIG)
    gpus = "1" if device == "cuda" else "0"  # this CLI's device switch
    run_dir = Path("tiny") / "TWO_STAGE_VAR_ST"
    # stage 2 of both runs starts from the same stage-1 weights: the 1-process run's
    stage1_ckpt = work / "stage1" / "single" / run_dir / "stage1_vqvae" / "best_vqvae.ckpt"

    def stage(n: int, extra: list[str]):
        values = {"--gpus": gpus, "--seed": 0, **({"--stage1_ckpt": stage1_ckpt} if n == 2 else {})}
        return lambda out, b: replace_args(conf.tiny_train_args(h5ad, config, out, stage=n, epochs=3, extra=extra),
                                           {**values, "--batch_size": b})

    return [
        Comparison("stage1", "stage 1 (VQ-VAE)", "var_st.cli", stage(1, []),
                   (str(run_dir / "stage1_vqvae/history.json"),), global_batch=16, report=("dead_codes_restarted",),
                   differs="exact while no dead code is restarted (dead_codes_restarted 0 in every record): a "
                           "restart uses rank 0's code counts and residual reservoir (its part of the batches) so "
                           "that all ranks make the same change, which differs from the 1-process run's"),
        Comparison("stage2", "stage 2 (VAR transformer, frozen VQ-VAE, dropout 0)", "var_st.cli",
                   stage(2, ["--set", "var.dropout=0.0"]), (str(run_dir / "stage2_var/history.json"),),
                   global_batch=16),
    ]


PACKAGES = {"cellfm-ft": setup_cellfm_ft, "get-yeast": setup_get_yeast, "spatial-transfer": setup_spatial_transfer,
            "state-tx": setup_state_tx, "var-st": setup_var_st}


# ----------------------------------------------------------------------------- running
def child_env() -> dict[str, str]:
    env = {**os.environ, "VAR_ST_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # a torchrun around this script must not leak into the 1-process run
    return env


def run(cmd: list[str], log: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env(), cwd=log.parent, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stdout, stderr = "timeout", str(err.stdout or ""), str(err.stderr or "")
    wall = time.perf_counter() - t0
    log.write_text(f"$ {shlex.join(cmd)}\n# rc={rc} wall_s={wall:.1f}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    return {"command": shlex.join(cmd), "rc": rc, "wall_s": round(wall, 1), "log": str(log),
            **({"stderr_tail": stderr[-2000:]} if rc != 0 else {})}


def read_history(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare(c: Comparison, single_out: Path, ddp_out: Path, nproc: int, device: str) -> dict:
    """Per history file: the loss of both runs at each validation and their relative difference."""
    rtol = c.rtol if device == "cpu" else max(c.rtol, BF16_RTOL)
    files, rates = [], {"single": [], "ddp": []}
    for name in c.histories:
        one, many = read_history(single_out / name), read_history(ddp_out / name)
        rows = []
        for a, b in zip(one, many):
            rows.append({"epoch": a["epoch"], "step": a["step"], "step_ddp": b["step"],
                         "step_x_global_batch": a["step"] * c.global_batch,  # samples, or fewer (short last batch)
                         "train_loss_single": a["train_loss"], f"train_loss_{nproc}proc": b["train_loss"],
                         "rel_diff": rel_diff(b["train_loss"], a["train_loss"]),
                         "samples_per_s_single": a.get("train_samples_per_s"),
                         f"samples_per_s_{nproc}proc": b.get("train_samples_per_s"),
                         **{f"{k}_{run}": r.get(k) for k in c.report for run, r in (("single", a), (f"{nproc}proc", b))}})
            rates["single"].append(a.get("train_samples_per_s") or 0.0)
            rates["ddp"].append(b.get("train_samples_per_s") or 0.0)
        files.append({"history": name, "records_single": len(one), f"records_{nproc}proc": len(many), "records": rows})
    rows = [r for f in files for r in f["records"]]
    aligned = bool(rows) and all(len(f["records"]) == f["records_single"] == f[f"records_{nproc}proc"] > 0
                                 and all(r["step"] == r["step_ddp"] for r in f["records"]) for f in files)
    max_diff = max((r["rel_diff"] for r in rows), default=float("nan"))
    single_rate = statistics.median(rates["single"]) if rates["single"] else float("nan")
    ddp_rate = statistics.median(rates["ddp"]) if rates["ddp"] else float("nan")
    last = files[-1]["records"][-1] if files and files[-1]["records"] else {}
    return {
        "label": c.label, "global_batch": c.global_batch, "batch_per_process": c.global_batch // nproc,
        "expected": "equal up to the order of float sums" if not c.differs else "see why_it_may_differ",
        "why_it_may_differ": c.differs or None, "stated_rtol": rtol,
        "final": {"history": files[-1]["history"] if files else None,
                  **{k: last.get(k) for k in ("step", "step_x_global_batch", "train_loss_single", f"train_loss_{nproc}proc",
                                              "rel_diff")}},
        "max_rel_diff": max_diff,
        "steps_aligned": aligned, "within_tolerance": aligned and max_diff <= rtol,
        "train_samples_per_s_single": single_rate, f"train_samples_per_s_{nproc}proc": ddp_rate,
        "throughput_ratio": ddp_rate / single_rate if single_rate else float("nan"),
        "histories": files,
    }


def bench_package(name: str, work: Path, device: str, nproc: int, timeout: float) -> dict:
    shutil.rmtree(work, ignore_errors=True)  # the CLIs resume from an existing run folder
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    result: dict = {"package": name, "comparisons": []}
    try:
        comparisons = PACKAGES[name](work, device)
    except Exception as err:  # noqa: BLE001 - reported in the JSON, the other packages still run
        return {**result, "error": f"data set-up failed: {type(err).__name__}: {err}"}
    for c in comparisons:
        if c.global_batch % nproc:
            result["comparisons"].append({"label": c.label, "error": f"global batch {c.global_batch} is not a "
                                                                    f"multiple of --nproc {nproc}"})
            continue
        base = work / c.name
        base.mkdir()
        single_out, ddp_out = base / "single", base / f"ddp{nproc}"
        single = run(c.command(single_out, 1), base / "single.log", timeout)
        ddp = run(c.command(ddp_out, nproc), base / f"ddp{nproc}.log", timeout)
        entry = {"runs": {"single": single, f"{nproc}proc": ddp}}
        if single["rc"] == 0 and ddp["rc"] == 0:
            entry = {**compare(c, single_out, ddp_out, nproc, device), **entry}
        else:
            entry = {"label": c.label, "error": "a run failed (see runs.*.stderr_tail)", **entry}
        result["comparisons"].append(entry)
        print(f"  {name} / {c.label}: " + (f"max rel diff {entry['max_rel_diff']:.2e} (tol {entry['stated_rtol']:g}), "
                                           f"samples/s {entry['train_samples_per_s_single']:.1f} -> "
                                           f"{entry[f'train_samples_per_s_{nproc}proc']:.1f}"
                                           if "error" not in entry else entry["error"]), flush=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    return result


def machine(device: str) -> dict:
    import torch

    info = {"device": device, "backend": "nccl" if device == "cuda" else "gloo", "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "omp_num_threads": child_env()["OMP_NUM_THREADS"], "host": platform.node()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    return info


def write_json_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packages", nargs="+", choices=sorted(PACKAGES), default=sorted(PACKAGES))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu: gloo; cuda: NCCL, one GPU per rank")
    p.add_argument("--nproc", type=int, default=2, help="processes of the torchrun run (default 2)")
    p.add_argument("--out", type=Path, default=Path("ddp_scaling.json"), help="results JSON (written atomically)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "ddp_scaling",
                   help="run folders and logs (each package's is emptied first)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    args = p.parse_args(argv)
    if args.nproc < 1:  # 1: torchrun with one rank vs a plain run, to check the setup on a 1-GPU machine
        p.error("--nproc must be >= 1")
    if args.device == "cuda":
        import torch

        if torch.cuda.device_count() < args.nproc:
            p.error(f"--device cuda --nproc {args.nproc} needs {args.nproc} GPUs; {torch.cuda.device_count()} visible")
    work = args.work.resolve()
    results = {"what": "each package's training CLI: 1 process x global batch G vs torchrun N processes x G/N, "
                       "same seed and steps; train_loss per validation from the history files (both runs log it "
                       "after the same optimizer steps on the same samples: step x G of them, fewer when an "
                       "epoch ends in a shorter batch); rel_diff = |loss_N - loss_1| / |loss_1|; throughput "
                       "from train_samples_per_s (global, training only, median over validations)",
               "tolerances": {"fp32 (CPU)": FP32_RTOL, "bf16 autocast (CUDA, stated, not measured here)": BF16_RTOL,
                              "with dropout that no CLI option turns off": "per comparison (stated_rtol)"},
               "machine": machine(args.device), "nproc": args.nproc, "packages": {}}
    if args.device == "cpu":
        results["throughput_note"] = (
            f"CPU run on {os.cpu_count()} cores shared by the {args.nproc} processes, tiny models: the ratio "
            "measures process and gloo overhead, not DDP scaling; the >= 1.8x scaling figure needs the 2-GPU "
            "machine: python benchmarks/ddp_scaling.py --device cuda --nproc 2 --out "
            "benchmarks/results/ddp_scaling_h200x2.json")
    for name in args.packages:
        print(f"{name}:", flush=True)
        results["packages"][name] = bench_package(name, work / name, args.device, args.nproc, args.timeout)
        write_json_atomic(results, args.out)  # partial results survive an interrupted run
    ok = [c.get("within_tolerance", False) for r in results["packages"].values() for c in r.get("comparisons", [])]
    results["all_within_tolerance"] = bool(ok) and all(ok)
    write_json_atomic(results, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
