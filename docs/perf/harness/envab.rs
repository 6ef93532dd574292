// envab widths batch rounds VAR valA valB: alternates blocks of train_step with VAR=valA / valB, same model.
use fusegrad::nn::{Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let widths: Vec<usize> = a[1].split(',').map(|x| x.parse().unwrap()).collect();
    let batch: usize = a[2].parse().unwrap();
    let rounds: usize = a[3].parse().unwrap();
    let var = &a[4];
    let vals = [&a[5], &a[6]];
    let threads: usize = std::env::var("T").ok().map(|x| x.parse().unwrap()).unwrap_or(2);
    let mut b = Sequential::builder(784);
    for &w in &widths { b = b.dense(w).relu(); }
    let mut model = b.dense(10).seed(1).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.01)).unwrap();
    model.set_threads(Some(threads)).unwrap();
    let mut s = 12345u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s >> 40) as f32 / (1u64 << 24) as f32 };
    let nb = 32;
    let x = Matrix::from_fn(batch * nb, 784, |_, _| { let r = rnd(); if r < 0.8 { 0.0 } else { r } });
    let y: Vec<usize> = (0..batch * nb).map(|i| (i * 7) % 10).collect();
    let steps = (20000 / batch).clamp(20, 400);
    let mut meds = [Vec::new(), Vec::new()];
    let mut diffs = Vec::new();
    for r in 0..rounds {
        let mut pair = [0.0; 2];
        for v in 0..2 {
            std::env::set_var(var, vals[v]);
            let mut ts = Vec::new();
            for i in 0..steps {
                let j = i % nb;
                let xb = x.view().submatrix(j * batch, 0, batch, 784).unwrap();
                let t = Instant::now();
                model.train_step(xb, Targets::Classes(&y[j * batch..(j + 1) * batch])).unwrap();
                ts.push(t.elapsed().as_secs_f64() * 1e6);
            }
            ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
            pair[v] = ts[ts.len() / 2];
            if r > 0 { meds[v].push(pair[v]); }
        }
        if r > 0 { diffs.push(pair[1] - pair[0]); }
    }
    let med = |v: &mut Vec<f64>| { v.sort_by(|a, b| a.partial_cmp(b).unwrap()); (v[v.len() / 2], v[0]) };
    let (m0, b0) = med(&mut meds[0]);
    let (m1, b1) = med(&mut meds[1]);
    let (d, _) = med(&mut diffs);
    println!("{widths:?} b{batch} t{threads} {var}: {}={m0:.1} (best {b0:.1})  {}={m1:.1} (best {b1:.1})  median paired diff {d:+.1} µs", vals[0], vals[1]);
}
