#!/usr/bin/env bash
# The MNIST epoch on a busy machine, rerunnable: quiet, a busy loop pinned to CPU 0,
# and one pinned to CPU 1, for fusegrad on 1 and 2 threads (and NumPy beside it when
# python3 has numpy). Prints one markdown table: median epoch in seconds, median and
# worst over the runs.
# Usage: scripts/under_load.sh [runs per cell, default 3] [epochs per run, default 3]
# Needs: taskset (util-linux), 2 or more CPUs, the MNIST files in $MNIST_DIR (default
# data/mnist; scripts/fetch_mnist.py fetches them). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
epochs=${2:-3}
data=${MNIST_DIR:-data/mnist}
command -v taskset >/dev/null || { echo "under_load: needs taskset (util-linux)"; exit 1; }
cargo build --release --example mnist_timing -q
bin=${CARGO_TARGET_DIR:-target}/release/examples/mnist_timing
have_numpy=0
python3 -c 'import numpy' 2>/dev/null && have_numpy=1

busy_pid=""
stop_busy() {
    if [ -n "$busy_pid" ]; then
        kill "$busy_pid" 2>/dev/null || true
        wait "$busy_pid" 2>/dev/null || true
    fi
    busy_pid=""
}
trap stop_busy EXIT

# median and max of a list of numbers
stats() { python3 -c 'import sys; v=sorted(map(float, sys.argv[1:])); print(f"{v[len(v)//2]:.3f} (worst {v[-1]:.3f})")' "$@"; }

fusegrad() { # threads
    "$bin" --data "$data" --threads "$1" --epochs "$epochs" 2>/dev/null \
        | awk '/^summary/{for(i=1;i<=NF;i++) if($i=="epoch"){print $(i+1); exit}}'
}
numpy() { # threads
    OPENBLAS_NUM_THREADS=$1 OMP_NUM_THREADS=$1 python3 scripts/numpy_epoch.py --data "$data" --epochs "$epochs" \
        | awk '{print $4}'
}

declare -A cell
for scenario in quiet cpu0 cpu1; do
    case $scenario in
        cpu0) taskset -c 0 sh -c 'while :; do :; done' & busy_pid=$! ;;
        cpu1) taskset -c 1 sh -c 'while :; do :; done' & busy_pid=$! ;;
    esac
    sleep 0.5
    for who in fusegrad numpy; do
        [ $who = numpy ] && [ $have_numpy = 0 ] && continue
        for t in 1 2; do
            vals=()
            for _ in $(seq "$runs"); do vals+=("$($who $t)"); done
            cell[$who,$t,$scenario]=$(stats "${vals[@]}")
            echo "  $scenario $who ${t}T: ${vals[*]}" >&2
        done
    done
    stop_busy
done

echo "| run (median epoch, s; median and worst of $runs runs) | quiet | busy loop on CPU 0 | busy loop on CPU 1 |"
echo "|---|---|---|---|"
for who in fusegrad numpy; do
    [ $who = numpy ] && [ $have_numpy = 0 ] && continue
    for t in 2 1; do
        echo "| $who, $t thread(s) | ${cell[$who,$t,quiet]} | ${cell[$who,$t,cpu0]} | ${cell[$who,$t,cpu1]} |"
    done
done
[ $have_numpy = 1 ] || echo "(NumPy not measured: python3 -m pip install numpy)"
