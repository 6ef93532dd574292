//! The Sequential model end to end: it learns, it is reproducible bit for bit, it
//! saves and loads, and every bad input is an error that leaves it unchanged.

mod common;

use common::{parameter_bits as params, Rng};
use fusegrad::data::spiral;
use fusegrad::nn::{FitOptions, Layer, Loss, Optimizer, ScaledBytes, Sequential, Targets};
use fusegrad::{Error, Matrix};

fn spiral_model(seed: u64) -> Sequential {
    spiral_model_with(Optimizer::adam(0.05).with_decay(5e-7), seed)
}

fn spiral_model_with(optimizer: Optimizer, seed: u64) -> Sequential {
    Sequential::builder(2).seed(seed).dense(64).relu().dense(3).build(Loss::SoftmaxCrossEntropy, optimizer).unwrap()
}

#[test]
fn spiral_2_64_3_with_adam_reaches_90_percent() {
    // NNFS chapter 10's setup: 100 points per class, full batch, Adam lr 0.05.
    let (x, y) = spiral(100, 3, 0);
    let mut model = spiral_model(0);
    let opts = FitOptions::default().with_epochs(3000).with_batch_size(300).with_shuffle(false);
    let reports = model.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
    let last = reports.last().unwrap();
    let eval = model.evaluate(x.view(), Targets::Classes(&y), 300).unwrap();
    assert!(eval.accuracy.unwrap() >= 0.90, "training accuracy {:?}, loss {}", eval.accuracy, eval.loss);
    assert!(last.loss < reports[0].loss / 3.0, "loss {} → {}", reports[0].loss, last.loss);
    assert_eq!(model.iterations(), 3000);
}

fn mnist_like(n: usize, seed: u64) -> (Matrix, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let x = Matrix::from_fn(n, 784, |_, _| if rng.below(4) == 0 { rng.uniform(0.0, 1.0) } else { 0.0 });
    let y = (0..n).map(|_| rng.below(10)).collect();
    (x, y)
}

fn mnist_model(seed: u64, optimizer: Optimizer) -> Sequential {
    Sequential::builder(784)
        .seed(seed)
        .dense(128)
        .relu()
        .dense(64)
        .relu()
        .dense(10)
        .build(Loss::SoftmaxCrossEntropy, optimizer)
        .unwrap()
}

#[test]
fn a_seed_fixes_the_whole_run_bit_for_bit_on_1_and_2_threads() {
    let (x, y) = mnist_like(300, 1);
    let opts = FitOptions::default().with_epochs(2).with_batch_size(128).with_seed(7);
    let mut runs = Vec::new();
    for (threads, pin) in [(1, true), (2, true), (2, false), (1, false)] {
        let mut m = mnist_model(3, Optimizer::sgd_momentum(0.1, 0.5));
        m.set_threads(Some(threads)).unwrap();
        m.set_pin_threads(pin);
        let reports = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
        runs.push((params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()));
    }
    assert!(runs.iter().all(|r| *r == runs[0]), "runs differ between thread counts or repeats");
    // And the seed matters.
    let mut other = mnist_model(4, Optimizer::sgd_momentum(0.1, 0.5));
    other.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
    assert_ne!(params(&other), runs[0].0);
}

/// Every product of a step split between threads (a split threshold of 0), through the
/// step's region (`runtime::region`: tiles shared statically among the leader and its
/// helpers): `train_step` per batch from 1 to 68 rows, then `fit` with the governor on
/// and off, give the bits of one thread, on 2 and 3 threads.
#[test]
fn steps_split_in_a_region_equal_one_thread_bit_for_bit() {
    let (x, y) = spiral(40, 3, 4);
    let run = |threads: usize, adaptive: bool| {
        let mut m = Sequential::builder(2)
            .seed(3)
            .dense(70)
            .relu()
            .dense(150)
            .relu()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.02))
            .unwrap();
        m.set_threads(Some(threads)).unwrap();
        m.set_adaptive_threads(adaptive);
        for layer in m.layers_mut() {
            if let Layer::Dense(d) = layer {
                d.set_min_work_per_thread(Some(0));
            }
        }
        for (start, batch) in [(0, 1), (1, 3), (4, 8), (12, 40), (52, 68)] {
            let xb = x.view().submatrix(start, 0, batch, 2).unwrap();
            m.train_step(xb, Targets::Classes(&y[start..start + batch])).unwrap();
        }
        let opts = FitOptions::default().with_epochs(3).with_batch_size(5).with_seed(1);
        let reports = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
        (params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>())
    };
    let one = run(1, true);
    for (threads, adaptive) in [(2, true), (2, false), (3, false)] {
        assert!(run(threads, adaptive) == one, "{threads} threads, adaptive {adaptive}: the bits differ");
    }
}

/// Products with a layer's weights beyond 64 K floats (300 × 300 here) split by
/// columns on several threads at batches up to 256 rows (each core then reads the
/// rows of W it updated): `train_step` and `fit` give the bits of one thread.
#[test]
fn products_with_the_weights_split_by_columns_train_as_on_one_thread() {
    let (x, y) = spiral(100, 3, 5);
    let run = |threads: usize| {
        let mut m = Sequential::builder(2)
            .seed(4)
            .dense(300)
            .relu()
            .dense(300)
            .relu()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd_momentum(0.05, 0.9))
            .unwrap();
        m.set_threads(Some(threads)).unwrap();
        m.set_adaptive_threads(false);
        for layer in m.layers_mut() {
            if let Layer::Dense(d) = layer {
                d.set_min_work_per_thread(Some(0));
            }
        }
        for (start, batch) in [(0, 7), (7, 64), (71, 229)] {
            let xb = x.view().submatrix(start, 0, batch, 2).unwrap();
            m.train_step(xb, Targets::Classes(&y[start..start + batch])).unwrap();
        }
        let opts = FitOptions::default().with_epochs(2).with_batch_size(100).with_seed(2);
        let reports = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
        let predicted = m.predict(x.view()).unwrap().as_slice().iter().map(|p| p.to_bits()).collect::<Vec<_>>();
        (params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>(), predicted)
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads: the bits differ");
    }
}

#[test]
fn batches_skipping_zero_inputs_train_and_predict_as_the_full_products() {
    // A model knows its weights finite (measured at build and load, kept by each fused
    // step), so its forward skips the zero inputs (GemmOptions::b_is_finite). Handing
    // the layers out mutably forgets that: a twin model whose layers are touched before
    // every step and prediction runs the full products. Both must end with the same
    // bits, with SGD and Adam, batches of 1, 8 and 40, on 1 and 2 threads.
    let (x, y) = mnist_like(40, 21);
    for optimizer in [Optimizer::sgd(0.05), Optimizer::adam(0.01)] {
        for (threads, batch) in [(1, 1), (2, 1), (1, 8), (2, 8), (1, 40), (2, 40)] {
            let (mut skipping, mut full) = (mnist_model(5, optimizer), mnist_model(5, optimizer));
            for m in [&mut skipping, &mut full] {
                m.set_threads(Some(threads)).unwrap();
            }
            for i in (0..40).step_by(batch) {
                let xi = x.view().submatrix(i, 0, batch, 784).unwrap();
                skipping.train_step(xi, Targets::Classes(&y[i..i + batch])).unwrap();
                full.layers_mut();
                full.train_step(xi, Targets::Classes(&y[i..i + batch])).unwrap();
            }
            let what = format!("{optimizer:?}, batch {batch}, {threads} threads");
            assert!(params(&skipping) == params(&full), "{what}: parameters differ");
            for i in 0..10 {
                let xi = x.view().submatrix(i, 0, 1, 784).unwrap();
                full.layers_mut();
                let (a, b) = (skipping.predict(xi).unwrap(), full.predict(xi).unwrap());
                assert!(a.as_slice().iter().zip(b.as_slice()).all(|(p, q)| p.to_bits() == q.to_bits()), "predict {i}");
            }
            full.layers_mut();
            let (a, b) = (skipping.predict(x.view()).unwrap(), full.predict(x.view()).unwrap());
            assert!(a.as_slice().iter().zip(b.as_slice()).all(|(p, q)| p.to_bits() == q.to_bits()), "{what}: predict");
        }
    }
}

#[test]
fn the_thread_governor_changes_no_bit() {
    // 150 steps: the governor probes all three ways of running a step (24 steps each)
    // and keeps one; the result must equal a 1-thread run and a run that always splits.
    let (x, y) = mnist_like(300, 2);
    let opts = FitOptions::default().with_epochs(2).with_batch_size(4).with_seed(9);
    let mut runs = Vec::new();
    for (threads, adaptive) in [(1, true), (2, true), (2, false)] {
        let mut m = mnist_model(5, Optimizer::sgd(0.05));
        m.set_threads(Some(threads)).unwrap();
        m.set_adaptive_threads(adaptive);
        let reports = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
        runs.push((params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>()));
    }
    assert!(runs.iter().all(|r| *r == runs[0]), "the governor's choices changed the result");
}

/// On 2 threads `fit` has a helper gather the next batch while the leader runs the
/// small upper layers (batch 16 of 784-128-64-10 is large enough); the governor's
/// probes switch modes between such steps, so a batch gathered beside a parallel step
/// is trained on by a serial one. Every way gives the bits of one thread, from f32 and
/// from bytes, with a last batch of 8.
#[test]
fn batches_gathered_beside_the_step_train_as_on_one_thread() {
    let mut rng = Rng::new(32);
    let bytes: Vec<u8> = (0..600 * 784).map(|_| if rng.below(4) == 0 { rng.below(256) as u8 } else { 0 }).collect();
    let x = Matrix::from_fn(600, 784, |i, j| bytes[i * 784 + j] as f32 * (1.0 / 255.0));
    let y: Vec<usize> = (0..600).map(|_| rng.below(10)).collect();
    let opts = FitOptions::default().with_epochs(2).with_batch_size(16).with_seed(4);
    let run = |threads: usize, adaptive: bool, from_bytes: bool| {
        let mut m = mnist_model(8, Optimizer::adam(1e-3));
        m.set_threads(Some(threads)).unwrap();
        m.set_adaptive_threads(adaptive);
        let reports = if from_bytes {
            m.fit(ScaledBytes::new(&bytes, 784, 1.0 / 255.0).unwrap(), Targets::Classes(&y), &opts).unwrap()
        } else {
            m.fit(x.view(), Targets::Classes(&y), &opts).unwrap()
        };
        (params(&m), reports.iter().map(|r| (r.loss.to_bits(), r.accuracy)).collect::<Vec<_>>())
    };
    let one = run(1, false, false);
    for (threads, adaptive, from_bytes) in [(2, false, true), (2, true, true), (2, false, false), (3, true, false)] {
        let what = format!("{threads} threads, governor {adaptive}, from bytes {from_bytes}");
        assert!(run(threads, adaptive, from_bytes) == one, "{what}: the bits differ");
    }
}

/// On 2 threads the first layer's update of such steps runs as two products, the
/// rows from about the middle on a helper while the leader updates the layers above:
/// with 1 000 inputs split at row 576 (a multiple of 192), and with 150 inputs too
/// few to split (one product after the upper layers); SGD with L2 penalties (no state
/// buffers) and momentum (one); bit for bit against one thread.
#[test]
fn first_layer_updates_in_two_halves_train_as_on_one_thread() {
    use fusegrad::nn::{Init, Regularization};
    let mut rng = Rng::new(33);
    for (inputs, hidden) in [(1000, 128), (150, 512)] {
        let x = Matrix::from_fn(96, inputs, |_, _| if rng.below(3) == 0 { rng.uniform(0.0, 1.0) } else { 0.0 });
        let y: Vec<usize> = (0..96).map(|_| rng.below(10)).collect();
        let opts = FitOptions::default().with_epochs(2).with_batch_size(32).with_seed(2);
        let l2 = Regularization::default().with_weight_l2(1e-3).with_bias_l2(1e-3);
        for optimizer in [Optimizer::sgd(0.05), Optimizer::sgd_momentum(0.05, 0.9)] {
            let run = |threads: usize| {
                let mut m = Sequential::builder(inputs)
                    .seed(9)
                    .dense_with(hidden, Init::He, l2)
                    .relu()
                    .dense(64)
                    .relu()
                    .dense(10)
                    .build(Loss::SoftmaxCrossEntropy, optimizer)
                    .unwrap();
                m.set_threads(Some(threads)).unwrap();
                m.set_adaptive_threads(false);
                let reports = m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
                (params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>())
            };
            assert!(run(2) == run(1), "{inputs} inputs, {optimizer:?}: the bits differ");
        }
    }
    // train_step per batch (no next batch to gather): batches of 8 and 24 take the
    // halves (their upper products run on one task anyway), 128 does not.
    let (x, y) = mnist_like(200, 34);
    let run = |threads: usize| {
        let mut m = mnist_model(10, Optimizer::adam(1e-3));
        m.set_threads(Some(threads)).unwrap();
        for (start, batch) in [(0, 8), (8, 24), (32, 128), (160, 8)] {
            let xb = x.view().submatrix(start, 0, batch, 784).unwrap();
            m.train_step(xb, Targets::Classes(&y[start..start + batch])).unwrap();
        }
        params(&m)
    };
    assert!(run(2) == run(1), "train_step: the bits differ");
}

#[test]
fn predict_and_evaluate_agree_and_dropout_is_off_at_inference() {
    let (x, y) = spiral(30, 3, 2);
    let mut model = Sequential::builder(2)
        .seed(5)
        .dense(16)
        .relu()
        .dropout(0.5)
        .dense(3)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.01))
        .unwrap();
    model.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(5).with_batch_size(32)).unwrap();
    let p1 = model.predict(x.view()).unwrap();
    let p2 = model.predict(x.view()).unwrap();
    assert_eq!(p1, p2, "inference must not drop anything");
    for i in 0..p1.rows() {
        let s: f32 = p1.row(i).iter().sum();
        assert!((s - 1.0).abs() < 1e-5, "probabilities of row {i} sum to {s}");
    }
    let eval = model.evaluate(x.view(), Targets::Classes(&y), 7).unwrap();
    let argmax_correct = (0..p1.rows())
        .filter(|&i| {
            let row = p1.row(i);
            (0..3).fold(0, |b, c| if row[c] > row[b] { c } else { b }) == y[i]
        })
        .count();
    assert!((eval.accuracy.unwrap() - argmax_correct as f32 / 90.0).abs() < 1e-6);
    let mean_ce: f64 = (0..90).map(|i| -(p1[(i, y[i])] as f64).ln()).sum::<f64>() / 90.0;
    assert!((eval.loss as f64 - mean_ce).abs() < 1e-4, "{} vs {mean_ce}", eval.loss);
}

#[test]
fn fit_reports_each_epoch_with_validation() {
    let (x, y) = spiral(40, 3, 3);
    let (vx, vy) = spiral(20, 3, 4);
    let mut model = spiral_model(1);
    let mut seen = Vec::new();
    let opts = FitOptions::default()
        .with_epochs(4)
        .with_batch_size(50)
        .with_seed(1)
        .with_validation(vx.view(), Targets::Classes(&vy));
    let reports = model.fit_with(x.view(), Targets::Classes(&y), &opts, |r| seen.push(r.epoch)).unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(reports.len(), 4);
    // 120 samples in batches of 50: 3 steps per epoch.
    assert_eq!(reports[3].iterations, 12);
    let v = reports[3].validation.unwrap();
    assert_eq!(v, model.evaluate(vx.view(), Targets::Classes(&vy), 50).unwrap());
    assert!(reports.iter().all(|r| r.train_seconds > 0.0 && r.accuracy.is_some()));
}

#[test]
fn saved_parameters_reload_to_the_same_predictions() {
    let dir = std::env::temp_dir().join(format!("fusegrad-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spiral.params");
    let (x, y) = spiral(50, 3, 6);
    let mut model = spiral_model(2);
    model.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(20).with_batch_size(150)).unwrap();
    model.save_parameters(&path).unwrap();
    let mut fresh = spiral_model(99);
    assert_ne!(fresh.predict(x.view()).unwrap(), model.predict(x.view()).unwrap());
    fresh.load_parameters(&path).unwrap();
    assert_eq!(fresh.predict(x.view()).unwrap(), model.predict(x.view()).unwrap());

    // Corrupt files and other architectures: tests/saved.rs.
    let mut wider =
        Sequential::builder(2).dense(32).relu().dense(3).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1)).unwrap();
    let err = wider.load_parameters(&path).unwrap_err();
    assert!(err.to_string().contains("another architecture"), "{err}");
    let err = fresh.load_parameters(dir.join("missing")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("missing"), "{err}");
    let cause = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(cause.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound), "the io::Error is kept as the source");
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs `bad` on a trained model and checks it fails with `check` and changes nothing
/// that training state depends on.
fn assert_rejected(
    name: &str,
    model: &mut Sequential,
    bad: impl FnOnce(&mut Sequential) -> fusegrad::Result<()>,
    check: impl Fn(&Error) -> bool,
) {
    let (before, iterations) = (params(model), model.iterations());
    let err = bad(model).expect_err(name);
    assert!(check(&err), "{name}: unexpected error {err:?}");
    assert_eq!(params(model), before, "{name}: parameters or optimizer state changed");
    assert_eq!(model.iterations(), iterations, "{name}: iteration count changed");
}

#[test]
fn bad_inputs_are_errors_and_leave_the_model_unchanged() {
    let (x, y) = spiral(20, 3, 8);
    let mut m = spiral_model(3);
    m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(2).with_batch_size(16)).unwrap();
    let opts = FitOptions::default().with_epochs(1).with_batch_size(16);
    let wide = Matrix::zeros(60, 3);
    assert_rejected(
        "wrong width",
        &mut m,
        |m| m.fit(wide.view(), Targets::Classes(&y), &opts).map(|_| ()),
        |e| {
            matches!(e, Error::ShapeMismatch { .. })
                && e.to_string().contains("2 columns")
                && e.to_string().contains("60×3")
        },
    );
    let mut bad_labels = y.clone();
    bad_labels[41] = 3;
    assert_rejected(
        "label out of range",
        &mut m,
        |m| m.fit(x.view(), Targets::Classes(&bad_labels), &opts).map(|_| ()),
        |e| *e == Error::LabelOutOfRange { index: 41, label: 3, classes: 3 },
    );
    assert_rejected(
        "target count",
        &mut m,
        |m| m.train_step(x.view(), Targets::Classes(&y[..59])).map(|_| ()),
        |e| matches!(e, Error::ShapeMismatch { .. }),
    );
    let values = Matrix::zeros(60, 3);
    assert_rejected(
        "values for softmax-CE",
        &mut m,
        |m| m.train_step(x.view(), Targets::Values(values.view())).map(|_| ()),
        |e| matches!(e, Error::InvalidArgument(_)),
    );
    assert_rejected(
        "zero batch",
        &mut m,
        |m| m.fit(x.view(), Targets::Classes(&y), &opts.with_batch_size(0)).map(|_| ()),
        |e| matches!(e, Error::InvalidArgument(_)),
    );
    assert_rejected(
        "wrong predict width",
        &mut m,
        |m| m.predict(wide.view()).map(|_| ()),
        |e| matches!(e, Error::ShapeMismatch { .. }),
    );
    let mut nan_x = x.clone();
    nan_x[(5, 1)] = f32::NAN;
    assert_rejected(
        "NaN input",
        &mut m,
        |m| m.train_step(nan_x.view(), Targets::Classes(&y)).map(|_| ()),
        |e| {
            matches!(e, Error::NonFinite { step: 8, tensor, layer } if tensor == "inputs" && layer == "the batch (row 5)")
                && e.to_string().contains("step 8")
        },
    );
}

/// `fit` on `x` fails at some step; afterwards the model must equal, bit for bit (its
/// parameters and optimizer state), a model that took exactly the steps before it, one
/// `train_step` per batch of the clean rows in order.
fn assert_fit_fails_cleanly(
    name: &str,
    build: impl Fn() -> Sequential,
    x: &Matrix,
    y: &[usize],
    batch: usize,
    epochs: usize,
    check: impl Fn(&Error) -> bool,
) {
    let mut m = build();
    let opts = FitOptions::default().with_epochs(epochs).with_batch_size(batch).with_shuffle(false);
    let err = m.fit(x.view(), Targets::Classes(y), &opts).expect_err(name);
    assert!(check(&err), "{name}: unexpected error {err:?}: {err}");
    let Error::NonFinite { step, .. } = err else { panic!("{name}: not a NonFinite error: {err:?}") };
    assert_eq!(m.iterations(), step, "{name}: steps taken before the failing one");
    let mut reference = build();
    let n = x.rows();
    for s in 0..step as usize {
        let start = (s * batch) % (n.div_ceil(batch) * batch);
        let rows = batch.min(n - start);
        let xb = x.view().submatrix(start, 0, rows, x.cols()).unwrap();
        reference.train_step(xb, Targets::Classes(&y[start..start + rows])).unwrap();
    }
    assert_eq!(
        params(&m),
        params(&reference),
        "{name}: parameters or optimizer state differ from the steps before the failure"
    );
}

#[test]
fn faults_mid_training_stop_fit_with_the_model_as_before_the_failing_step() {
    let (x, y) = spiral(100, 3, 11); // 300 samples, batches of 20: 15 steps an epoch
    let adam = || spiral_model_with(Optimizer::adam(0.02), 12);
    // NaN in the inputs mid-epoch: sample 170 is in step 8 (rows 160..180).
    let mut nan_x = x.clone();
    nan_x[(170, 1)] = f32::NAN;
    assert_fit_fails_cleanly("NaN input", adam, &nan_x, &y, 20, 2, |e| {
        matches!(e, Error::NonFinite { step: 8, tensor, layer }
            if tensor == "inputs" && layer == "sample 170 of the data (row 10 of the batch)")
    });
    // An infinite input: sample 45, in step 2 (rows 40..60).
    let mut inf_x = x.clone();
    inf_x[(45, 0)] = f32::INFINITY;
    assert_fit_fails_cleanly("infinite input", adam, &inf_x, &y, 20, 2, |e| {
        matches!(e, Error::NonFinite { step: 2, tensor, layer }
            if tensor == "inputs" && layer == "sample 45 of the data (row 5 of the batch)")
    });
    // An exploding learning rate: the gradients or the loss overflow at some step; the
    // update of that step is never applied.
    let exploding = || spiral_model_with(Optimizer::sgd(1e30), 13);
    assert_fit_fails_cleanly(
        "exploding learning rate",
        exploding,
        &x,
        &y,
        20,
        3,
        |e| matches!(e, Error::NonFinite { step, .. } if *step >= 1),
    );
    // A label out of range deep in the data, an empty data set, a batch size of 0:
    // refused before the first step, the model untouched.
    let mut m = adam();
    let before = params(&m);
    let mut bad = y.clone();
    bad[299] = 7;
    let opts = FitOptions::default().with_epochs(1).with_batch_size(20);
    assert_eq!(
        m.fit(x.view(), Targets::Classes(&bad), &opts).unwrap_err(),
        Error::LabelOutOfRange { index: 299, label: 7, classes: 3 }
    );
    let empty = Matrix::zeros(0, 2);
    assert!(matches!(m.fit(empty.view(), Targets::Classes(&[]), &opts), Err(Error::InvalidArgument(_))));
    assert!(matches!(m.fit(x.view(), Targets::Classes(&y), &opts.with_batch_size(0)), Err(Error::InvalidArgument(_))));
    assert_eq!(params(&m), before);
    assert_eq!(m.iterations(), 0);
}

#[test]
fn an_infinite_gradient_is_named_by_step_layer_and_tensor() {
    // One linear layer, MSE: the prediction 1e19 gives a finite loss (1e38) but
    // dweights = x·dpred ≈ 1e20 · 2e19 overflows to infinity.
    let mut m = Sequential::builder(1).dense(1).build(Loss::MeanSquaredError, Optimizer::sgd(0.1)).unwrap();
    if let Layer::Dense(d) = &mut m.layers_mut()[0] {
        d.weights.as_mut_slice()[0] = 0.1;
    }
    let x = Matrix::from_vec(1, 1, vec![1e20]).unwrap();
    let t = Matrix::zeros(1, 1);
    assert_rejected(
        "infinite gradient",
        &mut m,
        |m| m.train_step(x.view(), Targets::Values(t.view())).map(|_| ()),
        |e| matches!(e, Error::NonFinite { step: 0, layer, tensor } if layer == "layer 0 (Dense 1→1)" && tensor == "dweights"),
    );
    // The same through `fit`.
    let opts = FitOptions::default().with_epochs(3).with_batch_size(1);
    assert_rejected(
        "infinite gradient in fit",
        &mut m,
        |m| m.fit(x.view(), Targets::Values(t.view()), &opts).map(|_| ()),
        |e| matches!(e, Error::NonFinite { step: 0, layer, tensor } if layer == "layer 0 (Dense 1→1)" && tensor == "dweights"),
    );
}

#[test]
fn bad_hyperparameters_are_refused_at_build() {
    let build = |o: Optimizer| Sequential::builder(2).dense(3).build(Loss::SoftmaxCrossEntropy, o);
    assert!(matches!(build(Optimizer::sgd(0.0)), Err(Error::InvalidArgument(_))));
    assert!(matches!(build(Optimizer::sgd(f32::NAN)), Err(Error::InvalidArgument(_))));
    assert!(matches!(build(Optimizer::sgd_momentum(0.1, 1.0)), Err(Error::InvalidArgument(_))));
    assert!(matches!(build(Optimizer::adam(0.1).with_decay(-1.0)), Err(Error::InvalidArgument(_))));
    let err =
        Sequential::builder(2).dense(3).dropout(1.0).build(Loss::MeanSquaredError, Optimizer::sgd(0.1)).unwrap_err();
    assert!(err.to_string().contains("dropout rate"), "{err}");
    let err =
        Sequential::builder(2).dense(3).softmax().build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1)).unwrap_err();
    assert!(err.to_string().contains("remove the final softmax"), "{err}");
    assert!(Sequential::builder(2).relu().build(Loss::MeanSquaredError, Optimizer::sgd(0.1)).is_err());
    let mut m = build(Optimizer::sgd(0.1)).unwrap();
    assert!(m.set_threads(Some(0)).is_err());
}

#[test]
fn training_from_scaled_bytes_equals_training_from_the_f32_matrix() {
    let mut rng = Rng::new(30);
    let bytes: Vec<u8> = (0..200 * 784).map(|_| rng.below(256) as u8).collect();
    let x = Matrix::from_fn(200, 784, |i, j| bytes[i * 784 + j] as f32 * (1.0 / 255.0));
    let y: Vec<usize> = (0..200).map(|_| rng.below(10)).collect();
    let opts = FitOptions::default().with_epochs(2).with_batch_size(64).with_seed(5);
    let mut a = mnist_model(6, Optimizer::adam(1e-3));
    let mut b = mnist_model(6, Optimizer::adam(1e-3));
    a.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
    b.fit(ScaledBytes::new(&bytes, 784, 1.0 / 255.0).unwrap(), Targets::Classes(&y), &opts).unwrap();
    assert_eq!(params(&a), params(&b));
    assert!(ScaledBytes::new(&bytes[..1000], 784, 1.0).is_err());
    let err = b.fit(ScaledBytes::new(&bytes, 392, 1.0).unwrap(), Targets::Classes(&y), &opts).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

/// `fit` gathers each batch in parts, part `t` by thread `t` of the step's region,
/// which also prefetches part `t` of the next batch: on 2 and 3 threads (parts of 18/19
/// and 12/12/13 rows of a batch of 37, a last batch of 15 in one part), from bytes and
/// from f32, the run has the bits of one thread.
#[test]
fn batches_gathered_in_parts_over_the_region_train_as_on_one_thread() {
    let mut rng = Rng::new(31);
    let bytes: Vec<u8> = (0..200 * 784).map(|_| if rng.below(3) == 0 { rng.below(256) as u8 } else { 0 }).collect();
    let x = Matrix::from_fn(200, 784, |i, j| bytes[i * 784 + j] as f32 * (1.0 / 255.0));
    let y: Vec<usize> = (0..200).map(|_| rng.below(10)).collect();
    let opts = FitOptions::default().with_epochs(2).with_batch_size(37).with_seed(8);
    let run = |threads: usize, from_bytes: bool| {
        let mut m = mnist_model(7, Optimizer::sgd_momentum(0.05, 0.9));
        m.set_threads(Some(threads)).unwrap();
        m.set_adaptive_threads(false);
        let reports = if from_bytes {
            m.fit(ScaledBytes::new(&bytes, 784, 1.0 / 255.0).unwrap(), Targets::Classes(&y), &opts).unwrap()
        } else {
            m.fit(x.view(), Targets::Classes(&y), &opts).unwrap()
        };
        (params(&m), reports.iter().map(|r| r.loss.to_bits()).collect::<Vec<_>>())
    };
    let one = run(1, false);
    for (threads, from_bytes) in [(1, true), (2, true), (2, false), (3, true), (3, false)] {
        assert!(run(threads, from_bytes) == one, "{threads} threads, from bytes {from_bytes}: the bits differ");
    }
}

#[test]
fn inference_names_the_input_row_with_nan_or_infinity() {
    let (x, y) = spiral(20, 3, 11);
    let model = spiral_model(3);
    let mut bad = x.clone();
    bad[(37, 1)] = f32::NAN;
    let err = model.predict(bad.view()).unwrap_err();
    assert_eq!(err, Error::NonFiniteInput { op: "Sequential::predict", row: 37 }, "{err}");
    bad[(37, 1)] = 0.0;
    bad[(41, 0)] = f32::INFINITY;
    let err = model.evaluate(bad.view(), Targets::Classes(&y), 16).unwrap_err();
    assert_eq!(err, Error::NonFiniteInput { op: "Sequential::evaluate", row: 41 }, "{err}");
    // The same rows, finite: fine.
    assert!(model.predict(x.view()).unwrap().as_slice().iter().all(|v| v.is_finite()));
    assert!(model.evaluate(x.view(), Targets::Classes(&y), 16).unwrap().loss.is_finite());
}

#[test]
fn binary_cross_entropy_rejects_targets_outside_0_1() {
    let x = Matrix::from_fn(4, 2, |i, j| (i + j) as f32 * 0.1);
    let mut model = Sequential::builder(2)
        .dense(3)
        .relu()
        .dense(1)
        .sigmoid()
        .build(Loss::BinaryCrossEntropy, Optimizer::sgd(0.1))
        .unwrap();
    let t = Matrix::from_fn(4, 1, |i, _| if i == 2 { 2.0 } else { 1.0 });
    let err = model.train_step(x.view(), Targets::Values(t.view())).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("[0, 1], got 2 at row 2"), "{err}");
    let ok = Matrix::from_fn(4, 1, |i, _| (i % 2) as f32);
    assert!(model.train_step(x.view(), Targets::Values(ok.view())).is_ok());
}

#[test]
fn an_observer_can_stop_fit_and_the_model_reports_its_layers_and_classes() {
    struct StopAfter(usize);
    impl fusegrad::nn::FitObserver for StopAfter {
        fn keep_training(&mut self, report: &fusegrad::nn::EpochReport) -> bool {
            report.epoch < self.0
        }
    }
    let (x, y) = spiral(50, 3, 12);
    let mut model = spiral_model(4);
    let opts = FitOptions::default().with_epochs(100).with_batch_size(50);
    let reports = model.fit_observed(x.view(), Targets::Classes(&y), &opts, &mut StopAfter(3)).unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(model.iterations(), 3 * 3, "three epochs of three batches of 50");

    // 2-64-3: 2·64 + 64 weights and biases, then 64·3 + 3.
    assert_eq!(model.parameter_count(), 2 * 64 + 64 + 64 * 3 + 3);
    let summary = model.summary();
    assert!(summary.contains("Dense 2→64 + ReLU") && summary.contains("Dense 64→3"), "{summary}");
    assert!(summary.contains(&format!("{} parameters", 2 * 64 + 64 + 64 * 3 + 3)), "{summary}");

    let p = model.predict(x.view()).unwrap();
    let classes = model.predict_classes(x.view()).unwrap();
    assert_eq!(classes.len(), x.rows());
    for (i, &c) in classes.iter().enumerate() {
        let row = p.row(i);
        assert!(row.iter().all(|&v| v <= row[c]), "row {i}: class {c} is not the largest of {row:?}");
        assert!(row[..c].iter().all(|&v| v < row[c]), "row {i}: not the first maximum");
    }
}

#[test]
fn one_model_predicts_and_evaluates_from_many_threads_at_once() {
    // `predict`, `predict_into` and `evaluate` take `&self`: four threads share one
    // model (no Mutex) and get, bit for bit, what one thread gets alone.
    let (x, y) = mnist_like(64, 21);
    let model = mnist_model(22, Optimizer::sgd(0.1));
    let alone = model.predict(x.view()).unwrap();
    let alone_eval = model.evaluate(x.view(), Targets::Classes(&y), 16).unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (model, x, y, alone) = (&model, &x, &y, &alone);
            s.spawn(move || {
                let mut out = Matrix::zeros(1, 10);
                for round in 0..50 {
                    let i = (t * 50 + round) % 64;
                    model.predict_into(x.view().submatrix(i, 0, 1, 784).unwrap(), out.view_mut()).unwrap();
                    assert_eq!(out.row(0), alone.row(i), "thread {t}, row {i}");
                }
                assert_eq!(model.predict(x.view()).unwrap(), *alone, "thread {t}: a whole batch");
                assert_eq!(model.evaluate(x.view(), Targets::Classes(y), 16).unwrap(), alone_eval, "thread {t}");
            });
        }
    });
}

#[test]
fn a_schedule_scales_each_steps_learning_rate() {
    // SGD keeps no state, so step t of a scheduled model equals one step at lr·factor(t)
    // from the same parameters.
    use fusegrad::nn::Schedule;
    let (x, y) = spiral(20, 3, 8);
    let build = |lr: f32| spiral_model_with(Optimizer::sgd(lr), 4);
    let mut scheduled = build(0.4);
    scheduled.set_schedule(Schedule::step(1, 0.5).with_warmup(2));
    assert_eq!(scheduled.learning_rate(), 0.2); // warm-up: 0.4 · 1/2
    let mut reference = build(0.2);
    let dir = std::env::temp_dir().join(format!("fusegrad-schedule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (t, lr) in [(0u64, 0.2f32), (1, 0.4), (2, 0.4), (3, 0.2), (4, 0.1)] {
        assert_eq!(scheduled.learning_rate(), lr, "step {t}");
        scheduled.train_step(x.view(), Targets::Classes(&y)).unwrap();
        let mut one = build(lr);
        one.load_parameters_from_bytes(
            &std::fs::read({
                reference.save_parameters(dir.join("p")).unwrap();
                dir.join("p")
            })
            .unwrap(),
        )
        .unwrap();
        one.train_step(x.view(), Targets::Classes(&y)).unwrap();
        reference = one;
        assert_eq!(params(&scheduled)[..], params(&reference)[..], "step {t}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_validation_split_holds_out_the_last_samples() {
    let (x, y) = spiral(40, 3, 9); // 120 samples
    let opts = FitOptions::default().with_epochs(3).with_batch_size(16).with_seed(2);
    let mut split = spiral_model(5);
    let a = split.fit(x.view(), Targets::Classes(&y), &opts.with_validation_split(0.25)).unwrap();
    let mut by_hand = spiral_model(5);
    let (train, val) = (x.view().submatrix(0, 0, 90, 2).unwrap(), x.view().submatrix(90, 0, 30, 2).unwrap());
    let b =
        by_hand.fit(train, Targets::Classes(&y[..90]), &opts.with_validation(val, Targets::Classes(&y[90..]))).unwrap();
    let strip = |r: &[fusegrad::nn::EpochReport]| r.iter().map(|e| (e.loss, e.validation)).collect::<Vec<_>>();
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(params(&split), params(&by_hand));
    for bad in [0.0, 1.0, -0.5, f32::NAN, 0.001] {
        let err = spiral_model(5).fit(x.view(), Targets::Classes(&y), &opts.with_validation_split(bad)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
    }
}

#[test]
fn zero_sized_dense_layers_are_errors_at_their_first_pass() {
    use fusegrad::nn::{Dense, Dinputs, Init};
    for (n_in, n_out) in [(0, 0), (0, 3), (3, 0)] {
        let mut d = Dense::new(n_in, n_out, Init::He, &mut fusegrad::Rng::new(0));
        let x = Matrix::zeros(2, n_in);
        let err = d.forward(x.view()).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("at least one input and one neuron")), "{err}");
        let dz = Matrix::zeros(2, n_out);
        assert!(matches!(d.backward_dz(x.view(), dz.view(), Dinputs::Skip), Err(Error::InvalidArgument(_))));
    }
    let err = Sequential::builder(2).dense(0).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}
