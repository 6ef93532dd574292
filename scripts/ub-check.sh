#!/usr/bin/env bash
# Undefined-behaviour checks of the unsafe code (SIMD kernels, raw panel pointers, the
# C pointer shared across threads):
#   miri      tests/miri.rs: every safe entry point that reaches `unsafe` on small
#             shapes (GEMM layouts, strides, Accum, epilogues, the 2-thread split,
#             softmax-CE, a 2-step fit, save/load); miri's CPU has no AVX, so the
#             portable kernel and the driver run
#   asan      AddressSanitizer over the GEMM differential tests (every path this CPU
#             runs, each forced in turn: AVX-512, AVX2, portable) and the model tests
#   valgrind  memcheck over the GEMM differential tests in release (valgrind hides
#             AVX-512, so the AVX2 and portable paths run)
# Usage: scripts/ub-check.sh [miri] [asan] [valgrind]   (default: all three)
# Installs nightly with miri and rust-src through rustup when missing; says plainly
# and exits 0 when it cannot (no network), so that CI reports instead of failing.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(miri asan valgrind)
want() { printf '%s\n' "${parts[@]}" | grep -qx "$1"; }

need_nightly() {
    if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^miri'; then
        rustup toolchain install nightly --profile minimal --component miri --component rust-src >/dev/null 2>&1 || {
            echo "ub-check: rustup could not provide nightly with miri and rust-src here: $1 skipped"
            return 1
        }
    fi
}

if want miri && need_nightly miri; then
    echo "== miri: tests/miri.rs (tree borrows; rayon's pool threads outlive a test)"
    MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-disable-isolation" \
        cargo +nightly miri test --no-default-features --test miri
fi
if want asan && need_nightly asan; then
    host=$(rustc -vV | sed -n 's/^host: //p')
    echo "== AddressSanitizer ($host): tests/gemm.rs, tests/model.rs"
    RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address" ASAN_OPTIONS=detect_leaks=0 \
        CARGO_TARGET_DIR=target/asan cargo +nightly test -Zbuild-std --target "$host" \
        --no-default-features --test gemm --test model
fi
if want valgrind; then
    if command -v valgrind >/dev/null; then
        echo "== valgrind memcheck: tests/gemm.rs (release)"
        bin=$(cargo test --release --no-default-features --test gemm --no-run --message-format=json 2>/dev/null \
            | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("profile", {}).get("test") and m.get("executable"): print(m["executable"])' | tail -n 1)
        FUSEGRAD_PROP_CASES=8 valgrind -q --error-exitcode=9 "$bin" --test-threads=2
    else
        echo "ub-check: valgrind not installed (apt-get install valgrind): skipped"
    fi
fi
