//! The sequential model: layers, a loss and an optimizer (see [`Sequential`]): the
//! layer list and one training step here, the builder (with its Dense + ReLU fusion)
//! in `builder`, the epoch loop of `fit` in `fit`.

mod builder;
mod fit;
mod guard;

pub use builder::ModelBuilder;
pub use fit::{EarlyStopping, EpochReport, FitObserver, FitOptions};

use crate::error::{Error, Result};
use crate::gemm::nonzero_map::{NonzeroMap, NonzeroMapRef};
use crate::gemm::Isa;
use crate::matrix::{MatMut, MatRef, Matrix};
use crate::nn::activation::ActivationLayer;
use crate::nn::dense::{Dense, Dinputs};
use crate::nn::dropout::Dropout;
use crate::nn::loss::{BatchLoss, Loss, Targets};
use crate::nn::optim::Optimizer;
use crate::ops::reduce::{all_finite_on, max_abs_bits_of};
use crate::runtime::ModelPool;

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

    pub(crate) fn describe(&self) -> String {
        match self {
            Layer::Dense(d) => d.describe(),
            Layer::Activation(a) => format!("{:?}", a.kind),
            Layer::Dropout(d) => format!("Dropout {}", d.rate()),
        }
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
/// (In a pool it shares — the caller's rayon pool, or rayon's global one when no
/// thread count is set — the step's helpers are jobs of that pool, which leave it
/// after 2 ms without a step so as not to hold its workers; the next step spawns them
/// again, a small allocation of rayon's each. A model given a thread count with
/// [`Sequential::set_threads`] and called from outside any pool has helpers of its own,
/// which wait for the next step without allocating.)
#[derive(Clone, Debug)]
pub struct Sequential {
    layers: Vec<Layer>,
    loss: Loss,
    optimizer: Optimizer,
    iterations: u64,
    /// Epochs `fit` has completed, over all its calls: the next `fit` continues the
    /// shuffle from there.
    epochs: u64,
    n_inputs: usize,
    n_outputs: usize,
    adaptive_threads: bool,
    /// Whether training steps apply the optimizer in the weight-gradient GEMMs.
    fused_update: bool,
    /// Scales the optimizer's learning rate step by step.
    schedule: crate::nn::Schedule,
    /// The pool `fit`, `evaluate`, `predict` and `train_step` run in (shared by clones).
    pool: ModelPool,
    /// ∂L/∂(last output), batch × n_outputs.
    dloss: Matrix,
    batch_x: Matrix,
    batch_classes: Vec<usize>,
    batch_values: Matrix,
    /// The map of `batch_x`'s zeros, made by `fit`'s gather for the first layer.
    batch_map: NonzeroMap,
    /// The next batch and its map, gathered by a helper during a step (`fit`).
    batch_next: (Matrix, NonzeroMap),
    /// Activation buffers for inference through `&self`, one set per concurrent call.
    inference: InferenceBuffers,
}

/// Sets of per-layer output buffers that `predict` and `evaluate` borrow for a call and
/// give back: a warm loop reuses one set (no allocation), calls from several threads
/// at once take one each. A clone of the model starts with none.
#[derive(Default)]
struct InferenceBuffers(std::sync::Mutex<Vec<Vec<Matrix>>>);

impl Clone for InferenceBuffers {
    fn clone(&self) -> Self {
        InferenceBuffers::default()
    }
}

impl std::fmt::Debug for InferenceBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InferenceBuffers")
    }
}

impl InferenceBuffers {
    fn take(&self) -> Vec<Matrix> {
        // A panic elsewhere cannot leave the list half-changed: take what is there.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
    }
    fn give_back(&self, bufs: Vec<Matrix>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(bufs);
    }
}

/// [`Sequential::for_each_dense`] over `layers`, whose first takes the input `x` and
/// whose last the loss gradient `dloss`.
fn for_each_dense_in(
    layers: &mut [Layer],
    x: MatRef<'_>,
    dloss: MatRef<'_>,
    mut f: impl FnMut(usize, &mut Dense, MatRef<'_>, MatRef<'_>, bool) -> Result<()>,
) -> Result<()> {
    let n = layers.len();
    for l in (0..n).rev() {
        let (below, rest) = layers.split_at_mut(l);
        let (cur, above) = rest.split_at_mut(1);
        let Layer::Dense(d) = &mut cur[0] else { continue };
        let input = if l == 0 { x } else { below[l - 1].output().view() };
        let grad = if l + 1 == n { dloss } else { above[0].dinputs().view() };
        let own_relu = d.has_relu() && !matches!(above.first(), Some(Layer::Dense(_)));
        f(l, d, input, grad, own_relu)?;
    }
    Ok(())
}

/// The multiply-adds below which a product of the layers above the first runs on one
/// thread while a helper gathers the next batch (see [`Sequential::gathers_beside`]):
/// below it, such products gained nothing from a split inside a 2-thread step.
const SERIAL_MIDDLE_WORK: usize = 1 << 21;

/// The weights above the first layer, per input feature, from which the serial
/// stretch of a step outlasts most of the gather a helper runs beside it: on the Xeon
/// of docs/perf/gather-beside-2026-12-07.md, 784-128-64-10 (11 a feature) spent 45 µs
/// there against 36 µs for the gather of a batch of 128; 784-32-32-10 (1.7 a feature)
/// was no faster (the leader then reads the whole batch from the helper's cache).
const MIDDLE_WEIGHTS_PER_INPUT: usize = 8;

impl Sequential {
    /// Starts a model over `n_inputs` features.
    pub fn builder(n_inputs: usize) -> ModelBuilder {
        ModelBuilder::new(n_inputs)
    }

    /// The layers, after fusion (a Dense + ReLU pair is one layer).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Measures the largest `|w|` of every Dense layer whose maxima are unknown, so
    /// that inference knows the weights finite (`Dense::weights_known_finite`).
    pub(crate) fn measure_weight_maxima(&mut self) {
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.weight_maxima();
            }
        }
    }

    /// The layers, mutable (to inspect or set parameters).
    pub fn layers_mut(&mut self) -> &mut [Layer] {
        // The parameters may change: the magnitudes the next step is proved finite
        // from are measured again.
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.maxima = None;
            }
        }
        &mut self.layers
    }

    /// Whether training steps apply the optimizer inside the weight-gradient GEMMs
    /// (default: yes) or as separate passes over stored gradients; both give the same
    /// bits. For A/B measurements.
    #[doc(hidden)]
    pub fn set_fused_update(&mut self, fused: bool) {
        self.fused_update = fused;
    }

    /// The loss.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Optimizer steps taken so far (NNFS's `iterations`).
    pub fn iterations(&self) -> u64 {
        self.iterations
    }

    /// Epochs `fit` has completed so far, over all its calls (restored by
    /// [`Self::load_checkpoint`]). Each `fit` continues the shuffle of its seed from
    /// this many epochs in, so that two calls of 2 epochs train exactly as one of 4.
    pub fn epochs_trained(&self) -> u64 {
        self.epochs
    }

    /// The optimizer.
    pub fn optimizer(&self) -> Optimizer {
        self.optimizer
    }

    /// Scales the optimizer's learning rate (after its NNFS decay) by `schedule`'s
    /// factor at every step: step decay, cosine annealing, warm-up. Default: constant.
    ///
    /// ```
    /// use fusegrad::nn::{Loss, Optimizer, Schedule, Sequential};
    /// let mut m = Sequential::builder(2).dense(3).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.5))?;
    /// m.set_schedule(Schedule::cosine(1000, 0.0).with_warmup(10));
    /// assert_eq!(m.learning_rate(), 0.05); // step 0 of the warm-up: 0.5 · 1/10
    /// # Ok::<(), fusegrad::Error>(())
    /// ```
    pub fn set_schedule(&mut self, schedule: crate::nn::Schedule) {
        self.schedule = schedule;
    }

    /// The schedule (see [`Self::set_schedule`]).
    pub fn schedule(&self) -> crate::nn::Schedule {
        self.schedule
    }

    /// The learning rate the next step will use: the optimizer's, decayed, scheduled.
    pub fn learning_rate(&self) -> f32 {
        self.optimizer.at_step(self.iterations, &self.schedule).current_learning_rate(self.iterations)
    }

    /// The mask generators' states of the dropout layers, in order.
    pub(crate) fn dropout_rng_states(&self) -> Vec<[u64; 4]> {
        self.layers.iter().filter_map(|l| if let Layer::Dropout(d) = l { Some(d.rng_state()) } else { None }).collect()
    }

    /// Restores what a checkpoint holds besides the parameters.
    pub(crate) fn restore_progress(&mut self, iterations: u64, epochs: u64, dropout_rngs: &[[u64; 4]]) {
        (self.iterations, self.epochs) = (iterations, epochs);
        let dropouts = self.layers.iter_mut().filter_map(|l| if let Layer::Dropout(d) = l { Some(d) } else { None });
        for (d, &s) in dropouts.zip(dropout_rngs) {
            d.set_rng_state(s);
        }
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
    /// `predict` inside a pool of `n` threads (1 = serial), and `train_step` on the
    /// caller's thread with `n − 1` helpers; `None` (default) uses the rayon pool the
    /// caller is in, or one of rayon's default size. A training step (all of `fit`)
    /// keeps its threads together as one region: after a per-batch call the helpers
    /// keep spinning for 2 ms, waiting for the next one, then sleep until it comes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `Some(0)`.
    pub fn set_threads(&mut self, threads: Option<usize>) -> Result<()> {
        if threads == Some(0) {
            return Err(Error::InvalidArgument("threads must be at least 1".into()));
        }
        self.pool.set_threads(threads);
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.set_threads(threads);
            }
        }
        Ok(())
    }

    /// Whether the pool that `fit`, `evaluate` and `predict` start pins its workers to
    /// distinct cores (default: yes, when there are at least as many cores as workers).
    /// Unpinned, Linux sometimes leaves both busy workers of a 2-vCPU machine on one
    /// CPU for a whole run, doubling its time. (`train_step` and `forward_backward` run
    /// on the caller's thread, with helpers from a second pool that is never pinned: a
    /// helper pinned to the core the caller happens to be on would share it.)
    ///
    /// Needs the default feature `pin-threads`; without it the workers are never pinned.
    pub fn set_pin_threads(&mut self, pin: bool) {
        self.pool.set_pin(pin);
    }

    /// Whether `fit` may run steps on one thread when that is faster (default: yes).
    ///
    /// On a busy machine a second thread can cost more than it gives: when another
    /// process shares a core with one of the workers, every step waits for that
    /// worker's next time slice. With this on, `fit` times its steps, tries the pool split, the whole
    /// step on this thread and the whole step on another worker for a few steps each,
    /// keeps the fastest, and tries again every ~1 000 steps or as soon as the kept
    /// way gets much slower. On a quiet machine the probing costs a percent or two of
    /// an epoch. Results are bit-identical whatever it chooses. Off, `fit` always splits
    /// every step over the pool.
    pub fn set_adaptive_threads(&mut self, adaptive: bool) {
        self.adaptive_threads = adaptive;
    }

    /// Runs `f` in the model's pool ([`ModelPool::install`]), telling it how many
    /// threads its passes may use.
    fn in_pool<R: Send>(&mut self, f: impl FnOnce(&mut Self, usize) -> R + Send) -> Result<R> {
        // A copy of the handle (an `Arc`), so that `f` can borrow the whole model; the
        // pool it may build is kept.
        let pool = self.pool.clone();
        let result = pool.install(|threads| f(self, threads));
        self.pool = pool;
        result
    }

    /// Whether a pass over `rows` samples is too small to share: every one of its GEMMs
    /// would run on one thread anyway (below the GEMM's threading threshold), so
    /// handing it to the pool would only add a thread hand-over, which costs more than
    /// a one-sample `predict`. Such passes run on the caller's thread.
    fn runs_serially(&self, rows: usize) -> bool {
        let macs_per_sample: usize =
            self.layers.iter().map(|l| if let Layer::Dense(d) = l { d.weights.as_slice().len() } else { 0 }).sum();
        let threshold = self
            .layers
            .iter()
            .filter_map(|l| if let Layer::Dense(d) = l { Some(d.min_work_per_thread()) } else { None })
            .min()
            .unwrap_or(crate::gemm::MIN_WORK_PER_THREAD);
        rows.saturating_mul(macs_per_sample) < threshold
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

    /// The path whose vectors make the map of a batch's zeros, when the first layer's
    /// products read one: a Dense layer first, on a path whose tiles skip zero inputs.
    fn input_map_isa(&self) -> Option<Isa> {
        let Some(Layer::Dense(d)) = self.layers.first() else { return None };
        let isa = d.isa().ok()?;
        matches!(isa, Isa::Avx2 | Isa::Avx512).then_some(isa)
    }

    /// Forward through the layers `range` (the earlier ones done) on `threads` threads;
    /// `training` switches dropout on. `x_map`: the map of `x`'s zeros, when the caller
    /// made it (`fit`'s gather).
    fn forward_layers(
        &mut self,
        range: std::ops::Range<usize>,
        x: MatRef<'_>,
        x_map: Option<NonzeroMapRef<'_>>,
        training: bool,
        threads: usize,
    ) -> Result<()> {
        for l in range {
            let (below, rest) = self.layers.split_at_mut(l);
            let input = if l == 0 { x } else { below[l - 1].output().view() };
            match &mut rest[0] {
                Layer::Dense(d) => {
                    let finite = d.weights_known_finite();
                    d.forward_on(input, threads, finite, x_map.filter(|_| l == 0))?
                }
                Layer::Activation(a) => a.forward(input)?,
                Layer::Dropout(d) => d.forward(input, training)?,
            }
        }
        Ok(())
    }

    /// Backward from `self.dloss` through every layer on `threads` threads: every
    /// input gradient, then every weight gradient.
    fn backward(&mut self, x: MatRef<'_>, threads: usize) -> Result<()> {
        self.backward_dinputs(x, threads)?;
        self.for_each_dense(x, |_, d, input, grad, own_relu| {
            d.with_dz(grad, own_relu, |d, dz| d.weight_gradients_on(input, dz, threads))
        })
    }

    /// The backward chain alone: every layer's input gradient (and the masked `dz` of a
    /// Dense + ReLU below a non-Dense layer), top to bottom, no weight gradient.
    fn backward_dinputs(&mut self, x: MatRef<'_>, threads: usize) -> Result<()> {
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
                    let own_relu = d.has_relu() && !masked_above; // masks by its own output first
                    d.backward_dinputs_on(input, grad, own_relu, dinputs, threads)?;
                }
                Layer::Activation(a) => a.backward(grad)?,
                Layer::Dropout(d) => d.backward(grad)?,
            }
        }
        Ok(())
    }

    /// Calls `f(index, layer, input, grad, own_relu)` for every Dense layer, top first,
    /// after [`Self::backward_dinputs`]: the input it saw, the gradient that reached it
    /// from above, and whether it masked that gradient by its own ReLU (its `dz` is
    /// then in the layer; see [`Dense::with_dz`]).
    fn for_each_dense(
        &mut self,
        x: MatRef<'_>,
        f: impl FnMut(usize, &mut Dense, MatRef<'_>, MatRef<'_>, bool) -> Result<()>,
    ) -> Result<()> {
        for_each_dense_in(&mut self.layers, x, self.dloss.view(), f)
    }

    /// The fused updates of a step proved finite on the two threads of a region: the
    /// layers above the first on this thread (top first, one thread each, as their
    /// other passes ran), the first layer's weights in two halves, helper 1's half from
    /// the start, this thread's after the layers above. Needs a Dense layer above the
    /// first (which masked the first layer's gradient in its `dinputs`). Every update
    /// is the one of [`Self::for_each_dense`]'s loop: they are independent of each other.
    /// (The helper's half starts before the layers above are updated; their updates can
    /// fail only on shapes, which the step has checked.)
    fn update_beside(&mut self, x: MatRef<'_>, x_map: Option<NonzeroMapRef<'_>>, optimizer: &Optimizer) -> Result<()> {
        let it = self.iterations;
        let (first, upper) = self.layers.split_at_mut(1);
        let (Layer::Dense(d0), Some(Layer::Dense(d1))) = (&mut first[0], upper.first_mut()) else {
            unreachable!("update_beside needs Dense layers 0 and 1");
        };
        // The first layer's gradient and output, out of the layers for the duration:
        // the updates above read the output and write the layer that holds the gradient.
        let dz = std::mem::take(&mut d1.dinputs);
        let h = std::mem::take(&mut d0.output);
        let dloss = self.dloss.view();
        let mut above = || {
            for_each_dense_in(upper, h.view(), dloss, |_, d, input, grad, own_relu| {
                d.with_dz(grad, own_relu, |d, dz| d.update_fused_on(input, dz, optimizer, it, 1, true, None, None))
                    .map(|_| ())
            })
        };
        let r = d0.update_fused_on(x, dz.view(), optimizer, it, 1, true, x_map, Some(&mut above));
        d0.output = h;
        if let Some(Layer::Dense(d1)) = upper.first_mut() {
            d1.dinputs = dz;
        }
        r.map(|_| ())
    }

    /// Whether every Dense layer's fused step is proved to store only finite values
    /// (see `guard`), after [`Self::backward_dinputs`]. The magnitudes come from the
    /// epilogues that produced the tensors where a Dense layer produced them (its
    /// output, its `dinputs`), else from a pass over the tensor; `x_bound`, when known,
    /// bounds the first layer's inputs.
    fn fused_step_stays_finite(&mut self, x: MatRef<'_>, x_bound: Option<f32>) -> bool {
        let (optimizer, iterations) = (self.optimizer.at_step(self.iterations, &self.schedule), self.iterations);
        let n = self.layers.len();
        let dloss = self.dloss.view();
        for l in (0..n).rev() {
            let (below, rest) = self.layers.split_at_mut(l);
            let (cur, above) = rest.split_at_mut(1);
            let Layer::Dense(d) = &mut cur[0] else { continue };
            let inputs = match (l, below.last()) {
                (0, _) => x_bound.map_or_else(|| max_abs_bits_of(x), f32::to_bits),
                (_, Some(Layer::Dense(b))) => b.output_max,
                (_, Some(other)) => max_abs_bits_of(other.output().view()),
                (_, None) => unreachable!("l > 0 has a layer below"),
            };
            // The gradient from above bounds dz (a ReLU mask only zeroes entries).
            let dz = match above.first() {
                None => max_abs_bits_of(dloss),
                Some(Layer::Dense(a)) => a.dinputs_max,
                Some(other) => max_abs_bits_of(other.dinputs().view()),
            };
            let m = guard::LayerMagnitudes {
                batch: x.rows(),
                inputs,
                dz,
                weights: d.weight_maxima(),
                biases: d.bias_maxima(),
            };
            if !guard::step_stays_finite(&optimizer, iterations, &d.regularization, &m) {
                return false;
            }
        }
        true
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
        if self.runs_serially(x.rows()) {
            // Every product of the step is too small to split: no helpers to wake.
            if self.iterations == 0 {
                crate::gemm::reserve_workspace_for(1);
            }
            return self.step_prechecked(x, None, targets, 1, None, None);
        }
        self.in_region(move |m, threads| m.step_prechecked(x, None, targets, threads, None, None))?
    }

    /// Runs `f` on this thread as the leader of a region of the model's threads
    /// ([`ModelPool::lead`]): the step's products share their tiles among the same
    /// threads each time, without a fork-join per product. The first step also sizes
    /// every thread's GEMM workspace (`fit` does so for its own loop).
    fn in_region<R>(&mut self, f: impl FnOnce(&mut Self, usize) -> R) -> Result<R> {
        let pool = self.pool.clone();
        let result = pool.lead(|region, threads| {
            if self.iterations == 0 {
                match region {
                    Some(r) => r.on_every_thread(|| crate::gemm::reserve_workspace_for(1)),
                    None => crate::gemm::reserve_workspace_for(1),
                }
            }
            f(self, threads)
        });
        self.pool = pool;
        result
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
        self.in_region(move |m, threads| {
            let batch = m.forward_loss(0, x, None, targets, threads)?;
            m.backward(x, threads)?;
            Ok(batch)
        })?
    }

    /// Forward in training mode from layer `from` (the layers below done), then the
    /// loss and its gradient into `self.dloss`.
    fn forward_loss(
        &mut self,
        from: usize,
        x: MatRef<'_>,
        x_map: Option<NonzeroMapRef<'_>>,
        targets: Targets<'_>,
        threads: usize,
    ) -> Result<BatchLoss> {
        self.forward_layers(from..self.layers.len(), x, x_map, true, threads)?;
        self.dloss.resize(x.rows(), self.n_outputs);
        let last = self.layers.last().expect("a built model has layers").output().view();
        self.loss.forward_backward(last, targets, Some(self.dloss.view_mut()))
    }

    /// Whether a step over `rows` samples has a serial stretch worth giving a helper
    /// the next batch's gather for: the first layer is Dense and large enough that its
    /// products split over the threads, and the products of the layers above it are
    /// too small to gain from a split (below [`SERIAL_MIDDLE_WORK`] multiply-adds), so
    /// that they run on this thread while the helper gathers. (Where no product
    /// splits, the helper has nothing to interleave with and a hand-over costs more
    /// than the gather.)
    pub(super) fn gathers_beside(&self, rows: usize) -> bool {
        let Some(Layer::Dense(first)) = self.layers.first() else { return false };
        let upper = |l: &Layer| if let Layer::Dense(d) = l { d.weights.as_slice().len() } else { 0 };
        rows.saturating_mul(first.weights.as_slice().len()) >= 2 * first.min_work_per_thread()
            && self.layers.iter().skip(1).map(upper).sum::<usize>() >= MIDDLE_WEIGHTS_PER_INPUT * self.n_inputs
            && self.layers.iter().skip(1).all(|l| rows.saturating_mul(upper(l)) < SERIAL_MIDDLE_WORK)
    }

    /// Whether a product of the layers above the first splits over threads at `rows`
    /// samples (has the work of two tasks).
    fn upper_products_split(&self, rows: usize) -> bool {
        self.layers.iter().skip(1).any(|l| match l {
            Layer::Dense(d) => rows.saturating_mul(d.weights.as_slice().len()) >= 2 * d.min_work_per_thread(),
            _ => false,
        })
    }

    /// The forward from layer `from` (the layers below done), the loss, and the
    /// backward chain; then whether the fused step is proved finite. An error when the
    /// loss is not finite (naming the inputs when they are the cause).
    fn loss_and_dinputs(
        &mut self,
        from: usize,
        x: MatRef<'_>,
        x_map: Option<NonzeroMapRef<'_>>,
        targets: Targets<'_>,
        threads: usize,
        x_bound: Option<f32>,
    ) -> Result<(BatchLoss, bool)> {
        let batch = self.forward_loss(from, x, x_map, targets, threads)?;
        if !batch.loss.is_finite() {
            let step = self.iterations;
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
        self.backward_dinputs(x, threads)?;
        Ok((batch, self.fused_update && self.fused_step_stays_finite(x, x_bound)))
    }

    /// One training step on inputs and targets already checked by the caller
    /// ([`Self::train_step`], `fit`): forward, loss, backward, finiteness check, update,
    /// every pass on `threads` threads of the current pool.
    /// `x_bound` bounds every `|x|` when the caller knows one (see
    /// [`Inputs::max_abs_bound`](crate::nn::Inputs::max_abs_bound)); `x_map` is the
    /// map of its zeros when the caller made one.
    ///
    /// `background`, when given, is run once during the step (by a helper while this
    /// thread runs the serial part of the step, when there is a region to share).
    pub(super) fn step_prechecked(
        &mut self,
        x: MatRef<'_>,
        x_map: Option<NonzeroMapRef<'_>>,
        targets: Targets<'_>,
        threads: usize,
        x_bound: Option<f32>,
        background: Option<&(dyn Fn() + Sync)>,
    ) -> Result<BatchLoss> {
        let (step, n) = (self.iterations, self.layers.len());
        // Small upper layers (see `gathers_beside`) run on this thread, their products
        // too small to gain from a split, beside the helper's job when there is one
        // (without one, only when they would not split anyway: a train_step at batch
        // 128 ran 1–2% slower with them on one thread).
        let small_upper = threads > 1
            && n > 1
            && self.gathers_beside(x.rows())
            && (background.is_some() || !self.upper_products_split(x.rows()));
        let (batch, proved) = if small_upper {
            self.forward_layers(0..1, x, x_map, true, threads)?;
            let mut rest = || self.loss_and_dinputs(1, x, x_map, targets, 1, x_bound);
            match background {
                Some(job) => crate::runtime::region::beside(job, rest)?,
                None => rest()?,
            }
        } else {
            if let Some(job) = background {
                job();
            }
            self.loss_and_dinputs(0, x, x_map, targets, threads, x_bound)?
        };
        let optimizer = self.optimizer.at_step(self.iterations, &self.schedule);
        // Then, on two threads with a Dense layer above the first, the helper's half of
        // the first layer's update overlaps the upper layers' updates.
        let halves =
            small_upper && threads == 2 && matches!(self.layers.get(..2), Some([Layer::Dense(_), Layer::Dense(_)]));
        if proved && halves {
            self.update_beside(x, x_map, &optimizer)?;
            self.iterations += 1;
            return Ok(batch);
        }
        if proved {
            let it = self.iterations;
            self.for_each_dense(x, |l, d, input, grad, own_relu| {
                let map = x_map.filter(|_| l == 0);
                d.with_dz(grad, own_relu, |d, dz| {
                    d.update_fused_on(input, dz, &optimizer, it, threads, true, map, None)
                })
                .map(|_| ())
            })?;
            self.iterations += 1;
            return Ok(batch);
        }
        // Not proved finite (or not fused): the gradients are stored and checked before
        // anything is updated.
        self.for_each_dense(x, |_, d, input, grad, own_relu| {
            d.with_dz(grad, own_relu, |d, dz| d.weight_gradients_on(input, dz, threads))
        })?;
        for (i, layer) in self.layers.iter().enumerate() {
            if let Layer::Dense(d) = layer {
                for (tensor, data) in [("dweights", d.dweights.as_slice()), ("dbiases", d.dbiases.as_slice())] {
                    if !all_finite_on(data, threads) {
                        return Err(Error::NonFinite {
                            step,
                            layer: format!("layer {i} ({})", layer.describe()),
                            tensor: tensor.into(),
                        });
                    }
                }
            }
        }
        for layer in &mut self.layers {
            if let Layer::Dense(d) = layer {
                d.update_params_on(&optimizer, self.iterations, threads)?;
            }
        }
        self.iterations += 1;
        Ok(batch)
    }

    /// Sum of every layer's regularization penalty.
    pub fn regularization_loss(&self) -> f32 {
        self.layers.iter().map(|l| if let Layer::Dense(d) = l { d.regularization_loss() } else { 0.0 }).sum()
    }

    /// Mean loss and accuracy over `x` and `targets`, in batches of `batch_size`,
    /// with dropout off.
    ///
    /// # Errors
    /// Shape and target errors (targets outside the loss's domain included), before any
    /// work; [`Error::NonFiniteInput`] naming the first input row with NaN or infinity
    /// (found when a batch's loss is not finite).
    pub fn evaluate(&self, x: MatRef<'_>, targets: Targets<'_>, batch_size: usize) -> Result<Evaluation> {
        self.check_inputs(&x, Some(&targets))?;
        if x.rows() == 0 || batch_size == 0 {
            return Err(Error::InvalidArgument("evaluate needs at least one sample and a batch size ≥ 1".into()));
        }
        if self.runs_serially(x.rows()) {
            return self.evaluate_batches(x, targets, batch_size, 1);
        }
        self.pool.install(move |threads| self.evaluate_batches(x, targets, batch_size, threads))?
    }

    /// [`Self::evaluate`] after its checks, on whichever thread calls it.
    fn evaluate_batches(
        &self,
        x: MatRef<'_>,
        targets: Targets<'_>,
        batch_size: usize,
        threads: usize,
    ) -> Result<Evaluation> {
        let (mut loss_sum, mut correct, mut total) = (0.0f64, 0usize, 0usize);
        let n = x.rows();
        for start in (0..n).step_by(batch_size) {
            let rows = batch_size.min(n - start);
            let xb = x.submatrix(start, 0, rows, x.cols())?;
            let tb = match targets {
                Targets::Classes(c) => Targets::Classes(&c[start..start + rows]),
                Targets::Values(v) => Targets::Values(v.submatrix(start, 0, rows, v.cols())?),
            };
            let b = self.infer(xb, threads, |out| self.loss.forward_backward(out, tb, None))??;
            if !b.loss.is_finite() {
                return Err(self.nonfinite_error("Sequential::evaluate", xb, start));
            }
            loss_sum += b.loss as f64 * rows as f64;
            (correct, total) = (correct + b.correct, total + b.total);
        }
        Ok(Evaluation {
            loss: (loss_sum / n as f64) as f32,
            accuracy: self.loss.is_classification().then(|| correct as f32 / total.max(1) as f32),
        })
    }

    /// The forward pass of inference (dropout off) on `x`, into a set of buffers
    /// borrowed for the call; `f` gets the last layer's output. The layers are not
    /// changed, so calls may run at once from many threads on one model.
    fn infer<R>(&self, x: MatRef<'_>, threads: usize, f: impl FnOnce(MatRef<'_>) -> R) -> Result<R> {
        let mut bufs = self.inference.take();
        bufs.resize_with(self.layers.len(), || Matrix::zeros(0, 0));
        let result = self.infer_into(x, threads, &mut bufs).map(|last| f(last.map_or(x, |i| bufs[i].view())));
        self.inference.give_back(bufs);
        result
    }

    /// Runs the layers on `x` into `bufs`; the index of the buffer holding the output
    /// (`None`: the input itself, as after only dropout layers).
    fn infer_into(&self, x: MatRef<'_>, threads: usize, bufs: &mut [Matrix]) -> Result<Option<usize>> {
        let mut current: Option<usize> = None;
        for (l, layer) in self.layers.iter().enumerate() {
            let (done, rest) = bufs.split_at_mut(l);
            let input = current.map_or(x, |i| done[i].view());
            match layer {
                Layer::Dense(d) => {
                    d.forward_into(input, &mut rest[0], threads, d.weights_known_finite(), None)?;
                }
                Layer::Activation(a) => a.forward_into(input, &mut rest[0])?,
                // Inference: dropout passes its input through.
                Layer::Dropout(_) => continue,
            }
            current = Some(l);
        }
        Ok(current)
    }

    /// The model's outputs for `x` (samples × n_outputs), with dropout off; for
    /// [`Loss::SoftmaxCrossEntropy`], the class probabilities.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `x` has the wrong width;
    /// [`Error::NonFiniteInput`] naming the first input row with NaN or infinity (and
    /// [`Error::NonFinite`] if every input is finite but an output is not). The check
    /// looks at the outputs, so finite inputs cost one pass over them.
    pub fn predict(&self, x: MatRef<'_>) -> Result<Matrix> {
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
    /// As [`Self::predict`] for NaN or infinity; `out` is then partly written.
    pub fn predict_into(&self, x: MatRef<'_>, out: MatMut<'_>) -> Result<()> {
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
            return self.predict_batches(x, out, 1);
        }
        self.pool.install(move |threads| self.predict_batches(x, out, threads))?
    }

    /// The predicted class of each row of `x`: the index of its largest output (the
    /// first one on ties), as NNFS's `np.argmax(predictions, axis=1)`.
    ///
    /// # Errors
    /// As [`Self::predict`].
    pub fn predict_classes(&self, x: MatRef<'_>) -> Result<Vec<usize>> {
        let out = self.predict(x)?;
        Ok((0..out.rows())
            .map(|i| {
                let row = out.row(i);
                (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
            })
            .collect())
    }

    /// A table of the layers (after fusion), their output widths and parameter
    /// counts, with the total: what Keras's `model.summary()` shows.
    pub fn summary(&self) -> String {
        let mut s = format!("{:<4} {:<28} {:>10} {:>12}\n", "#", "layer", "outputs", "parameters");
        let mut total = 0;
        let mut width = self.n_inputs;
        for (i, layer) in self.layers.iter().enumerate() {
            let params = match layer {
                Layer::Dense(d) => {
                    width = d.n_neurons();
                    d.n_inputs() * d.n_neurons() + d.n_neurons()
                }
                _ => 0,
            };
            total += params;
            s += &format!("{i:<4} {:<28} {width:>10} {params:>12}\n", layer.describe());
        }
        s += &format!(
            "inputs {}, loss {:?}, optimizer {}; {total} parameters\n",
            self.n_inputs,
            self.loss,
            self.optimizer.name()
        );
        s
    }

    /// Number of trainable parameters (weights and biases of every Dense layer).
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| if let Layer::Dense(d) = l { d.n_inputs() * d.n_neurons() + d.n_neurons() } else { 0 })
            .sum()
    }

    /// The error for a non-finite output of inference on the batch `xb` (rows from
    /// `first` of the caller's inputs): the input row that holds NaN or infinity, or,
    /// when every input is finite, the output itself (the parameters overflow).
    fn nonfinite_error(&self, op: &'static str, xb: MatRef<'_>, first: usize) -> Error {
        match first_nonfinite_row(xb) {
            Some(row) => Error::NonFiniteInput { op, row: first + row },
            None => {
                Error::NonFinite { step: self.iterations, layer: "the model output".into(), tensor: "output".into() }
            }
        }
    }

    /// [`Self::predict_into`] after its checks, in batches of 256 rows.
    fn predict_batches(&self, x: MatRef<'_>, mut out: MatMut<'_>, threads: usize) -> Result<()> {
        let batch = 256;
        for start in (0..x.rows()).step_by(batch) {
            let rows = batch.min(x.rows() - start);
            let xb = x.submatrix(start, 0, rows, x.cols())?;
            let dst = out.rb_mut().submatrix(start, 0, rows, self.n_outputs)?;
            self.infer(xb, threads, |last| {
                if (0..rows).any(|i| !crate::ops::reduce::all_finite(last.row(i))) {
                    return Err(self.nonfinite_error("Sequential::predict", xb, start));
                }
                if self.loss == Loss::SoftmaxCrossEntropy {
                    crate::ops::activation::softmax_forward(last, dst)
                } else {
                    let mut dst = dst;
                    for i in 0..rows {
                        dst.row_mut(i).copy_from_slice(last.row(i));
                    }
                    Ok(())
                }
            })??;
        }
        Ok(())
    }
}

/// The first row of `x` holding NaN or infinity.
fn first_nonfinite_row(x: MatRef<'_>) -> Option<usize> {
    (0..x.rows()).find(|&i| (0..x.cols()).any(|j| !x.get(i, j).is_finite()))
}
