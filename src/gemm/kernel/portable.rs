//! The portable microkernel: plain Rust over fixed-size arrays, which the compiler
//! turns into whatever SIMD the target has by default (SSE2 on x86_64, NEON on
//! aarch64). Separate multiply and add, never `f32::mul_add`: without a hardware FMA
//! that compiles to a libm call.
//!
//! Register tile (MR = 4 rows × NR = 8 columns):
//! ```text
//!          b[p][0..8]
//! a[p][0]  acc[0][0..8]
//! a[p][1]  acc[1][0..8]
//! a[p][2]  acc[2][0..8]
//! a[p][3]  acc[3][0..8]
//! ```

use super::{APanel, BPanel, Kernel, Tile, TileEpilogue};

pub(crate) struct Portable;

impl Kernel for Portable {
    const MR: usize = 4;
    const NR: usize = 8;
    const READS_B_IN_PLACE: bool = false;

    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        const MR: usize = Portable::MR;
        const NR: usize = Portable::NR;
        debug_assert!(b.padded && b.rs == NR, "the portable kernel reads packed B panels");
        // SAFETY: the caller guarantees a packed panel of `kc * NR` floats at `b`.
        let b = unsafe { std::slice::from_raw_parts(b.ptr, kc * NR) };
        // Rows at or past mr re-read row mr - 1 (never stored).
        let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.wrapping_add(i.min(t.mr - 1) * a.rs));
        let mut acc = [[0.0f32; NR]; MR];
        for (p, bp) in b.chunks_exact(NR).enumerate() {
            // SAFETY: each row pointer addresses a row i < mr at step p < kc.
            let ap: [f32; MR] = std::array::from_fn(|i| unsafe { *rows[i].add(p * a.cs) });
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] += ap[i] * bp[j];
                }
            }
        }
        // SAFETY: the tile contract is forwarded unchanged.
        unsafe { store_tile(&acc, t) }
    }
}

/// Stores an accumulator tile through the tile's epilogue, element by element.
///
/// # Safety
/// The tile contract of [`Kernel::tile`] for `t`: only `i < t.mr`, `j < t.nr` are
/// read or written, and those are valid.
pub(crate) unsafe fn store_tile<const MR: usize, const NR: usize>(acc: &[[f32; NR]; MR], t: &Tile) {
    let mut colsum = [0.0f32; NR];
    for (i, row) in acc.iter().enumerate().take(t.mr) {
        for (j, &v) in row.iter().enumerate().take(t.nr) {
            // SAFETY: i < mr and j < nr, inside the tile the caller vouched for.
            unsafe {
                let dst = t.c.add(i * t.rsc + j);
                let mut x = if t.load_c { *dst + v } else { v };
                match t.epilogue {
                    TileEpilogue::None => {}
                    TileEpilogue::Bias(bias) => x += *bias.add(j),
                    TileEpilogue::BiasRelu(bias) => x = relu(x + *bias.add(j)),
                    TileEpilogue::ReluMask { h, rsh, .. } => {
                        x = if *h.add(i * rsh + j) > 0.0 { x } else { 0.0 };
                        colsum[j] += x;
                    }
                }
                *dst = x;
            }
        }
    }
    if let TileEpilogue::ReluMask { colsum: out, .. } = t.epilogue {
        if !out.is_null() {
            for (j, &s) in colsum.iter().enumerate().take(t.nr) {
                // SAFETY: a non-null colsum has `nr` writable floats.
                unsafe { *out.add(j) = s };
            }
        }
    }
}

/// ReLU that lets NaN through (as `vmaxps(0, x)` does), so a NaN is never hidden
/// from the checks downstream.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if 0.0 > x {
        0.0
    } else {
        x
    }
}

/// Single-core f32 throughput probe for the portable path: 8 independent chains of
/// 8-wide multiply-adds. Returns a value that depends on every chain, so that the
/// work cannot be optimised away.
pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
    let mut acc = [[1.0f32; 8]; 8];
    let x = std::hint::black_box(0.999_999f32);
    let y = std::hint::black_box(1e-7f32);
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * x + y;
            }
        }
    }
    (acc.iter().flatten().sum(), 8 * 8 * 2)
}
