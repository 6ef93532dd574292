// Copy to examples/ to build; never commit it there.
// convsplit: 128 random MNIST rows → f32, split over 2 threads by rows or by column halves, each thread
// prefetching its part of the next batch; µs per batch (best and median of 400).
use std::sync::Barrier;
use std::time::Instant;
#[derive(Clone, Copy)]
struct P(*mut f32);
unsafe impl Send for P {}
unsafe impl Sync for P {}
fn main() {
    let img = std::fs::read("/work/shared/data/mnist/train-images-idx3-ubyte").unwrap();
    let px = &img[16..16 + 60000 * 784];
    let b = 128;
    let mut out = vec![0f32; b * 784];
    let op = P(out.as_mut_ptr());
    let mut s = 1u64;
    let batches: Vec<Vec<usize>> = (0..401).map(|_| (0..b).map(|_| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % 60000) as usize }).collect()).collect();
    let pf = |r: usize, c0: usize, c1: usize| {
        for l in (c0..c1).step_by(64) { unsafe { std::arch::x86_64::_mm_prefetch::<3>(px.as_ptr().add(r * 784 + l).cast()); } }
    };
    for mode in ["1 thread", "rows", "cols"] {
        let bar = Barrier::new(2);
        let times = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for t in 0..2 {
                let (bar, times, batches) = (&bar, &times, &batches);
                sc.spawn(move || {
                    let op = op;
                    for it in 0..400 {
                        bar.wait();
                        let t0 = Instant::now();
                        let rows = &batches[it];
                        let next = &batches[it + 1];
                        let (rr, cc) = match (mode, t) {
                            ("1 thread", 0) => (0..b, 0..784),
                            ("1 thread", _) => (0..0, 0..784),
                            ("rows", t) => (t * b / 2..(t + 1) * b / 2, 0..784),
                            (_, t) => (0..b, if t == 0 { 0..384 } else { 384..784 }),
                        };
                        for i in rr.clone() {
                            let r = rows[i];
                            let dst = unsafe { std::slice::from_raw_parts_mut(op.0.add(i * 784 + cc.start), cc.len()) };
                            fusegrad::nn::bytes_to_f32(&px[r * 784 + cc.start..r * 784 + cc.end], dst, 1.0 / 255.0);
                        }
                        for i in rr { pf(next[i], cc.start, cc.end); }
                        bar.wait();
                        if t == 0 { times.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1e6); }
                        // the step's other work: each thread reads its own part back (as the products would)
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                });
            }
        });
        let mut v = times.into_inner().unwrap();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{mode:9}: best {:.1} µs, median {:.1} µs per batch of {b}", v[0], v[v.len() / 2]);
    }
    std::hint::black_box(&out);
}
