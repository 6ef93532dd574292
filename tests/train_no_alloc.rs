//! After the first step, a training step performs no heap allocation: counted with a
//! global allocator (this file is its own test binary with a single test).

mod common;

use common::{mnist_like_batch as data, ALLOCS};
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use std::sync::atomic::Ordering;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

#[test]
fn training_steps_do_not_allocate() {
    let optimizers =
        [Optimizer::sgd(0.1), Optimizer::sgd_momentum(0.1, 0.9), Optimizer::adam(1e-3), Optimizer::rmsprop(1e-3)];
    let (x, y) = data(128);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for optimizer in optimizers {
        for threads in [1, 2] {
            let mut m = Sequential::builder(784)
                .seed(1)
                .dense(128)
                .relu()
                .dense(64)
                .relu()
                .dropout(0.1)
                .dense(10)
                .build(Loss::SoftmaxCrossEntropy, optimizer)
                .unwrap();
            m.set_threads(Some(threads)).unwrap();
            pool.install(|| {
                for _ in 0..3 {
                    m.train_step(x.view(), Targets::Classes(&y)).unwrap();
                }
                let before = ALLOCS.load(Ordering::SeqCst);
                for _ in 0..30 {
                    m.train_step(x.view(), Targets::Classes(&y)).unwrap();
                }
                let allocs = ALLOCS.load(Ordering::SeqCst) - before;
                assert_eq!(allocs, 0, "{optimizer:?}, {threads} threads: {allocs} allocations in 30 steps");
            });
        }
    }

    // `fit` allocates per call and per epoch (the shuffle order, the reports), never
    // per step: an epoch of 40 steps allocates exactly as much as one of 10. (Run inside
    // an existing pool: a pool that `fit` starts itself has worker threads whose own
    // start-up allocations race with the count.)
    let count_fit = |n: usize| {
        let (x, y) = data(n);
        let mut m = Sequential::builder(784)
            .seed(2)
            .dense(32)
            .relu()
            .dense(10)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
            .unwrap();
        let opts = FitOptions::default().with_epochs(2).with_batch_size(16).with_seed(3);
        pool.install(|| {
            m.fit(x.view(), Targets::Classes(&y), &opts).unwrap(); // warm
            let before = ALLOCS.load(Ordering::SeqCst);
            m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
            ALLOCS.load(Ordering::SeqCst) - before
        })
    };
    // Each call may spawn its region's helpers again (a rayon job each, when they left
    // since the last call): one allocation per helper and call, never per step (the
    // longer epochs have 60 steps more).
    let (short, long) = (count_fit(160), count_fit(640));
    assert!(short.abs_diff(long) <= 1, "fit allocates per step: {short} allocations for 20 steps, {long} for 80");
}
