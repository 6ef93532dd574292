//! The k steps a tile that skips zero inputs runs ([`Kernel::SKIPS_ZERO_STEPS`]): those
//! at which some of its rows of A is not ±0. The portable builder here is the naive
//! twin of the AVX2 one (`avx2::nonzero_steps`), and the builder of every other kernel.
//! [`mapped_steps`] reads the same lists from a map of A's zeros (`gemm::nonzero_map`),
//! the twin of the vector ones in `avx2.rs` and `avx512.rs`.
//!
//! [`Kernel::SKIPS_ZERO_STEPS`]: super::Kernel::SKIPS_ZERO_STEPS

use crate::gemm::blocking::KC_MAX;
use crate::gemm::nonzero_map::AMap;
use crate::matrix::MatRef;
use std::ops::Range;

/// The magnitude bits of an f32: ±0 are the floats with none set (NaN and denormals
/// have some, so they are listed and reach the tile).
pub(crate) const MAG: u32 = 0x7fff_ffff;

/// The `kc` floats from column `p0` of each row of a row-major `a` in `rows` (at most
/// 16: a tile's rows), for the vector builders, which OR them a vector at a time.
#[cfg(target_arch = "x86_64")]
pub(crate) fn row_runs<'a>(a: MatRef<'a>, rows: Range<usize>, p0: usize, kc: usize) -> [&'a [f32]; 16] {
    let (data, rs) = (a.as_slice(), a.row_stride());
    let mut runs: [&[f32]; 16] = [&[]; 16];
    for (run, i) in runs.iter_mut().zip(rows) {
        *run = &data[i * rs + p0..][..kc];
    }
    runs
}

/// The k steps `0..kc` of the block from column `p0` of `a` at which some row of `a` in
/// `rows` is not ±0, in order, into `steps`; returns how many.
pub(crate) fn nonzero_steps(
    a: MatRef<'_>,
    rows: Range<usize>,
    p0: usize,
    kc: usize,
    steps: &mut [u32; KC_MAX],
) -> usize {
    let mut count = 0;
    let mut note = |p: usize, nonzero: bool| {
        steps[count] = p as u32;
        count += nonzero as usize;
    };
    // OR the magnitude bits over the rows, then test the sum.
    let (rsa, csa) = (a.row_stride(), a.col_stride());
    let data = a.as_slice();
    if csa == 1 {
        // Row-major A: a mask of 32 steps at a time, then its set bits (a step at a
        // time cost 20 instructions each).
        for c in (0..kc).step_by(32) {
            let len = 32.min(kc - c);
            let mut or = [0u32; 32];
            for i in rows.clone() {
                let run = &data[i * rsa + p0 + c..][..len];
                for (o, &x) in or.iter_mut().zip(run) {
                    *o |= x.to_bits() & MAG;
                }
            }
            let mut bits = or.iter().enumerate().fold(0u32, |m, (i, &o)| m | (u32::from(o != 0) << i));
            while bits != 0 {
                note(c + bits.trailing_zeros() as usize, true);
                bits &= bits - 1;
            }
        }
    } else if rsa == 1 {
        // Aᵀ read in place (dW = Xᵀ·dZ): the tile's rows at one step are adjacent.
        for p in 0..kc {
            let run = &data[rows.start + (p0 + p) * csa..][..rows.len()];
            note(p, run.iter().fold(0, |o, &x| o | (x.to_bits() & MAG)) != 0);
        }
    } else {
        (0..kc).for_each(|p| note(p, rows.clone().any(|i| a.get(i, p0 + p) != 0.0)));
    }
    count
}

/// [`nonzero_steps`] read from the map of A's zeros instead of from A: rows `rows` of A,
/// steps `p0..p0 + kc`. `a.transposed`: A is the map's matrix transposed (A's rows are
/// the map's columns, its steps the map's rows), else the map's matrix itself.
pub(crate) fn mapped_steps(a: AMap<'_>, rows: Range<usize>, p0: usize, kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
    let map = a.map;
    let mut count = 0;
    if a.transposed {
        // Each step is a row of the map: test its bits of A's rows (map columns).
        for p in 0..kc {
            let nonzero = column_masks(rows.clone()).any(|(w, mask)| map.word(w, p0 + p) & mask != 0);
            steps[count] = p as u32;
            count += nonzero as usize;
        }
    } else {
        // Each step is a column of the map: OR A's rows (map rows), then take the set bits.
        for (w, mask) in column_masks(p0..p0 + kc) {
            let mut bits = rows.clone().fold(0, |o, r| o | map.word(w, r)) & mask;
            while bits != 0 {
                steps[count] = (w * 64 + bits.trailing_zeros() as usize - p0) as u32;
                count += 1;
                bits &= bits - 1;
            }
        }
    }
    count
}

/// For a tile of `Xᵀ` (A's rows `rows` are map columns, at most 64 of them, so in one
/// or two words): those words of map rows `p0..p0 + kc`, as two runs of `kc` words,
/// each with the mask of the tile's bits in it (the second run's mask 0 when one word
/// holds them all). The vector builders test a vector of steps per load against them.
#[cfg(target_arch = "x86_64")]
pub(crate) fn tile_word_runs<'m>(
    map: crate::gemm::nonzero_map::NonzeroMapRef<'m>,
    rows: Range<usize>,
    p0: usize,
    kc: usize,
) -> [(&'m [u64], u64); 2] {
    let mut words = column_masks(rows);
    let (w0, m0) = words.next().expect("a tile has rows");
    let (w1, m1) = words.next().unwrap_or((w0, 0));
    assert!(words.next().is_none(), "tile_word_runs: rows in more than two words");
    let run = |w: usize| &map.words[w * map.rows + p0..][..kc];
    [(run(w0), m0), (run(w1), m1)]
}

/// The words of the map's rows that hold columns `cols`, each with the mask of those
/// columns' bits in it.
pub(crate) fn column_masks(cols: Range<usize>) -> impl Iterator<Item = (usize, u64)> + Clone {
    let (start, end) = (cols.start, cols.end.max(cols.start));
    let words = if start == end { 0..0 } else { start / 64..end.div_ceil(64) };
    words.map(move |w| {
        let lo = start.max(w * 64) - w * 64;
        let hi = end.min(w * 64 + 64) - w * 64;
        (w, (u64::MAX >> (64 - (hi - lo))) << lo)
    })
}
