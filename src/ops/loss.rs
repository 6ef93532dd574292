//! Regression and binary losses (NNFS chapter 16–17), each computing the mean loss and,
//! when asked, its gradient in the same pass. Shapes: predictions and targets are
//! `samples × outputs`; the loss is the mean over outputs, then over samples (= the mean
//! of all elements), and the gradient is that of the mean.
//!
//! One deliberate difference from the book: NNFS's mean-absolute-error backward is
//! `sign(y − ŷ)`, which is the gradient with respect to `y`, not `ŷ`; here it is
//! `sign(ŷ − y)`, as the numerical gradient check in `tests/gradcheck.rs` requires.

use super::check_out;
use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef};

/// NNFS's clip for binary cross-entropy: keeps `ln` finite.
pub const BCE_EPSILON: f32 = 1e-7;

/// Shared driver: checks shapes, runs `f(prediction, target) -> (loss, dloss/dpred)`
/// over every element, accumulates the loss in f64 in row order.
fn elementwise_loss(
    op: &'static str,
    predictions: MatRef<'_>,
    targets: MatRef<'_>,
    mut dinputs: Option<MatMut<'_>>,
    f: impl Fn(f32, f32) -> (f32, f32),
) -> Result<f32> {
    let (n, outputs) = (predictions.rows(), predictions.cols());
    super::check_same_shape(op, "targets", &predictions, targets.rows(), targets.cols())?;
    super::check_rows_contiguous(op, "predictions", n, outputs, predictions.col_stride())?;
    super::check_rows_contiguous(op, "targets", n, outputs, targets.col_stride())?;
    if let Some(d) = dinputs.as_ref() {
        check_out(op, "dinputs", &predictions, d)?;
    }
    if n == 0 || outputs == 0 {
        return Err(Error::InvalidArgument(format!("{op} needs a non-empty batch, got {n}×{outputs}")));
    }
    // d(mean)/d(element) = 1 / (outputs · samples).
    let scale = 1.0 / (n * outputs) as f32;
    let mut total = 0.0f64;
    for i in 0..n {
        let (p, t) = (predictions.row(i), targets.row(i));
        match dinputs.as_mut() {
            Some(d) => {
                for ((di, &pi), &ti) in d.row_mut(i).iter_mut().zip(p).zip(t) {
                    let (l, g) = f(pi, ti);
                    total += l as f64;
                    *di = g * scale;
                }
            }
            None => total += p.iter().zip(t).map(|(&pi, &ti)| f(pi, ti).0 as f64).sum::<f64>(),
        }
    }
    Ok((total / (n * outputs) as f64) as f32)
}

/// Mean squared error `mean((y − ŷ)²)`; gradient `−2(y − ŷ) / (outputs · samples)`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when shapes differ; [`Error::InvalidArgument`] when empty.
pub fn mean_squared_error(predictions: MatRef<'_>, targets: MatRef<'_>, dinputs: Option<MatMut<'_>>) -> Result<f32> {
    elementwise_loss("mean_squared_error", predictions, targets, dinputs, |p, t| {
        let e = t - p;
        (e * e, -2.0 * e)
    })
}

/// Mean absolute error `mean(|y − ŷ|)`; gradient `sign(ŷ − y) / (outputs · samples)`
/// (0 where `ŷ = y`).
///
/// # Errors
/// [`Error::ShapeMismatch`] when shapes differ; [`Error::InvalidArgument`] when empty.
pub fn mean_absolute_error(predictions: MatRef<'_>, targets: MatRef<'_>, dinputs: Option<MatMut<'_>>) -> Result<f32> {
    elementwise_loss("mean_absolute_error", predictions, targets, dinputs, |p, t| {
        let e = p - t;
        let sign = if e > 0.0 {
            1.0
        } else if e < 0.0 {
            -1.0
        } else {
            0.0
        };
        (e.abs(), sign)
    })
}

/// Binary cross-entropy of sigmoid outputs `ŷ ∈ (0, 1)` against targets in `[0, 1]`:
/// `mean(−(y ln ŷ + (1 − y) ln(1 − ŷ)))` with `ŷ` clipped to `[1e-7, 1 − 1e-7]`;
/// gradient `−(y/ŷ − (1 − y)/(1 − ŷ)) / (outputs · samples)` of the clipped `ŷ`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when shapes differ; [`Error::InvalidArgument`] when empty.
pub fn binary_cross_entropy(predictions: MatRef<'_>, targets: MatRef<'_>, dinputs: Option<MatMut<'_>>) -> Result<f32> {
    elementwise_loss("binary_cross_entropy", predictions, targets, dinputs, |p, t| {
        let p = p.clamp(BCE_EPSILON, 1.0 - BCE_EPSILON);
        (-(t * p.ln() + (1.0 - t) * (1.0 - p).ln()), -(t / p - (1.0 - t) / (1.0 - p)))
    })
}

/// The naive twins: the loss alone, in f64, from the formulas.
pub mod naive {
    /// Mean of `(y − ŷ)²`.
    pub fn mean_squared_error(p: &[f64], t: &[f64]) -> f64 {
        p.iter().zip(t).map(|(p, t)| (t - p) * (t - p)).sum::<f64>() / p.len() as f64
    }
    /// Mean of `|y − ŷ|`.
    pub fn mean_absolute_error(p: &[f64], t: &[f64]) -> f64 {
        p.iter().zip(t).map(|(p, t)| (t - p).abs()).sum::<f64>() / p.len() as f64
    }
    /// Mean binary cross-entropy with NNFS's clip.
    pub fn binary_cross_entropy(p: &[f64], t: &[f64]) -> f64 {
        let eps = super::BCE_EPSILON as f64;
        p.iter()
            .zip(t)
            .map(|(&p, &t)| {
                let p = p.clamp(eps, 1.0 - eps);
                -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
            })
            .sum::<f64>()
            / p.len() as f64
    }
}
