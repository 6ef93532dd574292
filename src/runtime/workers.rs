//! How the crate's parallel passes use the current rayon pool: the even split of
//! elementwise passes over the threads a caller decided, and keeping the other
//! workers awake across a run of GEMMs.
//!
//! A training step runs eight GEMMs with short serial passes between them (the loss,
//! the finiteness check, the update). An idle rayon worker spins only briefly before it
//! sleeps, and waking it costs more than a small product on 2 threads takes
//! (docs/perf/mnist.md). [`with_hot_workers`] keeps the other workers polling for work
//! (OpenMP's "active" wait policy) while a closure runs.

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
    with_workers(|_| f())
}

/// Tells the helpers of [`with_workers`] whether to spin (hot) or park.
pub(crate) struct Helpers {
    hot: AtomicBool,
}

impl Helpers {
    /// Hot: the helpers spin and take any rayon work at once. Cold: they park (a
    /// bounded spin, then sleeps of up to a millisecond), leaving their cores to other
    /// processes, and take work only when they wake.
    pub(crate) fn set_hot(&self, hot: bool) {
        self.hot.store(hot, Ordering::Release);
    }
}

/// [`with_hot_workers`] whose helpers `f` can park and wake through [`Helpers`].
pub(crate) fn with_workers<R: Send>(f: impl FnOnce(&Helpers) -> R + Send) -> R {
    let control = Helpers { hot: AtomicBool::new(true) };
    let helpers = rayon::current_num_threads().saturating_sub(1);
    if helpers == 0 || rayon::current_thread_index().is_none() {
        return f(&control);
    }
    let stop = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    rayon::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..helpers {
            s.spawn(|_| {
                started.fetch_add(1, Ordering::AcqRel);
                let mut idle_rounds = 0u32;
                while !stop.load(Ordering::Acquire) {
                    if rayon::yield_now() == Some(rayon::Yield::Executed) {
                        idle_rounds = 0;
                    } else if control.hot.load(Ordering::Acquire) || idle_rounds < 64 {
                        idle_rounds += 1;
                        std::hint::spin_loop();
                    } else {
                        // Parked: wake every millisecond to look for work or a change.
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                }
            });
        }
        // Every helper must be running before `f` starts: otherwise this thread, waiting
        // inside `f` for a stolen GEMM tile, could pick up a helper and spin forever.
        while started.load(Ordering::Acquire) < helpers {
            std::thread::yield_now();
        }
        f(&control)
    })
}

/// Runs `f` on another worker of the current pool and waits for it, yielding this
/// thread's core meanwhile: used when this thread's core is the busy one. The other
/// workers should be looking for work (inside [`with_workers`], hot); if none takes
/// the job within 50 ms, it runs here. Outside a pool, or in a pool of one thread, it
/// just runs `f` here. Allocation-free (a `rayon::join`, whose job lives on the stack).
pub(crate) fn on_another_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() < 2 || rayon::current_thread_index().is_none() {
        return f();
    }
    let taken = AtomicBool::new(false);
    let ((), out) = rayon::join(
        // `join` offers the second closure to thieves while this thread runs the first:
        // wait, yielding the core, until a helper has taken it (or give up: `join` then
        // runs it here).
        || {
            let start = std::time::Instant::now();
            while !taken.load(Ordering::Acquire) && start.elapsed() < std::time::Duration::from_millis(50) {
                std::thread::yield_now();
            }
        },
        || {
            taken.store(true, Ordering::Release);
            f()
        },
    );
    out
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
    fn work_handed_to_another_worker_runs_there_and_parked_helpers_still_help() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        pool.install(|| {
            with_workers(|helpers| {
                let here = rayon::current_thread_index();
                let there = on_another_worker(rayon::current_thread_index);
                assert!(there.is_some() && there != here, "ran on {there:?}, the loop is on {here:?}");
                // Parked helpers wake within a millisecond and still take work.
                helpers.set_hot(false);
                std::thread::sleep(std::time::Duration::from_millis(5));
                use rayon::prelude::*;
                let sum: u64 = (0..100_000u64).into_par_iter().sum();
                assert_eq!(sum, 100_000 * 99_999 / 2);
                helpers.set_hot(true);
                assert_ne!(on_another_worker(rayon::current_thread_index), here);
            });
        });
        assert_eq!(on_another_worker(|| 5), 5); // outside a pool: runs here
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
