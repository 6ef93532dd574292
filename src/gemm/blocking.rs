//! Every blocking constant of the GEMM in one place, and what each one cuts.
//!
//! The driver runs the BLIS loops in the order jc → pc → ic → ir → jr, with the
//! register tile innermost. Inside one (jc, pc) block the packed B block (`KC × NC`)
//! is reused by every row panel, so it is sized for L2; one packed A micro-panel
//! (`MR × KC`) is reused across the whole `jr` sweep, so it is sized for L1. This is
//! the AOCL zen4/zen5 "sup" arrangement (B streamed from L2, A micro-panel in L1).
//! Starting points come from `../shared/research/GEMM-NOTES.md` and were tuned
//! against `cargo bench --bench gemm`.

/// Largest k block (the depth of one packed panel pair). k is split into
/// `ceil(k / KC)` equal blocks rather than `KC + remainder`, so k = 784 runs as two
/// blocks of 392. An A micro-panel is `MR × KC × 4` bytes: 12 KiB for 6 × 512.
pub const KC: usize = 512;

/// Largest n block: columns of B packed at once. `KC × NC × 4` bytes = 512 KiB of L2.
pub const NC: usize = 256;

/// Largest m block: rows of A packed at once (a multiple of every kernel's MR:
/// 4, 6 and 16). `MC × KC × 4` bytes = 288 KiB.
pub const MC: usize = 144;

/// A row-major B is read in place (not packed) by kernels that mask their B loads
/// when the task has at most this many rows of C, or n fits in one tile: a packed B
/// block is reused by every MR-row panel, so packing pays only when there are many.
/// Measured: 128×784×128 gains 92% → 97% of peak unpacked; 1024³ loses 92% → 86%.
pub const DIRECT_B_MAX_ROWS: usize = 256;

/// ... or when all of B fits in a quarter of L2 (256 KiB), where re-reading it costs
/// no more than reading a packed copy: dW1 = Xᵀ·dZ (784×128×128, B = dZ of 64 KiB).
pub const DIRECT_B_MAX_FLOATS: usize = 64 * 1024;

/// A GEMM gets one task per this many multiply-adds (up to the thread count); below
/// it, it runs on the calling thread: a rayon fork/join costs 1–3 µs, the whole
/// runtime of the small MNIST products. Measured on 2 Zen 4 cores (`examples/gemm
/// --min-work`): 128×128×64 (1 M) drops from 19.7 to 10.9 µs on 2 threads, while
/// 128×64×10 (82 K) gets slower. Override per call with
/// `GemmOptions::min_work_per_thread`.
pub const MIN_WORK_PER_THREAD: usize = 1 << 18;

/// Largest `MR × NR` over all kernels: the size of the stack tile used when C or the
/// ReLU-mask activation has a non-unit column stride.
pub const MAX_TILE: usize = 16 * 64;

/// Splits `k` into equal blocks of at most `KC`: returns the number of blocks
/// (at least 1, so that k = 0 still produces one — empty — block).
pub fn k_blocks(k: usize) -> usize {
    k.div_ceil(KC).max(1)
}

/// Start of k block `b` out of `nb` over `0..k`.
pub fn k_block_start(k: usize, nb: usize, b: usize) -> usize {
    b * k / nb
}
