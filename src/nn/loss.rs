//! Losses at the output of a model, and the targets they compare against.

use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef};
use crate::ops::{loss, softmax_ce};

/// The loss a model minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Loss {
    /// Softmax of the last layer's output (logits) + categorical cross-entropy, fused
    /// (NNFS's `Activation_Softmax_Loss_CategoricalCrossentropy`). Targets: classes.
    SoftmaxCrossEntropy,
    /// Mean squared error. Targets: values.
    MeanSquaredError,
    /// Mean absolute error. Targets: values.
    MeanAbsoluteError,
    /// Binary cross-entropy of sigmoid outputs. Targets: values in [0, 1].
    BinaryCrossEntropy,
}

/// What a model is trained against.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class index per sample.
    Classes(&'a [usize]),
    /// One row of target values per sample.
    Values(MatRef<'a>),
}

impl Targets<'_> {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Values(v) => v.rows(),
        }
    }
    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loss value and correct count of one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct BatchLoss {
    /// Mean data loss over the batch.
    pub loss: f32,
    /// Correct predictions (classification losses), else 0.
    pub correct: usize,
    /// Predictions counted: rows for softmax cross-entropy, elements for binary
    /// cross-entropy (NNFS compares every output), 0 for regression.
    pub total: usize,
}

impl Loss {
    /// Checks that `targets` suit this loss and a model with `outputs` outputs.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the wrong kind of targets;
    /// [`Error::ShapeMismatch`] for values of the wrong width;
    /// [`Error::LabelOutOfRange`] for a class ≥ `outputs`.
    pub fn check_targets(&self, targets: &Targets<'_>, outputs: usize) -> Result<()> {
        match (self, targets) {
            (Loss::SoftmaxCrossEntropy, Targets::Classes(c)) => match c.iter().position(|&l| l >= outputs) {
                Some(index) => Err(Error::LabelOutOfRange { index, label: c[index], classes: outputs }),
                None => Ok(()),
            },
            (Loss::SoftmaxCrossEntropy, Targets::Values(_)) => Err(Error::InvalidArgument(
                "softmax cross-entropy takes class indices (Targets::Classes), got Targets::Values".into(),
            )),
            (_, Targets::Values(v)) if v.cols() != outputs => Err(Error::ShapeMismatch {
                op: "loss",
                expected: format!("targets with {outputs} columns (one per model output)"),
                got: format!("{}×{}", v.rows(), v.cols()),
            }),
            (Loss::BinaryCrossEntropy, Targets::Values(v)) => {
                for i in 0..v.rows() {
                    for j in 0..v.cols() {
                        let t = v.get(i, j);
                        if !(0.0..=1.0).contains(&t) {
                            return Err(Error::InvalidArgument(format!(
                                "binary cross-entropy takes targets in [0, 1], got {t} at row {i}, column {j}"
                            )));
                        }
                    }
                }
                Ok(())
            }
            (_, Targets::Values(v)) => match (0..v.rows()).find(|&i| (0..v.cols()).any(|j| !v.get(i, j).is_finite())) {
                Some(row) => Err(Error::InvalidArgument(format!("target row {row} contains NaN or infinity"))),
                None => Ok(()),
            },
            (l, Targets::Classes(_)) => Err(Error::InvalidArgument(format!(
                "{l:?} takes target values (Targets::Values), got Targets::Classes"
            ))),
        }
    }

    /// The mean loss of `output` against `targets`, and `∂L/∂output` (for softmax
    /// cross-entropy: `∂L/∂logits`) into `dinputs` when given.
    ///
    /// # Errors
    /// As the kernels in [`ops`](crate::ops) for shape and label errors.
    pub fn forward_backward(
        &self,
        output: MatRef<'_>,
        targets: Targets<'_>,
        dinputs: Option<MatMut<'_>>,
    ) -> Result<BatchLoss> {
        match (self, targets) {
            (Loss::SoftmaxCrossEntropy, Targets::Classes(c)) => {
                let s = softmax_ce::softmax_cross_entropy(output, c, dinputs)?;
                Ok(BatchLoss { loss: s.loss, correct: s.correct, total: c.len() })
            }
            (Loss::BinaryCrossEntropy, Targets::Values(t)) => {
                let l = loss::binary_cross_entropy(output, t, dinputs)?;
                // Accuracy as NNFS defines it for binary outputs: (ŷ > 0.5) == y.
                let mut correct = 0;
                for i in 0..output.rows() {
                    for (&p, &y) in output.row(i).iter().zip(t.row(i)) {
                        correct += usize::from((p > 0.5) == (y > 0.5));
                    }
                }
                Ok(BatchLoss { loss: l, correct, total: output.rows() * output.cols() })
            }
            (Loss::MeanSquaredError, Targets::Values(t)) => {
                Ok(BatchLoss { loss: loss::mean_squared_error(output, t, dinputs)?, correct: 0, total: 0 })
            }
            (Loss::MeanAbsoluteError, Targets::Values(t)) => {
                Ok(BatchLoss { loss: loss::mean_absolute_error(output, t, dinputs)?, correct: 0, total: 0 })
            }
            _ => {
                self.check_targets(&targets, output.cols())?;
                unreachable!("check_targets rejects every other pairing")
            }
        }
    }

    /// Whether this loss reports an accuracy.
    pub fn is_classification(&self) -> bool {
        matches!(self, Loss::SoftmaxCrossEntropy | Loss::BinaryCrossEntropy)
    }
}
