//! The layer API of "Neural Networks from Scratch", at kernel speed: [`Dense`]
//! (with NNFS's `weights`, `biases`, `dweights`, `dbiases`, `dinputs`, `forward`,
//! `backward`), activation layers, [`Dropout`], losses, [`Optimizer`]s, and a
//! [`Sequential`] model that plans its buffers once and trains without allocating.

mod activation;
mod dense;
mod dropout;
mod init;
mod inputs;
mod io;
mod loss;
mod model;
mod optim;
mod saved;
mod schedule;

pub use crate::data::convert::{bytes_to_f32, bytes_to_f32_portable};
pub use activation::{Activation, ActivationLayer};
pub use dense::{Dense, Dinputs, Regularization};
pub use dropout::Dropout;
pub use init::{init_weights, Init};
pub use inputs::{Inputs, ScaledBytes};
pub use loss::{BatchLoss, Loss, Targets};
pub use model::{EarlyStopping, EpochReport, Evaluation, FitObserver, FitOptions, Layer, ModelBuilder, Sequential};
pub use optim::Optimizer;
pub use schedule::Schedule;
