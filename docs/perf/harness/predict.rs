// predict of one MNIST-like sample: median and best of blocks (µs per call).
use fusegrad::nn::{Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::time::Instant;
fn main() {
    let threads: usize = std::env::var("T").ok().map(|x| x.parse().unwrap()).unwrap_or(1);
    let mut model = Sequential::builder(784).seed(1).dense(128).relu().dense(64).relu().dense(10)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.01)).unwrap();
    model.set_threads(Some(threads)).unwrap();
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 24) as f32 };
    let x = Matrix::from_fn(64, 784, |_, _| { let r = rnd(); if r < 0.8 { 0.0 } else { r } });
    let y: Vec<usize> = (0..64).map(|i| i % 10).collect();
    if std::env::var("TRAINED").is_ok() { model.train_step(x.view(), Targets::Classes(&y)).unwrap(); }
    let mut out = Matrix::zeros(1, 10);
    let mut meds = Vec::new();
    for r in 0..40 {
        let mut ts = Vec::new();
        for i in 0..500 {
            let xi = x.view().submatrix(i % 64, 0, 1, 784).unwrap();
            let t = Instant::now();
            model.predict_into(xi, out.view_mut()).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if r > 0 { meds.push(ts[ts.len() / 2]); }
    }
    meds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("predict 1 sample t{threads}: median {:.2} µs, best block {:.2}", meds[meds.len() / 2], meds[0]);
}
