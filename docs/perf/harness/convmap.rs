// convmap: hot bytes→f32 conversion of 128 rows, whole and half rows. Needs the experimental
// `Inputs::gather_cols_mapped` of docs/perf/gather-beside-2026-12-07.md (not in the crate);
// copy to examples/ to build; never commit it there.
use fusegrad::nn::{Inputs, ScaledBytes};
use std::time::Instant;
fn main() {
    let img = std::fs::read("/work/shared/data/mnist/train-images-idx3-ubyte").unwrap();
    let px = &img[16..16 + 60000 * 784];
    let x = ScaledBytes::new(px, 784, 1.0 / 255.0).unwrap();
    let b = 128;
    let mut out = vec![0f32; b * 784];
    let mut words = vec![0u64; b * 13];
    let rows: Vec<usize> = (0..b).map(|i| (i * 7919) % 60000).collect();
    let isa = fusegrad::gemm::Isa::Avx512;
    for (name, c) in [("full", 0..784), ("half0", 0..384), ("half1", 384..784)] {
        let mut best = f64::MAX;
        for _ in 0..2000 {
            let t = Instant::now();
            x.gather_cols_mapped(&rows, c.clone(), out.as_mut_ptr(), words.as_mut_ptr(), isa, &[]);
            best = best.min(t.elapsed().as_secs_f64() * 1e6);
        }
        let mut best2 = f64::MAX;
        for _ in 0..2000 {
            let t = Instant::now();
            for (i, &r) in rows.iter().enumerate() {
                fusegrad::nn::bytes_to_f32(&px[r * 784 + c.start..r * 784 + c.end], &mut out[i * 784 + c.start..i * 784 + c.end], 1.0 / 255.0);
            }
            best2 = best2.min(t.elapsed().as_secs_f64() * 1e6);
        }
        println!("{name}: mapped {best:.2} µs, plain {best2:.2} µs (hot, 128 rows)");
    }
}
