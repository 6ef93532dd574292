// Copy to examples/ to build; never commit it there.
use std::time::Instant;
fn main() {
    let img = std::fs::read("/work/shared/data/mnist/train-images-idx3-ubyte").unwrap();
    let px = &img[16..16 + 60000 * 784];
    let mut out = vec![0f32; 128 * 784];
    let mut s = 1u64;
    let mut rnd = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 60000) as usize };
    for mode in ["hot", "cold", "cold+prefetch", "cold+T1", "cold+T2", "pf-only T0", "pf-only T1", "interleaved"] {
        let mut best = f64::MAX;
        let mut rows: Vec<usize> = (0..128).map(|_| rnd()).collect();
        let mut next: Vec<usize> = (0..128).map(|_| rnd()).collect();
        for _ in 0..200 {
            if mode != "hot" { rows = next.clone(); next = (0..128).map(|_| rnd()).collect(); }
            let t = Instant::now();
            if mode == "interleaved" { for (i, &r) in rows.iter().enumerate() {
                let q = next[i]; for l in (0..784).step_by(64) { unsafe { std::arch::x86_64::_mm_prefetch::<3>(px.as_ptr().add(q * 784 + l).cast()); } }
                fusegrad::nn::bytes_to_f32(&px[r * 784..(r + 1) * 784], &mut out[i * 784..(i + 1) * 784], 1.0 / 255.0);
            } } else if !mode.starts_with("pf-only") { for (i, &r) in rows.iter().enumerate() {
                fusegrad::nn::bytes_to_f32(&px[r * 784..(r + 1) * 784], &mut out[i * 784..(i + 1) * 784], 1.0 / 255.0);
            } }
            let hint = if mode.ends_with("T1") { 2 } else if mode.ends_with("T2") { 1 } else { 3 };
            if mode.starts_with("cold+") || mode.starts_with("pf-only") { for &r in &next { for l in (0..784).step_by(64) { unsafe { match hint { 3 => std::arch::x86_64::_mm_prefetch::<3>(px.as_ptr().add(r * 784 + l).cast()), 2 => std::arch::x86_64::_mm_prefetch::<2>(px.as_ptr().add(r * 784 + l).cast()), _ => std::arch::x86_64::_mm_prefetch::<1>(px.as_ptr().add(r * 784 + l).cast()) } } } } }
            let e = t.elapsed().as_secs_f64() * 1e6;
            if mode != "hot" && mode != "cold" { std::hint::black_box(&out); std::thread::sleep(std::time::Duration::from_micros(200)); }
            best = best.min(e);
        }
        println!("{mode}: best {best:.1} µs for 128 rows");
    }
}
