//! A model called once per batch from the user's own loop (the NNFS way) keeps its
//! thread pool: counted with a global allocator (this file is its own test binary
//! with a single test, so no other test's allocations are counted).

mod common;

use common::{mnist_like_batch as data, ALLOCS};
use fusegrad::nn::{Loss, Optimizer, Sequential, Targets};
use fusegrad::Matrix;
use std::sync::atomic::Ordering;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// The NNFS way: the user's own loop calls `train_step`, `predict_into` and
/// `evaluate` once per batch, from outside any thread pool. The model keeps its pool,
/// so a warm loop allocates (almost) nothing: building a pool per call, as the model
/// once did, allocates dozens of times per call (threads, queues, registry). The only
/// allocations left are rayon's: its job injector takes a new block every 63 jobs
/// handed to the pool from outside (`predict` and `evaluate`: 2–3 in these 30 rounds,
/// whether or not the workers slept in between, measured apart; `train_step` runs on
/// the caller's thread and wakes its parked helpers without allocating).
#[test]
fn per_batch_calls_keep_the_pool() {
    for threads in [1, 2] {
        per_batch_calls(threads);
    }
}

fn per_batch_calls(threads: usize) {
    let (x, y) = data(128);
    let mut m = Sequential::builder(784)
        .seed(1)
        .dense(128)
        .relu()
        .dense(64)
        .relu()
        .dense(10)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
        .unwrap();
    m.set_threads(Some(threads)).unwrap();
    let one = x.view().submatrix(0, 0, 1, 784).unwrap();
    let mut probs = Matrix::zeros(128, 10);
    let mut prob1 = Matrix::zeros(1, 10);
    let mut round = |m: &mut Sequential| {
        m.train_step(x.view(), Targets::Classes(&y)).unwrap();
        m.predict_into(x.view(), probs.view_mut()).unwrap();
        m.predict_into(one, prob1.view_mut()).unwrap();
        m.evaluate(x.view(), Targets::Classes(&y), 128).unwrap();
    };
    for _ in 0..3 {
        round(&mut m);
    }
    let before = ALLOCS.load(Ordering::SeqCst);
    for i in 0..30 {
        round(&mut m);
        if i % 2 == 0 {
            // Longer than the helpers of `train_step`'s region wait awake (2 ms): they
            // park, and the next call wakes them without spawning anything.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    eprintln!("{threads} thread(s): {allocs} allocations in 30 rounds of 4 calls");
    assert!(
        allocs <= 6,
        "{threads} thread(s): {allocs} allocations in 30 rounds of 4 per-batch calls: a pool per call?"
    );
    let row_sums: Vec<f32> = (0..128).map(|i| probs.row(i).iter().sum()).collect();
    assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "probabilities: {row_sums:?}");
}
