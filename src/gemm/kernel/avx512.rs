//! AVX-512F microkernels.
//!
//! One generic body, `MR` rows × `NV` zmm vectors (16 floats each) of C in registers.
//! Per k step it loads `NV` vectors of the packed B row and broadcasts `MR` values of
//! the packed A column: `MR · NV` FMAs against `NV + MR` loads.
//!
//! Wide tile, 6 × 64 (24 accumulators; the AOCL/BLIS zen4 "sup" shape):
//! ```text
//!            b[p][0..16] b[p][16..32] b[p][32..48] b[p][48..64]
//! a[p][0]    acc[0][0]   acc[0][1]    acc[0][2]    acc[0][3]
//!   ...
//! a[p][5]    acc[5][0]   acc[5][1]    acc[5][2]    acc[5][3]
//! ```
//! Narrow tile, 16 × 16 (16 accumulators), for outputs with n ≤ 16 such as the
//! 10-class layer: a 6 × 64 tile would leave 54 of its 64 lanes idle there.
//! Column tile, 16 × 10 with the vectors along m (10 accumulators), for n ≤ 10 when
//! Aᵀ is read in place (`dW = Xᵀ·dZ` of the 10-class layer): every lane does work.
//!
//! Edges: columns past `nr` are masked off in every load and store of C, the bias and
//! the activation (lane masks suppress faults, so nothing outside the tile is touched);
//! rows past `mr` are skipped.

use super::epilogue::{masks, store_tile, Lanes};
use super::update::{update_tile, TileUpdate};
use super::{APanel, BPanel, Isa, Kernel, Tile};
use crate::gemm::blocking::KC_MAX;
use crate::gemm::nonzero_map::{AMap, NonzeroMapRef};
use crate::matrix::MatRef;
use std::arch::x86_64::*;
use std::ops::Range;

/// 6 × 64 tile: the main AVX-512 kernel.
pub(crate) struct Avx512Wide;
/// 16 × 16 tile: for n ≤ 16.
pub(crate) struct Avx512Narrow;
/// 16 × 10 tile with the vectors along m: for n ≤ 10 with Aᵀ read in place.
pub(crate) struct Avx512Columns;

impl Kernel for Avx512Wide {
    const ISA: Isa = Isa::Avx512;
    const MR: usize = 6;
    const NR: usize = 64;
    const READS_B_IN_PLACE: bool = true;
    const SKIPS_ZERO_STEPS: bool = true;
    /// From one column tile: a listed step of the 6 × 64 tile saves 24 FMAs, and six
    /// rows are zero together often enough in either layout.
    fn lists_steps(_cols: usize, _a_transposed: bool) -> bool {
        true
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx512f.
        unsafe { tile_generic::<6, 4>(kc, a, b, t) }
    }
}

impl Kernel for Avx512Narrow {
    const ISA: Isa = Isa::Avx512;
    const MR: usize = 16;
    const NR: usize = 16;
    const READS_B_IN_PLACE: bool = true;
    const SKIPS_ZERO_STEPS: bool = true;
    /// For Aᵀ in place (a step's rows are adjacent pixels, often zero together); for
    /// row-major A (sixteen samples, rarely all zero at a step) not at one column tile.
    fn lists_steps(cols: usize, a_transposed: bool) -> bool {
        a_transposed || cols >= 2 * Self::NR
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: as above.
        unsafe { tile_generic::<16, 1>(kc, a, b, t) }
    }
}

impl Kernel for Avx512Columns {
    const ISA: Isa = Isa::Avx512;
    const MR: usize = 16;
    const NR: usize = 10;
    const READS_B_IN_PLACE: bool = true;

    fn a_in_place(rs: usize, cs: usize) -> bool {
        // Aᵀ (unit row stride) only; the dispatch sends no other layout here.
        rs == 1 && cs != 1
    }
    fn b_in_place(_rows: usize, _k: usize, _n: usize, _rs: usize, _tasks: usize) -> bool {
        true
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract (A with unit row stride, by
        // `a_in_place` and the dispatch) and has checked avx512f.
        unsafe { columns_tile(kc, a, b, t) }
    }
}

/// AVX-512 kernels that differ only in their tile: `MR` rows × `NV` zmm vectors.
macro_rules! avx512_tile_kernel {
    ($(#[$doc:meta])* $name:ident, $mr:literal, $nv:literal) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl Kernel for $name {
            const ISA: Isa = Isa::Avx512;
            const MR: usize = $mr;
            const NR: usize = $nv * 16;
            const READS_B_IN_PLACE: bool = true;
            const SKIPS_ZERO_STEPS: bool = true;
            /// From one column tile, in either layout.
            fn lists_steps(_cols: usize, _a_transposed: bool) -> bool {
                true
            }
            #[inline(always)]
            unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
                // SAFETY: the caller upholds the tile contract and has checked avx512f.
                unsafe { tile_generic::<$mr, $nv>(kc, a, b, t) }
            }
        }
    };
}

avx512_tile_kernel!(
    /// 12 × 32 tile (24 accumulators): for 16 < n ≤ 32, where the 6 × 64 tile would
    /// mask off half its lanes.
    Avx512Mid32,
    12,
    2
);
avx512_tile_kernel!(
    /// 8 × 48 tile (24 accumulators): for 32 < n ≤ 48.
    Avx512Mid48,
    8,
    3
);
avx512_tile_kernel!(
    /// 2 × 16 tile: products of one or two rows (a batch of 1 or 2) with n ≤ 16. A
    /// 6- or 16-row tile would compute its empty rows as copies of the last one.
    Avx512Rows16,
    2,
    1
);
avx512_tile_kernel!(
    /// 2 × 32 tile: one or two rows, 16 < n ≤ 32.
    Avx512Rows32,
    2,
    2
);
avx512_tile_kernel!(
    /// 2 × 64 tile: one or two rows, 32 < n ≤ 64.
    Avx512Rows64,
    2,
    4
);
avx512_tile_kernel!(
    /// 2 × 128 tile (16 accumulators): one or two rows, n > 64: a vector-matrix
    /// product bound by reading B, with no FMA spent on absent rows.
    Avx512Rows128,
    2,
    8
);

/// The shared k loop ([`k_loop::accumulate`](super::k_loop::accumulate)) on zmm lanes,
/// in a function of its own so that the accumulators stay in registers.
///
/// # Safety
/// The contract of `k_loop::accumulate`; the CPU supports avx512f.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn accumulate<const MR: usize, const NV: usize, const MASKED: bool, const LISTED: bool>(
    kc: usize,
    a: APanel,
    b: BPanel,
    mr: usize,
    masks: &[__mmask16; NV],
) -> [[__m512; NV]; MR] {
    // SAFETY: forwarded contract; this function is compiled for the lanes' ISA.
    unsafe { super::k_loop::accumulate::<Zmm, MR, NV, MASKED, LISTED>(kc, a, b, mr, masks) }
}

#[target_feature(enable = "avx512f")]
unsafe fn tile_generic<const MR: usize, const NV: usize>(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    // SAFETY: mask arithmetic only.
    let masks = unsafe { masks::<Zmm, NV>(t.nr) };
    // A packed panel is zero-padded to NR columns and a full tile reads only valid
    // columns, so both take plain loads; only a partial tile of an unpacked B needs
    // its B loads masked (a masked load costs a little even with a full mask).
    let listed = !a.steps.is_null();
    let masked = !b.padded && t.nr < NV * 16;
    // SAFETY (all four): forwarded contract; masked loads stay within columns j < nr,
    // and unmasked ones are taken only when every B row has NV·16 readable columns.
    let acc = unsafe {
        match (listed, masked) {
            (false, true) => accumulate::<MR, NV, true, false>(kc, a, b, t.mr, &masks),
            (false, false) => accumulate::<MR, NV, false, false>(kc, a, b, t.mr, &masks),
            (true, true) => accumulate::<MR, NV, true, true>(kc, a, b, t.mr, &masks),
            (true, false) => accumulate::<MR, NV, false, true>(kc, a, b, t.mr, &masks),
        }
    };

    // SAFETY: forwarded contract.
    unsafe { store::<MR, NV>(&acc, t, &masks) }
}

/// The shared epilogue on zmm lanes, as a function compiled for avx512f that LLVM may
/// keep out of line: inlined into the 6 × 64 tile's function, it made the k loop spill.
///
/// # Safety
/// The tile contract of [`Kernel::tile`] for `t`; `masks` from `masks(t.nr)`; avx512f
/// available.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store<const MR: usize, const NV: usize>(acc: &[[__m512; NV]; MR], t: &Tile, masks: &[__mmask16; NV]) {
    // SAFETY: forwarded contract.
    unsafe { store_tile::<Zmm, MR, NV, false>(acc, t, masks) }
}

/// The AVX-512 lanes of the shared epilogue ([`store_tile`]): zmm vectors, mask
/// registers for partial loads and stores.
pub(crate) struct Zmm;

impl Lanes for Zmm {
    type V = __m512;
    type Mask = __mmask16;
    const W: usize = 16;
    const MASKING_IS_FREE: bool = true;

    #[inline(always)]
    unsafe fn mask(valid: usize) -> __mmask16 {
        ((1u32 << valid) - 1) as __mmask16
    }
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: avx512f available (the caller's contract).
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: avx512f available.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: avx512f available.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn relu(x: __m512) -> __m512 {
        // SAFETY: avx512f available. max(0, x) returns x when x is NaN, and −0.0 for −0.0.
        unsafe { _mm512_max_ps(_mm512_setzero_ps(), x) }
    }
    #[inline(always)]
    unsafe fn keep_where_positive(h: __m512, x: __m512) -> __m512 {
        // SAFETY: avx512f available; the ordered compare is false for NaN.
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(h, _mm512_setzero_ps()), x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: 16 readable floats at p (the caller's contract).
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, mask: __mmask16) -> __m512 {
        // SAFETY: a masked load reads (and faults on) only the masked lanes.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: __m512) {
        // SAFETY: 16 writable floats at p (the caller's contract).
        unsafe { _mm512_storeu_ps(p, x) }
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, x: __m512, mask: __mmask16, _valid: usize) {
        // SAFETY: a masked store writes only the masked lanes, which the caller vouches for.
        unsafe { _mm512_mask_storeu_ps(p, mask, x) }
    }
    // SAFETY (the operations below): avx512f available, the caller's contract.
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sqrt(x: __m512) -> __m512 {
        unsafe { _mm512_sqrt_ps(x) }
    }
    #[inline(always)]
    unsafe fn sign(x: __m512) -> __m512 {
        unsafe {
            let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
            _mm512_mask_blend_ps(negative, _mm512_set1_ps(1.0), _mm512_set1_ps(-1.0))
        }
    }
    #[inline(always)]
    unsafe fn max_abs_bits(acc: __m512, x: __m512) -> __m512 {
        unsafe {
            let magnitude = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fff_ffff));
            _mm512_castsi512_ps(_mm512_max_epu32(_mm512_castps_si512(acc), magnitude))
        }
    }
    #[inline(always)]
    unsafe fn keep_valid(x: __m512, mask: __mmask16) -> __m512 {
        unsafe { _mm512_maskz_mov_ps(mask, x) }
    }
    #[inline(always)]
    unsafe fn update<const MR: usize, const NV: usize, const WHOLE: bool>(
        acc: &[[__m512; NV]; MR],
        t: &Tile,
        masks: &[__mmask16; NV],
        u: &TileUpdate,
    ) {
        // Masking is free for a plain store, not for this epilogue's loads and stores
        // of three buffers: a whole tile takes the unmasked copy.
        // SAFETY: forwarded contract; a whole tile has every lane valid.
        unsafe {
            if WHOLE || (t.mr == MR && t.nr == NV * 16) {
                update_tile::<Zmm, MR, NV, true>(acc, t, masks, u)
            } else {
                update_tile::<Zmm, MR, NV, false>(acc, t, masks, u)
            }
        }
    }
}

/// 16 × 10 tile with the vectors along m, for n ≤ 10 with Aᵀ read in place (unit row
/// stride): per k step one load of A (16 rows of one column, masked below `mr`), 10
/// broadcasts of B (one row; columns at or past `nr` re-read column `nr − 1`, never
/// stored) and 10 FMAs into 10 accumulators, one per column of C. The 16 × 16 tile
/// would spend 16 lanes on 10 columns (62.5% of the FMA width at best); here every
/// lane works. After the k loop one 16 × 16 transpose in registers turns the columns
/// into rows of C for the shared epilogue. Registers: 10 accumulators, 1 A vector, 1
/// broadcast of 32.
///
/// # Safety
/// The tile contract of [`Kernel::tile`], with `a.rs == 1`; avx512f available.
#[target_feature(enable = "avx512f")]
unsafe fn columns_tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    const NR: usize = 10;
    debug_assert!(a.rs == 1 && t.nr <= NR, "the column tile reads A columns");
    let row_mask = ((1u32 << t.mr) - 1) as __mmask16;
    let cols: [usize; NR] = std::array::from_fn(|j| j.min(t.nr - 1));
    let mut acc = [_mm512_setzero_ps(); NR];
    for p in 0..kc {
        // SAFETY: p < kc: A column p has rows i < mr readable (the masked load touches
        // no other lane); B row p has columns j < nr readable and `cols` stays below nr.
        unsafe {
            let av = _mm512_maskz_loadu_ps(row_mask, a.ptr.add(p * a.cs));
            let bp = b.ptr.add(p * b.rs);
            for (x, &j) in acc.iter_mut().zip(cols.iter()) {
                *x = _mm512_fmadd_ps(av, _mm512_set1_ps(*bp.add(j)), *x);
            }
        }
    }
    let zero = _mm512_setzero_ps();
    let rows = transpose16x16(std::array::from_fn(|j| if j < NR { acc[j] } else { zero }));
    let rows: [[__m512; 1]; 16] = std::array::from_fn(|i| [rows[i]]);
    // SAFETY: forwarded contract (nr ≤ 10 ≤ 16 columns: one masked vector per row).
    unsafe { store::<16, 1>(&rows, t, &masks::<Zmm, 1>(t.nr)) }
}

/// Transposes a strip of `blocks` 16 × 16 blocks lying side by side in 16 rows of
/// `src` into `16·blocks` rows of `dst`, so that `dst[r * dst_stride + c]` is
/// `src[c * src_stride + r]` for `r < 16·blocks` and `c < 16`. Packing `Bᵀ` (as in
/// `dX = dZ·Wᵀ`) with it moves 16 floats per instruction instead of one; one call per
/// strip keeps the checks out of the per-block work.
///
/// # Panics
/// If either slice is too short, or the CPU lacks avx512f.
pub(crate) fn transpose16(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, blocks: usize) {
    if blocks == 0 {
        return;
    }
    assert!(
        src.len() >= 15 * src_stride + 16 * blocks && dst.len() >= (16 * blocks - 1) * dst_stride + 16,
        "transpose16: slices too short"
    );
    assert!(super::Isa::Avx512.is_available(), "transpose16: avx512f not available");
    for b in 0..blocks {
        // SAFETY: avx512f was checked; block b reads rows i < 16 at i * src_stride + 16b
        // (16 floats each) and writes rows 16b + i of `dst` (16 floats each), all inside
        // the slices by the asserts above.
        unsafe {
            transpose16_impl(
                src.as_ptr().add(16 * b),
                src_stride,
                dst.as_mut_ptr().add(16 * b * dst_stride),
                dst_stride,
            )
        }
    }
}

/// # Safety
/// 16 rows of 16 floats readable at `src + i * src_stride`, writable at `dst + i *
/// dst_stride`; avx512f available.
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_impl(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    // SAFETY: row i starts at i * src_stride and has 16 readable floats (contract).
    let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * src_stride)) });
    for (i, row) in transpose16x16(r).into_iter().enumerate() {
        // SAFETY: row i of `dst` has 16 writable floats (contract).
        unsafe { _mm512_storeu_ps(dst.add(i * dst_stride), row) };
    }
}

/// The 16 × 16 transpose in registers: output row `i` lane `j` = input row `j` lane `i`.
#[target_feature(enable = "avx512f")]
#[inline]
fn transpose16x16(r: [__m512; 16]) -> [__m512; 16] {
    // Stage 1: interleave pairs of rows (elements within 128-bit lanes).
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // Stage 2: pairs of 64-bit halves within lanes.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let b = 4 * g;
        u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
        u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
        u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
    }
    // Stage 3: 128-bit lanes between row groups 0–3/4–7 and 8–11/12–15.
    let mut v = [_mm512_setzero_ps(); 16];
    for h in 0..2 {
        let b = 8 * h;
        for i in 0..4 {
            v[b + i] = _mm512_shuffle_f32x4::<0x88>(u[b + i], u[b + 4 + i]);
            v[b + 4 + i] = _mm512_shuffle_f32x4::<0xDD>(u[b + i], u[b + 4 + i]);
        }
    }
    // Stage 4: 128-bit lanes between the two halves: rows i and 8 + i.
    let mut out = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        out[i] = _mm512_shuffle_f32x4::<0x88>(v[i], v[8 + i]);
        out[8 + i] = _mm512_shuffle_f32x4::<0xDD>(v[i], v[8 + i]);
    }
    out
}

/// [`steps::nonzero_steps`](super::steps::nonzero_steps) for the AVX-512 tiles. Row-major
/// A (the forward `X·W`) in zmm vectors: 16 steps of every row ORed per load, their
/// nonzero ones tested into a lane mask and written by one compress and one store
/// (the AVX2 builder takes the set bits one by one: twice the time). Aᵀ in place
/// (`Xᵀ·dZ`) and every other case: the AVX2 builder, whose 32-byte masked loads of a
/// step's rows beat 64-byte ones here (one in three of those crosses a cache line).
pub(crate) fn nonzero_steps(
    a: MatRef<'_>,
    rows: Range<usize>,
    p0: usize,
    kc: usize,
    steps: &mut [u32; KC_MAX],
) -> usize {
    let n = rows.len();
    if a.col_stride() != 1 || n == 0 || n > 16 || kc == 0 || kc > KC_MAX || !Isa::Avx512.is_available() {
        return super::avx2::nonzero_steps(a, rows, p0, kc, steps);
    }
    let runs = super::steps::row_runs(a, rows, p0, kc);
    // SAFETY: avx512f was checked; every run has kc floats; kc <= KC_MAX.
    unsafe { row_runs_nonzero(&runs[..n], kc, steps) }
}

// The builders write 16 entries from a multiple of 16 below KC_MAX.
const _: () = assert!(KC_MAX.is_multiple_of(16));

/// Appends the steps `c + l` whose bit `l` is set in `nonzero` to `steps[*count..]`.
///
/// # Safety
/// avx512f available; `*count <= c`, `c` a multiple of 16 below `KC_MAX` (a multiple of
/// 16), so that the 16 entries from `*count` lie inside `steps`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn append_steps(steps: &mut [u32; KC_MAX], count: &mut usize, c: usize, nonzero: __mmask16) {
    debug_assert!(*count <= c && c.is_multiple_of(16) && c < KC_MAX);
    let index = _mm512_add_epi32(
        _mm512_set1_epi32(c as i32),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    );
    // SAFETY: *count + 16 <= c + 16 <= KC_MAX entries (the contract); the lanes past
    // the compressed ones are written too and lie past the list's end, never read.
    unsafe { _mm512_storeu_si512(steps.as_mut_ptr().add(*count).cast(), _mm512_maskz_compress_epi32(nonzero, index)) };
    *count += nonzero.count_ones() as usize;
}

/// The steps `p < kc` at which some `runs[r][p]` is not ±0.
///
/// # Safety
/// avx512f available; every run has at least `kc` floats; `kc <= KC_MAX`.
#[target_feature(enable = "avx512f")]
unsafe fn row_runs_nonzero(runs: &[&[f32]], kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let mag = _mm512_set1_epi32(super::steps::MAG as i32);
    let mut count = 0;
    for c in (0..kc).step_by(16) {
        let lanes = if c + 16 <= kc { u16::MAX } else { (1u16 << (kc - c)) - 1 };
        let mut or = _mm512_setzero_si512();
        for run in runs {
            // SAFETY: the masked load reads floats c.. of the run below kc only (the
            // masked-off lanes are neither read nor faulted on).
            or = _mm512_or_si512(or, unsafe { _mm512_maskz_loadu_epi32(lanes, run.as_ptr().add(c).cast()) });
        }
        // SAFETY: count <= c (one entry at most per step before c), c < kc <= KC_MAX.
        unsafe { append_steps(steps, &mut count, c, _mm512_test_epi32_mask(or, mag)) };
    }
    count
}

/// [`steps::mapped_steps`](super::steps::mapped_steps) on zmm vectors: for `Xᵀ` (A's
/// rows are map columns) eight map rows' words per load, tested against the tile's bits;
/// for row-major A the rows' words ORed, then 16 steps per compress. Tiles of more than
/// 16 rows, or no avx512f: the portable builder.
pub(crate) fn mapped_steps(a: AMap<'_>, rows: Range<usize>, p0: usize, kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let map = a.map;
    let (a_rows, a_steps) = if a.transposed { (map.cols, map.rows) } else { (map.rows, map.cols) };
    assert!(rows.end <= a_rows && p0 + kc <= a_steps, "mapped_steps: rows {rows:?}, steps {p0}+{kc} outside the map");
    if rows.is_empty() || rows.len() > 16 || kc == 0 || kc > KC_MAX || !Isa::Avx512.is_available() {
        return super::steps::mapped_steps(a, rows, p0, kc, steps);
    }
    // SAFETY: avx512f was checked; rows (at most 16, so in at most two words) and the
    // steps lie inside the map (the assert); kc <= KC_MAX.
    unsafe {
        if a.transposed {
            mapped_columns(map, rows, p0, kc, steps)
        } else {
            mapped_rows(map, rows, p0, kc, steps)
        }
    }
}

/// The steps `p < kc` at which map row `p0 + p` has a bit among columns `cols`.
///
/// # Safety
/// avx512f available; `cols` non-empty, at most 16 columns, below `map.cols`;
/// `p0 + kc <= map.rows`; `kc <= KC_MAX`.
#[target_feature(enable = "avx512f")]
unsafe fn mapped_columns(
    map: NonzeroMapRef<'_>,
    cols: Range<usize>,
    p0: usize,
    kc: usize,
    steps: &mut [u32; KC_MAX],
) -> usize {
    let [(run0, m0), (run1, m1)] = super::steps::tile_word_runs(map, cols, p0, kc);
    let (v0, v1) = (_mm512_set1_epi64(m0 as i64), _mm512_set1_epi64(m1 as i64));
    let mut count = 0;
    for c in (0..kc).step_by(16) {
        let mut nonzero = 0u16;
        for half in 0..2 {
            let off = c + 8 * half;
            if off >= kc {
                break;
            }
            let lanes = if off + 8 <= kc { u8::MAX } else { (1u8 << (kc - off)) - 1 };
            // SAFETY: the masked loads read words off.. of each run below kc only
            // (masked-off lanes are neither read nor faulted on).
            let (x0, x1) = unsafe {
                (
                    _mm512_maskz_loadu_epi64(lanes, run0.as_ptr().add(off).cast()),
                    _mm512_maskz_loadu_epi64(lanes, run1.as_ptr().add(off).cast()),
                )
            };
            let hit = _mm512_test_epi64_mask(x0, v0) | _mm512_test_epi64_mask(x1, v1);
            nonzero |= u16::from(hit) << (8 * half);
        }
        // SAFETY: count <= c (one entry at most per step before c), c < kc <= KC_MAX.
        unsafe { append_steps(steps, &mut count, c, nonzero) };
    }
    count
}

/// The steps `p < kc` at which some map row in `rows` has bit `p0 + p`.
///
/// # Safety
/// avx512f available; `rows` below `map.rows`; `p0 + kc <= map.cols`; `kc <= KC_MAX`.
#[target_feature(enable = "avx512f")]
unsafe fn mapped_rows(
    map: NonzeroMapRef<'_>,
    rows: Range<usize>,
    p0: usize,
    kc: usize,
    steps: &mut [u32; KC_MAX],
) -> usize {
    // The rows' words from the one holding p0 ORed, and a zero word after the last:
    // at most ceil((63 + KC_MAX) / 64) + 1 of them.
    let mut or = [0u64; KC_MAX / 64 + 3];
    for (o, w) in or.iter_mut().zip(p0 / 64..(p0 + kc).div_ceil(64)) {
        *o = rows.clone().fold(0, |acc, r| acc | map.word(w, r));
    }
    let mut count = 0;
    for c in (0..kc).step_by(16) {
        let bit = p0 % 64 + c;
        let pair = u128::from(or[bit / 64]) | u128::from(or[bit / 64 + 1]) << 64;
        let mut nonzero = (pair >> (bit % 64)) as u16;
        if kc - c < 16 {
            nonzero &= (1u16 << (kc - c)) - 1;
        }
        // SAFETY: count <= c (one entry at most per step before c), c < kc <= KC_MAX.
        unsafe { append_steps(steps, &mut count, c, nonzero) };
    }
    count
}

/// [`row_words`](crate::gemm::nonzero_map::row_words) on zmm vectors: 16 magnitudes
/// tested per instruction.
///
/// # Panics
/// If `words` does not have `row.len().div_ceil(64)` words, or the CPU lacks avx512f.
pub(crate) fn row_words(row: &[f32], words: &mut [u64]) {
    assert_eq!(words.len(), row.len().div_ceil(64), "row_words: length mismatch");
    assert!(Isa::Avx512.is_available(), "row_words: avx512f not available");
    // SAFETY: avx512f was checked; the lengths agree.
    unsafe { row_words_impl(row, words) }
}

#[target_feature(enable = "avx512f")]
unsafe fn row_words_impl(row: &[f32], words: &mut [u64]) {
    let mag = _mm512_set1_epi32(super::steps::MAG as i32);
    let len = row.len();
    for (w, out) in words.iter_mut().enumerate() {
        let mut bits = 0u64;
        for q in 0..4 {
            let c = w * 64 + q * 16;
            if c >= len {
                break;
            }
            let lanes = if c + 16 <= len { u16::MAX } else { (1u16 << (len - c)) - 1 };
            // SAFETY: the masked load reads floats c.. of the row below its length only.
            let v = unsafe { _mm512_maskz_loadu_epi32(lanes, row.as_ptr().add(c).cast()) };
            bits |= u64::from(_mm512_test_epi32_mask(v, mag)) << (16 * q);
        }
        *out = bits;
    }
}

/// [`update_rank1`](super::update::update_rank1) on zmm lanes.
///
/// # Safety
/// The contract of `update::update_rank1`; avx512f available.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn update_rank1(
    x: *const f32,
    xs: usize,
    rows: usize,
    dz: *const f32,
    n: usize,
    u: &super::update::TileUpdate,
) {
    // SAFETY: forwarded contract.
    unsafe { super::update::update_rank1::<Zmm>(x, xs, rows, dz, n, u) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_is_a_transpose() {
        if !super::super::Isa::Avx512.is_available() {
            eprintln!("skipping: no avx512f");
            return;
        }
        for blocks in [1, 2] {
            let src: Vec<f32> = (0..15 * 37 + 16 * blocks).map(|i| i as f32).collect(); // stride 37
            let mut dst = vec![f32::NAN; (16 * blocks - 1) * 17 + 16]; // stride 17
            transpose16(&src, 37, &mut dst, 17, blocks);
            for r in 0..16 * blocks {
                for c in 0..16 {
                    assert_eq!(dst[r * 17 + c], src[c * 37 + r], "{blocks} blocks: ({r}, {c})");
                }
                assert!(r * 17 + 16 >= dst.len() || dst[r * 17 + 16].is_nan(), "wrote outside row {r}");
            }
        }
    }
}
