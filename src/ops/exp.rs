//! The vector inner loops of the fused softmax + cross-entropy: `exp` of a row shifted
//! by its max and the row's sum ([`exp_shifted_sum`]; a scalar `expf` per logit took
//! ≈ 5% of an MNIST 784-32-32-10 step), and on AVX-512 whole blocks of 16 rows, a row
//! per lane ([`softmax_ce_block`]; the row loop spent 31 ns a row on its reductions
//! and scalar steps).
//!
//! The vector paths use Cephes' `expf` (`exp(x) = 2ⁿ · exp(r)`, `n = round(x·log₂e)`,
//! `r = x − n·ln 2` in two parts, a degree-7 polynomial for `exp(r)`): within 1 ulp of
//! the exact value on `[−87.3, 0]` (tested against f64), where a shifted logit lies.
//! Below −87.3 they return `exp(−87.3) ≈ 1.2e−38` instead of a denormal or 0: a
//! difference no sum of these can show. NaN stays NaN, so a NaN logit still makes the
//! loss NaN (which the training step's guard relies on). The portable path is
//! `f32::exp`, the twin.

use crate::gemm::Isa;

/// `out[c] = exp(z[c] − max)` (when `out` is not empty; it then has `z.len()` floats)
/// and the sum of those values, on the `isa` path (the portable loop for a path without
/// its own).
///
/// # Panics
/// If `out` is neither empty nor as long as `z`.
pub(crate) fn exp_shifted_sum(isa: Isa, z: &[f32], max: f32, out: &mut [f32]) -> f32 {
    assert!(out.is_empty() || out.len() == z.len(), "exp_shifted_sum: output length");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => avx512::exp_shifted_sum(z, max, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => avx2::exp_shifted_sum(z, max, out),
        _ => exp_shifted_sum_portable(z, max, out),
    }
}

/// Per-row results of [`softmax_ce_block`]: `max` the row's first maximum, `sum` the
/// sum of `exp(z − max)` over its classes, `zl` its label's logit, `arg` the index of
/// its first maximum.
pub(crate) struct BlockRows {
    pub max: [f32; 16],
    pub sum: [f32; 16],
    pub zl: [f32; 16],
    pub arg: [u32; 16],
}

/// Up to 16 rows of the fused softmax + cross-entropy at once, one row per lane, on the
/// `isa` path's vectors: row `i` of the block is `z[i·rs ..][.. classes]` with label
/// `labels[i]`; with `d = Some((out, rsd))`, `out[i·rsd + c] = exp(z − max) · (inv_n /
/// sum) − inv_n·[c = label]`. Every row's max, argmax (first maximum, found as the
/// scalar loop finds it: `>` from the left) and sum come back in [`BlockRows`]; the
/// sum adds the classes in order. `None`, with nothing written, when the path has no
/// such routine, `classes` is 0 or above 16, the strides do not fit 32-bit indices, or
/// a row of the block holds a NaN.
///
/// # Panics
/// If `labels` holds more than 16 rows; where the path has the routine, also if the
/// rows do not fit `z` or `d` at these strides, or a label is not below `classes`.
pub(crate) fn softmax_ce_block(
    isa: Isa,
    z: &[f32],
    rs: usize,
    classes: usize,
    labels: &[usize],
    inv_n: f32,
    d: Option<(&mut [f32], usize)>,
) -> Option<BlockRows> {
    let rows = labels.len();
    assert!(rows <= 16, "softmax_ce_block: {rows} rows");
    // Paths without the routine return before the checks below, which guard it: the
    // softmax-CE asks for every 16 rows.
    let has_routine = cfg!(target_arch = "x86_64") && matches!(isa, Isa::Avx512) && isa.is_available();
    if !has_routine || rows == 0 || classes == 0 || classes > 16 {
        return None;
    }
    assert!(labels.iter().all(|&l| l < classes), "softmax_ce_block: a label not below {classes}");
    // Floats the rows take at a stride: the last row's start plus its classes.
    let span = |stride: usize| (rows - 1).checked_mul(stride).and_then(|x| x.checked_add(classes));
    assert!(span(rs).is_some_and(|need| need <= z.len()), "softmax_ce_block: logits too short");
    if let Some((out, rsd)) = &d {
        assert!(span(*rsd).is_some_and(|need| need <= out.len()), "softmax_ce_block: output too short");
    }
    // The vector paths address the rows by 32-bit offsets (gathers and scatters).
    let indexable = |stride: usize| 15usize.checked_mul(stride).is_some_and(|x| x + 16 < i32::MAX as usize);
    let offsets_fit = indexable(rs) && d.as_ref().is_none_or(|(_, rsd)| indexable(*rsd));
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if offsets_fit => avx512::softmax_ce_block(z, rs, classes, labels, inv_n, d),
        _ => {
            let _ = (inv_n, offsets_fit);
            None
        }
    }
}

/// The portable twin: `f32::exp` element by element, summed in order.
pub(crate) fn exp_shifted_sum_portable(z: &[f32], max: f32, out: &mut [f32]) -> f32 {
    let mut sum = 0.0f32;
    if out.is_empty() {
        for &v in z {
            sum += (v - max).exp();
        }
    } else {
        for (e, &v) in out.iter_mut().zip(z) {
            *e = (v - max).exp();
            sum += *e;
        }
    }
    sum
}

/// Cephes `expf` constants: the clamp, `log₂e`, `ln 2` in two parts and the polynomial.
#[cfg(target_arch = "x86_64")]
mod cephes {
    pub(super) const LO: f32 = -87.336_55;
    pub(super) const HI: f32 = 88.376_26;
    pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub(super) const LN2_HI: f32 = 0.693_359_4;
    pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
    pub(super) const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::cephes::*;
    use std::arch::x86_64::*;

    pub(super) fn exp_shifted_sum(z: &[f32], max: f32, out: &mut [f32]) -> f32 {
        // SAFETY: the dispatch checked avx512f; `out` is empty or as long as `z` (asserted
        // by the caller).
        unsafe { exp_shifted_sum_impl(z, max, out) }
    }

    pub(super) fn softmax_ce_block(
        z: &[f32],
        rs: usize,
        classes: usize,
        labels: &[usize],
        inv_n: f32,
        d: Option<(&mut [f32], usize)>,
    ) -> Option<super::BlockRows> {
        // SAFETY: the dispatch checked avx512f, 1 ≤ rows ≤ 16, 1 ≤ classes ≤ 16, every
        // label below `classes`, both slices long enough for the rows at their strides,
        // and the strides small enough for 32-bit indices.
        unsafe { softmax_ce_block_impl(z, rs, classes, labels, inv_n, d) }
    }

    /// # Safety
    /// As checked by `super::softmax_ce_block` before it calls this.
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_ce_block_impl(
        z: &[f32],
        rs: usize,
        classes: usize,
        labels: &[usize],
        inv_n: f32,
        d: Option<(&mut [f32], usize)>,
    ) -> Option<super::BlockRows> {
        let rows = labels.len();
        let lanes = (u32::MAX >> (32 - rows)) as __mmask16;
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let at = _mm512_mullo_epi32(lane, _mm512_set1_epi32(rs as i32));
        let mut label_of = [0i32; 16];
        for (l, &x) in label_of.iter_mut().zip(labels) {
            *l = x as i32;
        }
        // SAFETY: reads the 16 i32 of the local array.
        let label = unsafe { _mm512_loadu_si512(label_of.as_ptr().cast()) };
        // Class c of every row; the masked-off rows are neither read nor faulted on.
        // SAFETY: lane i < rows reads z[i·rs + c] with c < classes, inside `z` (checked).
        let column = |c: usize| unsafe {
            _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), lanes, at, z.as_ptr().add(c).cast())
        };
        let (mut max, mut arg, mut zl) = (column(0), _mm512_setzero_si512(), _mm512_setzero_ps());
        let mut nan = _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(lanes, max, max);
        zl = _mm512_mask_mov_ps(zl, _mm512_mask_cmpeq_epi32_mask(lanes, label, _mm512_setzero_si512()), max);
        for c in 1..classes {
            let v = column(c);
            nan |= _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(lanes, v, v);
            let c32 = _mm512_set1_epi32(c as i32);
            let greater = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(lanes, v, max);
            max = _mm512_mask_mov_ps(max, greater, v);
            arg = _mm512_mask_mov_epi32(arg, greater, c32);
            zl = _mm512_mask_mov_ps(zl, _mm512_mask_cmpeq_epi32_mask(lanes, label, c32), v);
        }
        if nan != 0 {
            return None;
        }
        let mut e = [_mm512_setzero_ps(); 16];
        let mut sum = _mm512_setzero_ps();
        for (c, ec) in e.iter_mut().enumerate().take(classes) {
            *ec = exp16(_mm512_sub_ps(column(c), max));
            sum = _mm512_add_ps(sum, *ec);
        }
        if let Some((out, rsd)) = d {
            let at_d = _mm512_mullo_epi32(lane, _mm512_set1_epi32(rsd as i32));
            let scale = _mm512_div_ps(_mm512_set1_ps(inv_n), sum);
            for (c, ec) in e.iter().enumerate().take(classes) {
                let g = _mm512_mul_ps(*ec, scale);
                let g = _mm512_mask_sub_ps(
                    g,
                    _mm512_cmpeq_epi32_mask(label, _mm512_set1_epi32(c as i32)),
                    g,
                    _mm512_set1_ps(inv_n),
                );
                // SAFETY: lane i < rows writes out[i·rsd + c], inside `out` (checked).
                unsafe { _mm512_mask_i32scatter_ps::<4>(out.as_mut_ptr().add(c).cast(), lanes, at_d, g) };
            }
        }
        let mut rows_out = super::BlockRows { max: [0.0; 16], sum: [0.0; 16], zl: [0.0; 16], arg: [0; 16] };
        // SAFETY: each store writes the 16 elements of a local array.
        unsafe {
            _mm512_storeu_ps(rows_out.max.as_mut_ptr(), max);
            _mm512_storeu_ps(rows_out.sum.as_mut_ptr(), sum);
            _mm512_storeu_ps(rows_out.zl.as_mut_ptr(), zl);
            _mm512_storeu_si512(rows_out.arg.as_mut_ptr().cast(), arg);
        }
        Some(rows_out)
    }

    /// `exp(x)` in 16 lanes (see the module doc).
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp16(x: __m512) -> __m512 {
        // max/min return their second operand when either is NaN: NaN passes through.
        let x = _mm512_min_ps(_mm512_set1_ps(HI), _mm512_max_ps(_mm512_set1_ps(LO), x));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(r, r), p, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(e, n)
    }

    /// # Safety
    /// avx512f available; `out` empty or `z.len()` long.
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_shifted_sum_impl(z: &[f32], max: f32, out: &mut [f32]) -> f32 {
        let (m, write) = (_mm512_set1_ps(max), !out.is_empty());
        let mut acc = _mm512_setzero_ps();
        for c in (0..z.len()).step_by(16) {
            let left = z.len() - c;
            let lanes = if left >= 16 { u16::MAX } else { (1u16 << left) - 1 };
            // SAFETY: the masked load reads floats c.. of `z` below its length only.
            let x = _mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(lanes, z.as_ptr().add(c)) }, m);
            let e = _mm512_maskz_mov_ps(lanes, exp16(x));
            if write {
                // SAFETY: the masked store writes floats c.. of `out` (as long as `z`) below its length only.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(c), lanes, e) };
            }
            acc = _mm512_add_ps(acc, e);
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::cephes::*;
    use std::arch::x86_64::*;

    pub(super) fn exp_shifted_sum(z: &[f32], max: f32, out: &mut [f32]) -> f32 {
        // SAFETY: the dispatch checked avx2 and fma; `out` is empty or as long as `z`.
        unsafe { exp_shifted_sum_impl(z, max, out) }
    }

    /// `exp(x)` in 8 lanes (see the module doc).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        // max/min return their second operand when either is NaN: NaN passes through.
        let x = _mm256_min_ps(_mm256_set1_ps(HI), _mm256_max_ps(_mm256_set1_ps(LO), x));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(P[0]);
        for &c in &P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(r, r), p, r), _mm256_set1_ps(1.0));
        // 2ⁿ from its exponent bits (n in [−126, 128): a normal float); a NaN lane's e is
        // NaN whatever these bits are.
        let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(e, two_n)
    }

    /// # Safety
    /// avx2 and fma available; `out` empty or `z.len()` long.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_shifted_sum_impl(z: &[f32], max: f32, out: &mut [f32]) -> f32 {
        let (m, write) = (_mm256_set1_ps(max), !out.is_empty());
        let index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut acc = _mm256_setzero_ps();
        for c in (0..z.len()).step_by(8) {
            let lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((z.len() - c).min(8) as i32), index);
            // SAFETY: vmaskmovps reads floats c.. of `z` below its length only.
            let x = _mm256_sub_ps(unsafe { _mm256_maskload_ps(z.as_ptr().add(c), lanes) }, m);
            let e = _mm256_and_ps(exp8(x), _mm256_castsi256_ps(lanes));
            if write {
                // SAFETY: vmaskmovps writes floats c.. of `out` (as long as `z`) below its length only.
                unsafe { _mm256_maskstore_ps(out.as_mut_ptr().add(c), lanes, e) };
            }
            acc = _mm256_add_ps(acc, e);
        }
        // A fixed order: the two halves, then pairs, then the last two.
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row `i` by the scalar loop of `softmax_cross_entropy`: first max (`>` from the
    /// left), its index, the label's logit, and the f64 sum of the shifted exps.
    fn reference(z: &[f32]) -> (f32, usize, f64) {
        let (mut arg, mut max) = (0, z[0]);
        for (c, &v) in z.iter().enumerate().skip(1) {
            if v > max {
                (arg, max) = (c, v);
            }
        }
        (max, arg, z.iter().map(|&v| ((v - max) as f64).exp()).sum())
    }

    #[test]
    fn softmax_ce_blocks_match_the_row_loop_on_every_path() {
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed >> 8
        };
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            let has_blocks = cfg!(target_arch = "x86_64") && isa == Isa::Avx512;
            for rows in [1, 2, 5, 15, 16] {
                for classes in [1, 2, 9, 10, 16, 17] {
                    for pad in [0, 3] {
                        let rs = classes + pad;
                        // Values on a coarse grid, so that rows tie for their maximum
                        // (−0 and +0 among them).
                        let z: Vec<f32> =
                            (0..rows * rs).map(|_| [-0.0, 0.0, 1.0, -2.5, 3.0, 3.0][(next() % 6) as usize]).collect();
                        let labels: Vec<usize> = (0..rows).map(|_| next() as usize % classes).collect();
                        let inv_n = 1.0 / 37.0;
                        let mut out = vec![f32::NAN; rows * rs];
                        let what = format!("{isa:?}, {rows} rows of {classes} at stride {rs}");
                        let got = softmax_ce_block(isa, &z, rs, classes, &labels, inv_n, Some((&mut out, rs)));
                        let Some(b) = got else {
                            assert!(!has_blocks || classes > 16, "{what}: no block");
                            assert!(out.iter().all(|v| v.is_nan()), "{what}: wrote without a block");
                            continue;
                        };
                        assert!(has_blocks && classes <= 16, "{what}: a block where none is made");
                        for (i, &label) in labels.iter().enumerate() {
                            let row = &z[i * rs..i * rs + classes];
                            let (max, arg, sum) = reference(row);
                            assert_eq!(b.max[i].to_bits(), max.to_bits(), "{what}: max of row {i}");
                            assert_eq!(b.arg[i] as usize, arg, "{what}: argmax of row {i}");
                            assert_eq!(b.zl[i].to_bits(), row[label].to_bits(), "{what}: label logit of row {i}");
                            assert!((b.sum[i] as f64 - sum).abs() <= 2e-6 * sum, "{what}: sum of row {i}");
                            for (c, &g) in out[i * rs..i * rs + classes].iter().enumerate() {
                                let p = ((row[c] - max) as f64).exp() / sum;
                                let want = (p - if c == label { 1.0 } else { 0.0 }) * inv_n as f64;
                                assert!((g as f64 - want).abs() <= 1e-6 * inv_n as f64, "{what}: d[{i}][{c}]");
                            }
                            assert!(out[i * rs + classes..(i + 1) * rs].iter().all(|v| v.is_nan()), "{what}: padding");
                        }
                        // Without an output: the same rows.
                        let b2 = softmax_ce_block(isa, &z, rs, classes, &labels, inv_n, None).expect("block");
                        assert_eq!(b2.sum.map(f32::to_bits), b.sum.map(f32::to_bits), "{what}");
                        // A NaN anywhere in the block: no block, nothing written.
                        let mut bad = z.clone();
                        bad[(rows - 1) * rs + classes - 1] = f32::NAN;
                        let mut out = vec![f32::NAN; rows * rs];
                        assert!(
                            softmax_ce_block(isa, &bad, rs, classes, &labels, inv_n, Some((&mut out, rs))).is_none()
                        );
                        assert!(out.iter().all(|v| v.is_nan()), "{what}: wrote a block with a NaN");
                    }
                }
            }
        }
    }

    #[test]
    fn vector_exps_are_within_1_ulp_on_the_shifted_range_and_keep_nan() {
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            // Dense samples of [−87.3, 0], and the edges.
            let mut z: Vec<f32> = (0..100_003).map(|i| -87.3 * i as f32 / 100_002.0).collect();
            z.extend([0.0, -0.0, -1e-30, -0.5, -1.0, -87.33, -88.0, -100.0, f32::NEG_INFINITY]);
            let mut out = vec![f32::NAN; z.len()];
            let sum = exp_shifted_sum(isa, &z, 0.0, &mut out);
            let mut want_sum = 0.0f64;
            for (&x, &e) in z.iter().zip(&out) {
                let want = (x as f64).exp();
                want_sum += want;
                if x >= -87.3 {
                    let ulp = (want as f32).to_bits().abs_diff(e.to_bits());
                    assert!(ulp <= 1, "{isa:?}: exp({x}) = {e}, want {want} ({ulp} ulp)");
                } else {
                    assert!((0.0..=1.3e-38).contains(&e), "{isa:?}: exp({x}) = {e}");
                }
            }
            // An f32 sum of 100 000 terms: rounding of a few 1e-5 in order.
            assert!((sum as f64 - want_sum).abs() <= 1e-4 * want_sum, "{isa:?}: sum {sum} vs {want_sum}");
            assert_eq!(out[100_003], 1.0, "{isa:?}: exp(0)");
            // No output buffer: the same sum.
            assert_eq!(exp_shifted_sum(isa, &z, 0.0, &mut []).to_bits(), sum.to_bits(), "{isa:?}");
            // NaN anywhere (or a shift by NaN) makes the sum NaN; ∞ − ∞ too.
            for (row, max) in
                [(vec![1.0, f32::NAN, 2.0], 2.0), (vec![1.0, 2.0], f32::NAN), (vec![f32::INFINITY], f32::INFINITY)]
            {
                assert!(exp_shifted_sum(isa, &row, max, &mut []).is_nan(), "{isa:?}: {row:?} − {max}");
            }
            // Every length around the vector widths, against the portable twin, and no
            // write past the row.
            for len in [1, 2, 7, 8, 9, 10, 15, 16, 17, 31, 33] {
                let z: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut fast, mut twin) = (vec![f32::NAN; len + 3], vec![0.0; len]);
                let s = exp_shifted_sum(isa, &z, max, &mut fast[..len]);
                let t = exp_shifted_sum_portable(&z, max, &mut twin);
                assert!((s - t).abs() <= 2e-6 * t, "{isa:?} length {len}: {s} vs {t}");
                for (f, t) in fast.iter().zip(&twin) {
                    assert!((f - t).abs() <= 2.5e-7 * t, "{isa:?} length {len}: {f} vs {t}");
                }
                assert!(fast[len..].iter().all(|v| v.is_nan()), "{isa:?} length {len}: wrote past the row");
            }
        }
    }
}
