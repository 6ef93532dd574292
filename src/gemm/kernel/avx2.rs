//! AVX2 + FMA microkernel: 6 rows × 2 ymm vectors (16 floats) of C, 12 accumulators
//! (the BLIS haswell/zen sgemm shape). Per k step: 2 loads of packed B, 6 broadcasts
//! of packed A, 12 FMAs.
//!
//! ```text
//!            b[p][0..8]  b[p][8..16]
//! a[p][0]    acc[0][0]   acc[0][1]
//!   ...
//! a[p][5]    acc[5][0]   acc[5][1]
//! ```
//!
//! Edges: a partial vector (columns past `nr`) is loaded with `vmaskmovps`, which
//! neither reads nor faults on masked-off lanes, and stored by [`store_first`] with
//! plain stores of exactly the valid lanes; rows past `mr` are skipped.

use super::epilogue::{masks, store_tile, Lanes};
use super::update::{update_tile, TileUpdate};
use super::{steps, APanel, BPanel, Isa, Kernel, Tile};
use crate::gemm::blocking::KC_MAX;
use crate::gemm::nonzero_map::AMap;
use crate::matrix::MatRef;
use std::arch::x86_64::*;
use std::ops::Range;

pub(crate) struct Avx2;

impl Kernel for Avx2 {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = 6;
    const NR: usize = 16;
    const READS_B_IN_PLACE: bool = true;
    const SKIPS_ZERO_STEPS: bool = true;

    /// In place only when few row panels reuse B, n is wider than a tile and B's rows
    /// are at most 1 KiB apart. Unlike the 64-wide AVX-512 tile, whose B rows are 4
    /// adjacent cache lines per k step, this tile reads one 64-byte line per step at
    /// B's row stride, and rows 2 KiB or more apart fall into few L1 sets
    /// (docs/perf/design-notes.md has the measurements).
    fn b_in_place(rows: usize, _k: usize, n: usize, rs: usize, _tasks: usize) -> bool {
        rows <= super::super::blocking::DIRECT_B_MAX_ROWS && n > Self::NR && rs <= 256
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { tile_generic::<6, 2>(kc, a, b, t) }
    }
}

/// 2 × 32 tile (8 accumulators): products of one or two rows (a batch of 1 or 2),
/// where the 6 × 16 tile would compute its empty rows as copies of the last one.
pub(crate) struct Avx2Rows;

impl Kernel for Avx2Rows {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = 2;
    const NR: usize = 32;
    const READS_B_IN_PLACE: bool = true;
    const SKIPS_ZERO_STEPS: bool = true;
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { tile_generic::<2, 4>(kc, a, b, t) }
    }
}

/// 1 × 64 tile (8 accumulators): a product of one row (a batch of 1, `predict` of one
/// sample), a vector-matrix product bound by reading B: each k step reads four whole
/// cache lines of B's row, where the 2 × 32 tile reads two and spends half its FMAs on
/// the absent second row.
pub(crate) struct Avx2Row64;

impl Kernel for Avx2Row64 {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = 1;
    const NR: usize = 64;
    const READS_B_IN_PLACE: bool = true;
    const SKIPS_ZERO_STEPS: bool = true;
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { tile_generic::<1, 8>(kc, a, b, t) }
    }
}

/// The shared k loop ([`k_loop::accumulate`](super::k_loop::accumulate)) on ymm lanes,
/// in a function of its own so that the accumulators stay in registers. For the 6×16
/// tile, 12 accumulators + 2 B vectors + 1 broadcast use 15 of the 16 ymm registers.
///
/// # Safety
/// The contract of `k_loop::accumulate`; the CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn accumulate<const MR: usize, const NV: usize, const MASKED: bool, const LISTED: bool>(
    kc: usize,
    a: APanel,
    b: BPanel,
    mr: usize,
    masks: &[__m256i; NV],
) -> [[__m256; NV]; MR] {
    // SAFETY: forwarded contract; this function is compiled for the lanes' ISA.
    unsafe { super::k_loop::accumulate::<Ymm, MR, NV, MASKED, LISTED>(kc, a, b, mr, masks) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_generic<const MR: usize, const NV: usize>(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    // SAFETY: avx2 available. Lane l of vector v is valid when v·8 + l < nr.
    let masks: [__m256i; NV] = unsafe { masks::<Ymm, NV>(t.nr) };
    if t.mr == MR && t.nr == NV * 8 {
        // A whole tile: its own copy of the k loop, so that the accumulators go
        // straight from the loop's registers to the epilogue's (when both paths share
        // one loop, LLVM stores them to the stack before the branch).
        // SAFETY: forwarded contract; every B row has NV·8 readable columns.
        let acc = unsafe {
            if !a.steps.is_null() {
                accumulate::<MR, NV, false, true>(kc, a, b, t.mr, &masks)
            } else {
                accumulate::<MR, NV, false, false>(kc, a, b, t.mr, &masks)
            }
        };
        // SAFETY: forwarded contract, for a whole tile.
        return unsafe { store::<MR, NV, true>(&acc, t, &masks) };
    }
    // A packed panel is zero-padded to NR columns and a full tile reads only valid
    // columns, so both take plain loads; only a partial tile of a B read in place
    // needs its B loads masked.
    let listed = !a.steps.is_null();
    let masked = !b.padded && t.nr < NV * 8;
    // SAFETY (all four): forwarded contract; masked loads stay within columns j < nr,
    // and unmasked ones are taken only when every B row has NV·8 readable columns.
    let acc = unsafe {
        match (listed, masked) {
            (false, true) => accumulate::<MR, NV, true, false>(kc, a, b, t.mr, &masks),
            (false, false) => accumulate::<MR, NV, false, false>(kc, a, b, t.mr, &masks),
            (true, true) => accumulate::<MR, NV, true, true>(kc, a, b, t.mr, &masks),
            (true, false) => accumulate::<MR, NV, false, true>(kc, a, b, t.mr, &masks),
        }
    };
    // SAFETY: forwarded contract.
    unsafe { store::<MR, NV, false>(&acc, t, &masks) }
}

/// The shared epilogue on ymm lanes, as a function compiled for avx2 that LLVM may
/// keep out of line where inlining it would crowd the k loop's registers.
///
/// # Safety
/// The tile contract of [`Kernel::tile`] for `t` (whole when `WHOLE`); `masks` from
/// `masks(t.nr)`; avx2 available.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store<const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[__m256; NV]; MR],
    t: &Tile,
    masks: &[__m256i; NV],
) {
    // SAFETY: forwarded contract.
    unsafe { store_tile::<Ymm, MR, NV, WHOLE>(acc, t, masks) }
}

/// The AVX2 lanes of the shared epilogue ([`store_tile`]): ymm vectors, `vmaskmovps`
/// loads for partial vectors, [`store_first`] for partial stores.
pub(crate) struct Ymm;

impl Lanes for Ymm {
    type V = __m256;
    type Mask = __m256i;
    const W: usize = 8;

    #[inline(always)]
    unsafe fn mask(valid: usize) -> __m256i {
        // SAFETY: avx2 available (the caller's contract).
        unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
    }
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: avx available.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: avx available.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: fma available.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn relu(x: __m256) -> __m256 {
        // SAFETY: avx available. max(0, x) returns x when x is NaN, and −0.0 for −0.0.
        unsafe { _mm256_max_ps(_mm256_setzero_ps(), x) }
    }
    #[inline(always)]
    unsafe fn keep_where_positive(h: __m256, x: __m256) -> __m256 {
        // SAFETY: avx available; the ordered compare is false for NaN.
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(h, _mm256_setzero_ps()), x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: 8 readable floats at p (the caller's contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, mask: __m256i) -> __m256 {
        // SAFETY: vmaskmovps reads only the masked lanes, which the caller vouches for.
        unsafe { _mm256_maskload_ps(p, mask) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: __m256) {
        // SAFETY: 8 writable floats at p (the caller's contract).
        unsafe { _mm256_storeu_ps(p, x) }
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, x: __m256, _mask: __m256i, valid: usize) {
        // SAFETY: `valid` writable floats at p (the caller's contract).
        unsafe { store_first(p, x, valid) }
    }
    // SAFETY (the operations below): avx2 available, the caller's contract.
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sqrt(x: __m256) -> __m256 {
        unsafe { _mm256_sqrt_ps(x) }
    }
    #[inline(always)]
    unsafe fn sign(x: __m256) -> __m256 {
        unsafe {
            let negative = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
            _mm256_blendv_ps(_mm256_set1_ps(1.0), _mm256_set1_ps(-1.0), negative)
        }
    }
    #[inline(always)]
    unsafe fn max_abs_bits(acc: __m256, x: __m256) -> __m256 {
        unsafe {
            let magnitude = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fff_ffff));
            _mm256_castsi256_ps(_mm256_max_epu32(_mm256_castps_si256(acc), magnitude))
        }
    }
    #[inline(always)]
    unsafe fn keep_valid(x: __m256, mask: __m256i) -> __m256 {
        unsafe { _mm256_and_ps(x, _mm256_castsi256_ps(mask)) }
    }
    #[inline(always)]
    unsafe fn update<const MR: usize, const NV: usize, const WHOLE: bool>(
        acc: &[[__m256; NV]; MR],
        t: &Tile,
        masks: &[__m256i; NV],
        u: &TileUpdate,
    ) {
        // SAFETY: forwarded contract.
        unsafe { update_ymm::<MR, NV, WHOLE>(acc, t, masks, u) }
    }
}

/// The update epilogue on ymm lanes, out of line.
///
/// # Safety
/// The contract of [`update_tile`]; avx2 available.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn update_ymm<const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[__m256; NV]; MR],
    t: &Tile,
    masks: &[__m256i; NV],
    u: &TileUpdate,
) {
    // SAFETY: forwarded contract.
    unsafe { update_tile::<Ymm, MR, NV, WHOLE>(acc, t, masks, u) }
}

/// Stores the first `n` lanes (`n ≤ 8`) of `x` at `p` with plain 128/64/32-bit stores.
///
/// Not `vmaskmovps`: on AMD cores its store form is microcoded, and the narrow tile's
/// row stores spent much of their time there. Its load form is one uop and stays.
///
/// # Safety
/// `p .. p + n` is valid for writes; avx2 available.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_first(p: *mut f32, x: __m256, n: usize) {
    debug_assert!(n <= 8);
    // SAFETY (every store): it writes floats `p + done .. p + done + width` with
    // `done + width ≤ n`, inside the caller's range.
    unsafe {
        if n == 8 {
            return _mm256_storeu_ps(p, x);
        }
        let (mut v, mut done) = (_mm256_castps256_ps128(x), 0);
        if n >= 4 {
            _mm_storeu_ps(p, v);
            v = _mm256_extractf128_ps::<1>(x);
            done = 4;
        }
        if n - done >= 2 {
            _mm_storel_epi64(p.add(done).cast(), _mm_castps_si128(v));
            v = _mm_movehl_ps(v, v);
            done += 2;
        }
        if n > done {
            _mm_store_ss(p.add(done), v);
        }
    }
}

/// Transposes a strip of `blocks` 8 × 8 blocks lying side by side in 8 rows of `src`
/// into `8·blocks` rows of `dst`: `dst[r * dst_stride + c] = src[c * src_stride + r]`
/// for `r < 8·blocks`, `c < 8`, in registers (unpack, shuffle, 128-bit lane permute):
/// packing `Bᵀ` (as in `dX = dZ·Wᵀ`) or a row-major A for a tile with vectors along m
/// moves 8 floats per instruction instead of one. One call per strip, not per block,
/// so that the checks are paid once per strip.
///
/// # Panics
/// If either slice is too short, or the CPU lacks avx2.
pub(crate) fn transpose8(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, blocks: usize) {
    if blocks == 0 {
        return;
    }
    assert!(
        src.len() >= 7 * src_stride + 8 * blocks && dst.len() >= (8 * blocks - 1) * dst_stride + 8,
        "transpose8: slices too short"
    );
    assert!(super::Isa::Avx2.is_available(), "transpose8: avx2 not available");
    // SAFETY: avx2 was checked; the asserts above cover every row read and written.
    unsafe { transpose8_impl(src, src_stride, dst, dst_stride, blocks) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8_impl(src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize, blocks: usize) {
    for b in 0..blocks {
        // SAFETY: row i of block b starts at i * src_stride + 8b and has 8 floats
        // inside `src` (asserted: 7 * src_stride + 8 * blocks ≤ len).
        let r: [__m256; 8] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.as_ptr().add(i * src_stride + 8 * b)) });
        for (i, row) in transpose8x8(r).into_iter().enumerate() {
            // SAFETY: row 8b + i of `dst` has 8 floats inside it (asserted).
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add((8 * b + i) * dst_stride), row) };
        }
    }
}

/// The 8 × 8 transpose in registers: output row `i` lane `j` = input row `j` lane `i`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8x8(r: [__m256; 8]) -> [__m256; 8] {
    // Interleave pairs of rows, then pairs of pairs (within 128-bit lanes).
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    // u[i] holds the low lanes of output row i (from input rows 0–3) and u[4 + i] its
    // high lanes (from rows 4–7): combine 128-bit halves.
    let mut out = [_mm256_setzero_ps(); 8];
    for i in 0..4 {
        out[i] = _mm256_permute2f128_ps::<0x20>(u[i], u[4 + i]);
        out[4 + i] = _mm256_permute2f128_ps::<0x31>(u[i], u[4 + i]);
    }
    out
}

/// Narrow AVX2 tile for outputs with n ≤ 10 (the 10-class layer) when A is read in
/// place with unit row stride (`dW3 = a2ᵀ·dZ3`): 16 rows × 5 columns,
/// with the vectors along m instead of n. The 6 × 16 tile would spend 16 lanes on 10
/// columns; here the 10 columns are two whole tiles and every lane is used. Per k
/// step: 2 loads of A (16 rows of one column), 5 broadcasts of B (one row), 10 FMAs;
/// 10 accumulators, 2 A vectors and 1 broadcast use 13 of the 16 ymm registers.
///
/// ```text
///              b[p][0]     ...  b[p][4]
/// a[p][0..8]   acc[0][0]        acc[4][0]
/// a[p][8..16]  acc[0][1]        acc[4][1]
/// ```
///
/// A must have unit row stride: a packed panel (`cs = 16`), or Aᵀ read in place
/// (`dW = Xᵀ·dZ`), whose rows past `mr` are masked off. B is read in place from any
/// row-major B (broadcasts of the row's first `nr` values; column indices past `nr`
/// re-read column `nr − 1`, never stored) or from a packed panel. After the k loop the
/// two 8 × 8 blocks are transposed in registers, so the epilogue works on rows of C
/// exactly as the 6 × 16 kernel does.
pub(crate) struct Avx2Narrow;

impl Kernel for Avx2Narrow {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = 16;
    const NR: usize = 5;
    const READS_B_IN_PLACE: bool = true;

    fn a_in_place(rs: usize, cs: usize) -> bool {
        // Aᵀ (unit row stride) only: a row-major A is packed (with 8 × 8 transposes).
        rs == 1 && cs != 1
    }
    fn b_in_place(_rows: usize, _k: usize, _n: usize, _rs: usize, _tasks: usize) -> bool {
        true
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { narrow_tile(kc, a, b, t) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    const MR: usize = 16;
    const NR: usize = 5;
    debug_assert!(a.rs == 1, "the narrow AVX2 kernel reads A columns");
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let lane_mask = |valid: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(valid.min(8) as i32), lanes);
    let row_masks = [lane_mask(t.mr), lane_mask(t.mr.saturating_sub(8))];
    // Columns at or past nr re-read column nr - 1 (never stored).
    let cols: [usize; NR] = std::array::from_fn(|j| j.min(t.nr - 1));
    let masked_a = t.mr < MR;
    let mut acc = [[_mm256_setzero_ps(); 2]; NR];
    for p in 0..kc {
        // SAFETY: p < kc; A column p has rows i < mr readable (all 16 of a packed,
        // padded panel; masked loads touch only lanes i < mr otherwise); B row p has
        // columns j < nr readable, and `cols` stays below nr.
        unsafe {
            let ap = a.ptr.add(p * a.cs);
            let av = if masked_a {
                [_mm256_maskload_ps(ap, row_masks[0]), _mm256_maskload_ps(ap.add(8), row_masks[1])]
            } else {
                [_mm256_loadu_ps(ap), _mm256_loadu_ps(ap.add(8))]
            };
            let bp = b.ptr.add(p * b.rs);
            for (col, &j) in acc.iter_mut().zip(cols.iter()) {
                let bj = _mm256_broadcast_ss(&*bp.add(j));
                col[0] = _mm256_fmadd_ps(av[0], bj, col[0]);
                col[1] = _mm256_fmadd_ps(av[1], bj, col[1]);
            }
        }
    }
    // Rows of C: rows[i] lane j = C[i][j] for j < 5 (lanes 5..8 are zero).
    let zero = _mm256_setzero_ps();
    let mut rows = [zero; MR];
    for h in 0..2 {
        let block = transpose8x8(std::array::from_fn(|j| if j < NR { acc[j][h] } else { zero }));
        rows[8 * h..8 * h + 8].copy_from_slice(&block);
    }
    let rows: [[__m256; 1]; MR] = std::array::from_fn(|i| [rows[i]]);
    // SAFETY: the tile contract for `t` (nr ≤ 5 ≤ 8 columns, one masked vector per row).
    unsafe { store::<MR, 1, false>(&rows, t, &masks::<Ymm, 1>(t.nr)) }
}

/// [`update_rank1`](super::update::update_rank1) on ymm lanes.
///
/// # Safety
/// The contract of `update::update_rank1`; avx2 and fma available.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn update_rank1(
    x: *const f32,
    xs: usize,
    rows: usize,
    dz: *const f32,
    n: usize,
    u: &super::update::TileUpdate,
) {
    // SAFETY: forwarded contract.
    unsafe { super::update::update_rank1::<Ymm>(x, xs, rows, dz, n, u) }
}

/// [`steps::nonzero_steps`] in ymm vectors, for the AVX2 tiles: row-major A (the
/// forward `X·W`) ORs eight steps of every row per instruction and takes the nonzero
/// steps from a movemask; Aᵀ in place (`Xᵀ·dZ`, a tile's rows adjacent at each step)
/// tests each step's rows with one or two masked loads. It serves the AVX-512 tiles too
/// (every AVX-512 CPU has AVX2), up to their 16 rows. Other layouts, more than 16 rows,
/// or no avx2: the portable builder.
pub(crate) fn nonzero_steps(
    a: MatRef<'_>,
    rows: Range<usize>,
    p0: usize,
    kc: usize,
    steps: &mut [u32; KC_MAX],
) -> usize {
    let (rs, cs) = (a.row_stride(), a.col_stride());
    let n = rows.len();
    if n == 0 || n > 16 || kc == 0 || kc > KC_MAX || !Isa::Avx2.is_available() {
        return steps::nonzero_steps(a, rows, p0, kc, steps);
    }
    let data = a.as_slice();
    if cs == 1 {
        let runs = steps::row_runs(a, rows, p0, kc);
        // SAFETY: avx2 was checked; every run has kc floats.
        unsafe { row_runs_nonzero(&runs[..n], kc, steps) }
    } else if rs == 1 {
        // The last step's rows end inside the view (checked once here; the loop reads
        // each step's n floats at a stride of cs).
        assert!(rows.start + (p0 + kc - 1) * cs + n <= data.len(), "nonzero_steps: A too short");
        // SAFETY: avx2 was checked; the assert covers every step's n floats.
        unsafe { adjacent_rows_nonzero(&data[rows.start + p0 * cs..], n, cs, kc, steps) }
    } else {
        steps::nonzero_steps(a, rows, p0, kc, steps)
    }
}

/// The steps `p < kc` at which some `runs[r][p]` is not ±0.
///
/// # Safety
/// avx2 available; every run has at least `kc` floats; `kc <= KC_MAX`.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_runs_nonzero(runs: &[&[f32]], kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let mag = _mm256_set1_epi32(steps::MAG as i32);
    let zero = _mm256_setzero_si256();
    // Eight nonzero bits of one vector of OR-ed magnitudes.
    let nonzero8 = |v: __m256i| {
        !_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, mag), zero))) as u32 & 0xff
    };
    let mut count = 0;
    let mut c = 0;
    while c < kc {
        let mut bits = 0u32;
        let width = if c + 32 <= kc {
            let mut or = [zero; 4];
            for run in runs {
                for (v, o) in or.iter_mut().enumerate() {
                    // SAFETY: c + 32 <= kc floats of the run.
                    *o = _mm256_or_si256(*o, unsafe { _mm256_loadu_si256(run.as_ptr().add(c + 8 * v).cast()) });
                }
            }
            for (v, &o) in or.iter().enumerate() {
                bits |= nonzero8(o) << (8 * v);
            }
            32
        } else if c + 8 <= kc {
            let mut or = zero;
            for run in runs {
                // SAFETY: c + 8 <= kc floats of the run.
                or = _mm256_or_si256(or, unsafe { _mm256_loadu_si256(run.as_ptr().add(c).cast()) });
            }
            bits = nonzero8(or);
            8
        } else {
            for p in 0..kc - c {
                let or = runs.iter().fold(0, |o, run| o | (run[c + p].to_bits() & steps::MAG));
                bits |= u32::from(or != 0) << p;
            }
            kc - c
        };
        while bits != 0 {
            steps[count] = (c + bits.trailing_zeros() as usize) as u32;
            count += 1;
            bits &= bits - 1;
        }
        c += width;
    }
    count
}

/// [`steps::mapped_steps`] on ymm vectors for `Xᵀ` (A's rows are map columns): four map
/// rows' words per load, tested against the tile's bits. Row-major A (its rows' words
/// ORed, then the set bits one by one), tiles of more than 16 rows, or no avx2: the
/// portable builder.
pub(crate) fn mapped_steps(a: AMap<'_>, rows: Range<usize>, p0: usize, kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let map = a.map;
    if !a.transposed || rows.is_empty() || rows.len() > 16 || kc > KC_MAX || !Isa::Avx2.is_available() {
        return steps::mapped_steps(a, rows, p0, kc, steps);
    }
    assert!(
        rows.end <= map.cols && p0 + kc <= map.rows,
        "mapped_steps: rows {rows:?}, steps {p0}+{kc} outside the map"
    );
    let [(run0, m0), (run1, m1)] = steps::tile_word_runs(map, rows, p0, kc);
    // SAFETY: avx2 was checked; both runs have kc words; kc <= KC_MAX.
    unsafe { mapped_columns(run0, m0, run1, m1, steps) }
}

/// The steps `p < run0.len()` at which `run0[p] & m0` or `run1[p] & m1` is not zero.
///
/// # Safety
/// avx2 available; `run0.len() == run1.len() <= KC_MAX`.
#[target_feature(enable = "avx2,fma")]
unsafe fn mapped_columns(run0: &[u64], m0: u64, run1: &[u64], m1: u64, steps: &mut [u32; KC_MAX]) -> usize {
    let (v0, v1) = (_mm256_set1_epi64x(m0 as i64), _mm256_set1_epi64x(m1 as i64));
    let (kc, mut count) = (run0.len(), 0);
    let mut p = 0;
    while p + 4 <= kc {
        // SAFETY: words p..p + 4 of both runs (p + 4 <= kc).
        let (x0, x1) = unsafe {
            (_mm256_loadu_si256(run0.as_ptr().add(p).cast()), _mm256_loadu_si256(run1.as_ptr().add(p).cast()))
        };
        let hit = _mm256_or_si256(_mm256_and_si256(x0, v0), _mm256_and_si256(x1, v1));
        let zero = _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(hit, _mm256_setzero_si256())));
        for lane in 0..4 {
            steps[count] = (p + lane) as u32;
            count += (zero >> lane & 1 == 0) as usize;
        }
        p += 4;
    }
    for q in p..kc {
        steps[count] = q as u32;
        count += (run0[q] & m0 | run1[q] & m1 != 0) as usize;
    }
    count
}

/// [`row_words`](crate::gemm::nonzero_map::row_words) on ymm vectors: eight magnitudes
/// tested per instruction, the tail one by one.
///
/// # Panics
/// If `words` does not have `row.len().div_ceil(64)` words, or the CPU lacks avx2.
pub(crate) fn row_words(row: &[f32], words: &mut [u64]) {
    assert_eq!(words.len(), row.len().div_ceil(64), "row_words: length mismatch");
    assert!(Isa::Avx2.is_available(), "row_words: avx2 not available");
    // SAFETY: avx2 was checked; the lengths agree.
    unsafe { row_words_impl(row, words) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_words_impl(row: &[f32], words: &mut [u64]) {
    let mag = _mm256_set1_epi32(steps::MAG as i32);
    let zero = _mm256_setzero_si256();
    let mut chunks = row.chunks_exact(8);
    let mut bits = 0u64;
    let mut c = 0usize;
    for chunk in &mut chunks {
        // SAFETY: `chunk` has exactly 8 floats.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        let zeros = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(v, mag), zero)));
        bits |= u64::from(!zeros as u8) << (c % 64);
        c += 8;
        if c.is_multiple_of(64) {
            words[c / 64 - 1] = bits;
            bits = 0;
        }
    }
    for &x in chunks.remainder() {
        bits |= u64::from(x.to_bits() & steps::MAG != 0) << (c % 64);
        c += 1;
    }
    if !c.is_multiple_of(64) {
        words[c / 64] = bits;
    }
}

/// The steps `p < kc` at which some of `a[p * cs..][..n]` is not ±0 (`n <= 16`).
///
/// # Safety
/// avx2 available; `(kc - 1) * cs + n <= a.len()`, `1 <= n <= 16`, `kc <= KC_MAX`.
#[target_feature(enable = "avx2,fma")]
unsafe fn adjacent_rows_nonzero(a: &[f32], n: usize, cs: usize, kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let low = _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), index);
    let mag = _mm256_set1_epi32(steps::MAG as i32);
    let mut count = 0;
    if n <= 8 {
        for p in 0..kc {
            // SAFETY: the masked load reads the n floats at p * cs, inside `a` by the
            // contract; the lanes past n are neither read nor able to fault.
            let v = unsafe { _mm256_maskload_ps(a.as_ptr().add(p * cs), low) };
            steps[count] = p as u32;
            count += (_mm256_testz_si256(_mm256_castps_si256(v), mag) == 0) as usize;
        }
    } else {
        let high = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32 - 8), index);
        for p in 0..kc {
            // SAFETY: as above: floats p·cs .. p·cs + 8 and the n − 8 after them, all
            // among the n inside `a`; masked-off lanes are neither read nor faulted on.
            let v = unsafe {
                let row = a.as_ptr().add(p * cs);
                _mm256_or_ps(_mm256_maskload_ps(row, low), _mm256_maskload_ps(row.add(8), high))
            };
            steps[count] = p as u32;
            count += (_mm256_testz_si256(_mm256_castps_si256(v), mag) == 0) as usize;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose8_is_a_transpose() {
        if !super::super::Isa::Avx2.is_available() {
            eprintln!("skipping: no avx2");
            return;
        }
        for blocks in [1, 3] {
            let src: Vec<f32> = (0..7 * 27 + 8 * blocks).map(|i| i as f32).collect(); // stride 27
            let mut dst = vec![f32::NAN; (8 * blocks - 1) * 9 + 8]; // stride 9
            super::transpose8(&src, 27, &mut dst, 9, blocks);
            for r in 0..8 * blocks {
                for c in 0..8 {
                    assert_eq!(dst[r * 9 + c], src[c * 27 + r], "{blocks} blocks: ({r}, {c})");
                }
                assert!(r * 9 + 8 >= dst.len() || dst[r * 9 + 8].is_nan(), "wrote outside row {r}");
            }
        }
    }

    #[test]
    fn store_first_writes_exactly_n_lanes() {
        if !super::super::Isa::Avx2.is_available() {
            eprintln!("skipping: no avx2");
            return;
        }
        use std::arch::x86_64::_mm256_setr_ps;
        for n in 0..=8 {
            let mut out = [f32::NAN; 10];
            // SAFETY: avx2 checked above; out[1..1 + n] is inside the array (n ≤ 8).
            unsafe {
                let x = _mm256_setr_ps(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0);
                super::store_first(out.as_mut_ptr().add(1), x, n);
            }
            for (j, &v) in out.iter().enumerate() {
                if (1..=n).contains(&j) {
                    assert_eq!(v, j as f32, "n = {n}: lane {}", j - 1);
                } else {
                    assert!(v.is_nan(), "n = {n}: wrote slot {j}");
                }
            }
        }
    }

    #[test]
    fn nonzero_step_lists_of_every_builder_match_the_definition() {
        use crate::gemm::blocking::KC_MAX;
        use crate::gemm::nonzero_map::{AMap, NonzeroMap};
        use crate::matrix::{MatRef, Matrix};
        if !super::super::Isa::Avx2.is_available() {
            eprintln!("skipping: no avx2");
            return;
        }
        // -0 is skipped; denormals, NaN and ∞ are not.
        let values = [0.0, -0.0, 0.0, -0.0, 1.5, -2.0, f32::MIN_POSITIVE / 4.0, f32::NAN, f32::INFINITY];
        let mut rng = crate::rng::Rng::new(17);
        // 70 rows: tiles of Aᵀ from row 60 span two words of its map.
        let (m, k) = (70, KC_MAX + 9);
        let (mut cases, mut mapped) = (0, 0);
        for density in [0.0, 0.03, 0.3, 1.0] {
            let mut pick = |_: usize, _: usize| {
                if rng.next_f32() < density {
                    values[4 + rng.below(values.len() - 4)]
                } else {
                    values[rng.below(4)]
                }
            };
            // Row-major, its transpose stored row-major and read as Aᵀ, and a strided
            // layout (portable in both); each view ends at its buffer's last float.
            let rm = Matrix::from_fn(m, k, &mut pick);
            let tr = Matrix::from_fn(k, m, &mut pick);
            let st: Vec<f32> = (0..2 * m * k).map(|i| if i % 2 == 0 { pick(0, 0) } else { f32::NAN }).collect();
            let views = [rm.view(), tr.view().t(), MatRef::from_strides(&st[..2 * m * k - 1], m, k, 2, 2 * m).unwrap()];
            // The maps of the first two (no map of the strided one: nothing makes it).
            let (rm_map, tr_map) = (NonzeroMap::of(rm.view()), NonzeroMap::of(tr.view()));
            let maps = [
                Some(AMap { map: rm_map.view(), transposed: false }),
                Some(AMap { map: tr_map.view(), transposed: true }),
                None,
            ];
            for (a, map) in views.into_iter().zip(maps) {
                for (p0, kc) in
                    [(0, 1), (0, 7), (0, 8), (3, 9), (1, 31), (0, 32), (5, 33), (2, 100), (9, KC_MAX), (0, 0)]
                {
                    for n in [1, 2, 5, 6, 7, 8, 9, 12, 13, 16, 17] {
                        for start in [0, 60, m - n].into_iter().filter(|s| s + n <= m) {
                            let rows = start..start + n;
                            let want: Vec<u32> = (0..kc)
                                .filter(|&p| rows.clone().any(|i| a.get(i, p0 + p) != 0.0))
                                .map(|p| p as u32)
                                .collect();
                            let (mut fast, mut twin) = ([0u32; KC_MAX], [0u32; KC_MAX]);
                            let nf = super::nonzero_steps(a, rows.clone(), p0, kc, &mut fast);
                            let nt = super::steps::nonzero_steps(a, rows.clone(), p0, kc, &mut twin);
                            let what = format!(
                                "strides {:?}, rows {rows:?}, p0 {p0}, kc {kc}, density {density}",
                                (a.row_stride(), a.col_stride())
                            );
                            assert_eq!(&twin[..nt], &want[..], "portable: {what}");
                            assert_eq!(&fast[..nf], &want[..], "avx2: {what}");
                            if super::super::Isa::Avx512.is_available() {
                                let mut wide = [u32::MAX; KC_MAX];
                                let nw = super::super::avx512::nonzero_steps(a, rows.clone(), p0, kc, &mut wide);
                                assert_eq!(&wide[..nw], &want[..], "avx512: {what}");
                            }
                            if let Some(map) = map {
                                let (mut fast, mut twin) = ([u32::MAX; KC_MAX], [u32::MAX; KC_MAX]);
                                let nt = super::steps::mapped_steps(map, rows.clone(), p0, kc, &mut twin);
                                assert_eq!(&twin[..nt], &want[..], "portable, mapped: {what}");
                                let nf = super::mapped_steps(map, rows.clone(), p0, kc, &mut fast);
                                assert_eq!(&fast[..nf], &want[..], "avx2, mapped: {what}");
                                if super::super::Isa::Avx512.is_available() {
                                    let nw = super::super::avx512::mapped_steps(map, rows.clone(), p0, kc, &mut fast);
                                    assert_eq!(&fast[..nw], &want[..], "avx512, mapped: {what}");
                                }
                                mapped += 1;
                            }
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!((cases, mapped), (4 * 3 * 10 * 29, 4 * 2 * 10 * 29));
    }
}
