//! Numerical gradient checks of the layers and of whole models: the analytic gradients
//! (f32, from the fused kernels) against central differences in f64 of an independent
//! f64 forward pass, as NNFS chapter 7 teaches.

mod common;

use common::{numerical_grad, Rng};
use fusegrad::nn::{
    Activation, Dense, Dinputs, Dropout, Init, Layer, Loss, Optimizer, Regularization, Sequential, Targets,
};
use fusegrad::{Matrix, Rng as FgRng};

/// Layers and whole models: 2e-3 relative (several f32 GEMMs deep), floor 1e-4.
fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f64]) {
    common::assert_grad_close(what, analytic, numeric, 2e-3, 1e-4);
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `z = x·W + b` in f64 (x: rows × n_in).
fn dense64(x: &[f64], rows: usize, w: &[f64], b: &[f64], n_in: usize, n_out: usize) -> Vec<f64> {
    let mut z = vec![0.0; rows * n_out];
    for i in 0..rows {
        for j in 0..n_out {
            z[i * n_out + j] = b[j] + (0..n_in).map(|p| x[i * n_in + p] * w[p * n_out + j]).sum::<f64>();
        }
    }
    z
}

fn relu64(v: &mut [f64]) {
    for x in v {
        if *x < 0.0 {
            *x = 0.0;
        }
    }
}

#[test]
fn dense_gradients_plain_relu_and_regularized() {
    let mut rng = Rng::new(20);
    let (rows, n_in, n_out) = (6, 5, 4);
    for (relu, reg) in [
        (false, Regularization::default()),
        (true, Regularization::default()),
        (
            false,
            Regularization::default().with_weight_l1(0.01).with_weight_l2(0.02).with_bias_l1(0.03).with_bias_l2(0.04),
        ),
    ] {
        let mut d = Dense::new(n_in, n_out, Init::Xavier, &mut FgRng::new(3)).with_regularization(reg);
        if relu {
            d = d.with_relu();
        }
        for b in d.biases.iter_mut() {
            *b = rng.uniform(-0.5, 0.5); // non-zero, so bias gradients are exercised
        }
        let x = Matrix::from_fn(rows, n_in, |_, _| rng.uniform(-1.0, 1.0));
        let r = Matrix::from_fn(rows, n_out, |_, _| rng.uniform(-1.0, 1.0));
        d.forward(x.view()).unwrap();
        d.backward(x.view(), r.view()).unwrap();

        let (w64, b64, x64, r64) =
            (f64s(d.weights.as_slice()), f64s(&d.biases), f64s(x.as_slice()), f64s(r.as_slice()));
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut z = dense64(x, rows, w, b, n_in, n_out);
            if relu {
                relu64(&mut z);
            }
            let data: f64 = z.iter().zip(&r64).map(|(a, b)| a * b).sum();
            let l1 = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
            let l2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
            data + reg.weight_l1 as f64 * l1(w)
                + reg.weight_l2 as f64 * l2(w)
                + reg.bias_l1 as f64 * l1(b)
                + reg.bias_l2 as f64 * l2(b)
        };
        let tag = format!("relu={relu} reg={}", reg != Regularization::default());
        assert_grad_close(
            &format!("dweights {tag}"),
            d.dweights.as_slice(),
            &numerical_grad(&w64, |w| loss(&x64, w, &b64)),
        );
        assert_grad_close(&format!("dbiases {tag}"), &d.dbiases, &numerical_grad(&b64, |b| loss(&x64, &w64, b)));
        assert_grad_close(
            &format!("dinputs {tag}"),
            d.dinputs.as_slice(),
            &numerical_grad(&x64, |x| loss(x, &w64, &b64)),
        );
        let l1 = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
        let l2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
        let reg64 = reg.weight_l1 as f64 * l1(&w64)
            + reg.weight_l2 as f64 * l2(&w64)
            + reg.bias_l1 as f64 * l1(&b64)
            + reg.bias_l2 as f64 * l2(&b64);
        assert!((d.regularization_loss() as f64 - reg64).abs() <= 1e-6 * (1.0 + reg64), "{tag}: regularization loss");
    }
}

#[test]
fn dense_relu_masked_dinputs_equal_mask_after_plain() {
    let mut rng = Rng::new(21);
    let (rows, n_in, n_out) = (9, 7, 5);
    let mut d = Dense::new(n_in, n_out, Init::He, &mut FgRng::new(4));
    let x = Matrix::from_fn(rows, n_in, |_, _| rng.uniform(-1.0, 1.0));
    let h = Matrix::from_fn(rows, n_in, |_, _| rng.uniform(-1.0, 1.0).max(0.0));
    let dz = Matrix::from_fn(rows, n_out, |_, _| rng.uniform(-1.0, 1.0));
    d.forward(x.view()).unwrap();
    d.backward_dz(x.view(), dz.view(), Dinputs::Compute).unwrap();
    let plain = d.dinputs.clone();
    let (dw, db) = (d.dweights.clone(), d.dbiases.clone());
    d.backward_dz(x.view(), dz.view(), Dinputs::ComputeReluMasked(h.view())).unwrap();
    for i in 0..rows {
        for j in 0..n_in {
            let expected = if h[(i, j)] > 0.0 { plain[(i, j)] } else { 0.0 };
            assert_eq!(d.dinputs[(i, j)], expected);
        }
    }
    assert_eq!((d.dweights.clone(), d.dbiases.clone()), (dw, db), "backward overwrites, never accumulates");
}

#[test]
fn dropout_gradient_follows_its_mask() {
    let mut rng = Rng::new(22);
    let mut drop = Dropout::new(0.4, 9).unwrap();
    let x = Matrix::from_fn(8, 6, |_, _| rng.uniform(0.5, 1.5));
    drop.forward(x.view(), true).unwrap();
    let mask: Vec<f64> = drop.output.as_slice().iter().zip(x.as_slice()).map(|(&o, &v)| o as f64 / v as f64).collect();
    let dropped = mask.iter().filter(|&&m| m == 0.0).count();
    assert!((8..=32).contains(&dropped), "about 40% of 48 should drop, {dropped} did");
    assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.6).abs() < 1e-6), "survivors scale by 1/(1 − rate)");
    let r = Matrix::from_fn(8, 6, |_, _| rng.uniform(-1.0, 1.0));
    drop.backward(r.view()).unwrap();
    let r64 = f64s(r.as_slice());
    let numeric =
        numerical_grad(&f64s(x.as_slice()), |x| x.iter().zip(&mask).zip(&r64).map(|((a, m), r)| a * m * r).sum());
    assert_grad_close("dropout dinputs", drop.dinputs.as_slice(), &numeric);
    // Inference: identity.
    drop.forward(x.view(), false).unwrap();
    assert_eq!(drop.output, x);
}

/// The f64 loss of a built model, evaluated layer by layer from its own parameters,
/// with `params` replacing the Dense weights and biases (in order, weights then biases).
fn model_loss64(model: &Sequential, params: &[f64], x: &Matrix, targets: &Targets<'_>) -> f64 {
    let rows = x.rows();
    let mut a = f64s(x.as_slice());
    let mut width = x.cols();
    let mut off = 0;
    let mut penalty = 0.0f64;
    for layer in model.layers() {
        match layer {
            Layer::Dense(d) => {
                let (n_in, n_out) = (d.n_inputs(), d.n_neurons());
                let w = &params[off..off + n_in * n_out];
                let b = &params[off + n_in * n_out..off + n_in * n_out + n_out];
                off += n_in * n_out + n_out;
                let r = d.regularization;
                let l1 = |v: &[f64]| v.iter().map(|x| x.abs()).sum::<f64>();
                let l2 = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>();
                penalty += r.weight_l1 as f64 * l1(w)
                    + r.weight_l2 as f64 * l2(w)
                    + r.bias_l1 as f64 * l1(b)
                    + r.bias_l2 as f64 * l2(b);
                a = dense64(&a, rows, w, b, n_in, n_out);
                if d.has_relu() {
                    relu64(&mut a);
                }
                width = n_out;
            }
            Layer::Activation(act) => match act.kind {
                Activation::Relu => relu64(&mut a),
                Activation::Sigmoid => a.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
                Activation::Tanh => a.iter_mut().for_each(|v| *v = v.tanh()),
                Activation::Softmax => a = fusegrad::ops::activation::naive::softmax(&a, width),
                other => panic!("the f64 reference has no {other:?} yet"),
            },
            Layer::Dropout(d) => assert_eq!(d.rate(), 0.0, "only identity dropout in gradient checks"),
            other => panic!("the f64 reference has no {other:?} layer yet"),
        }
    }
    penalty
        + match (model.loss(), targets) {
            (Loss::SoftmaxCrossEntropy, Targets::Classes(c)) => {
                (0..rows)
                    .map(|i| {
                        let row = &a[i * width..(i + 1) * width];
                        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        max + row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - row[c[i]]
                    })
                    .sum::<f64>()
                    / rows as f64
            }
            (Loss::MeanSquaredError, Targets::Values(t)) => {
                fusegrad::ops::loss::naive::mean_squared_error(&a, &f64s(t.to_matrix().as_slice()))
            }
            (Loss::BinaryCrossEntropy, Targets::Values(t)) => {
                fusegrad::ops::loss::naive::binary_cross_entropy(&a, &f64s(t.to_matrix().as_slice()))
            }
            _ => unreachable!(),
        }
}

fn check_model(name: &str, mut model: Sequential, x: &Matrix, targets: Targets<'_>) {
    // Non-zero biases, so that every bias gradient path is exercised.
    let mut rng = Rng::new(23);
    for layer in model.layers_mut() {
        if let Layer::Dense(d) = layer {
            d.biases.iter_mut().for_each(|b| *b = rng.uniform(-0.2, 0.2));
        }
    }
    model.forward_backward(x.view(), targets).unwrap();
    let mut params = Vec::new();
    let mut analytic = Vec::new();
    for layer in model.layers() {
        if let Layer::Dense(d) = layer {
            params.extend(f64s(d.weights.as_slice()));
            params.extend(f64s(&d.biases));
            analytic.extend_from_slice(d.dweights.as_slice());
            analytic.extend_from_slice(&d.dbiases);
        }
    }
    let numeric = numerical_grad(&params, |p| model_loss64(&model, p, x, &targets));
    assert_grad_close(name, &analytic, &numeric);
}

#[test]
fn whole_models_match_numerical_gradients() {
    let mut rng = Rng::new(24);
    let x = Matrix::from_fn(11, 5, |_, _| rng.uniform(-1.0, 1.0));
    // 5-7-6-3 ReLU net with the fused softmax-CE: every Dense+ReLU fused, dinputs
    // masked by the layer below in the same GEMM.
    let labels: Vec<usize> = (0..11).map(|i| i % 3).collect();
    let m = Sequential::builder(5)
        .seed(1)
        .dense(7)
        .relu()
        .dense(6)
        .relu()
        .dense(3)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
        .unwrap();
    check_model("relu net + softmax-CE", m, &x, Targets::Classes(&labels));
    // A standalone ReLU (after identity dropout, so it cannot be fused), MSE.
    let t = Matrix::from_fn(11, 2, |_, _| rng.uniform(-1.0, 1.0));
    let m = Sequential::builder(5)
        .seed(2)
        .dense(6)
        .dropout(0.0)
        .relu()
        .dense(2)
        .build(Loss::MeanSquaredError, Optimizer::adam(0.01))
        .unwrap();
    check_model("standalone relu + MSE", m, &x, Targets::Values(t.view()));
    // tanh, then a sigmoid output with binary cross-entropy, with regularization.
    let t = Matrix::from_fn(11, 2, |i, j| ((i + j) % 2) as f32);
    let reg =
        Regularization::default().with_weight_l1(0.002).with_weight_l2(0.01).with_bias_l1(0.003).with_bias_l2(0.02);
    let m = Sequential::builder(5)
        .seed(3)
        .dense_with(4, Init::Xavier, reg)
        .tanh()
        .dense(2)
        .sigmoid()
        .build(Loss::BinaryCrossEntropy, Optimizer::sgd(0.1))
        .unwrap();
    check_model("tanh + sigmoid + BCE", m, &x, Targets::Values(t.view()));
}
