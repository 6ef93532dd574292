//! Row-major f32 matrices and strided views over slices.
//!
//! A [`Matrix`] owns its data, row-major and contiguous. [`MatRef`] and [`MatMut`]
//! borrow a slice and describe a matrix inside it by `rows, cols, row stride, col
//! stride` (strides in elements), so a transpose ([`MatRef::t`]) or a block of a larger
//! matrix ([`MatRef::submatrix`]) is a view, never a copy.
//!
//! Views are checked when they are made: a view whose strides reach past its slice is
//! an [`Error::InvalidView`], and so is a mutable view in which two elements would
//! share a memory location. Once made, every element `(i, j)` with `i < rows`,
//! `j < cols` is at `i * row_stride + j * col_stride`, inside the slice.

use crate::error::{Error, Result};

/// An owned, row-major, contiguous f32 matrix. `Default` is the empty 0 × 0 matrix.
///
/// The matrices fusegrad makes ([`zeros`](Self::zeros), [`from_fn`](Self::from_fn),
/// [`resize`](Self::resize) when it reallocates, `clone`) start on a 64-byte
/// boundary, the size of a cache line and of an AVX-512 vector: a kernel that reads a
/// row of B in place loads whole vectors from it, and each vector that straddles two
/// cache lines costs two loads. [`from_vec`](Self::from_vec) keeps the caller's
/// allocation as it is.
#[derive(Default)]
pub struct Matrix {
    /// The elements live at `data[off..off + rows * cols]`.
    data: Vec<f32>,
    off: usize,
    rows: usize,
    cols: usize,
}

/// Elements of padding that let an allocation hold `len` floats from a 64-byte
/// boundary (an f32 allocation is 4-byte aligned at least).
pub(crate) const ALIGN_PAD: usize = 64 / std::mem::size_of::<f32>() - 1;

/// The index of the first element of `v` on a 64-byte boundary (at most
/// [`ALIGN_PAD`], so `len + ALIGN_PAD` floats hold `len` from there).
pub(crate) fn cache_line_offset(v: &[f32]) -> usize {
    v.as_ptr().align_offset(64).min(ALIGN_PAD)
}

/// `len` zeros, from a 64-byte boundary: the vector and the offset of element 0.
fn aligned_zeros(len: usize) -> (Vec<f32>, usize) {
    if len == 0 {
        return (Vec::new(), 0);
    }
    let data = vec![0.0; len + ALIGN_PAD];
    let off = cache_line_offset(&data);
    (data, off)
}

impl Clone for Matrix {
    fn clone(&self) -> Self {
        let (mut data, off) = aligned_zeros(self.as_slice().len());
        data[off..off + self.as_slice().len()].copy_from_slice(self.as_slice());
        Matrix { data, off, rows: self.rows, cols: self.cols }
    }
}

impl PartialEq for Matrix {
    fn eq(&self, other: &Self) -> bool {
        (self.rows, self.cols) == (other.rows, other.cols) && self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matrix")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("data", &self.as_slice())
            .finish()
    }
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        let len = rows.checked_mul(cols).expect("matrix size overflows usize");
        let (data, off) = aligned_zeros(len);
        Matrix { data, off, rows, cols }
    }

    /// A `rows × cols` matrix whose element `(i, j)` is `f(i, j)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut m = Matrix::zeros(rows, cols);
        for (i, row) in m.as_mut_slice().chunks_exact_mut(cols.max(1)).enumerate().take(rows) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = f(i, j);
            }
        }
        m
    }

    /// Wraps row-major `data` as a `rows × cols` matrix (no copy: the matrix starts
    /// where the vector does, on whatever boundary its allocation has).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `data.len() != rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                op: "Matrix::from_vec",
                expected: format!("{rows}×{cols} = {} elements", rows.saturating_mul(cols)),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(Matrix { data, off: 0, rows, cols })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The row-major data.
    pub fn as_slice(&self) -> &[f32] {
        &self.data[self.off..self.off + self.rows * self.cols]
    }

    /// The row-major data, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.rows * self.cols;
        &mut self.data[self.off..self.off + len]
    }

    /// Gives back the row-major data (moved to the front of the allocation when the
    /// matrix started past it).
    pub fn into_vec(self) -> Vec<f32> {
        let (mut data, off, len) = (self.data, self.off, self.rows * self.cols);
        data.truncate(off + len);
        data.drain(..off);
        data
    }

    /// Row `i` as a slice.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &[f32] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        &self.as_slice()[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i` as a mutable slice.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        let cols = self.cols;
        &mut self.as_mut_slice()[i * cols..(i + 1) * cols]
    }

    /// Makes the matrix `rows × cols`, reusing its allocation when it is large
    /// enough; contents are unspecified afterwards (zeros where it grew).
    pub fn resize(&mut self, rows: usize, cols: usize) {
        let len = rows.checked_mul(cols).expect("matrix size overflows usize");
        let old = self.rows * self.cols;
        if self.off + len <= self.data.len() {
            if len > old {
                self.data[self.off + old..self.off + len].fill(0.0);
            }
        } else {
            // A new allocation, on a 64-byte boundary; the old elements kept in front
            // (as `Vec::resize` keeps them).
            let (mut data, off) = aligned_zeros(len);
            data[off..off + old].copy_from_slice(self.as_slice());
            (self.data, self.off) = (data, off);
        }
        self.rows = rows;
        self.cols = cols;
    }

    /// A borrowed view of the whole matrix.
    pub fn view(&self) -> MatRef<'_> {
        let (rows, cols) = (self.rows, self.cols);
        MatRef { data: self.as_slice(), rows, cols, rs: cols, cs: 1 }
    }

    /// A mutable view of the whole matrix.
    pub fn view_mut(&mut self) -> MatMut<'_> {
        let (rows, cols) = (self.rows, self.cols);
        MatMut { data: self.as_mut_slice(), rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose, as a view (no copy).
    pub fn t(&self) -> MatRef<'_> {
        self.view().t()
    }
}

impl std::ops::Index<(usize, usize)> for Matrix {
    type Output = f32;
    fn index(&self, (i, j): (usize, usize)) -> &f32 {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of range for {}×{}", self.rows, self.cols);
        &self.as_slice()[i * self.cols + j]
    }
}

impl std::ops::IndexMut<(usize, usize)> for Matrix {
    fn index_mut(&mut self, (i, j): (usize, usize)) -> &mut f32 {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of range for {}×{}", self.rows, self.cols);
        let cols = self.cols;
        &mut self.as_mut_slice()[i * cols + j]
    }
}

/// Checks that a `rows × cols` view with strides `(rs, cs)` stays inside `len`
/// elements. Returns the largest offset touched plus one (0 for an empty view).
fn check_bounds(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    let last = (rows - 1).checked_mul(rs).and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)));
    match last {
        Some(last) if last < len => Ok(last + 1),
        _ => Err(Error::InvalidView(format!(
            "a {rows}×{cols} view with row stride {rs} and col stride {cs} reaches element {}, \
             but the slice has {len} elements",
            last.map_or_else(|| "past usize::MAX".to_string(), |l| l.to_string())
        ))),
    }
}

/// Checks that no two elements of a mutable view share a location: one stride must
/// step over the whole extent of the other (row-major-like or column-major-like).
fn check_no_alias(rows: usize, cols: usize, rs: usize, cs: usize) -> Result<()> {
    let ok = rows == 0
        || cols == 0
        || match (rows > 1, cols > 1) {
            (false, false) => true,
            (true, false) => rs >= 1,
            (false, true) => cs >= 1,
            (true, true) => (cs >= 1 && rs > (cols - 1) * cs) || (rs >= 1 && cs > (rows - 1) * rs),
        };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidView(format!(
            "a mutable {rows}×{cols} view with row stride {rs} and col stride {cs} \
             would write two elements to the same location"
        )))
    }
}

/// A borrowed, strided, read-only view of an f32 matrix.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major contiguous `rows × cols` view of `data`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `data.len() != rows * cols`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                op: "MatRef::new",
                expected: format!("{rows}×{cols} = {} elements", rows.saturating_mul(cols)),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(MatRef { data, rows, cols, rs: cols, cs: 1 })
    }

    /// A `rows × cols` view of `data` with element `(i, j)` at `i * rs + j * cs`.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when an element would lie outside `data`.
    pub fn from_strides(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        check_bounds(data.len(), rows, cols, rs, cs)?;
        Ok(MatRef { data, rows, cols, rs, cs })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.cs
    }

    /// The transpose, as a view: rows and columns (and their strides) swap.
    pub fn t(self) -> MatRef<'a> {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    /// If `(i, j)` is out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of range for {}×{}", self.rows, self.cols);
        self.data[i * self.rs + j * self.cs]
    }

    /// The `rows × cols` block whose top-left element is `(r0, c0)`.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when the block does not fit inside this view.
    pub fn submatrix(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Result<MatRef<'a>> {
        check_block(self.rows, self.cols, r0, c0, rows, cols)?;
        let start = if rows == 0 || cols == 0 { 0 } else { r0 * self.rs + c0 * self.cs };
        Ok(MatRef { data: &self.data[start..], rows, cols, rs: self.rs, cs: self.cs })
    }

    /// Row `i` as a slice.
    ///
    /// # Panics
    /// If `i >= rows`, or the view's columns are not contiguous (col stride ≠ 1).
    pub fn row(&self, i: usize) -> &'a [f32] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        assert!(self.cs == 1 || self.cols <= 1, "row() needs contiguous columns, col stride is {}", self.cs);
        let start = i * self.rs;
        &self.data[start..start + self.cols]
    }

    /// The first `rows` rows, as a view.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when `rows` exceeds the view's rows.
    pub fn rows_head(self, rows: usize) -> Result<MatRef<'a>> {
        self.submatrix(0, 0, rows, self.cols)
    }

    /// Copies the view into an owned row-major matrix.
    pub fn to_matrix(&self) -> Matrix {
        Matrix::from_fn(self.rows, self.cols, |i, j| self.get(i, j))
    }

    /// The underlying slice (element `(0, 0)` is at index 0 when the view is non-empty).
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
}

fn check_block(prows: usize, pcols: usize, r0: usize, c0: usize, rows: usize, cols: usize) -> Result<()> {
    let fits = r0.checked_add(rows).is_some_and(|e| e <= prows) && c0.checked_add(cols).is_some_and(|e| e <= pcols);
    if fits {
        Ok(())
    } else {
        Err(Error::InvalidView(format!(
            "block of {rows}×{cols} at ({r0}, {c0}) does not fit in a {prows}×{pcols} view"
        )))
    }
}

/// A borrowed, strided, mutable view of an f32 matrix. No two elements alias.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatMut<'a> {
    /// A row-major contiguous `rows × cols` view of `data`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `data.len() != rows * cols`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::ShapeMismatch {
                op: "MatMut::new",
                expected: format!("{rows}×{cols} = {} elements", rows.saturating_mul(cols)),
                got: format!("{} elements", data.len()),
            });
        }
        Ok(MatMut { data, rows, cols, rs: cols, cs: 1 })
    }

    /// A `rows × cols` view of `data` with element `(i, j)` at `i * rs + j * cs`.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when an element would lie outside `data`, or when two
    /// elements would share a location (one stride must span the other dimension).
    pub fn from_strides(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        check_bounds(data.len(), rows, cols, rs, cs)?;
        check_no_alias(rows, cols, rs, cs)?;
        Ok(MatMut { data, rows, cols, rs, cs })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Distance in elements between `(i, j)` and `(i + 1, j)`.
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    /// Distance in elements between `(i, j)` and `(i, j + 1)`.
    pub fn col_stride(&self) -> usize {
        self.cs
    }

    /// The transpose, as a view.
    pub fn t(self) -> MatMut<'a> {
        MatMut { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// A read-only view of the same elements.
    pub fn rb(&self) -> MatRef<'_> {
        MatRef { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }

    /// A shorter-lived mutable view of the same elements.
    pub fn rb_mut(&mut self) -> MatMut<'_> {
        MatMut { data: self.data, rows: self.rows, cols: self.cols, rs: self.rs, cs: self.cs }
    }

    /// Element `(i, j)`.
    ///
    /// # Panics
    /// If `(i, j)` is out of range.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.rb().get(i, j)
    }

    /// Row `i` as a mutable slice.
    ///
    /// # Panics
    /// If `i >= rows`, or the view's columns are not contiguous (col stride ≠ 1).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        assert!(self.cs == 1 || self.cols <= 1, "row_mut() needs contiguous columns, col stride is {}", self.cs);
        let start = i * self.rs;
        &mut self.data[start..start + self.cols]
    }

    /// Sets element `(i, j)`.
    ///
    /// # Panics
    /// If `(i, j)` is out of range.
    pub fn set(&mut self, i: usize, j: usize, v: f32) {
        assert!(i < self.rows && j < self.cols, "index ({i}, {j}) out of range for {}×{}", self.rows, self.cols);
        self.data[i * self.rs + j * self.cs] = v;
    }

    /// The `rows × cols` block whose top-left element is `(r0, c0)`.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when the block does not fit inside this view.
    pub fn submatrix(self, r0: usize, c0: usize, rows: usize, cols: usize) -> Result<MatMut<'a>> {
        check_block(self.rows, self.cols, r0, c0, rows, cols)?;
        let start = if rows == 0 || cols == 0 { 0 } else { r0 * self.rs + c0 * self.cs };
        Ok(MatMut { data: &mut self.data[start..], rows, cols, rs: self.rs, cs: self.cs })
    }

    /// The underlying slice, mutable (element `(0, 0)` is at index 0 when the view is
    /// non-empty; elements between the view's rows and columns are in it too).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_a_view_with_swapped_strides() {
        let m = Matrix::from_fn(2, 3, |i, j| (i * 10 + j) as f32);
        let t = m.t();
        assert_eq!((t.rows(), t.cols(), t.row_stride(), t.col_stride()), (3, 2, 1, 3));
        for i in 0..2 {
            for j in 0..3 {
                assert_eq!(t.get(j, i), m[(i, j)]);
            }
        }
    }

    #[test]
    fn view_past_the_slice_is_an_error() {
        let d = [0.0f32; 10];
        assert!(MatRef::from_strides(&d, 3, 3, 3, 1).is_ok()); // last offset 8
        assert!(matches!(MatRef::from_strides(&d, 3, 3, 4, 1), Err(Error::InvalidView(_)))); // 10
        assert!(matches!(MatRef::from_strides(&d, 2, 2, usize::MAX, 1), Err(Error::InvalidView(_))));
        assert!(MatRef::from_strides(&d, 0, 5, 1000, 1000).is_ok()); // empty views touch nothing
    }

    #[test]
    fn aliasing_mutable_view_is_an_error() {
        let mut d = [0.0f32; 16];
        // Row stride 2 with 3 columns: (0,2) and (1,0) share offset 2.
        assert!(matches!(MatMut::from_strides(&mut d, 3, 3, 2, 1), Err(Error::InvalidView(_))));
        // Zero col stride: every column of a row is one location.
        assert!(matches!(MatMut::from_strides(&mut d, 2, 2, 4, 0), Err(Error::InvalidView(_))));
        // Column-major and padded layouts are fine.
        assert!(MatMut::from_strides(&mut d, 3, 3, 1, 4).is_ok());
        assert!(MatMut::from_strides(&mut d, 3, 3, 5, 1).is_ok());
        // An empty view has no elements to alias, whatever its strides.
        assert!(MatMut::from_strides(&mut d, 2, 0, 0, 1).is_ok());
        // A read-only view may broadcast (stride 0).
        assert!(MatRef::from_strides(&d, 2, 2, 4, 0).is_ok());
    }

    #[test]
    fn submatrix_checks_its_block() {
        let m = Matrix::from_fn(4, 5, |i, j| (i * 5 + j) as f32);
        let s = m.view().submatrix(1, 2, 2, 3).unwrap();
        assert_eq!(s.get(1, 2), m[(2, 4)]);
        assert!(m.view().submatrix(3, 0, 2, 1).is_err());
        assert!(m.view().submatrix(0, 4, 1, 2).is_err());
    }

    fn starts_on_a_cache_line(m: &Matrix) -> bool {
        (m.as_slice().as_ptr() as usize).is_multiple_of(64)
    }

    #[test]
    fn matrices_fusegrad_makes_start_on_64_bytes_and_keep_their_values() {
        // Many sizes, so that the allocator hands out blocks on every 16-byte offset.
        let mut kept = Vec::new();
        for len in 1..200 {
            let m = Matrix::from_fn(len, 3, |i, j| (i * 3 + j) as f32);
            assert!(starts_on_a_cache_line(&m), "from_fn {len}×3");
            let c = m.clone();
            assert!(starts_on_a_cache_line(&c) && c == m, "clone {len}×3");
            assert!(starts_on_a_cache_line(&Matrix::zeros(3, len)), "zeros 3×{len}");
            kept.push(c);
        }
        // From an unaligned vector: kept as it is; a resize that reallocates aligns it
        // and keeps the elements in front, zeros where it grew.
        let v: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let mut m = Matrix::from_vec(37, 1, v.clone()).unwrap();
        assert_eq!(m.as_slice(), &v[..]);
        m.resize(10, 10);
        assert!(starts_on_a_cache_line(&m));
        assert_eq!(&m.as_slice()[..37], &v[..]);
        assert!(m.as_slice()[37..].iter().all(|&x| x == 0.0));
        // Shrunk then grown in place: zeros where it grew, as documented.
        m.resize(2, 3);
        assert_eq!(m.as_slice(), &v[..6]);
        m.resize(3, 3);
        assert_eq!(&m.as_slice()[6..], &[0.0; 3]);
        // into_vec gives back exactly the elements, whatever the offset inside.
        assert_eq!(m.clone().into_vec(), m.as_slice().to_vec());
        let e = Matrix::default();
        assert_eq!((e.rows(), e.cols(), e.as_slice().len()), (0, 0, 0));
        assert_eq!(e.clone(), e);
        // Equality looks at the shape and the elements only (not at the padding).
        assert_ne!(Matrix::zeros(2, 3), Matrix::zeros(3, 2));
        assert_eq!(format!("{:?}", Matrix::zeros(1, 2)), "Matrix { rows: 1, cols: 2, data: [0.0, 0.0] }");
    }

    #[test]
    fn constructors_check_lengths() {
        assert!(Matrix::from_vec(2, 3, vec![0.0; 5]).is_err());
        assert!(MatRef::new(&[0.0; 6], 2, 3).is_ok());
        assert!(MatMut::new(&mut [0.0; 7], 2, 3).is_err());
    }
}
