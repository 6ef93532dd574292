//! The fused update epilogue against its twin, the separate passes (`dW` and `db` by
//! the GEMM, the penalties added, then `Optimizer::update` of weights and biases):
//! bit-identical weights, biases, state and bias gradients on every path, thread count
//! and k split, and maxima equal to the largest stored magnitudes.

use super::{
    gemm_update, gemm_with, Accum, CacheSizes, Epilogue, GemmOptions, Isa, ParamUpdate, UpdateRule, WeightUpdate,
};
use crate::matrix::{MatRef, Matrix};
use crate::nn::Optimizer;
use crate::ops::reduce::max_abs_bits;
use crate::rng::Rng;

fn random(rows: usize, cols: usize, rng: &mut Rng, scale: f32) -> Matrix {
    Matrix::from_fn(rows, cols, |_, _| (rng.next_f32() * 2.0 - 1.0) * scale)
}

fn optimizers() -> Vec<Optimizer> {
    vec![
        Optimizer::sgd(0.3),
        Optimizer::sgd_momentum(0.1, 0.9).with_decay(1e-3),
        Optimizer::adagrad(0.5),
        Optimizer::rmsprop(0.01).with_rho(0.8),
        Optimizer::adam(0.02).with_betas(0.8, 0.95),
    ]
}

struct Case {
    n_in: usize,
    batch: usize,
    n_out: usize,
    /// Extra columns around the views of X and dZ (strided rows).
    pad: usize,
}

#[allow(clippy::too_many_arguments)]
fn check(case: &Case, opt: &Optimizer, penalty: Option<(f32, f32)>, opts: &GemmOptions, rng: &mut Rng, what: &str) {
    let Case { n_in, batch, n_out, pad } = *case;
    let xs = random(batch, n_in + pad, rng, 1.0);
    let dzs = random(batch, n_out + pad, rng, 0.1);
    let x = xs.view().submatrix(0, pad.min(1), batch, n_in).unwrap();
    let dz = dzs.view().submatrix(0, 0, batch, n_out).unwrap();
    compare(x, dz, opt, penalty, opts, rng, false, &format!("{what}: pad {pad}"));
}

/// The fused update from inputs `x` and gradient `dz`, biases included (with penalties
/// of their own, half and 1.5 times the weights'), against the separate passes, three
/// steps, bit for bit.
#[allow(clippy::too_many_arguments)]
fn compare(
    x: MatRef<'_>,
    dz: MatRef<'_>,
    opt: &Optimizer,
    penalty: Option<(f32, f32)>,
    opts: &GemmOptions,
    rng: &mut Rng,
    signed_zeros: bool,
    what: &str,
) {
    let (batch, n_in, n_out) = (x.rows(), x.cols(), dz.cols());
    let len = n_in * n_out;
    let mut w0 = random(n_in, n_out, rng, 0.5);
    if signed_zeros {
        // Zero weights of both signs: where the gradient is a zero, its sign decides
        // the sign of the new weight (−0 − (−0) = +0, −0 − (+0) = −0).
        for (i, w) in w0.as_mut_slice().iter_mut().enumerate() {
            *w = match i % 3 {
                0 => -0.0,
                1 => 0.0,
                _ => *w,
            };
        }
    }
    let b0: Vec<f32> =
        (0..n_out).map(|j| [-0.0, 0.0, 0.3, -1.5][j % 4] + (rng.next_f32() - 0.5) * 1e-3 * (j % 2) as f32).collect();
    let bias_penalty = penalty.map(|(l1, two_l2)| (0.5 * l1, 1.5 * two_l2));
    let buffers = opt.state_buffers();
    // Three steps, so that the state is non-zero from the second on.
    let (mut wf, mut wt) = (w0.clone(), w0.clone());
    let (mut bf, mut bt) = (b0.clone(), b0);
    let state = |i: usize, len: usize| if i < buffers { vec![0.0f32; len] } else { Vec::new() };
    let (mut f0, mut f1, mut t0, mut t1) = (state(0, len), state(1, len), state(0, len), state(1, len));
    let (mut fb0, mut fb1, mut tb0, mut tb1) = (state(0, n_out), state(1, n_out), state(0, n_out), state(1, n_out));
    for it in 0..3u64 {
        let rule = UpdateRule { step: opt.fused_step(it), penalty, skip_zero_rows: false };
        let bias_rule = UpdateRule { penalty: bias_penalty, ..rule };
        let mut scratch = Matrix::zeros(n_in, n_out);
        let mut db_fused = vec![f32::NAN; n_out];
        let biases = Some(ParamUpdate { rule: &bias_rule, params: &mut bf, s0: &mut fb0, s1: &mut fb1 });
        let weights = ParamUpdate { rule: &rule, params: wf.as_mut_slice(), s0: &mut f0, s1: &mut f1 };
        let update = WeightUpdate { weights, biases };
        let maxima = gemm_update(scratch.view_mut(), x.t(), dz, &mut db_fused, update, None, opts).unwrap();

        let mut dw = Matrix::zeros(n_in, n_out);
        let mut db = vec![f32::NAN; n_out];
        gemm_with(dw.view_mut(), x.t(), dz, Accum::Overwrite, Epilogue::BiasGradB(&mut db), opts).unwrap();
        let db_plain = db.clone();
        let sign = |w: f32| if w < 0.0 { -1.0 } else { 1.0 };
        if let (Some((l1, two_l2)), Some((bl1, two_bl2))) = (penalty, bias_penalty) {
            for (d, &w) in dw.as_mut_slice().iter_mut().zip(wt.as_slice()) {
                *d += l1 * sign(w) + two_l2 * w;
            }
            for (d, &b) in db.iter_mut().zip(&bt) {
                *d += bl1 * sign(b) + two_bl2 * b;
            }
        }
        opt.update(wt.as_mut_slice(), dw.as_slice(), &mut t0, &mut t1, it).unwrap();
        opt.update(&mut bt, &db, &mut tb0, &mut tb1, it).unwrap();

        let ctx = format!("{what}: {n_in}×{batch}×{n_out}, {}, penalty {penalty:?}, step {it}", opt.name());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(wf.as_slice()), bits(wt.as_slice()), "weights, {ctx}");
        assert_eq!(bits(&f0), bits(&t0), "state 0, {ctx}");
        assert_eq!(bits(&f1), bits(&t1), "state 1, {ctx}");
        assert_eq!(bits(&db_fused), bits(&db_plain), "dbiases, {ctx}");
        assert_eq!(bits(&bf), bits(&bt), "biases, {ctx}");
        assert_eq!(bits(&fb0), bits(&tb0), "bias state 0, {ctx}");
        assert_eq!(bits(&fb1), bits(&tb1), "bias state 1, {ctx}");
        let max = |p: &[f32], s0: &[f32], s1: &[f32]| [max_abs_bits(p), max_abs_bits(s0), max_abs_bits(s1)];
        assert_eq!(maxima, [max(wt.as_slice(), &t0, &t1), max(&bt, &tb0, &tb1)], "maxima, {ctx}");
    }
}

fn cases() -> Vec<Case> {
    let c = |n_in, batch, n_out, pad| Case { n_in, batch, n_out, pad };
    vec![
        c(1, 1, 1, 0),
        c(5, 3, 7, 0),
        c(13, 17, 10, 3), // column tiles (n ≤ 10, Xᵀ in place)
        c(33, 40, 16, 1), // narrow tiles
        c(17, 9, 63, 2),
        c(65, 70, 65, 0), // partial 64-wide tiles and edges on every side
        c(130, 33, 129, 5),
        c(40, 300, 24, 0), // several k blocks with the small caches
        // A batch of one: the rank-1 path, whole and partial 4-vector chunks of every
        // lane width (16, 8, 4, 1), against the tiled GEMM of the twin.
        c(1, 1, 17, 0),
        c(5, 1, 5, 0),
        c(9, 1, 10, 0),
        c(3, 1, 33, 1),
        c(40, 1, 64, 0),
        c(7, 1, 65, 2),
        c(130, 1, 129, 1),
    ]
}

/// Batch one with the inputs read at a stride (a column of a wider matrix) and values
/// whose products are zeros of either sign and underflow to them: the rank-1 path
/// forms each gradient as the tiled k loop does (`fma(x, dz, 0)`, one rounding), which
/// the separate passes' GEMM checks bit for bit, −0.0 included.
#[test]
fn a_batch_of_one_matches_the_tiled_gemm_on_every_path() {
    let mut rng = Rng::new(11);
    let specials = [0.0, -0.0, 1e-30, -1e-30, 3.0e-39, 1.0, -2.5, 1e-20];
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
            for (n_in, n_out) in [(8, 8), (37, 70), (16, 129)] {
                // Xᵀ is column 0 of an n_in × 3 matrix: the rank-1 path reads x at stride 3.
                let wide = Matrix::from_fn(n_in, 3, |i, j| if j == 0 { specials[i % 8] } else { f32::NAN });
                let x = wide.view().submatrix(0, 0, n_in, 1).unwrap().t();
                let dz = Matrix::from_fn(1, n_out, |_, j| specials[(j * 3 + 1) % 8] * 1e-9);
                for opt in [Optimizer::sgd(0.3), Optimizer::adam(0.02)] {
                    for penalty in [None, Some((1e-3, 2.0 * 5e-4))] {
                        let what = format!("{} {threads}t strided x, special values", isa.name());
                        compare(x, dz.view(), &opt, penalty, &opts, &mut rng, true, &what);
                    }
                }
            }
        }
    }
}

/// A batch of one that leaves the rows of zero inputs alone (plain SGD): the same bits
/// as stepping every row (the twin's separate passes), ±0 weights and denormals
/// included, and maxima over the stepped rows only — so the largest weight, on a row
/// whose input is 0, is not among them (it would be, were that row stepped).
#[test]
fn a_batch_of_one_skips_the_rows_of_zero_inputs_exactly() {
    let mut rng = Rng::new(13);
    let inputs = [0.0, -0.0, 1e-30, -0.0, 3.0e-39, 0.0, -2.5, 0.7];
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
            for (n_in, n_out) in [(8, 8), (37, 70), (16, 129)] {
                let x = Matrix::from_fn(1, n_in, |_, i| inputs[i % 8]);
                let dz = Matrix::from_fn(1, n_out, |_, j| [1e-3, -2e-3, 0.0, -0.0, 1e-40][j % 5]);
                let mut w0 = random(n_in, n_out, &mut rng, 0.5);
                for (e, w) in w0.as_mut_slice().iter_mut().enumerate() {
                    *w = match e % 4 {
                        0 => -0.0,
                        1 => 0.0,
                        2 => -1e-41,
                        _ => *w,
                    };
                }
                w0[(0, 3)] = 7.0; // input 0 is 0: the row is skipped
                for lr in [0.3, 0.0] {
                    let opt = Optimizer::sgd(lr);
                    let rule = UpdateRule { step: opt.fused_step(0), penalty: None, skip_zero_rows: true };
                    assert!(rule.zero_rows_exact(dz.row(0)));
                    let (mut wf, mut wt) = (w0.clone(), w0.clone());
                    let mut db_fused = vec![f32::NAN; n_out];
                    let update = WeightUpdate {
                        weights: ParamUpdate { rule: &rule, params: wf.as_mut_slice(), s0: &mut [], s1: &mut [] },
                        biases: None,
                    };
                    let mut scratch = Matrix::zeros(n_in, n_out);
                    let maxima =
                        gemm_update(scratch.view_mut(), x.view().t(), dz.view(), &mut db_fused, update, None, &opts);
                    let mut dw = Matrix::zeros(n_in, n_out);
                    let mut db = vec![f32::NAN; n_out];
                    let e = Epilogue::BiasGradB(&mut db);
                    gemm_with(dw.view_mut(), x.view().t(), dz.view(), Accum::Overwrite, e, &opts).unwrap();
                    opt.update(wt.as_mut_slice(), dw.as_slice(), &mut [], &mut [], 0).unwrap();
                    let what = format!("{} {threads}t {n_in}×1×{n_out} lr {lr}", isa.name());
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(wf.as_slice()), bits(wt.as_slice()), "weights, {what}");
                    assert_eq!(bits(&db_fused), bits(&db), "dbiases, {what}");
                    let stepped = (0..n_in).filter(|&i| x[(0, i)] != 0.0).map(|i| max_abs_bits(wt.row(i))).max();
                    assert_eq!(maxima.unwrap()[0][0], stepped.unwrap_or(0), "maxima of the stepped rows, {what}");
                }
            }
        }
    }
}

#[test]
fn a_batch_skips_the_row_panels_whose_inputs_are_all_zero_with_the_same_bits() {
    // dW = Xᵀ·dZ with dZ promised finite and plain SGD: the row panels of W whose inputs
    // are ±0 in the whole batch (features 0–7 and 16–37 here) are not touched, where the
    // tiles list their steps (AVX2, 32 columns or more a task: 128 and 130 here, so that
    // two threads' column halves list too; AVX-512, every width its row tiles serve,
    // 16 here). The weights end as the twin's
    // (dW, then the update pass) on every path, and there the maxima leave out the
    // skipped rows (the largest weights, 7.0 and 8.0, sit in rows 1 and 20: the
    // second in a skipped panel of either height, the first only of six rows).
    let mut rng = Rng::new(17);
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
            for (batch, n_in, n_out) in [(8, 40, 128), (37, 48, 130), (128, 40, 16)] {
                let x = Matrix::from_fn(batch, n_in, |_, i| match i {
                    0..8 | 16..38 => [0.0, -0.0][rng.below(2)],
                    _ => rng.next_f32() - 0.5,
                });
                let dz = random(batch, n_out, &mut rng, 0.01);
                let mut w0 = random(n_in, n_out, &mut rng, 0.5);
                w0[(1, 3)] = 7.0;
                w0[(20, 3)] = 8.0;
                let opt = Optimizer::sgd(0.3);
                let rule = UpdateRule { step: opt.fused_step(0), penalty: None, skip_zero_rows: true };
                let mut wf = w0.clone();
                let mut db_fused = vec![f32::NAN; n_out];
                let update = WeightUpdate {
                    weights: ParamUpdate { rule: &rule, params: wf.as_mut_slice(), s0: &mut [], s1: &mut [] },
                    biases: None,
                };
                let mut scratch = Matrix::zeros(n_in, n_out);
                let maxima = gemm_update(
                    scratch.view_mut(),
                    x.view().t(),
                    dz.view(),
                    &mut db_fused,
                    update,
                    None,
                    &opts.with_finite_b(),
                );
                let mut wt = w0.clone();
                let mut dw = Matrix::zeros(n_in, n_out);
                gemm_with(dw.view_mut(), x.view().t(), dz.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
                opt.update(wt.as_mut_slice(), dw.as_slice(), &mut [], &mut [], 0).unwrap();
                let what = format!("{} {threads}t {n_in}×{batch}×{n_out}", isa.name());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(wf.as_slice()), bits(wt.as_slice()), "weights, {what}");
                let skips = match isa {
                    Isa::Avx2 => n_out >= 32,
                    Isa::Avx512 => true,
                    _ => false,
                };
                let all = max_abs_bits(wt.as_slice());
                // A panel is the tile's rows: 16 in the AVX-512 16 × 16 tile, else 6.
                let panel = if isa == Isa::Avx512 && n_out <= 16 { 16 } else { 6 };
                let zero = |i: usize| i < 8 || (16..38).contains(&i);
                let skipped = |i: usize| (i / panel * panel..((i / panel + 1) * panel).min(n_in)).all(zero);
                let stepped = (0..n_in).filter(|&i| !skipped(i)).map(|i| max_abs_bits(wt.row(i)));
                let expected = if skips { stepped.max().unwrap() } else { all };
                assert_eq!(maxima.unwrap()[0][0], expected, "maxima, {what}");
            }
        }
    }
}

#[test]
fn skipping_zero_rows_is_allowed_only_where_exact() {
    let dz = [1.0, -0.0, 3e-39];
    let rule = |opt: Optimizer, penalty| UpdateRule { step: opt.fused_step(0), penalty, skip_zero_rows: false };
    assert!(rule(Optimizer::sgd(0.1), None).zero_rows_exact(&dz));
    assert!(rule(Optimizer::sgd(0.0), None).zero_rows_exact(&dz));
    for opt in
        [Optimizer::sgd_momentum(0.1, 0.9), Optimizer::adagrad(0.1), Optimizer::rmsprop(0.1), Optimizer::adam(0.1)]
    {
        assert!(!rule(opt, None).zero_rows_exact(&dz), "{}", opt.name());
    }
    assert!(!rule(Optimizer::sgd(0.1), Some((0.0, 0.0))).zero_rows_exact(&dz), "a penalty");
    for lr in [f32::NAN, f32::INFINITY, -0.0, -0.1] {
        assert!(!rule(Optimizer::sgd(lr), None).zero_rows_exact(&dz), "lr {lr}");
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert!(!rule(Optimizer::sgd(0.1), None).zero_rows_exact(&[1.0, bad]), "dz {bad}");
    }
}

#[test]
fn fused_update_matches_the_separate_passes_on_every_path() {
    let mut rng = Rng::new(7);
    let small = CacheSizes::new(4 * 1024, 64 * 1024);
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            for caches in [None, Some(small)] {
                let mut opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
                opts.caches = caches;
                let what = format!("{} {threads}t caches {caches:?}", isa.name());
                for case in cases() {
                    for opt in optimizers() {
                        for penalty in [None, Some((1e-3, 2.0 * 5e-4))] {
                            check(&case, &opt, penalty, &opts, &mut rng, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn maxima_see_a_non_finite_result() {
    // A gradient that overflows: the stored weights are ±∞ and the maxima say so.
    let x = Matrix::from_fn(2, 3, |_, _| 3.0e38);
    let dz = Matrix::from_fn(2, 2, |_, _| 1.0);
    let rule = UpdateRule { step: Optimizer::sgd(1.0).fused_step(0), penalty: None, skip_zero_rows: false };
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        let mut w = Matrix::zeros(3, 2);
        let mut db = vec![0.0; 2];
        let update = WeightUpdate {
            weights: ParamUpdate { rule: &rule, params: w.as_mut_slice(), s0: &mut [], s1: &mut [] },
            biases: None,
        };
        let opts = GemmOptions::default().with_isa(isa);
        let m =
            gemm_update(Matrix::zeros(3, 2).view_mut(), x.view().t(), dz.view(), &mut db, update, None, &opts).unwrap();
        assert!(w.as_slice().iter().all(|v| v.is_infinite()), "{}", isa.name());
        assert_eq!(m[0][0], f32::INFINITY.to_bits(), "{}", isa.name());
    }
}

#[test]
fn the_epilogue_maximum_of_c_equals_a_pass_over_c() {
    use super::gemm_with_max;
    use crate::ops::reduce::max_abs_bits;
    let mut rng = Rng::new(9);
    let small = CacheSizes::new(4 * 1024, 64 * 1024);
    for &isa in Isa::ALL.iter().filter(|i| i.is_available()) {
        for threads in [1, 2] {
            let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
            for (m, k, n) in [(1, 1, 1), (7, 5, 3), (13, 17, 10), (33, 40, 16), (65, 300, 65), (6, 64, 64)] {
                for caches in [None, Some(small)] {
                    let mut opts = opts;
                    opts.caches = caches;
                    let a = random(m, k, &mut rng, 1.0);
                    let b = random(k, n, &mut rng, 1.0);
                    let bias: Vec<f32> = (0..n).map(|j| j as f32 - 3.0).collect();
                    let h = random(m, n, &mut rng, 1.0);
                    for e in 0..4 {
                        let mut c = Matrix::from_fn(m, n, |_, _| f32::NAN);
                        let epilogue = match e {
                            0 => Epilogue::None,
                            1 => Epilogue::Bias(&bias),
                            2 => Epilogue::BiasRelu(&bias),
                            _ => Epilogue::ReluMask(h.view()),
                        };
                        let got =
                            gemm_with_max(c.view_mut(), a.view(), b.view(), Accum::Overwrite, epilogue, None, &opts);
                        let what = format!("{} {threads}t {m}×{k}×{n} epilogue {e} caches {caches:?}", isa.name());
                        assert_eq!(got.unwrap(), max_abs_bits(c.as_slice()), "{what}");
                    }
                    // An infinity in A reaches C, and the maximum says so.
                    let mut a = a;
                    a[(m - 1, k - 1)] = f32::INFINITY;
                    let mut c = Matrix::zeros(m, n);
                    let got =
                        gemm_with_max(c.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::None, None, &opts);
                    assert!(got.unwrap() >= f32::INFINITY.to_bits(), "{} {m}×{k}×{n}: ∞ not seen", isa.name());
                }
            }
        }
    }
}
