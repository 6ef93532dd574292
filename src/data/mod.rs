//! Data sets: NNFS's spiral toy data (here), and the real MNIST (issue #5).

mod spiral;

pub use spiral::spiral;
