use fusegrad::nn::{Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> = a[1].split(',').map(|x| x.parse().unwrap()).collect();
    let batch: usize = a[2].parse().unwrap();
    let rounds: usize = a[3].parse().unwrap();
    let threads: usize = std::env::var("T").ok().map(|x| x.parse().unwrap()).unwrap_or(1);
    let mut b = Sequential::builder(784);
    for &w in &widths { b = b.dense(w).relu(); }
    let mut model = b.dense(10).seed(1).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.01)).unwrap();
    model.set_threads(Some(threads)).unwrap();
    if let Ok(mw) = std::env::var("MW") {
        for l in model.layers_mut() { if let fusegrad::nn::Layer::Dense(d) = l { d.set_min_work_per_thread(Some(mw.parse().unwrap())); } }
    }
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 24) as f32 };
    let nb = 64;
    let x = Matrix::from_fn(batch * nb, 784, |_, _| { let r = rnd(); if r < 0.8 { 0.0 } else { r } });
    let y: Vec<usize> = (0..batch * nb).map(|i| (i * 7) % 10).collect();
    let mut meds = Vec::new();
    for r in 0..rounds {
        let mut ts = Vec::new();
        for i in 0..200 {
            let j = i % nb;
            let xb = x.view().submatrix(j * batch, 0, batch, 784).unwrap();
            let t = Instant::now();
            model.train_step(xb, Targets::Classes(&y[j * batch..(j + 1) * batch])).unwrap();
            ts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if r > 0 { meds.push(ts[ts.len() / 2]); }
    }
    meds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("{:?} b{} t{}: median-of-medians {:.1} µs/step, best {:.1}", widths, batch, threads, meds[meds.len() / 2], meds[0]);
}
