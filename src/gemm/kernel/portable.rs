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

use super::epilogue::{masks, store_tile, Scalar};
use super::{APanel, BPanel, Isa, Kernel, Tile};

pub(crate) struct Portable;

impl Kernel for Portable {
    const ISA: Isa = Isa::Portable;
    const MR: usize = 4;
    const NR: usize = 8;
    const READS_B_IN_PLACE: bool = false;

    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        debug_assert!(b.padded && b.rs == Self::NR, "the portable kernel reads packed B panels");
        // SAFETY: the caller guarantees a packed panel of `kc * NR` floats at `b` and
        // rows i < mr of A at every step.
        let acc = unsafe { accumulate(kc, a, b, t.mr) };
        // SAFETY: the tile contract is forwarded unchanged; scalar lanes need no ISA.
        unsafe { store_tile::<Scalar, MR, NR, false>(&acc, t, &masks::<Scalar, NR>(t.nr)) }
    }
}

const MR: usize = Portable::MR;
const NR: usize = Portable::NR;

/// The k loop, in a function of its own that returns the accumulators by value, so
/// that they stay in registers: sharing a function with the epilogue, which reads
/// them by address, LLVM stored every accumulator to the stack after each step.
///
/// # Safety
/// A packed panel of `kc * NR` floats at `b`; rows i < mr of A readable at every step.
#[inline(never)]
unsafe fn accumulate(kc: usize, a: APanel, b: BPanel, mr: usize) -> [[f32; NR]; MR] {
    // SAFETY: the caller guarantees the packed panel.
    let b = unsafe { std::slice::from_raw_parts(b.ptr, kc * NR) };
    // Rows at or past mr re-read row mr - 1 (never stored).
    let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.wrapping_add(i.min(mr - 1) * a.rs));
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
    acc
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
