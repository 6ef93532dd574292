//! How the crate's parallel passes use the current rayon pool: the even split of
//! elementwise passes over the threads a caller decided, and keeping the other
//! workers awake across a run of GEMMs called through the public GEMM API.
//!
//! An idle rayon worker spins only briefly before it sleeps, and waking it costs more
//! than a small product on 2 threads takes (docs/perf/mnist.md). [`with_hot_workers`]
//! keeps the other workers polling for work (OpenMP's "active" wait policy) while a
//! closure runs. (A model's own steps run in a region instead: see `region`.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Where to cut `len` elements in two for a balanced split over `parts` tasks:
/// `None` when one task should do it all (`parts` ≤ 1), else the end of the first
/// `parts / 2` tasks' share. Shares are whole multiples of 16 elements (a cache line of
/// f32), so neighbouring tasks never write the same line; the last share takes the rest.
///
/// The optimizer update and the finiteness check split this way, recursively with
/// `rayon::join`, so that every thread gets the same amount of work.
pub(crate) fn split_point(len: usize, parts: usize) -> Option<usize> {
    if parts <= 1 {
        return None;
    }
    let share = len.div_ceil(parts).next_multiple_of(16);
    let mid = (share * (parts / 2)).min(len);
    Some(mid)
}

/// How many tasks an elementwise pass over `len` elements deserves when it may use
/// `threads` threads: one per thread, but none smaller than `min_len` (below that,
/// scheduling a task costs more than the work).
pub(crate) fn parts_for(threads: usize, len: usize, min_len: usize) -> usize {
    threads.min(len / min_len.max(1)).max(1)
}

/// Sets the flag when dropped, so helpers stop even if the closure panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on this thread while every other worker of the current rayon pool spins,
/// executing any rayon work that appears (the GEMM tiles `f` hands out) the moment it
/// appears. Outside a pool, or in a pool of one thread, it just runs `f`.
///
/// The helpers burn their cores while `f` runs: use it around a training loop, not
/// around code that leaves the pool idle for long.
pub fn with_hot_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || rayon::current_thread_index().is_none() {
        return f();
    }

    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    rayon::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..helpers {
            s.spawn(|_| {
                started.fetch_add(1, Ordering::AcqRel);
                while !stop.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Every helper must be running before `f` starts: otherwise this thread, waiting
        // inside `f` for a stolen GEMM tile, could pick up a helper and spin forever.
        while started.load(Ordering::Acquire) < helpers {
            std::thread::yield_now();
        }
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_points_are_balanced_and_aligned() {
        assert_eq!(split_point(100_352, 1), None);
        assert_eq!(split_point(100_352, 2), Some(50_176)); // 784×128 in equal halves
        assert_eq!(split_point(100, 2), Some(64)); // shares round up to 16
        assert_eq!(split_point(10, 2), Some(10)); // the second share is empty, not negative
        assert_eq!(split_point(99, 3), Some(48));
        for (len, parts) in [(0, 2), (1, 4), (1000, 3), (100_352, 4), (17, 16)] {
            if let Some(mid) = split_point(len, parts) {
                assert!(mid <= len && (mid % 16 == 0 || mid == len), "{len} {parts}: {mid}");
            }
        }
    }

    #[test]
    fn runs_the_closure_and_returns_in_any_pool() {
        assert_eq!(with_hot_workers(|| 41 + 1), 42); // outside a pool
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let sum: u64 = pool.install(|| {
                with_hot_workers(|| {
                    use rayon::prelude::*;
                    (0..10_000u64).into_par_iter().sum()
                })
            });
            assert_eq!(sum, 10_000 * 9_999 / 2, "{threads} threads");
        }
    }

    #[test]
    fn parts_follow_the_threads_and_the_smallest_share() {
        assert_eq!(parts_for(3, 1 << 20, 1024), 3);
        assert_eq!(parts_for(1, 1 << 20, 1024), 1);
        assert_eq!(parts_for(8, 3000, 1024), 2, "no share below min_len");
        assert_eq!(parts_for(4, 10, 1024), 1);
    }

    #[test]
    fn helpers_stop_when_the_closure_panics() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let r = pool.install(|| std::panic::catch_unwind(|| with_hot_workers(|| panic!("boom"))));
        assert!(r.is_err());
        // The pool still works: the helper stopped spinning.
        assert_eq!(pool.install(|| with_hot_workers(|| 7)), 7);
    }
}
