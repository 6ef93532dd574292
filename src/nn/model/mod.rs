//! The sequential model: layers, a loss and an optimizer (see [`Sequential`]).

use crate::error::{Error, Result};
use crate::governor::{Governor, Mode};
use crate::matrix::{MatMut, MatRef, Matrix};
use crate::nn::activation::{Activation, ActivationLayer};
use crate::nn::dense::{Dense, Dinputs, Regularization};
use crate::nn::dropout::Dropout;
use crate::nn::init::Init;
use crate::nn::inputs::Inputs;
use crate::nn::loss::{BatchLoss, Loss, Targets};
use crate::nn::optim::Optimizer;
use crate::ops::reduce::par_all_finite;
use crate::rng::Rng;
use std::sync::Arc;
use std::time::Instant;

/// One layer of a [`Sequential`] model.
// A model holds a handful of layers, so the size gap between variants costs nothing
// worth a Box (which would put a pointer chase into every match).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Layer {
    /// A Dense layer (with a fused ReLU when one followed it).
    Dense(Dense),
    /// A standalone activation.
    Activation(ActivationLayer),
    /// Dropout.
    Dropout(Dropout),
}

impl Layer {
    /// The output of the last forward pass.
    pub fn output(&self) -> &Matrix {
        match self {
            Layer::Dense(d) => &d.output,
            Layer::Activation(a) => &a.output,
            Layer::Dropout(d) => &d.output,
        }
    }

    /// The input gradient of the last backward pass.
    pub fn dinputs(&self) -> &Matrix {
        match self {
            Layer::Dense(d) => &d.dinputs,
            Layer::Activation(a) => &a.dinputs,
            Layer::Dropout(d) => &d.dinputs,
        }
    }

    fn describe(&self) -> String {
        match self {
            Layer::Dense(d) => d.describe(),
            Layer::Activation(a) => format!("{:?}", a.kind),
            Layer::Dropout(d) => format!("Dropout {}", d.rate()),
        }
    }
}

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
        Ok(Sequential {
            layers,
            loss,
            optimizer,
            iterations: 0,
            n_inputs: self.n_inputs,
            n_outputs: width,
            threads: None,
            pin_threads: true,
            adaptive_threads: true,
            pool: None,
            dloss: Matrix::zeros(0, width),
            batch_x: Matrix::zeros(0, self.n_inputs),
            batch_classes: Vec::new(),
            batch_values: Matrix::zeros(0, width),
        })
    }
}

/// Loss and accuracy over a data set (a report: `#[non_exhaustive]`, so that fields
/// can be added).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Evaluation {
    /// Mean data loss.
    pub loss: f32,
    /// Fraction correct, for classification losses.
    pub accuracy: Option<f32>,
}

/// What one epoch of [`Sequential::fit`] did (a report: `#[non_exhaustive]`, so that
/// fields can be added).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training data loss over the epoch's batches (weighted by batch size).
    pub loss: f32,
    /// Regularization penalty at the end of the epoch.
    pub regularization_loss: f32,
    /// Training accuracy over the epoch, for classification losses.
    pub accuracy: Option<f32>,
    /// Loss and accuracy on the validation data, when given.
    pub validation: Option<Evaluation>,
    /// Seconds spent training (shuffle, forward, backward, update); evaluation excluded.
    pub train_seconds: f64,
    /// Seconds spent on validation.
    pub eval_seconds: f64,
    /// Optimizer steps so far.
    pub iterations: u64,
    /// Learning rate at the end of the epoch (after decay).
    pub learning_rate: f32,
}

/// Hooks into [`Sequential::fit_observed`]: called on the training thread after every
/// step and every epoch. Both default to doing nothing.
pub trait FitObserver: Send {
    /// After step `step` (1-based) of `steps` in epoch `epoch` (1-based).
    fn on_step(&mut self, _epoch: usize, _step: usize, _steps: usize) {}
    /// After each epoch, with its report.
    fn on_epoch(&mut self, _report: &EpochReport) {}
}

/// Adapts an epoch callback to a [`FitObserver`].
struct OnEpoch<F>(F);

impl<F: FnMut(&EpochReport) + Send> FitObserver for OnEpoch<F> {
    fn on_epoch(&mut self, report: &EpochReport) {
        (self.0)(report)
    }
}

/// How [`Sequential::fit`] runs. Start from `default()` (1 epoch, batch 128, shuffled
/// with seed 0, no validation) and change what you need with the `with_*` setters; the
/// struct is `#[non_exhaustive]`, so a new option is not a breaking change.
///
/// ```
/// use fusegrad::nn::FitOptions;
/// let opts = FitOptions::default().with_epochs(10).with_batch_size(64).with_seed(42);
/// assert_eq!((opts.epochs, opts.batch_size, opts.shuffle), (10, 64, true));
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FitOptions<'a> {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Shuffle the samples every epoch.
    pub shuffle: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Data to evaluate after each epoch.
    pub validation: Option<(MatRef<'a>, Targets<'a>)>,
}

impl Default for FitOptions<'_> {
    fn default() -> Self {
        FitOptions { epochs: 1, batch_size: 128, shuffle: true, seed: 0, validation: None }
    }
}

impl<'a> FitOptions<'a> {
    /// `epochs` passes over the training data.
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }
    /// `batch_size` samples per step.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Shuffles the samples every epoch, or keeps their order.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }
    /// The seed of the shuffling.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Evaluates `inputs` against `targets` after each epoch.
    pub fn with_validation(mut self, inputs: MatRef<'a>, targets: Targets<'a>) -> Self {
        self.validation = Some((inputs, targets));
        self
    }
}

/// A sequential model: layers, a loss and an optimizer, trained with buffers that are
/// planned once.
///
/// Building the model fuses every Dense layer followed by a ReLU into one layer
/// (bias and ReLU in the forward GEMM's epilogue; the ReLU mask applied by the backward
/// GEMM of the layer above). A training step is then, for 784-128-64-10:
///
/// ```text
/// forward   h1 = relu(x·W1 + b1)    h2 = relu(h1·W2 + b2)    z3 = h2·W3 + b3      3 GEMMs
/// loss      loss, dz3 = softmax_ce(z3, labels)                                     1 pass
/// backward  dW3 = h2ᵀ·dz3 (+ db3)   dz2 = (dz3·W3ᵀ) ⊙ 1[h2>0]                     5 GEMMs
///           dW2 = h1ᵀ·dz2 (+ db2)   dz1 = (dz2·W2ᵀ) ⊙ 1[h1>0]    dW1 = xᵀ·dz1 (+ db1)
/// check     every gradient finite (else an error naming step, layer and tensor)
/// update    one pass per parameter buffer
/// ```
///
/// Every buffer (activations, gradients, optimizer state, GEMM packing buffers) is
/// sized by the first step and reused: after it, a training step allocates nothing.
#[derive(Clone, Debug)]
pub struct Sequential {
    layers: Vec<Layer>,
    loss: Loss,
    optimizer: Optimizer,
    iterations: u64,
    n_inputs: usize,
    n_outputs: usize,
    threads: Option<usize>,
    pin_threads: bool,
    adaptive_threads: bool,
    /// The pool `fit`, `evaluate`, `predict` and `train_step` run in, built on first
    /// use and kept, so that a call per batch does not start threads each time. Clones
    /// of a model share it.
    pool: Option<Arc<rayon::ThreadPool>>,
    /// ∂L/∂(last output), batch × n_outputs.
    dloss: Matrix,
    batch_x: Matrix,
    batch_classes: Vec<usize>,
    batch_values: Matrix,
}

impl Sequential {
    /// Starts a model over `n_inputs` features.
    pub fn builder(n_inputs: usize) -> ModelBuilder {
        ModelBuilder { n_inputs, seed: 0, specs: Vec::new() }
    }

    /// The layers, after fusion (a Dense + ReLU pair is one layer).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The layers, mutable (to inspect or set parameters).
    pub fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// The loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Optimizer steps taken so far (NNFS's `iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Input width.
    pub fn n_inputs(&self) -> usize {
        self.n_inputs
    }

    /// Output width.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// Threads for training and inference: `Some(n)` runs `fit`, `evaluate` and
    /// `predict` inside a pool of `n` threads (1 = serial); `None` (default) uses the
    /// rayon pool the caller is in, or one of rayon's default size.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `Some(0)`.
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        if threads == Some(0) {
            return Err(Error::InvalidArgument("threads must be at least 1".into()));
        }
        self.threads = threads;
        self.pool = None;
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.set_threads(threads);
            }
        }
        Ok(())
    }

    /// Whether the pool that `fit`, `evaluate` and `predict` start pins its workers to
    /// distinct cores (default: yes, when there are at least as many cores as workers).
    /// Measured on 2-vCPU VMs: unpinned, Linux sometimes leaves both busy workers on
    /// one CPU for a whole run, and a 0.20 s MNIST epoch takes 0.39 s.
    ///
    /// Needs the default feature `pin-threads`; without it the workers are never pinned.
    pub fn set_pin_threads(&mut self, pin: bool) {
        if pin != self.pin_threads {
            self.pool = None;
        }
        self.pin_threads = pin;
    }

    /// Whether `fit` may run steps on one thread when that is faster (default: yes).
    ///
    /// On a busy machine a second thread can cost more than it gives: when another
    /// process shares a core with one of the workers, every step waits for that
    /// worker's next time slice (an MNIST epoch measured 10–16× slower on 2 threads
    /// than on 1). With this on, `fit` times its steps, tries the pool split, the whole
    /// step on this thread and the whole step on another worker for a few steps each,
    /// keeps the fastest, and tries again every ~1 000 steps or as soon as the kept
    /// way gets 1.5× slower. On a quiet machine the probing costs about 1–2% of an
    /// epoch. Results are bit-identical whatever it chooses. Off, `fit` always splits
    /// every step over the pool.
    pub fn set_adaptive_threads(&mut self, adaptive: bool) {
        self.adaptive_threads = adaptive;
    }

    /// Runs `f` inside the model's pool, so that every GEMM is called from a pool
    /// worker (a call from outside pays for waking the workers each time). Already
    /// inside that pool, or inside a pool of the configured size (any size when none is
    /// configured), `f` runs right here: a second pool would only compete with the
    /// caller's for the same cores. The pool is built on the first call and kept: a
    /// call per batch costs one hand-over to a worker, not a new set of threads.
    fn in_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> Result<R> {
        if self.threads == Some(1) {
            // Nothing to share: run on the caller's thread, no pool at all.
            return Ok(crate::parallel::serial(|| f(self)));
        }
        let in_a_pool = rayon::current_thread_index().is_some();
        if in_a_pool && self.threads.is_none_or(|n| n == rayon::current_num_threads()) {
            return Ok(f(self));
        }
        if self.pool.as_ref().is_some_and(|p| p.current_thread_index().is_some()) {
            return Ok(f(self));
        }
        let pool = match &self.pool {
            Some(pool) => Arc::clone(pool),
            None => {
                let n = self.threads.unwrap_or_else(rayon::current_num_threads);
                let builder = rayon::ThreadPoolBuilder::new().num_threads(n);
                #[cfg(feature = "pin-threads")]
                let builder = self.pin(builder, n);
                let pool =
                    builder.build().map_err(|e| Error::InvalidArgument(format!("could not start {n} threads: {e}")))?;
                let pool = Arc::new(pool);
                self.pool = Some(Arc::clone(&pool));
                pool
            }
        };
        Ok(pool.install(|| f(self)))
    }

    /// Whether a pass over `rows` samples is too small to share: every one of its GEMMs
    /// would run on one thread anyway (below the GEMM's threading threshold), so
    /// handing it to the pool would only add a thread hand-over (≈ 10–20 µs, more than
    /// a one-sample `predict`). Such passes run on the caller's thread.
    fn runs_serially(&self, rows: usize) -> bool {
        let macs_per_sample: usize =
            self.layers.iter().map(|l| if let Layer::Dense(d) = l { d.weights.as_slice().len() } else { 0 }).sum();
        rows.saturating_mul(macs_per_sample) < crate::gemm::MIN_WORK_PER_THREAD
    }

    /// `builder` with a start handler that pins worker `i` to core `i`, when pinning is
    /// on and there are at least `n` cores.
    #[cfg(feature = "pin-threads")]
    fn pin<S>(&self, builder: rayon::ThreadPoolBuilder<S>, n: usize) -> rayon::ThreadPoolBuilder<S> {
        let cores = if self.pin_threads && n > 1 { core_affinity::get_core_ids() } else { None };
        match cores.filter(|c| c.len() >= n) {
            Some(cores) => builder.start_handler(move |i| {
                // Best effort: a refused pin leaves the worker where the OS put it.
                core_affinity::set_for_current(cores[i]);
            }),
            None => builder,
        }
    }

    fn check_inputs(&self, x: &MatRef<'_>, targets: Option<&Targets<'_>>) -> Result<()> {
        self.check_shape(x.rows(), x.cols(), targets)
    }

    fn check_shape(&self, rows: usize, cols: usize, targets: Option<&Targets<'_>>) -> Result<()> {
        if cols != self.n_inputs {
            return Err(Error::ShapeMismatch {
                op: "Sequential",
                expected: format!("inputs with {} columns (samples × features)", self.n_inputs),
                got: format!("{rows}×{cols}"),
            });
        }
        if let Some(t) = targets {
            if t.len() != rows {
                return Err(Error::ShapeMismatch {
                    op: "Sequential",
                    expected: format!("one target per input row ({rows})"),
                    got: format!("{} targets", t.len()),
                });
            }
            self.loss.check_targets(t, self.n_outputs)?;
        }
        Ok(())
    }

    /// Forward through every layer; `training` switches dropout on.
    fn forward(&mut self, x: MatRef<'_>, training: bool) -> Result<()> {
        for l in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(l);
            let input = if l == 0 { x } else { below[l - 1].output().view() };
            match &mut rest[0] {
                Layer::Dense(d) => d.forward(input)?,
                Layer::Activation(a) => a.forward(input)?,
                Layer::Dropout(d) => d.forward(input, training)?,
            }
        }
        Ok(())
    }

    /// Backward from `self.dloss` through every layer.
    fn backward(&mut self, x: MatRef<'_>) -> Result<()> {
        let n = self.layers.len();
        for l in (0..n).rev() {
            let (below, rest) = self.layers.split_at_mut(l);
            let (cur, above) = rest.split_at_mut(1);
            let input = if l == 0 { x } else { below[l - 1].output().view() };
            // ∂L/∂(this layer's output), or already ∂L/∂z when the Dense layer above
            // applied this layer's ReLU mask in its own dinputs GEMM.
            let grad = if l + 1 == n { self.dloss.view() } else { above[0].dinputs().view() };
            let masked_above = matches!(above.first(), Some(Layer::Dense(_)));
            match &mut cur[0] {
                Layer::Dense(d) => {
                    let dinputs = match below.last() {
                        None => Dinputs::Skip,
                        Some(Layer::Dense(b)) if b.has_relu() => Dinputs::ComputeReluMasked(b.output.view()),
                        Some(_) => Dinputs::Compute,
                    };
                    if d.has_relu() && !masked_above {
                        d.backward_with(input, grad, dinputs)?; // masks by its own output first
                    } else {
                        d.backward_dz(input, grad, dinputs)?;
                    }
                }
                Layer::Activation(a) => a.backward(grad)?,
                Layer::Dropout(d) => d.backward(grad)?,
            }
        }
        Ok(())
    }

    /// One training step on a batch: forward, loss, backward, finiteness check,
    /// update. Returns the batch's data loss and correct count.
    ///
    /// The model's first step also sizes every pool thread's GEMM workspace
    /// ([`crate::gemm::reserve_workspace`]), so later steps in the same pool allocate
    /// nothing.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] / [`Error::LabelOutOfRange`] /
    /// [`Error::InvalidArgument`] for bad inputs or targets, before any work;
    /// [`Error::NonFinite`] when the loss or a gradient is NaN or infinite, before the
    /// update, so the parameters and optimizer state are unchanged.
    pub fn train_step(&mut self, x: MatRef<'_>, targets: Targets<'_>) -> Result<BatchLoss> {
        self.check_inputs(&x, Some(&targets))?;
        if x.rows() == 0 {
            return Err(Error::InvalidArgument("a training step needs at least one sample".into()));
        }
        self.in_pool(move |m| {
            if m.iterations == 0 {
                crate::gemm::reserve_workspace(); // `fit` reserves for its own loop
            }
            m.step_checked(x, targets)
        })?
    }

    /// Forward, loss and backward on a batch, without updating: afterwards every
    /// Dense layer's `dweights` and `dbiases` hold the batch's gradients (dropout in
    /// training mode). Returns the batch's data loss and correct count.
    ///
    /// # Errors
    /// As [`Self::train_step`], except that no finiteness check is made.
    pub fn forward_backward(&mut self, x: MatRef<'_>, targets: Targets<'_>) -> Result<BatchLoss> {
        self.check_inputs(&x, Some(&targets))?;
        if x.rows() == 0 {
            return Err(Error::InvalidArgument("a training step needs at least one sample".into()));
        }
        self.in_pool(move |m| {
            m.forward(x, true)?;
            m.dloss.resize(x.rows(), m.n_outputs);
            let last = m.layers.last().expect("a built model has layers").output().view();
            let batch = m.loss.forward_backward(last, targets, Some(m.dloss.view_mut()))?;
            m.backward(x)?;
            Ok(batch)
        })?
    }

    /// [`Self::train_step`] after the checks.
    fn step_checked(&mut self, x: MatRef<'_>, targets: Targets<'_>) -> Result<BatchLoss> {
        let step = self.iterations;
        self.forward(x, true)?;
        self.dloss.resize(x.rows(), self.n_outputs);
        let last = self.layers.last().expect("a built model has layers").output().view();
        let batch = self.loss.forward_backward(last, targets, Some(self.dloss.view_mut()))?;
        if !batch.loss.is_finite() {
            // Name the inputs when they are the cause (checked only now, so a good
            // step pays nothing for it).
            if let Some(row) = first_nonfinite_row(x) {
                return Err(Error::NonFinite {
                    step,
                    layer: format!("the batch (row {row})"),
                    tensor: "inputs".into(),
                });
            }
            return Err(Error::NonFinite { step, layer: "the model output".into(), tensor: "loss".into() });
        }
        self.backward(x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Layer::Dense(d) = layer {
                for (tensor, data) in [("dweights", d.dweights.as_slice()), ("dbiases", d.dbiases.as_slice())] {
                    if !par_all_finite(data) {
                        return Err(Error::NonFinite {
                            step,
                            layer: format!("layer {i} ({})", layer.describe()),
                            tensor: tensor.into(),
                        });
                    }
                }
            }
        }
        let optimizer = self.optimizer;
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.update_params(&optimizer, self.iterations)?;
            }
        }
        self.iterations += 1;
        Ok(batch)
    }

    /// Trains for `options.epochs` epochs; see [`Self::fit_with`].
    ///
    /// # Errors
    /// As [`Self::fit_with`].
    pub fn fit(&mut self, x: impl Inputs, targets: Targets<'_>, options: &FitOptions<'_>) -> Result<Vec<EpochReport>> {
        self.fit_with(x, targets, options, |_| {})
    }

    /// Trains for `options.epochs` epochs over mini-batches, calling `on_epoch` after
    /// each epoch with its report (and returning all reports).
    ///
    /// # Errors
    /// Bad shapes, targets or options are reported before any training; a NaN or
    /// infinity stops training with [`Error::NonFinite`] naming the step, layer and
    /// tensor (the parameters keep the values of the last good step).
    pub fn fit_with(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        on_epoch: impl FnMut(&EpochReport) + Send,
    ) -> Result<Vec<EpochReport>> {
        self.fit_observed(x, targets, options, &mut OnEpoch(on_epoch))
    }

    /// [`Self::fit_with`] with a [`FitObserver`] that also hears about every step
    /// (for a progress bar).
    ///
    /// # Errors
    /// As [`Self::fit_with`].
    pub fn fit_observed(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        observer: &mut dyn FitObserver,
    ) -> Result<Vec<EpochReport>> {
        self.check_shape(x.rows(), x.cols(), Some(&targets))?;
        if options.batch_size == 0 {
            return Err(Error::InvalidArgument("batch_size must be at least 1".into()));
        }
        if x.rows() == 0 {
            return Err(Error::InvalidArgument("fit needs at least one sample".into()));
        }
        if let Some((vx, vt)) = &options.validation {
            self.check_inputs(vx, Some(vt))?;
        }
        let options = *options;
        self.in_pool(move |m| m.fit_loop(x, targets, &options, observer))?
    }

    fn fit_loop(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        observer: &mut dyn FitObserver,
    ) -> Result<Vec<EpochReport>> {
        let n = x.rows();
        let batch = options.batch_size.min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(options.seed);
        let mut reports = Vec::with_capacity(options.epochs);
        // The batch buffers leave `self` for the epoch, so a step can borrow both.
        let mut bx = std::mem::take(&mut self.batch_x);
        let mut bc = std::mem::take(&mut self.batch_classes);
        let mut bv = std::mem::take(&mut self.batch_values);
        // Every worker's GEMM buffers now, not on its first task mid-epoch.
        crate::gemm::reserve_workspace();
        // The other workers spin between GEMMs instead of sleeping: a wake-up costs
        // more than a small product (see `parallel::with_hot_workers`). The governor
        // times the steps and, where another process makes a worker slow, runs them on
        // one thread instead (see `governor`); results do not depend on its choice.
        let mut governor = match (self.adaptive_threads, rayon::current_num_threads()) {
            (_, 1) => Governor::fixed(Mode::SerialHere),
            (true, threads) => Governor::new(threads),
            (false, _) => Governor::fixed(Mode::Parallel),
        };
        let result = crate::parallel::with_workers(|helpers| {
            for epoch in 1..=options.epochs {
                let start = Instant::now();
                if options.shuffle {
                    rng.shuffle(&mut order);
                }
                let mut sums = StepSums::default();
                let steps = n.div_ceil(batch);
                let mut next_step = 0;
                while next_step < steps {
                    // A run of steps in one mode, until the governor changes its mind or
                    // the epoch ends. Handed to another worker, the run goes as one job:
                    // waking this thread after every step would cost a time slice of the
                    // busy core each time.
                    let mode = governor.mode();
                    helpers.set_hot(mode != Mode::SerialHere);
                    let first = next_step;
                    let mut run = StepRun {
                        x,
                        targets,
                        order: &order,
                        batch,
                        steps,
                        mode,
                        next_step: &mut next_step,
                        governor: &mut governor,
                        sums: &mut sums,
                        bufs: (&mut bx, &mut bc, &mut bv),
                    };
                    let result = match mode {
                        Mode::Parallel => run.run(self),
                        Mode::SerialHere => crate::parallel::serial(|| run.run(self)),
                        Mode::SerialThere => {
                            crate::parallel::on_another_worker(|| crate::parallel::serial(|| run.run(self)))
                        }
                    };
                    for step in first..next_step {
                        observer.on_step(epoch, step + 1, steps);
                    }
                    result?;
                }
                let StepSums { loss_sum, correct, total } = sums;
                let train_seconds = start.elapsed().as_secs_f64();
                let eval_start = Instant::now();
                let validation = match options.validation {
                    Some((vx, vt)) => Some(self.evaluate_in_pool(vx, vt, batch)?),
                    None => None,
                };
                let report = EpochReport {
                    epoch,
                    loss: (loss_sum / n as f64) as f32,
                    regularization_loss: self.regularization_loss(),
                    accuracy: self.loss.is_classification().then(|| correct as f32 / total.max(1) as f32),
                    validation,
                    train_seconds,
                    eval_seconds: eval_start.elapsed().as_secs_f64(),
                    iterations: self.iterations,
                    learning_rate: self.optimizer.current_learning_rate(self.iterations),
                };
                observer.on_epoch(&report);
                reports.push(report);
            }
            Ok(reports)
        });
        (self.batch_x, self.batch_classes, self.batch_values) = (bx, bc, bv);
        result
    }

    /// Sum of every layer's regularization penalty.
    pub fn regularization_loss(&self) -> f32 {
        self.layers.iter().map(|l| if let Layer::Dense(d) = l { d.regularization_loss() } else { 0.0 }).sum()
    }

    /// Mean loss and accuracy over `x` and `targets`, in batches of `batch_size`,
    /// with dropout off.
    ///
    /// # Errors
    /// Shape and target errors, before any work.
    pub fn evaluate(&mut self, x: MatRef<'_>, targets: Targets<'_>, batch_size: usize) -> Result<Evaluation> {
        self.check_inputs(&x, Some(&targets))?;
        if x.rows() == 0 || batch_size == 0 {
            return Err(Error::InvalidArgument("evaluate needs at least one sample and a batch size ≥ 1".into()));
        }
        if self.runs_serially(x.rows()) {
            return self.evaluate_in_pool(x, targets, batch_size);
        }
        self.in_pool(move |m| m.evaluate_in_pool(x, targets, batch_size))?
    }

    fn evaluate_in_pool(&mut self, x: MatRef<'_>, targets: Targets<'_>, batch_size: usize) -> Result<Evaluation> {
        let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
        let n = x.rows();
        for start in (0..n).step_by(batch_size) {
            let rows = batch_size.min(n - start);
            let xb = x.submatrix(start, 0, rows, x.cols())?;
            let tb = match targets {
                Targets::Classes(c) => Targets::Classes(&c[start..start + rows]),
                Targets::Values(v) => Targets::Values(v.submatrix(start, 0, rows, v.cols())?),
            };
            self.forward(xb, false)?;
            let out = self.layers.last().expect("a built model has layers").output().view();
            let b = self.loss.forward_backward(out, tb, None)?;
            loss_sum += b.loss as f64 * rows as f64;
            (correct, total) = (correct + b.correct, total + b.total);
        }
        Ok(Evaluation {
            loss: (loss_sum / n as f64) as f32,
            accuracy: self.loss.is_classification().then(|| correct as f32 / total.max(1) as f32),
        })
    }

    /// The model's outputs for `x` (samples × n_outputs), with dropout off; for
    /// [`Loss::SoftmaxCrossEntropy`], the class probabilities.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `x` has the wrong width.
    pub fn predict(&mut self, x: MatRef<'_>) -> Result<Matrix> {
        self.check_inputs(&x, None)?;
        let mut out = Matrix::zeros(x.rows(), self.n_outputs);
        self.predict_into(x, out.view_mut())?;
        Ok(out)
    }

    /// [`Self::predict`] into a buffer of the caller's (`x.rows() × n_outputs`), so that
    /// a loop of small predictions allocates nothing once the model is warm. A pass too
    /// small to share between threads runs on the caller's thread.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `x` has the wrong width or `out` the wrong shape.
    pub fn predict_into(&mut self, x: MatRef<'_>, out: MatMut<'_>) -> Result<()> {
        self.check_inputs(&x, None)?;
        if out.rows() != x.rows() || out.cols() != self.n_outputs {
            return Err(Error::ShapeMismatch {
                op: "Sequential::predict_into",
                expected: format!("an output of {}×{} (samples × outputs)", x.rows(), self.n_outputs),
                got: format!("{}×{}", out.rows(), out.cols()),
            });
        }
        if out.col_stride() != 1 && out.cols() > 1 {
            return Err(Error::InvalidArgument(format!(
                "predict_into needs an output with contiguous rows (column stride 1), got column stride {}",
                out.col_stride()
            )));
        }
        if self.runs_serially(x.rows()) {
            return self.predict_checked(x, out);
        }
        self.in_pool(move |m| m.predict_checked(x, out))?
    }

    fn predict_checked(&mut self, x: MatRef<'_>, mut out: MatMut<'_>) -> Result<()> {
        let batch = 256;
        for start in (0..x.rows()).step_by(batch) {
            let rows = batch.min(x.rows() - start);
            self.forward(x.submatrix(start, 0, rows, x.cols())?, false)?;
            let last = self.layers.last().expect("a built model has layers").output();
            let dst = out.rb_mut().submatrix(start, 0, rows, self.n_outputs)?;
            if self.loss == Loss::SoftmaxCrossEntropy {
                crate::ops::activation::softmax_forward(last.view(), dst)?;
            } else {
                let mut dst = dst;
                for i in 0..rows {
                    dst.row_mut(i).copy_from_slice(last.row(i));
                }
            }
        }
        Ok(())
    }
}

/// The first row of `x` holding NaN or infinity.
fn first_nonfinite_row(x: MatRef<'_>) -> Option<usize> {
    (0..x.rows()).find(|&i| (0..x.cols()).any(|j| !x.get(i, j).is_finite()))
}

/// Running sums of an epoch's steps.
#[derive(Default)]
struct StepSums {
    loss_sum: f64,
    correct: usize,
    total: usize,
}

/// Consecutive training steps of one epoch run in one [`Mode`]: everything a run
/// needs, so that it can be handed to another worker as one job.
struct StepRun<'a, 'b, I: Inputs> {
    x: I,
    targets: Targets<'a>,
    order: &'b [usize],
    batch: usize,
    steps: usize,
    mode: Mode,
    next_step: &'b mut usize,
    governor: &'b mut Governor,
    sums: &'b mut StepSums,
    bufs: (&'b mut Matrix, &'b mut Vec<usize>, &'b mut Matrix),
}

impl<I: Inputs> StepRun<'_, '_, I> {
    /// Runs steps from `next_step` while the governor keeps this run's mode.
    fn run(&mut self, model: &mut Sequential) -> Result<()> {
        let n = self.order.len();
        while *self.next_step < self.steps && self.governor.mode() == self.mode {
            let step = *self.next_step;
            let chunk = &self.order[step * self.batch..((step + 1) * self.batch).min(n)];
            let start = Instant::now();
            let (bx, bc, bv) = (&mut *self.bufs.0, &mut *self.bufs.1, &mut *self.bufs.2);
            let t = gather(self.x, self.targets, chunk, bx, bc, bv);
            // The next batch's rows load while this step computes.
            if let Some(next) = self.order.get((step + 1) * self.batch..((step + 2) * self.batch).min(n)) {
                self.x.prefetch(next);
            }
            let b = model.step_checked(bx.view(), t).map_err(|e| match e {
                // In `fit` the sample is known: name it.
                Error::NonFinite { step, tensor, .. } if tensor == "inputs" => {
                    let row = first_nonfinite_row(bx.view()).unwrap_or(0);
                    let sample = chunk.get(row).copied().unwrap_or(0);
                    Error::NonFinite {
                        step,
                        layer: format!("sample {sample} of the data (row {row} of the batch)"),
                        tensor,
                    }
                }
                e => e,
            })?;
            self.governor.record(start.elapsed().as_secs_f64() / chunk.len() as f64);
            self.sums.loss_sum += b.loss as f64 * chunk.len() as f64;
            (self.sums.correct, self.sums.total) = (self.sums.correct + b.correct, self.sums.total + b.total);
            *self.next_step += 1;
        }
        Ok(())
    }
}

/// Copies the samples `rows` of `x` (and their targets) into the batch buffers.
fn gather<'b>(
    x: impl Inputs,
    targets: Targets<'_>,
    rows: &[usize],
    bx: &mut Matrix,
    bc: &'b mut Vec<usize>,
    bv: &'b mut Matrix,
) -> Targets<'b> {
    bx.resize(rows.len(), x.cols());
    // Rows in fixed groups, spread over the pool: the gather is latency-bound on
    // random rows, and the other workers are idle at this point of the step.
    const GROUP: usize = 32;
    let cols = x.cols().max(1);
    if crate::parallel::threads() > 1 && rows.len() > GROUP {
        use rayon::prelude::*;
        bx.as_mut_slice()
            .par_chunks_mut(GROUP * cols)
            .zip(rows.par_chunks(GROUP))
            .for_each(|(out, group)| x.gather(group, out));
    } else {
        x.gather(rows, bx.as_mut_slice());
    }
    match targets {
        Targets::Classes(c) => {
            bc.clear();
            bc.extend(rows.iter().map(|&r| c[r]));
            Targets::Classes(bc)
        }
        Targets::Values(v) => {
            bv.resize(rows.len(), v.cols());
            for (dst, &r) in rows.iter().enumerate() {
                bv.row_mut(dst).copy_from_slice(v.row(r));
            }
            Targets::Values(bv.view())
        }
    }
}
