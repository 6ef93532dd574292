//! Where [`Sequential::fit`](crate::nn::Sequential::fit) draws its training batches
//! from. Each step gathers the shuffled rows of its batch into a contiguous buffer;
//! for a data set much larger than the caches that gather is DRAM- and TLB-bound, so
//! compact storage pays: [`ScaledBytes`] keeps MNIST's pixels as bytes (a quarter of
//! the memory traffic of f32) and converts while gathering.

use crate::error::{Error, Result};
use crate::matrix::MatRef;

/// A source of training rows.
pub trait Inputs: Copy + Send + Sync {
    /// Number of samples.
    fn rows(&self) -> usize;
    /// Features per sample.
    fn cols(&self) -> usize;
    /// Writes samples `rows` (in that order) into `out`, row-major:
    /// `out.len() == rows.len() * cols()`.
    fn gather(&self, rows: &[usize], out: &mut [f32]);
    /// Starts loading samples `rows` into cache ahead of their [`gather`](Self::gather)
    /// (called one step ahead). The default does nothing.
    fn prefetch(&self, _rows: &[usize]) {}
}

impl Inputs for MatRef<'_> {
    fn rows(&self) -> usize {
        MatRef::rows(self)
    }
    fn cols(&self) -> usize {
        MatRef::cols(self)
    }
    fn gather(&self, rows: &[usize], out: &mut [f32]) {
        let cols = MatRef::cols(self);
        for (dst, &r) in out.chunks_exact_mut(cols.max(1)).zip(rows) {
            dst.copy_from_slice(self.row(r));
        }
    }
}

/// Byte-valued samples, row-major, read as `byte as f32 * scale` (for pixels:
/// `scale = 1/255` gives exactly the values of a `[0, 1]` f32 matrix made the same way).
#[derive(Clone, Copy, Debug)]
pub struct ScaledBytes<'a> {
    data: &'a [u8],
    cols: usize,
    scale: f32,
}

impl<'a> ScaledBytes<'a> {
    /// `data` as rows of `cols` bytes.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `cols` is 0 or does not divide `data.len()`.
    pub fn new(data: &'a [u8], cols: usize, scale: f32) -> Result<Self> {
        if cols == 0 || !data.len().is_multiple_of(cols) {
            return Err(Error::ShapeMismatch {
                op: "ScaledBytes::new",
                expected: format!("a whole number of rows of {cols} bytes"),
                got: format!("{} bytes", data.len()),
            });
        }
        Ok(ScaledBytes { data, cols, scale })
    }
}

impl Inputs for ScaledBytes<'_> {
    fn rows(&self) -> usize {
        self.data.len() / self.cols
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn gather(&self, rows: &[usize], out: &mut [f32]) {
        for (dst, &r) in out.chunks_exact_mut(self.cols).zip(rows) {
            bytes_to_f32(&self.data[r * self.cols..(r + 1) * self.cols], dst, self.scale);
        }
    }

    /// A batch of MNIST bytes is 100 KB: small enough to prefetch a whole step ahead
    /// without pushing the step's own working set out of L2 (the f32 batch, 400 KB,
    /// would), so the gather finds its rows in cache instead of paying DRAM latency
    /// row by row.
    fn prefetch(&self, rows: &[usize]) {
        for &r in rows {
            crate::gemm::kernel::prefetch(&self.data[r * self.cols..(r + 1) * self.cols]);
        }
    }
}

/// `dst[i] = src[i] as f32 * scale`, with the vector instructions of the kernel path in
/// use ([`default_isa`](crate::gemm::default_isa): `FUSEGRAD_KERNEL`, else the CPU's
/// best), so that a forced path runs what a CPU with only that path runs: the byte
/// gather is a quarter of an MNIST step's non-GEMM time, and the baseline (SSE2)
/// conversion runs at under 2 elements per cycle.
///
/// # Panics
/// If the lengths differ.
pub fn bytes_to_f32(src: &[u8], dst: &mut [f32], scale: f32) {
    let isa = crate::gemm::default_isa().unwrap_or_else(|_| crate::gemm::Isa::best());
    bytes_to_f32_with(isa, src, dst, scale);
}

/// [`bytes_to_f32`] on the given path (the portable loop for a path without its own
/// conversion, or one this CPU cannot run).
fn bytes_to_f32_with(isa: crate::gemm::Isa, src: &[u8], dst: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        crate::gemm::Isa::Avx512 if isa.is_available() => {
            return crate::gemm::kernel::avx512::bytes_to_f32(src, dst, scale)
        }
        crate::gemm::Isa::Avx2 if isa.is_available() => {
            return crate::gemm::kernel::avx2::bytes_to_f32(src, dst, scale)
        }
        _ => {}
    }
    let _ = isa;
    bytes_to_f32_portable(src, dst, scale);
}

/// The portable twin of [`bytes_to_f32`].
///
/// # Panics
/// If the lengths differ.
pub fn bytes_to_f32_portable(src: &[u8], dst: &mut [f32], scale: f32) {
    assert_eq!(src.len(), dst.len(), "bytes_to_f32: length mismatch");
    for (o, &b) in dst.iter_mut().zip(src) {
        *o = b as f32 * scale;
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
