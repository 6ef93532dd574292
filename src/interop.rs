//! ndarray interop (feature `ndarray`): borrow an `ArrayView2` / `ArrayViewMut2` as a
//! [`MatRef`] / [`MatMut`] without copying, lend a [`MatRef`] as an `ArrayView2`, and
//! move an `Array2` into a [`Matrix`] and back (the buffer changes hands, nothing is
//! copied). faer-ext's `IntoFaer` is the pattern.
//!
//! ```
//! use fusegrad::interop::{IntoFusegrad, IntoNdarray};
//! use fusegrad::Matrix;
//! use ndarray::{array, s};
//! let a = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]];
//! let m = a.view().into_fusegrad()?;               // row-major: no copy
//! assert_eq!((m.rows(), m.cols(), m.get(1, 2)), (2, 3, 6.0));
//! let t = a.t().into_fusegrad()?;                  // column-major (a transpose): no copy
//! assert_eq!(t.get(2, 1), 6.0);
//! let rows = a.slice(s![1.., ..]).into_fusegrad()?; // a block of whole rows: no copy
//! assert_eq!(rows.get(0, 0), 4.0);
//! let owned: Matrix = Matrix::from_ndarray(a.clone()); // the Vec moves over
//! assert_eq!(owned.into_ndarray(), a);
//! # Ok::<(), fusegrad::Error>(())
//! ```
//!
//! A view with gaps in memory (every other column, a column range of a row-major
//! array) has no slice of its own to borrow: ndarray's safe API gives none, and a
//! slice spanning the gaps could alias another thread's mutable view of them. Such a
//! view is an error here; [`Matrix::from_ndarray_view`] copies it.

use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef, Matrix};
use crate::nn::Inputs;
use ndarray::{Array2, ArrayView2, ArrayViewMut2, ShapeBuilder};

/// Borrowing an ndarray as a fusegrad view.
pub trait IntoFusegrad {
    /// The fusegrad view.
    type Output;
    /// The same memory as a fusegrad view.
    ///
    /// # Errors
    /// [`Error::InvalidView`] when the array has gaps in memory or a negative stride
    /// (copy it with [`Matrix::from_ndarray_view`]).
    fn into_fusegrad(self) -> Result<Self::Output>;
}

/// Lending a fusegrad matrix as an ndarray.
pub trait IntoNdarray {
    /// The ndarray.
    type Output;
    /// The same memory (or buffer) as an ndarray.
    fn into_ndarray(self) -> Self::Output;
}

fn strides(strides: &[isize], what: &str) -> Result<(usize, usize)> {
    match *strides {
        [rs, cs] if rs >= 0 && cs >= 0 => Ok((rs as usize, cs as usize)),
        _ => Err(Error::InvalidView(format!(
            "{what} with strides {strides:?}: negative strides have no fusegrad view (copy with Matrix::from_ndarray_view)"
        ))),
    }
}

fn gaps(what: &str, shape: &[usize], strides: &[isize]) -> Error {
    Error::InvalidView(format!(
        "{what} of shape {shape:?} with strides {strides:?} has gaps in memory: it cannot be borrowed as one slice \
         (copy it with Matrix::from_ndarray_view)"
    ))
}

impl<'a> IntoFusegrad for ArrayView2<'a, f32> {
    type Output = MatRef<'a>;
    fn into_fusegrad(self) -> Result<MatRef<'a>> {
        let (rows, cols) = self.dim();
        let (rs, cs) = strides(self.strides(), "an ArrayView2")?;
        let (shape, st) = (self.shape().to_vec(), self.strides().to_vec());
        let data = self.to_slice_memory_order().ok_or_else(|| gaps("an ArrayView2", &shape, &st))?;
        MatRef::from_strides(data, rows, cols, rs, cs)
    }
}

impl<'a> IntoFusegrad for ArrayViewMut2<'a, f32> {
    type Output = MatMut<'a>;
    fn into_fusegrad(self) -> Result<MatMut<'a>> {
        let (rows, cols) = self.dim();
        let (rs, cs) = strides(self.strides(), "an ArrayViewMut2")?;
        let (shape, st) = (self.shape().to_vec(), self.strides().to_vec());
        let data = self.into_slice_memory_order().ok_or_else(|| gaps("an ArrayViewMut2", &shape, &st))?;
        MatMut::from_strides(data, rows, cols, rs, cs)
    }
}

impl<'a> IntoNdarray for MatRef<'a> {
    type Output = ArrayView2<'a, f32>;
    fn into_ndarray(self) -> ArrayView2<'a, f32> {
        let shape = (self.rows(), self.cols()).strides((self.row_stride(), self.col_stride()));
        ArrayView2::from_shape(shape, self.as_slice()).expect("a MatRef's strides stay inside its slice")
    }
}

impl IntoNdarray for Matrix {
    type Output = Array2<f32>;
    fn into_ndarray(self) -> Array2<f32> {
        let (rows, cols) = (self.rows(), self.cols());
        Array2::from_shape_vec((rows, cols), self.into_vec()).expect("a Matrix holds rows × cols floats")
    }
}

impl Matrix {
    /// The array's buffer as a matrix: moved, not copied, when the array is row-major
    /// and starts at its buffer's beginning (as a freshly made `Array2` does);
    /// otherwise copied into row-major order.
    pub fn from_ndarray(a: Array2<f32>) -> Matrix {
        let (rows, cols) = a.dim();
        if !a.is_standard_layout() {
            return Matrix::from_ndarray_view(a.view());
        }
        let (data, offset) = a.into_raw_vec_and_offset();
        let (off, len) = (offset.unwrap_or(0), rows * cols);
        if off == 0 && data.len() == len {
            return Matrix::from_vec(rows, cols, data).expect("length checked");
        }
        // Row-major but a part of its buffer (an owned slice): the part is contiguous.
        Matrix::from_vec(rows, cols, data[off..off + len].to_vec()).expect("length checked")
    }

    /// A row-major copy of any 2-D view (gaps, negative strides and all).
    pub fn from_ndarray_view(a: ArrayView2<'_, f32>) -> Matrix {
        let (rows, cols) = a.dim();
        Matrix::from_vec(rows, cols, a.iter().copied().collect()).expect("rows × cols elements")
    }
}

/// An `ArrayView2` feeds `fit` directly, whatever its layout (rows are gathered
/// element by element when they are not contiguous).
impl Inputs for ArrayView2<'_, f32> {
    fn rows(&self) -> usize {
        self.nrows()
    }
    fn cols(&self) -> usize {
        self.ncols()
    }
    fn gather(&self, rows: &[usize], out: &mut [f32]) {
        let cols = self.ncols();
        for (dst, &r) in out.chunks_exact_mut(cols.max(1)).zip(rows) {
            let row = self.row(r);
            match row.as_slice() {
                Some(src) => dst.copy_from_slice(src),
                None => dst.iter_mut().zip(row.iter()).for_each(|(d, &s)| *d = s),
            }
        }
    }
}
