//! NNFS's spiral data set (chapter 3, `nnfs.datasets.spiral_data`), seeded.

use crate::matrix::Matrix;
use crate::rng::Rng;

/// `classes` interleaved spiral arms of `samples_per_class` points each: returns
/// the points (samples × 2) and their class indices, class by class, as NNFS does:
/// radius `r` from 0 to 1, angle `t` from `4c` to `4(c + 1)` plus `N(0, 0.2)` noise,
/// point `(r·sin(2.5t), r·cos(2.5t))`.
pub fn spiral(samples_per_class: usize, classes: usize, seed: u64) -> (Matrix, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let n = samples_per_class * classes;
    let mut x = Matrix::zeros(n, 2);
    let mut y = Vec::with_capacity(n);
    let step = |i: usize| if samples_per_class > 1 { i as f32 / (samples_per_class - 1) as f32 } else { 0.0 };
    for c in 0..classes {
        for i in 0..samples_per_class {
            let r = step(i);
            let t = c as f32 * 4.0 + 4.0 * step(i) + 0.2 * rng.normal();
            let row = x.row_mut(c * samples_per_class + i);
            row[0] = r * (t * 2.5).sin();
            row[1] = r * (t * 2.5).cos();
            y.push(c);
        }
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_labels_and_radius() {
        let (x, y) = spiral(100, 3, 0);
        assert_eq!((x.rows(), x.cols(), y.len()), (300, 2, 300));
        assert_eq!(y.iter().filter(|&&c| c == 2).count(), 100);
        for i in 0..300 {
            let r = (x[(i, 0)].powi(2) + x[(i, 1)].powi(2)).sqrt();
            let expected = (i % 100) as f32 / 99.0;
            assert!((r - expected).abs() < 1e-5, "point {i}: radius {r}, expected {expected}");
        }
        assert_eq!(spiral(10, 2, 5), spiral(10, 2, 5));
        assert_ne!(spiral(10, 2, 5).0, spiral(10, 2, 6).0);
    }
}
