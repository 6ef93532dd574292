//! `exp` of a row shifted by its max, and the row's sum, in vectors: the inner loop of
//! the fused softmax + cross-entropy. A scalar `expf` per logit took ≈ 5% of an
//! MNIST 784-32-32-10 step.
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
