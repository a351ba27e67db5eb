#!/usr/bin/env bash
# CPU-scale reproduction of the paper's Fig. 2b claim (docs/results.md): with hard eviction, more sleep
# passes N learn Rule 110 at depth t better than N = 1 under the same token budget and data order.
# Usage: experiments/rule110-cpu.sh [OUT] [T] [N values] [train arguments...]   (defaults: runs/repro 2 "1 2 4")
# e.g. experiments/rule110-cpu.sh runs/repro 2 "1 2 4" --steps 500   (the budget of the first results)
set -euo pipefail
out=${1:-runs/repro}
t=${2:-2}
passes=${3:-"1 2 4"}
train_args=("${@:4}")
mkdir -p "$out"
[ -d "$out/data-t$t" ] || sleepify data rule110 --out "$out/data-t$t" --n-train 50000 --n-test 1000 --t "$t" --seed 0 --quiet
[ -d "$out/convert" ] || sleepify convert builtin:gdn-hybrid-4-small --out "$out/convert" -r repro/rule110-cpu
models=()
for n in $passes; do
    run="$out/t$t-N$n"
    if [ ! -f "$run/model/config.json" ]; then
        resume=""; [ -d "$run/checkpoints" ] && resume="--resume"
        /usr/bin/time -f "N=$n train wall %e s" sleepify train "$out/convert" -r repro/rule110-cpu --N "$n" \
            --data "$out/data-t$t" --out "$run" $resume "${train_args[@]}"
    fi
    models+=("$run/model")
done
sleepify eval "${models[@]}" --data "$out/data-t$t" --out "$out/eval-t$t" --quiet
