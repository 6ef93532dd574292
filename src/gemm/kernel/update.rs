//! The optimizer-update epilogue: `W ← step(W, g)` while the gradient tile `g` of
//! `dW = Xᵀ·dZ` is still in registers, so that `dW` is never stored. One body for every
//! ISA, written with the lane operations of [`Lanes`]; the operations and their order
//! are those of the separate passes in `ops::update` (no fused multiply-add), so both
//! compute the same bits from the same gradient.
//!
//! Besides the parameters and the optimizer state, each tile records the largest
//! magnitude it stored into each of them, as bit patterns (see [`Lanes::max_abs_bits`]):
//! a non-finite value shows up there, and the model uses the maxima to prove the next
//! step free of overflow before it runs it.

use super::epilogue::{masks, Columns, Lanes};
use super::{Tile, TileEpilogue};

/// One optimizer step as the epilogue applies it, with the current learning rate and
/// the constants the separate pass would compute, computed the same way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Step {
    /// `p = p − lr·g`.
    Sgd { lr: f32 },
    /// `m = μ·m − lr·g; p = p + m`.
    Momentum { lr: f32, momentum: f32 },
    /// `c = c + g·g; p = p − lr·g / (√c + ε)`.
    Adagrad { lr: f32, epsilon: f32 },
    /// `c = ρ·c + (1 − ρ)·g·g; p = p − lr·g / (√c + ε)`.
    RmsProp { lr: f32, rho: f32, epsilon: f32 },
    /// `m = β₁m + (1 − β₁)g; v = β₂v + (1 − β₂)g·g; p = p − lr·(m·c₁) / (√(v·c₂) + ε)`.
    Adam { lr: f32, beta1: f32, beta2: f32, epsilon: f32, corr1: f32, corr2: f32 },
}

impl Step {
    /// How many state buffers the step reads and writes.
    pub(crate) fn state_buffers(&self) -> usize {
        match self {
            Step::Sgd { .. } => 0,
            Step::Momentum { .. } | Step::Adagrad { .. } | Step::RmsProp { .. } => 1,
            Step::Adam { .. } => 2,
        }
    }
}

/// The step and the L1/L2 penalty folded into the gradient first:
/// `g = g + (l1·sign(p) + (2·l2)·p)`, as `Dense` adds it to `dweights`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct UpdateRule {
    pub step: Step,
    /// `(l1, 2·l2)`, or `None` for no penalty term at all (not even zeros: adding
    /// `+0.0` would turn a `−0.0` gradient into `+0.0`).
    pub penalty: Option<(f32, f32)>,
    /// Leave the rows of W whose input is ±0 as they are instead of stepping them: in a
    /// batch of one ([`update_rank1`]) every such row; in a larger batch, the tiled
    /// update's row panels whose inputs are ±0 in the whole batch, where the tiles list
    /// their k steps (B promised finite) and k is one block. Exact only for plain SGD
    /// without a penalty, a finite learning rate with its sign bit clear and every `dz`
    /// finite: such a row's gradient is `fma(±0, dz, +0) = +0` in every lane, and
    /// `p − lr·(+0) = p` for every `p`, −0.0 included; set it only then (see
    /// [`UpdateRule::zero_rows_exact`]). The maxima then cover the stepped rows only.
    pub skip_zero_rows: bool,
}

impl UpdateRule {
    /// Whether [`UpdateRule::skip_zero_rows`] is exact for this rule and a gradient row
    /// `dz`: plain SGD, no penalty, `lr` finite with its sign bit clear, `dz` finite.
    pub(crate) fn zero_rows_exact(&self, dz: &[f32]) -> bool {
        self.zero_rows_exact_for_finite_dz() && crate::ops::reduce::all_finite(dz)
    }

    /// [`UpdateRule::zero_rows_exact`] for a `dz` the caller has proved finite.
    pub(crate) fn zero_rows_exact_for_finite_dz(&self) -> bool {
        matches!(self.step, Step::Sgd { lr } if lr.is_finite() && lr.is_sign_positive()) && self.penalty.is_none()
    }
}

/// Where a tile's update reads and writes: pointers to the tile's first element of the
/// parameters and of the state buffers (null when unused), all with row stride `rs`.
#[derive(Clone, Copy)]
pub(crate) struct TileUpdate {
    pub p: *mut f32,
    pub s0: *mut f32,
    pub s1: *mut f32,
    pub rs: usize,
    pub rule: *const UpdateRule,
    /// The task's running maxima (bit patterns) of `|p|`, `|s0|`, `|s1|` as stored.
    pub maxima: *mut [u32; 3],
}

/// Starts loading the `rows × cols` block at `p` (row stride `rs`) into L1: the
/// parameters and optimizer state a tile's update reads after its k loop. When they
/// stream from beyond L2 (weights wider than the cache), the epilogue would otherwise
/// wait on every line at the end of each tile. A no-op off x86_64.
pub(crate) fn prefetch_block(p: *const f32, rs: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    for r in 0..rows {
        let row = p.wrapping_add(r * rs);
        // Every 64-byte line the row's `cols` floats touch, wherever it starts.
        for q in (0..cols).step_by(16).chain(cols.checked_sub(1)) {
            // SAFETY: a prefetch never faults and reads no memory architecturally, so
            // any address may be given (computed with wrapping arithmetic); SSE is
            // part of the x86_64 baseline.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(row.wrapping_add(q).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, rs, rows, cols);
}

/// Applies the update to a tile whose accumulators hold the gradient (plus the partial
/// sums in C of earlier k blocks when `t.load_c`); C itself is not written.
///
/// # Safety
/// The tile contract of [`Kernel::tile`](super::Kernel::tile) for `t` (only its reads
/// of C are used); for `i < t.mr`, `j < t.nr`: `u.p + i·u.rs + j` readable and
/// writable, and so `u.s0`/`u.s1` when the step uses them, by this task alone; `u.rule`
/// and `u.maxima` valid; `masks` from `masks(t.nr)`; the CPU supports `L`'s ISA.
#[inline(always)]
pub(crate) unsafe fn update_tile<L: Lanes, const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[L::V; NV]; MR],
    t: &Tile,
    masks: &[L::Mask; NV],
    u: &TileUpdate,
) {
    // SAFETY: forwarded contract; `u.maxima` valid.
    unsafe {
        let maxima = update_tile_vectors::<L, MR, NV, WHOLE>(acc, t, masks, u);
        let out = &mut *u.maxima;
        for (o, m) in out.iter_mut().zip(maxima) {
            *o = (*o).max(L::reduce_max_bits(m));
        }
    }
}

/// [`update_tile`] without the last step: returns the lane-wise maxima of `|p|`,
/// `|s0|`, `|s1|` it stored (as [`Lanes::max_abs_bits`] bit patterns) instead of
/// folding them into `u.maxima`, which it does not touch.
///
/// # Safety
/// As [`update_tile`], except that `u.maxima` is not used.
#[inline(always)]
unsafe fn update_tile_vectors<L: Lanes, const MR: usize, const NV: usize, const WHOLE: bool>(
    acc: &[[L::V; NV]; MR],
    t: &Tile,
    masks: &[L::Mask; NV],
    u: &TileUpdate,
) -> [L::V; 3] {
    let rows = if WHOLE { MR } else { t.mr };
    let cols = Columns::<L, NV, WHOLE>::new(t.nr, masks);
    // SAFETY (whole function): as in `store_tile`: full vectors lie inside the valid
    // columns, partial ones go through masks of exactly the valid lanes, rows stop at
    // mr; the parameter and state tiles have the same valid region, vouched for by the
    // caller, and are owned by this task.
    unsafe {
        // A copy: the stores below go through raw pointers, so a rule behind one would
        // be read again (and its match taken) for every vector.
        let rule = *u.rule;
        let s = L::splat;
        let mut maxima = [L::zero(); 3];
        // The loops over the tile's vectors, with `$body` computing the new parameter
        // from `$g` (gradient, penalty added) and `$p` after storing any state. A macro,
        // not a closure: closures do not inherit the function's target features, so
        // their lane operations would not inline. One copy of the loops per step kind.
        macro_rules! sweep {
            (|$v:ident, $g:ident, $p:ident, $s0p:ident, $s1p:ident| $body:expr) => {
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (v, &x) in row.iter().enumerate() {
                        let c_at = t.c.wrapping_add(i * t.rsc + v * L::W);
                        let mut g = if t.load_c { L::add(x, cols.load(v, c_at)) } else { x };
                        let off = i * u.rs + v * L::W;
                        let pp = u.p.wrapping_add(off);
                        let p = cols.load(v, pp);
                        if let Some((l1, two_l2)) = rule.penalty {
                            g = L::add(g, L::add(L::mul(s(l1), L::sign(p)), L::mul(s(two_l2), p)));
                        }
                        let ($v, $g, $p, $s0p, $s1p) = (v, g, p, u.s0.wrapping_add(off), u.s1.wrapping_add(off));
                        let _ = ($v, $s0p, $s1p);
                        let p = $body;
                        cols.store(pp, v, p);
                        maxima[0] = L::max_abs_bits(maxima[0], cols.keep(v, p));
                    }
                }
            };
        }
        match rule.step {
            Step::Sgd { lr } => sweep!(|v, g, p, s0p, s1p| L::sub(p, L::mul(s(lr), g))),
            Step::Momentum { lr, momentum } => sweep!(|v, g, p, s0p, s1p| {
                let m = L::sub(L::mul(s(momentum), cols.load(v, s0p)), L::mul(s(lr), g));
                cols.store(s0p, v, m);
                maxima[1] = L::max_abs_bits(maxima[1], cols.keep(v, m));
                L::add(p, m)
            }),
            Step::Adagrad { lr, epsilon } => sweep!(|v, g, p, s0p, s1p| {
                let c = L::add(cols.load(v, s0p), L::mul(g, g));
                cols.store(s0p, v, c);
                maxima[1] = L::max_abs_bits(maxima[1], cols.keep(v, c));
                L::sub(p, L::div(L::mul(s(lr), g), L::add(L::sqrt(c), s(epsilon))))
            }),
            Step::RmsProp { lr, rho, epsilon } => sweep!(|v, g, p, s0p, s1p| {
                let c = L::add(L::mul(s(rho), cols.load(v, s0p)), L::mul(L::mul(s(1.0 - rho), g), g));
                cols.store(s0p, v, c);
                maxima[1] = L::max_abs_bits(maxima[1], cols.keep(v, c));
                L::sub(p, L::div(L::mul(s(lr), g), L::add(L::sqrt(c), s(epsilon))))
            }),
            Step::Adam { lr, beta1, beta2, epsilon, corr1, corr2 } => sweep!(|v, g, p, s0p, s1p| {
                let m = L::add(L::mul(s(beta1), cols.load(v, s0p)), L::mul(s(1.0 - beta1), g));
                let w = L::add(L::mul(s(beta2), cols.load(v, s1p)), L::mul(L::mul(s(1.0 - beta2), g), g));
                cols.store(s0p, v, m);
                cols.store(s1p, v, w);
                maxima[1] = L::max_abs_bits(maxima[1], cols.keep(v, m));
                maxima[2] = L::max_abs_bits(maxima[2], cols.keep(v, w));
                let step = L::div(L::mul(s(lr), L::mul(m, s(corr1))), L::add(L::sqrt(L::mul(w, s(corr2))), s(epsilon)));
                L::sub(p, step)
            }),
        }
        maxima
    }
}

/// Columns of W per [`update_rank1`] call of the tile update: 4 vectors.
const RANK1_NV: usize = 4;

/// The update of a `rows × n` block of W whose gradient is an outer product, `g[i][j] =
/// x[i·xs]·dz[j]`: the weight gradient of a batch of one (k = 1). Each row is formed in
/// registers as the k loop would form it (`fma(x_i, dz_j, 0)`, see [`Lanes::fma`]) and
/// stepped with [`update_tile`]'s body, four vectors at a time, so the result is
/// bit-identical to the tiled GEMM's; but without packing, tiles or per-tile set-up,
/// which at k = 1 cost more than the update's own memory traffic. The maxima fold into
/// `u.maxima` once, at the end. With [`UpdateRule::skip_zero_rows`], rows whose input
/// is ±0 are not touched (four-fifths of an MNIST image's pixels are 0).
///
/// With `x` null the gradient is `dz` itself, as loaded (one row, `rows` = 1): the bias
/// step, `b ← step(b, db)`, with the bits of the separate pass over `db`.
///
/// # Safety
/// `x` null and `rows` ≤ 1, or `x + i·xs` readable for `i < rows`; `dz .. dz + n`
/// readable; for `i < rows`, `j < n`:
/// `u.p + i·u.rs + j` readable and writable, and so `u.s0`/`u.s1` when the step uses
/// them, by this caller alone; `u.rule` and `u.maxima` valid; the CPU supports `L`'s ISA.
#[inline(always)]
pub(crate) unsafe fn update_rank1<L: Lanes>(
    x: *const f32,
    xs: usize,
    rows: usize,
    dz: *const f32,
    n: usize,
    u: &TileUpdate,
) {
    let chunk = RANK1_NV * L::W;
    // SAFETY (whole function): every chunk covers columns j0..j0 + nr with nr ≤ n − j0,
    // read from dz and handed to `update_tile_vectors` as a 1 × nr tile (whole when nr
    // is the chunk, else masked to nr), whose parameter and state pointers are row i,
    // column j0 of the block the caller vouched for; C is never read (load_c false).
    unsafe {
        let tail_masks = masks::<L, RANK1_NV>(n % chunk);
        let full_masks = masks::<L, RANK1_NV>(chunk);
        let mut maxima = [L::zero(); 3];
        // The rule copied once (a value the stores cannot alias) and matched once: in
        // each arm below the tile update's own match on the same value folds away,
        // instead of dispatching for every chunk.
        let rule = *u.rule;
        let u = &TileUpdate { rule: &rule, ..*u };
        // `$direct`: the gradient is `dz` as loaded (x null), not `x_i·dz`.
        macro_rules! rows {
            ($skip:expr, $direct:expr) => {
                for i in 0..rows {
                    let x_i = if $direct { 1.0 } else { *x.add(i * xs) };
                    if $skip && x_i == 0.0 {
                        continue;
                    }
                    let xi = L::splat(x_i);
                    for j0 in (0..n).step_by(chunk) {
                        let nr = chunk.min(n - j0);
                        let off = i * u.rs + j0;
                        let tu = TileUpdate {
                            p: u.p.wrapping_add(off),
                            s0: u.s0.wrapping_add(off),
                            s1: u.s1.wrapping_add(off),
                            ..*u
                        };
                        let t = Tile {
                            c: std::ptr::null_mut(),
                            rsc: 0,
                            mr: 1,
                            nr,
                            load_c: false,
                            epilogue: TileEpilogue::None,
                            max: std::ptr::null_mut(),
                        };
                        let d = dz.add(j0);
                        // Loops, not `array::from_fn`: a closure would not inherit the caller's
                        // target features.
                        let mut acc = [[L::zero(); RANK1_NV]; 1];
                        let m = if nr == chunk {
                            for (v, g) in acc[0].iter_mut().enumerate() {
                                let dv = L::load(d.add(v * L::W));
                                *g = if $direct { dv } else { L::fma(xi, dv, L::zero()) };
                            }
                            update_tile_vectors::<L, 1, RANK1_NV, true>(&acc, &t, &full_masks, &tu)
                        } else {
                            for (v, g) in acc[0].iter_mut().enumerate() {
                                let dv = L::load_masked(d.wrapping_add(v * L::W), tail_masks[v]);
                                *g = if $direct { dv } else { L::fma(xi, dv, L::zero()) };
                            }
                            update_tile_vectors::<L, 1, RANK1_NV, false>(&acc, &t, &tail_masks, &tu)
                        };
                        for (a, b) in maxima.iter_mut().zip(m) {
                            *a = L::max_abs_bits(*a, b);
                        }
                    }
                }
            };
        }
        match rule.step {
            _ if x.is_null() => rows!(false, true),
            Step::Sgd { .. } if rule.skip_zero_rows => rows!(true, false),
            Step::Sgd { .. } => rows!(false, false),
            Step::Momentum { .. } => rows!(false, false),
            Step::Adagrad { .. } => rows!(false, false),
            Step::RmsProp { .. } => rows!(false, false),
            Step::Adam { .. } => rows!(false, false),
        }
        let out = &mut *u.maxima;
        for (o, m) in out.iter_mut().zip(maxima) {
            *o = (*o).max(L::reduce_max_bits(m));
        }
    }
}
