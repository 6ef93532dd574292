// Copy to examples/ to build; never commit it there. (Reads the variable through the crate's
// temporary switches of an experiment; unchanged crates ignore it.)
// fitenv batch threads samples rounds VAR a b [widths]: fit one epoch over real MNIST bytes per config,
// alternating VAR=a / VAR=b, governor off; µs per step, median over rounds.
use fusegrad::nn::{FitOptions, Loss, Optimizer, ScaledBytes, Sequential, Targets};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let batch: usize = a[1].parse().unwrap();
    let threads: usize = a[2].parse().unwrap();
    let n: usize = a[3].parse().unwrap();
    let rounds: usize = a[4].parse().unwrap();
    let var = &a[5];
    let vals = [&a[6], &a[7]];
    let widths: Vec<usize> = a.get(8).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect()).unwrap_or(vec![128, 64]);
    let img = std::fs::read("/work/shared/data/mnist/train-images-idx3-ubyte").unwrap();
    let px = &img[16..16 + 60000 * 784];
    let lab = std::fs::read("/work/shared/data/mnist/train-labels-idx1-ubyte").unwrap();
    let y: Vec<usize> = lab[8..8 + 60000].iter().map(|&b| b as usize).collect();
    let mut b = Sequential::builder(784).seed(1);
    for &w in &widths { b = b.dense(w).relu(); }
    let mut m = b.dense(10).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.05)).unwrap();
    m.set_threads(Some(threads)).unwrap();
    m.set_adaptive_threads(false);
    let x = ScaledBytes::new(&px[..n * 784], 784, 1.0 / 255.0).unwrap();
    let opts = FitOptions::default().with_epochs(1).with_batch_size(batch).with_seed(3);
    m.fit(x, Targets::Classes(&y[..n]), &opts).unwrap();
    let mut res = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for v in 0..2 {
            std::env::set_var(var, vals[v]);
            let t0 = Instant::now();
            m.fit(x, Targets::Classes(&y[..n]), &opts).unwrap();
            res[v].push(t0.elapsed().as_secs_f64() * 1e6 / (n / batch) as f64);
        }
    }
    let med = |v: &Vec<f64>| { let mut v = v.clone(); v.sort_by(|a, b| a.partial_cmp(b).unwrap()); v[v.len() / 2] };
    let wins = res[0].iter().zip(&res[1]).filter(|(a, b)| b < a).count();
    println!("b{batch} t{threads} {widths:?} {var}: {}={:.2}  {}={:.2} µs/step ({}/{} rounds {} faster)", vals[0], med(&res[0]), vals[1], med(&res[1]), wins, rounds, vals[1]);
}
