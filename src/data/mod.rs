//! Data sets: NNFS's spiral toy data, and the real MNIST (`mnist`, with the default
//! feature `mnist`).

pub(crate) mod convert;
#[cfg(feature = "mnist")]
pub mod mnist;
mod spiral;

pub use spiral::spiral;
