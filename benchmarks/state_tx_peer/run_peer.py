"""state-tx vs arc-state (the public STATE implementation) on the same data, split and network.

    python benchmarks/state_tx_peer/run_peer.py --steps 300 --out /tmp/stx_peer \
        --arc-venv /work/arcstate-venv --cell-eval /work/venv/bin/cell-eval

1. writes the embedded demo screen + TOML (state_tx.synthetic.write_demo; 3 cell types, 20 knockdowns,
   Jurkat zeroshot test, 5 HepG2 fewshot test perturbations);
2. trains both with the same network (state_sm architecture at CPU size: hidden 128, 2 LLaMA layers,
   4 heads x 32, MLP 256, 2-layer encoders/decoder, cell_set_len 32, dropout 0), batch 16 sentences,
   Adam(W, wd 0) at a constant lr 2e-3, grad clip 10, the energy loss, `--steps` steps;
   each is run twice (20 steps and --steps) so steps/s excludes start-up;
3. predicts the test split with each (`state tx predict --predict-only`, `state-tx predict`);
4. runs `cell-eval run --profile minimal` on both prediction files;
5. writes results_<device>.json beside this script: steps/s, peak RSS, cell-eval means per cell type.

arc-state runs from its own venv (its dependencies are pinned apart from ours); on a GPU machine the
same command runs both on the GPU (Lightning picks it; state-tx uses training.device=auto).

On the lent GPU machine (no cell-eval there: it needs polars, too large to carry), arc-state comes from carried
wheels and the predictions travel back for cell-eval here. arc-state's `tx predict` imports cell-eval's
MetricsEvaluator and cell_eval.utils even with --predict-only, where neither is called; with --no-cell-eval the
import placeholder in import_placeholder/ (it raises if called) goes on arc-state's PYTHONPATH for predict:

    python benchmarks/state_tx_peer/run_peer.py --steps 1000 --arc-python python3 --no-cell-eval --out $OUT/peer
    python benchmarks/state_tx_peer/run_peer.py --cell-eval-on benchmarks/state_tx_peer/results_NVIDIA_H200.json \
        --preds DIR_WITH_THE_PREDICTIONS --cell-eval /tmp/arcvenv/bin/cell-eval
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS_SHORT = 20

# one network, written in each tool's keys
SHARED = dict(cell_set_len=32, hidden_dim=128, n_layers=2, n_heads=4, head_dim=32, intermediate_size=256,
              n_encoder_layers=2, n_decoder_layers=2, batch_size=16, lr=2e-3, seed=0)


def ours_cmd(toml: Path, out: Path, name: str, steps: int) -> list[str]:
    s = SHARED
    return [sys.executable, "-m", "state_tx.cli", "train", f"data.kwargs.toml_config_path={toml}",
            "data.kwargs.pert_col=gene", "data.kwargs.cell_type_key=cell_type", "data.kwargs.batch_col=gem_group",
            "data.kwargs.control_pert=non-targeting", "data.kwargs.output_space=gene", "model=state_sm",
            f"model.kwargs.cell_set_len={s['cell_set_len']}", f"model.kwargs.hidden_dim={s['hidden_dim']}",
            f"model.kwargs.n_layers={s['n_layers']}", f"model.kwargs.n_heads={s['n_heads']}",
            f"model.kwargs.head_dim={s['head_dim']}", f"model.kwargs.intermediate_size={s['intermediate_size']}",
            f"model.kwargs.n_encoder_layers={s['n_encoder_layers']}", f"model.kwargs.n_decoder_layers={s['n_decoder_layers']}",
            "model.kwargs.dropout=0.0", "model.kwargs.output_bias_init=torch", f"training.batch_size={s['batch_size']}", f"training.lr={s['lr']}",
            "training.weight_decay=0", "training.warmup_steps=0", "training.lr_schedule=constant",
            "training.gradient_clip_val=10", f"training.max_steps={steps}", f"training.val_freq={steps}",
            f"training.ckpt_every_n_steps={steps}", f"training.train_seed={s['seed']}", "training.progress=false",
            f"output_dir={out}", f"name={name}"]


def arc_cmd(arc: list[str], toml: Path, out: Path, name: str, steps: int) -> list[str]:
    s = SHARED
    bk = "model.kwargs.transformer_backbone_kwargs"
    return [*arc, "tx", "train", f"data.kwargs.toml_config_path={toml}",
            "data.kwargs.pert_col=gene", "data.kwargs.cell_type_key=cell_type", "data.kwargs.batch_col=gem_group",
            "data.kwargs.control_pert=non-targeting", "data.kwargs.output_space=gene", "data.kwargs.embed_key=X_hvg",
            "data.kwargs.num_workers=0", "data.kwargs.pin_memory=false", "model=state_sm",
            f"model.kwargs.cell_set_len={s['cell_set_len']}", f"model.kwargs.hidden_dim={s['hidden_dim']}",
            f"model.kwargs.n_encoder_layers={s['n_encoder_layers']}", f"model.kwargs.n_decoder_layers={s['n_decoder_layers']}",
            "+model.kwargs.dropout=0.0", f"{bk}.num_hidden_layers={s['n_layers']}",
            f"{bk}.num_attention_heads={s['n_heads']}", f"{bk}.num_key_value_heads={s['n_heads']}",
            f"{bk}.head_dim={s['head_dim']}", f"{bk}.intermediate_size={s['intermediate_size']}",
            f"training.batch_size={s['batch_size']}", f"training.lr={s['lr']}", "training.gradient_clip_val=10",
            f"training.max_steps={steps}", f"training.val_freq={steps}", f"training.ckpt_every_n_steps={steps}",
            f"training.train_seed={s['seed']}", "use_wandb=false", f"output_dir={out}", f"name={name}"]


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run cmd; wall seconds and the peak RSS of its process tree (RUSAGE_CHILDREN of a wrapper)."""
    wrapper = ("import resource,subprocess,sys,time;t=time.time();r=subprocess.run(sys.argv[1:]);"
               "print('PEAK_RSS_KB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,'WALL',time.time()-t);"
               "sys.exit(r.returncode)")
    with open(log, "w") as fh:
        res = subprocess.run([sys.executable, "-c", wrapper, *cmd], stdout=subprocess.PIPE, stderr=fh, text=True,
                             env={**os.environ, **(env or {})})
    fh_text = res.stdout
    log.write_text(log.read_text() + "\n--- stdout ---\n" + fh_text)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\nsee {log}")
    line = next(l for l in fh_text.splitlines() if l.startswith("PEAK_RSS_KB"))
    parts = line.split()
    return {"peak_rss_mib": round(int(parts[1]) / 1024, 1), "wall_s": round(float(parts[3]), 2)}


def cell_eval(exe: str, pred: Path, real: Path, out: Path, log: Path) -> dict:
    import pandas as pd

    timed([exe, "run", "-ap", str(pred), "-ar", str(real), "-o", str(out), "--control-pert", "non-targeting",
           "--pert-col", "gene", "--celltype-col", "cell_type", "--profile", "minimal", "--num-threads", "1"], log)
    res = {}
    for csv in sorted(out.glob("*_agg_results.csv")):
        agg = pd.read_csv(csv)
        mean = agg[agg["statistic"] == "mean"].iloc[0].drop("statistic")
        res[csv.name.replace("_agg_results.csv", "")] = {k: round(float(v), 4) for k, v in mean.items()}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="/tmp/stx_peer")
    ap.add_argument("--arc-venv", default="/work/arcstate-venv")
    ap.add_argument("--arc-python", help="run arc-state as `PY -m state` (installed beside us) instead of from --arc-venv")
    ap.add_argument("--cell-eval", default=str(Path(sys.executable).with_name("cell-eval")))
    ap.add_argument("--no-cell-eval", action="store_true",
                    help="skip cell-eval; copy each tool's prediction files to OUT/preds for --cell-eval-on elsewhere")
    ap.add_argument("--cell-eval-on", metavar="RESULTS_JSON", help="only run cell-eval on --preds and add it to this file")
    ap.add_argument("--preds", help="with --cell-eval-on: the folder of <tool>_pred.h5ad / <tool>_real.h5ad files")
    ap.add_argument("--skip-arc", action="store_true", help="state-tx only (e.g. where arc-state cannot install)")
    args = ap.parse_args()
    if args.cell_eval_on:
        add_cell_eval(Path(args.cell_eval_on), Path(args.preds), args.cell_eval, Path(args.out))
        return
    from state_tx.synthetic import write_demo

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _, toml = write_demo(out / "data", seed=0)
    arc = [args.arc_python, "-m", "state"] if args.arc_python else [str(Path(args.arc_venv) / "bin" / "state")]
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    results: dict = {"shared_config": SHARED, "steps": args.steps, "data": str(toml), "runs": {}}
    tools = [("state-tx", lambda name, n: ours_cmd(toml, out / "ours", name, n))]
    if not args.skip_arc:
        if not args.arc_python and not Path(arc[0]).exists():
            raise SystemExit(f"{arc[0]} not found: install arc-state into its own venv first")
        tools.append(("arc-state", lambda name, n: arc_cmd(arc, toml, out / "arc", name, n)))
    for tool, make in tools:
        # one untimed run first: torch.compile's and Triton's on-disk caches, CUDA start-up and the page cache are
        # then equally warm for the two timed runs (on a GPU a cold compile alone outlasts 1000 steps)
        timed(make("warmup", STEPS_SHORT), out / f"{tool}_warmup.log", env)
        short = timed(make("short", STEPS_SHORT), out / f"{tool}_short.log", env)
        full = timed(make("full", args.steps), out / f"{tool}_full.log", env)
        steps_per_s = (args.steps - STEPS_SHORT) / max(full["wall_s"] - short["wall_s"], 1e-9)
        run_dir = out / ("ours" if tool == "state-tx" else "arc") / "full"
        if tool == "state-tx":
            pcmd = [sys.executable, "-m", "state_tx.cli", "predict", "--output-dir", str(run_dir),
                    "--checkpoint", "final.ckpt"]
            ev = run_dir / "eval_final"
        else:
            pcmd = [*arc, "tx", "predict", "--output-dir", str(run_dir), "--checkpoint",
                    "final.ckpt", "--predict-only"]
            ev = run_dir / "eval_final.ckpt"
        penv = env
        if tool == "arc-state" and args.no_cell_eval:
            penv = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE / "import_placeholder"),
                                                                      os.environ.get("PYTHONPATH", "")]))}
        pred_t = timed(pcmd, out / f"{tool}_predict.log", penv)
        results["runs"][tool] = {"train_full": full, "train_short": short, "steps_per_s": round(steps_per_s, 3),
                                 "predict": pred_t, "train_command": " ".join(make("full", args.steps))}
        if args.no_cell_eval:
            import shutil

            (out / "preds").mkdir(exist_ok=True)
            for kind in ("pred", "real"):
                shutil.copy(ev / f"adata_{kind}.h5ad", out / "preds" / f"{tool}_{kind}.h5ad")
        else:
            results["runs"][tool]["cell_eval_mean"] = cell_eval(
                args.cell_eval, ev / "adata_pred.h5ad", ev / "adata_real.h5ad", out / f"cell_eval_{tool}",
                out / f"{tool}_cell_eval.log")
        print(json.dumps({tool: results["runs"][tool]}, indent=1), flush=True)
    device = "cpu"
    try:
        import torch

        device = torch.cuda.get_device_name(0).replace(" ", "_") if torch.cuda.is_available() else "cpu"
        results["torch"] = torch.__version__
    except ImportError:
        pass
    results.update({"device": device, "host": platform.node(), "python": platform.python_version(),
                    "command": " ".join([sys.executable, *sys.argv]),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    path = (out if args.no_cell_eval else HERE) / f"results_{device}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


def add_cell_eval(results_path: Path, preds: Path, exe: str, out: Path) -> None:
    """cell-eval on prediction files made elsewhere (the GPU machine), added to that run's results."""
    results = json.loads(results_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for tool, run in results["runs"].items():
        run["cell_eval_mean"] = cell_eval(exe, preds / f"{tool}_pred.h5ad", preds / f"{tool}_real.h5ad",
                                          out / f"cell_eval_{tool}", out / f"{tool}_cell_eval.log")
    results["cell_eval_command"] = " ".join([sys.executable, *sys.argv])
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
