//! One process, one fixed sequence of GEMM calls over every shape class, each on the
//! SIMD paths this CPU has and then on the portable path, on 1 and 2 threads, with C
//! stored tight and padded: the order in which an outside program once saw valgrind
//! report an uninitialised read in the portable kernel after the AVX2 calls
//! (`scripts/ub-check.sh valgrind` runs this file under memcheck). Each result is
//! checked against an f64 reference with an f32 rounding-error bound, and the padding
//! of C must come back untouched.

use fusegrad::gemm::{gemm_naive_f64, gemm_with, Accum, Epilogue, GemmOptions, Isa};
use fusegrad::{MatMut, MatRef};

mod common;
use common::Rng;

const U: f64 = 1.0 / (1u64 << 24) as f64;
const PAD_VALUE: f32 = -7.25;

/// How an operand is stored: row-major with `pad` floats after each row, or stored
/// transposed (column-major) and read through `.t()`.
#[derive(Clone, Copy, Debug)]
enum Store {
    Rows { pad: usize },
    Transposed,
}

struct Operand {
    buf: Vec<f32>,
    rows: usize,
    cols: usize,
    store: Store,
}

impl Operand {
    fn random(rng: &mut Rng, rows: usize, cols: usize, store: Store) -> Self {
        let stored_rows = match store {
            Store::Rows { .. } => rows,
            Store::Transposed => cols,
        };
        let len = stored_rows * Self::stride(rows, cols, store);
        Operand { buf: rng.vec(len.max(1)), rows, cols, store }
    }
    fn stride(rows: usize, cols: usize, store: Store) -> usize {
        match store {
            Store::Rows { pad } => cols + pad,
            Store::Transposed => rows,
        }
    }
    fn view(&self) -> MatRef<'_> {
        let s = Self::stride(self.rows, self.cols, self.store).max(1);
        match self.store {
            Store::Rows { .. } => MatRef::from_strides(&self.buf, self.rows, self.cols, s, 1).unwrap(),
            Store::Transposed => MatRef::from_strides(&self.buf, self.cols, self.rows, s, 1).unwrap().t(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    None,
    BiasRelu,
    ReluMaskBiasGrad,
    BiasGradB,
}

#[allow(clippy::too_many_arguments)]
fn check_call(
    rng: &mut Rng,
    label: &str,
    a: &Operand,
    b: &Operand,
    c_pad: usize,
    accum: Accum,
    kind: Kind,
    options: &GemmOptions,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let rsc = n + c_pad;
    let c_len = (m * rsc).max(1);
    let mut c_buf = vec![PAD_VALUE; c_len];
    for i in 0..m {
        for j in 0..n {
            c_buf[i * rsc + j] = rng.uniform(-1.0, 1.0);
        }
    }
    let c_old = c_buf.clone();
    let bias = rng.vec(n);
    let h_buf: Vec<f32> = (0..m * n).map(|_| if rng.below(3) == 0 { 0.0 } else { rng.uniform(0.1, 1.0) }).collect();
    let h = MatRef::new(&h_buf, m, n).unwrap();
    let mut dbiases = vec![f32::NAN; n];

    let c_view = MatMut::from_strides(&mut c_buf, m, n, rsc.max(1), 1).unwrap();
    let epilogue = match kind {
        Kind::None => Epilogue::None,
        Kind::BiasRelu => Epilogue::BiasRelu(&bias),
        Kind::ReluMaskBiasGrad => Epilogue::ReluMaskBiasGrad { h, dbiases: &mut dbiases },
        Kind::BiasGradB => Epilogue::BiasGradB(&mut dbiases),
    };
    gemm_with(c_view, a.view(), b.view(), accum, epilogue, options).unwrap();

    // The f64 twin: the product and, per element, Σ_p |a_ip·b_pj|.
    let (prod, scale) = gemm_naive_f64(a.view(), b.view());
    let what = format!("{label}: {m}x{k}x{n} C pad {c_pad} {accum:?} {kind:?}");
    let mut col_sum = vec![0.0f64; n];
    let mut col_tol = vec![0.0f64; n];
    for i in 0..m {
        for j in 0..n {
            let old = if accum == Accum::Add { c_old[i * rsc + j] as f64 } else { 0.0 };
            let mut want = prod[i * n + j] + old;
            let mut tol = 2.0 * (k as f64 + 5.0) * U * (scale[i * n + j] + old.abs()) + 1e-30;
            match kind {
                Kind::BiasRelu => {
                    want = (want + bias[j] as f64).max(0.0);
                    tol += 2.0 * U * (bias[j] as f64).abs();
                }
                Kind::ReluMaskBiasGrad if h_buf[i * n + j] <= 0.0 => want = 0.0,
                _ => {}
            }
            col_sum[j] += want;
            col_tol[j] += tol + (m as f64 + 1.0) * U * want.abs();
            let got = c_buf[i * rsc + j] as f64;
            assert!((got - want).abs() <= tol, "{what}: C[{i}][{j}] = {got}, want {want} ± {tol}");
        }
        for q in n..rsc {
            assert_eq!(c_buf[i * rsc + q].to_bits(), PAD_VALUE.to_bits(), "{what}: padding C[{i}][{q}] written");
        }
    }
    match kind {
        Kind::ReluMaskBiasGrad => {
            for j in 0..n {
                let got = dbiases[j] as f64;
                assert!((got - col_sum[j]).abs() <= col_tol[j], "{what}: dbiases[{j}] = {got}, want {}", col_sum[j]);
            }
        }
        Kind::BiasGradB => {
            let bv = b.view();
            for (j, &got) in dbiases.iter().enumerate() {
                let want: f64 = (0..k).map(|p| bv.get(p, j) as f64).sum();
                let abs: f64 = (0..k).map(|p| (bv.get(p, j) as f64).abs()).sum();
                let tol = 2.0 * (k as f64 + 1.0) * U * abs + 1e-30;
                let got = got as f64;
                assert!((got - want).abs() <= tol, "{what}: dbiases[{j}] = {got}, want {want} ± {tol}");
            }
        }
        _ => {}
    }
}

#[test]
fn every_shape_class_on_every_path_in_one_process() {
    use Store::{Rows, Transposed as T};
    const R: Store = Rows { pad: 0 };
    const P: Store = Rows { pad: 5 };
    // (m, k, n, A, B): single elements, batch-1 rows, tile edges (AVX-512 6×64 and
    // 16-wide, AVX2 6×16 and 16×5, portable 4×8), the MNIST products and their
    // transposes, and one past each.
    let shapes: [(usize, usize, usize, Store, Store); 12] = [
        (1, 1, 1, R, R),
        (1, 784, 128, R, R),
        (2, 3, 5, T, R),
        (5, 17, 9, R, T),
        (6, 64, 16, P, P),
        (7, 33, 17, T, T),
        (13, 129, 63, R, P),
        (16, 10, 65, R, T),
        (31, 128, 10, T, R),
        (64, 128, 10, T, R),
        (128, 64, 10, P, R),
        (129, 784, 10, T, R),
    ];
    let simd: Vec<Isa> = Isa::ALL.iter().copied().filter(|&i| i != Isa::Portable && i.is_available()).collect();
    let mut rng = Rng::new(0x5E9_0E7CE);
    let mut calls = 0;
    for (s, &(m, k, n, sa, sb)) in shapes.iter().enumerate() {
        let a = Operand::random(&mut rng, m, k, sa);
        let b = Operand::random(&mut rng, k, n, sb);
        for isa in simd.iter().copied().chain([Isa::Portable]) {
            for threads in [1, 2] {
                for c_pad in [0, 3] {
                    let kind = [Kind::None, Kind::BiasRelu, Kind::ReluMaskBiasGrad, Kind::BiasGradB][(s + c_pad) % 4];
                    let accum = if (s + threads) % 2 == 0 { Accum::Overwrite } else { Accum::Add };
                    let options =
                        GemmOptions::default().with_isa(isa).with_threads(threads).with_min_work_per_thread(0);
                    let label = format!("call {calls}, {} on {threads} thread(s)", isa.name());
                    check_call(&mut rng, &label, &a, &b, c_pad, accum, kind, &options);
                    calls += 1;
                }
            }
        }
    }
    assert_eq!(calls, shapes.len() * (simd.len() + 1) * 4);
}
