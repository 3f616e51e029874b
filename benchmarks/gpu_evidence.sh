#!/usr/bin/env bash
# What the lent GPU machine runs for every committed GPU figure (benchmarks/results/):
#   bash benchmarks/gpu_evidence.sh OUT_DIR [tests|bench|train|peer|all]
# tests: `nox -s test-gpu` (FT_REQUIRE_CUDA=1, the current interpreter, offline)
# bench: var-st's kernels vs their torch baselines, then var-st end to end with kernels on/off.
# train: every package's training step at the real sizes, eager / compiled / CUDA graphs, and inference
#        (bench_train_mfu_gpu.py; more than one 10-minute call: run it in parts with --only, as the results README says)
# peer:  state-tx vs arc-state (arc-state and its dependencies installed from wheels; cell-eval runs elsewhere,
#        run_peer.py --cell-eval-on)
# Each step's log and JSON land in OUT_DIR; a failing step does not stop the next one.
set -uo pipefail
out=${1:?usage: gpu_evidence.sh OUT_DIR [tests|bench|train|peer|all]}
what=${2:-all}
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1
dev=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)"
} | tee "$out/machine.txt"
status=0
if [[ $what == tests || $what == all ]]; then
    FT_REQUIRE_CUDA=1 python3 -m nox -s test-gpu -- -rs -q 2>&1 | tee "$out/test_gpu_$dev.log" || status=1
fi
if [[ $what == bench || $what == all ]]; then
    export PYTHONPATH=packages/var-st/src:shared/src${PYTHONPATH:+:$PYTHONPATH}
    python3 benchmarks/bench_kernels_gpu.py --out "$out/kernels_$dev.json" 2>&1 | tee "$out/bench_kernels_$dev.log" || status=1
    python3 benchmarks/bench_var_st_e2e_gpu.py --out "$out/var_st_e2e_$dev.json" 2>&1 | tee "$out/bench_var_st_e2e_$dev.log" || status=1
fi
if [[ $what == train || $what == all ]]; then
    export PYTHONPATH=$(ls -d shared/src packages/*/src | tr '\n' :)${PYTHONPATH:-}
    python3 benchmarks/bench_train_mfu_gpu.py --modes off,on,graphs --out "$out/train_mfu_$dev.json" 2>&1 \
        | tee "$out/train_mfu_$dev.log" || status=1
fi
if [[ $what == peer || $what == all ]]; then
    export PYTHONPATH=$(ls -d shared/src packages/*/src | tr '\n' :)${PYTHONPATH:-}
    python3 benchmarks/state_tx_peer/run_peer.py --steps 3000 --arc-python python3 --no-cell-eval --out "$out/peer" \
        2>&1 | tee "$out/peer_$dev.log" || status=1
fi
exit $status
