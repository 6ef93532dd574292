//! Dropout (NNFS chapter 15): in training, each input is zeroed with probability
//! `rate` and the survivors are scaled by `1 / (1 − rate)` ("inverted" dropout), so
//! that inference needs no rescaling; at inference it is the identity. The mask comes
//! from the layer's own seeded [`Rng`], so a run is reproducible.

use crate::error::{Error, Result};
use crate::matrix::{MatRef, Matrix};
use crate::rng::Rng;

/// A dropout layer.
#[derive(Clone, Debug)]
pub struct Dropout {
    rate: f32,
    rng: Rng,
    /// `0` or `1 / (1 − rate)` per element, from the last training forward.
    mask: Matrix,
    /// From the last forward.
    pub output: Matrix,
    /// From the last backward.
    pub dinputs: Matrix,
}

impl Dropout {
    /// Drops a fraction `rate` of the inputs, with masks drawn from `seed`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `0 ≤ rate < 1`.
    pub fn new(rate: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&rate) {
            return Err(Error::InvalidArgument(format!("dropout rate must be in [0, 1), got {rate}")));
        }
        Ok(Dropout {
            rate,
            rng: Rng::new(seed),
            mask: Matrix::zeros(0, 0),
            output: Matrix::zeros(0, 0),
            dinputs: Matrix::zeros(0, 0),
        })
    }

    /// The fraction dropped in training.
    pub fn rate(&self) -> f32 {
        self.rate
    }

    /// The mask generator's state (for checkpoints).
    pub(crate) fn rng_state(&self) -> [u64; 4] {
        self.rng.state()
    }

    /// Restores [`Self::rng_state`].
    pub(crate) fn set_rng_state(&mut self, s: [u64; 4]) {
        self.rng = Rng::from_state(s);
    }

    /// `output = inputs ⊙ mask` in training (a fresh mask each call), `inputs` otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidView`] for non-contiguous input rows.
    pub fn forward(&mut self, inputs: MatRef<'_>, training: bool) -> Result<()> {
        crate::ops::check_rows_contiguous("Dropout", "inputs", inputs.rows(), inputs.cols(), inputs.col_stride())?;
        let (rows, cols) = (inputs.rows(), inputs.cols());
        self.output.resize(rows, cols);
        self.mask.resize(rows, cols);
        let keep = 1.0 - self.rate;
        let scale = 1.0 / keep;
        for i in 0..rows {
            let (x, out, mask) = (inputs.row(i), self.output.row_mut(i), self.mask.row_mut(i));
            if training {
                for ((o, m), &v) in out.iter_mut().zip(mask.iter_mut()).zip(x) {
                    *m = if self.rng.next_f32() < keep { scale } else { 0.0 };
                    *o = v * *m;
                }
            } else {
                out.copy_from_slice(x);
                mask.fill(1.0);
            }
        }
        Ok(())
    }

    /// `dinputs = dvalues ⊙ mask` (the mask of the last forward).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `dvalues` does not have the last output's shape.
    pub fn backward(&mut self, dvalues: MatRef<'_>) -> Result<()> {
        crate::ops::check_same_shape("Dropout", "dvalues", &self.mask.view(), dvalues.rows(), dvalues.cols())?;
        crate::ops::check_rows_contiguous("Dropout", "dvalues", dvalues.rows(), dvalues.cols(), dvalues.col_stride())?;
        self.dinputs.resize(dvalues.rows(), dvalues.cols());
        for i in 0..dvalues.rows() {
            for ((d, &g), &m) in self.dinputs.row_mut(i).iter_mut().zip(dvalues.row(i)).zip(self.mask.row(i)) {
                *d = g * m;
            }
        }
        Ok(())
    }
}
