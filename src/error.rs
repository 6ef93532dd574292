//! The crate's one error type.
//!
//! Everything that can fail on user input (a shape that does not fit, a view whose
//! strides leave its slice, a kernel the CPU cannot run) returns [`Error`], and the
//! message says what was expected and what came. Internal invariants, which no input
//! can break, are `assert!`s instead.

use std::fmt;
use std::sync::Arc;

/// What went wrong, with enough detail to fix the call.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Operands whose shapes do not fit together.
    ShapeMismatch {
        /// The operation that checked the shapes, e.g. `"gemm"`.
        op: &'static str,
        /// What the operation needed.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A matrix view that would read outside its slice, or (for a mutable view)
    /// whose strides make two elements share one memory location.
    InvalidView(String),
    /// A kernel was requested (through the API or `FUSEGRAD_KERNEL`) that this CPU
    /// cannot run, or the environment variable holds an unknown value.
    Kernel(String),
    /// A class label that is not below the number of classes.
    LabelOutOfRange {
        /// Row (sample) of the offending label.
        index: usize,
        /// The label found there.
        label: usize,
        /// Number of classes: labels must be in `0..classes`.
        classes: usize,
    },
    /// An input row holds NaN or infinity (found by `predict`, `evaluate`, `fit`).
    NonFiniteInput {
        /// The operation, e.g. `"Sequential::predict"`.
        op: &'static str,
        /// The first offending row of the inputs.
        row: usize,
    },
    /// NaN or infinity appeared during training (or in a prediction from finite
    /// inputs: the parameters overflow).
    NonFinite {
        /// Training step (0-based, counted over the whole `fit`) where it appeared.
        step: u64,
        /// Where: a layer such as `"layer 2 (Dense 128→64)"`, or `"loss"`.
        layer: String,
        /// Which tensor: `"loss"`, `"dweights"`, `"dbiases"`, `"output"`, ….
        tensor: String,
    },
    /// A hyperparameter or argument outside its valid range.
    InvalidArgument(String),
    /// A file could not be read or written.
    Io {
        /// What was being done, naming the path (and, for data files, how to get them).
        what: String,
        /// The operating system's error, also given by [`std::error::Error::source`].
        source: IoCause,
    },
    /// A file was read but its contents are not what they claim to be.
    Format(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { op, expected, got } => {
                write!(f, "{op}: shape mismatch: expected {expected}, got {got}")
            }
            Error::InvalidView(msg) => write!(f, "invalid matrix view: {msg}"),
            Error::Kernel(msg) => write!(f, "kernel selection: {msg}"),
            Error::LabelOutOfRange { index, label, classes } => {
                write!(f, "label {label} at row {index} is out of range: expected a class in 0..{classes}")
            }
            Error::NonFiniteInput { op, row } => {
                write!(f, "{op}: input row {row} contains NaN or infinity")
            }
            Error::NonFinite { step, layer, tensor } => {
                write!(f, "training stopped at step {step}: {tensor} of {layer} contains NaN or infinity")
            }
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::Io { what, source } => write!(f, "i/o error: {what}: {}", source.0),
            Error::Format(msg) => write!(f, "bad file format: {msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(&*source.0),
            _ => None,
        }
    }
}

impl Error {
    /// An [`Error::Io`] for `what`, caused by `source`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source: IoCause(Arc::new(source)) }
    }
}

/// The `std::io::Error` behind an [`Error::Io`], shared so that [`Error`] stays
/// `Clone`; two causes are equal when their kinds and messages are.
#[derive(Clone, Debug)]
pub struct IoCause(Arc<std::io::Error>);

impl IoCause {
    /// The error itself.
    pub fn get_ref(&self) -> &std::io::Error {
        &self.0
    }
    /// Its kind (`NotFound`, `PermissionDenied`, …).
    pub fn kind(&self) -> std::io::ErrorKind {
        self.0.kind()
    }
}

impl PartialEq for IoCause {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind() && self.0.to_string() == other.0.to_string()
    }
}

impl Eq for IoCause {}

/// `Result` with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
