#!/usr/bin/env bash
# Every kernel path this CPU runs, each against its own peak, on the MNIST shapes and
# 1024³, beside the gemm crate and matrixmultiply, in one command. On a CPU with
# AVX-512 it runs twice: with this crate's `peer-avx512` feature (matrixmultiply's
# AVX-512 kernel), then without it, when matrixmultiply runs the FMA kernel every
# AVX2-only CPU gets: the peer the AVX2 path is measured against.
# Usage: scripts/all-isas.sh [seconds per contender, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-1}"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    echo "### matrixmultiply with its AVX-512 kernel (--features peer-avx512)"
    echo
    cargo run -q --release --features peer-avx512 --example gemm -- --all-isas --seconds "$secs"
    echo
fi
echo "### matrixmultiply with its FMA kernel (the default build)"
echo
cargo run -q --release --example gemm -- --all-isas --seconds "$secs"
