//! Every thread decision of the crate: how parallel passes split and when they stay on
//! one thread (`workers`), the pool a model runs in (`pool`), the region a step's
//! threads share (`region`), and how `fit` runs its steps on a busy machine
//! (`governor`). Results never depend on these choices:
//! threads split outputs, never a reduction.

pub(crate) mod governor;
mod pool;
pub(crate) mod region;
mod workers;

pub(crate) use pool::ModelPool;
pub use workers::with_hot_workers;
pub(crate) use workers::{parts_for, split_point};

/// Helper jobs the regions of every model have spawned so far in this process (each a
/// small allocation of rayon's). The allocation tests use it to tell helpers coming
/// back to a shared pool they left idle from an allocation of the step itself; not
/// part of the API.
#[doc(hidden)]
pub fn helper_spawns() -> usize {
    region::spawns()
}
