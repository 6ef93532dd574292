//! Optimizers as NNFS has them (chapter 10), with its defaults: learning-rate decay
//! `lr / (1 + decay · iterations)`, SGD with momentum, AdaGrad, RMSprop and Adam.
//! The state (momentums, caches) lives beside each parameter in its layer, as in the
//! book; the update itself is one pass per buffer ([`ops::update`](crate::ops::update)).

use crate::error::{Error, Result};
use crate::gemm::Step;
use crate::ops::update;

/// An optimizer and its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Optimizer {
    /// `p −= lr·g`, or with momentum `m = μm − lr·g; p += m`. NNFS defaults: lr 1.0.
    #[non_exhaustive]
    Sgd {
        /// Initial learning rate.
        learning_rate: f32,
        /// Learning-rate decay per iteration.
        decay: f32,
        /// Momentum μ (0 = plain SGD).
        momentum: f32,
    },
    /// AdaGrad. NNFS defaults: lr 1.0, ε 1e-7.
    #[non_exhaustive]
    Adagrad {
        /// Initial learning rate.
        learning_rate: f32,
        /// Learning-rate decay per iteration.
        decay: f32,
        /// Added to the root of the cache.
        epsilon: f32,
    },
    /// RMSprop. NNFS defaults: lr 0.001, ε 1e-7, ρ 0.9.
    #[non_exhaustive]
    RmsProp {
        /// Initial learning rate.
        learning_rate: f32,
        /// Learning-rate decay per iteration.
        decay: f32,
        /// Added to the root of the cache.
        epsilon: f32,
        /// Cache decay ρ.
        rho: f32,
    },
    /// Adam with bias correction. NNFS defaults: lr 0.001, ε 1e-7, β₁ 0.9, β₂ 0.999.
    #[non_exhaustive]
    Adam {
        /// Initial learning rate.
        learning_rate: f32,
        /// Learning-rate decay per iteration.
        decay: f32,
        /// Added to `√v̂` (1e-7 as in NNFS, not PyTorch's 1e-8).
        epsilon: f32,
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
    },
}

impl Optimizer {
    /// Plain SGD with learning rate `learning_rate`.
    pub fn sgd(learning_rate: f32) -> Self {
        Optimizer::Sgd { learning_rate, decay: 0.0, momentum: 0.0 }
    }
    /// SGD with momentum.
    pub fn sgd_momentum(learning_rate: f32, momentum: f32) -> Self {
        Optimizer::Sgd { learning_rate, decay: 0.0, momentum }
    }
    /// AdaGrad with NNFS's ε.
    pub fn adagrad(learning_rate: f32) -> Self {
        Optimizer::Adagrad { learning_rate, decay: 0.0, epsilon: 1e-7 }
    }
    /// RMSprop with NNFS's ε and ρ.
    pub fn rmsprop(learning_rate: f32) -> Self {
        Optimizer::RmsProp { learning_rate, decay: 0.0, epsilon: 1e-7, rho: 0.9 }
    }
    /// Adam with NNFS's ε, β₁, β₂.
    pub fn adam(learning_rate: f32) -> Self {
        Optimizer::Adam { learning_rate, decay: 0.0, epsilon: 1e-7, beta1: 0.9, beta2: 0.999 }
    }

    /// The same optimizer with learning-rate decay.
    pub fn with_decay(mut self, d: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { decay, .. }
            | Optimizer::Adagrad { decay, .. }
            | Optimizer::RmsProp { decay, .. }
            | Optimizer::Adam { decay, .. } => *decay = d,
        }
        self
    }

    /// The same SGD with momentum `m`.
    ///
    /// # Panics
    /// When `self` is not SGD (only SGD has momentum).
    pub fn with_momentum(mut self, m: f32) -> Self {
        match &mut self {
            Optimizer::Sgd { momentum, .. } => *momentum = m,
            other => panic!("with_momentum: {} has no momentum (only Optimizer::Sgd has)", other.name()),
        }
        self
    }

    /// The same optimizer with `e` added to the root of its cache.
    ///
    /// # Panics
    /// When `self` is SGD (which has no ε).
    pub fn with_epsilon(mut self, e: f32) -> Self {
        match &mut self {
            Optimizer::Adagrad { epsilon, .. }
            | Optimizer::RmsProp { epsilon, .. }
            | Optimizer::Adam { epsilon, .. } => *epsilon = e,
            other => panic!("with_epsilon: {} has no epsilon", other.name()),
        }
        self
    }

    /// The same RMSprop with cache decay ρ.
    ///
    /// # Panics
    /// When `self` is not RMSprop.
    pub fn with_rho(mut self, r: f32) -> Self {
        match &mut self {
            Optimizer::RmsProp { rho, .. } => *rho = r,
            other => panic!("with_rho: {} has no rho (only Optimizer::RmsProp has)", other.name()),
        }
        self
    }

    /// The same Adam with moment decays β₁, β₂.
    ///
    /// # Panics
    /// When `self` is not Adam.
    pub fn with_betas(mut self, b1: f32, b2: f32) -> Self {
        match &mut self {
            Optimizer::Adam { beta1, beta2, .. } => (*beta1, *beta2) = (b1, b2),
            other => panic!("with_betas: {} has no betas (only Optimizer::Adam has)", other.name()),
        }
        self
    }

    /// The optimizer's name as NNFS spells its class: `SGD`, `Adagrad`, `RMSprop`, `Adam`.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "SGD",
            Optimizer::Adagrad { .. } => "Adagrad",
            Optimizer::RmsProp { .. } => "RMSprop",
            Optimizer::Adam { .. } => "Adam",
        }
    }

    fn base(&self) -> (f32, f32) {
        match *self {
            Optimizer::Sgd { learning_rate, decay, .. }
            | Optimizer::Adagrad { learning_rate, decay, .. }
            | Optimizer::RmsProp { learning_rate, decay, .. }
            | Optimizer::Adam { learning_rate, decay, .. } => (learning_rate, decay),
        }
    }

    /// The learning rate at `iterations` updates: `lr · 1 / (1 + decay · iterations)`.
    pub fn current_learning_rate(&self, iterations: u64) -> f32 {
        let (lr, decay) = self.base();
        if decay == 0.0 {
            lr
        } else {
            lr * (1.0 / (1.0 + decay * iterations as f32))
        }
    }

    /// This optimizer as it steps after `iterations` updates under `schedule`: the
    /// scheduled learning rate, with the decay already applied (so decay 0). With the
    /// constant schedule, `self` unchanged.
    pub(crate) fn at_step(&self, iterations: u64, schedule: &super::Schedule) -> Optimizer {
        if schedule.is_constant() {
            return *self;
        }
        let lr = self.current_learning_rate(iterations) * schedule.factor(iterations);
        let mut o = *self;
        match &mut o {
            Optimizer::Sgd { learning_rate, decay, .. }
            | Optimizer::Adagrad { learning_rate, decay, .. }
            | Optimizer::RmsProp { learning_rate, decay, .. }
            | Optimizer::Adam { learning_rate, decay, .. } => (*learning_rate, *decay) = (lr, 0.0),
        }
        o
    }

    /// Checks every hyperparameter.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the parameter and its valid range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f32, range: &str| {
            Err(Error::InvalidArgument(format!("optimizer {what} must be {range}, got {v}")))
        };
        let (lr, decay) = self.base();
        if !(lr.is_finite() && lr > 0.0) {
            return bad("learning rate", lr, "finite and > 0");
        }
        if !(decay.is_finite() && decay >= 0.0) {
            return bad("decay", decay, "finite and ≥ 0");
        }
        match *self {
            Optimizer::Sgd { momentum, .. } if !(0.0..1.0).contains(&momentum) => {
                bad("momentum", momentum, "in [0, 1)")
            }
            Optimizer::Adagrad { epsilon, .. }
            | Optimizer::RmsProp { epsilon, .. }
            | Optimizer::Adam { epsilon, .. }
                if !(epsilon.is_finite() && epsilon > 0.0) =>
            {
                bad("epsilon", epsilon, "finite and > 0")
            }
            Optimizer::RmsProp { rho, .. } if !(0.0..1.0).contains(&rho) => bad("rho", rho, "in [0, 1)"),
            Optimizer::Adam { beta1, .. } if !(0.0..1.0).contains(&beta1) => bad("beta1", beta1, "in [0, 1)"),
            Optimizer::Adam { beta2, .. } if !(0.0..1.0).contains(&beta2) => bad("beta2", beta2, "in [0, 1)"),
            _ => Ok(()),
        }
    }

    /// Number of state buffers per parameter (momentum; cache; Adam's m and v).
    pub(crate) fn state_buffers(&self) -> usize {
        match *self {
            Optimizer::Sgd { momentum: 0.0, .. } => 0,
            Optimizer::Sgd { .. } | Optimizer::Adagrad { .. } | Optimizer::RmsProp { .. } => 1,
            Optimizer::Adam { .. } => 2,
        }
    }

    /// The step the fused update epilogue applies at `iterations` updates: the same
    /// rule and constants as [`Self::update`].
    pub(crate) fn fused_step(&self, iterations: u64) -> Step {
        let lr = self.current_learning_rate(iterations);
        match *self {
            Optimizer::Sgd { momentum: 0.0, .. } => Step::Sgd { lr },
            Optimizer::Sgd { momentum, .. } => Step::Momentum { lr, momentum },
            Optimizer::Adagrad { epsilon, .. } => Step::Adagrad { lr, epsilon },
            Optimizer::RmsProp { epsilon, rho, .. } => Step::RmsProp { lr, rho, epsilon },
            Optimizer::Adam { epsilon, beta1, beta2, .. } => {
                let (corr1, corr2) = update::adam_corrections(beta1, beta2, iterations + 1);
                Step::Adam { lr, beta1, beta2, epsilon, corr1, corr2 }
            }
        }
    }

    /// One update of `params` by `grads` with this optimizer's state `s0`, `s1`
    /// (sized by [`Self::state_buffers`]); `iterations` updates have been done before.
    pub(crate) fn update(
        &self,
        params: &mut [f32],
        grads: &[f32],
        s0: &mut [f32],
        s1: &mut [f32],
        iterations: u64,
    ) -> Result<()> {
        let lr = self.current_learning_rate(iterations);
        match *self {
            Optimizer::Sgd { momentum: 0.0, .. } => update::sgd(params, grads, lr),
            Optimizer::Sgd { momentum, .. } => update::sgd_momentum(params, grads, s0, lr, momentum),
            Optimizer::Adagrad { epsilon, .. } => update::adagrad(params, grads, s0, lr, epsilon),
            Optimizer::RmsProp { epsilon, rho, .. } => update::rmsprop(params, grads, s0, lr, rho, epsilon),
            Optimizer::Adam { epsilon, beta1, beta2, .. } => {
                update::adam(params, grads, s0, s1, update::AdamStep { lr, beta1, beta2, epsilon, t: iterations + 1 })
            }
        }
    }
}
