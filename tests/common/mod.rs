//! Test helpers shared by the integration tests.
#![allow(dead_code)]

use fusegrad::nn::{Layer, Sequential};
use fusegrad::Matrix;

/// Every Dense layer's weights, biases and optimizer state, as bits: what "unchanged"
/// and "identical" compare.
pub fn parameter_bits(model: &Sequential) -> Vec<u32> {
    let mut out = Vec::new();
    for layer in model.layers() {
        if let Layer::Dense(d) = layer {
            out.extend(d.weights.as_slice().iter().chain(&d.biases).map(|x| x.to_bits()));
            for s in d.optimizer_state() {
                out.extend(s.iter().map(|x| x.to_bits()));
            }
        }
    }
    out
}

/// `n` deterministic MNIST-shaped samples (784 features in [0, 1)) and labels 0–9:
/// the batch the allocation-counting tests train on.
pub fn mnist_like_batch(n: usize) -> (Matrix, Vec<usize>) {
    let x = Matrix::from_fn(n, 784, |i, j| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    let y = (0..n).map(|i| i % 10).collect();
    (x, y)
}

/// SplitMix64: a tiny seeded generator, so every failing case can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    /// Uniform integer in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.uniform(-1.0, 1.0)).collect()
    }
}

/// Central-difference step for the f64 numerical gradients.
pub const H: f64 = 1e-5;

/// Numerical gradient of `f` at `x` by central differences in f64 (NNFS chapter 7).
pub fn numerical_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + H;
            let up = f(&xp);
            xp[i] = orig - H;
            let down = f(&xp);
            xp[i] = orig;
            (up - down) / (2.0 * H)
        })
        .collect()
}

/// Every analytic entry within `rel` of the numerical one, plus `floor` times the
/// largest numerical entry (for entries that are nearly zero).
pub fn assert_grad_close(what: &str, analytic: &[f32], numeric: &[f64], rel: f64, floor: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let scale = numeric.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: numerical gradient is all zero; the check would prove nothing");
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let tol = rel * n.abs() + floor * scale;
        assert!((a as f64 - n).abs() <= tol, "{what}[{i}]: analytic {a}, numerical {n} (tol {tol:e})");
    }
}

/// A global allocator that counts allocations: a test binary declares
/// `#[global_allocator] static GLOBAL: common::Counting = common::Counting;` and reads
/// [`ALLOCS`].
pub struct Counting;

/// Allocations (and reallocations) so far in this test binary.
pub static ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
