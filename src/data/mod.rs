//! Data sets: NNFS's spiral toy data, and the real MNIST ([`mnist`]).

pub mod mnist;
mod spiral;

pub use spiral::spiral;
