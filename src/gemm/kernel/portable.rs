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

use super::{APanel, BPanel, Isa, Kernel, Tile, TileEpilogue};

pub(crate) struct Portable;

impl Kernel for Portable {
    const ISA: Isa = Isa::Portable;
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

/// Single-core f32 throughput probe for the portable path, which compiles to separate
/// 4-wide multiplies and adds (SSE2 `mulps` + `addps` on x86_64, NEON `fmul` + `fadd`
/// on aarch64: Rust never fuses them). As in the kernel, the multiplies and the adds
/// sit on different dependency chains: 6 chains `t = t·x` (x = 1, so nothing grows or
/// decays into denormals) feed 6 chains `s = s + t`. With 3–4 cycles of latency per
/// instruction that keeps two multiply and two add pipes busy; the 12 chains and the
/// constant use 13 of the 16 SSE registers, so nothing spills. (A chain `a = a·x + y`
/// puts both on one chain and read 20% low.) Written with the baseline intrinsics,
/// because LLVM turned the same loop over plain arrays into shuffles and stack traffic.
/// Returns a value that depends on every chain, so that no work is optimised away.
pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
    const CHAINS: usize = 6;
    let x = std::hint::black_box(1.0f32);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: register-only arithmetic; SSE is part of the x86_64 baseline.
    let folded = unsafe {
        use std::arch::x86_64::*;
        let xv = _mm_set1_ps(x);
        let mut t = [_mm_set1_ps(1.0); CHAINS];
        let mut s = [_mm_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                *t = _mm_mul_ps(*t, xv);
                *s = _mm_add_ps(*s, *t);
            }
        }
        _mm_cvtss_f32(s.iter().fold(_mm_setzero_ps(), |a, &b| _mm_add_ps(a, b)))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: register-only arithmetic; NEON is part of the aarch64 baseline.
    let folded = unsafe {
        use std::arch::aarch64::*;
        let xv = vdupq_n_f32(x);
        let mut t = [vdupq_n_f32(1.0); CHAINS];
        let mut s = [vdupq_n_f32(0.0); CHAINS];
        for _ in 0..iters {
            for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                *t = vmulq_f32(*t, xv);
                *s = vaddq_f32(*s, *t);
            }
        }
        vaddvq_f32(s.iter().fold(vdupq_n_f32(0.0), |a, &b| vaddq_f32(a, b)))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let folded = {
        let (mut t, mut s) = ([1.0f32; CHAINS * 4], [0.0f32; CHAINS * 4]);
        for _ in 0..iters {
            for (t, s) in t.iter_mut().zip(s.iter_mut()) {
                *t *= x;
                *s += *t;
            }
        }
        s.iter().sum()
    };
    (folded, (CHAINS * 4 * 2) as u64)
}
