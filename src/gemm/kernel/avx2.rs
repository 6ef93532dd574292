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
//! Edges: a partial vector (columns past `nr`) uses `vmaskmovps`, which neither reads
//! nor writes masked-off lanes; rows past `mr` are skipped.

use super::{APanel, BPanel, Isa, Kernel, Tile, TileEpilogue};
use std::arch::x86_64::*;

pub(crate) struct Avx2;

impl Kernel for Avx2 {
    const ISA: Isa = Isa::Avx2;
    const MR: usize = 6;
    const NR: usize = 16;
    const READS_B_IN_PLACE: bool = true;

    /// In place only when few row panels reuse B, n is wider than a tile and B's rows
    /// are at most 1 KiB apart. Unlike the 64-wide AVX-512 tile, whose B rows are 4
    /// adjacent cache lines per k step, this tile reads one 64-byte line per step at
    /// B's row stride. Measured on Zen 4 (interleaved medians): 128×784×128 106 in
    /// place vs 101 GFLOP/s packed, 128×784×256 100 vs 100, but 128×512×512 84 vs 99
    /// and 256×256×1024 59 vs 104 (rows 2 and 4 KiB apart fall into few L1 sets), dW1
    /// 784×128×128 (a small B under 784 rows) 96 vs 105.5, and 128×64×10 46.6 vs 49.8.
    fn b_in_place(rows: usize, _k: usize, n: usize, rs: usize) -> bool {
        rows <= super::super::blocking::DIRECT_B_MAX_ROWS && n > Self::NR && rs <= 256
    }
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { tile_generic::<6, 2>(kc, a, b, t) }
    }
}

/// The k loop: `MR × NV` accumulators, B rows loaded (masked or not), A broadcast.
///
/// It lives in its own function, returning the accumulators by value, so that they
/// stay in registers: with the loop written inside the epilogue's function LLVM kept
/// the 12 accumulators in a stack array and stored each one after its FMA (seen in the
/// disassembly), which made the loop bound by stores at ≈ 40% of the FMA peak.
/// 12 accumulators + 2 B vectors + 1 broadcast use 15 of the 16 ymm registers.
///
/// # Safety
/// The tile contract; when `!MASKED`, B rows must have `NV·8` readable columns; the
/// CPU supports avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn accumulate<const MR: usize, const NV: usize, const MASKED: bool>(
    kc: usize,
    a: APanel,
    b: BPanel,
    mr: usize,
    masks: &[__m256i; NV],
) -> [[__m256; NV]; MR] {
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    // Rows at or past mr re-read row mr - 1 (never stored): A is not read outside the tile.
    let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.wrapping_add(i.min(mr - 1) * a.rs));
    for p in 0..kc {
        // SAFETY: p < kc: B row p is read at columns the caller vouched for (all NV·8
        // when unmasked; masked lanes j ≥ nr are neither read nor faulted on), and
        // each row pointer addresses a row i < mr at step p, readable by contract.
        unsafe {
            let bp = b.ptr.add(p * b.rs);
            // Ask for B's row p + 2 now: read in place, its rows are a row stride
            // apart and the hardware prefetcher alone left the loop waiting on them
            // (Zen 4, interleaved: 128×784×128 103.7 → 107.8 GFLOP/s, 128×784×256 92.9 →
            // 102.9, 128×512×512 80.5 → 88.0; 3 and 4 rows ahead gained less, 8 lost).
            // A prefetch never faults, so the address may lie past the panel.
            _mm_prefetch::<_MM_HINT_T0>(bp.wrapping_add(2 * b.rs).cast());
            let bv: [__m256; NV] = std::array::from_fn(|v| {
                if MASKED {
                    _mm256_maskload_ps(bp.add(v * 8), masks[v])
                } else {
                    _mm256_loadu_ps(bp.add(v * 8))
                }
            });
            for (row, ap) in acc.iter_mut().zip(rows.iter()) {
                let ai = _mm256_broadcast_ss(&*ap.add(p * a.cs));
                for (x, bv) in row.iter_mut().zip(bv.iter()) {
                    *x = _mm256_fmadd_ps(ai, *bv, *x);
                }
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_generic<const MR: usize, const NV: usize>(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    // Lane l of vector v is valid when v·8 + l < nr.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; NV] =
        std::array::from_fn(|v| _mm256_cmpgt_epi32(_mm256_set1_epi32(t.nr.saturating_sub(v * 8).min(8) as i32), lanes));
    if t.mr == MR && t.nr == NV * 8 {
        // A whole tile: its own copy of the k loop, so that the accumulators go
        // straight from the loop's registers to the epilogue's (when both paths share
        // one loop, LLVM stores them to the stack before the branch).
        // SAFETY: forwarded contract; every B row has NV·8 readable columns.
        let acc = unsafe { accumulate::<MR, NV, false>(kc, a, b, t.mr, &masks) };
        // SAFETY: forwarded contract, for a whole tile.
        return unsafe { store_tile::<MR, NV, true>(&acc, t, &masks) };
    }
    // A packed panel is zero-padded to NR columns and a full tile reads only valid
    // columns, so both take plain loads; only a partial tile of a B read in place
    // needs its B loads masked.
    let acc = if !b.padded && t.nr < NV * 8 {
        // SAFETY: forwarded contract; masked loads stay within columns j < nr.
        unsafe { accumulate::<MR, NV, true>(kc, a, b, t.mr, &masks) }
    } else {
        // SAFETY: forwarded contract; every B row has NV·8 readable columns here.
        unsafe { accumulate::<MR, NV, false>(kc, a, b, t.mr, &masks) }
    };
    // SAFETY: forwarded contract.
    unsafe { store_tile::<MR, NV, false>(&acc, t, &masks) }
}

/// The epilogue: add C, the bias, ReLU or the ReLU mask with its column sums, then
/// store the valid part of the tile. `WHOLE` (an `MR × NV·8` tile) makes every loop
/// bound and every full-vector test a constant: with the bounds at run time LLVM kept
/// the accumulators in a stack array and reloaded them (12 stores and 12 loads per
/// tile, a tenth of a 128×10×64 GEMM, whose tiles run only 10 k steps).
///
/// # Safety
/// The tile contract of [`Kernel::tile`] for `t` (with `t.mr == MR`, `t.nr == NV·8`
/// when `WHOLE`); `masks` the lane masks of `t.nr`; avx2 available.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_tile<const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[__m256; NV]; MR],
    t: &Tile,
    masks: &[__m256i; NV],
) {
    let rows = if WHOLE { MR } else { t.mr };
    let full = |v: usize| WHOLE || t.nr >= (v + 1) * 8;
    let zero = _mm256_setzero_ps();
    // SAFETY (whole store phase): full vectors lie inside the tile's valid columns;
    // partial ones are loaded through vmaskmovps with exactly the valid lanes set and
    // stored by `store_first` with exactly the valid count (none for a vector wholly
    // past nr, whose address is only formed, with wrapping_add); rows are limited to
    // mr. All offsets read or written are ones the caller guarantees valid.
    unsafe {
        let load = |v: usize, p: *const f32| -> __m256 {
            if full(v) {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, masks[v])
            }
        };
        // Vector v of a row (of C or of the column sums) at p.
        let store_at = |p: *mut f32, v: usize, x: __m256| {
            if full(v) {
                _mm256_storeu_ps(p, x)
            } else {
                store_first(p, x, t.nr.saturating_sub(v * 8))
            }
        };
        let store = |i: usize, v: usize, x: __m256| store_at(t.c.wrapping_add(i * t.rsc + v * 8), v, x);
        let add_c = |i: usize, v: usize, x: __m256| -> __m256 {
            if t.load_c {
                _mm256_add_ps(x, load(v, t.c.wrapping_add(i * t.rsc + v * 8)))
            } else {
                x
            }
        };
        match t.epilogue {
            TileEpilogue::None => {
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        store(i, v, add_c(i, v, x));
                    }
                }
            }
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let relu = matches!(t.epilogue, TileEpilogue::BiasRelu(_));
                let bv: [__m256; NV] = std::array::from_fn(|v| load(v, bias.wrapping_add(v * 8)));
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let mut x = _mm256_add_ps(add_c(i, v, x), bv[v]);
                        if relu {
                            x = _mm256_max_ps(zero, x); // NaN in x passes through
                        }
                        store(i, v, x);
                    }
                }
            }
            TileEpilogue::ReluMask { h, rsh, colsum } => {
                let mut sums = [zero; NV];
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let hv = load(v, h.wrapping_add(i * rsh + v * 8));
                        let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(hv, zero);
                        let x = _mm256_and_ps(keep, add_c(i, v, x));
                        sums[v] = _mm256_add_ps(sums[v], x);
                        store(i, v, x);
                    }
                }
                if !colsum.is_null() {
                    for (v, &s) in sums.iter().enumerate() {
                        store_at(colsum.wrapping_add(v * 8), v, s);
                    }
                }
            }
        }
    }
}
/// Stores the first `n` lanes (`n ≤ 8`) of `x` at `p` with plain 128/64/32-bit stores.
///
/// Not `vmaskmovps`: on AMD cores its store form is microcoded (Zen 3 and Zen 4 take
/// about 12 cycles for one), and the 16 row stores of the narrow tile spent a third
/// of its time there (sampled with `perf` on 128×64×10). Its load form is one
/// uop and stays.
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
/// moves 8 floats per instruction instead of one. One call per strip, not per block:
/// per-block calls (each with its checks) were a quarter of a 128×64×10 GEMM.
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
/// place with unit row stride (`dW3 = a2ᵀ·dZ3`: 50 → 74 GFLOP/s on Zen 4): 16 rows × 5 columns,
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
    fn b_in_place(_rows: usize, _k: usize, _n: usize, _rs: usize) -> bool {
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
    // SAFETY: the tile contract for `t` (nr ≤ 5 ≤ 8 columns, one masked vector per row).
    unsafe { store_rows::<MR>(&rows, t) }
}

/// Stores a tile whose rows fit one ymm vector (`t.nr ≤ 8`), through the tile's
/// epilogue: the same operations in the same order as the 6 × 16 kernel's.
///
/// # Safety
/// The tile contract of [`Kernel::tile`] for `t`, with `t.nr ≤ 8`; avx2 available.
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows<const MR: usize>(rows: &[__m256; MR], t: &Tile) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(t.nr.min(8) as i32), lanes);
    let zero = _mm256_setzero_ps();
    // SAFETY (whole store phase): every load is a vmaskmovps with exactly the valid
    // columns j < nr set, every store a `store_first` of exactly nr floats, on rows
    // i < mr, at offsets the caller guarantees.
    unsafe {
        let add_c = |i: usize, x: __m256| {
            if t.load_c {
                _mm256_add_ps(x, _mm256_maskload_ps(t.c.add(i * t.rsc), mask))
            } else {
                x
            }
        };
        let store = |i: usize, x: __m256| store_first(t.c.add(i * t.rsc), x, t.nr);
        match t.epilogue {
            TileEpilogue::None => {
                for (i, &x) in rows.iter().enumerate().take(t.mr) {
                    store(i, add_c(i, x));
                }
            }
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let relu = matches!(t.epilogue, TileEpilogue::BiasRelu(_));
                let bv = _mm256_maskload_ps(bias, mask);
                for (i, &x) in rows.iter().enumerate().take(t.mr) {
                    let mut x = _mm256_add_ps(add_c(i, x), bv);
                    if relu {
                        x = _mm256_max_ps(zero, x); // NaN in x passes through
                    }
                    store(i, x);
                }
            }
            TileEpilogue::ReluMask { h, rsh, colsum } => {
                let mut sums = zero;
                for (i, &x) in rows.iter().enumerate().take(t.mr) {
                    let hv = _mm256_maskload_ps(h.add(i * rsh), mask);
                    let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(hv, zero);
                    let x = _mm256_and_ps(keep, add_c(i, x));
                    sums = _mm256_add_ps(sums, x);
                    store(i, x);
                }
                if !colsum.is_null() {
                    store_first(colsum, sums, t.nr);
                }
            }
        }
    }
}

/// `dst[i] = src[i] as f32 * scale` for `i < dst.len()` (= `src.len()`), 8 bytes per
/// instruction (zero-extend to i32, convert, multiply); the tail element by element.
///
/// # Panics
/// If the lengths differ, or the CPU lacks avx2.
pub(crate) fn bytes_to_f32(src: &[u8], dst: &mut [f32], scale: f32) {
    assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
    assert!(super::Isa::Avx2.is_available(), "bytes_to_f32: avx2 not available");
    // SAFETY: avx2 was checked just above; the lengths are equal.
    unsafe { bytes_to_f32_impl(src, dst, scale) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn bytes_to_f32_impl(src: &[u8], dst: &mut [f32], scale: f32) {
    let s = _mm256_set1_ps(scale);
    let mut chunks = src.chunks_exact(8);
    let mut out = dst.chunks_exact_mut(8);
    for (c, o) in (&mut chunks).zip(&mut out) {
        // SAFETY: `c` has exactly 8 bytes (one 64-bit load) and `o` exactly 8 floats.
        unsafe {
            let bytes = _mm_loadl_epi64(c.as_ptr().cast());
            _mm256_storeu_ps(o.as_mut_ptr(), _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), s));
        }
    }
    // The same operation (exact conversion, one rounding in the multiply) as the lanes.
    for (o, &b) in out.into_remainder().iter_mut().zip(chunks.remainder()) {
        *o = b as f32 * scale;
    }
}

/// Single-core throughput probe: 12 independent ymm FMA chains. Zen 3/4/5 and Intel
/// cores since Haswell run two 256-bit FMA pipes with a latency of 4–5 cycles, so 8–10
/// chains in flight keep both busy; 12 chains plus the two constants use 14 of the 16
/// ymm registers, so nothing spills (the k loop of the disassembly is 12 `vfmadd231ps`
/// on registers and a counter). The earlier 16-chain probe spilled and read half of
/// the real peak.
pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
    assert!(super::Isa::Avx2.is_available(), "fma_chains: avx2+fma not available");
    // SAFETY: avx2 and fma were checked just above.
    unsafe { fma_chains_impl(iters) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_impl(iters: u64) -> (f32, u64) {
    const CHAINS: usize = 12;
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let y = _mm256_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut lanes = [0.0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    // SAFETY: `lanes` holds exactly the 8 floats one ymm store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    (lanes.iter().sum(), (CHAINS * 8 * 2) as u64)
}

/// The second, independently written probe: `CHAINS` (8 or 12) `vfmadd231ps` on fixed
/// ymm registers in an inline-assembly loop, so that no compiler decision (spills,
/// scheduling) can touch the figure. Zero operands: the values never change and no
/// denormal ever appears. Returns the flops per iteration.
pub(crate) fn fma_chains_asm<const CHAINS: usize>(iters: u64) -> u64 {
    assert!(super::Isa::Avx2.is_available(), "fma_chains_asm: avx2+fma not available");
    // SAFETY: avx2 and fma were checked just above.
    unsafe { fma_chains_asm_impl::<CHAINS>(iters.max(1)) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_asm_impl<const CHAINS: usize>(iters: u64) -> u64 {
    macro_rules! probe {
        ($($r:literal),*) => {
            // SAFETY: register-only arithmetic on the registers declared clobbered;
            // the loop counter is a register operand and `iters ≥ 1`.
            unsafe {
                std::arch::asm!(
                    "vxorps ymm14, ymm14, ymm14",
                    "vxorps ymm15, ymm15, ymm15",
                    $(concat!("vxorps ymm", $r, ", ymm", $r, ", ymm", $r),)*
                    "2:",
                    $(concat!("vfmadd231ps ymm", $r, ", ymm14, ymm15"),)*
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters => _,
                    out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
                    out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
                    out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                    out("ymm14") _, out("ymm15") _,
                    options(nomem, nostack),
                )
            }
        };
    }
    match CHAINS {
        8 => probe!(0, 1, 2, 3, 4, 5, 6, 7),
        12 => probe!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11),
        _ => panic!("fma_chains_asm: 8 or 12 chains, got {CHAINS}"),
    }
    (CHAINS * 8 * 2) as u64
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
}
