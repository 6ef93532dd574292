//! The thread pool a model runs in: built on first use and kept, so that a call per
//! batch costs one hand-over to a worker rather than a new set of threads; its
//! workers optionally pinned to distinct cores.

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
}

impl ModelPool {
    pub(crate) fn new() -> Self {
        ModelPool { threads: None, pin: true, pool: OnceLock::new() }
    }

    /// A new thread count drops the pool; the next call builds one of the new size.
    pub(crate) fn set_threads(&mut self, threads: Option<usize>) {
        self.threads = threads;
        self.pool = OnceLock::new();
    }

    pub(crate) fn set_pin(&mut self, pin: bool) {
        if pin != self.pin {
            self.pool = OnceLock::new();
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
        let in_a_pool = rayon::current_thread_index().is_some();
        if in_a_pool && self.threads.is_none_or(|n| n == rayon::current_num_threads()) {
            return Ok(f(rayon::current_num_threads()));
        }
        if self.pool.get().is_some_and(|p| p.current_thread_index().is_some()) {
            return Ok(f(rayon::current_num_threads()));
        }
        let pool = match self.pool.get() {
            Some(pool) => pool,
            None => {
                let n = self.threads.unwrap_or_else(rayon::current_num_threads);
                let builder = rayon::ThreadPoolBuilder::new().num_threads(n);
                #[cfg(feature = "pin-threads")]
                let builder = pin(builder, n, self.pin);
                let pool =
                    builder.build().map_err(|e| Error::InvalidArgument(format!("could not start {n} threads: {e}")))?;
                // Two first calls at once both build one; the loser's is dropped.
                let _ = self.pool.set(Arc::new(pool));
                self.pool.get().expect("set above")
            }
        };
        Ok(pool.install(|| f(rayon::current_num_threads())))
    }
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
