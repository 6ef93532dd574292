//! Shared by the benches and `examples/gemm.rs`: the peer we race, and the shapes.
#![allow(dead_code)]

use fusegrad::{MatMut, MatRef};

/// `C = op(A)·op(B)` with `matrixmultiply::sgemm`, from fusegrad views.
pub fn matrixmultiply_gemm(mut c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert!(c.rows() == m && c.cols() == n && b.rows() == k, "peer: shape mismatch");
    let (rsc, csc) = (c.row_stride() as isize, c.col_stride() as isize);
    let dst = c.as_mut_slice().as_mut_ptr();
    // SAFETY: the three views were bounds-checked when made, so every element
    // `i·rs + j·cs` (i < rows, j < cols) is inside its slice; C does not alias A or B
    // (it is an exclusive borrow); beta = 0, so C is only written.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_slice().as_ptr(),
            a.row_stride() as isize,
            a.col_stride() as isize,
            b.as_slice().as_ptr(),
            b.row_stride() as isize,
            b.col_stride() as isize,
            0.0,
            dst,
            rsc,
            csc,
        );
    }
}

/// The kernel `matrixmultiply::sgemm` runs on this CPU: its AVX-512 one only when the
/// `peer-avx512` feature (off by default) built it, else its FMA one where the CPU
/// has AVX2 + FMA.
pub fn matrixmultiply_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "peer-avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2") {
            return "fma";
        }
        if std::arch::is_x86_feature_detected!("avx") {
            return "avx";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "fallback"
    }
}

/// `C = op(A)·op(B)` with the gemm crate (0.19, its default AVX2+FMA kernels on
/// x86), single-threaded, from fusegrad views.
pub fn gemm_crate_gemm(mut c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>) {
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    assert!(c.rows() == m && c.cols() == n && b.rows() == k, "peer: shape mismatch");
    let (rsc, csc) = (c.row_stride() as isize, c.col_stride() as isize);
    let dst = c.as_mut_slice().as_mut_ptr();
    // SAFETY: as for `matrixmultiply_gemm`: every element `i·rs + j·cs` of each view is
    // inside its slice, and C does not alias A or B; read_dst = false, so C is only
    // written (dst = 1·A·B).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            csc,
            rsc,
            false,
            a.as_slice().as_ptr(),
            a.col_stride() as isize,
            a.row_stride() as isize,
            b.as_slice().as_ptr(),
            b.col_stride() as isize,
            b.row_stride() as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The GEMMs of one training step of 784-128-64-10 at batch `b`: (name, m, k, n, layout).
pub fn mnist_shapes(b: usize) -> Vec<(String, usize, usize, usize, &'static str)> {
    vec![
        (format!("fwd1 {b}x784x128"), b, 784, 128, "nn"),
        (format!("fwd2 {b}x128x64"), b, 128, 64, "nn"),
        (format!("fwd3 {b}x64x10"), b, 64, 10, "nn"),
        (format!("dW1 784x{b}x128"), 784, b, 128, "tn"),
        (format!("dW2 128x{b}x64"), 128, b, 64, "tn"),
        (format!("dW3 64x{b}x10"), 64, b, 10, "tn"),
        (format!("dX2 {b}x64x128"), b, 64, 128, "nt"),
        (format!("dX3 {b}x10x64"), b, 10, 64, "nt"),
    ]
}
