//! Which elements of a batch are not ±0, a bit each: made by `fit` while it gathers the
//! batch (the rows are still in L1), then read by the first layer's two products for
//! the lists of k steps their tiles run (`kernel::steps::mapped_steps`), instead of
//! each row panel scanning its rows of the batch again from L2.

use super::kernel::steps::MAG;
use super::kernel::Isa;
use crate::matrix::MatRef;

/// The bits of a row-major `rows × cols` matrix, word-major: bit `j` of word
/// `w · rows + r` is set when element `(r, 64·w + j)` has a magnitude bit (is not ±0;
/// NaN and denormals are set). Word-major, so that the words of consecutive rows for
/// one column range are adjacent: the `Xᵀ·dZ` lists read a vector of rows at a time.
#[derive(Clone, Debug, Default)]
pub(crate) struct NonzeroMap {
    rows: usize,
    cols: usize,
    words: Vec<u64>,
    /// The same bits row-major (`rows × words_per_row(cols)`), as the gather writes
    /// them, a part of the rows per thread; [`NonzeroMap::publish`] transposes them.
    row_words: Vec<u64>,
}

/// A borrowed [`NonzeroMap`], as the GEMM driver reads it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NonzeroMapRef<'a> {
    pub rows: usize,
    pub cols: usize,
    /// `words_per_row(cols) × rows`, word-major.
    pub words: &'a [u64],
}

/// The map of a GEMM's A: `map` describes A itself (row-major A, the forward `X·W`) or
/// its transpose (`transposed`: A = Xᵀ in `dW = Xᵀ·dZ`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AMap<'a> {
    pub map: NonzeroMapRef<'a>,
    pub transposed: bool,
}

/// The 64-bit words of one row of `cols` elements.
pub(crate) fn words_per_row(cols: usize) -> usize {
    cols.div_ceil(64)
}

impl NonzeroMap {
    /// Sizes the map for a `rows × cols` matrix and returns its row-major words for the
    /// gather to fill ([`row_words`]); no allocation once it has held as many.
    pub(crate) fn row_words_mut(&mut self, rows: usize, cols: usize) -> &mut [u64] {
        let len = rows * words_per_row(cols);
        (self.rows, self.cols) = (rows, cols);
        self.words.resize(len, 0);
        self.row_words.resize(len, 0);
        &mut self.row_words
    }

    /// Moves the row-major words written since [`Self::row_words_mut`] into place.
    pub(crate) fn publish(&mut self) {
        let (rows, wpr) = (self.rows, words_per_row(self.cols));
        for (r, row) in self.row_words.chunks_exact(wpr.max(1)).enumerate().take(rows) {
            for (w, &bits) in row.iter().enumerate() {
                self.words[w * rows + r] = bits;
            }
        }
    }

    /// The map of `x`, made element by element: the twin the tests check the others
    /// against.
    #[cfg(test)]
    pub(crate) fn of(x: MatRef<'_>) -> NonzeroMap {
        let mut map = NonzeroMap::default();
        let (rows, cols) = (x.rows(), x.cols());
        let wpr = words_per_row(cols);
        let row_words = map.row_words_mut(rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                row_words[r * wpr + c / 64] |= u64::from(x.get(r, c).to_bits() & MAG != 0) << (c % 64);
            }
        }
        map.publish();
        map
    }

    pub(crate) fn view(&self) -> NonzeroMapRef<'_> {
        NonzeroMapRef { rows: self.rows, cols: self.cols, words: &self.words }
    }
}

impl<'a> NonzeroMapRef<'a> {
    /// The maps of columns `..c` and `c..` (`c` a multiple of 64, at most `cols`): their
    /// words are the first `c / 64` and the rest, each row's bits as they were.
    pub(crate) fn split_columns(self, c: usize) -> (NonzeroMapRef<'a>, NonzeroMapRef<'a>) {
        assert!(c.is_multiple_of(64) && c <= self.cols, "a map split at column {c} of {}", self.cols);
        let (left, right) = self.words.split_at(c / 64 * self.rows);
        (
            NonzeroMapRef { rows: self.rows, cols: c, words: left },
            NonzeroMapRef { rows: self.rows, cols: self.cols - c, words: right },
        )
    }

    /// Word `w` of row `r`.
    #[inline]
    pub(crate) fn word(&self, w: usize, r: usize) -> u64 {
        self.words[w * self.rows + r]
    }

    /// Whether this is exactly the map of `x` (a debug check of the driver's callers;
    /// allocates nothing, as a training step must not).
    pub(crate) fn is_map_of(&self, x: MatRef<'_>) -> bool {
        let wpr = words_per_row(x.cols());
        (self.rows, self.cols) == (x.rows(), x.cols())
            && self.words.len() == wpr * self.rows
            && (0..self.rows).all(|r| {
                (0..wpr).all(|w| {
                    let want = (64 * w..x.cols().min(64 * w + 64))
                        .fold(0, |m, c| m | u64::from(x.get(r, c).to_bits() & MAG != 0) << (c % 64));
                    self.word(w, r) == want
                })
            })
    }
}

/// Writes the bits of `row` (element `c` is bit `c % 64` of `words[c / 64]`, the bits
/// past the row's end clear), on the path's vectors: `words.len() == words_per_row(row.len())`.
///
/// # Panics
/// If the lengths disagree.
pub(crate) fn row_words(isa: Isa, row: &[f32], words: &mut [u64]) {
    assert_eq!(words.len(), words_per_row(row.len()), "row_words: {} words for {} floats", words.len(), row.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => super::kernel::avx512::row_words(row, words),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => super::kernel::avx2::row_words(row, words),
        _ => row_words_portable(row, words),
    }
}

/// The portable twin of [`row_words`].
pub(crate) fn row_words_portable(row: &[f32], words: &mut [u64]) {
    for (w, chunk) in words.iter_mut().zip(row.chunks(64)) {
        *w = chunk.iter().enumerate().fold(0, |m, (j, &x)| m | u64::from(x.to_bits() & MAG != 0) << j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn a_map_splits_into_the_maps_of_its_column_ranges() {
        let x = Matrix::from_fn(5, 200, |i, j| awkward(i * 200 + j));
        let map = NonzeroMap::of(x.view());
        for c in [0, 64, 128, 192] {
            let (left, right) = map.view().split_columns(c);
            assert!(left.is_map_of(x.view().submatrix(0, 0, 5, c).unwrap()), "columns ..{c}");
            assert!(right.is_map_of(x.view().submatrix(0, c, 5, 200 - c).unwrap()), "columns {c}..");
        }
        let split = std::panic::catch_unwind(|| map.view().split_columns(100));
        assert!(split.is_err(), "a split inside a word");
    }

    /// Values with every kind of zero and nonzero a map must tell apart.
    fn awkward(i: usize) -> f32 {
        match (i * 7919) % 11 {
            0 => -0.0,
            1 => f32::NAN,
            2 => f32::from_bits(1), // the smallest denormal
            3 => -f32::from_bits(1),
            4 => f32::INFINITY,
            5 => 1.0,
            _ => 0.0,
        }
    }

    #[test]
    fn row_words_of_every_path_match_the_definition() {
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 129, 784] {
                let row: Vec<f32> = (0..len).map(|i| awkward(i + len)).collect();
                let mut words = vec![u64::MAX; words_per_row(len)];
                row_words(isa, &row, &mut words);
                for (c, x) in row.iter().enumerate() {
                    let bit = words[c / 64] >> (c % 64) & 1 == 1;
                    assert_eq!(bit, x.to_bits() & 0x7fff_ffff != 0, "{isa:?}, length {len}, element {c} = {x}");
                }
                if len % 64 != 0 {
                    assert_eq!(words[len / 64] >> (len % 64), 0, "{isa:?}, length {len}: bits past the row");
                }
            }
        }
    }

    #[test]
    fn a_published_map_reads_back_every_element() {
        for (rows, cols) in [(0, 5), (1, 1), (3, 64), (5, 65), (17, 130)] {
            let x = Matrix::from_fn(rows, cols, |r, c| awkward(r * cols + c));
            let map = NonzeroMap::of(x.view());
            let v = map.view();
            assert_eq!(v.words.len(), rows * words_per_row(cols));
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(v.word(c / 64, r) >> (c % 64) & 1 == 1, x.view().get(r, c).to_bits() & 0x7fff_ffff != 0);
                }
            }
            assert!(v.is_map_of(x.view()));
            if rows * cols > 0 {
                let mut y = x.clone();
                let last = &mut y.row_mut(rows - 1)[cols - 1];
                *last = if last.to_bits() & 0x7fff_ffff == 0 { 2.0 } else { 0.0 };
                assert!(!v.is_map_of(y.view()), "{rows}×{cols}: a changed element went unnoticed");
            }
        }
    }
}
