//! The k loop of the x86 row tiles, AVX2 and AVX-512 alike: one body over the lanes of
//! [`Lanes`]. Each ISA instantiates it in a function of its own compiled for that ISA
//! (`avx2::accumulate`, `avx512::accumulate`), which returns the accumulators by value:
//! with the loop inside the epilogue's function LLVM kept them in a stack array and
//! stored each one after its FMA (seen in the disassembly), bound by stores at ≈ 40%
//! of the FMA peak.

use super::epilogue::Lanes;
use super::{APanel, BPanel};
use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

/// `MR × NV` accumulators of `L` over the `kc` steps of the panels, or over the `kc`
/// steps listed in `a.steps` when `LISTED`: per step, B's row loaded (masked when
/// `MASKED`), each of A's `MR` values broadcast and multiplied into one row of
/// accumulators. Rows at or past `mr` re-read row `mr − 1` (never stored), so that A
/// is not read outside the tile.
///
/// B's row two steps ahead is prefetched, each of its cache lines: read in place, B's
/// rows are a row stride apart and the hardware prefetcher alone left the loop
/// waiting on them (two steps ahead beat three, four and eight; docs/perf/design-notes.md).
///
/// # Safety
/// The tile contract of [`Kernel::tile`](super::Kernel::tile) for `kc`, `a`, `b` and
/// `mr`; when `!MASKED`, B rows have `NV · L::W` readable columns, else `masks` covers
/// only readable ones; when `LISTED`, `a.steps` holds `kc` steps of the panel; the
/// caller is compiled for `L`'s ISA (this body is inlined into it).
#[inline(always)]
pub(super) unsafe fn accumulate<L: Lanes, const MR: usize, const NV: usize, const MASKED: bool, const LISTED: bool>(
    kc: usize,
    a: APanel,
    b: BPanel,
    mr: usize,
    masks: &[L::Mask; NV],
) -> [[L::V; NV]; MR] {
    // Loops, not closures, throughout: a closure would not inherit the caller's target
    // features, and its lane operations would not inline.
    // SAFETY: lane constructors only; the caller's CPU supports `L`.
    let mut acc = unsafe { [[L::zero(); NV]; MR] };
    if a.rs == 1 && mr == MR {
        // A's MR values of a step are adjacent (a packed panel, or Aᵀ read in place):
        // one base pointer and constant offsets, where MR row pointers would not all
        // stay in registers beside the accumulators (12 and 16 rows spilled them).
        for q in 0..kc {
            // SAFETY: as `b_row` and below: row i < MR = mr of step p is at
            // `a.ptr + p·cs + i`, readable by contract.
            unsafe {
                let (p, bv) = b_row::<L, NV, MASKED, LISTED>(q, kc, &a, &b, masks);
                let ap = a.ptr.add(p * a.cs);
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai = L::splat(*ap.add(i));
                    for (x, bv) in row.iter_mut().zip(bv.iter()) {
                        *x = L::fma(ai, *bv, *x);
                    }
                }
            }
        }
        return acc;
    }
    let mut rows = [a.ptr; MR];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = a.ptr.wrapping_add(i.min(mr - 1) * a.rs);
    }
    for q in 0..kc {
        // SAFETY: as `b_row`; each row pointer addresses a row i < mr at step p,
        // readable by contract.
        unsafe {
            let (p, bv) = b_row::<L, NV, MASKED, LISTED>(q, kc, &a, &b, masks);
            for (row, ap) in acc.iter_mut().zip(rows.iter()) {
                let ai = L::splat(*ap.add(p * a.cs));
                for (x, bv) in row.iter_mut().zip(bv.iter()) {
                    *x = L::fma(ai, *bv, *x);
                }
            }
        }
    }
    acc
}

/// Step `q` of the loop: its k index `p` (the q-th listed one when `LISTED`) and B's
/// row `p`, loaded (masked when `MASKED`), with B's row two steps ahead prefetched.
///
/// # Safety
/// As [`accumulate`]: `q < kc`; B row p is read at columns the caller vouched for (all
/// NV·W when unmasked; masked lanes are neither read nor faulted on). A prefetch never
/// faults, so its address may lie past the panel (computed with wrapping arithmetic).
#[inline(always)]
unsafe fn b_row<L: Lanes, const NV: usize, const MASKED: bool, const LISTED: bool>(
    q: usize,
    kc: usize,
    a: &APanel,
    b: &BPanel,
    masks: &[L::Mask; NV],
) -> (usize, [L::V; NV]) {
    // Vectors per 64-byte cache line: one prefetch per line of B's row.
    let per_line = (16 / L::W).max(1);
    // SAFETY: the caller's contract (see above).
    unsafe {
        let p = if LISTED { *a.steps.add(q) as usize } else { q };
        let bp = b.ptr.add(p * b.rs);
        let ahead = match LISTED {
            true if q + 2 < kc => *a.steps.add(q + 2) as usize,
            true => p,
            false => p + 2,
        };
        for v in (0..NV).step_by(per_line) {
            _mm_prefetch::<_MM_HINT_T0>(b.ptr.wrapping_add(ahead * b.rs + v * L::W).cast());
        }
        let mut bv = [L::zero(); NV];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = if MASKED { L::load_masked(bp.add(v * L::W), masks[v]) } else { L::load(bp.add(v * L::W)) };
        }
        (p, bv)
    }
}
