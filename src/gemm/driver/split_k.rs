//! A product of a few rows split along k over threads, bit-identical to the tiled loops.
//!
//! In training, the layer's update splits W by rows over the threads, so each core
//! holds the rows of W it just wrote. A forward split by rows of C (or by its columns,
//! when the batch is too small for rows) makes every core read all of W, half of it
//! from the other core's cache, every step; two cores writing and reading each other's
//! halves of the rows run 8–10× slower than a split by rows (docs/perf/row-halves.c).
//! Split along k instead, each thread reads only its own rows of W, and the partial
//! products it writes instead are small beside W while the batch is (`Split::of`).
//!
//! It gives the same bits as one thread: the tiled loops already form each k block's
//! product from zero and add it to C after the block (`C ← P_kb + C`, the epilogue's
//! "add C"), so computing the blocks' products `P_kb` in parallel and adding them in
//! block order afterwards performs the same roundings in the same order.

use super::{aligned, run_tasks, with_buffers, workspace_floats, Job, Plan, SharedMut};
use crate::gemm::blocking::{k_block_start, Blocking};
use crate::gemm::kernel::portable::relu;
use crate::gemm::kernel::Kernel;
use crate::gemm::{Accum, Epilogue};
use crate::matrix::{MatMut, MatRef};
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};

/// The smallest C (in floats) whose sum is split over the threads too.
const PARALLEL_SUM_MIN: usize = 16 * 1024;

/// How a product is split: its `nkb` k blocks into `tk` groups of consecutive blocks,
/// and its `tiles_n` column tiles into `tn` groups; one task per pair.
pub(super) struct Split {
    blk: Blocking,
    nkb: usize,
    tk: usize,
    tn: usize,
    tiles_n: usize,
}

impl Split {
    /// The split along k of an `m × k × n` product over `tasks` (≥ 2) tasks, if it
    /// takes one: at least two k blocks, few enough rows that their partial products
    /// are small beside B (`m · blocks ≤ k / 2`: up to 196 rows at k = 784), and an
    /// epilogue that the sum can apply (none, the bias, the bias and ReLU).
    pub(super) fn of<K: Kernel>(
        m: usize,
        k: usize,
        n: usize,
        epilogue: &Epilogue<'_>,
        blk: Blocking,
        tasks: usize,
    ) -> Option<Split> {
        let nkb = blk.k_blocks(k);
        let sums = matches!(epilogue, Epilogue::None | Epilogue::Bias(_) | Epilogue::BiasRelu(_));
        // The parts (m × n per k block) at most half the size of B (k × n): beyond,
        // writing and reading them costs more than a split by rows.
        if !sums || nkb < 2 || m * nkb > k / 2 {
            return None;
        }
        let tk = tasks.min(nkb);
        let tiles_n = n.div_ceil(K::NR);
        Some(Split { blk, nkb, tk, tn: (tasks / tk).clamp(1, tiles_n), tiles_n })
    }

    /// Computes `C (+)= A·B` with the epilogue: each task forms the products of its k
    /// blocks over its columns into a scratch of `nkb × m × n` floats, then they are
    /// added up in block order and the epilogue applied (on the calling thread, or by
    /// rows over the same threads from 16 K floats). Returns the largest `|C|` stored,
    /// as bits, when the plan asks for it.
    pub(super) fn run<K: Kernel>(
        self,
        mut c: MatMut<'_>,
        a: MatRef<'_>,
        b: MatRef<'_>,
        accum: Accum,
        epilogue: Epilogue<'_>,
        plan: Plan<'_>,
    ) -> [u32; 3] {
        let (m, k, n) = (a.rows(), a.cols(), b.cols());
        let (bias, relu) = match epilogue {
            Epilogue::Bias(bias) => (Some(bias), false),
            Epilogue::BiasRelu(bias) => (Some(bias), true),
            _ => (None, false),
        };
        let len = m * n;
        // The calling thread lends its scratch (taken out, so a nested product finds
        // none and allocates its own).
        let mut parts_vec = with_buffers(|bufs| std::mem::take(&mut bufs.parts));
        let parts = SharedMut(aligned(&mut parts_vec, self.nkb * len).as_mut_ptr());
        let workspace = workspace_floats(plan.caches);
        let task = |t: usize| {
            let (g, gj) = (t / self.tn, t % self.tn);
            let cols = (gj * self.tiles_n / self.tn * K::NR)..((gj + 1) * self.tiles_n / self.tn * K::NR).min(n);
            for kb in g * self.nkb / self.tk..(g + 1) * self.nkb / self.tk {
                let p0 = k_block_start(k, self.nkb, kb);
                let kc = k_block_start(k, self.nkb, kb + 1) - p0;
                // One k block (kc ≤ the kernel's kc): a plain product into its part.
                let job = Job {
                    a: a.submatrix(0, p0, m, kc).expect("k block inside A"),
                    b: b.submatrix(p0, 0, kc, n).expect("k block inside B"),
                    c: parts.offset(kb * len),
                    rsc: n,
                    csc: 1,
                    m,
                    n,
                    k: kc,
                    accum: Accum::Overwrite,
                    bias: None,
                    relu: false,
                    h: None,
                    colsums: None,
                    bgrad: None,
                    bias_update: None,
                    blk: self.blk,
                    workspace,
                    update: None,
                    c_max: None,
                    skip_zero_a: plan.skip_zero_a && K::SKIPS_ZERO_STEPS,
                    a_map: plan.a_map.map(|am| (am, p0)),
                    tasks: self.tk * self.tn,
                    l2: plan.caches.l2,
                };
                with_buffers(|bufs| job.run_block::<K>(0..m, cols.clone(), bufs));
            }
        };
        let tasks = self.tk * self.tn;
        run_tasks(tasks, &task);
        // SAFETY: the tasks have joined; `parts` points to `nkb · m · n` floats of
        // `parts_vec`, each written by exactly one task (its k block, its columns).
        let parts_s = unsafe { std::slice::from_raw_parts(parts.0, self.nkb * len) };
        let out = Out { c: SharedMut(c.as_mut_slice().as_mut_ptr()), rsc: c.row_stride(), csc: c.col_stride(), n };
        let max = AtomicU32::new(0);
        // The sum by rows over the same threads, when it is worth a second barrier.
        let sum_tasks = if len >= PARALLEL_SUM_MIN { tasks.min(m) } else { 1 };
        let sum = |t: usize| {
            let rows = t * m / sum_tasks..(t + 1) * m / sum_tasks;
            // SAFETY: `out` is the m × n view C, bounds-checked when it was made; the
            // rows of each task are its own; the parts are nkb blocks of m × n.
            let mx = unsafe { out.sum_rows(rows, parts_s, self.nkb, accum, bias, relu, plan.track_max) };
            max.fetch_max(mx, Ordering::Relaxed);
        };
        run_tasks(sum_tasks, &sum);
        let max = max.into_inner();
        with_buffers(|bufs| bufs.parts = parts_vec);
        [max, 0, 0]
    }
}

/// The C view the sum writes, shared by the tasks that sum its rows.
#[derive(Clone, Copy)]
struct Out {
    c: SharedMut,
    rsc: usize,
    csc: usize,
    n: usize,
}

impl Out {
    /// Rows `rows` of `C ← epilogue((((C +) P_0) + P_1) + … + P_last)`, in the order
    /// and with the operations of the tile epilogue (`kernel::epilogue::store_tile`):
    /// the parts are `nkb` row-major `m × n` blocks. Returns the largest `|C|` stored,
    /// as bits, if `track` (else 0).
    ///
    /// # Safety
    /// `c` addresses an `m × n` view with strides `rsc`, `csc` (m = parts' rows), and no
    /// other thread touches its rows `rows` meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn sum_rows(
        self,
        rows: Range<usize>,
        parts: &[f32],
        nkb: usize,
        accum: Accum,
        bias: Option<&[f32]>,
        relu_too: bool,
        track: bool,
    ) -> u32 {
        let n = self.n;
        let len = parts.len() / nkb;
        let mut max = 0u32;
        for i in rows {
            let part = |kb: usize| &parts[kb * len + i * n..kb * len + (i + 1) * n];
            if self.csc == 1 || n == 1 {
                // SAFETY: row i of the view: n floats from i·rsc (the caller's contract).
                let out = unsafe { std::slice::from_raw_parts_mut(self.c.0.add(i * self.rsc), n) };
                // One simple loop per operation, so that each vectorizes.
                match accum {
                    Accum::Overwrite => out.copy_from_slice(part(0)),
                    Accum::Add => out.iter_mut().zip(part(0)).for_each(|(o, &p)| *o += p),
                }
                for kb in 1..nkb {
                    out.iter_mut().zip(part(kb)).for_each(|(o, &p)| *o += p);
                }
                if let Some(bias) = bias {
                    out.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
                }
                if relu_too {
                    out.iter_mut().for_each(|o| *o = relu(*o));
                }
                if track {
                    max = out.iter().fold(max, |mx, x| mx.max(x.to_bits() & 0x7fff_ffff));
                }
            } else {
                for j in 0..n {
                    // SAFETY: element (i, j) of the view (the caller's contract).
                    let at = unsafe { self.c.0.add(i * self.rsc + j * self.csc) };
                    let mut x = part(0)[j];
                    if accum == Accum::Add {
                        // SAFETY: as above.
                        x += unsafe { *at };
                    }
                    for kb in 1..nkb {
                        x += part(kb)[j];
                    }
                    x = bias.map_or(x, |b| x + b[j]);
                    x = if relu_too { relu(x) } else { x };
                    if track {
                        max = max.max(x.to_bits() & 0x7fff_ffff);
                    }
                    // SAFETY: as above.
                    unsafe { *at = x };
                }
            }
        }
        max
    }
}

#[cfg(test)]
mod tests {
    use crate::gemm::{gemm_with_max, Accum, Epilogue, GemmOptions};
    use crate::Matrix;

    #[test]
    fn the_split_measures_the_largest_output_as_one_thread_does() {
        // The guard reads the forward's largest |output| to catch an overflow inside
        // the product: split along k, it comes from the sum, and must be the largest
        // of the stored magnitudes (∞ when one overflowed, NaN above it).
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (m, k, n, huge) in
            [(8, 1100, 70, None), (3, 784, 128, Some(1)), (30, 1030, 20, Some(29)), (100, 1030, 200, Some(77))]
        {
            // Row `huge` of A is 3e38 at its first and last k, in different k blocks,
            // where B is 1: each block's product is finite, their sum overflows.
            let edge = |p: usize| p == 0 || p == k - 1;
            let a = Matrix::from_fn(m, k, |i, p| match huge {
                Some(hi) if i == hi && edge(p) => 3e38,
                _ => ((i * 7 + p * 3) as f32 * 0.618_034).sin(),
            });
            let b =
                Matrix::from_fn(k, n, |p, j| if edge(p) { 1.0 } else { ((p * 5 + j * 13) as f32 * 0.414_213_6).cos() });
            let bias: Vec<f32> = (0..n).map(|j| j as f32 / 10.0 - 1.0).collect();
            for relu in [false, true] {
                let mut got = Vec::new();
                for threads in [1, 2] {
                    let mut c = Matrix::zeros(m, n);
                    let epi = if relu { Epilogue::BiasRelu(&bias) } else { Epilogue::Bias(&bias) };
                    let opts = GemmOptions::default().with_threads(threads).with_min_work_per_thread(0);
                    let max = pool
                        .install(|| gemm_with_max(c.view_mut(), a.view(), b.view(), Accum::Overwrite, epi, None, &opts))
                        .unwrap();
                    let stored = c.as_slice().iter().map(|x| x.to_bits() & 0x7fff_ffff).max().unwrap();
                    assert_eq!(max, stored, "{m}×{k}×{n} relu {relu} on {threads} threads");
                    if huge.is_some() {
                        assert!(f32::from_bits(max).is_infinite() || f32::from_bits(max).is_nan());
                    }
                    got.push((max, c));
                }
                assert_eq!(got[0].0, got[1].0);
                assert!(got[0].1.as_slice().iter().zip(got[1].1.as_slice()).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }
}
