#!/usr/bin/env bash
# The MNIST timing run in one command from a fresh clone: fetches MNIST into
# $MNIST_DIR (default data/mnist) if absent (SHA256-verified), builds in release, and runs
# examples/mnist_timing.rs with any options given (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${MNIST_DIR:-data/mnist}"
python3 scripts/fetch_mnist.py "$dir"
exec cargo run --release --example mnist_timing -- --data "$dir" "$@"
