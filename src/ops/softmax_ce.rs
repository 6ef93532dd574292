//! Softmax + categorical cross-entropy, fused: one pass over the logits gives the mean
//! loss, the gradient `dlogits = (softmax − onehot) / N` and the row argmax (accuracy),
//! without materialising the probabilities or the one-hot matrix.
//!
//! Numerically stable: each row is shifted by its max before `exp` (so no overflow),
//! and the loss is `log Σ exp(z) − z_label` computed as log-sum-exp, not `−log p`
//! of a rounded probability. So, unlike NNFS's clipping to `[1e-7, 1 − 1e-7]`, a very
//! confident wrong answer costs its true loss rather than at most 16.1.

use super::{check_rows_contiguous, check_same_shape};
use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef};

/// What one pass of softmax + cross-entropy gives back.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct SoftmaxCeStats {
    /// Mean over rows of `log Σ_c exp(z_c) − z_label`.
    pub loss: f32,
    /// Rows whose argmax (first maximum) equals the label.
    pub correct: usize,
}

fn check_args(logits: &MatRef<'_>, labels: &[usize], dlogits: Option<&MatMut<'_>>) -> Result<()> {
    let (n, classes) = (logits.rows(), logits.cols());
    if labels.len() != n {
        return Err(Error::ShapeMismatch {
            op: "softmax_cross_entropy",
            expected: format!("one label per row of the {n}×{classes} logits ({n} labels)"),
            got: format!("{} labels", labels.len()),
        });
    }
    if n == 0 || classes == 0 {
        return Err(Error::InvalidArgument(format!(
            "softmax_cross_entropy needs at least one row and one class, got {n}×{classes} logits"
        )));
    }
    check_rows_contiguous("softmax_cross_entropy", "logits", n, classes, logits.col_stride())?;
    if let Some(d) = dlogits {
        check_same_shape("softmax_cross_entropy", "dlogits", logits, d.rows(), d.cols())?;
        check_rows_contiguous("softmax_cross_entropy", "dlogits", d.rows(), d.cols(), d.col_stride())?;
    }
    // Every label is checked before anything is written.
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= classes) {
        return Err(Error::LabelOutOfRange { index, label, classes });
    }
    Ok(())
}

/// Mean loss and accuracy of `logits` (N × C) against class indices `labels` (N), and,
/// when `dlogits` is given, `dlogits = (softmax(logits) − onehot(labels)) / N`
/// (overwritten; N × C).
///
/// # Errors
/// [`Error::ShapeMismatch`] for a label count or `dlogits` shape that does not match;
/// [`Error::LabelOutOfRange`] for a label ≥ C (nothing is written then);
/// [`Error::InvalidArgument`] for an empty batch.
pub fn softmax_cross_entropy(
    logits: MatRef<'_>,
    labels: &[usize],
    mut dlogits: Option<MatMut<'_>>,
) -> Result<SoftmaxCeStats> {
    check_args(&logits, labels, dlogits.as_ref())?;
    let n = logits.rows();
    let inv_n = 1.0 / n as f32;
    // The vector exp of the kernel path in use (`FUSEGRAD_KERNEL`, else the CPU's best).
    let isa = crate::gemm::default_isa().unwrap_or_else(|_| crate::gemm::Isa::best());
    let mut loss = 0.0f64;
    let mut correct = 0;
    let classes = logits.cols();
    let mut first = 0;
    while first < n {
        let rows = first..(first + 16).min(n);
        let start = first * logits.row_stride();
        let d = dlogits.as_mut().map(|d| {
            let rsd = d.row_stride();
            (&mut d.as_mut_slice()[first * rsd..], rsd)
        });
        let block = super::exp::softmax_ce_block(
            isa,
            &logits.as_slice()[start..],
            logits.row_stride(),
            classes,
            &labels[rows.clone()],
            inv_n,
            d,
        );
        match block {
            // Up to 16 rows at once, one per lane.
            Some(b) => {
                for (r, &label) in labels[rows.clone()].iter().enumerate() {
                    correct += usize::from(b.arg[r] as usize == label);
                    loss += loss_term(b.max[r], b.sum[r], b.zl[r]);
                }
            }
            None => {
                for i in rows.clone() {
                    let (l, c) = row_loss(&logits, labels[i], i, isa, inv_n, dlogits.as_mut());
                    loss += l;
                    correct += c;
                }
            }
        }
        first = rows.end;
    }
    Ok(SoftmaxCeStats { loss: (loss / n as f64) as f32, correct })
}

/// Row `i` of [`softmax_cross_entropy`] on its own: its loss term and whether its
/// argmax (first maximum) is the label, writing its gradient row when `dlogits` is
/// given.
fn row_loss(
    logits: &MatRef<'_>,
    label: usize,
    i: usize,
    isa: crate::gemm::Isa,
    inv_n: f32,
    dlogits: Option<&mut MatMut<'_>>,
) -> (f64, usize) {
    let z = logits.row(i);
    // Row max (shift for stability) and first argmax.
    let (mut arg, mut max) = (0, z[0]);
    for (c, &v) in z.iter().enumerate().skip(1) {
        if v > max {
            (arg, max) = (c, v);
        }
    }
    let sum = match dlogits {
        Some(d) => {
            // exp once, kept in the gradient row, then scaled in place.
            let d = d.row_mut(i);
            let sum = super::exp::exp_shifted_sum(isa, z, max, d);
            let scale = inv_n / sum;
            for e in d.iter_mut() {
                *e *= scale;
            }
            d[label] -= inv_n;
            sum
        }
        None => super::exp::exp_shifted_sum(isa, z, max, &mut []),
    };
    (loss_term(max, sum, z[label]), usize::from(arg == label))
}

/// A row's loss, `log Σ exp(z) − z_label`, from its max, the sum of its shifted exps and
/// its label's logit: one formula for the block and the row loop.
fn loss_term(max: f32, sum: f32, z_label: f32) -> f64 {
    (max + sum.ln() - z_label) as f64
}

/// The naive twin: softmax, then the one-hot matrix, then `−ln p_label`, then
/// `(p − onehot)/N`, each as its own pass in f64, exactly as NNFS writes it (minus
/// the clipping). Same arguments, checks and results as [`softmax_cross_entropy`].
///
/// # Errors
/// As [`softmax_cross_entropy`].
pub fn softmax_cross_entropy_naive(
    logits: MatRef<'_>,
    labels: &[usize],
    mut dlogits: Option<MatMut<'_>>,
) -> Result<SoftmaxCeStats> {
    check_args(&logits, labels, dlogits.as_ref())?;
    let (n, classes) = (logits.rows(), logits.cols());
    let mut probs = vec![vec![0.0f64; classes]; n];
    for (i, p) in probs.iter_mut().enumerate() {
        let max = (0..classes).map(|c| logits.get(i, c) as f64).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..classes).map(|c| (logits.get(i, c) as f64 - max).exp()).sum();
        for (c, pc) in p.iter_mut().enumerate() {
            *pc = (logits.get(i, c) as f64 - max).exp() / sum;
        }
    }
    let onehot: Vec<Vec<f64>> =
        labels.iter().map(|&l| (0..classes).map(|c| if c == l { 1.0 } else { 0.0 }).collect()).collect();
    let loss = probs.iter().zip(labels).map(|(p, &l)| -p[l].ln()).sum::<f64>() / n as f64;
    let correct = probs
        .iter()
        .zip(labels)
        .filter(|(p, &l)| {
            let arg = (0..classes).fold(0, |best, c| if p[c] > p[best] { c } else { best });
            arg == l
        })
        .count();
    if let Some(d) = dlogits.as_mut() {
        for i in 0..n {
            for c in 0..classes {
                d.set(i, c, ((probs[i][c] - onehot[i][c]) / n as f64) as f32);
            }
        }
    }
    Ok(SoftmaxCeStats { loss: loss as f32, correct })
}
