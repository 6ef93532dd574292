//! Activations, forward and backward, as NNFS defines them (batch-major, one sample per
//! row). Backward passes take the forward *output*, which is all they need: ReLU's
//! derivative is `output > 0`, sigmoid's `output·(1 − output)`, tanh's
//! `1 − output²`, softmax's Jacobian `diag(s) − s·sᵀ`.
//!
//! ReLU inside a network is normally fused into the GEMM epilogues
//! ([`Epilogue::BiasRelu`](crate::gemm::Epilogue::BiasRelu) forward,
//! [`Epilogue::ReluMask`](crate::gemm::Epilogue::ReluMask) backward); these standalone
//! versions serve layers the GEMM cannot absorb (after dropout, for example).
//!
//! The [`naive`] module holds the twins: the same functions in f64, written as the
//! formulas read.

use super::check_out;
use crate::error::Result;
use crate::matrix::{MatMut, MatRef};

/// Applies `f` elementwise from `input` into `output` (same shape, contiguous rows).
fn map(op: &'static str, input: MatRef<'_>, mut output: MatMut<'_>, f: impl Fn(f32) -> f32) -> Result<()> {
    check_out(op, "output", &input, &output)?;
    for i in 0..input.rows() {
        for (o, &x) in output.row_mut(i).iter_mut().zip(input.row(i)) {
            *o = f(x);
        }
    }
    Ok(())
}

/// `dinputs = dvalues ⊙ g(output)` elementwise.
fn map_backward(
    op: &'static str,
    dvalues: MatRef<'_>,
    output: MatRef<'_>,
    mut dinputs: MatMut<'_>,
    g: impl Fn(f32, f32) -> f32,
) -> Result<()> {
    check_out(op, "dinputs", &dvalues, &dinputs)?;
    super::check_same_shape(op, "forward output", &dvalues, output.rows(), output.cols())?;
    super::check_rows_contiguous(op, "forward output", output.rows(), output.cols(), output.col_stride())?;
    for i in 0..dvalues.rows() {
        for ((d, &dv), &o) in dinputs.row_mut(i).iter_mut().zip(dvalues.row(i)).zip(output.row(i)) {
            *d = g(dv, o);
        }
    }
    Ok(())
}

/// ReLU that lets NaN through (`max(0, x)` with NaN → NaN), so a NaN reaches the
/// checks downstream instead of being clipped to 0.
#[inline]
pub fn relu(x: f32) -> f32 {
    if 0.0 > x {
        0.0
    } else {
        x
    }
}

/// `output = max(inputs, 0)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn relu_forward(inputs: MatRef<'_>, output: MatMut<'_>) -> Result<()> {
    map("relu_forward", inputs, output, relu)
}

/// `dinputs = dvalues ⊙ 1[output > 0]`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn relu_backward(dvalues: MatRef<'_>, output: MatRef<'_>, dinputs: MatMut<'_>) -> Result<()> {
    map_backward("relu_backward", dvalues, output, dinputs, |d, o| if o > 0.0 { d } else { 0.0 })
}

/// `output = 1 / (1 + exp(−inputs))`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn sigmoid_forward(inputs: MatRef<'_>, output: MatMut<'_>) -> Result<()> {
    map("sigmoid_forward", inputs, output, |x| 1.0 / (1.0 + (-x).exp()))
}

/// `dinputs = dvalues ⊙ output ⊙ (1 − output)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn sigmoid_backward(dvalues: MatRef<'_>, output: MatRef<'_>, dinputs: MatMut<'_>) -> Result<()> {
    map_backward("sigmoid_backward", dvalues, output, dinputs, |d, o| d * (1.0 - o) * o)
}

/// `output = tanh(inputs)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn tanh_forward(inputs: MatRef<'_>, output: MatMut<'_>) -> Result<()> {
    map("tanh_forward", inputs, output, f32::tanh)
}

/// `dinputs = dvalues ⊙ (1 − output²)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn tanh_backward(dvalues: MatRef<'_>, output: MatRef<'_>, dinputs: MatMut<'_>) -> Result<()> {
    map_backward("tanh_backward", dvalues, output, dinputs, |d, o| d * (1.0 - o * o))
}

/// Row-wise softmax, shifted by each row's max for stability.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn softmax_forward(inputs: MatRef<'_>, mut output: MatMut<'_>) -> Result<()> {
    check_out("softmax_forward", "output", &inputs, &output)?;
    for i in 0..inputs.rows() {
        let x = inputs.row(i);
        let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        let o = output.row_mut(i);
        let mut sum = 0.0f32;
        for (e, &v) in o.iter_mut().zip(x) {
            *e = (v - max).exp();
            sum += *e;
        }
        let inv = 1.0 / sum;
        for e in o.iter_mut() {
            *e *= inv;
        }
    }
    Ok(())
}

/// Softmax backward, row by row: `dinputs = s ⊙ (dvalues − (dvalues · s))`, the
/// Jacobian-vector product NNFS computes with `diagflat(s) − s·sᵀ`, without the matrix.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes differ.
pub fn softmax_backward(dvalues: MatRef<'_>, output: MatRef<'_>, mut dinputs: MatMut<'_>) -> Result<()> {
    check_out("softmax_backward", "dinputs", &dvalues, &dinputs)?;
    super::check_same_shape("softmax_backward", "forward output", &dvalues, output.rows(), output.cols())?;
    super::check_rows_contiguous(
        "softmax_backward",
        "forward output",
        output.rows(),
        output.cols(),
        output.col_stride(),
    )?;
    for i in 0..dvalues.rows() {
        let (dv, s) = (dvalues.row(i), output.row(i));
        let dot: f32 = dv.iter().zip(s).map(|(a, b)| a * b).sum();
        for ((d, &g), &si) in dinputs.row_mut(i).iter_mut().zip(dv).zip(s) {
            *d = si * (g - dot);
        }
    }
    Ok(())
}

/// The naive twins, in f64 on owned data: `(rows, cols, data)` row-major.
pub mod naive {
    /// Elementwise ReLU.
    pub fn relu(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| if v > 0.0 { v } else { 0.0 }).collect()
    }
    /// Elementwise logistic sigmoid.
    pub fn sigmoid(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect()
    }
    /// Elementwise tanh.
    pub fn tanh(x: &[f64]) -> Vec<f64> {
        x.iter().map(|&v| v.tanh()).collect()
    }
    /// Row-wise softmax of a `rows × cols` row-major matrix.
    pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|row| {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                row.iter().map(move |v| (v - max).exp() / sum).collect::<Vec<_>>()
            })
            .collect()
    }
    /// Softmax backward through the full Jacobian `diag(s) − s·sᵀ`, as NNFS writes it.
    pub fn softmax_backward(dvalues: &[f64], s: &[f64], cols: usize) -> Vec<f64> {
        let mut out = vec![0.0; dvalues.len()];
        for (r, (dv, sr)) in dvalues.chunks(cols).zip(s.chunks(cols)).enumerate() {
            for i in 0..cols {
                out[r * cols + i] =
                    (0..cols).map(|j| (if i == j { sr[i] } else { 0.0 } - sr[i] * sr[j]) * dv[j]).sum::<f64>();
            }
        }
        out
    }
}
