//! Once warm, a GEMM performs no heap allocation: packing buffers are per thread and
//! reused. Counted with a global allocator; this file is its own test binary, and its
//! single test runs alone in it.

mod common;

use common::ALLOCS;
use fusegrad::gemm::{gemm_with, reserve_workspace, Accum, Epilogue, GemmOptions, Isa};
use fusegrad::Matrix;
use std::sync::atomic::Ordering;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

/// Three GEMMs of a training step: forward, weight gradient with fused bias gradient,
/// and an input gradient through a ReLU mask with fused column sums.
#[allow(clippy::too_many_arguments)]
fn gemm_calls(
    isa: Isa,
    threads: usize,
    x: &Matrix,
    w: &Matrix,
    h: &Matrix,
    out: &mut Matrix,
    dw: &mut Matrix,
    db: &mut [f32],
) {
    let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
    gemm_with(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
    gemm_with(dw.view_mut(), x.t(), out.view(), Accum::Overwrite, Epilogue::BiasGradB(db), &opts).unwrap();
    let epi = Epilogue::ReluMaskBiasGrad { h: h.view(), dbiases: db };
    gemm_with(out.view_mut(), x.view(), w.view(), Accum::Overwrite, epi, &opts).unwrap();
}

#[test]
fn warm_gemm_calls_do_not_allocate() {
    let (m, k, n) = (129, 300, 70);
    let x = Matrix::from_fn(m, k, |i, j| ((i + j) % 7) as f32 - 3.0);
    let w = Matrix::from_fn(k, n, |i, j| ((i * j) % 5) as f32 - 2.0);
    let h = Matrix::from_fn(m, n, |i, j| ((i + 2 * j) % 3) as f32 - 1.0);
    let (mut out, mut dw, mut db) = (Matrix::zeros(m, n), Matrix::zeros(k, n), vec![0.0f32; n]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            pool.install(|| {
                // Warm up: every thread of the pool gets its buffers (reserved, since a
                // worker that wins no task in these calls would allocate on its first
                // one later), and the caller its column-sum scratch.
                reserve_workspace();
                for _ in 0..20 {
                    gemm_calls(isa, threads, &x, &w, &h, &mut out, &mut dw, &mut db);
                }
                let before = ALLOCS.load(Ordering::SeqCst);
                for _ in 0..50 {
                    gemm_calls(isa, threads, &x, &w, &h, &mut out, &mut dw, &mut db);
                }
                let allocs = ALLOCS.load(Ordering::SeqCst) - before;
                assert_eq!(allocs, 0, "{isa:?}, {threads} threads: {allocs} allocations in 150 warm GEMM calls");
            });
        }
    }

    // A fresh pool whose workspace was reserved up front: not even its first split
    // GEMMs allocate (the fused bias gradients use the caller's scratch, sized by its
    // first call, so only plain products here).
    let fresh = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let isa = Isa::best();
    fresh.install(|| {
        reserve_workspace(); // returns once every worker has run it
        let opts = GemmOptions::default().with_isa(isa).with_threads(2).with_min_work_per_thread(0);
        let before = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..20 {
            gemm_with(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
            gemm_with(dw.view_mut(), x.t(), out.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
        }
        let allocs = ALLOCS.load(Ordering::SeqCst) - before;
        assert_eq!(allocs, 0, "{isa:?}: {allocs} allocations in the first GEMMs after reserve_workspace");
    });
}
