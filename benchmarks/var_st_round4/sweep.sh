#!/usr/bin/env bash
# Issue 17 round 4 screen of VAR-ST stage-2 settings on the embedded demo, on one lent GPU machine:
#   bash benchmarks/var_st_round4/sweep.sh OUT_DIR [PARALLEL] [SEEDS]
# Each (variant, seed) is one process of benchmarks/var_st_demo_probes.py (the package's own train_stage1 /
# train_stage2, fp32, compile off) on CUDA; stage 1 is trained once per seed first (cached in build/probe4).
# Every run's JSON line lands in OUT_DIR/runs.jsonl; summarise.py prints the table.
set -uo pipefail
out=${1:?usage: sweep.sh OUT_DIR [PARALLEL] [SEEDS]}; par=${2:-14}; seeds=${3:-"0 1 2"}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); root=$(cd "$here/../.." && pwd)
mkdir -p "$out/logs" "$root/build/probe4"
export PYTHONPATH=$root/packages/var-st/src:$root/shared/src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
one() {  # name json seed
    python3 "$root/benchmarks/var_st_demo_probes.py" --device cuda --data_dir "$root/build/probe4" --seeds "$3" \
        --variant "$1=$2" --out "$out/logs/$1_$3.json" > "$out/logs/$1_$3.log" 2>&1
    grep '^{"variant"' "$out/logs/$1_$3.log" >> "$out/runs.jsonl" || echo "FAILED $1 seed $3: $(tail -1 "$out/logs/$1_$3.log")"
}
export -f one; export out root
for s in $seeds; do one demo '{}' "$s" & done; wait      # stage 1 per seed, cached for every variant with its settings
grep -v '^demo=' "$here/variants.txt" | while IFS= read -r line; do
    for s in $seeds; do printf '%s\0%s\0%s\0' "${line%%=*}" "${line#*=}" "$s"; done
done | xargs -0 -n 3 -P "$par" bash -c 'one "$0" "$1" "$2"'
python3 "$here/summarise.py" "$out/runs.jsonl"
