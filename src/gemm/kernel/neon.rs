//! aarch64 NEON microkernel: 12 rows × 8 columns of C (2 q registers per row), 24
//! accumulators: BLIS's `12x8r` arrangement (its firestorm / M1 kernel), written with
//! intrinsics. See `../shared/research/NEON-NOTES.md` for the shapes of BLIS,
//! OpenBLAS, matrixmultiply and gemm and the FMA pipes of the cores.
//!
//! ```text
//!             b[p][0..4]  b[p][4..8]
//! a[p][0]     acc[0][0]   acc[0][1]       a[p][0..4]  = lanes of q a0
//!   ...                                   a[p][4..8]  = lanes of q a1
//! a[p][11]    acc[11][0]  acc[11][1]      a[p][8..12] = lanes of q a2
//! ```
//!
//! Per k step: 2 q loads of packed B, 3 q loads of packed A, 24 `fmla v.4s, v.4s,
//! v.s[lane]`: **4.8 FMAs per load**, and 24 + 3 + 2 = **29 of the 32 vector
//! registers**. 24 accumulators cover the 16 FMAs in flight that 4-pipe cores (Apple
//! M1, Neoverse V1/V2) need at 4 cycles of latency, and the 8 of 2-pipe cores
//! (Neoverse N1, Cortex-A76). It cannot be timed on this project's machines (qemu
//! timings mean nothing); its correctness is tested under qemu.
//!
//! A and B are always packed (`READS_A_IN_PLACE` and `READS_B_IN_PLACE` are false):
//! the A panel is 12 contiguous floats per k step, zero-padded past `mr`; the B panel
//! 8 per step, zero-padded past `nr`. Edges: rows past `mr` are computed and never
//! stored; a tile narrower than 8 columns goes through the portable kernel's
//! element-wise epilogue, which performs the same operations in the same order, so
//! full and partial tiles round alike.

use super::portable::store_tile;
use super::{APanel, BPanel, Isa, Kernel, Tile, TileEpilogue};
use std::arch::aarch64::*;

pub(crate) struct Neon;

const MR: usize = 12;
const NR: usize = 8;

impl Kernel for Neon {
    const ISA: Isa = Isa::Neon;
    const MR: usize = MR;
    const NR: usize = NR;
    const READS_A_IN_PLACE: bool = false;
    const READS_B_IN_PLACE: bool = false;

    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        debug_assert!(a.rs == 1 && a.cs == MR, "the NEON kernel reads packed A panels");
        debug_assert!(b.padded && b.rs == NR, "the NEON kernel reads packed B panels");
        // SAFETY: the caller guarantees packed panels of `kc` steps: 12 readable floats
        // of A and 8 of B per step.
        let acc = unsafe { accumulate(kc, a.ptr, b.ptr) };
        if t.nr == NR {
            // SAFETY: the tile contract for a full-width tile.
            unsafe { store_full_width(&acc, t) }
        } else {
            let mut rows = [[0.0f32; NR]; MR];
            for (row, v) in rows.iter_mut().zip(acc.iter()) {
                // SAFETY: each row of `rows` has 8 floats: two q stores.
                unsafe {
                    vst1q_f32(row.as_mut_ptr(), v[0]);
                    vst1q_f32(row.as_mut_ptr().add(4), v[1]);
                }
            }
            // SAFETY: the tile contract is forwarded unchanged.
            unsafe { store_tile(&rows, t) }
        }
    }
}

/// One row's two accumulators += a[lane] · (b0, b1).
#[inline(always)]
fn fma_row<const LANE: i32>(acc: &mut [float32x4_t; 2], a: float32x4_t, b0: float32x4_t, b1: float32x4_t) {
    // SAFETY: register-only arithmetic; NEON is part of the aarch64 baseline.
    unsafe {
        acc[0] = vfmaq_laneq_f32::<LANE>(acc[0], b0, a);
        acc[1] = vfmaq_laneq_f32::<LANE>(acc[1], b1, a);
    }
}

/// The k loop over packed panels: `a` has 12 floats per step, `b` 8.
///
/// # Safety
/// `a + 12·p + i` for `i < 12` and `b + 8·p + j` for `j < 8` are readable for `p < kc`.
#[inline(always)]
unsafe fn accumulate(kc: usize, a: *const f32, b: *const f32) -> [[float32x4_t; 2]; MR] {
    // SAFETY: register setup; NEON is part of the aarch64 baseline.
    let mut acc = [[unsafe { vdupq_n_f32(0.0) }; 2]; MR];
    for p in 0..kc {
        // SAFETY: step p < kc of both panels, in bounds by the contract.
        let (a0, a1, a2, b0, b1) = unsafe {
            let (ap, bp) = (a.add(p * MR), b.add(p * NR));
            (vld1q_f32(ap), vld1q_f32(ap.add(4)), vld1q_f32(ap.add(8)), vld1q_f32(bp), vld1q_f32(bp.add(4)))
        };
        let [r0, r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11] = &mut acc;
        fma_row::<0>(r0, a0, b0, b1);
        fma_row::<1>(r1, a0, b0, b1);
        fma_row::<2>(r2, a0, b0, b1);
        fma_row::<3>(r3, a0, b0, b1);
        fma_row::<0>(r4, a1, b0, b1);
        fma_row::<1>(r5, a1, b0, b1);
        fma_row::<2>(r6, a1, b0, b1);
        fma_row::<3>(r7, a1, b0, b1);
        fma_row::<0>(r8, a2, b0, b1);
        fma_row::<1>(r9, a2, b0, b1);
        fma_row::<2>(r10, a2, b0, b1);
        fma_row::<3>(r11, a2, b0, b1);
    }
    acc
}

/// The epilogue of a tile with all 8 columns valid, in registers; the same operations
/// in the same order as `portable::store_tile` (C added first, then the bias; ReLU
/// passes NaN and keeps −0.0; the ReLU mask zeroes where `h ≤ 0` or `h` is NaN;
/// column sums start at 0 and add rows in order).
///
/// # Safety
/// The tile contract of [`Kernel::tile`] with `t.nr == 8`.
unsafe fn store_full_width(acc: &[[float32x4_t; 2]; MR], t: &Tile) {
    // SAFETY (whole function): rows i < mr and columns j < 8 = nr of C, the bias, h
    // and colsum are valid by the tile contract; every pointer below stays in them.
    unsafe {
        let zero = vdupq_n_f32(0.0);
        let mut sums = [zero; 2];
        let bias = match t.epilogue {
            TileEpilogue::Bias(b) | TileEpilogue::BiasRelu(b) => Some([vld1q_f32(b), vld1q_f32(b.add(4))]),
            _ => None,
        };
        for (i, row) in acc.iter().enumerate().take(t.mr) {
            for (h, &v) in row.iter().enumerate() {
                let dst = t.c.add(i * t.rsc + 4 * h);
                let mut x = if t.load_c { vaddq_f32(vld1q_f32(dst), v) } else { v };
                match t.epilogue {
                    TileEpilogue::None => {}
                    TileEpilogue::Bias(_) | TileEpilogue::BiasRelu(_) => {
                        x = vaddq_f32(x, bias.unwrap_or([zero; 2])[h]);
                        if matches!(t.epilogue, TileEpilogue::BiasRelu(_)) {
                            // `if 0 > x { 0 } else { x }`: clear the lanes below zero
                            // only, so NaN and −0.0 pass (FMAX would turn −0 into +0).
                            let below = vcltq_f32(x, zero);
                            x = vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(x), below));
                        }
                    }
                    TileEpilogue::ReluMask { h: hp, rsh, .. } => {
                        let keep = vcgtq_f32(vld1q_f32(hp.add(i * rsh + 4 * h)), zero);
                        x = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), keep));
                        sums[h] = vaddq_f32(sums[h], x);
                    }
                }
                vst1q_f32(dst, x);
            }
        }
        if let TileEpilogue::ReluMask { colsum, .. } = t.epilogue {
            if !colsum.is_null() {
                vst1q_f32(colsum, sums[0]);
                vst1q_f32(colsum.add(4), sums[1]);
            }
        }
    }
}

/// Single-core throughput probe: 24 independent chains of `fmla v.4s` (4-pipe cores
/// need 16 in flight at 4 cycles of latency); with the two constants 26 of the 32
/// vector registers.
pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
    const CHAINS: usize = 24;
    // SAFETY: register-only arithmetic; NEON is part of the aarch64 baseline.
    unsafe {
        let x = vdupq_n_f32(std::hint::black_box(0.999_999));
        let y = vdupq_n_f32(std::hint::black_box(1e-7));
        let mut acc = [vdupq_n_f32(1.0); CHAINS];
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = vfmaq_f32(y, *a, x);
            }
        }
        let total = acc.iter().fold(vdupq_n_f32(0.0), |s, &a| vaddq_f32(s, a));
        (vaddvq_f32(total), (CHAINS * 4 * 2) as u64)
    }
}
