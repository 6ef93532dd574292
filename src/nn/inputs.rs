//! Where [`Sequential::fit`](crate::nn::Sequential::fit) draws its training batches
//! from. Each step gathers the shuffled rows of its batch into a contiguous buffer;
//! for a data set much larger than the caches that gather is DRAM- and TLB-bound, so
//! compact storage pays: [`ScaledBytes`] keeps MNIST's pixels as bytes (a quarter of
//! the memory traffic of f32) and converts while gathering.

use crate::data::convert::bytes_to_f32;
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
    /// A bound on every `|value|` known without reading the data, if any (bytes times
    /// a finite scale: `255·|scale|`). `None`, the default, has `fit` measure each
    /// batch for the proof that a fused step stays finite.
    fn max_abs_bound(&self) -> Option<f32> {
        None
    }
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
    fn max_abs_bound(&self) -> Option<f32> {
        let bound = 255.0 * self.scale.abs();
        bound.is_finite().then_some(bound)
    }

    fn prefetch(&self, rows: &[usize]) {
        for &r in rows {
            crate::data::convert::prefetch(&self.data[r * self.cols..(r + 1) * self.cols]);
        }
    }
}
