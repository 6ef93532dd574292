# shellcheck shell=bash
# The one pinned nightly toolchain for the checks that need one (miri, the
# sanitizers, cargo-fuzz), and the cargo-fuzz version; sourced by scripts/ub-check.sh,
# scripts/fuzz.sh and .ci/run. Pinned so that CI passes or fails on the code, not on
# whichever nightly rustup serves that day.
#
# Moving the pin: set NIGHTLY to a newer dated nightly that has miri (rustup prints
# "no release found" for a date without one), run `scripts/ub-check.sh` and
# `scripts/fuzz.sh 30`, fix what the new toolchain finds, then commit this file
# alone with the result in the message.
NIGHTLY=nightly-2026-10-30
CARGO_FUZZ_VERSION=0.13.2

# ensure_nightly [component …]: installs $NIGHTLY with rust-src and the given
# components when any is missing. Returns 1, after saying so, when rustup cannot
# (no network); under CI=true that is an error for the caller to report.
ensure_nightly() {
    local missing=0 c
    for c in rust-src "$@"; do
        rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q "^$c" || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    local args=()
    for c in "$@"; do args+=(--component "$c"); done
    if ! rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src "${args[@]}" >/dev/null 2>&1; then
        echo "rustup could not install $NIGHTLY (with rust-src $*)"
        return 1
    fi
}

# ensure_cargo_fuzz: cargo-fuzz $CARGO_FUZZ_VERSION, installed from crates.io when
# missing or of another version.
ensure_cargo_fuzz() {
    if ! cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\b"; then
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
    fi
}
