// temporary: the first layer's two GEMMs on real MNIST batches, with and without skipping
// the k steps where A is ±0 (GemmOptions::with_finite_b), 1 thread, interleaved blocks.
// usage: skipab BATCH [WIDTH] [ROUNDS]; copy to examples/ to build, never commit there.
use fusegrad::data::mnist;
use fusegrad::gemm::{gemm_with, Accum, Epilogue, GemmOptions};
use fusegrad::{Matrix, Rng};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let b: usize = a[1].parse().unwrap();
    let w: usize = a.get(2).map_or(128, |s| s.parse().unwrap());
    let rounds: usize = a.get(3).map_or(7, |s| s.parse().unwrap());
    let data = mnist::load(mnist::resolve_dir(None)).unwrap();
    let mut rng = Rng::new(1);
    let batches = 64;
    let xs: Vec<Matrix> = (0..batches)
        .map(|_| {
            let rows: Vec<usize> = (0..b).map(|_| (rng.next_u64() % 60000) as usize).collect();
            Matrix::from_fn(b, 784, |i, j| data.train_pixels[rows[i] * 784 + j] as f32 * mnist::PIXEL_SCALE)
        })
        .collect();
    let wt = Matrix::from_fn(784, w, |i, j| ((i * 31 + j * 17) % 97) as f32 / 970.0 - 0.05);
    let bias = vec![0.01f32; w];
    let dz = Matrix::from_fn(b, w, |i, j| ((i * 5 + j) % 13) as f32 / 1300.0 - 0.005);
    let mut out = Matrix::zeros(b, w);
    let mut dw = Matrix::zeros(784, w);
    let mut opts = GemmOptions::default();
    opts.threads = Some(1);
    let fin = opts.with_finite_b();
    let reps = 50;
    let mut best = [f64::MAX; 4];
    let mut meds: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        for (v, o) in [(0, &opts), (1, &fin)] {
            let t = Instant::now();
            for r in 0..reps {
                gemm_with(out.view_mut(), xs[r % batches].view(), wt.view(), Accum::Overwrite, Epilogue::BiasRelu(&bias), o).unwrap();
            }
            let f = t.elapsed().as_secs_f64() / reps as f64;
            let t = Instant::now();
            for r in 0..reps {
                gemm_with(dw.view_mut(), xs[r % batches].t(), dz.view(), Accum::Overwrite, Epilogue::None, o).unwrap();
            }
            let u = t.elapsed().as_secs_f64() / reps as f64;
            best[v] = best[v].min(f);
            best[2 + v] = best[2 + v].min(u);
            meds[v].push(f);
            meds[2 + v].push(u);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let m: Vec<f64> = meds.iter_mut().map(med).collect();
    println!(
        "b{b} w{w}: forward {b}x784x{w} dense {:.1} / skip {:.1} us (best; median {:.1} / {:.1}); Xt.dZ 784x{b}x{w} dense {:.1} / skip {:.1} us (median {:.1} / {:.1})",
        best[0] * 1e6, best[1] * 1e6, m[0] * 1e6, m[1] * 1e6, best[2] * 1e6, best[3] * 1e6, m[2] * 1e6, m[3] * 1e6
    );
}
