// temporary: fused update vs unfused weight gradients, first layer 784->128, batch 128, 1 thread
use fusegrad::nn::{Dense, Dinputs, Init, Optimizer};
use fusegrad::{Matrix, Rng};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (nin, nout, b): (usize, usize, usize) = (a[1].parse().unwrap(), a[2].parse().unwrap(), a[3].parse().unwrap());
    let mut rng = Rng::new(0);
    let mut d = Dense::new(nin, nout, Init::He, &mut rng);
    d.set_threads(Some(1));
    let x = Matrix::from_fn(b, nin, |i, j| if (i * 7 + j * 3) % 5 == 0 { ((i * 7 + j * 3) % 11) as f32 / 11.0 } else { 0.0 });
    let dz = Matrix::from_fn(b, nout, |i, j| ((i * 5 + j) % 13) as f32 / 1300.0 - 0.005);
    let sgd = Optimizer::sgd(1e-4);
    for round in 0..5 {
        let mut ts = [0.0f64; 3];
        for _ in 0..200 {
            let t = Instant::now();
            d.backward_update(x.view(), dz.view(), Dinputs::Skip, &sgd, 0).unwrap();
            ts[0] += t.elapsed().as_secs_f64() / 200.0;
            let t = Instant::now();
            d.backward_dz(x.view(), dz.view(), Dinputs::Skip).unwrap();
            ts[1] += t.elapsed().as_secs_f64() / 200.0;
            let t = Instant::now();
            d.forward(x.view()).unwrap();
            ts[2] += t.elapsed().as_secs_f64() / 200.0;
        }
        println!("round {round}: fused update {:.1} us, backward_dz {:.1} us, forward {:.1} us", ts[0] * 1e6, ts[1] * 1e6, ts[2] * 1e6);
    }
}
