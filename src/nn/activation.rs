//! Activation layers for where an activation cannot be fused into a Dense layer's GEMM
//! (a ReLU straight after a Dense layer is fused by the model; see
//! [`Dense::with_relu`](crate::nn::Dense::with_relu)).

use crate::error::Result;
use crate::matrix::{MatRef, Matrix};
use crate::ops::activation as act;

/// Which activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^(−x))`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Row-wise softmax (for a softmax output under a loss other than the fused
    /// softmax cross-entropy).
    Softmax,
}

/// An activation layer with its buffers, NNFS-style: `forward` fills `output`,
/// `backward` fills `dinputs`.
#[derive(Clone, Debug)]
pub struct ActivationLayer {
    /// The function.
    pub kind: Activation,
    /// From the last forward.
    pub output: Matrix,
    /// From the last backward.
    pub dinputs: Matrix,
}

impl ActivationLayer {
    /// A layer applying `kind`.
    pub fn new(kind: Activation) -> Self {
        ActivationLayer { kind, output: Matrix::zeros(0, 0), dinputs: Matrix::zeros(0, 0) }
    }

    /// `output = f(inputs)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) only for non-contiguous
    /// input rows.
    pub fn forward(&mut self, inputs: MatRef<'_>) -> Result<()> {
        let mut out = std::mem::take(&mut self.output);
        let r = self.forward_into(inputs, &mut out);
        self.output = out;
        r
    }

    /// [`Self::forward`] into a buffer of the caller's (resized), leaving the layer as
    /// it is.
    pub(crate) fn forward_into(&self, inputs: MatRef<'_>, out: &mut Matrix) -> Result<()> {
        out.resize(inputs.rows(), inputs.cols());
        let out = out.view_mut();
        match self.kind {
            Activation::Relu => act::relu_forward(inputs, out),
            Activation::Sigmoid => act::sigmoid_forward(inputs, out),
            Activation::Tanh => act::tanh_forward(inputs, out),
            Activation::Softmax => act::softmax_forward(inputs, out),
        }
    }

    /// `dinputs = ∂L/∂inputs` from `dvalues = ∂L/∂output` and the saved output.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dvalues` does not
    /// have the shape of the last output.
    pub fn backward(&mut self, dvalues: MatRef<'_>) -> Result<()> {
        self.dinputs.resize(self.output.rows(), self.output.cols());
        let (out, din) = (self.output.view(), self.dinputs.view_mut());
        match self.kind {
            Activation::Relu => act::relu_backward(dvalues, out, din),
            Activation::Sigmoid => act::sigmoid_backward(dvalues, out, din),
            Activation::Tanh => act::tanh_backward(dvalues, out, din),
            Activation::Softmax => act::softmax_backward(dvalues, out, din),
        }
    }
}
