//! Building a [`Sequential`] layer by layer, fusing each Dense layer with the ReLU that
//! follows it.

use super::{Layer, Sequential};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nn::activation::{Activation, ActivationLayer};
use crate::nn::dense::{Dense, Regularization};
use crate::nn::dropout::Dropout;
use crate::nn::init::Init;
use crate::nn::loss::Loss;
use crate::nn::optim::Optimizer;
use crate::rng::Rng;
use crate::runtime::ModelPool;

enum Spec {
    Dense { neurons: usize, init: Option<Init>, regularization: Regularization },
    Activation(Activation),
    Dropout(f32),
}

/// Builds a [`Sequential`] layer by layer; see [`Sequential::builder`].
pub struct ModelBuilder {
    n_inputs: usize,
    seed: u64,
    specs: Vec<Spec>,
}

impl ModelBuilder {
    pub(super) fn new(n_inputs: usize) -> Self {
        ModelBuilder { n_inputs, seed: 0, specs: Vec::new() }
    }

    /// A Dense layer of `neurons`; He init when a ReLU follows it, else Xavier.
    pub fn dense(self, neurons: usize) -> Self {
        self.push(Spec::Dense { neurons, init: None, regularization: Regularization::default() })
    }
    /// A Dense layer with an explicit init and L1/L2 penalties.
    pub fn dense_with(self, neurons: usize, init: Init, regularization: Regularization) -> Self {
        self.push(Spec::Dense { neurons, init: Some(init), regularization })
    }
    /// A ReLU (fused into the Dense layer before it, when there is one).
    pub fn relu(self) -> Self {
        self.push(Spec::Activation(Activation::Relu))
    }
    /// A sigmoid.
    pub fn sigmoid(self) -> Self {
        self.push(Spec::Activation(Activation::Sigmoid))
    }
    /// A tanh.
    pub fn tanh(self) -> Self {
        self.push(Spec::Activation(Activation::Tanh))
    }
    /// A softmax (not needed with [`Loss::SoftmaxCrossEntropy`], which includes it).
    pub fn softmax(self) -> Self {
        self.push(Spec::Activation(Activation::Softmax))
    }
    /// Dropout of a fraction `rate` in training.
    pub fn dropout(self, rate: f32) -> Self {
        self.push(Spec::Dropout(rate))
    }
    /// The seed of the weights and dropout masks (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    fn push(mut self, s: Spec) -> Self {
        self.specs.push(s);
        self
    }

    /// The model, with its buffers ready for training with `optimizer` on `loss`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty model, a layer of 0 neurons, a bad
    /// dropout rate or optimizer hyperparameter, or a softmax before
    /// [`Loss::SoftmaxCrossEntropy`] (which applies its own).
    pub fn build(self, loss: Loss, optimizer: Optimizer) -> Result<Sequential> {
        optimizer.validate()?;
        if self.n_inputs == 0 {
            return Err(Error::InvalidArgument("a model needs at least one input".into()));
        }
        if !self.specs.iter().any(|s| matches!(s, Spec::Dense { .. })) {
            return Err(Error::InvalidArgument("a model needs at least one Dense layer".into()));
        }
        if loss == Loss::SoftmaxCrossEntropy && matches!(self.specs.last(), Some(Spec::Activation(Activation::Softmax)))
        {
            return Err(Error::InvalidArgument(
                "Loss::SoftmaxCrossEntropy applies the softmax itself: remove the final softmax layer".into(),
            ));
        }
        let mut rng = Rng::new(self.seed);
        let mut layers: Vec<Layer> = Vec::new();
        let mut width = self.n_inputs;
        let mut specs = self.specs.iter().peekable();
        while let Some(spec) = specs.next() {
            match *spec {
                Spec::Dense { neurons, init, regularization } => {
                    if neurons == 0 {
                        return Err(Error::InvalidArgument("a Dense layer needs at least one neuron".into()));
                    }
                    let relu_next = matches!(specs.peek(), Some(Spec::Activation(Activation::Relu)));
                    let init = init.unwrap_or(if relu_next { Init::He } else { Init::Xavier });
                    let mut d = Dense::new(width, neurons, init, &mut rng).with_regularization(regularization);
                    if relu_next {
                        specs.next();
                        d = d.with_relu();
                    }
                    d.prepare_optimizer(&optimizer);
                    width = neurons;
                    layers.push(Layer::Dense(d));
                }
                Spec::Activation(kind) => layers.push(Layer::Activation(ActivationLayer::new(kind))),
                Spec::Dropout(rate) => layers.push(Layer::Dropout(Dropout::new(rate, rng.next_u64())?)),
            }
        }
        let mut model = Sequential {
            layers,
            loss,
            optimizer,
            iterations: 0,
            epochs: 0,
            n_inputs: self.n_inputs,
            n_outputs: width,
            adaptive_threads: true,
            fused_update: true,
            schedule: Default::default(),
            pool: ModelPool::new(),
            dloss: Matrix::zeros(0, width),
            batch_x: Matrix::zeros(0, self.n_inputs),
            batch_classes: Vec::new(),
            batch_values: Matrix::zeros(0, width),
            batch_map: Default::default(),
            batch_next: (Matrix::zeros(0, self.n_inputs), Default::default()),
            inference: Default::default(),
        };
        model.measure_weight_maxima();
        Ok(model)
    }
}
