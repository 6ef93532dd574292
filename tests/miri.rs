//! Small tests of every safe entry point that reaches `unsafe` code, sized for miri
//! (`scripts/ub-check.sh` runs this file under `cargo +nightly miri test`, where every
//! raw pointer read, write and thread hand-over is checked for undefined behaviour;
//! under miri the CPU has no AVX, so the portable kernel and the driver run). They run
//! in the ordinary `cargo test` as well, where they are quick.
//!
//! miri perturbs libm results (`exp`) by a few ulps on purpose, so comparisons here
//! use tolerances.

use fusegrad::gemm::{gemm_naive, gemm_with, Accum, CacheSizes, Epilogue, GemmOptions};
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use fusegrad::ops::softmax_ce::{softmax_cross_entropy, softmax_cross_entropy_naive};
use fusegrad::{MatRef, Matrix};

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

/// Every layout of A and B (row-major, transposed, strided, padded), C plain or transposed, both
/// accumulate modes, every epilogue, 1 and 2 threads (tiny tasks: the driver's split
/// and its shared C pointer), small caches (several k, m and n blocks), on shapes
/// around the portable tile (4 × 8): 0, 1, MR ± 1, NR ± 1.
#[test]
fn gemm_every_layout_and_epilogue_on_small_shapes() {
    let caches = CacheSizes::new(8 << 10, 64 << 10);
    // Under miri (~1000× slower) fewer shapes, and 2 threads on one layout only.
    let shapes: &[(usize, usize, usize)] = if cfg!(miri) {
        &[(0, 2, 3), (1, 1, 1), (5, 9, 9), (9, 2, 17)]
    } else {
        &[(0, 2, 3), (1, 0, 1), (1, 1, 1), (3, 5, 7), (5, 9, 9), (4, 3, 8), (9, 2, 17)]
    };
    for &(m, k, n) in shapes {
        let a = Matrix::from_fn(m, k, |i, j| (i * 3 + j) as f32 * 0.25 - 1.0);
        let at = Matrix::from_fn(k, m, |j, i| a[(i, j)]);
        let b = Matrix::from_fn(k, n, |i, j| (i + 2 * j) as f32 * 0.125 - 0.5);
        let bt = Matrix::from_fn(n, k, |j, i| b[(i, j)]);
        // Strided A (every other column, padded rows) and padded B, NaN between.
        let (ars, brs) = (2 * k + 1, n + 3);
        let mut a_buf = vec![f32::NAN; m.max(1) * ars + 1];
        let mut b_buf = vec![f32::NAN; k.max(1) * brs + 1];
        for i in 0..m {
            for j in 0..k {
                a_buf[i * ars + 2 * j] = a[(i, j)];
            }
        }
        for i in 0..k {
            for j in 0..n {
                b_buf[i * brs + j] = b[(i, j)];
            }
        }
        let a_strided = MatRef::from_strides(&a_buf, m, k, ars, 2).unwrap();
        let b_padded = MatRef::from_strides(&b_buf, k, n, brs, 1).unwrap();
        let h = Matrix::from_fn(m, n, |i, j| ((i + j) % 3) as f32 - 1.0);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1).collect();
        for (layout, (av, bv)) in
            [(a.view(), b.view()), (at.t(), b.view()), (a.view(), bt.t()), (at.t(), bt.t()), (a_strided, b_padded)]
                .into_iter()
                .enumerate()
        {
            // Under miri the epilogues, which do not depend on the layout, run on the
            // first layout only (and the fused mask + bias gradient on every one).
            let (threads_to_try, epilogues): (&[usize], &[usize]) =
                if cfg!(miri) && layout > 0 { (&[1], &[0, 4]) } else { (&[1, 2], &[0, 1, 2, 3, 4, 5]) };
            for &threads in threads_to_try {
                let opts = GemmOptions::default().with_threads(threads).with_min_work_per_thread(0).with_caches(caches);
                // C as a transposed (strided) view.
                let mut ct = Matrix::zeros(n, m);
                let mut want_t = Matrix::zeros(m, n);
                gemm_with(ct.view_mut().t(), av, bv, Accum::Overwrite, Epilogue::None, &opts).unwrap();
                gemm_naive(want_t.view_mut(), av, bv, Accum::Overwrite, Epilogue::None).unwrap();
                let ct_back = Matrix::from_fn(m, n, |i, j| ct[(j, i)]);
                assert!(close(ct_back.as_slice(), want_t.as_slice(), 1e-4), "{m}x{k}x{n} transposed C");
                for accum in [Accum::Overwrite, Accum::Add] {
                    for &epi in epilogues {
                        let (mut c, mut want) = (Matrix::from_fn(m, n, |i, j| (i + j) as f32), Matrix::zeros(m, n));
                        want.as_mut_slice().copy_from_slice(c.as_slice());
                        let (mut db, mut db_want) = (vec![0.0f32; n], vec![0.0f32; n]);
                        gemm_with(c.view_mut(), av, bv, accum, pick(epi, &bias, &h, &mut db), &opts).unwrap();
                        gemm_naive(want.view_mut(), av, bv, accum, pick(epi, &bias, &h, &mut db_want)).unwrap();
                        assert!(
                            close(c.as_slice(), want.as_slice(), 1e-4),
                            "{m}x{k}x{n} epi {epi} {accum:?} {threads}T"
                        );
                        assert!(close(&db, &db_want, 1e-4), "{m}x{k}x{n} epi {epi} bias gradient");
                    }
                }
            }
        }
    }
}

/// Epilogue number `epi` (0..6) over these buffers.
fn pick<'a>(epi: usize, bias: &'a [f32], h: &'a Matrix, db: &'a mut [f32]) -> Epilogue<'a> {
    match epi {
        0 => Epilogue::None,
        1 => Epilogue::Bias(bias),
        2 => Epilogue::BiasRelu(bias),
        3 => Epilogue::ReluMask(h.view()),
        4 => Epilogue::ReluMaskBiasGrad { h: h.view(), dbiases: db },
        _ => Epilogue::BiasGradB(db),
    }
}

#[test]
fn softmax_cross_entropy_matches_its_twin() {
    let logits = Matrix::from_fn(5, 4, |i, j| (i as f32 - j as f32) * 0.7);
    let labels = [0, 3, 1, 2, 3];
    let (mut d, mut d_naive) = (Matrix::zeros(5, 4), Matrix::zeros(5, 4));
    let s = softmax_cross_entropy(logits.view(), &labels, Some(d.view_mut())).unwrap();
    let t = softmax_cross_entropy_naive(logits.view(), &labels, Some(d_naive.view_mut())).unwrap();
    assert!((s.loss - t.loss).abs() < 1e-4 && s.correct == t.correct);
    assert!(close(d.as_slice(), d_naive.as_slice(), 1e-4));
}

/// A tiny model through `fit` (2 threads: the pool, the governor's hand-overs, the
/// fused update epilogue on the portable lanes), a step on one sample (the rank-1
/// update) and `predict`. Saving and loading are
/// safe code over the safetensors crate, tested natively (tests/saved.rs) and by the
/// fuzzer under ASan; under miri the JSON header alone took a minute of CI.
#[test]
fn a_tiny_model_trains_and_predicts() {
    let x = Matrix::from_fn(8, 3, |i, j| ((i * 5 + j) % 7) as f32 * 0.2 - 0.6);
    let y: Vec<usize> = (0..8).map(|i| i % 2).collect();
    let build = |seed| {
        Sequential::builder(3)
            .seed(seed)
            .dense(5)
            .relu()
            .dense(2)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.01))
            .unwrap()
    };
    let mut m = build(1);
    m.set_threads(Some(2)).unwrap();
    let reports = m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_epochs(1).with_batch_size(4));
    assert_eq!(reports.unwrap().len(), 1);
    assert_eq!(m.iterations(), 2);
    // A batch of one: the fused update's rank-1 path.
    let one = x.view().submatrix(0, 0, 1, 3).unwrap();
    m.train_step(one, Targets::Classes(&y[..1])).unwrap();
    assert_eq!(m.iterations(), 3);
    let p = m.predict(x.view()).unwrap();
    assert!(p.as_slice().iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
    // Training moved the parameters away from a fresh model's.
    assert_ne!(build(1).predict(x.view()).unwrap(), p);
}

/// The step's region (`runtime::region`: its job hand-over through raw pointers, the
/// helpers' loop, the static task split) under miri: every product of two steps split
/// between two threads (a split threshold of 0) gives the bits of one thread.
#[test]
fn a_step_split_in_a_region_equals_one_thread() {
    let x = Matrix::from_fn(7, 3, |i, j| ((i * 3 + j) % 5) as f32 * 0.3 - 0.6);
    let y: Vec<usize> = (0..7).map(|i| i % 2).collect();
    let run = |threads: usize| {
        let mut m = Sequential::builder(3)
            .seed(2)
            .dense(9)
            .relu()
            .dense(2)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
            .unwrap();
        m.set_threads(Some(threads)).unwrap();
        for layer in m.layers_mut() {
            if let fusegrad::nn::Layer::Dense(d) = layer {
                d.set_min_work_per_thread(Some(0));
            }
        }
        for _ in 0..2 {
            m.train_step(x.view(), Targets::Classes(&y)).unwrap();
        }
        m.predict(x.view()).unwrap()
    };
    assert_eq!(run(2), run(1));
}
