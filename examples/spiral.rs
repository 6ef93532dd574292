//! NNFS's spiral: a 2-64-3 ReLU network trained with Adam on 3 × 100 points.
//!
//! ```sh
//! cargo run --release --example spiral -- [--epochs 10000] [--seed 0]
//! ```

use fusegrad::data::spiral;
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use std::time::Instant;

fn main() -> Result<(), fusegrad::Error> {
    let mut epochs = 10_000;
    let mut seed = 0u64;
    let mut args = std::env::args().skip(1);
    const USAGE: &str =
        "usage: cargo run --release --example spiral -- [--epochs N ≥ 1, default 10000] [--seed S, default 0]";
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("NNFS's spiral: a 2-64-3 ReLU network trained with Adam on 3 × 100 points.\n{USAGE}");
            return Ok(());
        }
        let value = args.next();
        match (flag.as_str(), value.as_deref().map(str::parse::<u64>)) {
            ("--epochs", Some(Ok(v))) if v > 0 => epochs = v as usize,
            ("--seed", Some(Ok(v))) => seed = v,
            _ => {
                eprintln!("error: {flag} {}: not understood\n{USAGE}", value.unwrap_or_default());
                std::process::exit(2);
            }
        }
    }
    let (x, y) = spiral(100, 3, seed);
    let mut model = Sequential::builder(2)
        .seed(seed)
        .dense(64)
        .relu()
        .dense(3)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.05).with_decay(5e-7))?;
    let options = FitOptions::default().with_epochs(epochs).with_batch_size(300).with_shuffle(false).with_seed(seed);
    let start = Instant::now();
    model.fit_with(x.view(), Targets::Classes(&y), &options, |r| {
        if r.epoch == 1 || r.epoch % (epochs / 10).max(1) == 0 {
            println!(
                "epoch {:6}  loss {:.3}  acc {:.3}  lr {:.5}",
                r.epoch,
                r.loss,
                r.accuracy.unwrap_or(0.0),
                r.learning_rate
            );
        }
    })?;
    let eval = model.evaluate(x.view(), Targets::Classes(&y), 300)?;
    println!(
        "trained {epochs} epochs in {:.2} s; training accuracy {:.1}%, loss {:.3}",
        start.elapsed().as_secs_f64(),
        100.0 * eval.accuracy.unwrap_or(0.0),
        eval.loss
    );
    Ok(())
}
