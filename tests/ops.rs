//! The row/element kernels against their naive twins, and their backward passes
//! against numerical gradients: central differences in f64 of the twin's forward
//! (NNFS chapter 7), `(f(x + h) − f(x − h)) / 2h`, compared with the f32 analytic
//! gradient under a relative bound.

mod common;

use common::{numerical_grad, Rng};
use fusegrad::ops::{activation, loss, reduce, softmax_ce};
use fusegrad::{Error, MatMut, MatRef, Matrix};

fn mat(rng: &mut Rng, rows: usize, cols: usize, lo: f32, hi: f32) -> Matrix {
    Matrix::from_fn(rows, cols, |_, _| rng.uniform(lo, hi))
}

fn to_f64(m: &Matrix) -> Vec<f64> {
    m.as_slice().iter().map(|&x| x as f64).collect()
}

/// The ops' tolerance: 1e-3 relative, floor 1e-5 of the largest entry.
fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f64]) {
    common::assert_grad_close(what, analytic, numeric, 1e-3, 1e-5);
}

fn assert_close(what: &str, fast: &[f32], reference: &[f64], rel: f64) {
    for (i, (&f, &r)) in fast.iter().zip(reference).enumerate() {
        assert!((f as f64 - r).abs() <= rel * (1.0 + r.abs()), "{what}[{i}]: {f} vs reference {r}");
    }
}

type Forward = fn(MatRef<'_>, MatMut<'_>) -> fusegrad::Result<()>;
type Backward = fn(MatRef<'_>, MatRef<'_>, MatMut<'_>) -> fusegrad::Result<()>;

/// Forward against the twin, and backward against the numerical gradient of
/// `L(x) = Σ r ⊙ act(x)` for random upstream gradients r.
fn check_activation(name: &str, fwd: Forward, bwd: Backward, twin: &dyn Fn(&[f64]) -> Vec<f64>, x: Matrix, seed: u64) {
    let mut rng = Rng::new(seed);
    let (rows, cols) = (x.rows(), x.cols());
    let mut out = Matrix::zeros(rows, cols);
    fwd(x.view(), out.view_mut()).unwrap();
    assert_close(&format!("{name} forward"), out.as_slice(), &twin(&to_f64(&x)), 1e-6);

    let r = mat(&mut rng, rows, cols, -1.0, 1.0);
    let r64 = to_f64(&r);
    let mut dinputs = Matrix::from_fn(rows, cols, |_, _| f32::NAN);
    bwd(r.view(), out.view(), dinputs.view_mut()).unwrap();
    let numeric = numerical_grad(&to_f64(&x), |x| twin(x).iter().zip(&r64).map(|(a, b)| a * b).sum());
    assert_grad_close(&format!("{name} backward"), dinputs.as_slice(), &numeric);
}

#[test]
fn activations_match_twins_and_numerical_gradients() {
    let mut rng = Rng::new(10);
    // ReLU: keep inputs away from the kink at 0, where the derivative jumps.
    let x = Matrix::from_fn(7, 13, |_, _| {
        let v = rng.uniform(0.05, 2.0);
        if rng.below(2) == 0 {
            v
        } else {
            -v
        }
    });
    check_activation("relu", activation::relu_forward, activation::relu_backward, &activation::naive::relu, x, 1);
    let x = mat(&mut rng, 5, 9, -4.0, 4.0);
    check_activation(
        "sigmoid",
        activation::sigmoid_forward,
        activation::sigmoid_backward,
        &activation::naive::sigmoid,
        x,
        2,
    );
    let x = mat(&mut rng, 6, 4, -2.0, 2.0);
    check_activation("tanh", activation::tanh_forward, activation::tanh_backward, &activation::naive::tanh, x, 3);
    let x = mat(&mut rng, 4, 10, -3.0, 3.0);
    let softmax10 = |v: &[f64]| activation::naive::softmax(v, 10);
    check_activation("softmax", activation::softmax_forward, activation::softmax_backward, &softmax10, x, 4);
}

#[test]
fn softmax_backward_equals_the_full_jacobian_product() {
    let mut rng = Rng::new(11);
    let x = mat(&mut rng, 3, 7, -2.0, 2.0);
    let d = mat(&mut rng, 3, 7, -1.0, 1.0);
    let mut s = Matrix::zeros(3, 7);
    activation::softmax_forward(x.view(), s.view_mut()).unwrap();
    let mut din = Matrix::zeros(3, 7);
    activation::softmax_backward(d.view(), s.view(), din.view_mut()).unwrap();
    let reference = activation::naive::softmax_backward(&to_f64(&d), &to_f64(&s), 7);
    assert_close("softmax jacobian", din.as_slice(), &reference, 1e-6);
}

#[test]
fn relu_lets_nan_through() {
    let x = Matrix::from_vec(1, 3, vec![f32::NAN, -1.0, 2.0]).unwrap();
    let mut out = Matrix::zeros(1, 3);
    activation::relu_forward(x.view(), out.view_mut()).unwrap();
    assert!(out[(0, 0)].is_nan());
    assert_eq!(&out.as_slice()[1..], &[0.0, 2.0]);
}

#[test]
fn softmax_ce_matches_twin_and_numerical_gradient() {
    let mut rng = Rng::new(12);
    // Rows in blocks of 16 and a partial block; classes up to 16 and past it.
    for (n, c) in [(1, 2), (5, 10), (17, 3), (128, 10), (33, 10), (20, 16), (20, 17)] {
        let z = mat(&mut rng, n, c, -5.0, 5.0);
        let labels: Vec<usize> = (0..n).map(|_| rng.below(c)).collect();
        let (mut d, mut d_twin) = (Matrix::from_fn(n, c, |_, _| f32::NAN), Matrix::zeros(n, c));
        let fast = softmax_ce::softmax_cross_entropy(z.view(), &labels, Some(d.view_mut())).unwrap();
        let twin = softmax_ce::softmax_cross_entropy_naive(z.view(), &labels, Some(d_twin.view_mut())).unwrap();
        assert!((fast.loss - twin.loss).abs() <= 1e-5 * (1.0 + twin.loss.abs()), "{n}×{c}: {fast:?} vs {twin:?}");
        assert_eq!(fast.correct, twin.correct, "{n}×{c}");
        let reference: Vec<f64> = to_f64(&d_twin);
        assert_close("dlogits", d.as_slice(), &reference, 1e-6);
        // The loss without a gradient buffer is the same pass.
        let no_grad = softmax_ce::softmax_cross_entropy(z.view(), &labels, None).unwrap();
        assert_eq!(no_grad, fast);
        if n <= 17 {
            // The twin returns an f32 loss, too coarse for differences of 1e-5: the
            // numerical gradient uses the same formula in f64 directly.
            let numeric = numerical_grad(&to_f64(&z), |zz| {
                (0..n)
                    .map(|i| {
                        let row = &zz[i * c..(i + 1) * c];
                        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let lse = max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
                        lse - row[labels[i]]
                    })
                    .sum::<f64>()
                    / n as f64
            });
            assert_grad_close("softmax-CE dlogits", d.as_slice(), &numeric);
        }
    }
}

#[test]
fn softmax_ce_reads_and_writes_strided_rows_and_lets_nan_through() {
    let mut rng = Rng::new(31);
    let (n, c) = (37, 10);
    // Logits and gradient as the first 10 columns of 13-wide matrices.
    let wide = mat(&mut rng, n, c + 3, -4.0, 4.0);
    let labels: Vec<usize> = (0..n).map(|_| rng.below(c)).collect();
    let logits = wide.view().submatrix(0, 0, n, c).unwrap();
    let mut d_wide = Matrix::from_fn(n, c + 3, |_, _| f32::NAN);
    let fast =
        softmax_ce::softmax_cross_entropy(logits, &labels, Some(d_wide.view_mut().submatrix(0, 0, n, c).unwrap()))
            .unwrap();
    let dense = logits.to_matrix();
    let mut d_twin = Matrix::zeros(n, c);
    let twin = softmax_ce::softmax_cross_entropy_naive(dense.view(), &labels, Some(d_twin.view_mut())).unwrap();
    assert!((fast.loss - twin.loss).abs() <= 1e-5 * (1.0 + twin.loss.abs()), "{fast:?} vs {twin:?}");
    assert_eq!(fast.correct, twin.correct);
    for i in 0..n {
        let reference: Vec<f64> = d_twin.row(i).iter().map(|&v| v as f64).collect();
        assert_close("strided dlogits", &d_wide.row(i)[..c], &reference, 1e-6);
        assert!(d_wide.row(i)[c..].iter().all(|v| v.is_nan()), "row {i}: wrote past the view's columns");
    }
    // A NaN logit in the middle of a block makes the loss NaN (the training guard's cue).
    let mut bad = dense.clone();
    bad[(21, 4)] = f32::NAN;
    let s = softmax_ce::softmax_cross_entropy(bad.view(), &labels, None).unwrap();
    assert!(s.loss.is_nan(), "{s:?}");
}

#[test]
fn softmax_ce_is_stable_for_huge_logits() {
    // exp(1000) overflows f32; shifting by the row max keeps it exact.
    let z = Matrix::from_vec(2, 3, vec![1000.0, 0.0, -1000.0, 0.0, 1000.0, 0.0]).unwrap();
    let mut d = Matrix::zeros(2, 3);
    let s = softmax_ce::softmax_cross_entropy(z.view(), &[0, 0], Some(d.view_mut())).unwrap();
    // Row 0 is certain and right (loss 0), row 1 certain and wrong (loss 1000).
    assert!((s.loss - 500.0).abs() < 1e-3, "{s:?}");
    assert_eq!(s.correct, 1);
    assert!(d.as_slice().iter().all(|v| v.is_finite()));
    assert!((d[(1, 0)] + 0.5).abs() < 1e-6 && (d[(1, 1)] - 0.5).abs() < 1e-6);
}

#[test]
fn softmax_ce_rejects_bad_labels_and_shapes_without_writing() {
    let z = Matrix::zeros(3, 4);
    let mut d = Matrix::from_fn(3, 4, |_, _| 7.0);
    let err = softmax_ce::softmax_cross_entropy(z.view(), &[0, 4, 1], Some(d.view_mut())).unwrap_err();
    assert_eq!(err, Error::LabelOutOfRange { index: 1, label: 4, classes: 4 });
    assert!(err.to_string().contains("label 4 at row 1") && err.to_string().contains("0..4"), "{err}");
    assert!(d.as_slice().iter().all(|&v| v == 7.0), "nothing may be written on error");
    assert!(matches!(softmax_ce::softmax_cross_entropy(z.view(), &[0, 1], None), Err(Error::ShapeMismatch { .. })));
    let mut small = Matrix::zeros(3, 3);
    assert!(matches!(
        softmax_ce::softmax_cross_entropy(z.view(), &[0, 1, 2], Some(small.view_mut())),
        Err(Error::ShapeMismatch { .. })
    ));
    let empty = Matrix::zeros(0, 4);
    assert!(matches!(softmax_ce::softmax_cross_entropy(empty.view(), &[], None), Err(Error::InvalidArgument(_))));
}

type LossFn = fn(MatRef<'_>, MatRef<'_>, Option<MatMut<'_>>) -> fusegrad::Result<f32>;

fn check_loss(name: &str, f: LossFn, twin: fn(&[f64], &[f64]) -> f64, p: Matrix, t: Matrix) {
    let (rows, cols) = (p.rows(), p.cols());
    let mut d = Matrix::from_fn(rows, cols, |_, _| f32::NAN);
    let l = f(p.view(), t.view(), Some(d.view_mut())).unwrap();
    let (p64, t64) = (to_f64(&p), to_f64(&t));
    let reference = twin(&p64, &t64);
    assert!((l as f64 - reference).abs() <= 1e-5 * (1.0 + reference.abs()), "{name}: {l} vs {reference}");
    assert_eq!(f(p.view(), t.view(), None).unwrap(), l, "{name}: loss must not depend on the gradient buffer");
    let numeric = numerical_grad(&p64, |pp| twin(pp, &t64));
    assert_grad_close(&format!("{name} gradient"), d.as_slice(), &numeric);
}

#[test]
fn losses_match_twins_and_numerical_gradients() {
    let mut rng = Rng::new(13);
    let p = mat(&mut rng, 6, 3, -2.0, 2.0);
    let t = mat(&mut rng, 6, 3, -2.0, 2.0);
    check_loss("mse", loss::mean_squared_error, loss::naive::mean_squared_error, p, t);
    // MAE: keep |p − t| away from the kink at 0.
    let t = mat(&mut rng, 5, 4, -2.0, 2.0);
    let p = Matrix::from_fn(5, 4, |i, j| t[(i, j)] + if (i + j) % 2 == 0 { 0.5 } else { -0.7 });
    check_loss("mae", loss::mean_absolute_error, loss::naive::mean_absolute_error, p, t);
    // BCE on sigmoid outputs inside the clip range, targets 0/1 and soft.
    let p = mat(&mut rng, 7, 2, 0.05, 0.95);
    let t = Matrix::from_fn(7, 2, |i, j| if (i + j) % 3 == 0 { 0.3 } else { ((i + j) % 2) as f32 });
    check_loss("bce", loss::binary_cross_entropy, loss::naive::binary_cross_entropy, p, t);
}

#[test]
fn losses_reject_mismatched_shapes() {
    let (p, t) = (Matrix::zeros(3, 2), Matrix::zeros(2, 3));
    assert!(matches!(loss::mean_squared_error(p.view(), t.view(), None), Err(Error::ShapeMismatch { .. })));
    let mut d = Matrix::zeros(3, 3);
    assert!(matches!(
        loss::binary_cross_entropy(p.view(), p.view(), Some(d.view_mut())),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn colsum_and_argmax_match_loops() {
    let mut rng = Rng::new(14);
    let x = mat(&mut rng, 9, 5, -1.0, 1.0);
    let mut s = vec![f32::NAN; 5];
    reduce::colsum(x.view(), &mut s).unwrap();
    for (j, &v) in s.iter().enumerate() {
        let r: f64 = (0..9).map(|i| x[(i, j)] as f64).sum();
        assert!((v as f64 - r).abs() < 1e-5);
    }
    let mut a = vec![0usize; 9];
    reduce::argmax_rows(x.view(), &mut a).unwrap();
    for (i, &c) in a.iter().enumerate() {
        assert!(x.row(i).iter().all(|&v| v <= x[(i, c)]));
    }
    assert!(reduce::colsum(x.view(), &mut [0.0; 4]).is_err());
    assert!(reduce::argmax_rows(x.view(), &mut [0; 8]).is_err());
}
