//! Where [`Sequential::fit`](crate::nn::Sequential::fit) draws its training batches
//! from. Each step gathers the shuffled rows of its batch into a contiguous buffer;
//! for a data set much larger than the caches that gather is DRAM- and TLB-bound, so
//! compact storage pays: [`ScaledBytes`] keeps MNIST's pixels as bytes (a quarter of
//! the memory traffic of f32) and converts while gathering.

use crate::data::convert::{bytes_to_f32, bytes_to_f32_mapped};
use crate::error::{Error, Result};
use crate::gemm::nonzero_map::{row_words, words_per_row};
use crate::gemm::Isa;
use crate::matrix::MatRef;

/// The rows the default [`Inputs::gather_mapped`] gathers before it reads them back
/// (8 MNIST rows: 25 KB of f32, in L1).
const MAP_ROWS_PER_GATHER: usize = 8;

mod sealed {
    /// The proof that a call of [`Inputs::gather_mapped`](super::Inputs::gather_mapped)
    /// comes from this crate: public in a private module, with a private field.
    #[derive(Clone, Copy, Debug)]
    pub struct Sealed(pub(crate) ());
}
pub(crate) use sealed::Sealed;

/// A source of training rows.
pub trait Inputs: Copy + Send + Sync {
    /// Number of samples.
    fn rows(&self) -> usize;
    /// Features per sample.
    fn cols(&self) -> usize;
    /// Writes samples `rows` (in that order) into `out`, row-major:
    /// `out.len() == rows.len() * cols()`.
    fn gather(&self, rows: &[usize], out: &mut [f32]);
    /// [`gather`](Self::gather), and the bits of the gathered values that are not ±0
    /// into `words`, `cols().div_ceil(64)` words a row (bit `c % 64` of word `c / 64`
    /// for column `c`, the bits past the last column clear), on the vectors of `isa`:
    /// the map with which the first layer's products skip zero inputs. The default
    /// gathers a few rows, then reads them back while they are in L1. The products
    /// trust the map, so only this crate implements or calls it: outside, `Sealed`
    /// can be neither named nor made.
    #[doc(hidden)]
    fn gather_mapped(&self, rows: &[usize], out: &mut [f32], isa: Isa, words: &mut [u64], _: Sealed) {
        let (cols, wpr) = (self.cols(), words_per_row(self.cols()));
        if cols == 0 {
            return self.gather(rows, out);
        }
        let chunk = MAP_ROWS_PER_GATHER;
        for ((rows, out), words) in
            rows.chunks(chunk).zip(out.chunks_mut(chunk * cols)).zip(words.chunks_mut(chunk * wpr))
        {
            self.gather(rows, out);
            for (row, w) in out.chunks_exact(cols).zip(words.chunks_exact_mut(wpr)) {
                row_words(isa, row, w);
            }
        }
    }
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

    /// The bits tested on the converted vectors, before they are stored.
    fn gather_mapped(&self, rows: &[usize], out: &mut [f32], isa: Isa, words: &mut [u64], _: Sealed) {
        let wpr = words_per_row(self.cols);
        for ((dst, w), &r) in out.chunks_exact_mut(self.cols).zip(words.chunks_exact_mut(wpr)).zip(rows) {
            bytes_to_f32_mapped(isa, &self.data[r * self.cols..(r + 1) * self.cols], dst, self.scale, w);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::nonzero_map::{words_per_row, NonzeroMap};
    use crate::matrix::Matrix;

    /// `gather_mapped` of `x` over `rows` gives `gather`'s values and the map of them.
    fn check(x: impl Inputs, rows: &[usize], what: &str) {
        let (cols, wpr) = (x.cols(), words_per_row(x.cols()));
        let mut want = Matrix::zeros(rows.len(), cols);
        x.gather(rows, want.as_mut_slice());
        let map = NonzeroMap::of(want.view());
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            let mut got = Matrix::from_fn(rows.len(), cols, |_, _| f32::NAN);
            let mut words = vec![u64::MAX; rows.len() * wpr];
            x.gather_mapped(rows, got.as_mut_slice(), isa, &mut words, Sealed(()));
            let same = got.as_slice().iter().zip(want.as_slice()).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}, {isa:?}: values");
            for (r, row) in words.chunks_exact(wpr.max(1)).enumerate().take(rows.len()) {
                for (w, &bits) in row.iter().enumerate() {
                    assert_eq!(bits, map.view().word(w, r), "{what}, {isa:?}: row {r}, word {w}");
                }
            }
        }
    }

    #[test]
    fn gathers_with_a_map_give_the_values_and_their_map() {
        // Row counts around the default's chunk of 8; widths around a word.
        let bytes: Vec<u8> = (0..40 * 130u32).map(|i| if i % 5 < 2 { (i % 251) as u8 } else { 0 }).collect();
        let floats: Vec<f32> =
            (0..40 * 130).map(|i| [0.0, -0.0, 1.0, f32::NAN, f32::from_bits(1), 0.0][i % 6]).collect();
        for cols in [1, 63, 64, 65, 130] {
            let n = 40 * 130 / cols;
            for rows in [vec![], vec![3], (0..8).collect(), (0..17).rev().collect::<Vec<_>>()] {
                for scale in [1.0 / 255.0, f32::NAN] {
                    let x = ScaledBytes::new(&bytes[..n * cols], cols, scale).unwrap();
                    check(x, &rows, &format!("bytes {cols} wide, rows {rows:?}, scale {scale}"));
                }
                let x = MatRef::new(&floats[..n * cols], n, cols).unwrap();
                check(x, &rows, &format!("floats {cols} wide, rows {rows:?}"));
            }
        }
    }
}
