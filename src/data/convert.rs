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
        unsafe { bytes_to_f32_impl(src, dst, scale) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn bytes_to_f32_impl(src: &[u8], dst: &mut [f32], scale: f32) {
        // Only AVX-512F instructions: a byte-masked load would need AVX-512BW, which the
        // dispatch does not check, so the tail goes through a zeroed 16-byte buffer.
        let s = _mm512_set1_ps(scale);
        let convert = |bytes: __m128i| _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes)), s);
        let mut chunks = src.chunks_exact(16);
        let mut out = dst.chunks_exact_mut(16);
        for (c, o) in (&mut chunks).zip(&mut out) {
            // SAFETY: `c` has exactly 16 bytes and `o` exactly 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), convert(_mm_loadu_si128(c.as_ptr().cast()))) };
        }
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut buf = [0u8; 16];
            buf[..tail.len()].copy_from_slice(tail);
            let o = out.into_remainder();
            let mask = ((1u32 << tail.len()) - 1) as __mmask16;
            // SAFETY: `buf` has 16 bytes; the store is masked to the `tail.len()` floats
            // left in `o`.
            unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr(), mask, convert(_mm_loadu_si128(buf.as_ptr().cast()))) };
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
}
