//! Microkernels, one file per ISA, and the runtime choice between them.
//!
//! A microkernel computes one `MR × NR` tile of C from a packed A micro-panel
//! (`kc` steps of `MR` floats) and a packed B micro-panel (`kc` steps of `NR` floats),
//! keeps the tile in registers, and on the way out applies the tile's epilogue: add
//! the old C, add a bias row, ReLU, or mask by a saved activation while summing
//! columns. The driver (`driver.rs`) decides which of these a tile gets.
//!
//! Which ISA runs is decided once: [`GemmOptions::isa`](super::GemmOptions) if set,
//! else the `FUSEGRAD_KERNEL` environment variable (`avx512`, `avx2`, `neon`,
//! `portable`), else the best the CPU supports: AVX-512 on Zen 4/5 and Intel server
//! cores, AVX2 + FMA on every other x86_64 CPU since Haswell / Zen 1, NEON on every
//! aarch64 CPU (Apple M-series, Graviton, Ampere), portable elsewhere.

use super::blocking::{DIRECT_B_MAX_FLOATS, DIRECT_B_MAX_ROWS, DIRECT_B_WIDE_MAX_ROWS};
use crate::error::{Error, Result};
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
mod epilogue;
#[cfg(target_arch = "x86_64")]
mod k_loop;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub(crate) mod portable;
pub(crate) mod steps;
pub(crate) mod update;

/// An instruction-set path for the GEMM microkernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// AVX-512F: 6×64 tiles (4 zmm per row); 16×16, 12×32 and 8×48 tiles for outputs
    /// up to 16, 32 and 48 wide; 16×10 tiles with the vectors along m for `Xᵀ·dZ` with
    /// n ≤ 10; 2-row tiles (2×16 … 2×128) for products of one or two rows.
    Avx512,
    /// AVX2 + FMA: 6×16 tiles (2 ymm per row), 16×5 tiles with the vectors along m for
    /// `Xᵀ·dZ` with n ≤ 10.
    Avx2,
    /// aarch64 NEON: 12×8 tiles (2 q registers per row).
    Neon,
    /// Plain Rust, 4×8 tiles; runs everywhere.
    Portable,
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: &'static [Isa] = &[Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Portable];

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            // NEON is part of the aarch64 baseline.
            Isa::Neon => cfg!(target_arch = "aarch64"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest path this CPU supports.
    pub fn best() -> Isa {
        Isa::ALL.iter().copied().find(|isa| isa.is_available()).unwrap_or(Isa::Portable)
    }

    /// The name used by `FUSEGRAD_KERNEL` and the benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::Portable => "portable",
        }
    }

    /// Parses a name as `FUSEGRAD_KERNEL` accepts it (`avx512`, `avx2`, `neon`, `portable`).
    ///
    /// # Errors
    /// [`Error::Kernel`] for any other string.
    pub fn parse(name: &str) -> Result<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "avx2" | "fma" => Ok(Isa::Avx2),
            "neon" => Ok(Isa::Neon),
            "portable" | "scalar" => Ok(Isa::Portable),
            other => {
                Err(Error::Kernel(format!("unknown kernel {other:?}: expected one of avx512, avx2, neon, portable")))
            }
        }
    }

    /// Checks that the CPU can run this path.
    ///
    /// # Errors
    /// [`Error::Kernel`] naming the missing CPU features.
    pub fn check_available(self) -> Result<Isa> {
        if self.is_available() {
            Ok(self)
        } else {
            let needs = match self {
                Isa::Avx512 => "avx512f",
                Isa::Avx2 => "avx2 and fma",
                Isa::Neon => "an aarch64 CPU",
                Isa::Portable => "nothing",
            };
            Err(Error::Kernel(format!("the {} kernel needs {needs}, which this CPU does not have", self.name())))
        }
    }
}

/// The path used when [`GemmOptions::isa`](super::GemmOptions) is `None`:
/// `FUSEGRAD_KERNEL` if set, else [`Isa::best`]. Read once per process.
///
/// # Errors
/// [`Error::Kernel`] when `FUSEGRAD_KERNEL` names an unknown path or one this CPU
/// cannot run.
pub fn default_isa() -> Result<Isa> {
    static CHOICE: OnceLock<Result<Isa>> = OnceLock::new();
    CHOICE
        .get_or_init(|| match std::env::var("FUSEGRAD_KERNEL") {
            Ok(v) if !v.trim().is_empty() => Isa::parse(&v)
                .and_then(Isa::check_available)
                .map_err(|e| Error::Kernel(format!("FUSEGRAD_KERNEL={v:?}: {e}"))),
            _ => Ok(Isa::best()),
        })
        .clone()
}

/// The side of the square block the `isa` path transposes in registers when packing
/// `Bᵀ` (16 with AVX-512, 8 with AVX), or `None` when it has no such routine. Each
/// path packs with its own instructions, so a forced path is measured as it would
/// run on a CPU that has only it.
pub(crate) fn transpose_block(isa: Isa) -> Option<usize> {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.is_available() => Some(16),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.is_available() => Some(8),
        _ => None,
    }
}

/// Transposes a strip of `blocks` `bs × bs` blocks (`bs` from [`transpose_block`] for
/// the same `isa`) lying side by side in `bs` rows of `src` into `bs·blocks` rows of
/// `dst`: `dst[r * dst_stride + c] = src[c * src_stride + r]` for `r < bs·blocks`, `c < bs`.
///
/// # Panics
/// If `isa` has no transpose routine of side `bs`, or a slice is too short.
pub(crate) fn transpose(
    isa: Isa,
    bs: usize,
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    blocks: usize,
) {
    match (isa, bs) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512, 16) => avx512::transpose16(src, src_stride, dst, dst_stride, blocks),
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, 8) => avx2::transpose8(src, src_stride, dst, dst_stride, blocks),
        _ => {
            let _ = (src, src_stride, dst, dst_stride, blocks);
            panic!("no {bs}×{bs} transpose for the {} path", isa.name())
        }
    }
}

/// The `MR × NR` tile of every kernel of every target, so that the packing buffers
/// can be sized once for whichever kernel runs: AVX-512 wide, narrow and column, AVX2
/// wide and narrow, portable, NEON.
pub(crate) const KERNEL_TILES: [(usize, usize); 14] = [
    (6, 64),
    (1, 64),
    (16, 16),
    (16, 10),
    (12, 32),
    (8, 48),
    (2, 16),
    (2, 32),
    (2, 64),
    (2, 128),
    (6, 16),
    (16, 5),
    (4, 8),
    (12, 8),
];

/// [`update::update_rank1`] on the lanes of `isa`: the fused update of a batch of one.
///
/// # Safety
/// The contract of [`update::update_rank1`]; the CPU supports `isa`.
pub(crate) unsafe fn update_rank1(
    isa: Isa,
    x: *const f32,
    xs: usize,
    rows: usize,
    dz: *const f32,
    n: usize,
    u: &update::TileUpdate,
) {
    // SAFETY: forwarded contract.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::update_rank1(x, xs, rows, dz, n, u),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::update_rank1(x, xs, rows, dz, n, u),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::update_rank1(x, xs, rows, dz, n, u),
            _ => update::update_rank1::<epilogue::Scalar>(x, xs, rows, dz, n, u),
        }
    }
}

/// What a tile does after its last k block, while it is still in registers.
/// Pointers are already offset to the tile's first row and column.
#[derive(Clone, Copy)]
pub(crate) enum TileEpilogue {
    None,
    /// `c += bias[j]`.
    Bias(*const f32),
    /// `c = max(c + bias[j], 0)`.
    BiasRelu(*const f32),
    /// `c = if h[i][j] > 0 { c } else { 0 }`; when `colsum` is not null, also
    /// `colsum[j] = Σ_i c[i][j]` over the tile's valid rows (overwritten, not added).
    ReluMask {
        h: *const f32,
        rsh: usize,
        colsum: *mut f32,
    },
    /// The optimizer update of `update.rs`: C holds no result (it is read for the
    /// partial sums of earlier k blocks only); the parameters and state are written.
    Update(update::TileUpdate),
}

/// The A operand of one tile: element `(i, p)` (row i of the tile, step p of the k
/// block) is at `ptr + i * rs + p * cs`. A packed panel has `rs = 1, cs = MR`; a
/// row-major A read in place has `rs` = its row stride and `cs = 1`.
///
/// With `steps` not null (only for kernels with [`Kernel::SKIPS_ZERO_STEPS`]), the
/// tile runs only the k steps listed there, `kc` of them, in increasing order: the
/// others' A values are ±0 and B's rows finite, so they would add nothing.
#[derive(Clone, Copy)]
pub(crate) struct APanel {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
    pub steps: *const u32,
}

/// The B operand of one tile: element `(p, j)` is at `ptr + p * rs + j`. A packed
/// panel has `rs = NR`; a row-major B read in place has its own row stride.
#[derive(Clone, Copy)]
pub(crate) struct BPanel {
    pub ptr: *const f32,
    pub rs: usize,
    /// A packed panel, zero-padded to `NR` columns (all `NR` readable).
    pub padded: bool,
}

/// One output tile as the microkernel sees it: unit column stride, row stride `rsc`,
/// `mr × nr` valid elements (`1 ≤ mr ≤ MR`, `1 ≤ nr ≤ NR`).
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub c: *mut f32,
    pub rsc: usize,
    pub mr: usize,
    pub nr: usize,
    /// Add the current C (accumulate, or a k block after the first) instead of
    /// overwriting it. When false, C is never read.
    pub load_c: bool,
    pub epilogue: TileEpilogue,
    /// When not null: raised to the largest `|value|` stored into C, as bits (see
    /// `Lanes::max_abs_bits`); the model proves its fused steps finite from it.
    pub max: *mut u32,
}

/// A register-blocked microkernel.
pub(crate) trait Kernel {
    /// Rows of the C tile (A is packed in panels of `MR` rows).
    const MR: usize;
    /// Columns of the C tile (B is packed in panels of `NR` columns).
    const NR: usize;
    /// The path the kernel belongs to (packing uses the same instructions).
    const ISA: Isa;
    /// Whether the kernel takes A in place (row-major, or transposed with unit row
    /// stride) through [`APanel`]'s strides; when false, A is always packed.
    const READS_A_IN_PLACE: bool = true;

    /// Whether an A with these strides is read in place (only asked when
    /// [`Kernel::READS_A_IN_PLACE`]). The default: row-major A (strided broadcasts)
    /// and Aᵀ (unit row stride); any other layout is packed.
    fn a_in_place(rs: usize, cs: usize) -> bool {
        cs == 1 || rs == 1
    }
    /// Whether the kernel reads only the `nr` valid columns of each B row (with lane
    /// masks), so that a row-major B can be read in place instead of packed.
    const READS_B_IN_PLACE: bool;

    /// Whether a task with `rows` rows of C, one of `tasks` of its product, reads a
    /// row-major `k × n` B with row stride `rs` in place rather than packing it (only
    /// asked when [`Kernel::READS_B_IN_PLACE`]). A packed
    /// B block is reused by every MR-row panel, so packing pays when there are many;
    /// in place, each k step of a tile reads one strided B row segment. The default
    /// is the AVX-512 rule: in place when few row panels reuse B and its rows are at
    /// most 1 KiB apart (2 KiB for at most 128 rows on one task), when n fits one
    /// tile, or when all of B is small (see `DIRECT_B_MAX_ROWS`,
    /// `DIRECT_B_WIDE_MAX_ROWS`, `DIRECT_B_MAX_FLOATS`). Rows further apart fall into
    /// few cache sets and as many pages, and the B block stops fitting its cache:
    /// 128×2048×2048 ran at a third of the packed speed.
    fn b_in_place(rows: usize, k: usize, n: usize, rs: usize, tasks: usize) -> bool {
        (rows <= DIRECT_B_MAX_ROWS && rs <= 256)
            || (tasks == 1 && rows <= DIRECT_B_WIDE_MAX_ROWS && rs <= 512)
            || n <= Self::NR
            || k * n <= DIRECT_B_MAX_FLOATS
    }

    /// Computes `tile = [tile +] A_panel · B_panel`, then the tile's epilogue.
    ///
    /// # Safety
    /// - `a.ptr + i * a.rs + p * a.cs` is readable for `i < t.mr`, `p < kc` (the
    ///   kernel reads no row of A at or past `t.mr`);
    /// - `b.ptr + p * b.rs + j` is readable for `p < kc` and `j < NR` (a packed, padded
    ///   panel), or only `j < t.nr` when `READS_B_IN_PLACE`;
    /// - for `i < t.mr`, `j < t.nr`: `t.c + i * t.rsc + j` is valid for writes (and
    ///   reads, when `t.load_c`), and no other thread touches it during the call;
    /// - a bias pointer has `t.nr` readable floats; `h + i * rsh + j` is readable for
    ///   the same `(i, j)`; a non-null `colsum` has `t.nr` writable floats;
    /// - the CPU supports the kernel's ISA;
    /// - the kernel touches no element outside those ranges.
    unsafe fn tile(kc: usize, a: APanel, b: BPanel, t: &Tile);

    /// Whether [`Kernel::tile`] takes a list of k steps (`APanel::steps`): the tiles
    /// that skip the steps where all their rows of A are 0 (four-fifths of an MNIST
    /// image, over half of the pixels of six) and the rows of B they would read: every
    /// AVX2 and AVX-512 row tile.
    const SKIPS_ZERO_STEPS: bool = false;

    /// Whether a row panel of a tile that skips zero inputs lists its k steps, when its
    /// list serves `cols` columns of tiles and A is row-major (`a_transposed` false:
    /// the forward `X·W`) or Aᵀ read in place (true: `Xᵀ·dZ`). A listed step costs
    /// more than a dense one and the list a fraction of a tile's k loop to build, so
    /// the default, the AVX2 rule, lists for one- and two-row tiles and otherwise from
    /// two column tiles (docs/perf/zero-steps-2026-12-03.md).
    fn lists_steps(cols: usize, a_transposed: bool) -> bool {
        let _ = a_transposed;
        Self::MR <= 2 || cols >= 2 * Self::NR
    }

    /// The list of k steps for a tile of rows `rows` of `a` that skips zero inputs, by
    /// the builder of the kernel's ISA (`avx512::nonzero_steps`, `avx2::nonzero_steps`;
    /// [`steps::nonzero_steps`] for the others).
    #[inline]
    fn nonzero_steps(
        a: crate::matrix::MatRef<'_>,
        rows: std::ops::Range<usize>,
        p0: usize,
        kc: usize,
        steps: &mut [u32; super::blocking::KC_MAX],
    ) -> usize {
        match Self::ISA {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::nonzero_steps(a, rows, p0, kc, steps),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::nonzero_steps(a, rows, p0, kc, steps),
            _ => steps::nonzero_steps(a, rows, p0, kc, steps),
        }
    }

    /// The same list read from a map of A's zeros (`gemm::nonzero_map`) instead of
    /// from A, by the builder of the kernel's ISA.
    #[inline]
    fn mapped_steps(
        a: crate::gemm::nonzero_map::AMap<'_>,
        rows: std::ops::Range<usize>,
        p0: usize,
        kc: usize,
        steps: &mut [u32; super::blocking::KC_MAX],
    ) -> usize {
        match Self::ISA {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => avx512::mapped_steps(a, rows, p0, kc, steps),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::mapped_steps(a, rows, p0, kc, steps),
            _ => steps::mapped_steps(a, rows, p0, kc, steps),
        }
    }
}
