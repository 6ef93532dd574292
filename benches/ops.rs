//! `cargo bench --bench ops`: each fused kernel against the unfused sequence it
//! replaces, at the MNIST shapes (batch 128), so the README can show what fusion buys.

use criterion::{Criterion, Throughput};
use fusegrad::gemm::{gemm_with, Accum, Epilogue, GemmOptions};
use fusegrad::ops::{activation, reduce, softmax_ce, update};
use fusegrad::Matrix;
use std::hint::black_box;
use std::time::Duration;

fn fill(rows: usize, cols: usize, seed: usize) -> Matrix {
    Matrix::from_fn(rows, cols, |i, j| ((i * 31 + j * 17 + seed) % 101) as f32 / 101.0 - 0.5)
}

fn bench_ops(c: &mut Criterion) {
    let one = GemmOptions::default().with_threads(1);

    // Dense forward: X·W, + b, ReLU.
    {
        let (x, w, b) = (fill(128, 784, 1), fill(784, 128, 2), vec![0.01f32; 128]);
        let (mut out, mut act) = (Matrix::zeros(128, 128), Matrix::zeros(128, 128));
        let mut g = c.benchmark_group("ops/dense forward 128x784x128 bias+relu");
        g.bench_function("fused (BiasRelu epilogue)", |bch| {
            bch.iter(|| {
                gemm_with(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::BiasRelu(&b), &one).unwrap()
            })
        });
        g.bench_function("unfused (gemm, bias pass, relu pass)", |bch| {
            bch.iter(|| {
                gemm_with(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::None, &one).unwrap();
                for i in 0..128 {
                    for (v, &bj) in out.row_mut(i).iter_mut().zip(&b) {
                        *v += bj;
                    }
                }
                activation::relu_forward(out.view(), act.view_mut()).unwrap();
            })
        });
        g.finish();
    }

    // Input gradient through the ReLU below: dz·Wᵀ ⊙ 1[h > 0].
    {
        let (dz, w, h) = (fill(128, 64, 3), fill(128, 64, 4), fill(128, 128, 5));
        let (mut dx, mut masked) = (Matrix::zeros(128, 128), Matrix::zeros(128, 128));
        let mut g = c.benchmark_group("ops/dense dinputs 128x64x128 relu mask");
        g.bench_function("fused (ReluMask epilogue)", |bch| {
            bch.iter(|| {
                gemm_with(dx.view_mut(), dz.view(), w.t(), Accum::Overwrite, Epilogue::ReluMask(h.view()), &one)
                    .unwrap()
            })
        });
        g.bench_function("unfused (gemm, relu_backward pass)", |bch| {
            bch.iter(|| {
                gemm_with(dx.view_mut(), dz.view(), w.t(), Accum::Overwrite, Epilogue::None, &one).unwrap();
                activation::relu_backward(dx.view(), h.view(), masked.view_mut()).unwrap();
            })
        });
        g.finish();
    }

    // Weight and bias gradients: Xᵀ·dz and colsum(dz).
    {
        let (x, dz) = (fill(128, 784, 6), fill(128, 128, 7));
        let (mut dw, mut db) = (Matrix::zeros(784, 128), vec![0.0f32; 128]);
        let mut g = c.benchmark_group("ops/dense dweights 784x128x128 + dbiases");
        g.bench_function("fused (BiasGradB epilogue)", |bch| {
            bch.iter(|| {
                gemm_with(dw.view_mut(), x.t(), dz.view(), Accum::Overwrite, Epilogue::BiasGradB(&mut db), &one)
                    .unwrap()
            })
        });
        g.bench_function("unfused (gemm, colsum pass)", |bch| {
            bch.iter(|| {
                gemm_with(dw.view_mut(), x.t(), dz.view(), Accum::Overwrite, Epilogue::None, &one).unwrap();
                reduce::colsum(dz.view(), &mut db).unwrap();
            })
        });
        g.finish();
    }

    // Softmax + cross-entropy + its gradient.
    {
        let z = fill(128, 10, 8);
        let labels: Vec<usize> = (0..128).map(|i| i % 10).collect();
        let (mut d, mut probs, mut onehot) = (Matrix::zeros(128, 10), Matrix::zeros(128, 10), Matrix::zeros(128, 10));
        let mut g = c.benchmark_group("ops/softmax cross-entropy 128x10");
        g.bench_function("fused (one pass)", |bch| {
            bch.iter(|| softmax_ce::softmax_cross_entropy(black_box(z.view()), &labels, Some(d.view_mut())).unwrap())
        });
        g.bench_function("unfused (softmax, one-hot, CE, gradient)", |bch| {
            bch.iter(|| {
                activation::softmax_forward(black_box(z.view()), probs.view_mut()).unwrap();
                onehot.as_mut_slice().fill(0.0);
                for (i, &l) in labels.iter().enumerate() {
                    onehot[(i, l)] = 1.0;
                }
                let loss: f32 =
                    labels.iter().enumerate().map(|(i, &l)| -probs[(i, l)].max(1e-7).ln()).sum::<f32>() / 128.0;
                for ((dv, &p), &o) in d.as_mut_slice().iter_mut().zip(probs.as_slice()).zip(onehot.as_slice()) {
                    *dv = (p - o) / 128.0;
                }
                black_box(loss)
            })
        });
        g.finish();
    }

    // Adam over the 784×128 weights.
    {
        let n = 784 * 128;
        let grads = fill(784, 128, 9).into_vec();
        let (mut p, mut m, mut v) = (vec![0.1f32; n], vec![0.0f32; n], vec![0.0f32; n]);
        let mut g = c.benchmark_group("ops/adam 784x128");
        g.throughput(Throughput::Elements(n as u64));
        let step = update::AdamStep::new(1e-3, 10);
        g.bench_function("fused (one pass)", |bch| {
            bch.iter(|| update::adam(&mut p, &grads, &mut m, &mut v, step).unwrap())
        });
        g.bench_function("unfused (m pass, v pass, update pass)", |bch| {
            bch.iter(|| {
                for (mi, &gi) in m.iter_mut().zip(&grads) {
                    *mi = 0.9 * *mi + 0.1 * gi;
                }
                for (vi, &gi) in v.iter_mut().zip(&grads) {
                    *vi = 0.999 * *vi + 0.001 * gi * gi;
                }
                let (c1, c2) = (1.0 / (1.0 - 0.9f32.powi(10)), 1.0 / (1.0 - 0.999f32.powi(10)));
                for ((pi, &mi), &vi) in p.iter_mut().zip(&m).zip(&v) {
                    *pi -= 1e-3 * (mi * c1) / ((vi * c2).sqrt() + 1e-7);
                }
            })
        });
        g.finish();
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_ops(&mut c);
    c.final_summary();
}
