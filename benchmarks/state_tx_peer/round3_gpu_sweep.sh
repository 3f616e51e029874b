#!/usr/bin/env bash
# Issue 17 round 3: state-tx budgets on the heterogeneous screen, every (setting, seed) as its own process of
# heterogeneous_screen.py on one lent GPU machine (fp32, compile off, so the numbers are the CPU path's arithmetic):
#   bash benchmarks/state_tx_peer/round3_gpu_sweep.sh OUT_DIR [PARALLEL] [SEEDS] [SETTINGS_FILE]
# SETTINGS_FILE: lines "label|config|overrides" (default: the budgets below)
# OUT_DIR/runs/<label>_s<seed>.{json,log} per run, merged at the end into OUT_DIR/round3_gpu_results.json and
# OUT_DIR/round3_gpu_logs.tar.gz (few files to fetch back); round3_summary.py prints the table.
set -uo pipefail
out=${1:?usage: round3_gpu_sweep.sh OUT_DIR [PARALLEL] [SEEDS]}; par=${2:-12}; seeds=${3:-"0 1 2 3 4 5"}; settings_file=${4:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); root=$(cd "$here/../.." && pwd)
mkdir -p "$out/runs"
export PYTHONPATH=$(ls -d "$root"/shared/src "$root"/packages/*/src | tr '\n' :)${PYTHONPATH:-} OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
export out here
# label | config | extra overrides
settings=(
  "tuned2000|tuned|"
  "steps4000|tuned|training.max_steps=4000"
  "steps8000|tuned|training.max_steps=8000"
  "steps4000_wd0.1|tuned|training.max_steps=4000 training.weight_decay=0.1"
  "steps8000_meanmse10|meanmse10|training.max_steps=8000"
  "steps4000_lr1e-3|tuned|training.max_steps=4000 training.lr=1e-3"
)
[[ -n $settings_file ]] && mapfile -t settings < "$settings_file"
one() {  # label config "overrides" seed
    python3 "$here/heterogeneous_screen.py" --config "$2" --label "$1" --seeds "$4" --out "$out/runs/${1}_s$4.json" \
        --set training.precision=fp32 training.compile=off $3 > "$out/runs/${1}_s$4.log" 2>&1 \
        || echo "FAILED $1 seed $4: $(tail -1 "$out/runs/${1}_s$4.log")"
}
export -f one
for s in "${settings[@]}"; do
    IFS='|' read -r label config extra <<< "$s"
    for seed in $seeds; do printf '%s\0%s\0%s\0%s\0' "$label" "$config" "$extra" "$seed"; done
done | xargs -0 -n 4 -P "$par" bash -c 'one "$0" "$1" "$2" "$3"'
python3 -c 'import json, sys; print(json.dumps([r for p in sys.argv[1:] for r in json.load(open(p))], indent=1))' \
    "$out"/runs/*.json > "$out/round3_gpu_results.json"
tar -czf "$out/round3_gpu_logs.tar.gz" -C "$out" runs && rm -r "$out/runs"
python3 "$here/round3_summary.py" "$out/round3_gpu_results.json"
