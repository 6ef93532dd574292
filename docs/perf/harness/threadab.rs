// temporary: forward b×784×128 and Xᵀ·dZ with skipping, 1 vs 2 threads (hot workers);
// usage: threadab BATCH (MNIST_DIR set); copy to examples/ to build, never commit there.
use fusegrad::data::mnist;
use fusegrad::gemm::{gemm_with, Accum, Epilogue, GemmOptions};
use fusegrad::{Matrix, Rng};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let b: usize = a[1].parse().unwrap();
    let data = mnist::load(mnist::resolve_dir(None)).unwrap();
    let mut rng = Rng::new(1);
    let batches = 64;
    let xs: Vec<Matrix> = (0..batches)
        .map(|_| {
            let rows: Vec<usize> = (0..b).map(|_| (rng.next_u64() % 60000) as usize).collect();
            Matrix::from_fn(b, 784, |i, j| data.train_pixels[rows[i] * 784 + j] as f32 * mnist::PIXEL_SCALE)
        })
        .collect();
    let w = 128;
    let wt = Matrix::from_fn(784, w, |i, j| ((i * 31 + j * 17) % 97) as f32 / 970.0 - 0.05);
    let bias = vec![0.01f32; w];
    let dz = Matrix::from_fn(b, w, |i, j| ((i * 5 + j) % 13) as f32 / 1300.0 - 0.005);
    let mut out = Matrix::zeros(b, w);
    let mut dw = Matrix::zeros(784, w);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        fusegrad::gemm::reserve_workspace();
        fusegrad::runtime::with_hot_workers(|| {
            for round in 0..5 {
                for t in [1, 2] {
                    let o = GemmOptions::default().with_threads(t).with_finite_b();
                    let reps = 400;
                    let s = Instant::now();
                    for r in 0..reps {
                        gemm_with(out.view_mut(), xs[r % batches].view(), wt.view(), Accum::Overwrite, Epilogue::BiasRelu(&bias), &o).unwrap();
                    }
                    let f = s.elapsed().as_secs_f64() / reps as f64;
                    let s = Instant::now();
                    for r in 0..reps {
                        gemm_with(dw.view_mut(), xs[r % batches].t(), dz.view(), Accum::Overwrite, Epilogue::None, &o).unwrap();
                    }
                    let u = s.elapsed().as_secs_f64() / reps as f64;
                    println!("round {round} threads {t}: forward {:.1} us, Xt.dZ {:.1} us", f * 1e6, u * 1e6);
                }
            }
        })
    });
}
