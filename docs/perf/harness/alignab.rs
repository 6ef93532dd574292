// temporary: GEMM speed vs the 64-byte alignment of A, B and C
use fusegrad::gemm::{gemm_with, Accum, Epilogue, GemmOptions};
use fusegrad::{MatMut, MatRef};
use std::time::Instant;
fn buf(len: usize, off: usize) -> (Vec<f32>, usize) {
    let v = vec![0.5f32; len + 64];
    let base = v.as_ptr().align_offset(64);
    (v, base + off)
}
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (m, k, n, tn) = (a[1].parse::<usize>().unwrap(), a[2].parse::<usize>().unwrap(), a[3].parse::<usize>().unwrap(), a[4] == "tn");
    let opts = GemmOptions::default().with_threads(1);
    for round in 0..3 {
        for (fa, fb, fc) in [(0usize, 0usize, 0usize), (4, 0, 0), (0, 4, 0), (0, 0, 4), (8, 0, 0), (0, 8, 0), (0, 0, 8), (4, 4, 4), (0, 4, 8)] {
            let off = fa * 100 + fb * 10 + fc;
            let (va, oa) = buf(m * k, fa);
            let (vb, ob) = buf(k * n, fb);
            let (mut vc, oc) = buf(m * n, fc);
            let av = if tn { MatRef::new(&va[oa..oa + m * k], k, m).unwrap().t() } else { MatRef::new(&va[oa..oa + m * k], m, k).unwrap() };
            let bv = MatRef::new(&vb[ob..ob + k * n], k, n).unwrap();
            let mut ts = 0.0;
            let reps = 300;
            for _ in 0..reps {
                let c = MatMut::new(&mut vc[oc..oc + m * n], m, n).unwrap();
                let t = Instant::now();
                gemm_with(c, av, bv, Accum::Overwrite, Epilogue::None, &opts).unwrap();
                ts += t.elapsed().as_secs_f64();
            }
            println!("round {round} offsets a,b,c {fa} {fb} {fc} floats (page offsets {} {} {})", va[oa..].as_ptr() as usize % 4096, vb[ob..].as_ptr() as usize % 4096, vc[oc..].as_ptr() as usize % 4096); let _ = off; println!("   : {:.1} us mean", ts / reps as f64 * 1e6);
        }
    }
}
