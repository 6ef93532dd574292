//! Reductions: column sums (bias gradients, where the GEMM epilogue cannot compute
//! them), row argmax (predictions), and a finiteness check. Each runs in one fixed
//! order, so the result does not depend on the thread count.

use super::check_rows_contiguous;
use crate::error::{Error, Result};
use crate::matrix::MatRef;
use crate::runtime::{parts_for, split_point};

/// `out[j] = Σ_i x[i][j]`, rows added in order (overwrites `out`).
///
/// # Errors
/// [`Error::ShapeMismatch`] when `out.len() != x.cols()`.
pub fn colsum(x: MatRef<'_>, out: &mut [f32]) -> Result<()> {
    super::check_len("colsum", "out (one per column)", x.cols(), out.len())?;
    check_rows_contiguous("colsum", "x", x.rows(), x.cols(), x.col_stride())?;
    out.fill(0.0);
    for i in 0..x.rows() {
        for (o, &v) in out.iter_mut().zip(x.row(i)) {
            *o += v;
        }
    }
    Ok(())
}

/// `out[i]` = index of the first maximum of row `i`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `out.len() != x.rows()`; [`Error::InvalidArgument`]
/// when `x` has no columns.
pub fn argmax_rows(x: MatRef<'_>, out: &mut [usize]) -> Result<()> {
    super::check_len("argmax_rows", "out (one per row)", x.rows(), out.len())?;
    if x.cols() == 0 && x.rows() > 0 {
        return Err(Error::InvalidArgument("argmax_rows of a matrix with no columns".into()));
    }
    check_rows_contiguous("argmax_rows", "x", x.rows(), x.cols(), x.col_stride())?;
    for (i, o) in out.iter_mut().enumerate() {
        let row = x.row(i);
        *o = (1..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best });
    }
    Ok(())
}

/// Whether every element is finite (no NaN, no ±∞). One vectorisable pass:
/// `x · 0` is 0 for finite x and NaN otherwise, summed in 16 independent lanes.
pub fn all_finite(x: &[f32]) -> bool {
    let mut lanes = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * 0.0;
        }
    }
    let mut acc = tail.iter().fold(0.0f32, |a, &v| a + v * 0.0);
    for l in lanes {
        acc += l;
    }
    acc == 0.0
}

/// The largest `|x|` as bits (the sign bit cleared, compared as integers: finite
/// values in their float order, then +∞, then NaN), 0 for an empty slice. A result of
/// at least `f32::INFINITY.to_bits()` means a NaN or infinity is present.
pub(crate) fn max_abs_bits(x: &[f32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has avx2, all the function needs.
        return unsafe { max_abs_bits_avx2(x) };
    }
    max_abs_bits_portable(x)
}

/// [`max_abs_bits`] compiled for AVX2, whose unsigned `vpmaxud` the SSE2 baseline lacks
/// (there it takes five instructions).
///
/// # Safety
/// The CPU supports avx2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_abs_bits_avx2(x: &[f32]) -> u32 {
    max_abs_bits_portable(x)
}

/// The portable body of [`max_abs_bits`] (and its twin in the tests): a plain
/// unsigned-max reduction, which LLVM vectorises (an array of lanes made it gather
/// across chunks instead).
#[inline(always)]
pub(crate) fn max_abs_bits_portable(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// [`max_abs_bits`] over a matrix view, row by row.
pub(crate) fn max_abs_bits_of(x: MatRef<'_>) -> u32 {
    if x.col_stride() == 1 || x.cols() <= 1 {
        (0..x.rows()).map(|i| max_abs_bits(x.row(i))).max().unwrap_or(0)
    } else {
        (0..x.rows()).flat_map(|i| (0..x.cols()).map(move |j| x.get(i, j).to_bits() & 0x7fff_ffff)).max().unwrap_or(0)
    }
}

/// [`all_finite`] split over the current rayon pool, one even share per thread (for
/// buffers of at least two shares of 32 Ki elements).
pub fn par_all_finite(x: &[f32]) -> bool {
    all_finite_on(x, rayon::current_num_threads())
}

/// [`all_finite`] split over `threads` threads of the current pool.
pub(crate) fn all_finite_on(x: &[f32], threads: usize) -> bool {
    fn split_check(x: &[f32], parts: usize) -> bool {
        match split_point(x.len(), parts) {
            None => all_finite(x),
            Some(mid) => {
                let (a, b) = x.split_at(mid);
                let (fa, fb) = rayon::join(|| split_check(a, parts / 2), || split_check(b, parts - parts / 2));
                fa && fb
            }
        }
    }
    split_check(x, parts_for(threads, x.len(), 32 * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_abs_bits_is_the_largest_magnitude_and_keeps_nan_and_infinity() {
        let mut rng = crate::rng::Rng::new(3);
        for len in [0, 1, 31, 32, 33, 100, 1000] {
            let mut v: Vec<f32> = (0..len).map(|_| rng.uniform(-3.0, 3.0)).collect();
            let twin = v.iter().map(|x| x.abs()).fold(0.0f32, f32::max).to_bits();
            assert_eq!(max_abs_bits(&v), twin, "len {len}");
            assert_eq!(max_abs_bits_portable(&v), twin, "len {len}");
            for (bad, at_least) in
                [(f32::NEG_INFINITY, f32::INFINITY.to_bits()), (f32::NAN, f32::INFINITY.to_bits() + 1)]
            {
                for pos in [0usize, len / 2, len.saturating_sub(1)].into_iter().filter(|&p| p < len) {
                    let old = v[pos];
                    v[pos] = bad;
                    assert!(max_abs_bits(&v) >= at_least, "{bad} at {pos} of {len}");
                    v[pos] = old;
                }
            }
        }
    }

    #[test]
    fn all_finite_finds_any_bad_element() {
        let mut v = vec![1.0f32; 37];
        assert!(all_finite(&v));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for pos in [0, 15, 16, 36] {
                let old = v[pos];
                v[pos] = bad;
                assert!(!all_finite(&v), "{bad} at {pos}");
                v[pos] = old;
            }
        }
        assert!(all_finite(&[]));
        assert!(all_finite(&[f32::MAX, f32::MIN]));
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut big = vec![0.5f32; 100_000];
        assert!(pool.install(|| par_all_finite(&big)));
        for pos in [0, 32_767, 32_768, 65_536, 99_999] {
            big[pos] = f32::NAN;
            assert!(!pool.install(|| par_all_finite(&big)), "NaN at {pos}");
            big[pos] = 0.5;
        }
    }
}
