//! The reference twin of the GEMM: plain triple loops, obviously correct, slow.
//!
//! [`gemm_naive`] has exactly the semantics of [`gemm`](super::gemm) (same
//! arguments, same epilogues, same errors) and accumulates in f32 in k order.
//! [`gemm_naive_f64`] accumulates in f64 and returns the exact-ish result plus, per
//! element, `Σ_k |a_ik · b_kj|`: the scale that a rounding-error bound for an f32
//! dot product of length k is proportional to. The tests compare every fast path with
//! both.

use super::{check_args, Accum, Epilogue};
use crate::error::Result;
use crate::matrix::{MatMut, MatRef, Matrix};

/// `C = op(A)·op(B)` (or `C += …`), then the epilogue, with plain loops.
///
/// # Errors
/// As [`gemm`](super::gemm): [`Error::ShapeMismatch`](crate::Error::ShapeMismatch)
/// when the operands, bias, activation or gradient buffer do not fit.
pub fn gemm_naive(mut c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, accum: Accum, epilogue: Epilogue<'_>) -> Result<()> {
    check_args(&c, &a, &b, &epilogue)?;
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f32;
            for p in 0..k {
                s += a.get(i, p) * b.get(p, j);
            }
            if accum == Accum::Add {
                s += c.get(i, j);
            }
            c.set(i, j, s);
        }
    }
    apply_epilogue(c, b, epilogue);
    Ok(())
}

/// Applies an epilogue to a finished product `C` (B is needed for the bias gradient
/// of B). Shapes were checked by the caller.
fn apply_epilogue(mut c: MatMut<'_>, b: MatRef<'_>, epilogue: Epilogue<'_>) {
    let (m, n) = (c.rows(), c.cols());
    match epilogue {
        Epilogue::None => {}
        Epilogue::Bias(bias) | Epilogue::BiasRelu(bias) => {
            let relu = matches!(epilogue, Epilogue::BiasRelu(_));
            for i in 0..m {
                for (j, &bj) in bias.iter().enumerate() {
                    let x = c.get(i, j) + bj;
                    c.set(i, j, if relu && 0.0 > x { 0.0 } else { x });
                }
            }
        }
        Epilogue::ReluMask(h) => mask_by(&mut c, h),
        Epilogue::ReluMaskBiasGrad { h, dbiases } => {
            mask_by(&mut c, h);
            for (j, d) in dbiases.iter_mut().enumerate() {
                *d = (0..m).map(|i| c.get(i, j)).sum();
            }
        }
        Epilogue::BiasGradB(dbiases) => {
            for (j, d) in dbiases.iter_mut().enumerate().take(n) {
                *d = (0..b.rows()).map(|p| b.get(p, j)).sum();
            }
        }
    }
}

fn mask_by(c: &mut MatMut<'_>, h: MatRef<'_>) {
    for i in 0..c.rows() {
        for j in 0..c.cols() {
            let keep = h.get(i, j) > 0.0; // NaN in h counts as "not active"
            if !keep {
                c.set(i, j, 0.0);
            }
        }
    }
}

/// `op(A)·op(B)` accumulated in f64, with no epilogue. Returns `(product, scale)`
/// where `scale[i][j] = Σ_p |a_ip · b_pj|`.
#[doc(hidden)]
pub fn gemm_naive_f64(a: MatRef<'_>, b: MatRef<'_>) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.cols(), b.rows(), "gemm_naive_f64: A is {}×{}, B is {}×{}", a.rows(), a.cols(), b.rows(), b.cols());
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let mut prod = vec![0.0f64; m * n];
    let mut scale = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut t) = (0.0f64, 0.0f64);
            for p in 0..k {
                let x = a.get(i, p) as f64 * b.get(p, j) as f64;
                s += x;
                t += x.abs();
            }
            prod[i * n + j] = s;
            scale[i * n + j] = t;
        }
    }
    (prod, scale)
}

/// Convenience for tests and benches: the naive product as a new matrix.
#[doc(hidden)]
pub fn matmul_naive(a: MatRef<'_>, b: MatRef<'_>) -> Result<Matrix> {
    let mut c = Matrix::zeros(a.rows(), b.cols());
    gemm_naive(c.view_mut(), a, b, Accum::Overwrite, Epilogue::None)?;
    Ok(c)
}
