//! The real MNIST, from the four standard IDX files, through the `mnist` crate.
//!
//! The crate panics on a missing, short or malformed file, so every file is checked
//! here first (it exists, its size, magic number, count and image dimensions are what
//! MNIST's are, every label is 0–9) and a problem is an [`Error`] that names the file,
//! says what is wrong and how to fetch the data. Pixels are scaled to `[0, 1]`.

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use std::path::{Path, PathBuf};

/// The four files, as `(name, kind, count)`.
pub const FILES: [(&str, IdxKind, usize); 4] = [
    ("train-labels-idx1-ubyte", IdxKind::Labels, 60_000),
    ("train-images-idx3-ubyte", IdxKind::Images, 60_000),
    ("t10k-labels-idx1-ubyte", IdxKind::Labels, 10_000),
    ("t10k-images-idx3-ubyte", IdxKind::Images, 10_000),
];

/// Pixel bytes are scaled by this to land in `[0, 1]`.
pub const PIXEL_SCALE: f32 = 1.0 / 255.0;

/// How to get the files, as every error says.
pub const FETCH_HINT: &str =
    "fetch them with `python3 scripts/fetch_mnist.py DIR` from the fusegrad repository, or point MNIST_DIR at a directory that has them";

/// Which IDX file a path should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdxKind {
    /// idx1: magic 2049, a count, then one byte per label.
    Labels,
    /// idx3: magic 2051, a count, 28, 28, then 784 bytes per image.
    Images,
}

/// MNIST in memory: images as rows of 784 pixels in `[0, 1]`, labels as class indices.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Mnist {
    /// 60 000 × 784.
    pub train_images: Matrix,
    /// 60 000 labels in 0..10.
    pub train_labels: Vec<usize>,
    /// 10 000 × 784.
    pub test_images: Matrix,
    /// 10 000 labels in 0..10.
    pub test_labels: Vec<usize>,
    /// The training pixels as stored (60 000 × 784 bytes): train from these through
    /// [`ScaledBytes`](crate::nn::ScaledBytes) with scale 1/255 to gather a quarter of
    /// the bytes per batch; the values are exactly those of `train_images`.
    pub train_pixels: Vec<u8>,
}

/// The data directory: `flag` if given, else `$MNIST_DIR`, else `data/mnist` in the
/// working directory.
pub fn resolve_dir(flag: Option<&Path>) -> PathBuf {
    match (flag, std::env::var_os("MNIST_DIR")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(env)) if !env.is_empty() => PathBuf::from(env),
        _ => PathBuf::from("data/mnist"),
    }
}

/// Checks one IDX file: exists, magic number, count, dimensions, exact size, and (for
/// labels) that every label is 0–9.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, [`Error::Format`] for anything else;
/// both name the file and say how to fetch the data.
pub fn validate_idx(path: &Path, kind: IdxKind, expected_count: usize) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("{} ({FETCH_HINT})", path.display()), e))?;
    validate_idx_bytes(&bytes, kind, expected_count)
        .map_err(|e| Error::Format(format!("{}: {e}; {FETCH_HINT}", path.display())))
}

/// [`validate_idx`] on the bytes of a file already in memory. Reads only the header
/// and what it describes, allocates nothing, and never trusts a count or a dimension
/// before checking it against the length of `bytes`.
///
/// # Errors
/// [`Error::Format`] saying what is wrong (without a file name).
pub fn validate_idx_bytes(bytes: &[u8], kind: IdxKind, expected_count: usize) -> Result<()> {
    let fail = |what: String| Error::Format(what);
    let (magic, header, item) = match kind {
        IdxKind::Labels => (2049u32, 8usize, 1usize),
        IdxKind::Images => (2051u32, 16usize, 784usize),
    };
    if bytes.len() < header {
        return Err(fail(format!("truncated: {} bytes, shorter than the {header}-byte header", bytes.len())));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]);
    if word(0) != magic {
        return Err(fail(format!("magic number {} where an IDX {kind:?} file has {magic}", word(0))));
    }
    let count = word(1) as usize;
    if count != expected_count {
        return Err(fail(format!("holds {count} items, MNIST's file has {expected_count}")));
    }
    if kind == IdxKind::Images && (word(2), word(3)) != (28, 28) {
        return Err(fail(format!("images are {}×{}, MNIST's are 28×28", word(2), word(3))));
    }
    let expected = count.checked_mul(item).and_then(|b| b.checked_add(header));
    if expected != Some(bytes.len()) {
        let what = if expected.is_none_or(|e| bytes.len() < e) { "truncated" } else { "too long" };
        let want = expected.map_or("more than usize can count".to_string(), |e| e.to_string());
        return Err(fail(format!("{what}: {} bytes, expected {want} for {count} items", bytes.len())));
    }
    if kind == IdxKind::Labels {
        if let Some(i) = bytes[header..].iter().position(|&l| l > 9) {
            return Err(fail(format!("label {} at index {i} is not a digit 0–9", bytes[header + i])));
        }
    }
    Ok(())
}

/// Loads MNIST from `dir` (all four files checked first).
///
/// # Errors
/// [`Error::Io`] / [`Error::Format`] naming the first bad file, with how to fetch the
/// data; [`Error::InvalidArgument`] when `dir` is not valid UTF-8 (the `mnist` crate
/// takes a `&str`).
pub fn load(dir: impl AsRef<Path>) -> Result<Mnist> {
    let dir = dir.as_ref();
    for (name, kind, count) in FILES {
        validate_idx(&dir.join(name), kind, count)?;
    }
    let base = dir
        .to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("MNIST directory {} is not valid UTF-8", dir.display())))?;
    let raw = mnist::MnistBuilder::new()
        .base_path(base)
        .training_images_filename(FILES[1].0)
        .training_labels_filename(FILES[0].0)
        .test_images_filename(FILES[3].0)
        .test_labels_filename(FILES[2].0)
        .label_format_digit()
        .training_set_length(60_000)
        .validation_set_length(0)
        .test_set_length(10_000)
        .finalize();
    let images = |bytes: &[u8], n: usize| {
        let data = bytes.iter().map(|&b| b as f32 * PIXEL_SCALE).collect();
        Matrix::from_vec(n, 784, data)
    };
    Ok(Mnist {
        train_images: images(&raw.trn_img, 60_000)?,
        train_labels: raw.trn_lbl.iter().map(|&l| l as usize).collect(),
        test_images: images(&raw.tst_img, 10_000)?,
        test_labels: raw.tst_lbl.iter().map(|&l| l as usize).collect(),
        train_pixels: raw.trn_img,
    })
}
