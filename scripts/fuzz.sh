#!/usr/bin/env bash
# Fuzzes the parsers of outside bytes with cargo-fuzz (libFuzzer + AddressSanitizer):
# `idx` (data::mnist::validate_idx_bytes) and `params` (load_parameters_from_bytes and
# load_checkpoint_from_bytes: safetensors and the raw format).
# Any input must give a clean Ok/Err: no panic, no abort, no single allocation over
# 64 MiB (a header claiming 2^32 items must not allocate on its word).
# Usage: scripts/fuzz.sh [seconds per target, default 30]
# Runs on the pinned nightly and cargo-fuzz version of scripts/nightly.sh, installing
# both when missing (rustup, crates.io); fuzz/Cargo.lock pins libfuzzer-sys.
# New inputs go to a scratch corpus; the seeds in fuzz/corpus are only read.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/nightly.sh
. scripts/nightly.sh
secs=${1:-30}
ensure_nightly || { echo "fuzz: cannot run without $NIGHTLY"; exit 1; }
ensure_cargo_fuzz
cd fuzz
for target in idx params; do
    scratch=$(mktemp -d)
    echo "== fuzz $target for ${secs}s"
    log=$(mktemp)
    status=0
    cargo "+$NIGHTLY" fuzz run -O "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$secs" -malloc_limit_mb=64 >"$log" 2>&1 || status=$?
    grep -a -E "^(#[0-9]+.*DONE|Done [0-9]+ runs|==[0-9]+==ERROR|SUMMARY|.*panicked)" "$log" || tail -n 20 "$log"
    rm -rf "$scratch" "$log"
    [ "$status" -eq 0 ] || { echo "fuzz $target: failed (exit $status); the input is in fuzz/artifacts/$target"; exit 1; }
done
