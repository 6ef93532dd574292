//! The one epilogue every kernel stores its tile through: add C, then the bias, ReLU
//! or the ReLU mask with its column sums, then store the valid part of the tile. Each
//! ISA supplies only the few lane operations of [`Lanes`]; the order of operations is
//! this body's, so every path computes the same values from the same accumulators.

use super::update::{update_tile, TileUpdate};
use super::{Tile, TileEpilogue};

/// The vector operations of one ISA that the epilogue needs. Implementations are
/// `#[inline(always)]` so that, inlined into a kernel compiled with the ISA's target
/// features, they become single instructions.
pub(crate) trait Lanes {
    /// A vector of [`Lanes::W`] floats.
    type V: Copy;
    /// Which lanes of a partial vector are valid.
    type Mask: Copy;
    /// Floats per vector.
    const W: usize;
    /// Whether masked loads and stores cost as little as plain ones (AVX-512's mask
    /// registers): then a tile that is not `WHOLE` masks every vector instead of
    /// branching on which ones are full.
    const MASKING_IS_FREE: bool = false;

    /// The mask of the first `valid` lanes (`valid ≤ W`).
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn mask(valid: usize) -> Self::Mask;
    /// All lanes 0.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn zero() -> Self::V;
    /// Lane-wise `a + b`.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a·b + c` exactly as this ISA's kernels accumulate a k step: fused
    /// (one rounding) on AVX-512, AVX2 and NEON; a multiply, then an add, for the
    /// portable kernel's scalar lanes.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Lane-wise `if 0 > x { 0 } else { x }`: NaN and −0.0 pass through.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn relu(x: Self::V) -> Self::V;
    /// Lane-wise `if h > 0 { x } else { 0 }` (NaN in `h` counts as not positive).
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn keep_where_positive(h: Self::V, x: Self::V) -> Self::V;
    /// `W` floats from `p`.
    ///
    /// # Safety
    /// `p .. p + W` is readable; the CPU supports the ISA.
    unsafe fn load(p: *const f32) -> Self::V;
    /// The lanes of `mask` from `p`, the others 0; masked-off lanes are not read.
    ///
    /// # Safety
    /// The masked lanes of `p` are readable; the CPU supports the ISA.
    unsafe fn load_masked(p: *const f32, mask: Self::Mask) -> Self::V;
    /// `W` floats to `p`.
    ///
    /// # Safety
    /// `p .. p + W` is writable; the CPU supports the ISA.
    unsafe fn store(p: *mut f32, x: Self::V);
    /// The first `valid` lanes (the lanes of `mask`) to `p`; no other float is written.
    ///
    /// # Safety
    /// `p .. p + valid` is writable; the CPU supports the ISA.
    unsafe fn store_masked(p: *mut f32, x: Self::V, mask: Self::Mask, valid: usize);

    // The optimizer-update epilogue's operations (`update.rs`).

    /// All lanes `x`.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn splat(x: f32) -> Self::V;
    /// Lane-wise `a − b`.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a · b` (rounded; never fused with an add).
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `a / b`, correctly rounded.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn div(a: Self::V, b: Self::V) -> Self::V;
    /// Lane-wise `√x`, correctly rounded.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn sqrt(x: Self::V) -> Self::V;
    /// Lane-wise `if x < 0 { −1 } else { 1 }` (NNFS's sign: +1 at 0 and for NaN).
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn sign(x: Self::V) -> Self::V;
    /// Lane-wise, as unsigned integers, the larger of `acc`'s bits and `|x|`'s bits
    /// (`x` with the sign cleared). On magnitudes the integer order is the float
    /// order, with +∞ above every finite value and NaN above +∞, so a running maximum
    /// keeps a NaN once it has seen one (a float `max` would drop it).
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn max_abs_bits(acc: Self::V, x: Self::V) -> Self::V;
    /// `x` with the lanes outside `mask` set to 0.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    unsafe fn keep_valid(x: Self::V, mask: Self::Mask) -> Self::V;
    /// The largest lane of a [`Lanes::max_abs_bits`] accumulator, as bits.
    ///
    /// # Safety
    /// The CPU supports the ISA.
    #[inline(always)]
    unsafe fn reduce_max_bits(acc: Self::V) -> u32 {
        let mut buf = [0.0f32; 16];
        // SAFETY: W ≤ 16 floats written to the buffer.
        unsafe { Self::store(buf.as_mut_ptr(), acc) };
        buf[..Self::W].iter().map(|x| x.to_bits()).max().unwrap_or(0)
    }
    /// Runs the update epilogue ([`update_tile`]) in a function of its own compiled
    /// for the ISA, so that the plain epilogue's function stays small.
    ///
    /// # Safety
    /// The contract of [`update_tile`].
    unsafe fn update<const MR: usize, const NV: usize, const WHOLE: bool>(
        acc: &[[Self::V; NV]; MR],
        t: &Tile,
        masks: &[Self::Mask; NV],
        u: &TileUpdate,
    );
}

/// Stores a tile of `MR` rows × `NV` vectors of accumulators through the tile's
/// epilogue. `WHOLE` (an `MR × NV·W` tile) makes every loop bound and every
/// full-vector test a constant, so that the accumulators stay in registers; otherwise
/// rows past `t.mr` are skipped and the vectors past `t.nr` are masked.
///
/// # Safety
/// The tile contract of [`Kernel::tile`](super::Kernel::tile) for `t` (with
/// `t.mr == MR` and `t.nr == NV·W` when `WHOLE`); `masks` from [`masks`]`(t.nr)`; the
/// CPU supports `L`'s ISA.
#[inline(always)]
pub(crate) unsafe fn store_tile<L: Lanes, const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[L::V; NV]; MR],
    t: &Tile,
    masks: &[L::Mask; NV],
) {
    // Two copies, so that a tile that measures nothing carries no test for it.
    // SAFETY: forwarded contract.
    unsafe {
        if t.max.is_null() {
            store_tile_as::<L, MR, NV, WHOLE, false>(acc, t, masks)
        } else {
            store_tile_as::<L, MR, NV, WHOLE, true>(acc, t, masks)
        }
    }
}

/// [`store_tile`], measuring the stored magnitudes into `t.max` when `TRACK`.
///
/// # Safety
/// As [`store_tile`]; `t.max` valid when `TRACK`.
#[inline(always)]
unsafe fn store_tile_as<L: Lanes, const MR: usize, const NV: usize, const WHOLE: bool, const TRACK: bool>(
    acc: &[[L::V; NV]; MR],
    t: &Tile,
    masks: &[L::Mask; NV],
) {
    let rows = if WHOLE { MR } else { t.mr };
    let cols = Columns::<L, NV, WHOLE>::new(t.nr, masks);
    // SAFETY (whole store phase): full vectors lie inside the tile's valid columns;
    // partial ones are read and written through masks of exactly the valid lanes (none
    // for a vector wholly past nr, whose address is only formed, with wrapping_add);
    // rows are limited to mr. Every offset touched is one the caller vouched for.
    unsafe {
        let zero = L::zero();
        let at = |i: usize, v: usize| t.c.wrapping_add(i * t.rsc + v * L::W);
        let mut mx = zero;
        let mut seen = |v: usize, x: L::V| {
            if TRACK {
                mx = L::max_abs_bits(mx, cols.keep(v, x));
            }
        };
        let add_c = |i: usize, v: usize, x: L::V| if t.load_c { L::add(x, cols.load(v, at(i, v))) } else { x };
        match t.epilogue {
            TileEpilogue::Update(u) => L::update::<MR, NV, WHOLE>(acc, t, masks, &u),
            TileEpilogue::None => {
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let x = add_c(i, v, x);
                        seen(v, x);
                        cols.store(at(i, v), v, x);
                    }
                }
            }
            TileEpilogue::Bias(bias) | TileEpilogue::BiasRelu(bias) => {
                let relu = matches!(t.epilogue, TileEpilogue::BiasRelu(_));
                let bv: [L::V; NV] = std::array::from_fn(|v| cols.load(v, bias.wrapping_add(v * L::W)));
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let mut x = L::add(add_c(i, v, x), bv[v]);
                        if relu {
                            x = L::relu(x);
                        }
                        seen(v, x);
                        cols.store(at(i, v), v, x);
                    }
                }
            }
            TileEpilogue::ReluMask { h, rsh, colsum } => {
                let mut sums = [zero; NV];
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let hv = cols.load(v, h.wrapping_add(i * rsh + v * L::W));
                        let x = L::keep_where_positive(hv, add_c(i, v, x));
                        sums[v] = L::add(sums[v], x);
                        seen(v, x);
                        cols.store(at(i, v), v, x);
                    }
                }
                if !colsum.is_null() {
                    for (v, &s) in sums.iter().enumerate() {
                        cols.store(colsum.wrapping_add(v * L::W), v, s);
                    }
                }
            }
        }
        if TRACK {
            *t.max = (*t.max).max(L::reduce_max_bits(mx));
        }
    }
}

/// The valid columns of a tile row, vector by vector, as the store and update
/// epilogues read and write them: a whole vector with plain loads and stores, a
/// partial one (or any, where masking costs nothing) through the mask of its valid
/// lanes. `WHOLE`: every vector is whole.
pub(crate) struct Columns<'m, L: Lanes, const NV: usize, const WHOLE: bool> {
    nr: usize,
    masks: &'m [L::Mask; NV],
}

impl<'m, L: Lanes, const NV: usize, const WHOLE: bool> Columns<'m, L, NV, WHOLE> {
    /// `nr` valid columns, with `masks` from [`masks`]`(nr)`.
    #[inline(always)]
    pub(crate) fn new(nr: usize, masks: &'m [L::Mask; NV]) -> Self {
        Columns { nr, masks }
    }
    /// Valid lanes of vector `v`.
    #[inline(always)]
    fn valid(&self, v: usize) -> usize {
        if WHOLE {
            L::W
        } else {
            self.nr.saturating_sub(v * L::W).min(L::W)
        }
    }
    /// Whether vector `v` takes plain loads and stores.
    #[inline(always)]
    fn full(&self, v: usize) -> bool {
        WHOLE || (!L::MASKING_IS_FREE && self.nr >= (v + 1) * L::W)
    }
    /// Vector `v` of a row at `p` (lanes past the valid ones read as 0 or not at all).
    ///
    /// # Safety
    /// The valid lanes of vector `v` at `p` are readable; the CPU supports `L`'s ISA.
    #[inline(always)]
    pub(crate) unsafe fn load(&self, v: usize, p: *const f32) -> L::V {
        // SAFETY: forwarded; a partial vector reads only its masked lanes.
        unsafe {
            if self.full(v) {
                L::load(p)
            } else {
                L::load_masked(p, self.masks[v])
            }
        }
    }
    /// Stores the valid lanes of `x` as vector `v` of a row at `p`.
    ///
    /// # Safety
    /// The valid lanes of vector `v` at `p` are writable; the CPU supports `L`'s ISA.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, p: *mut f32, v: usize, x: L::V) {
        // SAFETY: forwarded; a partial vector writes only its masked lanes.
        unsafe {
            if self.full(v) {
                L::store(p, x)
            } else {
                L::store_masked(p, x, self.masks[v], self.valid(v))
            }
        }
    }
    /// `x` with the lanes past vector `v`'s valid ones cleared (for the maxima).
    ///
    /// # Safety
    /// The CPU supports `L`'s ISA.
    #[inline(always)]
    pub(crate) unsafe fn keep(&self, v: usize, x: L::V) -> L::V {
        // SAFETY: lane operations only.
        unsafe {
            if self.full(v) {
                x
            } else {
                L::keep_valid(x, self.masks[v])
            }
        }
    }
}

/// The masks of the `NV` vectors of a tile row with `nr` valid columns (the kernels
/// that mask their B loads share them with the epilogue).
///
/// # Safety
/// The CPU supports `L`'s ISA.
#[inline(always)]
pub(crate) unsafe fn masks<L: Lanes, const NV: usize>(nr: usize) -> [L::Mask; NV] {
    // SAFETY: forwarded ISA contract.
    std::array::from_fn(|v| unsafe { L::mask(nr.saturating_sub(v * L::W).min(L::W)) })
}

/// Scalar lanes (one float per "vector"): the portable kernel's epilogue, and the
/// edge tiles of kernels whose ISA has no masked loads and stores.
pub(crate) struct Scalar;

impl Lanes for Scalar {
    type V = f32;
    type Mask = bool;
    const W: usize = 1;

    #[inline(always)]
    unsafe fn mask(valid: usize) -> bool {
        valid > 0
    }
    #[inline(always)]
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn add(a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    unsafe fn fma(a: f32, b: f32, c: f32) -> f32 {
        // The portable kernel's `acc += a * b`: never `mul_add`.
        a * b + c
    }
    #[inline(always)]
    unsafe fn relu(x: f32) -> f32 {
        super::portable::relu(x)
    }
    #[inline(always)]
    unsafe fn keep_where_positive(h: f32, x: f32) -> f32 {
        if h > 0.0 {
            x
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller guarantees one readable float.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn load_masked(p: *const f32, mask: bool) -> f32 {
        if mask {
            // SAFETY: read only when the lane is valid, which the caller vouches for.
            unsafe { *p }
        } else {
            0.0
        }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, x: f32) {
        // SAFETY: the caller guarantees one writable float.
        unsafe { *p = x }
    }
    #[inline(always)]
    unsafe fn store_masked(p: *mut f32, x: f32, mask: bool, _valid: usize) {
        if mask {
            // SAFETY: written only when the lane is valid, which the caller vouches for.
            unsafe { *p = x }
        }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn sub(a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    unsafe fn mul(a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    unsafe fn div(a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    unsafe fn sqrt(x: f32) -> f32 {
        x.sqrt()
    }
    #[inline(always)]
    unsafe fn sign(x: f32) -> f32 {
        if x < 0.0 {
            -1.0
        } else {
            1.0
        }
    }
    #[inline(always)]
    unsafe fn max_abs_bits(acc: f32, x: f32) -> f32 {
        f32::from_bits(acc.to_bits().max(x.to_bits() & 0x7fff_ffff))
    }
    #[inline(always)]
    unsafe fn keep_valid(x: f32, mask: bool) -> f32 {
        if mask {
            x
        } else {
            0.0
        }
    }
    #[inline(never)]
    unsafe fn update<const MR: usize, const NV: usize, const WHOLE: bool>(
        acc: &[[f32; NV]; MR],
        t: &Tile,
        masks: &[bool; NV],
        u: &TileUpdate,
    ) {
        // SAFETY: forwarded contract; scalar lanes need no ISA.
        unsafe { update_tile::<Scalar, MR, NV, WHOLE>(acc, t, masks, u) }
    }
}
