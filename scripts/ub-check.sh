#!/usr/bin/env bash
# Undefined-behaviour checks of the unsafe code (SIMD kernels, raw panel pointers, the
# C pointer shared across threads):
# every check builds through ub/ (the tests without the dev-dependencies, which they
# would rebuild).
#   miri      tests/miri.rs: every safe entry point that reaches `unsafe` on small
#             shapes (GEMM layouts, strides, Accum, epilogues, the 2-thread split,
#             softmax-CE, a 2-step fit, predict); miri's CPU has no AVX, so the
#             portable kernel and the driver run
#   asan      AddressSanitizer over the GEMM differential tests (every path this CPU
#             runs, each forced in turn: AVX-512, AVX2, portable), the model tests and
#             the fused training step
#   msan      MemorySanitizer over tests/gemm_sequence.rs in release (every shape
#             class on every path this CPU runs, AVX-512 included): definedness
#             tracked bit by bit through the compiled code, the arbiter when valgrind
#             reports an uninitialised value
#   valgrind  memcheck (--track-origins=yes) over tests/gemm_sequence.rs in release
#             (valgrind hides AVX-512, so the AVX2 and portable paths run); installs
#             Debian's valgrind when missing
#   valgrind-gemm  memcheck over the GEMM differential tests too (minutes; not in CI)
# Usage: scripts/ub-check.sh [miri] [asan] [msan] [valgrind] [valgrind-gemm]
#        (default: all)
# Runs on the pinned nightly of scripts/nightly.sh, installing it when missing. When
# rustup cannot provide it, says so and skips that part (exit 0) — except under
# CI=true, where a check that cannot run is a failure, not a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/nightly.sh
. scripts/nightly.sh
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(miri asan msan valgrind valgrind-gemm)
want() { printf '%s\n' "${parts[@]}" | grep -qx "$1"; }

need_nightly() {
    local what=$1
    shift
    ensure_nightly "$@" && return 0
    [ "${CI:-}" = true ] && { echo "ub-check: $what needs $NIGHTLY, and CI cannot skip it"; exit 1; }
    echo "ub-check: $what skipped"
    return 1
}

if want miri && need_nightly miri miri; then
    echo "== miri: tests/miri.rs (tree borrows; rayon's pool threads outlive a test)"
    # Deterministic floats: miri otherwise adds random ULP errors to exp and friends, and
    # the region test compares the bits of 1 and 2 threads.
    MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-disable-isolation -Zmiri-deterministic-floats" \
        cargo "+$NIGHTLY" miri test --manifest-path ub/Cargo.toml --test miri
fi
if want asan && need_nightly asan; then
    host=$(rustc -vV | sed -n 's/^host: //p')
    echo "== AddressSanitizer ($host): tests/gemm.rs, tests/model.rs, tests/fused_step.rs"
    # Our crate and every generic it instantiates are instrumented; the prebuilt std is
    # not (-Zbuild-std would add two minutes of CI for std's own accesses), and ASan
    # intercepts malloc and memcpy either way. Built through ub/ without criterion and
    # the GEMM peers; optimised as the ordinary test profile.
    RUSTFLAGS="-Zsanitizer=address" ASAN_OPTIONS=detect_leaks=0 \
        CARGO_PROFILE_TEST_OPT_LEVEL=2 CARGO_PROFILE_TEST_DEBUG=line-tables-only \
        CARGO_TARGET_DIR=target/asan cargo "+$NIGHTLY" test --target "$host" \
        --manifest-path ub/Cargo.toml --test gemm --test model --test fused_step
fi
if want msan && need_nightly msan; then
    host=$(rustc -vV | sed -n 's/^host: //p')
    echo "== MemorySanitizer ($host): tests/gemm_sequence.rs (release)"
    RUSTFLAGS="-Zsanitizer=memory -Zsanitizer-memory-track-origins" \
        CARGO_TARGET_DIR=target/msan cargo "+$NIGHTLY" test --release -Zbuild-std --target "$host" \
        --manifest-path ub/Cargo.toml --test gemm_sequence
fi
if want valgrind || want valgrind-gemm; then
    if ! command -v valgrind >/dev/null; then
        sudo=""
        [ "$(id -u)" -ne 0 ] && sudo="sudo"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get install -y -q valgrind >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q valgrind >/dev/null; }
    fi
    # $1: the test; $2: the manifest (ub/ builds without the dev-dependencies).
    test_bin() {
        cargo test --release --manifest-path "${2:-Cargo.toml}" --no-default-features --test "$1" --no-run \
            --message-format=json 2>/dev/null \
            | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("profile", {}).get("test") and m.get("executable"): print(m["executable"])' | tail -n 1
    }
    if want valgrind; then
        echo "== valgrind memcheck: tests/gemm_sequence.rs (release)"
        valgrind -q --track-origins=yes --error-exitcode=9 "$(test_bin gemm_sequence ub/Cargo.toml)" --test-threads=1
    fi
    if want valgrind-gemm; then
        echo "== valgrind memcheck: tests/gemm.rs (release)"
        FUSEGRAD_PROP_CASES=8 valgrind -q --error-exitcode=9 "$(test_bin gemm)" --test-threads=2
    fi
fi
