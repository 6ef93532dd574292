//! MNIST loading: every corrupt-file case is a clear error (on small files this test
//! writes itself), and one epoch on the real data reaches ≥ 95% test accuracy.
//!
//! The real data comes from `MNIST_DIR` (CI points it at `../shared/data/mnist`), else
//! `data/mnist`. Without it the real-data test is skipped with a message, except under
//! `CI=true`, where a missing data set is a failure.
#![cfg(feature = "mnist")]

use fusegrad::data::mnist::{self, IdxKind};
use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
use fusegrad::Error;
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fusegrad-mnist-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn idx_labels(count_in_header: u32, labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2049u32.to_be_bytes());
    b.extend_from_slice(&count_in_header.to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn idx_images(magic: u32, count: u32, rows: u32, cols: u32, pixels: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for w in [magic, count, rows, cols] {
        b.extend_from_slice(&w.to_be_bytes());
    }
    b.resize(16 + pixels, 7);
    b
}

fn expect_format_error(name: &str, bytes: Vec<u8>, kind: IdxKind, count: usize, says: &str) {
    let dir = temp_dir(name);
    let path = dir.join("file");
    std::fs::write(&path, bytes).unwrap();
    let err = mnist::validate_idx(&path, kind, count).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Format(_)), "{name}: {err:?}");
    assert!(msg.contains(says), "{name}: {msg:?} should say {says:?}");
    assert!(msg.contains(&path.display().to_string()) && msg.contains("fetch_mnist.py"), "{name}: {msg}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn corrupt_files_are_named_errors() {
    // A good small file passes.
    let dir = temp_dir("good");
    std::fs::write(dir.join("l"), idx_labels(5, &[0, 1, 2, 3, 9])).unwrap();
    mnist::validate_idx(&dir.join("l"), IdxKind::Labels, 5).unwrap();
    std::fs::remove_dir_all(dir).ok();

    expect_format_error(
        "truncated labels",
        idx_labels(5, &[1, 2, 3]),
        IdxKind::Labels,
        5,
        "truncated: 11 bytes, expected 13",
    );
    expect_format_error("short header", vec![0, 0, 8], IdxKind::Labels, 5, "shorter than the 8-byte header");
    expect_format_error("wrong magic", idx_images(2049, 2, 28, 28, 2 * 784), IdxKind::Images, 2, "magic number 2049");
    expect_format_error(
        "wrong count",
        idx_labels(4, &[1, 2, 3, 4]),
        IdxKind::Labels,
        5,
        "holds 4 items, MNIST's file has 5",
    );
    expect_format_error("label > 9", idx_labels(5, &[1, 2, 12, 3, 4]), IdxKind::Labels, 5, "label 12 at index 2");
    expect_format_error("wrong dims", idx_images(2051, 2, 32, 32, 2 * 784), IdxKind::Images, 2, "32×32");
    expect_format_error("too long", idx_images(2051, 1, 28, 28, 785), IdxKind::Images, 1, "too long");
    expect_format_error("truncated images", idx_images(2051, 2, 28, 28, 784 + 10), IdxKind::Images, 2, "truncated");

    // A missing directory: the first file is named, with how to fetch.
    let err = mnist::load("/nonexistent/mnist").unwrap_err();
    assert!(matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("train-labels-idx1-ubyte") && msg.contains("fetch_mnist.py"), "{msg}");
}

/// The real data directory, or `None` (with the reason printed) when absent outside CI.
fn real_data() -> Option<PathBuf> {
    let dir = mnist::resolve_dir(None);
    if dir.join("train-images-idx3-ubyte").is_file() {
        return Some(dir);
    }
    let msg = format!("MNIST not found in {} (set MNIST_DIR, or run scripts/fetch_mnist.py)", dir.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}: under CI=true the real-data tests must run");
    }
    eprintln!("skipping: {msg}");
    None
}

#[test]
fn one_epoch_on_real_mnist_reaches_95_percent() {
    let Some(dir) = real_data() else { return };
    let data = mnist::load(&dir).unwrap();
    assert_eq!((data.train_images.rows(), data.train_images.cols()), (60_000, 784));
    assert_eq!((data.test_images.rows(), data.test_labels.len()), (10_000, 10_000));
    assert!(data.train_images.as_slice().iter().all(|&p| (0.0..=1.0).contains(&p)));
    let mut counts = [0usize; 10];
    data.train_labels.iter().for_each(|&l| counts[l] += 1);
    assert!(counts.iter().all(|&c| (5_000..7_000).contains(&c)), "label counts {counts:?}");

    // Adam 1e-3 at batch 64: one epoch lands at 95.6–96.2% over seeds 1, 7, 42 (plain
    // SGD 0.1 at batch 128 reaches 93.6% after one epoch, 97%+ after ten: see the
    // README's MNIST run), so the 95% bar is a real check with a margin.
    let mut model = Sequential::builder(784)
        .seed(42)
        .dense(128)
        .relu()
        .dense(64)
        .relu()
        .dense(10)
        .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(1e-3))
        .unwrap();
    let opts = FitOptions::default().with_epochs(1).with_batch_size(64).with_seed(42);
    model.fit(data.train_images.view(), Targets::Classes(&data.train_labels), &opts).unwrap();
    let eval = model.evaluate(data.test_images.view(), Targets::Classes(&data.test_labels), 500).unwrap();
    eprintln!("one epoch: test accuracy {:.4}, loss {:.4}", eval.accuracy.unwrap(), eval.loss);
    assert!(eval.accuracy.unwrap() >= 0.95, "test accuracy after one epoch: {:?}", eval.accuracy);
}
