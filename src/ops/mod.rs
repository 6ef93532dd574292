//! Row and element kernels of a training step, each beside its naive twin:
//! softmax + cross-entropy fused into one pass ([`softmax_ce`]), activations forward
//! and backward ([`activation`]), regression and binary losses ([`loss`]), column sums
//! and argmax ([`reduce`]) and optimizer updates ([`update`]).
//!
//! Matrices are batch-major (one sample per row) and must have contiguous columns
//! (col stride 1); rows may be padded. Shapes are checked and reported as
//! [`crate::Error::ShapeMismatch`]. Every reduction runs in a
//! fixed order, so results do not depend on the thread count.

pub mod activation;
mod exp;
pub mod loss;
pub mod reduce;
pub mod softmax_ce;
pub mod update;

use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef};

/// Checks that `got` has the shape of `expected`, and that both have contiguous
/// columns, for operation `op`.
pub(crate) fn check_same_shape(
    op: &'static str,
    what: &str,
    expected: &MatRef<'_>,
    got_rows: usize,
    got_cols: usize,
) -> Result<()> {
    if expected.rows() != got_rows || expected.cols() != got_cols {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("{what} of shape {}×{}", expected.rows(), expected.cols()),
            got: format!("{got_rows}×{got_cols}"),
        });
    }
    Ok(())
}

/// Checks that a view has contiguous columns, as the row kernels need.
pub(crate) fn check_rows_contiguous(op: &'static str, what: &str, rows: usize, cols: usize, cs: usize) -> Result<()> {
    if cs != 1 && cols > 1 && rows > 0 {
        return Err(Error::InvalidView(format!(
            "{op}: {what} needs contiguous columns (col stride 1), got col stride {cs}"
        )));
    }
    Ok(())
}

/// Checks shape and layout of an output view against an input view.
pub(crate) fn check_out(op: &'static str, what: &str, input: &MatRef<'_>, out: &MatMut<'_>) -> Result<()> {
    check_same_shape(op, what, input, out.rows(), out.cols())?;
    check_rows_contiguous(op, "input", input.rows(), input.cols(), input.col_stride())?;
    check_rows_contiguous(op, what, out.rows(), out.cols(), out.col_stride())
}

/// Checks that two flat buffers have the same length.
pub(crate) fn check_len(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::ShapeMismatch {
            op,
            expected: format!("{what} of length {expected}"),
            got: format!("length {got}"),
        });
    }
    Ok(())
}
