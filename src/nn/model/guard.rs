//! The proof, before a fused step runs, that it cannot store a NaN or an infinity.
//!
//! A fused step writes the parameters while it computes their gradient, so a bad
//! value found afterwards could not be undone. Instead the step is bounded before it
//! runs, from magnitudes that are cheap to know: the largest input and `dz` of the
//! batch (one pass over each), and the largest parameter and state of the layer (kept
//! from the previous fused step, whose epilogue measured them). Every entry of
//! `dW = Xᵀ·dz` is at most `batch · max|X| · max|dz|`, and from there every quantity
//! the optimizer forms (squares, moments, the step, the new parameter) has a bound
//! computed here in f64. All finite inputs and every bound below `f32::MAX / 64` (the
//! margin covers f32 rounding in a sum of up to millions of terms) means no operation
//! overflows, and with no infinity no NaN can arise either (the only divisions are by
//! `√c + ε` with `ε > 0`, the only roots of non-negative caches). When the proof fails
//! (a non-finite input or `dz`, or magnitudes near overflow) the model runs the step
//! the unfused way, which checks the gradients before it updates anything.

use crate::nn::optim::Optimizer;
use crate::nn::Regularization;

/// Past this, a bound is too close to `f32::MAX` to trust.
const LIMIT: f64 = f32::MAX as f64 / 64.0;

/// What one Dense layer's step is bounded from: magnitudes as bits (see
/// `ops::reduce::max_abs_bits`).
pub(super) struct LayerMagnitudes {
    pub batch: usize,
    pub inputs: u32,
    pub dz: u32,
    /// Weights, state 0, state 1.
    pub weights: [u32; 3],
    /// Biases, state 0, state 1.
    pub biases: [u32; 3],
}

fn value(bits: u32) -> Option<f64> {
    let v = f32::from_bits(bits);
    v.is_finite().then_some(v as f64)
}

/// Whether the fused step of `optimizer` after `iterations` updates, with penalties
/// `reg`, provably stores only finite weights, biases and state.
pub(super) fn step_stays_finite(
    optimizer: &Optimizer,
    iterations: u64,
    reg: &Regularization,
    m: &LayerMagnitudes,
) -> bool {
    let (Some(x), Some(dz)) = (value(m.inputs), value(m.dz)) else { return false };
    let batch = m.batch as f64;
    let penalties = *reg != Regularization::default();
    let groups =
        [(batch * x * dz, m.weights, reg.weight_l1, reg.weight_l2), (batch * dz, m.biases, reg.bias_l1, reg.bias_l2)];
    groups.into_iter().all(|(grad, maxima, l1, l2)| {
        let [Some(p), Some(s0), Some(s1)] = maxima.map(value) else { return false };
        let g = if penalties { grad + l1.abs() as f64 + 2.0 * (l2.abs() as f64) * p } else { grad };
        step_bounds(optimizer, iterations, g, p, s0, s1).into_iter().all(|b| b.is_finite() && b < LIMIT)
    })
}

/// Bounds on every intermediate of one step from gradient magnitude `g`, parameter
/// magnitude `p` and state magnitudes `s0`, `s1` (unused slots 0).
fn step_bounds(optimizer: &Optimizer, iterations: u64, g: f64, p: f64, s0: f64, s1: f64) -> [f64; 10] {
    let lr = optimizer.current_learning_rate(iterations) as f64;
    let (step, more) = match *optimizer {
        Optimizer::Sgd { momentum, .. } => (momentum as f64 * s0 + lr * g, [0.0; 6]),
        Optimizer::Adagrad { epsilon, .. } => (lr * g / epsilon as f64, [g * g, s0 + g * g, 0.0, 0.0, 0.0, 0.0]),
        Optimizer::RmsProp { epsilon, rho, .. } => {
            (lr * g / epsilon as f64, [g * g, rho as f64 * s0 + g * g, 0.0, 0.0, 0.0, 0.0])
        }
        Optimizer::Adam { epsilon, beta1, beta2, .. } => {
            let (c1, c2) = crate::ops::update::adam_corrections(beta1, beta2, iterations + 1);
            let m = beta1 as f64 * s0 + g;
            let v = beta2 as f64 * s1 + g * g;
            let m_hat = m * c1 as f64;
            (lr * m_hat / epsilon as f64, [g * g, m, v, m_hat, v * c2 as f64, lr * m_hat])
        }
    };
    let [a, b, c, d, e, f] = more;
    [g, lr * g, step, p + step, a, b, c, d, e, f]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn magnitudes(inputs: f32, dz: f32, w: f32) -> LayerMagnitudes {
        let bits = |v: f32| v.abs().to_bits();
        LayerMagnitudes { batch: 128, inputs: bits(inputs), dz: bits(dz), weights: [bits(w), 0, 0], biases: [0; 3] }
    }

    #[test]
    fn ordinary_steps_are_proved_and_extreme_ones_are_not() {
        let reg = Regularization::default();
        for opt in
            [Optimizer::sgd(1.0), Optimizer::sgd_momentum(0.1, 0.9), Optimizer::adam(0.001), Optimizer::adagrad(1.0)]
        {
            assert!(step_stays_finite(&opt, 0, &reg, &magnitudes(255.0, 1.0, 3.0)), "{}", opt.name());
            assert!(!step_stays_finite(&opt, 0, &reg, &magnitudes(f32::NAN, 1.0, 3.0)), "{}", opt.name());
            assert!(!step_stays_finite(&opt, 0, &reg, &magnitudes(1.0, f32::INFINITY, 3.0)), "{}", opt.name());
            assert!(!step_stays_finite(&opt, 0, &reg, &magnitudes(1.0, 1.0, f32::MAX)), "{}", opt.name());
            assert!(!step_stays_finite(&opt, 0, &reg, &magnitudes(1e30, 1e10, 1.0)), "{}", opt.name());
        }
        // A square that would overflow f32 although the gradient itself does not.
        assert!(step_stays_finite(&Optimizer::sgd(1e-3), 0, &reg, &magnitudes(1e18, 1.0, 1.0)));
        assert!(!step_stays_finite(&Optimizer::adam(1e-3), 0, &reg, &magnitudes(1e18, 1.0, 1.0)));
    }
}
