#!/usr/bin/env bash
# Every kernel path this CPU runs, each against its own peak, on the MNIST shapes and
# 1024³, beside the gemm crate and matrixmultiply, in one command. On a CPU with
# AVX-512 it runs twice: matrixmultiply with its default features (its AVX-512 kernel),
# then built without them (`--no-default-features` drops this crate's `peer-avx512`),
# when matrixmultiply runs the FMA kernel every AVX2-only CPU gets: the peer the AVX2
# path is measured against. Usage: scripts/all-isas.sh [seconds per contender, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1}"
echo "### matrixmultiply with its default features"
echo
cargo run -q --release --example gemm -- --all-isas --seconds "$secs"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    echo
    echo "### matrixmultiply without its AVX-512 kernel (--no-default-features)"
    echo
    cargo run -q --release --no-default-features --example gemm -- --all-isas --seconds "$secs"
fi
