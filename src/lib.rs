//! # fusegrad
//!
//! SIMD-optimized CPU kernels for training small neural networks, and the layer API
//! of "Neural Networks from Scratch" on top of them. Batch-major, row-major f32: a
//! Dense layer computes `X·W + b` with `X` batch × inputs and `W` inputs × outputs.
//!
//! - [`nn`]: the layer API of NNFS — [`nn::Dense`] (`weights`, `biases`, `dweights`,
//!   `dbiases`, `dinputs`, `forward`, `backward`), activations, dropout, losses,
//!   optimizers, and [`nn::Sequential`], which fuses Dense + ReLU, plans its buffers
//!   once and trains without allocating per step.
//! - [`ops`]: the fused row/element kernels (softmax + cross-entropy in one pass,
//!   activations, losses, optimizer updates), each with a naive twin.
//! - [`gemm`]: a cache-blocked, runtime-dispatched (AVX-512, AVX2+FMA, portable),
//!   rayon-parallel single-precision GEMM that reads transposed operands in place and
//!   fuses the epilogues a training step needs (bias, bias + ReLU, the ReLU mask of the
//!   backward pass, and the bias-gradient column sums).
//! - [`data`]: NNFS's spiral data set.
//!
//! The GEMM directly, as one Dense + ReLU layer forward and backward:
//!
//! ```
//! use fusegrad::{gemm::{gemm, Accum, Epilogue}, Matrix};
//!
//! // A Dense + ReLU layer, forward and backward, as NNFS writes it:
//! let x = Matrix::from_fn(4, 3, |i, j| (i as f32 - j as f32) * 0.5); // batch 4 × 3 inputs
//! let w = Matrix::from_fn(3, 2, |i, j| (i + 2 * j) as f32 * 0.1);    // 3 inputs × 2 neurons
//! let b = [0.1, -0.2];
//!
//! let mut out = Matrix::zeros(4, 2);                                  // max(X·W + b, 0)
//! gemm(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::BiasRelu(&b))?;
//!
//! let dvalues = Matrix::from_fn(4, 2, |_, _| 1.0);                    // upstream gradient
//! let mut dz = Matrix::zeros(4, 2);                                   // through the ReLU:
//! dz.as_mut_slice().copy_from_slice(dvalues.as_slice());
//! for (g, &o) in dz.as_mut_slice().iter_mut().zip(out.as_slice()) {
//!     if o <= 0.0 { *g = 0.0 }
//! }
//! let mut dweights = Matrix::zeros(3, 2);                             // Xᵀ·dZ, Xᵀ is a view
//! let mut dbiases = [0.0f32; 2];                                      // colsum(dZ), fused
//! gemm(dweights.view_mut(), x.t(), dz.view(), Accum::Overwrite, Epilogue::BiasGradB(&mut dbiases))?;
//!
//! let expected_db: f32 = (0..4).map(|i| dz[(i, 0)]).sum();
//! assert_eq!(dbiases[0], expected_db);
//! # Ok::<(), fusegrad::Error>(())
//! ```
//!
//! ## Performance and determinism
//! - The kernel path is chosen once by CPU detection; force one with
//!   [`GemmOptions::isa`](gemm::GemmOptions) or `FUSEGRAD_KERNEL=avx512|avx2|portable`.
//! - Threads come from rayon (`RAYON_NUM_THREADS` is honoured); small products run on
//!   the calling thread. Results are bit-identical for any thread count.
//! - Build with `--release`: the debug build is tens of times slower.
//!
//! ## Errors
//! Functions that can fail on user input (shapes, views, kernel choice) return
//! [`Result`] with an [`Error`] that says what was expected and what came.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

pub mod data;
mod error;
pub mod gemm;
#[cfg(feature = "ndarray")]
pub mod interop;
mod matrix;
pub mod nn;
pub mod ops;
pub mod runtime;

/// The old home of [`runtime::with_hot_workers`].
#[deprecated(since = "0.1.0", note = "moved to `fusegrad::runtime::with_hot_workers`")]
pub mod parallel {
    pub use crate::runtime::with_hot_workers;
}
mod rng;

pub use error::{Error, IoCause, Result};

/// The README's code blocks, compiled and run as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
pub use matrix::{MatMut, MatRef, Matrix};
pub use rng::Rng;
