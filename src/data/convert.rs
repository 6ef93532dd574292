//! Byte → f32 conversion (`byte as f32 * scale`) on each path's instructions, and the
//! prefetch a data loader issues for its next batch.

use crate::gemm::Isa;

/// `dst[i] = src[i] as f32 * scale`, with the vector instructions of the kernel path in
/// use ([`default_isa`](crate::gemm::default_isa): `FUSEGRAD_KERNEL`, else the CPU's
/// best), so that a forced path runs what a CPU with only that path runs: the byte
/// gather is a good part of an MNIST step's non-GEMM time, and the baseline (SSE2)
/// conversion is slow. Every path gives the same values: the conversion is exact and
/// the multiply rounds once.
///
/// # Panics
/// If the lengths differ.
pub fn bytes_to_f32(src: &[u8], dst: &mut [f32], scale: f32) {
    let isa = crate::gemm::default_isa().unwrap_or_else(|_| Isa::best());
    bytes_to_f32_with(isa, src, dst, scale);
}

/// [`bytes_to_f32`] on the given path (the portable loop for a path without its own
/// conversion).
pub(crate) fn bytes_to_f32_with(isa: Isa, src: &[u8], dst: &mut [f32], scale: f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => avx512::bytes_to_f32(src, dst, scale),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => avx2::bytes_to_f32(src, dst, scale),
        _ => bytes_to_f32_portable(src, dst, scale),
    }
}

/// [`bytes_to_f32_with`], also setting in `words` (`src.len().div_ceil(64)` of them) the
/// bits of the results that are not ±0 (`nonzero_map::row_words`), tested on the
/// converted vectors before they are stored: a batch's map of zeros for the cost of a
/// test per vector.
///
/// # Panics
/// If the lengths disagree.
pub(crate) fn bytes_to_f32_mapped(isa: Isa, src: &[u8], dst: &mut [f32], scale: f32, words: &mut [u64]) {
    assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
    assert_eq!(
        words.len(),
        src.len().div_ceil(64),
        "bytes_to_f32_mapped: {} words for {} bytes",
        words.len(),
        src.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => avx512::bytes_to_f32_mapped(src, dst, scale, words),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => avx2::bytes_to_f32_mapped(src, dst, scale, words),
        _ => {
            bytes_to_f32_portable(src, dst, scale);
            crate::gemm::nonzero_map::row_words_portable(dst, words);
        }
    }
}

/// The portable twin of [`bytes_to_f32`]: one element at a time.
///
/// # Panics
/// If the lengths differ.
#[doc(hidden)]
pub fn bytes_to_f32_portable(src: &[u8], dst: &mut [f32], scale: f32) {
    assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
    for (o, &b) in dst.iter_mut().zip(src) {
        *o = b as f32 * scale;
    }
}

/// Asks the CPU to start loading `data` into cache (every 64-byte line of it) without
/// waiting for it: lets a data loader have the next batch in flight while the current
/// step computes. A no-op off x86_64.
#[inline]
pub(crate) fn prefetch(data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(64) {
        // SAFETY: prefetch never faults and does not read memory architecturally; the
        // address is inside `data` anyway; SSE is part of the x86_64 baseline.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `dst[i] = src[i] as f32 * scale` for `i < dst.len()` (= `src.len()`), 8 bytes per
    /// instruction (zero-extend to i32, convert, multiply); the tail element by element.
    ///
    /// # Panics
    /// If the lengths differ, or the CPU lacks avx2.
    pub(crate) fn bytes_to_f32(src: &[u8], dst: &mut [f32], scale: f32) {
        assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
        assert!(crate::gemm::Isa::Avx2.is_available(), "bytes_to_f32: avx2 not available");
        // SAFETY: avx2 was checked just above; the lengths are equal.
        unsafe { convert::<false>(src, dst, scale, &mut []) }
    }

    /// [`bytes_to_f32`], and the bits of the nonzero results into `words`
    /// (`super::bytes_to_f32_mapped`): a movemask of each converted vector.
    ///
    /// # Panics
    /// If the lengths disagree, or the CPU lacks avx2.
    pub(crate) fn bytes_to_f32_mapped(src: &[u8], dst: &mut [f32], scale: f32, words: &mut [u64]) {
        assert!(src.len() == dst.len() && words.len() == src.len().div_ceil(64), "bytes_to_f32_mapped: lengths");
        assert!(crate::gemm::Isa::Avx2.is_available(), "bytes_to_f32: avx2 not available");
        // SAFETY: avx2 was checked just above; the lengths agree.
        unsafe { convert::<true>(src, dst, scale, words) }
    }

    /// Both conversions: with `MAP`, a word of nonzero bits per 64 floats into `words`
    /// (`src.len().div_ceil(64)` of them); without, `words` is not touched and the
    /// tests compile away.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn convert<const MAP: bool>(src: &[u8], dst: &mut [f32], scale: f32, words: &mut [u64]) {
        let (s, mag, zero) = (_mm256_set1_ps(scale), _mm256_set1_epi32(0x7fff_ffff), _mm256_setzero_si256());
        // Converts and stores 8 floats, returning their nonzero bits (with `MAP`).
        let convert = |ch: &[u8], o: &mut [f32]| -> u64 {
            // SAFETY: callers pass exactly 8 bytes (one 64-bit load) and 8 floats.
            let v = unsafe {
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(ch.as_ptr().cast()))), s);
                _mm256_storeu_ps(o.as_mut_ptr(), v);
                v
            };
            if !MAP {
                return 0;
            }
            let zeros = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), mag), zero);
            u64::from(!_mm256_movemask_ps(_mm256_castsi256_ps(zeros)) as u8)
        };
        // A word per 64 floats, its 8 vectors' bits at fixed shifts.
        let mut groups = src.chunks_exact(64);
        let mut outs = dst.chunks_exact_mut(64);
        let mut w = 0;
        for (g, o) in (&mut groups).zip(&mut outs) {
            let word = g
                .chunks_exact(8)
                .zip(o.chunks_exact_mut(8))
                .enumerate()
                .fold(0, |m, (i, (ch, o))| m | convert(ch, o) << (8 * i));
            if MAP {
                words[w] = word;
            }
            w += 1;
        }
        let (tail, out) = (groups.remainder(), outs.into_remainder());
        if tail.is_empty() {
            return;
        }
        let mut chunks = tail.chunks_exact(8);
        let mut outc = out.chunks_exact_mut(8);
        let mut bits = 0u64;
        let mut c = 0;
        for (ch, o) in (&mut chunks).zip(&mut outc) {
            bits |= convert(ch, o) << c;
            c += 8;
        }
        // The same operation (exact conversion, one rounding in the multiply) as the lanes.
        for (o, &b) in outc.into_remainder().iter_mut().zip(chunks.remainder()) {
            *o = b as f32 * scale;
            bits |= u64::from(o.to_bits() & 0x7fff_ffff != 0) << c;
            c += 1;
        }
        if MAP {
            words[w] = bits;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// `dst[i] = src[i] as f32 * scale` for `i < dst.len()` (= `src.len()`), 16 bytes per
    /// instruction (zero-extend to i32, convert, multiply); the tail with a lane mask.
    ///
    /// # Panics
    /// If the lengths differ, or the CPU lacks avx512f.
    pub(crate) fn bytes_to_f32(src: &[u8], dst: &mut [f32], scale: f32) {
        assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
        assert!(crate::gemm::Isa::Avx512.is_available(), "bytes_to_f32: avx512f not available");
        // SAFETY: avx512f was checked just above; the lengths are equal.
        unsafe { convert::<false>(src, dst, scale, &mut []) }
    }

    /// [`bytes_to_f32`], and the bits of the nonzero results into `words`
    /// (`super::bytes_to_f32_mapped`): a test of each converted vector.
    ///
    /// # Panics
    /// If the lengths disagree, or the CPU lacks avx512f.
    pub(crate) fn bytes_to_f32_mapped(src: &[u8], dst: &mut [f32], scale: f32, words: &mut [u64]) {
        assert!(src.len() == dst.len() && words.len() == src.len().div_ceil(64), "bytes_to_f32_mapped: lengths");
        assert!(crate::gemm::Isa::Avx512.is_available(), "bytes_to_f32: avx512f not available");
        // SAFETY: avx512f was checked just above; the lengths agree.
        unsafe { convert::<true>(src, dst, scale, words) }
    }

    /// Both conversions: with `MAP`, a word of nonzero bits per 64 floats into `words`
    /// (`src.len().div_ceil(64)` of them); without, `words` is not touched and the
    /// tests compile away.
    #[target_feature(enable = "avx512f")]
    unsafe fn convert<const MAP: bool>(src: &[u8], dst: &mut [f32], scale: f32, words: &mut [u64]) {
        let (s, mag) = (_mm512_set1_ps(scale), _mm512_set1_epi32(0x7fff_ffff));
        // Converts 16 bytes (the lanes of `lanes`: the rest of a 16-byte tail buffer is
        // zeros, and a zero times a NaN scale would set them) and stores them, masked
        // to `lanes`; returns their nonzero bits (with `MAP`).
        let convert = |bytes: &[u8; 16], o: *mut f32, lanes: __mmask16| -> u64 {
            // SAFETY: `bytes` has 16 bytes; callers give `o` with a float for each lane
            // of `lanes` (the masked-off lanes are not written).
            let v = unsafe {
                let v =
                    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(bytes.as_ptr().cast()))), s);
                _mm512_mask_storeu_ps(o, lanes, v);
                v
            };
            if MAP {
                u64::from(_mm512_mask_test_epi32_mask(lanes, _mm512_castps_si512(v), mag))
            } else {
                0
            }
        };
        // A word per 64 floats, its 4 vectors' bits at fixed shifts.
        let mut groups = src.chunks_exact(64);
        let mut outs = dst.chunks_exact_mut(64);
        let mut w = 0;
        for (g, o) in (&mut groups).zip(&mut outs) {
            let word = g.chunks_exact(16).zip(o.chunks_exact_mut(16)).enumerate().fold(0, |m, (i, (ch, o))| {
                m | convert(ch.try_into().expect("16 bytes"), o.as_mut_ptr(), u16::MAX) << (16 * i)
            });
            if MAP {
                words[w] = word;
            }
            w += 1;
        }
        let (tail, out) = (groups.remainder(), outs.into_remainder());
        if tail.is_empty() {
            return;
        }
        let mut bits = 0u64;
        for (i, (ch, o)) in tail.chunks(16).zip(out.chunks_mut(16)).enumerate() {
            bits |= if let Ok(full) = ch.try_into() {
                convert(full, o.as_mut_ptr(), u16::MAX)
            } else {
                // The last, partial vector: through a zeroed buffer (a byte-masked load
                // would need AVX-512BW, which the dispatch does not check).
                let mut buf = [0u8; 16];
                buf[..ch.len()].copy_from_slice(ch);
                convert(&buf, o.as_mut_ptr(), (u32::MAX >> (32 - ch.len())) as __mmask16)
            } << (16 * i);
        }
        if MAP {
            words[w] = bits;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_conversions_agree_on_every_length() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 37 % 256) as u8).collect();
        for isa in crate::gemm::Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            for len in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 299, 300] {
                let (mut a, mut b) = (vec![f32::NAN; len + 3], vec![f32::NAN; len + 3]);
                bytes_to_f32_with(isa, &src[..len], &mut a[..len], 1.0 / 255.0);
                bytes_to_f32_portable(&src[..len], &mut b[..len], 1.0 / 255.0);
                assert_eq!(a[..len], b[..len], "{isa:?}, length {len}");
                assert!(a[len..].iter().all(|v| v.is_nan()), "{isa:?}, length {len}: wrote past the end");
                assert!(a[..len].iter().zip(&src).all(|(&x, &s)| x == s as f32 * (1.0 / 255.0)));
            }
        }
    }

    #[test]
    fn mapped_conversions_give_the_values_and_their_map_on_every_path() {
        // Zero bytes, and scales that make nonzero bytes zero (0) or every byte NaN.
        let src: Vec<u8> = (0..300u32).map(|i| if i % 3 == 0 { (i * 37 % 256) as u8 } else { 0 }).collect();
        for isa in crate::gemm::Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            for scale in [1.0 / 255.0, 0.0, -0.0, f32::NAN, 1e-45] {
                for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 79, 80, 129, 299, 300] {
                    let (mut a, mut b) = (vec![f32::NAN; len + 3], vec![f32::NAN; len + 3]);
                    let (mut wa, mut wb) = (vec![u64::MAX; len.div_ceil(64)], vec![0; len.div_ceil(64)]);
                    bytes_to_f32_mapped(isa, &src[..len], &mut a[..len], scale, &mut wa);
                    bytes_to_f32_portable(&src[..len], &mut b[..len], scale);
                    crate::gemm::nonzero_map::row_words_portable(&b[..len], &mut wb);
                    let what = format!("{isa:?}, scale {scale}, length {len}");
                    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: values");
                    assert_eq!(wa, wb, "{what}: map");
                }
            }
        }
    }
}
