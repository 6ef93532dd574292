//! AVX2 + FMA microkernel: 6 rows × 2 ymm vectors (16 floats) of C, 12 accumulators
//! (the BLIS haswell/zen sgemm shape). Per k step: 2 loads of packed B, 6 broadcasts
//! of packed A, 12 FMAs.
//!
//! ```text
//!            b[p][0..8]  b[p][8..16]
//! a[p][0]    acc[0][0]   acc[0][1]
//!   ...
//! a[p][5]    acc[5][0]   acc[5][1]
//! ```
//!
//! Edges: a partial vector (columns past `nr`) uses `vmaskmovps`, which neither reads
//! nor writes masked-off lanes; rows past `mr` are skipped.

use super::{APanel, BPanel, Kernel, Tile, TileEpilogue};
use std::arch::x86_64::*;

pub(crate) struct Avx2;

impl Kernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    const READS_B_IN_PLACE: bool = false;
    #[inline(always)]
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile) {
        // SAFETY: the caller upholds the tile contract and has checked avx2 + fma.
        unsafe { tile_generic::<6, 2>(kc, a, b, t) }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_generic<const MR: usize, const NV: usize>(kc: usize, a: APanel, b: BPanel, t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); NV]; MR];
    // Rows at or past mr re-read row mr - 1 (never stored): A is not read outside the tile.
    let rows: [*const f32; MR] = std::array::from_fn(|i| a.ptr.wrapping_add(i.min(t.mr - 1) * a.rs));
    for p in 0..kc {
        // SAFETY: p < kc: B row p (NV·8 floats) lies inside the packed panel, and each
        // row pointer addresses a row i < mr at step p, readable by contract.
        unsafe {
            let bp = b.ptr.add(p * b.rs);
            let bv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(bp.add(v * 8)));
            for (row, ap) in acc.iter_mut().zip(rows.iter()) {
                let ai = _mm256_broadcast_ss(&*ap.add(p * a.cs));
                for (x, bv) in row.iter_mut().zip(bv.iter()) {
                    *x = _mm256_fmadd_ps(ai, *bv, *x);
                }
            }
        }
    }

    // Lane l of vector v is valid when v·8 + l < nr.
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; NV] =
        std::array::from_fn(|v| _mm256_cmpgt_epi32(_mm256_set1_epi32(t.nr.saturating_sub(v * 8).min(8) as i32), lanes));
    let full: [bool; NV] = std::array::from_fn(|v| t.nr >= (v + 1) * 8);
    let zero = _mm256_setzero_ps();
    // SAFETY (whole store phase): full vectors lie inside the tile's valid columns;
    // partial ones go through vmaskmovps with exactly the valid lanes set; rows are
    // limited to mr. All offsets are ones the caller guarantees valid.
    unsafe {
        let load = |v: usize, p: *const f32| -> __m256 {
            if full[v] {
                _mm256_loadu_ps(p)
            } else {
                _mm256_maskload_ps(p, masks[v])
            }
        };
        let store = |i: usize, v: usize, x: __m256| {
            let p = t.c.add(i * t.rsc + v * 8);
            if full[v] {
                _mm256_storeu_ps(p, x)
            } else {
                _mm256_maskstore_ps(p, masks[v], x)
            }
        };
        let add_c = |i: usize, v: usize, x: __m256| -> __m256 {
            if t.load_c {
                _mm256_add_ps(x, load(v, t.c.add(i * t.rsc + v * 8)))
            } else {
                x
            }
        };
        match t.epilogue {
            TileEpilogue::None => {
                for (i, row) in acc.iter().enumerate().take(t.mr) {
                    for (v, &x) in row.iter().enumerate() {
                        store(i, v, add_c(i, v, x));
                    }
                }
            }
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let relu = matches!(t.epilogue, TileEpilogue::BiasRelu(_));
                let bv: [__m256; NV] = std::array::from_fn(|v| load(v, bias.add(v * 8)));
                for (i, row) in acc.iter().enumerate().take(t.mr) {
                    for (v, &x) in row.iter().enumerate() {
                        let mut x = _mm256_add_ps(add_c(i, v, x), bv[v]);
                        if relu {
                            x = _mm256_max_ps(zero, x); // NaN in x passes through
                        }
                        store(i, v, x);
                    }
                }
            }
            TileEpilogue::ReluMask { h, rsh, colsum } => {
                let mut sums = [zero; NV];
                for (i, row) in acc.iter().enumerate().take(t.mr) {
                    for (v, &x) in row.iter().enumerate() {
                        let hv = load(v, h.add(i * rsh + v * 8));
                        let keep = _mm256_cmp_ps::<_CMP_GT_OQ>(hv, zero);
                        let x = _mm256_and_ps(keep, add_c(i, v, x));
                        sums[v] = _mm256_add_ps(sums[v], x);
                        store(i, v, x);
                    }
                }
                if !colsum.is_null() {
                    for (v, &s) in sums.iter().enumerate() {
                        let p = colsum.add(v * 8);
                        if full[v] {
                            _mm256_storeu_ps(p, s)
                        } else {
                            _mm256_maskstore_ps(p, masks[v], s)
                        }
                    }
                }
            }
        }
    }
}

/// Single-core throughput probe: 16 independent ymm FMA chains.
pub(crate) fn fma_chains(iters: u64) -> (f32, u64) {
    assert!(super::Isa::Avx2.is_available(), "fma_chains: avx2+fma not available");
    // SAFETY: avx2 and fma were checked just above.
    unsafe { fma_chains_impl(iters) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_impl(iters: u64) -> (f32, u64) {
    let mut acc = [_mm256_set1_ps(1.0); 16];
    let x = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let y = _mm256_set1_ps(std::hint::black_box(1e-7));
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    let mut lanes = [0.0f32; 8];
    let total = acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    // SAFETY: `lanes` holds exactly the 8 floats one ymm store writes.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    (lanes.iter().sum(), 16 * 8 * 2)
}
