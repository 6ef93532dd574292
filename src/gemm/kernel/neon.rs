//! aarch64 NEON microkernel: 12 rows × 8 columns of C (2 q registers per row), 24
//! accumulators: BLIS's `12x8r` arrangement (its firestorm / M1 kernel), written with
//! intrinsics (docs/perf/design-notes.md).
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
//! stored; a partial vector of a tile narrower than 8 columns goes through a stack
//! buffer in the shared epilogue.

use super::epilogue::{masks, store_tile, Lanes};
use super::update::{update_tile, TileUpdate};
use super::{APanel, BPanel, Isa, Kernel, Tile};
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
        // SAFETY: the tile contract is forwarded unchanged; NEON is baseline.
        unsafe {
            let masks = masks::<Q, 2>(t.nr);
            if t.mr == MR && t.nr == NR {
                store_tile::<Q, MR, 2, true>(&acc, t, &masks)
            } else {
                store_tile::<Q, MR, 2, false>(&acc, t, &masks)
            }
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

/// The NEON lanes of the shared epilogue ([`store_tile`]): q registers; NEON has no
/// masked loads or stores, so a partial vector goes through a small stack buffer.
pub(crate) struct Q;

impl Lanes for Q {
    type V = float32x4_t;
    type Mask = usize;
    const W: usize = 4;

    #[inline(always)]
    unsafe fn mask(valid: usize) -> usize {
        valid
    }
    #[inline(always)]
    unsafe fn zero() -> float32x4_t {
        // SAFETY: NEON is part of the aarch64 baseline.
        unsafe { vdupq_n_f32(0.0) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: as above.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
        // SAFETY: as above. `vfmaq_f32(c, a, b)` = c + a·b, fused, as the k loop.
        unsafe { vfmaq_f32(c, a, b) }
    }
    #[inline(always)]
    unsafe fn relu(x: float32x4_t) -> float32x4_t {
        // SAFETY: as above. Clears only the lanes below zero, so NaN and −0.0 pass
        // (FMAX would turn −0.0 into +0.0).
        unsafe {
            let below = vcltq_f32(x, vdupq_n_f32(0.0));
            vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(x), below))
        }
    }
    #[inline(always)]
    unsafe fn keep_where_positive(h: float32x4_t, x: float32x4_t) -> float32x4_t {
        // SAFETY: as above; the compare is false for NaN.
        unsafe { vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), vcgtq_f32(h, vdupq_n_f32(0.0)))) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: 4 readable floats at p (the caller's contract).
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, valid: usize) -> float32x4_t {
        let mut buf = [0.0f32; 4];
        // SAFETY: `valid ≤ 4` readable floats at p (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), valid);
            vld1q_f32(buf.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: float32x4_t) {
        // SAFETY: 4 writable floats at p (the caller's contract).
        unsafe { vst1q_f32(p, x) }
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, x: float32x4_t, _mask: usize, valid: usize) {
        let mut buf = [0.0f32; 4];
        // SAFETY: `valid ≤ 4` writable floats at p (the caller's contract).
        unsafe {
            vst1q_f32(buf.as_mut_ptr(), x);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, valid);
        }
    }
    // SAFETY (the operations below): NEON is part of the aarch64 baseline.
    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sqrt(x: float32x4_t) -> float32x4_t {
        unsafe { vsqrtq_f32(x) }
    }
    #[inline(always)]
    unsafe fn sign(x: float32x4_t) -> float32x4_t {
        unsafe { vbslq_f32(vcltq_f32(x, vdupq_n_f32(0.0)), vdupq_n_f32(-1.0), vdupq_n_f32(1.0)) }
    }
    #[inline(always)]
    unsafe fn max_abs_bits(acc: float32x4_t, x: float32x4_t) -> float32x4_t {
        unsafe {
            let magnitude = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x7fff_ffff));
            vreinterpretq_f32_u32(vmaxq_u32(vreinterpretq_u32_f32(acc), magnitude))
        }
    }
    #[inline(always)]
    unsafe fn keep_valid(x: float32x4_t, valid: usize) -> float32x4_t {
        unsafe {
            let lane: [u32; 4] = [0, 1, 2, 3];
            let keep = vcltq_u32(vld1q_u32(lane.as_ptr()), vdupq_n_u32(valid as u32));
            vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(x), keep))
        }
    }
    #[inline(never)]
    unsafe fn update<const MR: usize, const NV: usize, const WHOLE: bool>(
        acc: &[[float32x4_t; NV]; MR],
        t: &Tile,
        masks: &[usize; NV],
        u: &TileUpdate,
    ) {
        // SAFETY: forwarded contract; NEON is baseline.
        unsafe { update_tile::<Q, MR, NV, WHOLE>(acc, t, masks, u) }
    }
}

/// [`update_rank1`](super::update::update_rank1) on q lanes.
///
/// # Safety
/// The contract of `update::update_rank1`; NEON (baseline) available.
pub(crate) unsafe fn update_rank1(
    x: *const f32,
    xs: usize,
    rows: usize,
    dz: *const f32,
    n: usize,
    u: &super::update::TileUpdate,
) {
    // SAFETY: forwarded contract.
    unsafe { super::update::update_rank1::<Q>(x, xs, rows, dz, n, u) }
}
