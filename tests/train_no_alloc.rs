//! After the first step, a training step performs no heap allocation: counted with a
//! global allocator (this file is its own test binary with a single test).
//!
//! In a pool of the user's (here `pool.install`), a step's helpers are rayon jobs
//! that leave the pool after waiting 2 ms for the next step, so that they do not
//! hold its workers; a step after that spawns them again, one small allocation of
//! rayon's each. A busy machine (CI's) preempts the loop that long now and then, so
//! the counts below leave out exactly those spawns ([`helper_spawns`]); a model in a
//! pool of its own parks its helpers instead and allocates nothing at all, however
//! long the pause between steps.

mod common;

use common::{mnist_like_batch as data, ALLOCS};
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use fusegrad::runtime::helper_spawns;
use std::sync::atomic::Ordering;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// 784-128-64-10 with dropout, on `threads` threads.
fn mnist_model(optimizer: Optimizer, threads: usize) -> Sequential {
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
    m
}

#[test]
fn training_steps_do_not_allocate() {
    let optimizers =
        [Optimizer::sgd(0.1), Optimizer::sgd_momentum(0.1, 0.9), Optimizer::adam(1e-3), Optimizer::rmsprop(1e-3)];
    let (x, y) = data(128);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for optimizer in optimizers {
        for threads in [1, 2] {
            let mut m = mnist_model(optimizer, threads);
            pool.install(|| {
                for _ in 0..3 {
                    m.train_step(x.view(), Targets::Classes(&y)).unwrap();
                }
                let (before, spawns) = (ALLOCS.load(Ordering::SeqCst), helper_spawns());
                for _ in 0..30 {
                    m.train_step(x.view(), Targets::Classes(&y)).unwrap();
                }
                let allocs = ALLOCS.load(Ordering::SeqCst) - before;
                let spawns = helper_spawns() - spawns;
                assert!(
                    allocs <= spawns,
                    "{optimizer:?}, {threads} threads: {allocs} allocations in 30 steps ({spawns} helpers spawned)"
                );
            });
        }
    }

    // A model in a pool of its own (called from outside any pool): its helpers park
    // between steps, even across pauses longer than they wait awake, and nothing is
    // spawned again.
    let mut m = mnist_model(Optimizer::adam(1e-3), 2);
    for _ in 0..3 {
        m.train_step(x.view(), Targets::Classes(&y)).unwrap();
    }
    let (before, spawns) = (ALLOCS.load(Ordering::SeqCst), helper_spawns());
    for i in 0..30 {
        m.train_step(x.view(), Targets::Classes(&y)).unwrap();
        if i % 3 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let allocs = ALLOCS.load(Ordering::SeqCst) - before;
    assert_eq!((allocs, helper_spawns() - spawns), (0, 0), "own pool: (allocations, helper spawns) in 30 steps");

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
            let (before, spawns) = (ALLOCS.load(Ordering::SeqCst), helper_spawns());
            m.fit(x.view(), Targets::Classes(&y), &opts).unwrap();
            (ALLOCS.load(Ordering::SeqCst) - before) - (helper_spawns() - spawns)
        })
    };
    // Helpers spawned again (when they left since the last call) left out, the longer
    // epochs (60 steps more) allocate exactly as much.
    let (short, long) = (count_fit(160), count_fit(640));
    assert_eq!(short, long, "fit allocates per step: {short} allocations for 20 steps, {long} for 80");
}
