// steploop BATCH THREADS STEPS [W1,W2,..]: a train_step loop over real MNIST batches ($MNIST_DIR
// ignored: /work/shared/data/mnist), the median µs of the second half of the steps.
// Copy to examples/ to build; never commit it there.
use fusegrad::nn::{Loss, Optimizer, Sequential, Targets};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let batch: usize = a[1].parse().unwrap();
    let threads: usize = a[2].parse().unwrap();
    let steps: usize = a[3].parse().unwrap();
    let widths: Vec<usize> =
        a.get(4).map(|s| s.split(',').map(|x| x.parse().unwrap()).collect()).unwrap_or(vec![128, 64]);
    let m = fusegrad::data::mnist::load("/work/shared/data/mnist").unwrap();
    let x = m.train_images;
    let y = m.train_labels;
    let mut b = Sequential::builder(784);
    for &w in &widths {
        b = b.dense(w).relu();
    }
    let mut model = b.dense(10).seed(1).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1)).unwrap();
    model.set_threads(Some(threads)).unwrap();
    let nb = 60000 / batch;
    let mut ts = Vec::new();
    for i in 0..steps {
        let j = i % nb;
        let xb = x.view().submatrix(j * batch, 0, batch, 784).unwrap();
        let t = Instant::now();
        model.train_step(xb, Targets::Classes(&y[j * batch..(j + 1) * batch])).unwrap();
        ts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut w = ts[steps / 2..].to_vec();
    w.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "b{batch} t{threads} {widths:?}: median {:.1} µs/step (second half), p10 {:.1}",
        w[w.len() / 2],
        w[w.len() / 10]
    );
}
