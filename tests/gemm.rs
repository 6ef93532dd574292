//! Differential tests of the GEMM: every kernel path (each forced), every transpose
//! combination, overwrite and accumulate, every epilogue, against the naive twin
//! accumulated in f64, with a tolerance from the f32 rounding-error bound
//! `|fl(x) - x| ≤ (k + 4)·u·Σ|a·b|` rather than a loose fixed epsilon.
//!
//! Elements outside every view are NaN: a kernel that reads outside A, B or h
//! poisons its result, and one that writes outside C leaves a changed sentinel.

mod common;

use common::Rng;
use fusegrad::gemm::{gemm_naive, gemm_naive_f64, gemm_with, Accum, Blocking, CacheSizes, Epilogue, GemmOptions, Isa};
use fusegrad::{Error, MatMut, MatRef, Matrix};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngSeed};

const U: f64 = 1.0 / (1u64 << 24) as f64; // unit roundoff of f32

fn sentinel() -> f32 {
    f32::from_bits(0x7FC0_1234) // a NaN with a recognisable payload
}

fn isas() -> Vec<Isa> {
    let isas: Vec<Isa> = Isa::ALL.iter().copied().filter(|i| i.is_available()).collect();
    for &isa in Isa::ALL {
        if !isa.is_available() {
            eprintln!("skipping {}: this CPU does not support it", isa.name());
        }
    }
    isas
}

/// How an operand is stored around its view.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Row-major, contiguous.
    Row,
    /// Row-major with padding after each row (a block of a wider matrix).
    Padded,
    /// Stored transposed and viewed through `.t()`: unit row stride.
    Trans,
    /// Every other column (col stride 2): neither stride is 1.
    Strided,
}
const LAYOUTS: [Layout; 4] = [Layout::Row, Layout::Padded, Layout::Trans, Layout::Strided];

/// A buffer with a `rows × cols` view inside it, starting `off` floats in (so that
/// the view's base is not always aligned); everything else is NaN.
struct Operand {
    buf: Vec<f32>,
    off: usize,
    rows: usize,
    cols: usize,
    layout: Layout,
}

fn strides(rows: usize, cols: usize, layout: Layout) -> (usize, usize, usize) {
    let (rs, cs) = match layout {
        Layout::Row => (cols, 1),
        Layout::Padded => (cols + 3, 1),
        Layout::Trans => (1, rows + 2),
        Layout::Strided => (2 * cols + 1, 2),
    };
    let len = if rows == 0 || cols == 0 { 4 } else { (rows - 1) * rs + (cols - 1) * cs + 1 + 3 };
    (len, rs, cs)
}

impl Operand {
    fn new_at(
        off: usize,
        rows: usize,
        cols: usize,
        layout: Layout,
        mut value: impl FnMut(usize, usize) -> f32,
    ) -> Self {
        let (len, rs, cs) = strides(rows, cols, layout);
        let mut buf = vec![sentinel(); off + len];
        for i in 0..rows {
            for j in 0..cols {
                buf[off + i * rs + j * cs] = value(i, j);
            }
        }
        Operand { buf, off, rows, cols, layout }
    }
    fn view(&self) -> MatRef<'_> {
        let (_, rs, cs) = strides(self.rows, self.cols, self.layout);
        let data = &self.buf[self.off..];
        if self.layout == Layout::Trans {
            // Build the stored (transposed) matrix, then transpose the view, as a user would.
            MatRef::from_strides(data, self.cols, self.rows, cs, rs).unwrap().t()
        } else {
            MatRef::from_strides(data, self.rows, self.cols, rs, cs).unwrap()
        }
    }
    fn view_mut(&mut self) -> MatMut<'_> {
        let (_, rs, cs) = strides(self.rows, self.cols, self.layout);
        let data = &mut self.buf[self.off..];
        if self.layout == Layout::Trans {
            MatMut::from_strides(data, self.cols, self.rows, cs, rs).unwrap().t()
        } else {
            MatMut::from_strides(data, self.rows, self.cols, rs, cs).unwrap()
        }
    }
    fn get(&self, i: usize, j: usize) -> f32 {
        let (_, rs, cs) = strides(self.rows, self.cols, self.layout);
        self.buf[self.off + i * rs + j * cs]
    }
    /// Offsets inside the view.
    fn in_view(&self) -> Vec<bool> {
        let (_, rs, cs) = strides(self.rows, self.cols, self.layout);
        let mut inside = vec![false; self.buf.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                inside[self.off + i * rs + j * cs] = true;
            }
        }
        inside
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Epi {
    None,
    Bias,
    BiasRelu,
    ReluMask,
    ReluMaskBiasGrad,
    BiasGradB,
}
const EPIS: [Epi; 6] = [Epi::None, Epi::Bias, Epi::BiasRelu, Epi::ReluMask, Epi::ReluMaskBiasGrad, Epi::BiasGradB];

/// Operands of one shape, and the f64 reference product computed once.
struct Problem {
    m: usize,
    k: usize,
    n: usize,
    a: Operand,
    b: Operand,
    h: Operand,
    c0: Vec<f32>,
    bias: Vec<f32>,
    prod: Vec<f64>,
    scale: Vec<f64>,
}

impl Problem {
    fn new(rng: &mut Rng, shape: (usize, usize, usize), la: Layout, lb: Layout, lh: Layout) -> Self {
        Self::new_at(rng, shape, la, lb, lh, [0; 3])
    }
    /// With the views of A, B and h starting `offs` floats into their buffers.
    fn new_at(
        rng: &mut Rng,
        (m, k, n): (usize, usize, usize),
        la: Layout,
        lb: Layout,
        lh: Layout,
        offs: [usize; 3],
    ) -> Self {
        let a = Operand::new_at(offs[0], m, k, la, |_, _| rng.uniform(-1.0, 1.0));
        let b = Operand::new_at(offs[1], k, n, lb, |_, _| rng.uniform(-1.0, 1.0));
        // A ReLU output: about half zeros, the rest positive.
        let h = Operand::new_at(offs[2], m, n, lh, |_, _| rng.uniform(-1.0, 1.0).max(0.0));
        let c0 = rng.vec(m * n);
        let bias = rng.vec(n);
        let (prod, scale) = gemm_naive_f64(a.view(), b.view());
        Problem { m, k, n, a, b, h, c0, bias, prod, scale }
    }
}

#[derive(Clone, Copy, Debug)]
struct Run {
    isa: Isa,
    lc: Layout,
    accum: Accum,
    epi: Epi,
    threads: usize,
    /// Caches the block sizes are derived from (None: this CPU's).
    caches: Option<CacheSizes>,
    /// Floats before C's view in its buffer.
    c_off: usize,
}

/// Runs one GEMM and checks C, the sentinels around it, and any bias gradient.
fn check(p: &Problem, r: Run) -> Result<(), String> {
    let (m, k, n) = (p.m, p.k, p.n);
    let ctx = || format!("{m}×{k}×{n} A {:?} B {:?} h {:?} {r:?}", p.a.layout, p.b.layout, p.h.layout);
    // C starts as NaN (overwrite must not read it) or as c0 (accumulate).
    let mut c =
        Operand::new_at(r.c_off, m, n, r.lc, |i, j| if r.accum == Accum::Add { p.c0[i * n + j] } else { sentinel() });
    let mut db = vec![sentinel(); n];
    let epilogue = match r.epi {
        Epi::None => Epilogue::None,
        Epi::Bias => Epilogue::Bias(&p.bias),
        Epi::BiasRelu => Epilogue::BiasRelu(&p.bias),
        Epi::ReluMask => Epilogue::ReluMask(p.h.view()),
        Epi::ReluMaskBiasGrad => Epilogue::ReluMaskBiasGrad { h: p.h.view(), dbiases: &mut db },
        Epi::BiasGradB => Epilogue::BiasGradB(&mut db),
    };
    let mut opts = GemmOptions::default().with_isa(r.isa).with_threads(r.threads).with_min_work_per_thread(0);
    opts.caches = r.caches;
    gemm_with(c.view_mut(), p.a.view(), p.b.view(), r.accum, epilogue, &opts).map_err(|e| format!("{}: {e}", ctx()))?;

    let mut db_exp = vec![0.0f64; n];
    let mut db_tol = vec![0.0f64; n];
    for i in 0..m {
        for j in 0..n {
            let add = if r.accum == Accum::Add { p.c0[i * n + j] as f64 } else { 0.0 };
            let mut x = p.prod[i * n + j] + add;
            let mut scale = p.scale[i * n + j] + add.abs();
            match r.epi {
                Epi::Bias | Epi::BiasRelu => {
                    x += p.bias[j] as f64;
                    scale += (p.bias[j] as f64).abs();
                    if r.epi == Epi::BiasRelu {
                        x = x.max(0.0);
                    }
                }
                Epi::ReluMask | Epi::ReluMaskBiasGrad if p.h.get(i, j) <= 0.0 => (x, scale) = (0.0, 0.0),
                _ => {}
            }
            let tol = (k + 4) as f64 * U * scale;
            let got = c.get(i, j) as f64;
            if got.is_nan() || (got - x).abs() > tol {
                return Err(format!("{}: C[{i}][{j}] = {got}, expected {x} ± {tol:e}", ctx()));
            }
            db_exp[j] += x;
            db_tol[j] += tol + (m + 1) as f64 * U * x.abs();
        }
    }
    let inside = c.in_view();
    for (off, (&v, &ins)) in c.buf.iter().zip(&inside).enumerate() {
        if !ins && v.to_bits() != sentinel().to_bits() {
            return Err(format!("{}: wrote {v} at offset {off}, outside the C view", ctx()));
        }
    }
    match r.epi {
        Epi::ReluMaskBiasGrad => {
            for (j, ((&got, exp), tol)) in db.iter().zip(&db_exp).zip(&db_tol).enumerate() {
                if (got as f64 - exp).abs() > *tol || got.is_nan() {
                    return Err(format!("{}: dbiases[{j}] = {got}, expected {exp} ± {tol:e}", ctx()));
                }
            }
        }
        Epi::BiasGradB => {
            for (j, &got) in db.iter().enumerate() {
                let col: Vec<f64> = (0..k).map(|q| p.b.get(q, j) as f64).collect();
                let exp: f64 = col.iter().sum();
                let tol = (k + 1) as f64 * U * col.iter().map(|x| x.abs()).sum::<f64>();
                if (got as f64 - exp).abs() > tol || got.is_nan() {
                    return Err(format!("{}: dbiases[{j}] = {got}, expected {exp} ± {tol:e}", ctx()));
                }
            }
        }
        _ => {
            if db.iter().any(|d| d.to_bits() != sentinel().to_bits()) {
                return Err(format!("{}: wrote a bias gradient that was not asked for", ctx()));
            }
        }
    }
    Ok(())
}

/// Every epilogue and both accumulate modes, on every kernel path.
fn check_all(p: &Problem, lc: Layout, threads: usize) {
    check_all_with_caches(p, lc, threads, None);
}

/// [`check_all`] with the block sizes derived from `caches`.
fn check_all_with_caches(p: &Problem, lc: Layout, threads: usize, caches: Option<CacheSizes>) {
    for isa in isas() {
        for epi in EPIS {
            for accum in [Accum::Overwrite, Accum::Add] {
                check(p, Run { isa, lc, accum, epi, threads, caches, c_off: 0 }).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

#[test]
fn small_and_edge_shapes_every_path() {
    // Around every kernel's MR (4, 6, 16) and NR (8, 16, 64), and the empty cases.
    let mut rng = Rng::new(1);
    for m in [0, 1, 2, 3, 5, 6, 7, 15, 16, 17] {
        for n in [0, 1, 2, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65] {
            for k in [0, 1, 3, 17] {
                let p = Problem::new(&mut rng, (m, k, n), Layout::Row, Layout::Row, Layout::Row);
                check_all(&p, Layout::Row, 1);
            }
        }
    }
}

#[test]
fn every_transpose_and_stride_combination() {
    let mut rng = Rng::new(2);
    for (s, shape) in [(7, 13, 70), (20, 5, 17), (33, 40, 9)].into_iter().enumerate() {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                let lc = LAYOUTS[(s + la as usize + lb as usize) % 4];
                let lh = LAYOUTS[(s + la as usize) % 4];
                let p = Problem::new(&mut rng, shape, la, lb, lh);
                check_all(&p, lc, 1);
            }
        }
    }
}

#[test]
fn block_boundaries() {
    // This CPU's blocks for the AVX2 6 × 16 kernel (kc = 512 with a 32 KiB L1d: k is
    // split into equal blocks above it; mc = 144; nc = 256 with a 1 MiB L2).
    let mut rng = Rng::new(3);
    let blk = Blocking::for_kernel(6, 16, CacheSizes::detected());
    let (kc, mc, nc) = (blk.kc, blk.mc, blk.nc);
    let shapes =
        [(7, kc - 1, 17), (7, kc, 17), (7, kc + 1, 17), (5, 2 * kc + 1, 9), (mc - 1, 9, nc - 1), (mc + 1, 9, nc + 1)];
    for shape in shapes {
        let p = Problem::new(&mut rng, shape, Layout::Row, Layout::Row, Layout::Row);
        check_all(&p, Layout::Row, 1);
    }
}

#[test]
fn block_boundaries_of_small_caches() {
    // Small caches give small blocks (kc 170, nc 48 for a 6 × 16 tile at 8 KiB / 64
    // KiB), so shapes just below and above every kernel's kc, mc and nc stay cheap;
    // 2 threads split them into tasks that cross those boundaries too.
    let mut rng = Rng::new(33);
    for caches in [CacheSizes::new(8 << 10, 64 << 10), CacheSizes::new(32 << 10, 128 << 10)] {
        for (mr, nr) in [(6, 64), (16, 16), (6, 16), (4, 8), (12, 8)] {
            let Blocking { kc, mc, nc, .. } = Blocking::for_kernel(mr, nr, caches);
            for shape in [(mc + 1, kc + 1, nc + 1), (mc - 1, kc - 1, nc - 1), (mr + 1, 2 * kc + 3, 2 * nc + 1)] {
                let (la, lb) =
                    if shape.0 % 2 == 0 { (Layout::Row, Layout::Trans) } else { (Layout::Trans, Layout::Row) };
                let p = Problem::new(&mut rng, shape, la, lb, Layout::Row);
                check_all_with_caches(&p, Layout::Row, 2, Some(caches));
            }
        }
    }
}

#[test]
fn narrow_outputs_across_block_boundaries() {
    // n ≤ 16 goes to the narrow tiles (AVX-512 16 × 16; for n ≤ 10 with Aᵀ read in
    // place, the tiles with the vectors along m: AVX-512 16 × 10, AVX2 16 × 5), whose
    // blocks differ from the wide tiles'. Shapes just past their kc and mc, with Aᵀ
    // (the column tiles) and a row-major A (the others), at small caches.
    let mut rng = Rng::new(35);
    for caches in [CacheSizes::new(8 << 10, 64 << 10), CacheSizes::new(32 << 10, 128 << 10)] {
        for (mr, nr) in [(16, 16), (16, 10), (16, 5)] {
            let Blocking { kc, mc, .. } = Blocking::for_kernel(mr, nr, caches);
            for n in [1, 2, 5, 6, 9, 10, 11, 16] {
                for (m, k) in [(mc + 1, kc + 1), (mc - 1, 2 * kc + 3), (mr + 1, kc - 1), (1, 1)] {
                    for la in [Layout::Trans, Layout::Row] {
                        let p = Problem::new(&mut rng, (m, k, n), la, Layout::Row, Layout::Row);
                        check_all_with_caches(&p, Layout::Row, 2, Some(caches));
                    }
                }
            }
        }
    }
}

#[test]
fn mnist_training_shapes() {
    // 784-128-64-10 at batch 1, 64, 128 and 129: forward X·W (NN), weight gradients
    // Xᵀ·dZ (TN, Xᵀ a view) and input gradients dZ·Wᵀ (NT, Wᵀ a view).
    let mut rng = Rng::new(4);
    for batch in [1, 64, 128, 129] {
        for (fan_in, fan_out) in [(784, 128), (128, 64), (64, 10)] {
            let fwd = Problem::new(&mut rng, (batch, fan_in, fan_out), Layout::Row, Layout::Row, Layout::Row);
            check_all(&fwd, Layout::Row, 2);
            let dw = Problem::new(&mut rng, (fan_in, batch, fan_out), Layout::Trans, Layout::Row, Layout::Row);
            check_all(&dw, Layout::Row, 2);
            let dx = Problem::new(&mut rng, (batch, fan_out, fan_in), Layout::Row, Layout::Trans, Layout::Row);
            check_all(&dx, Layout::Row, 2);
        }
    }
}

#[test]
fn b_rows_up_to_2_kib_apart_around_the_in_place_limits() {
    // The AVX-512 rule reads a row-major B in place up to 1 KiB between its rows for
    // tasks of 256 rows, up to 2 KiB for a product of at most 128 rows on one task:
    // both sides of each limit, on every path, on 1 and 2 threads.
    let mut rng = Rng::new(12);
    for (m, k, n) in
        [(128, 300, 400), (64, 100, 512), (129, 50, 300), (7, 600, 257), (128, 20, 513), (256, 40, 256), (257, 30, 200)]
    {
        for threads in [1, 2] {
            let p = Problem::new(&mut rng, (m, k, n), Layout::Row, Layout::Row, Layout::Row);
            check_all(&p, Layout::Row, threads);
        }
    }
}

#[test]
fn random_shapes_layouts_and_threads() {
    let seed = 5;
    let mut rng = Rng::new(seed);
    let isas = isas();
    for case in 0..300 {
        let dim = |rng: &mut Rng| if rng.below(4) == 0 { rng.below(4) } else { rng.below(150) };
        let shape = (dim(&mut rng), dim(&mut rng), dim(&mut rng));
        let pick = |rng: &mut Rng| LAYOUTS[rng.below(4)];
        let (la, lb, lh, lc) = (pick(&mut rng), pick(&mut rng), pick(&mut rng), pick(&mut rng));
        let p = Problem::new(&mut rng, shape, la, lb, lh);
        let run = Run {
            isa: isas[rng.below(isas.len())],
            lc,
            accum: if rng.below(2) == 0 { Accum::Overwrite } else { Accum::Add },
            epi: EPIS[rng.below(EPIS.len())],
            threads: 1 + rng.below(3),
            // Half the cases with small caches: random shapes then cross k, m and n
            // block boundaries too.
            caches: (rng.below(2) == 0).then_some(CacheSizes::new(8 << 10, 64 << 10)),
            c_off: rng.below(5),
        };
        check(&p, run).unwrap_or_else(|e| panic!("seed {seed} case {case}: {e}"));
    }
}

#[test]
fn integer_products_are_exact_and_match_the_f32_twin() {
    // Small integers: every partial sum is exact in f32, so the fast paths, the f32
    // twin and the integer truth must agree to the bit.
    let mut rng = Rng::new(6);
    for (m, k, n) in [(13, 300, 70), (129, 64, 10), (6, 1100, 64)] {
        let a = Matrix::from_fn(m, k, |_, _| rng.below(9) as f32 - 4.0);
        let b = Matrix::from_fn(k, n, |_, _| rng.below(9) as f32 - 4.0);
        let bias: Vec<f32> = (0..n).map(|_| rng.below(21) as f32 - 10.0).collect();
        let truth = Matrix::from_fn(m, n, |i, j| {
            let s: i64 = (0..k).map(|p| a[(i, p)] as i64 * b[(p, j)] as i64).sum();
            (s + bias[j] as i64).max(0) as f32
        });
        let mut twin = Matrix::zeros(m, n);
        gemm_naive(twin.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::BiasRelu(&bias)).unwrap();
        assert_eq!(twin, truth);
        for isa in isas() {
            let mut c = Matrix::from_fn(m, n, |_, _| f32::NAN);
            let opts = GemmOptions::default().with_isa(isa);
            gemm_with(c.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::BiasRelu(&bias), &opts).unwrap();
            assert_eq!(c, truth, "{isa:?} {m}×{k}×{n}");
            // C = AB; C += 2AB equals 3AB exactly.
            let mut c3 = Matrix::zeros(m, n);
            gemm_with(c3.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
            let a2 = Matrix::from_fn(m, k, |i, j| 2.0 * a[(i, j)]);
            gemm_with(c3.view_mut(), a2.view(), b.view(), Accum::Add, Epilogue::None, &opts).unwrap();
            let a3 = Matrix::from_fn(m, k, |i, j| 3.0 * a[(i, j)]);
            let mut direct = Matrix::zeros(m, n);
            gemm_with(direct.view_mut(), a3.view(), b.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
            assert_eq!(c3, direct, "{isa:?} accumulate {m}×{k}×{n}");
        }
    }
}

#[test]
fn overwrite_ignores_nan_in_c_and_writes_only_the_view() {
    // A 5×7 view with col stride 2 inside a NaN buffer: the view comes out finite and
    // every other cell keeps its NaN payload (checked inside `check`).
    let mut rng = Rng::new(7);
    let p = Problem::new(&mut rng, (5, 33, 7), Layout::Row, Layout::Row, Layout::Row);
    for isa in isas() {
        for lc in LAYOUTS {
            for epi in EPIS {
                check(&p, Run { isa, lc, accum: Accum::Overwrite, epi, threads: 1, caches: None, c_off: 0 })
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
}

fn bits(m: &Matrix) -> Vec<u32> {
    m.as_slice().iter().map(|x| x.to_bits()).collect()
}

#[test]
fn bit_identical_for_any_thread_count() {
    let mut rng = Rng::new(8);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    for (m, k, n) in [(128, 784, 128), (784, 128, 128), (129, 64, 10), (300, 1030, 300)] {
        let a = Matrix::from_fn(m, k, |_, _| rng.uniform(-1.0, 1.0));
        let b = Matrix::from_fn(k, n, |_, _| rng.uniform(-1.0, 1.0));
        let h = Matrix::from_fn(m, n, |_, _| rng.uniform(-1.0, 1.0).max(0.0));
        for isa in isas() {
            let mut reference: Option<(Vec<u32>, Vec<u32>, Vec<u32>)> = None;
            for threads in [1, 2, 3, 4] {
                let opts = GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
                let (mut c, mut c2, mut db, mut db2) =
                    (Matrix::zeros(m, n), Matrix::zeros(k, n), vec![0.0; n], vec![0.0; n]);
                pool.install(|| {
                    let epi = Epilogue::ReluMaskBiasGrad { h: h.view(), dbiases: &mut db };
                    gemm_with(c.view_mut(), a.view(), b.view(), Accum::Overwrite, epi, &opts).unwrap();
                    // Aᵀ·C-shaped product with the B column sums: the dW + db call.
                    gemm_with(c2.view_mut(), a.t(), h.view(), Accum::Overwrite, Epilogue::BiasGradB(&mut db2), &opts)
                        .unwrap();
                });
                let mut dbs: Vec<u32> = db.iter().map(|x| x.to_bits()).collect();
                dbs.extend(db2.iter().map(|x| x.to_bits()));
                let got = (bits(&c), bits(&c2), dbs);
                match &reference {
                    None => reference = Some(got),
                    Some(r) => assert!(r == &got, "{isa:?} {m}×{k}×{n}: {threads} threads differ from 1 thread"),
                }
            }
        }
    }
}

/// A row-major B whose rows could start on cache lines (row stride a multiple of 16)
/// but start 4 or 8 floats past one is packed rather than read in place (for tiles of
/// more than two rows); B on a cache line is read in place. Both give the bits of each
/// other, with the bias-gradient and ReLU-mask epilogues, on every path, and match the
/// f64 twin.
#[test]
fn b_off_its_cache_lines_gives_the_bits_of_b_on_them() {
    let mut rng = Rng::new(12);
    for (m, k, n) in [(128, 784, 128), (784, 128, 128), (40, 100, 64), (7, 33, 32), (2, 50, 128)] {
        let a = Matrix::from_fn(m, k, |_, _| rng.uniform(-1.0, 1.0));
        let b = Matrix::from_fn(k, n, |_, _| rng.uniform(-1.0, 1.0));
        let h = Matrix::from_fn(m, n, |_, _| rng.uniform(-1.0, 1.0).max(0.0));
        assert!((b.as_slice().as_ptr() as usize).is_multiple_of(64));
        let (want, scale) = gemm_naive_f64(a.view(), b.view());
        for shift in [4, 8] {
            // The same B, `shift` floats past a cache line.
            let mut buf = Matrix::zeros(1, k * n + shift);
            buf.as_mut_slice()[shift..].copy_from_slice(b.as_slice());
            let b_off = MatRef::new(&buf.as_slice()[shift..], k, n).unwrap();
            for isa in isas() {
                let opts = GemmOptions::default().with_isa(isa).with_threads(1);
                let run = |bv: MatRef<'_>| {
                    let (mut c, mut db) = (Matrix::zeros(m, n), vec![0.0; n]);
                    let epi = Epilogue::ReluMaskBiasGrad { h: h.view(), dbiases: &mut db };
                    gemm_with(c.view_mut(), a.view(), bv, Accum::Overwrite, epi, &opts).unwrap();
                    let mut plain = Matrix::zeros(m, n);
                    gemm_with(plain.view_mut(), a.view(), bv, Accum::Overwrite, Epilogue::None, &opts).unwrap();
                    (bits(&c), db.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), plain)
                };
                let (on, off) = (run(b.view()), run(b_off));
                assert!(on.0 == off.0 && on.1 == off.1, "{isa:?} {m}×{k}×{n}, B {shift} floats off: the bits differ");
                assert_eq!(bits(&on.2), bits(&off.2), "{isa:?} {m}×{k}×{n}");
                for ((&g, &w), &s) in on.2.as_slice().iter().zip(&want).zip(&scale) {
                    let bound = (k as f64 + 4.0) * U * s;
                    assert!((g as f64 - w).abs() <= bound, "{isa:?} {m}×{k}×{n}: {g} vs {w} (bound {bound:e})");
                }
            }
        }
    }
}

#[test]
fn few_rows_split_along_k_give_the_bits_of_one_thread() {
    // Products of two or more k blocks and few rows (rows × blocks ≤ k / 2) split along
    // k on 2+ threads (driver/split_k.rs): the blocks' products are summed afterwards,
    // which must give one thread's bits. Small caches: many k blocks (every kernel's,
    // NEON's too, cheaply enough for qemu).
    let small = Some(CacheSizes::new(8 << 10, 64 << 10));
    check_split_k(&[
        (7, 700, 300, small),
        (3, 2000, 33, small),
        (32, 400, 10, small),
        (40, 800, 410, small),
        (1, 1100, 70, None),
    ]);
}

#[test]
fn few_rows_split_along_k_at_the_sizes_of_mnist_batches() {
    // This CPU's blocks (two k blocks at k = 784 on every x86 tile), batches of 1 to
    // 197 rows: the rule's edge is 196 at k = 784. Sums of 16 K floats and more are
    // split by rows too.
    check_split_k(&[
        (2, 784, 128, None),
        (8, 784, 128, None),
        (13, 1030, 200, None),
        (32, 1500, 64, None),
        (33, 1030, 17, None),
        (64, 784, 300, None),
        (128, 1030, 130, None),
        (196, 784, 64, None),
        (197, 784, 64, None),
    ]);
}

/// Every epilogue the split's sum applies, both accumulate modes, every C layout, and
/// outputs that overflow to ±∞ or NaN, on 1–4 threads: the bits of one thread. (NaN
/// payloads may differ between paths: NaNs compare as NaN.)
fn check_split_k(shapes: &[(usize, usize, usize, Option<CacheSizes>)]) {
    let mut rng = Rng::new(36);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
    let canon = |x: f32| if x.is_nan() { f32::NAN.to_bits() } else { x.to_bits() };
    for (s, &(m, k, n, caches)) in shapes.iter().enumerate() {
        // A few huge inputs: some outputs overflow, some become ∞ − ∞ = NaN.
        let mut value = |_: usize, _: usize| if rng.below(500) == 0 { 3e38 } else { rng.uniform(-1.0, 1.0) };
        let (a, b) =
            (Operand::new_at(1, m, k, Layout::Row, &mut value), Operand::new_at(0, k, n, Layout::Row, &mut value));
        let bias = rng.vec(n);
        let c0 = rng.vec(m * n);
        for isa in isas() {
            for accum in [Accum::Overwrite, Accum::Add] {
                for (e, epi) in [Epi::None, Epi::Bias, Epi::BiasRelu].into_iter().enumerate() {
                    // Every C layout in turn (all four over the shapes, cheaply enough for qemu).
                    for lc in [LAYOUTS[(s + e) % 4], LAYOUTS[(s + e + accum as usize * 2 + 1) % 4]] {
                        let mut reference: Option<Vec<u32>> = None;
                        for threads in [1, 2, 3, 4] {
                            let mut c = Operand::new_at(2, m, n, lc, |i, j| c0[i * n + j]);
                            let epilogue = match epi {
                                Epi::Bias => Epilogue::Bias(&bias),
                                Epi::BiasRelu => Epilogue::BiasRelu(&bias),
                                _ => Epilogue::None,
                            };
                            let mut opts =
                                GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
                            opts.caches = caches;
                            pool.install(|| gemm_with(c.view_mut(), a.view(), b.view(), accum, epilogue, &opts))
                                .unwrap();
                            let got: Vec<u32> = c.buf.iter().map(|&x| canon(x)).collect();
                            let ctx = format!("{isa:?} {m}×{k}×{n} C {lc:?} {accum:?} {epi:?} {caches:?}");
                            match &reference {
                                None => {
                                    assert!(
                                        got.iter().any(|&x| f32::from_bits(x).is_infinite()),
                                        "{ctx}: no output overflowed"
                                    );
                                    reference = Some(got);
                                }
                                Some(r) => assert!(r == &got, "{ctx}: {threads} threads differ from 1 thread"),
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn finite_b_lets_products_skip_zero_inputs_with_the_same_result() {
    // `with_finite_b`: a tile skips the k steps where all its rows of A are ±0 (every
    // AVX2 and AVX-512 row tile, where its list pays). Against the full product:
    // the same bits (a zero may change sign only where a sum underflowed; compared as
    // +0), for A four-fifths zeros of either sign, with denormals, every epilogue, across
    // k blocks, on 1 and 2 threads, with A and C in every layout (A read in place
    // row-major and transposed, and packed), tiles of 1, 2 and 6 rows and the AVX-512
    // tiles of 16, 12 and 8 rows (n ≤ 16, 32, 48), partial ones too.
    let mut rng = Rng::new(37);
    let small = Some(CacheSizes::new(8 << 10, 64 << 10));
    let canon = |x: f32| if x == 0.0 { 0 } else { x.to_bits() };
    let epis = [Epi::None, Epi::Bias, Epi::BiasRelu, Epi::ReluMask, Epi::BiasGradB];
    let mut case = 0;
    let shapes = [
        (1, 784, 128, None),
        (1, 1100, 65, None),
        (2, 300, 200, None),
        (1, 1, 17, None),
        (2, 700, 10, small),
        (1, 999, 64, small),
        (6, 1100, 64, None),
        (7, 300, 70, None),
        (40, 784, 128, None),
        (13, 520, 100, None),
        (20, 600, 16, None),
        (30, 784, 32, None),
        (17, 530, 45, small),
    ];
    for (s, (m, k, n, caches)) in shapes.into_iter().enumerate() {
        // Every other shape without normal inputs: its outputs are sums of denormal
        // products alone, which skipping a denormal would change.
        let tiny_only = s % 2 == 1;
        for la in LAYOUTS {
            let a = Operand::new_at(1, m, k, la, |_, _| match rng.below(10) {
                0..=3 => 0.0,
                4..=7 => -0.0,
                8 => f32::from_bits(rng.below(1 << 20) as u32 + 1) * if rng.below(2) == 0 { 1.0 } else { -1.0 },
                _ if tiny_only => f32::from_bits(rng.below(1 << 22) as u32 + 1),
                _ => rng.uniform(-1.0, 1.0),
            });
            let b = Matrix::from_fn(k, n, |_, _| rng.uniform(-1.0, 1.0));
            let h = Matrix::from_fn(m, n, |_, _| rng.uniform(-1.0, 1.0).max(0.0));
            let bias = rng.vec(n);
            let c0 = rng.vec(m * n);
            for isa in isas() {
                case += 1;
                let epi = epis[case % epis.len()];
                let accum = if case % 3 == 0 { Accum::Add } else { Accum::Overwrite };
                let lc = LAYOUTS[case % 4];
                let mut got = Vec::new();
                for (threads, finite) in [(1, false), (1, true), (2, true)] {
                    let mut c = Operand::new_at(0, m, n, lc, |i, j| c0[i * n + j]);
                    let mut db = vec![0.0; n];
                    let epilogue = match epi {
                        Epi::Bias => Epilogue::Bias(&bias),
                        Epi::BiasRelu => Epilogue::BiasRelu(&bias),
                        Epi::ReluMask => Epilogue::ReluMask(h.view()),
                        Epi::BiasGradB => Epilogue::BiasGradB(&mut db),
                        _ => Epilogue::None,
                    };
                    let mut opts =
                        GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
                    opts.caches = caches;
                    if finite {
                        opts = opts.with_finite_b();
                    }
                    gemm_with(c.view_mut(), a.view(), b.view(), accum, epilogue, &opts).unwrap();
                    let mut bits: Vec<u32> = c.buf.iter().map(|&x| canon(x)).collect();
                    bits.extend(db.iter().map(|&x| canon(x)));
                    got.push(bits);
                }
                let ctx = format!("{isa:?} {m}×{k}×{n} A {la:?} C {lc:?} {accum:?} {epi:?} {caches:?}");
                assert!(got[1] == got[0], "{ctx}: skipping zero inputs changed the product");
                assert!(got[2] == got[0], "{ctx}: on 2 threads");
            }
        }
    }
}

#[test]
fn finite_b_skips_the_rows_of_b_at_zero_inputs() {
    // The promise is what makes skipping exact: break it (NaN in B's rows at A's
    // zeros) and the tiles that skip show it by a finite product, where the full
    // product is NaN. This checks that the steps really are skipped, with A row-major
    // (X·W) and transposed (Xᵀ·dZ): by the tiles of one or two rows; by the AVX2 tiles
    // serving two column tiles or more (n ≥ 32); by every AVX-512 tile but the 16 × 16
    // one (n ≤ 16) with A row-major; and not where a list would cost more than it saves
    // (n = 24 on AVX2, n = 16 with A row-major on AVX-512).
    let k = 784;
    for (m, n) in [(1, 128), (8, 128), (128, 128), (8, 48), (8, 32), (8, 24), (20, 16)] {
        let x = Matrix::from_fn(m, k, |_, p| if p % 5 == 0 { 1.0 } else { 0.0 });
        let xt = Matrix::from_fn(k, m, |p, _| if p % 5 == 0 { 1.0 } else { 0.0 });
        let b = Matrix::from_fn(k, n, |p, j| if p % 5 == 0 { (j as f32).sin() } else { f32::NAN });
        for isa in isas() {
            for (layout, a) in [("row-major", x.view()), ("transposed", xt.t())] {
                for finite in [false, true] {
                    let mut c = Matrix::zeros(m, n);
                    let mut opts = GemmOptions::default().with_isa(isa).with_threads(1);
                    if finite {
                        opts = opts.with_finite_b();
                    }
                    gemm_with(c.view_mut(), a, b.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
                    let skips = finite
                        && match isa {
                            Isa::Avx512 => m <= 2 || n > 16 || layout == "transposed",
                            Isa::Avx2 => m <= 2 || n >= 32,
                            _ => false,
                        };
                    let finite_out = c.as_slice().iter().all(|x| x.is_finite());
                    assert_eq!(finite_out, skips, "{isa:?} {m}×{k}×{n}, A {layout}, finite B promised: {finite}");
                }
            }
        }
    }
}

#[test]
fn shape_errors_say_what_was_expected() {
    let a = Matrix::zeros(3, 4);
    let b = Matrix::zeros(4, 5);
    let h = Matrix::zeros(3, 5);
    let run = |c: &mut Matrix, a: &Matrix, b: &Matrix, epi: Epilogue<'_>| {
        let before = c.clone();
        let r = gemm_with(c.view_mut(), a.view(), b.view(), Accum::Overwrite, epi, &GemmOptions::default());
        assert_eq!(*c, before, "a failed call must leave C unchanged");
        r
    };
    let mut c = Matrix::zeros(3, 5);
    assert!(run(&mut c, &a, &b, Epilogue::None).is_ok());
    // Inner dimensions disagree.
    let err = run(&mut c, &a, &Matrix::zeros(5, 5), Epilogue::None).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "gemm", .. }));
    assert!(err.to_string().contains("A 3×4, B 5×5, C 3×5"), "{err}");
    // C has the wrong number of rows, or of columns.
    assert!(run(&mut Matrix::zeros(2, 5), &a, &b, Epilogue::None).is_err());
    assert!(run(&mut Matrix::zeros(3, 6), &a, &b, Epilogue::None).is_err());
    // Bias of the wrong length.
    let err = run(&mut c, &a, &b, Epilogue::Bias(&[0.0; 4])).unwrap_err();
    assert!(err.to_string().contains("bias of length n = 5") && err.to_string().contains("length 4"), "{err}");
    assert!(run(&mut c, &a, &b, Epilogue::BiasRelu(&[0.0; 6])).is_err());
    // Activation of the wrong shape.
    let err = run(&mut c, &a, &b, Epilogue::ReluMask(h.t())).unwrap_err();
    assert!(err.to_string().contains("3×5") && err.to_string().contains("got 5×3"), "{err}");
    // Gradient buffers of the wrong length.
    let mut short = [0.0f32; 4];
    assert!(run(&mut c, &a, &b, Epilogue::ReluMaskBiasGrad { h: h.view(), dbiases: &mut short }).is_err());
    assert!(run(&mut c, &a, &b, Epilogue::BiasGradB(&mut short)).is_err());
    // Zero threads.
    let opts = GemmOptions::default().with_threads(0);
    assert!(matches!(
        gemm_with(c.view_mut(), a.view(), b.view(), Accum::Overwrite, Epilogue::None, &opts),
        Err(Error::Kernel(_))
    ));
}

#[test]
fn kernel_names_parse_and_unavailable_kernels_are_errors() {
    for &isa in Isa::ALL {
        assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
    }
    assert_eq!(Isa::parse(" AVX2 ").unwrap(), Isa::Avx2);
    assert!(matches!(Isa::parse("sve"), Err(Error::Kernel(_))));
    for isa in Isa::ALL.iter().copied().filter(|i| !i.is_available()) {
        let mut c = Matrix::zeros(1, 1);
        let opts = GemmOptions::default().with_isa(isa);
        let one = Matrix::zeros(1, 1);
        let r = gemm_with(c.view_mut(), one.view(), one.view(), Accum::Overwrite, Epilogue::None, &opts);
        assert!(matches!(r, Err(Error::Kernel(_))), "{isa:?} should be refused");
    }
    assert!(Isa::best().is_available());
}

/// The property test's budget: `FUSEGRAD_PROP_CASES` cases (default 48, what CI runs;
/// before a release run e.g. 5000), from the fixed seed 20261130 unless
/// `FUSEGRAD_PROP_SEED` names another (or `random`). A failure shrinks to a minimal
/// case, which proptest records in `tests/gemm.proptest-regressions` and replays
/// first on every later run: commit that file.
fn prop_config() -> PropConfig {
    let cases =
        std::env::var("FUSEGRAD_PROP_CASES").ok().map_or(48, |v| v.parse().expect("FUSEGRAD_PROP_CASES: a number"));
    let rng_seed = match std::env::var("FUSEGRAD_PROP_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(v) => RngSeed::Fixed(v.parse().expect("FUSEGRAD_PROP_SEED: a number or \"random\"")),
        Err(_) => RngSeed::Fixed(20_261_130),
    };
    PropConfig { cases, rng_seed, ..PropConfig::default() }
}

proptest! {
    #![proptest_config(prop_config())]

    /// Any m, k, n in 0..300, any layout of A, B, C and h (row-major, padded rows,
    /// transposed, or strided in both dimensions; NaN around every view), views
    /// starting 0–16 floats into their buffers (any alignment), both `Accum`
    /// modes, every epilogue, every path this CPU runs, 1–4 threads, this CPU's caches
    /// or small ones: C, the sentinels and any bias gradient against the f64 twin
    /// within the dot-product error bound.
    #[test]
    fn any_gemm_matches_the_f64_twin(
        m in 0usize..300,
        k in 0usize..300,
        n in 0usize..300,
        layouts in (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        add in any::<bool>(),
        epi in 0usize..EPIS.len(),
        path in 0usize..8,
        threads in 1usize..=4,
        small_caches in any::<bool>(),
        offsets in (0usize..17, 0usize..17, 0usize..17, 0usize..17),
        seed in any::<u64>(),
    ) {
        let paths: Vec<Isa> = Isa::ALL.iter().copied().filter(|i| i.is_available()).collect();
        let (la, lb, lh, lc) = layouts;
        let mut rng = Rng::new(seed);
        let (oa, ob, oh, oc) = offsets;
        let p = Problem::new_at(&mut rng, (m, k, n), LAYOUTS[la], LAYOUTS[lb], LAYOUTS[lh], [oa, ob, oh]);
        let run = Run {
            c_off: oc,
            isa: paths[path % paths.len()],
            lc: LAYOUTS[lc],
            accum: if add { Accum::Add } else { Accum::Overwrite },
            epi: EPIS[epi],
            threads,
            caches: small_caches.then_some(CacheSizes::new(8 << 10, 64 << 10)),
        };
        if let Err(e) = check(&p, run) {
            return Err(TestCaseError::fail(e));
        }
    }
}

#[test]
fn mid_width_and_two_row_tiles_across_block_boundaries() {
    // 16 < n ≤ 48 goes to the AVX-512 12 × 32 and 8 × 48 tiles, one or two rows of C to
    // the 2-row tiles (2 × 16 … 2 × 128), one row wider than 32 on AVX2 to its 1 × 64
    // tile: shapes just past their kc, mc and nc, with
    // every A and B layout, at small caches, on 2 threads (the other paths see the
    // same shapes with their own tiles). Those tiles exist on x86_64 only; under qemu
    // (aarch64) the shapes would add a minute and no new tile.
    if !cfg!(target_arch = "x86_64") {
        eprintln!("skipping: the AVX-512 mid-width and 2-row tiles are x86_64 only");
        return;
    }
    let mut rng = Rng::new(36);
    for caches in [CacheSizes::new(8 << 10, 64 << 10), CacheSizes::new(32 << 10, 128 << 10)] {
        for (mr, nr, ns) in [
            (12, 32, &[17, 31, 32][..]),
            (8, 48, &[33, 47, 48][..]),
            (2, 16, &[1, 10, 16][..]),
            (2, 32, &[17, 32][..]),
            (2, 64, &[33, 64][..]),
            (2, 128, &[65, 128, 129][..]),
            (1, 64, &[33, 63, 64, 65, 129][..]), // AVX2's one-row tile
        ] {
            let Blocking { kc, mc, nc, .. } = Blocking::for_kernel(mr, nr, caches);
            let ms: Vec<usize> = match mr {
                1 => vec![1],
                2 => vec![1, 2],
                _ => vec![mc + 1, mc - 1, mr + 1, 1],
            };
            let mut ns = ns.to_vec();
            if mr <= 2 && nr >= 64 {
                ns.extend([nc - 1, nc + 1]);
            }
            for &m in &ms {
                for &n in &ns {
                    for k in [kc + 1, 2 * kc + 3, kc - 1, 1] {
                        let s = m + n + k;
                        let (la, lb) =
                            [(Layout::Row, Layout::Row), (Layout::Trans, Layout::Row), (Layout::Row, Layout::Trans)]
                                [s % 3];
                        let p = Problem::new(&mut rng, (m, k, n), la, lb, Layout::Row);
                        check_all_with_caches(&p, Layout::Row, 2, Some(caches));
                    }
                }
            }
        }
    }
}

#[test]
fn transposed_a_packed_in_place_or_listed_gives_the_same_bits() {
    // Aᵀ (X of k × m seen through `.t()`, as in dW = Xᵀ·dZ) is read in place, in place
    // with lists of its nonzero steps (B finite), or packed: where its k steps' lines
    // would crowd a few L2 sets (rows 256 floats apart with a 64 KiB L2: from 33
    // steps; 257 apart never), and where 16 column tiles or more reuse each panel
    // whose first panel lists too many steps (a 4 MiB L2 gives blocks of 1024 columns).
    // The k loop is the same, so every way must give the same bits (for one kernel,
    // on any thread count), and the naive twin's result. Half of X's columns are 90%
    // zero, so that some blocks list their steps and others do not.
    let small = CacheSizes::new(8 << 10, 64 << 10);
    let large = CacheSizes::new(32 << 10, 4 << 20);
    let mut rng = Rng::new(71);
    let shapes = [
        (250, 100, 70, small),
        (13, 40, 130, small),
        (256, 33, 17, small),
        (100, 170, 64, small),
        (150, 60, 1030, large),
        (7, 200, 1100, large),
    ];
    for (m, k, n, caches) in shapes {
        let x = Matrix::from_fn(k, m, |_, j| {
            let v = rng.uniform(-1.0, 1.0);
            if j < m / 2 && rng.below(10) != 0 {
                0.0
            } else {
                v
            }
        });
        let dz = Matrix::from_fn(k, n, |_, _| rng.uniform(-1.0, 1.0));
        // The f64 twin: exact products and the sum of their magnitudes.
        let (prod, scale) = gemm_naive_f64(x.t(), dz.view());
        let mut results = Vec::new();
        for stride in [256, 257] {
            // X (k × m) stored with rows `stride` floats apart, padding NaN.
            let mut buf = vec![f32::NAN; (k - 1) * stride + m];
            for p in 0..k {
                buf[p * stride..p * stride + m].copy_from_slice(x.row(p));
            }
            let xs = MatRef::from_strides(&buf, k, m, stride, 1).unwrap();
            for (isa, threads, finite) in isas().into_iter().flat_map(|i| [(i, 1, false), (i, 2, false), (i, 1, true)])
            {
                let mut c = Matrix::zeros(m, n);
                let mut opts = GemmOptions::default()
                    .with_isa(isa)
                    .with_threads(threads)
                    .with_min_work_per_thread(0)
                    .with_caches(caches);
                opts.b_is_finite = finite;
                gemm_with(c.view_mut(), xs.t(), dz.view(), Accum::Overwrite, Epilogue::None, &opts).unwrap();
                let ctx = format!("{m}×{k}×{n} stride {stride} {isa:?} {threads}t finite B {finite}");
                for i in 0..m {
                    for j in 0..n {
                        let tol = (k + 4) as f64 * U * scale[i * n + j];
                        let (got, want) = (c[(i, j)] as f64, prod[i * n + j]);
                        assert!((got - want).abs() <= tol, "{ctx}: C[{i}][{j}] = {got}, naive {want}");
                    }
                }
                results.push((isa, ctx, bits(&c)));
            }
        }
        for (isa, ctx, b) in &results {
            let (_, first, want) = results.iter().find(|r| r.0 == *isa).unwrap();
            assert!(b == want, "{ctx} differs from {first}");
        }
    }
}
