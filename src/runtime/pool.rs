//! The thread pool a model runs in: built on first use and kept, so that a call per
//! batch costs one hand-over to a worker rather than a new set of threads; its
//! workers optionally pinned to distinct cores.

use super::region::{Region, Spawn, Team};
use crate::error::{Error, Result};
use std::sync::{Arc, OnceLock};

/// A model's thread configuration and, once built, its pool. Clones share the pool.
#[derive(Clone, Debug)]
pub(crate) struct ModelPool {
    /// `Some(n)`: run in a pool of `n` threads (1: on the caller's thread); `None`: in
    /// the caller's rayon pool, or one of rayon's default size.
    threads: Option<usize>,
    pin: bool,
    /// Built by the first call that needs it (any of them: calls may come from several
    /// threads at once through a shared model).
    pool: OnceLock<Arc<rayon::ThreadPool>>,
    /// The helpers of the regions its steps run in (see `region`), made by the first.
    team: OnceLock<Arc<Team>>,
    /// The pool the helpers of a region led from outside `pool` run in: `threads − 1`
    /// workers, never pinned (the leader is the caller's thread, which the OS places
    /// freely; a helper pinned to the leader's core halves both).
    helper_pool: OnceLock<Arc<rayon::ThreadPool>>,
}

impl ModelPool {
    pub(crate) fn new() -> Self {
        ModelPool {
            threads: None,
            pin: true,
            pool: OnceLock::new(),
            team: OnceLock::new(),
            helper_pool: OnceLock::new(),
        }
    }

    /// A new thread count drops the pool; the next call builds one of the new size.
    pub(crate) fn set_threads(&mut self, threads: Option<usize>) {
        self.threads = threads;
        self.pool = OnceLock::new();
        self.team = OnceLock::new();
        self.helper_pool = OnceLock::new();
    }

    pub(crate) fn set_pin(&mut self, pin: bool) {
        if pin != self.pin {
            self.pool = OnceLock::new();
            self.team = OnceLock::new();
        }
        self.pin = pin;
    }

    /// Runs `f` in the model's pool, so that every GEMM is called from a pool worker (a
    /// call from outside pays for waking the workers each time), and gives it the
    /// threads its passes may use. A one-thread model runs `f` on the caller's thread,
    /// told to use that thread alone. Already inside
    /// the model's pool, or inside a pool of the configured size (any size when none is
    /// configured), `f` runs right here: a second pool would only compete with the
    /// caller's for the same cores.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the pool's threads cannot be started.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce(usize) -> R + Send) -> Result<R> {
        if self.threads == Some(1) {
            return Ok(f(1));
        }
        if self.in_the_pool_to_use() {
            return Ok(f(rayon::current_num_threads()));
        }
        let n = self.threads.unwrap_or_else(rayon::current_num_threads);
        let pool = built(&self.pool, n, self.pin)?;
        Ok(pool.install(|| f(rayon::current_num_threads())))
    }

    /// Whether this thread already is in the pool the model's work should use: the
    /// model's own, or any pool of the configured size (any size when none is set).
    fn in_the_pool_to_use(&self) -> bool {
        let in_a_pool = rayon::current_thread_index().is_some();
        (in_a_pool && self.threads.is_none_or(|n| n == rayon::current_num_threads()))
            || self.pool.get().is_some_and(|p| p.current_thread_index().is_some())
    }

    /// Runs `f` on this thread as the leader of a region (see `region`) of the model's
    /// threads, the helpers spawned into the pool [`Self::install`] would run `f` in
    /// (the current one when that is of the configured size, else the model's own).
    /// `f` gets the region and its thread count; `None` and 1 when the model has one
    /// thread or the region cannot have its helpers (then `f` runs alone, with the same
    /// results).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the pool's threads cannot be started.
    pub(crate) fn lead<R>(&self, f: impl FnOnce(Option<&Region<'_>>, usize) -> R) -> Result<R> {
        if self.threads == Some(1) {
            return Ok(f(None, 1));
        }
        let in_a_pool = rayon::current_thread_index().is_some();
        if self.in_the_pool_to_use() || (self.threads.is_none() && !in_a_pool) {
            // In the pool to use, or (no size configured) outside any: the global pool.
            return Ok(self.lead_with(rayon::current_num_threads(), Spawn::Current, f));
        }
        let n = self.threads.expect("a configured size: the other cases returned above");
        let helpers = built(&self.helper_pool, n - 1, false)?;
        Ok(self.lead_with(n, Spawn::Pool(helpers), f))
    }

    /// [`Self::lead`] from a worker of the model's pool (inside [`Self::install`]), with
    /// `threads` its size: the helpers are spawned into this pool.
    pub(crate) fn lead_here<R>(&self, threads: usize, f: impl FnOnce(Option<&Region<'_>>, usize) -> R) -> R {
        self.lead_with(threads, Spawn::Current, f)
    }

    fn lead_with<R>(&self, threads: usize, spawn: Spawn<'_>, f: impl FnOnce(Option<&Region<'_>>, usize) -> R) -> R {
        let team = self.team.get_or_init(|| Arc::new(Team::new(threads)));
        if threads < 2 || team.threads() != threads {
            // Called from a pool of another size than the first call's: alone.
            return f(None, 1);
        }
        team.lead(spawn, |region| match region {
            Some(r) => f(Some(r), r.threads()),
            None => f(None, 1),
        })
    }
}

/// The pool in `slot`, built with `n` threads (pinned when `pin`) on first use.
fn built(slot: &OnceLock<Arc<rayon::ThreadPool>>, n: usize, pin: bool) -> Result<&rayon::ThreadPool> {
    if let Some(pool) = slot.get() {
        return Ok(pool);
    }
    let builder = rayon::ThreadPoolBuilder::new().num_threads(n);
    #[cfg(feature = "pin-threads")]
    let builder = self::pin(builder, n, pin);
    #[cfg(not(feature = "pin-threads"))]
    let _ = pin;
    let pool = builder.build().map_err(|e| Error::InvalidArgument(format!("could not start {n} threads: {e}")))?;
    // Two first calls at once both build one; the loser's is dropped.
    let _ = slot.set(Arc::new(pool));
    Ok(slot.get().expect("set above"))
}

/// `builder` with a start handler that pins worker `i` to core `i`, when `pin` is on
/// and there are at least `n` cores.
#[cfg(feature = "pin-threads")]
fn pin<S>(builder: rayon::ThreadPoolBuilder<S>, n: usize, pin: bool) -> rayon::ThreadPoolBuilder<S> {
    let cores = if pin && n > 1 { core_affinity::get_core_ids() } else { None };
    match cores.filter(|c| c.len() >= n) {
        Some(cores) => builder.start_handler(move |i| {
            // Best effort: a refused pin leaves the worker where the OS put it.
            core_affinity::set_for_current(cores[i]);
        }),
        None => builder,
    }
}
