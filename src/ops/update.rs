//! Optimizer updates, each one pass over a parameter buffer and its gradient (and its
//! state), written as zipped slice loops that the compiler vectorises. The formulas are
//! NNFS's (chapter 10); the learning rate passed in is the *current* one, after decay.
//!
//! The naive twins, step by step in f64, live in `tests/optim.rs`.

use super::check_len;
use crate::error::Result;

fn check(op: &'static str, params: &[f32], others: &[(&str, usize)]) -> Result<()> {
    for &(what, len) in others {
        check_len(op, what, params.len(), len)?;
    }
    Ok(())
}

/// Plain SGD: `p −= lr · g`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the lengths differ.
pub fn sgd(params: &mut [f32], grads: &[f32], lr: f32) -> Result<()> {
    check("sgd", params, &[("grads", grads.len())])?;
    for (p, &g) in params.iter_mut().zip(grads) {
        *p -= lr * g;
    }
    Ok(())
}

/// SGD with momentum: `m = momentum · m − lr · g; p += m`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the lengths differ.
pub fn sgd_momentum(params: &mut [f32], grads: &[f32], momentums: &mut [f32], lr: f32, momentum: f32) -> Result<()> {
    check("sgd_momentum", params, &[("grads", grads.len()), ("momentums", momentums.len())])?;
    for ((p, &g), m) in params.iter_mut().zip(grads).zip(momentums.iter_mut()) {
        *m = momentum * *m - lr * g;
        *p += *m;
    }
    Ok(())
}

/// AdaGrad: `c += g²; p −= lr · g / (√c + ε)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the lengths differ.
pub fn adagrad(params: &mut [f32], grads: &[f32], cache: &mut [f32], lr: f32, epsilon: f32) -> Result<()> {
    check("adagrad", params, &[("grads", grads.len()), ("cache", cache.len())])?;
    for ((p, &g), c) in params.iter_mut().zip(grads).zip(cache.iter_mut()) {
        *c += g * g;
        *p -= lr * g / (c.sqrt() + epsilon);
    }
    Ok(())
}

/// RMSprop: `c = ρ · c + (1 − ρ) · g²; p −= lr · g / (√c + ε)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the lengths differ.
pub fn rmsprop(params: &mut [f32], grads: &[f32], cache: &mut [f32], lr: f32, rho: f32, epsilon: f32) -> Result<()> {
    check("rmsprop", params, &[("grads", grads.len()), ("cache", cache.len())])?;
    for ((p, &g), c) in params.iter_mut().zip(grads).zip(cache.iter_mut()) {
        *c = rho * *c + (1.0 - rho) * g * g;
        *p -= lr * g / (c.sqrt() + epsilon);
    }
    Ok(())
}

/// Hyperparameters of one Adam step: [`AdamStep::new`] gives NNFS's β₁, β₂ and ε
/// (`#[non_exhaustive]`: change them with the `with_*` setters).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct AdamStep {
    /// Current learning rate (after decay).
    pub lr: f32,
    /// First-moment decay (NNFS default 0.9).
    pub beta1: f32,
    /// Second-moment decay (NNFS default 0.999).
    pub beta2: f32,
    /// Added to `√v̂` (NNFS default 1e-7, not PyTorch's 1e-8).
    pub epsilon: f32,
    /// 1-based step number `t`, for the bias corrections `1 − βᵗ`.
    pub t: u64,
}

impl AdamStep {
    /// Step `t` (1-based) at learning rate `lr`, with β₁ 0.9, β₂ 0.999 and ε 1e-7.
    pub fn new(lr: f32, t: u64) -> Self {
        AdamStep { lr, beta1: 0.9, beta2: 0.999, epsilon: 1e-7, t }
    }
    /// The moment decays β₁ and β₂.
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> Self {
        self.beta1 = beta1;
        self.beta2 = beta2;
        self
    }
    /// The ε added to `√v̂`.
    pub fn with_epsilon(mut self, epsilon: f32) -> Self {
        self.epsilon = epsilon;
        self
    }
}

/// Adam: `m = β₁m + (1 − β₁)g; v = β₂v + (1 − β₂)g²;
/// p −= lr · m̂ / (√v̂ + ε)` with `m̂ = m / (1 − β₁ᵗ)`, `v̂ = v / (1 − β₂ᵗ)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the lengths differ.
pub fn adam(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], step: AdamStep) -> Result<()> {
    check("adam", params, &[("grads", grads.len()), ("m", m.len()), ("v", v.len())])?;
    let AdamStep { lr, beta1, beta2, epsilon, t } = step;
    let (corr1, corr2) = adam_corrections(beta1, beta2, t);
    for (((p, &g), mi), vi) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
        *mi = beta1 * *mi + (1.0 - beta1) * g;
        *vi = beta2 * *vi + (1.0 - beta2) * g * g;
        *p -= lr * (*mi * corr1) / ((*vi * corr2).sqrt() + epsilon);
    }
    Ok(())
}

/// Adam's bias-correction factors `1 / (1 − β₁ᵗ)` and `1 / (1 − β₂ᵗ)` at step `t`
/// (1-based), as every Adam pass and the fused update compute them.
pub(crate) fn adam_corrections(beta1: f32, beta2: f32, t: u64) -> (f32, f32) {
    let t = t.min(i32::MAX as u64) as i32;
    (1.0 / (1.0 - (beta1 as f64).powi(t)) as f32, 1.0 / (1.0 - (beta2 as f64).powi(t)) as f32)
}
