//! Train NNFS's 784-128-64-10 network on MNIST, evaluate it and save its parameters.
//!
//! ```sh
//! python3 scripts/fetch_mnist.py data/mnist     # once (SHA256-verified)
//! cargo run --release --example mnist -- [data dir] [epochs]
//! ```
//!
//! `examples/mnist_timing.rs` is the timing run behind the README's table.

use fusegrad::data::mnist;
use fusegrad::nn::{FitOptions, Loss, Optimizer, ScaledBytes, Sequential, Targets};
use std::path::PathBuf;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref().is_some_and(|a| a == "--help" || a == "-h") {
        println!("usage: cargo run --release --example mnist -- [data dir, default $MNIST_DIR or data/mnist] [epochs, default 5]");
        return Ok(());
    }
    let dir = mnist::resolve_dir(first.map(PathBuf::from).as_deref());
    let epochs: usize = match args.next() {
        Some(e) => e.parse().ok().filter(|&n| n > 0).ok_or(format!("epochs must be a whole number ≥ 1, got {e:?}"))?,
        None => 5,
    };

    // Load (the files are validated first: a missing or corrupt file is a clear error).
    let data = mnist::load(&dir)?;

    // Build: Dense + ReLU pairs are fused into one GEMM each.
    let mut model = Sequential::builder(784)
        .seed(42)
        .dense(128)
        .relu()
        .dense(64)
        .relu()
        .dense(10)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))?;

    // Fit, with a line per epoch. Batches are gathered from the pixel bytes (a quarter
    // of the memory traffic of the f32 images, with exactly their values).
    let train = ScaledBytes::new(&data.train_pixels, 784, mnist::PIXEL_SCALE)?;
    let test = Targets::Classes(&data.test_labels);
    let options =
        FitOptions::default().with_epochs(epochs).with_batch_size(128).with_validation(data.test_images.view(), test);
    model.fit_with(train, Targets::Classes(&data.train_labels), &options, |r| {
        let test_acc = r.validation.and_then(|v| v.accuracy).unwrap_or(f32::NAN);
        println!("epoch {}: loss {:.4}, test accuracy {:.4} ({:.2} s)", r.epoch, r.loss, test_acc, r.train_seconds);
    })?;

    // Evaluate and save.
    let eval = model.evaluate(data.test_images.view(), test, 1000)?;
    println!("test loss {:.4}, accuracy {:.4}", eval.loss, eval.accuracy.unwrap_or(f32::NAN));
    let path = std::env::temp_dir().join("fusegrad-mnist.params");
    model.save_parameters(&path)?;
    println!("saved the parameters to {}", path.display());
    Ok(())
}
