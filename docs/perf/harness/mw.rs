// Alternates blocks of train_step between models differing only in min_work_per_thread.
use fusegrad::nn::{Layer, Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> = a[1].split(',').map(|x| x.parse().unwrap()).collect();
    let batch: usize = a[2].parse().unwrap();
    let rounds: usize = a[3].parse().unwrap();
    let mws: Vec<usize> = a[4].split(',').map(|x| x.parse().unwrap()).collect();
    let threads: usize = std::env::var("T").ok().map(|x| x.parse().unwrap()).unwrap_or(2);
    let mut models: Vec<Sequential> = mws.iter().map(|&mw| {
        let mut b = Sequential::builder(784);
        for &w in &widths { b = b.dense(w).relu(); }
        let mut m = b.dense(10).seed(1).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.01)).unwrap();
        m.set_threads(Some(threads)).unwrap();
        for l in m.layers_mut() { if let Layer::Dense(d) = l { d.set_min_work_per_thread(Some(mw)); } }
        m
    }).collect();
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 24) as f32 };
    let nb = 64;
    let x = Matrix::from_fn(batch * nb, 784, |_, _| { let r = rnd(); if r < 0.8 { 0.0 } else { r } });
    let y: Vec<usize> = (0..batch * nb).map(|i| (i * 7) % 10).collect();
    let mut meds = vec![Vec::new(); mws.len()];
    for r in 0..rounds {
        for (mi, model) in models.iter_mut().enumerate() {
            let mut ts = Vec::new();
            for i in 0..200 {
                let j = i % nb;
                let xb = x.view().submatrix(j * batch, 0, batch, 784).unwrap();
                let t = Instant::now();
                model.train_step(xb, Targets::Classes(&y[j * batch..(j + 1) * batch])).unwrap();
                ts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
            if r > 0 { meds[mi].push(ts[ts.len() / 2]); }
        }
    }
    for (mi, m) in meds.iter_mut().enumerate() {
        m.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{:?} b{} t{} mw {}: median {:.1} µs/step, best {:.1}", widths, batch, threads, mws[mi], m[m.len() / 2], m[0]);
    }
}
