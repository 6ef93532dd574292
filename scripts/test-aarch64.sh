#!/usr/bin/env bash
# Cross-compiles the test suite for aarch64 Linux and runs it under qemu-user: the
# NEON kernel (the default path there) against the naive twin, and the ops and model
# tests on top of it. qemu checks correctness only; its timings mean nothing.
#
# Installs what it needs when missing: the Rust target (rustup) and Debian's
# qemu-user, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (apt, as root or via sudo).
# Usage: scripts/test-aarch64.sh [cargo test args, e.g. --test gemm]; FUSEGRAD_QEMU_ALL=1 runs
# every test of those targets
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target"
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null \
    || [ ! -d /usr/aarch64-linux-gnu/lib ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    pkgs="qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q $pkgs >/dev/null 2>&1 \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $pkgs >/dev/null; }
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# The NEON-specific parts: the kernels and their update epilogue (--lib, --test gemm),
# the passes over them. tests/model.rs is the same logic over the same kernels and
# costs half a minute of qemu: run it with `scripts/test-aarch64.sh --test model`.
if [ $# -eq 0 ]; then
    set -- --lib --test gemm --test ops --test gradcheck --test optim --test kernel_env
fi
# The property test replays its regressions and 8 new cases: qemu is ~50× slower.
# Three tests of tests/gemm.rs are skipped by default: their shapes are the x86 tiles'
# block edges and the x86 MNIST workload (100 s of qemu); the NEON 12 × 8 tile's own
# block edges are crossed by block_boundaries_of_small_caches.
skips=()
if [ -z "${FUSEGRAD_QEMU_ALL:-}" ]; then
    skips=(-- --skip narrow_outputs_across_block_boundaries --skip mnist_training_shapes --skip few_rows_split_along_k_at_the_sizes_of_mnist_batches)
fi
FUSEGRAD_PROP_CASES=${FUSEGRAD_PROP_CASES:-8} cargo test --target "$target" "$@" "${skips[@]}"
