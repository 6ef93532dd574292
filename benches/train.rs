//! `cargo bench --bench train`: one full training step (forward, loss, backward,
//! finiteness check, update) of 784-128-64-10 at batch 128, on 1 and 2 threads; the
//! per-batch calls; and MNIST's first layer alone at batch 1, 8 and 128.
//! One step is ≈ 58 MFLOP (forward 2·128·(784·128 + 128·64 + 64·10), backward about
//! twice that without layer 1's dX).

use criterion::Criterion;
use fusegrad::nn::{Dense, Dinputs, Init, Loss, Optimizer, Sequential, Targets};
use fusegrad::runtime::with_hot_workers;
use fusegrad::{Matrix, Rng};
use std::time::{Duration, Instant};

/// The MNIST net, 784-128-64-10 with ReLU, softmax + cross-entropy.
fn mnist_net(optimizer: Optimizer) -> Sequential {
    Sequential::builder(784)
        .seed(1)
        .dense(128)
        .relu()
        .dense(64)
        .relu()
        .dense(10)
        .build(Loss::SoftmaxCrossEntropy, optimizer)
        .unwrap()
}

/// A fixed batch of 128 MNIST-shaped inputs in [0, 1) and their classes.
fn batch() -> (Matrix, Vec<usize>) {
    let x = Matrix::from_fn(128, 784, |i, j| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    (x, (0..128).map(|i| i % 10).collect())
}

fn bench_train(c: &mut Criterion) {
    let (x, y) = batch();
    let mut g = c.benchmark_group("train step 784-128-64-10 batch 128");
    for (name, optimizer) in [("sgd", Optimizer::sgd(0.01)), ("adam", Optimizer::adam(1e-4))] {
        for threads in [1, 2] {
            let mut m = mnist_net(optimizer);
            m.set_threads(Some(threads)).unwrap();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            g.bench_function(format!("{name} {threads}T"), |bch| {
                // As `fit` runs: inside the pool, the other workers kept hot.
                bch.iter_custom(|iters| {
                    pool.install(|| {
                        with_hot_workers(|| {
                            let start = Instant::now();
                            for _ in 0..iters {
                                m.train_step(x.view(), Targets::Classes(&y)).unwrap();
                            }
                            start.elapsed()
                        })
                    })
                })
            });
        }
    }
    g.finish();
}

/// The NNFS way: the user's loop calls the model once per batch, from outside any
/// pool. `train_step` here against the step inside `fit`'s hot pool above; a
/// single-sample `predict_into` against NumPy's ≈ 33 µs (issue #10, Zen 3).
fn bench_per_call(c: &mut Criterion) {
    let (x, y) = batch();
    let one = x.view().submatrix(0, 0, 1, 784).unwrap();
    let mut g = c.benchmark_group("per-batch calls 784-128-64-10");
    for threads in [1, 2] {
        let mut m = mnist_net(Optimizer::sgd(0.01));
        m.set_threads(Some(threads)).unwrap();
        g.bench_function(format!("train_step from the caller's loop {threads}T"), |bch| {
            bch.iter(|| m.train_step(x.view(), Targets::Classes(&y)).unwrap())
        });
        let mut out = Matrix::zeros(1, 10);
        g.bench_function(format!("predict_into 1 sample {threads}T"), |bch| {
            bch.iter(|| m.predict_into(one, out.view_mut()).unwrap())
        });
        g.bench_function(format!("predict 1 sample {threads}T"), |bch| bch.iter(|| m.predict(one).unwrap()));
    }
    g.finish();
}

/// MNIST's first layer alone, 784 → 128 with ReLU, on one thread, at batch 1, 8 and
/// 128: `forward`, the fused `backward_update` (SGD, no dX) and its twin, `backward_dz`
/// then `update_params`. At batch 1 the update is memory-bound: W (400 KB, in L2) is
/// read by the forward product and read and written by the update.
fn bench_first_layer(c: &mut Criterion) {
    let mut g = c.benchmark_group("Dense 784-128 one thread");
    let opt = Optimizer::sgd(1e-3);
    for batch in [1, 8, 128] {
        let mut rng = Rng::new(1);
        let mut d = Dense::new(784, 128, Init::He, &mut rng).with_relu();
        d.set_threads(Some(1));
        let x = Matrix::from_fn(batch, 784, |_, _| rng.uniform(0.0, 1.0));
        let dz = Matrix::from_fn(batch, 128, |_, _| rng.uniform(-1e-3, 1e-3));
        g.bench_function(format!("forward b{batch}"), |bch| bch.iter(|| d.forward(x.view()).unwrap()));
        let mut t = 0;
        g.bench_function(format!("backward_update b{batch}"), |bch| {
            bch.iter(|| {
                t += 1;
                d.backward_update(x.view(), dz.view(), Dinputs::Skip, &opt, t).unwrap()
            })
        });
        g.bench_function(format!("backward_dz + update_params b{batch}"), |bch| {
            bch.iter(|| {
                d.backward_dz(x.view(), dz.view(), Dinputs::Skip).unwrap();
                d.update_params(&opt, 0).unwrap()
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .configure_from_args();
    bench_train(&mut c);
    bench_per_call(&mut c);
    bench_first_layer(&mut c);
    c.final_summary();
}
