//! The Dense layer: `output = X·W + b` (optionally followed by a fused ReLU), with
//! NNFS's names and layout: `weights` is `n_inputs × n_neurons`, `biases` has
//! `n_neurons` entries, one sample per row of X.
//!
//! Backward *overwrites* `dweights`, `dbiases` and `dinputs` (as NNFS does; nothing
//! accumulates across calls):
//!
//! ```text
//! dweights = inputsᵀ · dz          (Xᵀ read in place, no transpose copy)
//! dbiases  = colsum(dz)            (fused into the same GEMM: BGRADB)
//! dinputs  = dz · weightsᵀ         (skipped for the first layer)
//!          ⊙ 1[h_below > 0]        (when the layer below is a ReLU: DRELU, fused)
//! ```
//! where `dz = ∂L/∂(X·W + b)`; with a fused ReLU, `dz = dvalues ⊙ 1[output > 0]`.

use crate::error::{Error, Result};
use crate::gemm::nonzero_map::{AMap, NonzeroMapRef};
use crate::gemm::{
    gemm_update, gemm_with, gemm_with_max, Accum, Epilogue, GemmOptions, ParamUpdate, UpdateRule, WeightUpdate,
};
use crate::matrix::{MatRef, Matrix};
use crate::nn::init::{init_weights, Init};
use crate::nn::optim::Optimizer;
use crate::ops::activation::relu_backward;
use crate::rng::Rng;
use crate::runtime::{parts_for, split_point};

/// Fewest elements worth a task of its own in a parallel update: below this the
/// scheduling (a few µs) outweighs the pass.
const UPDATE_MIN_PER_TASK: usize = 16 * 1024;

/// [`Optimizer::update`] split over the current rayon pool, one even share per thread
/// (see [`split_point`]). The update is elementwise, so the split cannot change a bit.
fn par_update(
    opt: &Optimizer,
    p: &mut [f32],
    g: &[f32],
    s0: &mut [f32],
    s1: &mut [f32],
    it: u64,
    threads: usize,
) -> Result<()> {
    par_update_parts(opt, p, g, s0, s1, it, parts_for(threads, p.len(), UPDATE_MIN_PER_TASK))
}

fn par_update_parts(
    opt: &Optimizer,
    p: &mut [f32],
    g: &[f32],
    s0: &mut [f32],
    s1: &mut [f32],
    it: u64,
    parts: usize,
) -> Result<()> {
    let Some(mid) = split_point(p.len(), parts) else {
        return opt.update(p, g, s0, s1, it);
    };
    let ((p1, p2), (g1, g2)) = (p.split_at_mut(mid), g.split_at(mid));
    let ((a1, a2), (b1, b2)) = (halve(s0, mid), halve(s1, mid));
    let (first, second) = (parts / 2, parts - parts / 2);
    let (r1, r2) = rayon::join(
        || par_update_parts(opt, p1, g1, a1, b1, it, first),
        || par_update_parts(opt, p2, g2, a2, b2, it, second),
    );
    r1.and(r2)
}

/// L1 and L2 penalties on a layer's weights and biases (NNFS chapter 14):
/// `loss += l1·Σ|w| + l2·Σw²`, so `dw += l1·sign(w) + 2·l2·w` (sign(0) = +1, as the
/// book has it).
///
/// `#[non_exhaustive]`: build it from `default()` and the `with_*` setters.
///
/// ```
/// use fusegrad::nn::Regularization;
/// let r = Regularization::default().with_weight_l2(5e-4).with_bias_l2(5e-4);
/// assert_eq!((r.weight_l1, r.weight_l2), (0.0, 5e-4));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Regularization {
    /// L1 factor on weights.
    pub weight_l1: f32,
    /// L2 factor on weights.
    pub weight_l2: f32,
    /// L1 factor on biases.
    pub bias_l1: f32,
    /// L2 factor on biases.
    pub bias_l2: f32,
}

impl Regularization {
    /// The L1 factor on weights.
    pub fn with_weight_l1(mut self, l1: f32) -> Self {
        self.weight_l1 = l1;
        self
    }
    /// The L2 factor on weights.
    pub fn with_weight_l2(mut self, l2: f32) -> Self {
        self.weight_l2 = l2;
        self
    }
    /// The L1 factor on biases.
    pub fn with_bias_l1(mut self, l1: f32) -> Self {
        self.bias_l1 = l1;
        self
    }
    /// The L2 factor on biases.
    pub fn with_bias_l2(mut self, l2: f32) -> Self {
        self.bias_l2 = l2;
        self
    }
    fn is_zero(&self) -> bool {
        *self == Regularization::default()
    }
}

/// What the backward pass does about `dinputs`.
#[derive(Clone, Copy, Debug)]
pub enum Dinputs<'a> {
    /// Do not compute it (the first layer: nothing below needs it).
    Skip,
    /// `dinputs = dz · Wᵀ`.
    Compute,
    /// `dinputs = (dz · Wᵀ) ⊙ 1[h > 0]`, where `h` is the output of the ReLU below
    /// (batch × n_inputs): the `dz` of the layer below, in the same GEMM.
    ComputeReluMasked(MatRef<'a>),
}

/// A fully connected layer.
#[derive(Clone, Debug)]
pub struct Dense {
    /// `n_inputs × n_neurons`.
    pub weights: Matrix,
    /// `n_neurons`.
    pub biases: Vec<f32>,
    /// Gradient of the loss with respect to `weights`, from the last backward.
    pub dweights: Matrix,
    /// Gradient of the loss with respect to `biases`, from the last backward.
    pub dbiases: Vec<f32>,
    /// `batch × n_neurons`, from the last forward.
    pub output: Matrix,
    /// `batch × n_inputs`, from the last backward (unless skipped).
    pub dinputs: Matrix,
    /// Penalties added to the loss and the gradients.
    pub regularization: Regularization,
    relu: bool,
    /// `dz` when it has to be formed from `dvalues` (NNFS-style `backward`).
    dz: Matrix,
    /// Optimizer state of the weights and of the biases.
    state: OptimizerState,
    /// Largest `|w|`, `|state 0|`, `|state 1|` of the weights as bits, as the last
    /// fused update stored them; `None` when unknown (never stepped fused, stepped
    /// otherwise since, or handed out mutably by the model).
    pub(crate) maxima: Option<[u32; 3]>,
    /// Largest `|output|` and `|dinputs|` of the last forward and input-gradient GEMM,
    /// as bits, measured in their epilogues.
    pub(crate) output_max: u32,
    pub(crate) dinputs_max: u32,
    pub(crate) gemm: GemmOptions,
}

impl Dense {
    /// A layer of `n_neurons` over `n_inputs` inputs, weights drawn per `init`, biases 0.
    /// A layer with no input or no neuron can be made, but every pass through it is an
    /// [`Error::InvalidArgument`] (the model builder refuses one at build).
    pub fn new(n_inputs: usize, n_neurons: usize, init: Init, rng: &mut Rng) -> Self {
        Dense {
            weights: init_weights(n_inputs, n_neurons, init, rng),
            biases: vec![0.0; n_neurons],
            dweights: Matrix::zeros(n_inputs, n_neurons),
            dbiases: vec![0.0; n_neurons],
            output: Matrix::zeros(0, n_neurons),
            dinputs: Matrix::zeros(0, n_inputs),
            regularization: Regularization::default(),
            relu: false,
            dz: Matrix::zeros(0, n_neurons),
            state: OptimizerState::default(),
            maxima: None,
            output_max: 0,
            dinputs_max: 0,
            gemm: GemmOptions::default(),
        }
    }

    /// The same layer with a ReLU fused into it: `output = max(X·W + b, 0)`.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }

    /// The same layer with L1/L2 penalties.
    pub fn with_regularization(mut self, r: Regularization) -> Self {
        self.regularization = r;
        self
    }

    /// Whether a ReLU is fused into this layer.
    pub fn has_relu(&self) -> bool {
        self.relu
    }

    /// Number of inputs (rows of `weights`).
    pub fn n_inputs(&self) -> usize {
        self.weights.rows()
    }

    /// Number of neurons (columns of `weights`).
    pub fn n_neurons(&self) -> usize {
        self.weights.cols()
    }

    /// Caps the threads of this layer's GEMMs and update (`None`: the rayon pool's size).
    pub fn set_threads(&mut self, threads: Option<usize>) {
        self.gemm.threads = threads;
    }

    /// The smallest product (in multiply-adds) this layer's GEMMs split between threads
    /// (`None`: the built-in threshold); for tests that need small layers split.
    #[doc(hidden)]
    pub fn set_min_work_per_thread(&mut self, work: Option<usize>) {
        self.gemm.min_work_per_thread = work;
    }

    /// The smallest product this layer's GEMMs split between threads.
    pub(crate) fn min_work_per_thread(&self) -> usize {
        self.gemm.min_work_per_thread.unwrap_or(crate::gemm::MIN_WORK_PER_THREAD)
    }

    /// The threads a call of the public API may use: the cap, else the current pool's.
    fn threads(&self) -> usize {
        self.gemm.threads.unwrap_or_else(rayon::current_num_threads)
    }

    /// The kernel path this layer's products run on.
    pub(crate) fn isa(&self) -> Result<crate::gemm::Isa> {
        self.gemm.resolved_isa()
    }

    /// This layer's GEMM options with the thread count a caller decided.
    fn gemm_on(&self, threads: usize) -> GemmOptions {
        self.gemm.with_threads(threads)
    }

    /// `"Dense 784→128"`, as errors name the layer.
    pub fn describe(&self) -> String {
        format!("Dense {}→{}{}", self.n_inputs(), self.n_neurons(), if self.relu { " + ReLU" } else { "" })
    }

    fn shape_error(&self, what: &str, expected: String, got: String) -> Error {
        Error::ShapeMismatch { op: "Dense", expected: format!("{what} {expected} for {}", self.describe()), got }
    }

    fn check_inputs(&self, inputs: &MatRef<'_>) -> Result<()> {
        if self.n_inputs() == 0 || self.n_neurons() == 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: a Dense layer needs at least one input and one neuron",
                self.describe()
            )));
        }
        if inputs.cols() != self.n_inputs() {
            return Err(self.shape_error(
                "inputs with",
                format!("{} columns (batch × {})", self.n_inputs(), self.n_inputs()),
                format!("{}×{}", inputs.rows(), inputs.cols()),
            ));
        }
        Ok(())
    }

    /// `output = X·W + b` (then ReLU if fused), in one GEMM with the bias (and ReLU)
    /// applied in registers. `output` is resized to the batch.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `inputs` does not have `n_inputs` columns.
    pub fn forward(&mut self, inputs: MatRef<'_>) -> Result<()> {
        self.forward_on(inputs, self.threads(), false, None)
    }

    /// [`Self::forward`] on `threads` threads of the current pool (a model's choice);
    /// `finite_weights` and `inputs_map` as in [`Self::forward_into`].
    pub(crate) fn forward_on(
        &mut self,
        inputs: MatRef<'_>,
        threads: usize,
        finite_weights: bool,
        inputs_map: Option<NonzeroMapRef<'_>>,
    ) -> Result<()> {
        let mut output = std::mem::take(&mut self.output);
        let max = self.forward_into(inputs, &mut output, threads, finite_weights, inputs_map);
        self.output = output;
        self.output_max = max?;
        Ok(())
    }

    /// [`Self::forward`] into a buffer of the caller's (resized to the batch), leaving
    /// the layer as it is: what inference through a shared model uses. Returns the
    /// largest `|value|` stored, as bits (measured in the epilogue).
    ///
    /// `finite_weights`: the caller knows the weights finite (a model, from
    /// [`Self::weights_known_finite`]): the product then skips the zero inputs
    /// ([`GemmOptions::b_is_finite`]), read from `inputs_map` when the caller has the
    /// map of the inputs' zeros.
    pub(crate) fn forward_into(
        &self,
        inputs: MatRef<'_>,
        out: &mut Matrix,
        threads: usize,
        finite_weights: bool,
        inputs_map: Option<NonzeroMapRef<'_>>,
    ) -> Result<u32> {
        self.check_inputs(&inputs)?;
        out.resize(inputs.rows(), self.n_neurons());
        let epilogue = if self.relu { Epilogue::BiasRelu(&self.biases) } else { Epilogue::Bias(&self.biases) };
        let mut opts = self.gemm_on(threads);
        opts.b_is_finite = finite_weights;
        opts.b_is_weights = true;
        let a_map = inputs_map.map(|map| AMap { map, transposed: false });
        gemm_with_max(out.view_mut(), inputs, self.weights.view(), Accum::Overwrite, epilogue, a_map, &opts)
    }

    /// Whether the weights are known to be finite: the largest `|w|` recorded by the
    /// last fused update or measured since, and not invalidated (a model resets it when
    /// it hands its layers out mutably). A standalone layer's public `weights` may have
    /// changed since: only a model relies on this.
    pub(crate) fn weights_known_finite(&self) -> bool {
        self.maxima.is_some_and(|m| m[0] < f32::INFINITY.to_bits())
    }

    /// NNFS-style backward from `dvalues = ∂L/∂output` (through the fused ReLU if
    /// any), with `inputs` the same batch given to [`Self::forward`]. Computes
    /// `dweights`, `dbiases` and `dinputs`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not match the layer or each other.
    pub fn backward(&mut self, inputs: MatRef<'_>, dvalues: MatRef<'_>) -> Result<()> {
        self.backward_with(inputs, dvalues, Dinputs::Compute)
    }

    /// [`Self::backward`] with a choice of what to do about `dinputs`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not match the layer or each other.
    pub fn backward_with(&mut self, inputs: MatRef<'_>, dvalues: MatRef<'_>, dinputs: Dinputs<'_>) -> Result<()> {
        self.backward_with_on(inputs, dvalues, dinputs, self.threads())
    }

    /// [`Self::backward_with`] on `threads` threads of the current pool.
    pub(crate) fn backward_with_on(
        &mut self,
        inputs: MatRef<'_>,
        dvalues: MatRef<'_>,
        dinputs: Dinputs<'_>,
        threads: usize,
    ) -> Result<()> {
        if !self.relu {
            return self.backward_dz_on(inputs, dvalues, dinputs, threads);
        }
        self.through_relu(dvalues, |d, dz| d.backward_dz_on(inputs, dz, dinputs, threads))
    }

    /// Forms `dz = dvalues ⊙ 1[output > 0]` in this layer's own buffer (kept there for
    /// [`Self::with_dz`]) and calls `f` with it.
    fn through_relu(&mut self, dvalues: MatRef<'_>, f: impl FnOnce(&mut Self, MatRef<'_>) -> Result<()>) -> Result<()> {
        if dvalues.rows() != self.output.rows() || dvalues.cols() != self.n_neurons() {
            return Err(self.shape_error(
                "dvalues of shape",
                format!("{}×{} (the last output)", self.output.rows(), self.n_neurons()),
                format!("{}×{}", dvalues.rows(), dvalues.cols()),
            ));
        }
        let mut dz = std::mem::take(&mut self.dz);
        dz.resize(dvalues.rows(), self.n_neurons());
        let r = relu_backward(dvalues, self.output.view(), dz.view_mut()).and_then(|()| f(self, dz.view()));
        self.dz = dz;
        r
    }

    /// Backward from `dz = ∂L/∂(X·W + b)`, the gradient *before* this layer's ReLU
    /// (a softmax-CE output gives it directly; a layer above that applied this
    /// layer's ReLU mask in its own backward gives it too).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not match the layer or each other.
    pub fn backward_dz(&mut self, inputs: MatRef<'_>, dz: MatRef<'_>, dinputs: Dinputs<'_>) -> Result<()> {
        self.backward_dz_on(inputs, dz, dinputs, self.threads())
    }

    /// [`Self::backward_dz`] on `threads` threads of the current pool.
    pub(crate) fn backward_dz_on(
        &mut self,
        inputs: MatRef<'_>,
        dz: MatRef<'_>,
        dinputs: Dinputs<'_>,
        threads: usize,
    ) -> Result<()> {
        self.check_backward(&inputs, &dz, &dinputs)?;
        self.weight_gradients_on(inputs, dz, threads)?;
        self.dinputs_on(dz, dinputs, threads)
    }

    /// The shapes a backward from `dz` needs.
    fn check_backward(&self, inputs: &MatRef<'_>, dz: &MatRef<'_>, dinputs: &Dinputs<'_>) -> Result<()> {
        self.check_inputs(inputs)?;
        let batch = inputs.rows();
        if dz.rows() != batch || dz.cols() != self.n_neurons() {
            return Err(self.shape_error(
                "dz of shape",
                format!("{batch}×{} (batch × n_neurons)", self.n_neurons()),
                format!("{}×{}", dz.rows(), dz.cols()),
            ));
        }
        if let Dinputs::ComputeReluMasked(h) = dinputs {
            if h.rows() != batch || h.cols() != self.n_inputs() {
                return Err(self.shape_error(
                    "ReLU mask of shape",
                    format!("{batch}×{} (batch × n_inputs)", self.n_inputs()),
                    format!("{}×{}", h.rows(), h.cols()),
                ));
            }
        }
        Ok(())
    }

    /// `dweights = Xᵀ·dz` and `dbiases = colsum(dz)` in one GEMM, plus the penalties.
    /// Shapes checked by the caller.
    pub(crate) fn weight_gradients_on(&mut self, inputs: MatRef<'_>, dz: MatRef<'_>, threads: usize) -> Result<()> {
        let opts = self.gemm_on(threads);
        gemm_with(
            self.dweights.view_mut(),
            inputs.t(),
            dz,
            Accum::Overwrite,
            Epilogue::BiasGradB(&mut self.dbiases),
            &opts,
        )?;
        if !self.regularization.is_zero() {
            self.add_weight_penalty_gradients();
            self.add_bias_penalty_gradients();
        }
        Ok(())
    }

    /// `dinputs = dz·Wᵀ` (masked by the ReLU below when asked). Shapes checked by the
    /// caller.
    pub(crate) fn dinputs_on(&mut self, dz: MatRef<'_>, dinputs: Dinputs<'_>, threads: usize) -> Result<()> {
        let epilogue = match dinputs {
            Dinputs::Skip => return Ok(()),
            Dinputs::Compute => Epilogue::None,
            Dinputs::ComputeReluMasked(h) => Epilogue::ReluMask(h),
        };
        self.dinputs.resize(dz.rows(), self.n_inputs());
        let mut opts = self.gemm_on(threads);
        opts.b_is_weights = true;
        self.dinputs_max =
            gemm_with_max(self.dinputs.view_mut(), dz, self.weights.t(), Accum::Overwrite, epilogue, None, &opts)?;
        Ok(())
    }

    /// The backward of [`Self::backward_with`] without the weight gradients: forms
    /// `dz` from `grad` through this layer's ReLU when `own_relu` (into the layer's
    /// own buffer, read back by [`Self::with_dz`]), then `dinputs`.
    pub(crate) fn backward_dinputs_on(
        &mut self,
        inputs: MatRef<'_>,
        grad: MatRef<'_>,
        own_relu: bool,
        dinputs: Dinputs<'_>,
        threads: usize,
    ) -> Result<()> {
        let dinputs_from = |d: &mut Self, dz: MatRef<'_>| {
            d.check_backward(&inputs, &dz, &dinputs)?;
            d.dinputs_on(dz, dinputs, threads)
        };
        if own_relu {
            self.through_relu(grad, dinputs_from)
        } else {
            dinputs_from(self, grad)
        }
    }

    /// Calls `f` with this layer and its `dz`: `grad` itself, or, when `own_relu`,
    /// the masked copy [`Self::backward_dinputs_on`] left in the layer.
    pub(crate) fn with_dz<R>(
        &mut self,
        grad: MatRef<'_>,
        own_relu: bool,
        f: impl FnOnce(&mut Self, MatRef<'_>) -> R,
    ) -> R {
        if !own_relu {
            return f(self, grad);
        }
        let dz = std::mem::take(&mut self.dz);
        let r = f(self, dz.view());
        self.dz = dz;
        r
    }

    /// Backward from `dz` and the optimizer step in one: `dinputs` as
    /// [`Self::backward_dz`] computes it (from the weights before the step), then the
    /// weight gradient `Xᵀ·dz` is applied to the weights in the epilogue of the GEMM
    /// that computes it, tile by tile in registers, so that it is never stored; the
    /// biases are stepped in the same GEMM, each from `dbiases = colsum(dz)` as soon
    /// as its sum is complete. The parameters and optimizer state come out
    /// bit-identical to [`Self::backward_dz`] followed by [`Self::update_params`];
    /// `dweights` is not filled (it holds partial sums, or what it held before) and
    /// `dbiases` holds `colsum(dz)` without the penalty terms.
    ///
    /// ```
    /// use fusegrad::nn::{Dense, Dinputs, Init, Optimizer};
    /// use fusegrad::{Matrix, Rng};
    /// let mut rng = Rng::new(0);
    /// let mut fused = Dense::new(3, 2, Init::He, &mut rng);
    /// let mut twin = fused.clone();
    /// let x = Matrix::from_fn(4, 3, |i, j| (i * 3 + j) as f32 / 10.0);
    /// let dz = Matrix::from_fn(4, 2, |i, j| (i as f32 - j as f32) / 8.0);
    /// let adam = Optimizer::adam(0.01);
    /// fused.backward_update(x.view(), dz.view(), Dinputs::Compute, &adam, 0)?;
    /// twin.backward_dz(x.view(), dz.view(), Dinputs::Compute)?;
    /// twin.update_params(&adam, 0)?;
    /// assert_eq!(fused.weights.as_slice(), twin.weights.as_slice());
    /// assert_eq!((fused.biases.as_slice(), fused.dinputs.as_slice()), (twin.biases.as_slice(), twin.dinputs.as_slice()));
    /// # Ok::<(), fusegrad::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the shapes do not match the layer or each other;
    /// [`Error::NonFinite`] when a weight or optimizer state the step stored is NaN or
    /// infinite. That is found in the epilogue, after the step: the layer is then left
    /// stepped. ([`Sequential`](crate::nn::Sequential) proves a step finite before it
    /// runs it, and leaves the model untouched instead.)
    pub fn backward_update(
        &mut self,
        inputs: MatRef<'_>,
        dz: MatRef<'_>,
        dinputs: Dinputs<'_>,
        optimizer: &Optimizer,
        iterations: u64,
    ) -> Result<()> {
        let threads = self.threads();
        self.check_backward(&inputs, &dz, &dinputs)?;
        self.dinputs_on(dz, dinputs, threads)?;
        let maxima = self.update_fused_on(inputs, dz, optimizer, iterations, threads, false, None, None)?;
        if maxima.iter().flatten().any(|&m| m >= f32::INFINITY.to_bits()) {
            return Err(Error::NonFinite {
                step: iterations,
                layer: self.describe(),
                tensor: "weights or optimizer state after the fused update".into(),
            });
        }
        Ok(())
    }

    /// The fused weight-gradient GEMM and step of [`Self::backward_update`], with the
    /// bias step in the same GEMM; shapes checked by the caller. Returns the largest
    /// magnitudes stored (weights, state 0, state 1; then the same of the biases) as
    /// bits, the weights' also kept in `self.maxima`. `dz_finite`: the caller has proved
    /// `dz` finite (a model's guard), so the GEMM may skip the k steps where the inputs
    /// are ±0, found from `inputs_map` when the caller has the map of their zeros.
    ///
    /// `beside`, on two threads of the region this thread leads: the update runs as two
    /// products, the weight rows from about the middle on helper 1, the first rows here
    /// after `beside` (the other layers' updates, which the helper's rows then overlap),
    /// one thread each; every weight is computed as in one product (see
    /// [`update_in_halves`]), so the result is the same. `beside` is run exactly once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_fused_on(
        &mut self,
        inputs: MatRef<'_>,
        dz: MatRef<'_>,
        optimizer: &Optimizer,
        iterations: u64,
        threads: usize,
        dz_finite: bool,
        inputs_map: Option<NonzeroMapRef<'_>>,
        beside: Option<&mut dyn FnMut() -> Result<()>>,
    ) -> Result<[[u32; 3]; 2]> {
        let k = optimizer.state_buffers();
        if !self.state.weights.is_prepared(k, self.weights.as_slice().len()) {
            self.prepare_optimizer(optimizer);
        }
        let r = self.regularization;
        let penalties = !r.is_zero();
        let mut rule = UpdateRule {
            step: optimizer.fused_step(iterations),
            penalty: penalties.then_some((r.weight_l1, 2.0 * r.weight_l2)),
            skip_zero_rows: false,
        };
        // The rows of inputs that are ±0 in the whole batch are left alone where that is
        // exact (a batch of one: in its own pass; larger ones: the GEMM skips the row
        // panels whose inputs are all ±0 when dz is known finite); their weights are then
        // bounded by the maxima from before the step.
        let skips = if dz_finite {
            rule.zero_rows_exact_for_finite_dz()
        } else {
            inputs.rows() == 1 && dz.col_stride() == 1 && rule.zero_rows_exact(dz.row(0))
        };
        let before = if skips {
            rule.skip_zero_rows = true;
            Some(self.weight_maxima())
        } else {
            None
        };
        // The biases step in the same GEMM, from `dbiases` as soon as it is complete,
        // with their own penalties folded in as the separate pass adds them.
        let bias_rule =
            UpdateRule { penalty: penalties.then_some((r.bias_l1, 2.0 * r.bias_l2)), skip_zero_rows: false, ..rule };
        let mut opts = self.gemm_on(threads);
        opts.b_is_finite = dz_finite;
        let ParamState { first: b0, second: b1 } = &mut self.state.biases;
        let biases =
            ParamUpdate { rule: &bias_rule, params: &mut self.biases, s0: b0.as_mut_slice(), s1: b1.as_mut_slice() };
        let ParamState { first, second } = &mut self.state.weights;
        let (s0, s1) = (first.as_mut_slice(), second.as_mut_slice());
        let weights = ParamUpdate { rule: &rule, params: self.weights.as_mut_slice(), s0, s1 };
        let update = WeightUpdate { weights, biases: Some(biases) };
        let a_map = inputs_map.map(|map| AMap { map, transposed: true });
        let [mut maxima, bias_maxima] = match beside {
            None => gemm_update(self.dweights.view_mut(), inputs.t(), dz, &mut self.dbiases, update, a_map, &opts)?,
            Some(first) => {
                let scratch = self.dweights.as_mut_slice();
                update_in_halves(scratch, inputs.t(), dz, &mut self.dbiases, update, a_map, &opts, first)?
            }
        };
        if let Some(before) = before {
            maxima[0] = maxima[0].max(before[0]);
        }
        self.maxima = Some(maxima);
        Ok([maxima, bias_maxima])
    }

    /// The largest `|w|`, `|state 0|`, `|state 1|` of the weights, as bits: the ones
    /// the last fused update recorded, else measured now.
    pub(crate) fn weight_maxima(&mut self) -> [u32; 3] {
        if let Some(m) = self.maxima {
            return m;
        }
        let w = &self.state.weights;
        let m =
            [self.weights.as_slice(), w.first.as_slice(), w.second.as_slice()].map(crate::ops::reduce::max_abs_bits);
        self.maxima = Some(m);
        m
    }

    /// The largest `|b|`, `|state 0|`, `|state 1|` of the biases, as bits.
    pub(crate) fn bias_maxima(&self) -> [u32; 3] {
        let b = &self.state.biases;
        [self.biases.as_slice(), b.first.as_slice(), b.second.as_slice()].map(crate::ops::reduce::max_abs_bits)
    }

    fn add_weight_penalty_gradients(&mut self) {
        let r = self.regularization;
        for (d, &w) in self.dweights.as_mut_slice().iter_mut().zip(self.weights.as_slice()) {
            *d += r.weight_l1 * sign(w) + 2.0 * r.weight_l2 * w;
        }
    }

    fn add_bias_penalty_gradients(&mut self) {
        let r = self.regularization;
        for (d, &b) in self.dbiases.iter_mut().zip(&self.biases) {
            *d += r.bias_l1 * sign(b) + 2.0 * r.bias_l2 * b;
        }
    }

    /// The penalty this layer adds to the loss: `l1·Σ|w| + l2·Σw²` for weights and
    /// biases (summed in f64).
    pub fn regularization_loss(&self) -> f32 {
        let r = self.regularization;
        if r.is_zero() {
            return 0.0;
        }
        let l1 = |v: &[f32]| v.iter().map(|&x| (x as f64).abs()).sum::<f64>();
        let l2 = |v: &[f32]| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
        let (w, b) = (self.weights.as_slice(), self.biases.as_slice());
        (r.weight_l1 as f64 * l1(w) + r.weight_l2 as f64 * l2(w) + r.bias_l1 as f64 * l1(b) + r.bias_l2 as f64 * l2(b))
            as f32
    }

    /// Sizes the optimizer state for `optimizer` (zeros); called once when a model is
    /// built, so that updates never allocate.
    pub fn prepare_optimizer(&mut self, optimizer: &Optimizer) {
        let k = optimizer.state_buffers();
        self.state.weights.prepare(k, self.weights.as_slice().len());
        self.state.biases.prepare(k, self.biases.len());
    }

    /// Applies one `optimizer` step to the weights and biases (NNFS's
    /// `update_params`), `iterations` updates having been done before.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if the state was prepared for another optimizer.
    pub fn update_params(&mut self, optimizer: &Optimizer, iterations: u64) -> Result<()> {
        self.update_params_on(optimizer, iterations, self.threads())
    }

    /// [`Self::update_params`] with the weights' pass split over `threads` threads.
    pub(crate) fn update_params_on(&mut self, optimizer: &Optimizer, iterations: u64, threads: usize) -> Result<()> {
        self.maxima = None;
        let k = optimizer.state_buffers();
        if !self.state.weights.is_prepared(k, self.weights.as_slice().len()) {
            self.prepare_optimizer(optimizer);
        }
        let ParamState { first: w0, second: w1 } = &mut self.state.weights;
        let (w0, w1) = (w0.as_mut_slice(), w1.as_mut_slice());
        par_update(optimizer, self.weights.as_mut_slice(), self.dweights.as_slice(), w0, w1, iterations, threads)?;
        let ParamState { first: b0, second: b1 } = &mut self.state.biases;
        optimizer.update(&mut self.biases, &self.dbiases, b0.as_mut_slice(), b1.as_mut_slice(), iterations)
    }

    /// The optimizer state buffers, mutable, for loading a checkpoint: weights'
    /// first and second, biases' first and second.
    pub(crate) fn optimizer_state_mut(&mut self) -> [&mut [f32]; 4] {
        self.maxima = None;
        let (w, b) = (&mut self.state.weights, &mut self.state.biases);
        [w.first.as_mut_slice(), w.second.as_mut_slice(), b.first.as_mut_slice(), b.second.as_mut_slice()]
    }

    /// The optimizer state for tests and inspection: the weights' first and second
    /// buffer, then the biases' (empty where the optimizer keeps none).
    #[doc(hidden)]
    pub fn optimizer_state(&self) -> [&[f32]; 4] {
        let (w, b) = (&self.state.weights, &self.state.biases);
        [w.first.as_slice(), w.second.as_slice(), b.first.as_slice(), b.second.as_slice()]
    }
}

/// NNFS's sign for the L1 penalty: +1 at 0.
fn sign(x: f32) -> f32 {
    if x < 0.0 {
        -1.0
    } else {
        1.0
    }
}

/// The optimizer state of a layer (NNFS keeps it on the layer too).
/// `s` split at `mid`, or two empty halves when it is empty (a state buffer the
/// optimizer does not use).
fn halve(s: &mut [f32], mid: usize) -> (&mut [f32], &mut [f32]) {
    if s.is_empty() {
        (&mut [], &mut [])
    } else {
        s.split_at_mut(mid)
    }
}

/// The row where [`update_in_halves`] splits the weights: a multiple of every kernel's
/// tile rows (so that each row panel, and with it the k steps its tiles list, is the
/// one of a single product) and of a map word (64 inputs).
const HALVES_ALIGN: usize = 192;

/// `gemm_update` of `update` as two products over the rows of the weights (`a = Xᵀ`'s
/// rows): from the row nearest the middle on helper 1 of the region this thread leads,
/// the rows before it here, after `first`, on one thread each (the biases with the
/// first rows). A product computes each weight from its row of A and all of B alone,
/// so the halves store what one product stores. Returns the maxima of both.
#[allow(clippy::too_many_arguments)]
fn update_in_halves(
    scratch: &mut [f32],
    a: MatRef<'_>,
    b: MatRef<'_>,
    dbiases: &mut [f32],
    update: WeightUpdate<'_>,
    a_map: Option<AMap<'_>>,
    opts: &GemmOptions,
    first: &mut dyn FnMut() -> Result<()>,
) -> Result<[[u32; 3]; 2]> {
    let (m, n) = (a.rows(), b.cols());
    let split = (m / 2 + HALVES_ALIGN / 2) / HALVES_ALIGN * HALVES_ALIGN;
    let opts = opts.with_threads(1);
    if split == 0 || split >= m || scratch.len() != m * n {
        first()?;
        let c = crate::matrix::MatMut::new(scratch, m, n)?;
        return gemm_update(c, a, b, dbiases, update, a_map, &opts);
    }
    let WeightUpdate { weights: ParamUpdate { rule, params, s0, s1 }, biases } = update;
    let (w, c) = (params.split_at_mut(split * n), scratch.split_at_mut(split * n));
    let (s0, s1) = (halve(s0, split * n), halve(s1, split * n));
    // A = Xᵀ: its rows `..split` are the map's columns `..split`.
    let maps = a_map.map(|am| {
        let (top, rest) = am.map.split_columns(split);
        (AMap { map: top, ..am }, AMap { map: rest, ..am })
    });
    let (a_top, a_rest) = (a.submatrix(0, 0, split, a.cols())?, a.submatrix(split, 0, m - split, a.cols())?);
    let rest = std::sync::Mutex::new(Some((w.1, s0.1, s1.1, c.1)));
    let rest_result = std::sync::Mutex::new(None);
    let job = || {
        let Some((params, s0, s1, c)) = rest.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let update = WeightUpdate { weights: ParamUpdate { rule, params, s0, s1 }, biases: None };
        let r = crate::matrix::MatMut::new(c, m - split, n)
            .and_then(|c| gemm_update(c, a_rest, b, &mut [], update, maps.map(|m| m.1), &opts));
        *rest_result.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    let top = crate::runtime::region::beside(&job, || {
        first()?;
        let update = WeightUpdate { weights: ParamUpdate { rule, params: w.0, s0: s0.0, s1: s1.0 }, biases };
        let c = crate::matrix::MatMut::new(c.0, split, n)?;
        gemm_update(c, a_top, b, dbiases, update, maps.map(|m| m.0), &opts)
    });
    let rest = rest_result.into_inner().unwrap_or_else(|e| e.into_inner()).expect("the job ran");
    let ([w_top, bias], [w_rest, _]) = (top?, rest?);
    Ok([std::array::from_fn(|i| w_top[i].max(w_rest[i])), bias])
}

#[derive(Clone, Debug, Default)]
struct OptimizerState {
    weights: ParamState,
    biases: ParamState,
}

/// The state of one parameter buffer: `first` is SGD's momentum, AdaGrad's and
/// RMSprop's cache, Adam's first moment; `second` is Adam's second moment. A buffer
/// the optimizer does not use is empty.
#[derive(Clone, Debug, Default)]
struct ParamState {
    // Matrices (1 × len) for their 64-byte alignment: the fused update loads and
    // stores the weights' state tile by tile, like the weights themselves.
    first: Matrix,
    second: Matrix,
}

impl ParamState {
    /// Zeros for an optimizer with `buffers` state buffers over `len` parameters.
    fn prepare(&mut self, buffers: usize, len: usize) {
        for (i, s) in [&mut self.first, &mut self.second].into_iter().enumerate() {
            *s = Matrix::zeros(1, if i < buffers { len } else { 0 });
        }
    }

    fn is_prepared(&self, buffers: usize, len: usize) -> bool {
        let want = |i: usize| if i < buffers { len } else { 0 };
        self.first.as_slice().len() == want(0) && self.second.as_slice().len() == want(1)
    }
}
