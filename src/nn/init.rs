//! Weight initialisation from a seeded [`Rng`](crate::Rng).

use crate::matrix::Matrix;
use crate::rng::Rng;

/// How a Dense layer's weights start. Biases always start at zero, as in NNFS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Init {
    /// He (Kaiming) normal: `N(0, 2 / fan_in)`, for layers followed by ReLU.
    He,
    /// Xavier/Glorot uniform: `U(±√(6 / (fan_in + fan_out)))`, for linear, sigmoid and
    /// tanh layers.
    Xavier,
    /// NNFS's `0.01 · N(0, 1)`.
    Nnfs,
}

/// A `fan_in × fan_out` weight matrix drawn as `init` says.
pub fn init_weights(fan_in: usize, fan_out: usize, init: Init, rng: &mut Rng) -> Matrix {
    match init {
        Init::He => {
            let std = (2.0 / fan_in.max(1) as f32).sqrt();
            Matrix::from_fn(fan_in, fan_out, |_, _| std * rng.normal())
        }
        Init::Xavier => {
            let limit = (6.0 / (fan_in + fan_out).max(1) as f32).sqrt();
            Matrix::from_fn(fan_in, fan_out, |_, _| rng.uniform(-limit, limit))
        }
        Init::Nnfs => Matrix::from_fn(fan_in, fan_out, |_, _| 0.01 * rng.normal()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_of(m: &Matrix) -> f64 {
        let n = m.as_slice().len() as f64;
        let mean = m.as_slice().iter().map(|&x| x as f64).sum::<f64>() / n;
        (m.as_slice().iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    }

    #[test]
    fn scales_follow_the_formulas() {
        let mut rng = Rng::new(1);
        let he = init_weights(784, 128, Init::He, &mut rng);
        assert!((std_of(&he) - (2.0f64 / 784.0).sqrt()).abs() < 0.002, "{}", std_of(&he));
        let xa = init_weights(128, 64, Init::Xavier, &mut rng);
        let limit = (6.0f32 / 192.0).sqrt();
        assert!(xa.as_slice().iter().all(|&x| x.abs() <= limit));
        assert!((std_of(&xa) - limit as f64 / 3f64.sqrt()).abs() < 0.005);
        let a = init_weights(3, 4, Init::He, &mut Rng::new(9));
        let b = init_weights(3, 4, Init::He, &mut Rng::new(9));
        assert_eq!(a, b, "same seed, same weights");
    }
}
