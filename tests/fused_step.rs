//! `Sequential`'s fused training step (the optimizer applied in the weight-gradient
//! GEMMs) against its twin, the unfused step (gradients stored, checked, then separate
//! update passes): bit-identical parameters, optimizer state and losses, for every
//! optimizer, with penalties, dropout and standalone activations, batch sizes from 1
//! to past a k block, on 1 and 2 threads; and the checked path taken when the step
//! cannot be proved finite.

use fusegrad::nn::{Dense, Dinputs, FitOptions, Init, Layer, Loss, Optimizer, Regularization, Sequential, Targets};
use fusegrad::{Error, Matrix, Rng};

mod common;
use common::parameter_bits as params;

fn data(n: usize, features: usize, seed: u64) -> (Matrix, Vec<usize>) {
    let mut rng = Rng::new(seed);
    // A third of the inputs are zeros of either sign: a batch of one with plain SGD
    // then leaves their weight rows alone, which must give the twin's bits.
    let x = Matrix::from_fn(n, features, |_, _| match rng.below(6) {
        0 => 0.0,
        1 => -0.0,
        _ => rng.uniform(-1.0, 1.0),
    });
    let y = (0..n).map(|_| rng.below(5)).collect();
    (x, y)
}

fn model(optimizer: Optimizer, kind: usize) -> Sequential {
    let reg = Regularization::default().with_weight_l1(1e-4).with_weight_l2(5e-4).with_bias_l2(1e-4);
    let b = Sequential::builder(20).seed(3);
    let b = match kind {
        // Dense + ReLU pairs: the ReLU masks applied by the dinputs GEMMs.
        0 => b.dense(70).relu().dense(33).relu().dense(5),
        // Penalties, dropout (a Dense + ReLU that masks its own gradient) and tanh.
        _ => b.dense_with(40, Init::He, reg).relu().dropout(0.2).dense(17).tanh().dense_with(5, Init::He, reg),
    };
    b.build(Loss::SoftmaxCrossEntropy, optimizer).unwrap()
}

fn optimizers() -> [Optimizer; 5] {
    [
        Optimizer::sgd(0.5),
        Optimizer::sgd_momentum(0.1, 0.9).with_decay(1e-2),
        Optimizer::adagrad(0.3),
        Optimizer::rmsprop(0.01),
        Optimizer::adam(0.01),
    ]
}

#[test]
fn fused_steps_equal_unfused_steps_bit_for_bit() {
    let (x, y) = data(600, 20, 1);
    for opt in optimizers() {
        for kind in [0, 1] {
            for (batch, threads) in [(1, 1), (7, 2), (128, 1), (128, 2), (300, 2)] {
                let what = format!("{} model {kind} batch {batch} threads {threads}", opt.name());
                let opts = FitOptions::default().with_epochs(1).with_batch_size(batch).with_seed(5);
                let x = x.view().submatrix(0, 0, (batch * 6).min(600), 20).unwrap();
                let y = &y[..x.rows()];
                let run = |fused: bool| {
                    let mut m = model(opt, kind);
                    m.set_threads(Some(threads)).unwrap();
                    m.set_fused_update(fused);
                    let r = m.fit(x, Targets::Classes(y), &opts).unwrap();
                    (params(&m), r.iter().map(|e| e.loss.to_bits()).collect::<Vec<_>>(), m)
                };
                let (fused, fused_loss, m) = run(true);
                let (twin, twin_loss, _) = run(false);
                assert_eq!(fused_loss, twin_loss, "{what}: losses");
                assert!(fused == twin, "{what}: parameters or optimizer state differ");
                // The fused step stores no weight gradient (so this really was fused):
                // `dweights` is still the zeros of the built model.
                if batch <= 128 {
                    let Layer::Dense(d) = &m.layers()[0] else { unreachable!() };
                    assert!(d.dweights.as_slice().iter().all(|&v| v == 0.0), "{what}: dweights written");
                }
            }
        }
    }
}

#[test]
fn fused_steps_skipping_zero_inputs_equal_unfused_steps_bit_for_bit() {
    // Inputs zero outside a window of 6 features per sample (as an image is black around
    // its digit): the fused step's dW = Xᵀ·dZ skips the samples where a tile's features
    // are all ±0 (dZ is proved finite first), and plain SGD the row panels of W whose
    // features are ±0 in the whole batch; the unfused twin's weight gradients do not.
    // The same bits, with SGD and Adam, penalties too, on 1 and 2 threads.
    let mut rng = Rng::new(11);
    let mut x = Matrix::zeros(384, 20);
    for i in 0..x.rows() {
        // Features 0–5 are ±0 in every sample: a row panel of W the SGD step skips.
        let w = 6 + rng.below(9);
        for j in 0..20 {
            x[(i, j)] = match j >= w && j < w + 6 {
                true => rng.uniform(-1.0, 1.0),
                false if rng.below(2) == 0 => -0.0,
                false => 0.0,
            };
        }
    }
    let y: Vec<usize> = (0..x.rows()).map(|_| rng.below(5)).collect();
    for opt in [Optimizer::sgd(0.5), Optimizer::adam(0.01)] {
        for kind in [0, 1] {
            for (batch, threads) in [(8, 1), (128, 1), (128, 2)] {
                let what = format!("{} model {kind} batch {batch} threads {threads}", opt.name());
                let opts = FitOptions::default().with_epochs(1).with_batch_size(batch).with_seed(5);
                let run = |fused: bool| {
                    let mut m = model(opt, kind);
                    m.set_threads(Some(threads)).unwrap();
                    m.set_fused_update(fused);
                    let r = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
                    (params(&m), r.iter().map(|e| e.loss.to_bits()).collect::<Vec<_>>())
                };
                let (fused, fused_loss) = run(true);
                let (twin, twin_loss) = run(false);
                assert_eq!(fused_loss, twin_loss, "{what}: losses");
                assert!(fused == twin, "{what}: parameters or optimizer state differ");
            }
        }
    }
}

#[test]
fn a_step_that_cannot_be_proved_finite_runs_checked_and_still_trains() {
    // A weight of 1e37 (above f32::MAX / 64) on an input feature that is always 0:
    // the step cannot be proved finite, so it runs unfused (gradients stored and
    // checked); it is finite, so it trains as the twin does.
    let (mut x, y) = data(64, 20, 2);
    for i in 0..x.rows() {
        x[(i, 0)] = 0.0;
    }
    let build = || {
        let mut m = model(Optimizer::sgd(0.1), 0);
        if let Layer::Dense(d) = &mut m.layers_mut()[0] {
            d.weights.as_mut_slice()[0] = 1e37;
        }
        m
    };
    let mut m = build();
    let mut twin = build();
    twin.set_fused_update(false);
    for _ in 0..3 {
        m.train_step(x.view(), Targets::Classes(&y)).unwrap();
        twin.train_step(x.view(), Targets::Classes(&y)).unwrap();
    }
    assert!(params(&m) == params(&twin));
    let Layer::Dense(d) = &m.layers()[0] else { unreachable!() };
    assert!(d.dweights.as_slice().iter().any(|&v| v != 0.0), "the checked path stores dweights");

    // A weight set to ∞ after a fused step (through `layers_mut`, so the model
    // measures again): the step is not proved, runs checked and fails before any
    // update, naming the layer.
    let mut m = model(Optimizer::adam(0.01), 0);
    m.train_step(x.view(), Targets::Classes(&y)).unwrap();
    if let Layer::Dense(d) = &mut m.layers_mut()[1] {
        d.weights.as_mut_slice()[5] = 3e38;
        d.biases[0] = f32::INFINITY;
    }
    let before = params(&m);
    let err = m.train_step(x.view(), Targets::Classes(&y)).unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 1, .. }), "{err:?}");
    assert!(params(&m) == before, "parameters changed by a failed step");
}

#[test]
fn dense_backward_update_equals_backward_then_update_params() {
    let mut rng = Rng::new(4);
    let x = Matrix::from_fn(9, 30, |_, _| rng.uniform(-1.0, 1.0));
    let dz = Matrix::from_fn(9, 12, |_, _| rng.uniform(-0.1, 0.1));
    let h = Matrix::from_fn(9, 30, |i, j| if (i + j) % 3 == 0 { 0.0 } else { 1.0 });
    for opt in optimizers() {
        let mut fused = Dense::new(30, 12, Init::He, &mut Rng::new(8))
            .with_regularization(Regularization::default().with_weight_l2(1e-3).with_bias_l1(1e-3));
        let mut twin = fused.clone();
        for it in 0..4 {
            fused.backward_update(x.view(), dz.view(), Dinputs::ComputeReluMasked(h.view()), &opt, it).unwrap();
            twin.backward_dz(x.view(), dz.view(), Dinputs::ComputeReluMasked(h.view())).unwrap();
            twin.update_params(&opt, it).unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(fused.weights.as_slice()), bits(twin.weights.as_slice()), "{} step {it}", opt.name());
            assert_eq!(bits(&fused.biases), bits(&twin.biases), "{} step {it}", opt.name());
            assert_eq!(bits(fused.dinputs.as_slice()), bits(twin.dinputs.as_slice()), "{} step {it}", opt.name());
            assert_eq!(fused.optimizer_state().map(bits), twin.optimizer_state().map(bits), "{} step {it}", opt.name());
        }
    }
    // An overflowing step is reported, naming the layer (the layer is left stepped).
    let mut d = Dense::new(2, 2, Init::He, &mut Rng::new(1));
    let big = Matrix::from_fn(3, 2, |_, _| 3e38);
    let err = d.backward_update(big.view(), big.view(), Dinputs::Skip, &Optimizer::sgd(1.0), 0).unwrap_err();
    assert!(matches!(&err, Error::NonFinite { layer, .. } if layer == "Dense 2→2"), "{err:?}");
    // Shapes are checked before anything runs.
    let mut d = Dense::new(2, 2, Init::He, &mut Rng::new(1));
    let before = d.weights.clone();
    let err = d.backward_update(big.view(), x.view(), Dinputs::Skip, &Optimizer::sgd(1.0), 0).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err:?}");
    assert_eq!(d.weights, before);
}
