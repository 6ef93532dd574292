//! Packing: copies a block of A or B, from any strides, into the panel order the
//! microkernel streams through, zero-padding the edge panels so the kernel never
//! branches on a short panel.
//!
//! A block `mc × kc` → panels of `MR` rows; panel q holds, for each p in `0..kc`,
//! the `MR` values `A[q·MR + r][p]` (one column of the panel, contiguous).
//! B block `kc × nc` → panels of `NR` columns; panel q holds, for each p, the `NR`
//! values `B[p][q·NR + c]` (one row of the panel, contiguous).
//!
//! Transposed operands need no separate code path: `Aᵀ` (as in `dW = Xᵀ·dZ`) has unit
//! row stride, so one packed A column is a contiguous run of X; `Bᵀ` (as in
//! `dX = dZ·Wᵀ`) has unit row stride, so one packed B column is a contiguous run of W.
//! Each case gets the loop order that reads memory contiguously.

use super::kernel::{transpose, transpose_block, Isa};
use crate::matrix::MatRef;

/// Packs `A[i0 .. i0+mc][p0 .. p0+kc]` into `dst` as `ceil(mc/mr)` panels of `mr` rows,
/// with the instructions of the `isa` path.
#[allow(clippy::too_many_arguments)]
pub fn pack_a(dst: &mut [f32], a: MatRef<'_>, i0: usize, mc: usize, p0: usize, kc: usize, mr: usize, isa: Isa) {
    if kc == 0 {
        return;
    }
    let (data, rs, cs) = (a.as_slice(), a.row_stride(), a.col_stride());
    let panels = mc.div_ceil(mr);
    let dst = &mut dst[..panels * mr * kc];
    for (q, panel) in dst.chunks_exact_mut(mr * kc).enumerate() {
        let rows = mr.min(mc - q * mr);
        let first_row = i0 + q * mr;
        if rows < mr {
            panel.fill(0.0);
        }
        if cs == 1 {
            // Row-major A (or Bᵀ, as in dX = dZ·Wᵀ): each row of the block is a
            // contiguous run, scattered into one lane of the panel.
            let vectors = Vectors { data, first: first_row, count: rows, stride: rs, p0, kc };
            scatter_vectors(panel, mr, vectors, isa);
        } else if rs == 1 {
            // Transposed A (or row-major B): one panel column is `rows` contiguous
            // elements.
            for p in 0..kc {
                let off = (p0 + p) * cs + first_row;
                panel[p * mr..p * mr + rows].copy_from_slice(&data[off..off + rows]);
            }
        } else {
            for r in 0..rows {
                for p in 0..kc {
                    panel[p * mr + r] = data[(first_row + r) * rs + (p0 + p) * cs];
                }
            }
        }
    }
}

/// Packs `B[p0 .. p0+kc][j0 .. j0+nc]` into `dst` as `ceil(nc/nr)` panels of `nr` columns,
/// with the instructions of the `isa` path: the panels of B are those of `Bᵀ` packed as
/// an A, since panel q holds `B[p][q·nr + c] = Bᵀ[q·nr + c][p]` at `p·nr + c` either way.
#[allow(clippy::too_many_arguments)]
pub fn pack_b(dst: &mut [f32], b: MatRef<'_>, p0: usize, kc: usize, j0: usize, nc: usize, nr: usize, isa: Isa) {
    pack_a(dst, b.t(), j0, nc, p0, kc, nr, isa)
}

/// `count` contiguous runs of `kc` floats: run `c` is `data[(first + c)·stride + p0 ..]`
/// (the rows of a row-major A block; for B, the columns of a `Bᵀ` block).
#[derive(Clone, Copy)]
struct Vectors<'a> {
    data: &'a [f32],
    first: usize,
    count: usize,
    stride: usize,
    p0: usize,
    kc: usize,
}

/// `panel[p·width + c] = run c at p`: the transposed copy both packings need, in
/// `bs × bs` blocks transposed in registers with the `isa` path's own instructions
/// where it has them (and `width` is a multiple of `bs`), the rest element by element.
fn scatter_vectors(panel: &mut [f32], width: usize, v: Vectors<'_>, isa: Isa) {
    let Vectors { data, first, count, stride, p0, kc } = v;
    let mut done = 0;
    if let Some(bs) = transpose_block(isa).filter(|&bs| width.is_multiple_of(bs)) {
        let blocks = kc / bs;
        let pb = blocks * bs;
        while done + bs <= count {
            if blocks > 0 {
                let src = &data[(first + done) * stride + p0..];
                transpose(isa, bs, src, stride, &mut panel[done..], width, blocks);
            }
            for c in done..done + bs {
                let off = (first + c) * stride + p0;
                for (p, &x) in data[off + pb..off + kc].iter().enumerate() {
                    panel[(pb + p) * width + c] = x;
                }
            }
            done += bs;
        }
    }
    for c in done..count {
        let off = (first + c) * stride + p0;
        for (p, &x) in data[off..off + kc].iter().enumerate() {
            panel[p * width + c] = x;
        }
    }
}

/// Adds the column sums of a packed B block (`kc` rows of `ceil(ncols/nr)` panels)
/// to `sums[0..ncols]`, summing rows in order: the bias gradient `db = Σ_k B[k][·]`
/// read from the packed copy, which is hot in cache, instead of from B.
pub fn add_packed_b_colsums(packed: &[f32], kc: usize, ncols: usize, nr: usize, sums: &mut [f32]) {
    if kc == 0 {
        return;
    }
    for (q, panel) in packed.chunks_exact(nr * kc).take(ncols.div_ceil(nr)).enumerate() {
        let cols = nr.min(ncols - q * nr);
        let out = &mut sums[q * nr..q * nr + cols];
        for row in panel.chunks_exact(nr) {
            for (s, &x) in out.iter_mut().zip(row) {
                *s += x;
            }
        }
    }
}

/// Adds `Σ_p B[p0 + p][j0 + c]` over `p < kc` to `sums[c]`, rows in order: the same
/// sums, in the same order, as [`add_packed_b_colsums`], for a B read in place.
pub fn add_b_colsums(b: MatRef<'_>, p0: usize, kc: usize, j0: usize, sums: &mut [f32]) {
    let (data, rs, cs) = (b.as_slice(), b.row_stride(), b.col_stride());
    let n = sums.len();
    for p in p0..p0 + kc {
        if cs == 1 {
            // Contiguous row segment: a vectorised add of whole rows.
            let row = &data[p * rs + j0..p * rs + j0 + n];
            for (s, &x) in sums.iter_mut().zip(row) {
                *s += x;
            }
        } else {
            for (c, s) in sums.iter_mut().enumerate() {
                *s += data[p * rs + (j0 + c) * cs];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn pack_a_layouts_agree_and_pad_with_zeros() {
        let a = Matrix::from_fn(7, 5, |i, j| (i * 10 + j) as f32 + 1.0);
        let at = a.view().to_matrix(); // same values, fresh row-major
        let mut p1 = vec![f32::NAN; 2 * 4 * 3];
        pack_a(&mut p1, a.view(), 1, 6, 2, 3, 4, Isa::Portable);
        // Same block read through a transposed view of the transpose.
        let tt = Matrix::from_fn(5, 7, |i, j| at[(j, i)]);
        let mut p2 = vec![f32::NAN; 2 * 4 * 3];
        pack_a(&mut p2, tt.t(), 1, 6, 2, 3, 4, Isa::Portable);
        assert_eq!(p1, p2);
        // Panel 0, column p=0 holds A[1..5][2].
        assert_eq!(&p1[0..4], &[13.0, 23.0, 33.0, 43.0]);
        // Panel 1 has 2 real rows (5, 6) and 2 zero rows.
        assert_eq!(&p1[12..16], &[53.0, 63.0, 0.0, 0.0]);
    }

    #[test]
    fn row_major_a_packs_like_transposed_a_at_every_edge() {
        // Heights and depths around the 8 × 8 and 16 × 16 blocks, panel heights 16.
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            for (mc, kc, mr) in [(16, 16, 16), (13, 9, 16), (40, 33, 16), (17, 8, 16), (7, 20, 16), (24, 17, 8)] {
                let (m, k) = (mc + 3, kc + 5);
                let a = Matrix::from_fn(m, k, |i, j| (i * 1000 + j) as f32);
                let at = Matrix::from_fn(k, m, |i, j| a[(j, i)]);
                let len = mc.div_ceil(mr) * mr * kc;
                let (mut p1, mut p2) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                pack_a(&mut p1, at.t(), 2, mc, 3, kc, mr, Isa::Portable);
                pack_a(&mut p2, a.view(), 2, mc, 3, kc, mr, isa);
                assert_eq!(p1, p2, "{isa:?}: mc {mc} kc {kc} mr {mr}");
            }
        }
    }

    #[test]
    fn transposed_b_packs_like_row_major_b_at_every_edge() {
        // Widths and depths around the 8 × 8 (AVX2) and 16 × 16 (AVX-512) blocks, panel
        // widths 8, 16 and 64, with every path's transpose.
        let shapes = [
            (16, 16, 16),
            (37, 50, 64),
            (15, 17, 16),
            (33, 64, 64),
            (64, 130, 64),
            (7, 9, 8),
            (17, 23, 8),
            (9, 40, 16),
        ];
        for isa in Isa::ALL.iter().copied().filter(|i| i.is_available()) {
            for (kc, nc, nr) in shapes {
                let (k, n) = (kc + 3, nc + 5);
                let b = Matrix::from_fn(k, n, |i, j| (i * 1000 + j) as f32);
                let bt = Matrix::from_fn(n, k, |i, j| b[(j, i)]);
                let len = nc.div_ceil(nr) * nr * kc;
                let (mut p1, mut p2) = (vec![f32::NAN; len], vec![f32::NAN; len]);
                pack_b(&mut p1, b.view(), 2, kc, 3, nc, nr, Isa::Portable);
                pack_b(&mut p2, bt.t(), 2, kc, 3, nc, nr, isa);
                assert_eq!(p1, p2, "{isa:?}: kc {kc} nc {nc} nr {nr}");
            }
        }
    }

    #[test]
    fn pack_b_layouts_agree_and_sum_columns() {
        let b = Matrix::from_fn(4, 11, |i, j| (i * 100 + j) as f32);
        let bt = Matrix::from_fn(11, 4, |i, j| b[(j, i)]);
        let mut p1 = vec![f32::NAN; 2 * 8 * 3];
        let mut p2 = p1.clone();
        pack_b(&mut p1, b.view(), 1, 3, 0, 11, 8, Isa::Portable);
        pack_b(&mut p2, bt.t(), 1, 3, 0, 11, 8, Isa::Portable);
        assert_eq!(p1, p2);
        assert_eq!(&p1[0..3], &[100.0, 101.0, 102.0]);
        let mut sums = vec![0.0; 11];
        add_packed_b_colsums(&p1, 3, 11, 8, &mut sums);
        for (j, s) in sums.iter().enumerate() {
            assert_eq!(*s, (100 + 200 + 300 + 3 * j) as f32);
        }
    }
}
