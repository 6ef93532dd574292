//! Single-precision GEMM, `C = op(A)·op(B)`, with fused epilogues.
//!
//! One entry point, [`gemm`] (and [`gemm_with`] to choose the kernel and threads):
//!
//! - `op(A)`, `op(B)` are whatever the views say: pass `x.view()` or `x.t()`. NN,
//!   TN (`dW = Xᵀ·dZ`) and NT (`dX = dZ·Wᵀ`) all run the same packed kernel; a
//!   transpose is only a different read order in packing.
//! - [`Accum::Overwrite`] never reads C (an uninitialised or NaN-filled C is fine);
//!   [`Accum::Add`] computes `C += op(A)·op(B)`.
//! - The [`Epilogue`] runs on each C tile while it is still in registers, after the
//!   last k block.
//!
//! Results are bit-identical for any thread count: threads split C into disjoint
//! tiles, each tile sums k in the same fixed order, and the bias-gradient column sums
//! are reduced in a fixed order after the parallel part. A product of few rows splits
//! its k blocks over the threads instead and adds their products in block order
//! afterwards, as one thread adds them.
//!
//! ```
//! use fusegrad::{gemm::{gemm, Accum, Epilogue}, Matrix};
//! // Dense + ReLU forward: out = max(X·W + b, 0)
//! let x = Matrix::from_fn(2, 3, |i, j| (i + j) as f32);
//! let w = Matrix::from_fn(3, 2, |i, j| if j == 0 { 1.0 } else { -1.0 } * i as f32);
//! let b = [0.5, 0.5];
//! let mut out = Matrix::zeros(2, 2);
//! gemm(out.view_mut(), x.view(), w.view(), Accum::Overwrite, Epilogue::BiasRelu(&b))?;
//! assert_eq!(out.as_slice(), &[5.5, 0.0, 8.5, 0.0]);
//! # Ok::<(), fusegrad::Error>(())
//! ```
//!
//! C cannot alias A, B or the epilogue's inputs: C is a `MatMut`, an exclusive
//! borrow, so the compiler rejects such a call before it can run.
//!
//! ```compile_fail
//! use fusegrad::{gemm::{gemm, Accum, Epilogue}, Matrix};
//! let mut m = Matrix::zeros(4, 4);
//! gemm(m.view_mut(), m.view(), m.view(), Accum::Overwrite, Epilogue::None).unwrap();
//! ```

mod blocking;
mod driver;
pub mod kernel;
mod naive;
pub(crate) mod nonzero_map;
mod pack;
mod peak;
#[cfg(test)]
mod update_tests;

pub(crate) use blocking::MIN_WORK_PER_THREAD;
pub use blocking::{Blocking, CacheSizes};
pub(crate) use driver::{ParamUpdate, WeightUpdate};
pub(crate) use kernel::update::{Step, UpdateRule};
pub use kernel::{default_isa, Isa};
pub use naive::{gemm_naive, gemm_naive_f64, matmul_naive};
pub use peak::{peak_gflops, peak_gflops_asm};

use crate::error::{Error, Result};
use crate::matrix::{MatMut, MatRef};
use nonzero_map::AMap;

/// Whether the product overwrites C or is added to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accum {
    /// `C = op(A)·op(B)`: C is never read, so its old contents do not matter.
    Overwrite,
    /// `C = C + op(A)·op(B)`.
    Add,
}

/// What happens to each tile of `C = op(A)·op(B)` (after [`Accum`]) before it is
/// stored. The names follow cuBLASLt's epilogues. Shapes: C is `m × n`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Epilogue<'a> {
    /// Store C as is.
    None,
    /// `C[i][j] += bias[j]` (cuBLASLt `BIAS`); `bias.len() == n`.
    Bias(&'a [f32]),
    /// `C[i][j] = max(C[i][j] + bias[j], 0)` (cuBLASLt `RELU_BIAS`): the forward pass of
    /// Dense + ReLU. NaN is passed through, not clipped.
    BiasRelu(&'a [f32]),
    /// `C[i][j] = h[i][j] > 0 ? C[i][j] : 0` (cuBLASLt `DRELU`): backward through a ReLU
    /// whose output `h` (`m × n`) was saved by the forward pass. No mask buffer is
    /// needed, because `h > 0` exactly where the pre-activation was positive.
    ReluMask(MatRef<'a>),
    /// [`Epilogue::ReluMask`], and also `dbiases[j] = Σ_i C[i][j]` of the masked C
    /// (cuBLASLt `DRELU_BGRAD`): the bias gradient of the layer below, computed in the
    /// same pass. `dbiases` is overwritten; `dbiases.len() == n`.
    ReluMaskBiasGrad {
        /// The saved ReLU output, `m × n`.
        h: MatRef<'a>,
        /// Receives the column sums of the masked C.
        dbiases: &'a mut [f32],
    },
    /// Also `dbiases[j] = Σ_p B[p][j]` over the k rows of `op(B)` (cuBLASLt `BGRADB`):
    /// in `dW = Xᵀ·dZ` that is `db = colsum(dZ)`, taken while B is packed.
    /// `dbiases` is overwritten; `dbiases.len() == n`.
    BiasGradB(&'a mut [f32]),
}

/// How a GEMM runs. `Default` gives the automatic choice for everything; the `with_*`
/// setters change one choice each. The struct is `#[non_exhaustive]`, so that a new
/// option is not a breaking change: build it from `default()`, not a struct literal.
///
/// ```
/// use fusegrad::gemm::{GemmOptions, Isa};
/// let opts = GemmOptions::default().with_isa(Isa::Portable).with_threads(1);
/// assert_eq!((opts.isa, opts.threads), (Some(Isa::Portable), Some(1)));
/// ```
///
/// A struct literal does not compile outside the crate, even with every field given:
///
/// ```compile_fail,E0639
/// let opts = fusegrad::gemm::GemmOptions { isa: None, threads: None, min_work_per_thread: None, caches: None };
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct GemmOptions {
    /// Kernel path; `None` uses [`default_isa`] (`FUSEGRAD_KERNEL`, else the best).
    pub isa: Option<Isa>,
    /// Largest number of parallel tasks; `None` uses the current rayon pool's size
    /// (which honours `RAYON_NUM_THREADS`), `Some(1)` runs on the calling thread.
    /// Tasks run in the caller's rayon pool: wrap the call in `ThreadPool::install`
    /// to bound the OS threads.
    pub threads: Option<usize>,
    /// Smallest amount of work (multiply-adds) worth a task of its own; `None` uses
    /// the built-in threshold. `Some(0)` splits every problem (used by tests).
    pub min_work_per_thread: Option<usize>,
    /// The caches the block sizes are derived from; `None` uses
    /// [`CacheSizes::detected`]. Tests set small ones to cross block boundaries on
    /// small shapes. Results are bit-identical for any thread count with the same
    /// caches; different caches may change the k split, and so the last bits.
    pub caches: Option<CacheSizes>,
    /// A promise that B holds no ∞ or NaN. A tile of C then skips the k steps where
    /// all its rows of A are ±0 and the rows of B they would read, where A is read in
    /// place (row-major, or transposed as in `Xᵀ·dZ`): on the AVX2 path every product
    /// whose tiles the list serves, two column tiles (32 columns) or more, or of one or
    /// two rows; on the AVX-512 path every product but a row-major A times a B of at
    /// most 16 columns (more than two rows). Each skipped step adds
    /// `±0·b = ±0`, which changes no sum (`0·∞` would be NaN, hence the promise). The
    /// result is the full product's, except that a sum that underflowed to −0 may come
    /// out +0. Default false.
    pub b_is_finite: bool,
    /// B is a layer's weights (or their transpose), which the fused update splits by
    /// rows over the threads: see `driver::Plan::b_is_weights`. Set by `Dense` only.
    pub(crate) b_is_weights: bool,
}

impl GemmOptions {
    /// Promises that B holds no ∞ or NaN ([`GemmOptions::b_is_finite`]).
    pub fn with_finite_b(mut self) -> Self {
        self.b_is_finite = true;
        self
    }
    /// Runs on kernel path `isa` (an error at the call if this CPU cannot).
    pub fn with_isa(mut self, isa: Isa) -> Self {
        self.isa = Some(isa);
        self
    }
    /// At most `threads` parallel tasks (`0` is an error at the call).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }
    /// Splits off a task only for at least `work` multiply-adds (`0` splits every problem).
    pub fn with_min_work_per_thread(mut self, work: usize) -> Self {
        self.min_work_per_thread = Some(work);
        self
    }
    /// The kernel path these options run on: [`GemmOptions::isa`] if this CPU has it,
    /// else [`default_isa`].
    pub(crate) fn resolved_isa(&self) -> Result<Isa> {
        match self.isa {
            Some(isa) => isa.check_available(),
            None => default_isa(),
        }
    }
    /// Derives the block sizes from `caches` instead of the detected ones.
    pub fn with_caches(mut self, caches: CacheSizes) -> Self {
        self.caches = Some(caches);
        self
    }
}

/// `C = op(A)·op(B)` (or `C += …`), then `epilogue`, with the automatic kernel and
/// thread choice. See the [module docs](self).
///
/// # Errors
/// [`Error::ShapeMismatch`] when `A` is not `m × k`, `B` not `k × n` for C `m × n`,
/// or a bias, activation or gradient buffer has the wrong size; [`Error::Kernel`]
/// when `FUSEGRAD_KERNEL` names an unknown or unsupported kernel.
pub fn gemm(c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, accum: Accum, epilogue: Epilogue<'_>) -> Result<()> {
    gemm_with(c, a, b, accum, epilogue, &GemmOptions::default())
}

/// Sizes the packing buffers of the calling thread and of every thread of the current
/// rayon pool (the global pool, outside one) to their largest, once: afterwards no GEMM
/// run by those threads allocates. Without it each thread allocates on its first GEMM
/// task, which for a worker that rarely wins a task can be many calls in.
/// [`Sequential`](crate::nn::Sequential) calls it on its first training step and at
/// the start of every `fit`.
pub fn reserve_workspace() {
    driver::reserve_workspace(rayon::current_num_threads());
}

/// [`reserve_workspace`] for GEMMs that will use `threads` threads (1: this thread only).
pub(crate) fn reserve_workspace_for(threads: usize) {
    driver::reserve_workspace(threads);
}

/// [`gemm`] with explicit [`GemmOptions`].
///
/// # Errors
/// As [`gemm`], and [`Error::Kernel`] when `options.isa` is a kernel this CPU cannot
/// run, or `options.threads` is `Some(0)`.
pub fn gemm_with(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accum: Accum,
    epilogue: Epilogue<'_>,
    options: &GemmOptions,
) -> Result<()> {
    check_args(&c, &a, &b, &epilogue)?;
    dispatch(c, a, b, accum, epilogue, None, false, None, options).map(|_| ())
}

/// [`gemm_with`], also returning the largest `|value|` stored into C, as bits (see
/// `ops::reduce::max_abs_bits`), measured in the epilogue. `a_map`: the map of A's
/// zeros, when the caller has it (used where the options let tiles skip them).
pub(crate) fn gemm_with_max(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accum: Accum,
    epilogue: Epilogue<'_>,
    a_map: Option<AMap<'_>>,
    options: &GemmOptions,
) -> Result<u32> {
    check_args(&c, &a, &b, &epilogue)?;
    dispatch(c, a, b, accum, epilogue, None, true, a_map, options).map(|m| m[0][0])
}

/// `dW = Xᵀ·dZ` with the optimizer step applied in the epilogue instead of storing
/// `dW`: `params ← step(params, dW)` (see `kernel/update.rs`), with the bias gradient
/// `dbiases = colsum(dZ)` taken in the same pass (when `dbiases` is not empty) and,
/// with `update.biases`, the bias step applied from it as soon as it is complete.
/// `scratch` (`m × n`, contiguous) receives the partial sums when k spans more than
/// one k block, and is otherwise not touched. Returns the largest magnitudes stored
/// into the weights and their two state buffers, and into the biases and theirs (zeros
/// without a bias step), as bits. `a_map` as in [`gemm_with_max`].
///
/// # Errors
/// As [`gemm_with`].
pub(crate) fn gemm_update(
    scratch: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    dbiases: &mut [f32],
    update: WeightUpdate<'_>,
    a_map: Option<AMap<'_>>,
    options: &GemmOptions,
) -> Result<[[u32; 3]; 2]> {
    let epilogue = if dbiases.is_empty() && b.cols() > 0 { Epilogue::None } else { Epilogue::BiasGradB(dbiases) };
    check_args(&scratch, &a, &b, &epilogue)?;
    dispatch(scratch, a, b, Accum::Overwrite, epilogue, Some(update), false, a_map, options)
}

/// Picks the kernel and runs the driver.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accum: Accum,
    epilogue: Epilogue<'_>,
    update: Option<WeightUpdate<'_>>,
    track_max: bool,
    a_map: Option<AMap<'_>>,
    options: &GemmOptions,
) -> Result<[[u32; 3]; 2]> {
    let isa = options.resolved_isa()?;
    let threads = match options.threads {
        Some(0) => return Err(Error::Kernel("threads must be at least 1, got 0".into())),
        Some(t) => t,
        None => rayon::current_num_threads(),
    };
    let plan = driver::Plan {
        threads,
        min_work_per_thread: options.min_work_per_thread.unwrap_or(blocking::MIN_WORK_PER_THREAD),
        caches: options.caches.unwrap_or_else(CacheSizes::detected),
        track_max,
        skip_zero_a: options.b_is_finite,
        a_map: a_map.filter(|_| options.b_is_finite),
        b_is_weights: options.b_is_weights,
    };
    // At most 10 columns and Aᵀ read in place (dW = Xᵀ·dZ of the 10-class layer): the
    // x86 paths have tiles with the vectors along m for it, where every lane works
    // (a 16-wide vector along n uses 10 of its 16). A row-major A would have to be
    // packed with transposes, which measured slower than the row tiles reading it in
    // place.
    #[cfg(target_arch = "x86_64")]
    let column_tile = b.cols() <= 10 && a.row_stride() == 1 && a.col_stride() != 1;
    // One or two rows of C (a batch of 1 or 2): tiles of two rows, so that no FMA goes
    // to rows that are not there.
    #[cfg(target_arch = "x86_64")]
    let few_rows = c.rows() <= 2;
    let (e, u) = (epilogue, update);
    Ok(match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if column_tile => driver::run::<kernel::avx512::Avx512Columns>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if few_rows => match b.cols() {
            0..=16 => driver::run::<kernel::avx512::Avx512Rows16>(c, a, b, accum, e, u, plan),
            17..=32 => driver::run::<kernel::avx512::Avx512Rows32>(c, a, b, accum, e, u, plan),
            33..=64 => driver::run::<kernel::avx512::Avx512Rows64>(c, a, b, accum, e, u, plan),
            _ => driver::run::<kernel::avx512::Avx512Rows128>(c, a, b, accum, e, u, plan),
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if b.cols() <= 16 => driver::run::<kernel::avx512::Avx512Narrow>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if b.cols() <= 32 => driver::run::<kernel::avx512::Avx512Mid32>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if b.cols() <= 48 => driver::run::<kernel::avx512::Avx512Mid48>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => driver::run::<kernel::avx512::Avx512Wide>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if column_tile => driver::run::<kernel::avx2::Avx2Narrow>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if c.rows() == 1 && b.cols() > 32 => {
            driver::run::<kernel::avx2::Avx2Row64>(c, a, b, accum, e, u, plan)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if few_rows => driver::run::<kernel::avx2::Avx2Rows>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => driver::run::<kernel::avx2::Avx2>(c, a, b, accum, e, u, plan),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => driver::run::<kernel::neon::Neon>(c, a, b, accum, e, u, plan),
        _ => driver::run::<kernel::portable::Portable>(c, a, b, accum, e, u, plan),
    })
}

/// Checks every shape a GEMM call depends on; shared by the fast path and the twin.
pub(crate) fn check_args(c: &MatMut<'_>, a: &MatRef<'_>, b: &MatRef<'_>, epilogue: &Epilogue<'_>) -> Result<()> {
    let (m, n) = (c.rows(), c.cols());
    if a.rows() != m || b.cols() != n || a.cols() != b.rows() {
        return Err(Error::ShapeMismatch {
            op: "gemm",
            expected: format!("C (m×n) = A (m×k) · B (k×n), i.e. A {m}×k and B k×{n} with equal k for C {m}×{n}"),
            got: format!("A {}×{}, B {}×{}, C {m}×{n}", a.rows(), a.cols(), b.rows(), b.cols()),
        });
    }
    let len_err = |what: &str, got: usize| Error::ShapeMismatch {
        op: "gemm",
        expected: format!("{what} of length n = {n} (one per column of C)"),
        got: format!("length {got}"),
    };
    match epilogue {
        Epilogue::None => {}
        Epilogue::Bias(bias) | Epilogue::BiasRelu(bias) if bias.len() != n => return Err(len_err("bias", bias.len())),
        Epilogue::Bias(_) | Epilogue::BiasRelu(_) => {}
        Epilogue::ReluMask(h) | Epilogue::ReluMaskBiasGrad { h, .. } if h.rows() != m || h.cols() != n => {
            return Err(Error::ShapeMismatch {
                op: "gemm",
                expected: format!("ReLU activation h of shape {m}×{n} (the shape of C)"),
                got: format!("{}×{}", h.rows(), h.cols()),
            })
        }
        Epilogue::ReluMask(_) => {}
        Epilogue::ReluMaskBiasGrad { dbiases, .. } | Epilogue::BiasGradB(dbiases) if dbiases.len() != n => {
            return Err(len_err("dbiases", dbiases.len()))
        }
        Epilogue::ReluMaskBiasGrad { .. } | Epilogue::BiasGradB(_) => {}
    }
    Ok(())
}
