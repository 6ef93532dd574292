// fitab batch rounds: fit one epoch of 12 000 MNIST-like samples; configs in turn:
// 1 thread, 2 threads (governor on), 2 threads (governor off), 2 threads per-call train_step loop.
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::time::Instant;
fn model(t: usize, adaptive: bool) -> Sequential {
    let mut m = Sequential::builder(784).seed(1).dense(128).relu().dense(64).relu().dense(10)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.01)).unwrap();
    m.set_threads(Some(t)).unwrap();
    m.set_adaptive_threads(adaptive);
    m
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let batch: usize = a[1].parse().unwrap();
    let rounds: usize = a[2].parse().unwrap();
    let n = 12000;
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 24) as f32 };
    let x = Matrix::from_fn(n, 784, |_, _| { let r = rnd(); if r < 0.8 { 0.0 } else { r } });
    let y: Vec<usize> = (0..n).map(|i| (i * 7) % 10).collect();
    let names = ["1t fit", "2t fit governor", "2t fit no governor", "2t train_step loop", "1t train_step loop"];
    let mut res = vec![Vec::new(); names.len()];
    for _ in 0..rounds {
        for (c, name) in names.iter().enumerate() {
            let (t, adaptive) = match c { 0 | 4 => (1, true), 2 => (2, false), _ => (2, true) };
            let mut m = model(t, adaptive);
            let opts = FitOptions::default().with_epochs(1).with_batch_size(batch).with_shuffle(false);
            // warm
            m.fit(x.view().submatrix(0, 0, 2000, 784).unwrap(), Targets::Classes(&y[..2000]), &opts).unwrap();
            let t0 = Instant::now();
            if c >= 3 {
                for i in 0..n / batch {
                    let xb = x.view().submatrix(i * batch, 0, batch, 784).unwrap();
                    m.train_step(xb, Targets::Classes(&y[i * batch..(i + 1) * batch])).unwrap();
                }
            } else {
                m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
            }
            let us = t0.elapsed().as_secs_f64() * 1e6 / (n / batch) as f64;
            res[c].push(us);
            let _ = name;
        }
    }
    for (c, name) in names.iter().enumerate() {
        let mut v = res[c].clone(); v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("b{batch} {name:22}: median {:.1} µs/step, all {:?}", v[v.len() / 2], res[c].iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>());
    }
}
