//! The loops around the microkernel, and the split over threads.
//!
//! ```text
//! for each task (a block of C tiles, one per rayon job)         -- parallel
//!   LOOP 5  jc: n in steps of NC       (B block columns)
//!     LOOP 4  pc: k in equal blocks ≤ KC  -- sequential: every block adds to the same C
//!       pack B[pc, jc] → B~                 (+ bias gradient of B, from B~)
//!       LOOP 3  ic: m in steps of MC     (A block rows)
//!         pack A[ic, pc] → A~
//!         LOOP 2  ir: MR rows of A~      (A micro-panel stays in L1)
//!           LOOP 1  jr: NR columns of B~ (B~ streams from L2)
//!             microkernel: C tile (+)= A~ panel · B~ panel; epilogue after the last pc
//! ```
//!
//! Threads split C: tasks are rectangles of whole MR × NR tiles, so every tile is
//! computed exactly as it would be on one thread. A product of a few rows splits its
//! k blocks instead (`split_k`), summed afterwards in the order one thread adds them. The
//! ReLU-mask column sums are written per tile row into a scratch buffer and reduced
//! in tile order after the join, so they too are independent of the thread count.

use super::blocking::{
    k_block_start, transposed_a_stays_in_l2, Blocking, CacheSizes, DIRECT_B_MAX_FLOATS, KC_MAX, MAX_TILE,
};
use super::kernel::update::{TileUpdate, UpdateRule};
use super::kernel::{self, KERNEL_TILES};
use super::kernel::{APanel, BPanel, Kernel, Tile, TileEpilogue};
use super::nonzero_map::AMap;
use super::pack::{add_b_colsums, add_packed_b_colsums, pack_a, pack_b};
use super::{Accum, Epilogue};
use crate::matrix::{cache_line_offset, MatMut, MatRef, ALIGN_PAD};
use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// How many tasks a GEMM may use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan<'a> {
    pub threads: usize,
    pub min_work_per_thread: usize,
    /// The caches the block sizes are derived from.
    pub caches: CacheSizes,
    /// Measure the largest `|C|` stored (see `Tile::max`).
    pub track_max: bool,
    /// Skip the k steps where A is ±0 (B is finite), in kernels that can.
    pub skip_zero_a: bool,
    /// Where A's zeros are, when the caller has their map: the lists of k steps are
    /// then read from it instead of from A.
    pub a_map: Option<AMap<'a>>,
    /// B is a layer's weights (the forward's `W`, or `Wᵀ` in `dX = dZ·Wᵀ`), whose rows
    /// the fused update splits over the threads, each core updating (and so holding)
    /// its own. A batch's product then splits by columns (`split_by_columns`).
    pub b_is_weights: bool,
}

mod split_k;

/// A raw pointer that tasks share. Each task writes only elements no other task
/// writes (its own C tiles, its own tile rows of the scratch, its own bias-gradient
/// columns), which is what makes sending it across threads sound.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: see the type's doc: every use writes a region owned by exactly one task.
unsafe impl Send for SharedMut {}
// SAFETY: as above.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `off` floats further (a method, so that closures capture the
    /// whole `SharedMut` and not its raw pointer field).
    fn offset(self, off: usize) -> SharedMut {
        SharedMut(self.0.wrapping_add(off))
    }
}

/// Per-thread packing buffers, allocated on first use and kept: once warm, a GEMM
/// performs no heap allocation. Every task sizes them for the largest blocks of any
/// kernel (see [`workspace_floats`]), so that a warm thread stays allocation-free
/// whichever kernel a later call dispatches to.
#[derive(Default)]
struct Buffers {
    a: Vec<f32>,
    b: Vec<f32>,
    colsums: Vec<f32>,
    /// The k blocks' partial products of a product split along k (`split_k`).
    parts: Vec<f32>,
}

thread_local! {
    static BUFFERS: Cell<Buffers> = Cell::new(Buffers::default());
}

/// Lends this thread's buffers to `f`. Taking them out (rather than borrowing) keeps
/// a nested call on the same thread correct: it finds empty buffers and allocates.
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    let mut bufs = BUFFERS.with(Cell::take);
    let r = f(&mut bufs);
    BUFFERS.with(|cell| cell.set(bufs));
    r
}

/// Sizes the packing buffers of the calling thread and, when its GEMMs may use more
/// than one thread, of every thread of the pool they run in (the current rayon pool,
/// else the global one) to their largest, so no later GEMM run by them allocates: a
/// worker that happened not to take a task during warm-up would otherwise allocate on
/// its first one.
pub(crate) fn reserve_workspace(threads: usize) {
    let (a_len, b_len) = workspace_floats(CacheSizes::detected());
    let reserve = || {
        with_buffers(|bufs| {
            aligned(&mut bufs.a, a_len);
            aligned(&mut bufs.b, b_len);
        })
    };
    if rayon::current_thread_index().is_none() || threads == 1 {
        reserve();
    }
    if threads > 1 {
        rayon::broadcast(|_| reserve());
    }
}

/// The largest packed A block (`mc × kc`) and packed B block (`nc × kc`), in floats,
/// over every kernel, for these caches.
fn workspace_floats(caches: CacheSizes) -> (usize, usize) {
    // Memoised for the detected caches: its integer divisions are a visible part of
    // a small GEMM's time.
    static FOR_DETECTED: OnceLock<(usize, usize)> = OnceLock::new();
    if caches == CacheSizes::detected() {
        *FOR_DETECTED.get_or_init(|| workspace_floats_for(caches))
    } else {
        workspace_floats_for(caches)
    }
}

fn workspace_floats_for(caches: CacheSizes) -> (usize, usize) {
    KERNEL_TILES.iter().fold((0, 0), |(a, b), &(mr, nr)| {
        let blk = Blocking::for_kernel(mr, nr, caches);
        (a.max(blk.mc * blk.kc), b.max(blk.nc * blk.kc))
    })
}

/// Takes only the column-sum scratch out of this thread's buffers (leaving the
/// packing buffers in place for the tasks this thread will run).
fn take_colsum_scratch() -> Vec<f32> {
    with_buffers(|bufs| std::mem::take(&mut bufs.colsums))
}

/// A 64-byte-aligned window of `len` floats inside `v`, growing `v` if needed.
fn aligned(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len + ALIGN_PAD {
        // A scratch buffer: the old contents are not kept, and a zeroed allocation is
        // one call (under miri, a resize's element-by-element fill took 17 s).
        *v = vec![0.0; len + ALIGN_PAD];
    }
    let off = cache_line_offset(v);
    &mut v[off..off + len]
}

/// Everything a task needs; shared by reference between tasks.
struct Job<'a> {
    a: MatRef<'a>,
    b: MatRef<'a>,
    c: SharedMut,
    rsc: usize,
    csc: usize,
    m: usize,
    n: usize,
    k: usize,
    accum: Accum,
    bias: Option<&'a [f32]>,
    relu: bool,
    h: Option<MatRef<'a>>,
    /// Scratch of `ceil(m/MR) × n` tile-row column sums, for `ReluMaskBiasGrad`.
    colsums: Option<SharedMut>,
    /// Output of `BiasGradB`, `n` floats.
    bgrad: Option<SharedMut>,
    /// This kernel's block sizes.
    blk: Blocking,
    /// Sizes of the packing buffers every task reserves.
    workspace: (usize, usize),
    /// The optimizer update applied instead of storing C, if any.
    update: Option<UpdateJob<'a>>,
    /// The bias step from `bgrad`, if any (`n` biases, column `j` by the task owning it).
    bias_update: Option<UpdateJob<'a>>,
    /// The largest `|C|` stored, as bits, when asked for (see `Tile::max`).
    c_max: Option<AtomicU32>,
    /// Skip the k steps where A is ±0 (`Plan::skip_zero_a`), where the kernel can.
    skip_zero_a: bool,
    /// The map of A's zeros (`Plan::a_map`), and the step of the map where this job's
    /// A starts (a k block's job of a split along k starts at the block).
    a_map: Option<(AMap<'a>, usize)>,
    /// How many tasks share the product (`Kernel::b_in_place` asks).
    tasks: usize,
    /// L2 bytes per core (`blocking::transposed_a_stays_in_l2` asks).
    l2: usize,
}

/// One buffer of parameters an update steps, the state buffers its rule uses (same
/// length, empty when unused) and the rule.
pub(crate) struct ParamUpdate<'a> {
    pub rule: &'a UpdateRule,
    pub params: &'a mut [f32],
    pub s0: &'a mut [f32],
    pub s1: &'a mut [f32],
}

/// What an update epilogue steps: the weights (`m × n`, row-major, contiguous), and
/// optionally the `n` biases, each stepped by the task that owns its column as soon as
/// its gradient `colsum(B)` is complete (`None`: left to the caller; needs
/// `Epilogue::BiasGradB`).
pub(crate) struct WeightUpdate<'a> {
    pub weights: ParamUpdate<'a>,
    pub biases: Option<ParamUpdate<'a>>,
}

/// A [`ParamUpdate`] as the tasks share it, with the maxima they combine.
struct UpdateJob<'a> {
    rule: &'a UpdateRule,
    params: SharedMut,
    s0: SharedMut,
    s1: SharedMut,
    /// Largest `|p|`, `|s0|`, `|s1|` stored by any task, as bits (max is exact and
    /// order-free, so the result does not depend on the split).
    maxima: [AtomicU32; 3],
    /// Prefetch each tile's parameters and state when its k loop starts: set when they
    /// are larger than L2, so that they come from L3 or DRAM every step.
    prefetch: bool,
}

impl<'a> UpdateJob<'a> {
    /// The job of a buffer of `len` parameters, its state checked against the rule's.
    fn new(u: ParamUpdate<'a>, len: usize) -> Self {
        let ParamUpdate { rule, params, s0, s1 } = u;
        assert!(params.len() == len, "parameters of {} floats, {len} expected", params.len());
        let buffers = rule.step.state_buffers();
        for (i, s) in [&s0, &s1].into_iter().enumerate() {
            assert_eq!(s.len(), if i < buffers { len } else { 0 }, "optimizer state buffer {i}");
        }
        UpdateJob {
            rule,
            params: SharedMut(params.as_mut_ptr()),
            s0: SharedMut(s0.as_mut_ptr()),
            s1: SharedMut(s1.as_mut_ptr()),
            maxima: Default::default(),
            prefetch: false,
        }
    }

    /// The job, prefetching each tile's parameters and state when the parameters and
    /// state together are larger than an L2 of `l2` bytes.
    fn prefetching_beyond(mut self, l2: usize, len: usize) -> Self {
        let bytes = len * std::mem::size_of::<f32>() * (1 + self.rule.step.state_buffers());
        self.prefetch = bytes > l2;
        self
    }

    /// Starts loading the parameters and state of the `mr × nr` tile at row `i`,
    /// column `j` of the `· × n` buffers, if this job prefetches.
    fn prefetch_tile(&self, i: usize, j: usize, n: usize, mr: usize, nr: usize) {
        if !self.prefetch {
            return;
        }
        let buffers = [self.params.0, self.s0.0, self.s1.0];
        for base in buffers.into_iter().take(1 + self.rule.step.state_buffers()) {
            kernel::update::prefetch_block(base.wrapping_add(i * n + j), n, mr, nr);
        }
    }

    /// Raises the job's maxima to a task's.
    fn merge(&self, maxima: [u32; 3]) {
        for (shared, mine) in self.maxima.iter().zip(maxima) {
            shared.fetch_max(mine, Ordering::Relaxed);
        }
    }

    /// Where the update of the tile or block at row `i`, column `j` of the `· × n`
    /// parameters reads and writes, raising `maxima`.
    fn at(&self, i: usize, j: usize, n: usize, maxima: *mut [u32; 3]) -> TileUpdate {
        let off = i * n + j;
        TileUpdate {
            p: self.params.0.wrapping_add(off),
            s0: self.s0.0.wrapping_add(off),
            s1: self.s1.0.wrapping_add(off),
            rs: n,
            rule: self.rule,
            maxima,
        }
    }
}

pub(crate) fn run<K: Kernel>(
    mut c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accum: Accum,
    epilogue: Epilogue<'_>,
    update: Option<WeightUpdate<'_>>,
    plan: Plan<'_>,
) -> [[u32; 3]; 2] {
    let blk = Blocking::for_kernel(K::MR, K::NR, plan.caches);
    assert!(
        K::MR * K::NR <= MAX_TILE && blk.mc.is_multiple_of(K::MR) && blk.nc.is_multiple_of(K::NR),
        "block sizes do not fit the kernel: {blk:?} for {}x{}",
        K::MR,
        K::NR
    );
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let (rsc, csc) = (c.row_stride(), c.col_stride());
    if let Some(am) = plan.a_map {
        let (map, of_a) = (am.map, if am.transposed { a.t() } else { a });
        assert!((map.rows, map.cols) == (of_a.rows(), of_a.cols()), "a map of {}×{} for A {m}×{k}", map.rows, map.cols);
        debug_assert!(map.is_map_of(of_a), "the map is not A's");
    }

    let (weights, biases) = match update {
        Some(WeightUpdate { weights, biases }) => (Some(weights), biases),
        None => (None, None),
    };
    let bias_update = biases.map(|u| {
        assert!(matches!(epilogue, Epilogue::BiasGradB(_)), "a bias step needs the BiasGradB epilogue");
        UpdateJob::new(u, n)
    });

    // An empty C has no tiles, but the bias gradients (and steps) are still defined.
    if m == 0 || n == 0 {
        match epilogue {
            Epilogue::BiasGradB(db) => {
                for (j, d) in db.iter_mut().enumerate() {
                    *d = (0..k).fold(0.0, |s, p| s + b.get(p, j));
                }
                if let Some(bu) = &bias_update {
                    let mut maxima = [0u32; 3];
                    // SAFETY: `db` holds n floats, the biases and their state n each
                    // (checked by `UpdateJob::new`), all owned by this call.
                    unsafe { step_biases::<K>(bu, db.as_ptr(), 0..n, &mut maxima) };
                    return [[0; 3], maxima];
                }
            }
            Epilogue::ReluMaskBiasGrad { dbiases, .. } => dbiases.fill(0.0),
            _ => {}
        }
        return [[0; 3]; 2];
    }

    let tiles_m = m.div_ceil(K::MR);
    let tiles_n = n.div_ceil(K::NR);
    let work = m.saturating_mul(n).saturating_mul(k.max(1));
    let tasks = plan.threads.min(work / plan.min_work_per_thread.max(1)).clamp(1, tiles_m * tiles_n);
    if tasks > 1 && weights.is_none() {
        if let Some(split) = split_k::Split::of::<K>(m, k, n, &epilogue, blk, tasks) {
            return [split.run::<K>(c, a, b, accum, epilogue, plan), [0; 3]];
        }
    }
    let (tm, tn) = if plan.b_is_weights && weights.is_none() && split_by_columns(tasks, m, k, n, tiles_n) {
        (1, tasks)
    } else {
        partition(tasks, (m, K::MR), (n, K::NR))
    };

    let (bias, relu, h, mut colsum_out, bgrad) = match epilogue {
        Epilogue::None => (None, false, None, None, None),
        Epilogue::Bias(bias) => (Some(bias), false, None, None, None),
        Epilogue::BiasRelu(bias) => (Some(bias), true, None, None, None),
        Epilogue::ReluMask(h) => (None, false, Some(h), None, None),
        Epilogue::ReluMaskBiasGrad { h, dbiases } => (None, false, Some(h), Some(dbiases), None),
        Epilogue::BiasGradB(db) => (None, false, None, None, Some(SharedMut(db.as_mut_ptr()))),
    };

    // The calling thread lends its scratch for the tile-row column sums.
    let mut scratch_vec = if colsum_out.is_some() { take_colsum_scratch() } else { Vec::new() };
    let scratch = colsum_out.is_some().then(|| SharedMut(aligned(&mut scratch_vec, tiles_m * n).as_mut_ptr()));

    let job = Job {
        a,
        b,
        c: SharedMut(c.as_mut_slice().as_mut_ptr()),
        rsc,
        csc,
        m,
        n,
        k,
        accum,
        bias,
        relu,
        h,
        colsums: scratch,
        bgrad,
        blk,
        workspace: workspace_floats(plan.caches),
        update: weights.map(|u| {
            assert!(csc == 1 && rsc == n, "an update epilogue needs a contiguous row-major C");
            UpdateJob::new(u, m * n).prefetching_beyond(plan.caches.l2, m * n)
        }),
        bias_update,
        c_max: plan.track_max.then(AtomicU32::default),
        skip_zero_a: plan.skip_zero_a && K::SKIPS_ZERO_STEPS,
        a_map: plan.a_map.map(|am| (am, 0)),
        tasks: tm * tn,
        l2: plan.caches.l2,
    };

    let task = |t: usize| {
        let (rows, cols) = task_ranges::<K>(t, tm, tn, tiles_m, tiles_n, m, n);
        with_buffers(|bufs| job.run_block::<K>(rows, cols, bufs));
    };
    run_tasks(tm * tn, &task);

    if let (Some(out), Some(SharedMut(s))) = (colsum_out.as_deref_mut(), scratch) {
        // SAFETY: the tasks have joined; `s` points to `tiles_m * n` floats of
        // `scratch_vec`, each written by exactly one tile.
        let partials = unsafe { std::slice::from_raw_parts(s, tiles_m * n) };
        out.fill(0.0);
        for row in partials.chunks_exact(n) {
            for (o, &p) in out.iter_mut().zip(row) {
                *o += p;
            }
        }
    }
    if colsum_out.is_some() {
        with_buffers(|bufs| bufs.colsums = scratch_vec);
    }
    let bias_maxima = job.bias_update.map_or([0; 3], |u| u.maxima.map(|m| m.into_inner()));
    let maxima = match (job.update, job.c_max) {
        (Some(u), _) => u.maxima.map(|m| m.into_inner()),
        (None, Some(c)) => [c.into_inner(), 0, 0],
        (None, None) => [0; 3],
    };
    [maxima, bias_maxima]
}

/// The bias step of columns `cols` from their complete gradient at `db` (column
/// `cols.start` first), raising `maxima`.
///
/// # Safety
/// `db .. db + cols.len()` readable; columns `cols` of the job's biases and state owned
/// by the caller; the CPU supports `K::ISA`.
unsafe fn step_biases<K: Kernel>(bu: &UpdateJob<'_>, db: *const f32, cols: Range<usize>, maxima: &mut [u32; 3]) {
    let tu = bu.at(0, cols.start, 0, maxima);
    // SAFETY: forwarded; a null x makes `update_rank1` step one row from `db` itself.
    unsafe { kernel::update_rank1(K::ISA, std::ptr::null(), 0, 1, db, cols.len(), &tu) }
}

/// Whether a list of `listed` of `kc` k steps is worth its indirection: a nearly dense
/// list saves less than it costs.
fn list_pays(listed: usize, kc: usize) -> bool {
    listed * 8 <= kc * 7
}

/// Aᵀ is packed rather than read in place when a block of at least this many column
/// tiles reuses each of its panels (and no list of zero steps would pay): the AVX2
/// 6 × 16 tile's dW of a 1024-wide layer at batch 128 ran at 62% of its peak in place,
/// 82% packed; at 8 column tiles packing lost, 83% → 78% (784×128×128), and on
/// AVX-512 at 4 (256×512×256: 82% → 71%). docs/perf/aliasing-dw-2026-12-08.md.
const PACKED_AT_COLUMN_TILES: usize = 16;

/// Runs `task(0..tasks)`: inside a step's region (`runtime::region`) on its threads,
/// task t on thread t mod threads; elsewhere rayon spreads them.
fn run_tasks(tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if tasks == 1 {
        task(0);
    } else if !crate::runtime::region::share(tasks, task) {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Splits `tasks` over the tile grid of an `m × n` C of `mr × nr` tiles: the way BLIS
/// does (each prime factor of the task count to the dimension that still has more
/// tiles per part), unless another split of the same count is clearly cheaper for its
/// largest task — a batch of a few rows split by rows leaves one task with most of
/// them, and both reading all of B, where a split by columns halves both.
fn partition(tasks: usize, (m, mr): (usize, usize), (n, nr): (usize, usize)) -> (usize, usize) {
    let (tiles_m, tiles_n) = (m.div_ceil(mr), n.div_ceil(nr));
    let blis = partition_blis(tasks, tiles_m, tiles_n);
    // The largest task's multiply-adds per k step, plus its loads of A and B (two
    // multiply-adds' worth each: a tile's FMAs outrun its loads about so).
    let cost = |(tm, tn): (usize, usize)| {
        let rows = (tiles_m.div_ceil(tm) * mr).min(m);
        let cols = (tiles_n.div_ceil(tn) * nr).min(n);
        rows * cols + 2 * (rows + cols)
    };
    let best = (1..=tasks)
        .filter(|tm| tasks.is_multiple_of(*tm) && *tm <= tiles_m && tasks / tm <= tiles_n)
        .map(|tm| (tm, tasks / tm))
        .min_by_key(|&p| cost(p));
    match best {
        Some(p) if cost(p) * 10 < cost(blis) * 9 => p,
        _ => blis,
    }
}

/// Whether a product of a batch with a layer's weights as B splits over `tasks` by
/// columns alone: batches up to `COLUMN_SPLIT_MAX_ROWS` rows, B beyond
/// `DIRECT_B_MAX_FLOATS`, a column tile or more per task. By rows, each core reads all
/// the weights, half of them last written by the other core; by columns, `dX = dZ·Wᵀ`
/// reads only the rows of W its core updated, and the forward half the columns of
/// the other core's rows. Alone (`examples/gemm`, nobody writing W) the split by
/// columns is no faster; in training, 784-512-512-10 at batch 128 on 2 threads ran
/// 8–10% faster, at batch 256 6–10%, 784-1024-1024-1024-10 4–6%
/// (docs/perf/aliasing-dw-2026-12-08.md).
fn split_by_columns(tasks: usize, m: usize, k: usize, n: usize, tiles_n: usize) -> bool {
    m <= COLUMN_SPLIT_MAX_ROWS && k.saturating_mul(n) > DIRECT_B_MAX_FLOATS && tiles_n >= tasks
}

/// The largest batch whose products with the weights split by columns
/// (`split_by_columns`): at 512 rows the gain was lost in the noise.
const COLUMN_SPLIT_MAX_ROWS: usize = 256;

fn partition_blis(tasks: usize, tiles_m: usize, tiles_n: usize) -> (usize, usize) {
    let (mut tm, mut tn) = (1usize, 1usize);
    let mut rest = tasks;
    let mut f = 2;
    while rest > 1 {
        if !rest.is_multiple_of(f) {
            f += 1;
            continue;
        }
        rest /= f;
        if tiles_m * tn >= tiles_n * tm {
            tm *= f;
        } else {
            tn *= f;
        }
    }
    (tm.min(tiles_m), tn.min(tiles_n))
}

/// The rows and columns of C owned by task `t`: whole tiles, split as evenly as the
/// grid allows.
fn task_ranges<K: Kernel>(
    t: usize,
    tm: usize,
    tn: usize,
    tiles_m: usize,
    tiles_n: usize,
    m: usize,
    n: usize,
) -> (Range<usize>, Range<usize>) {
    let (ti, tj) = (t / tn, t % tn);
    let r0 = (ti * tiles_m / tm) * K::MR;
    let r1 = ((ti + 1) * tiles_m / tm * K::MR).min(m);
    let c0 = (tj * tiles_n / tn) * K::NR;
    let c1 = ((tj + 1) * tiles_n / tn * K::NR).min(n);
    (r0..r1, c0..c1)
}

impl Job<'_> {
    /// Computes the block `rows × cols` of C: loops 5 to 1.
    fn run_block<K: Kernel>(&self, rows: Range<usize>, cols: Range<usize>, bufs: &mut Buffers) {
        let Blocking { kc: kc_max, mc: mc_max, nc: nc_max } = self.blk;
        let nkb = self.blk.k_blocks(self.k);
        let owns_bgrad = rows.start == 0;
        // This task's maxima of the update epilogue (or of C), merged into the job's at the end.
        let mut maxima = [0u32; 3];
        if self.rank1_update::<K>(&rows, &cols, owns_bgrad, &mut maxima) {
            self.step_own_biases::<K>(owns_bgrad, cols);
            self.merge_maxima(maxima);
            return;
        }
        // Rows whose stride would keep them on cache lines but which start off one (a
        // caller's vector, a column-offset view): each vector load of such a row
        // straddles two lines, 15–25% slower (docs/perf/sweep-2026-12-02-xeon167.md).
        // Only tiles that load vectors of B's rows care (the column tiles, NR 5 and 10,
        // broadcast its elements), and only with more than two rows to reuse a packed B.
        let straddles = K::NR >= 16
            && rows.len() > 2
            && self.b.row_stride().is_multiple_of(16)
            && !(self.b.as_slice().as_ptr() as usize).is_multiple_of(64);
        // A row-major B is read in place by kernels that mask their B loads (no copy at
        // all for NN and TN) when the kernel's rule says it pays (`Kernel::b_in_place`)
        // and its rows do not straddle; otherwise it is packed. Fixed for the task.
        let direct_b = K::READS_B_IN_PLACE
            && self.b.col_stride() == 1
            && !straddles
            && K::b_in_place(rows.len(), self.k, self.n, self.b.row_stride(), self.tasks);
        // The k steps a row panel runs when it skips zero inputs: zeroed once per task,
        // and only by tasks that skip (a 2 KB memset per row panel was visible).
        // Whether a list pays depends on the tile and on how many column tiles it
        // serves (`Kernel::lists_steps`).
        let a_transposed = self.a.row_stride() == 1 && self.a.col_stride() != 1;
        let lists = self.skip_zero_a && K::lists_steps(cols.len().min(nc_max), a_transposed);
        let mut steps = if lists { Some([0u32; KC_MAX]) } else { None };
        // A row panel whose inputs are all ±0 has a zero gradient: an update that leaves
        // such rows alone is done with it (when its gradient is complete in one k block).
        let skips_empty_panels = nkb == 1 && self.update.as_ref().is_some_and(|u| u.rule.skip_zero_rows);
        // LOOP 5: n in NC-wide blocks.
        for jc in cols.clone().step_by(nc_max) {
            let nc = nc_max.min(cols.end - jc);
            if let (Some(SharedMut(db)), true) = (self.bgrad, owns_bgrad) {
                // SAFETY: columns jc..jc+nc of the n-long bias gradient belong to this
                // task alone (the only task with rows starting at 0 for these columns).
                unsafe { std::slice::from_raw_parts_mut(db.add(jc), nc) }.fill(0.0);
            }
            // LOOP 4: k in equal blocks, in order.
            for kb in 0..nkb {
                let p0 = k_block_start(self.k, nkb, kb);
                let kc = k_block_start(self.k, nkb, kb + 1) - p0;
                // Sized even when B is read in place: every task sizes both pack
                // buffers, so one warm call leaves every thread allocation-free
                // whichever tasks it later runs (tests/no_alloc.rs).
                let b_packed = aligned(&mut bufs.b, self.workspace.1.max(nc_max * kc_max));
                if !direct_b {
                    pack_b(b_packed, self.b, p0, kc, jc, nc, K::NR, K::ISA);
                }
                if let (Some(SharedMut(db)), true) = (self.bgrad, owns_bgrad) {
                    // SAFETY: as above; this task owns columns jc..jc+nc.
                    let db = unsafe { std::slice::from_raw_parts_mut(db.add(jc), nc) };
                    if direct_b {
                        add_b_colsums(self.b, p0, kc, jc, db);
                    } else {
                        add_packed_b_colsums(b_packed, kc, nc, K::NR, db);
                    }
                }
                let (first, last) = (kb == 0, kb + 1 == nkb);
                // LOOP 3: m in MC-tall blocks.
                for ic in rows.clone().step_by(mc_max) {
                    let mc = mc_max.min(rows.end - ic);
                    // Row-major A is read in place: the kernel broadcasts from MR
                    // strided rows (AOCL's "sup" kernels do the same), which saves a
                    // scalar transpose of the whole of A per call. Aᵀ (Xᵀ in
                    // dW = Xᵀ·dZ) too, unless packing it (a plain copy) pays: where
                    // its k steps' lines alias in L2, or where many column tiles reuse
                    // its panels and no list of zero steps would skip enough (the
                    // block's first panel tells). Other layouts are packed.
                    let (rsa, csa) = (self.a.row_stride(), self.a.col_stride());
                    let pack_transposed = a_transposed
                        && (!transposed_a_stays_in_l2(csa, kc, self.l2)
                            || (cols.len().min(nc_max).div_ceil(K::NR) >= PACKED_AT_COLUMN_TILES
                                && !steps.as_mut().is_some_and(|steps| {
                                    let rows = ic..(ic + K::MR).min(rows.end);
                                    list_pays(self.list_steps::<K>(rows, p0, kc, steps), kc)
                                })));
                    let direct_a = K::READS_A_IN_PLACE && K::a_in_place(rsa, csa) && !pack_transposed;
                    let a_packed = aligned(&mut bufs.a, self.workspace.0.max(mc_max * kc_max));
                    if !direct_a {
                        pack_a(a_packed, self.a, ic, mc, p0, kc, K::MR, K::ISA);
                    }
                    // LOOP 2: MR rows at a time.
                    for ir in (0..mc).step_by(K::MR) {
                        // The k steps the tiles of this row panel run: all kc, or the listed ones.
                        let mut tile_kc = kc;
                        let a_panel = if direct_a {
                            // Rows ic+ir.. from column p0; the kernel reads only rows
                            // below this tile's mr, all inside the A view. An empty k
                            // block reads nothing.
                            let off = if kc == 0 { 0 } else { (ic + ir) * rsa + p0 * csa };
                            let mut panel = APanel {
                                ptr: self.a.as_slice()[off..].as_ptr(),
                                rs: rsa,
                                cs: csa,
                                steps: std::ptr::null(),
                            };
                            if let Some(steps) = steps.as_mut() {
                                let rows = (ic + ir)..(ic + ir + K::MR).min(rows.end);
                                let listed = self.list_steps::<K>(rows, p0, kc, steps);
                                if listed == 0 && skips_empty_panels {
                                    continue;
                                }
                                if list_pays(listed, kc) {
                                    tile_kc = listed;
                                    panel.steps = steps.as_ptr();
                                }
                            }
                            panel
                        } else {
                            APanel {
                                ptr: a_packed[ir * kc..(ir + K::MR) * kc].as_ptr(),
                                rs: 1,
                                cs: K::MR,
                                steps: std::ptr::null(),
                            }
                        };
                        // LOOP 1: NR columns at a time.
                        for jr in (0..nc).step_by(K::NR) {
                            let b_panel = if direct_b {
                                // Row p0 of B from column jc + jr; the kernel reads
                                // only columns below this tile's nr, all in the view.
                                let off = if kc == 0 { 0 } else { p0 * self.b.row_stride() + jc + jr };
                                BPanel {
                                    ptr: self.b.as_slice()[off..].as_ptr(),
                                    rs: self.b.row_stride(),
                                    padded: false,
                                }
                            } else {
                                BPanel { ptr: b_packed[jr * kc..(jr + K::NR) * kc].as_ptr(), rs: K::NR, padded: true }
                            };
                            let (i, j) = (ic + ir, jc + jr);
                            let (mr, nr) = (K::MR.min(rows.end - i), K::NR.min(cols.end - j));
                            self.tile::<K>(tile_kc, a_panel, b_panel, i, j, mr, nr, first, last, &mut maxima);
                        }
                    }
                }
            }
        }
        self.step_own_biases::<K>(owns_bgrad, cols);
        self.merge_maxima(maxima);
    }

    /// The nonzero k steps of rows `rows` of A in the k block `p0 .. p0 + kc`, into
    /// `steps`, from the map of A's zeros when there is one: their count.
    fn list_steps<K: Kernel>(&self, rows: Range<usize>, p0: usize, kc: usize, steps: &mut [u32; KC_MAX]) -> usize {
        match self.a_map {
            Some((am, k0)) => K::mapped_steps(am, rows, k0 + p0, kc, steps),
            None => K::nonzero_steps(self.a, rows, p0, kc, steps),
        }
    }

    /// The bias step of this task's columns, once their gradient is complete (after
    /// every k block), by the one task that formed it.
    fn step_own_biases<K: Kernel>(&self, owns_bgrad: bool, cols: Range<usize>) {
        if let (Some(bu), Some(SharedMut(db)), true) = (&self.bias_update, self.bgrad, owns_bgrad) {
            let mut maxima = [0u32; 3];
            // SAFETY: columns `cols` of the n-long bias gradient, biases and their state
            // belong to this task alone (the only one with rows starting at 0 there).
            unsafe { step_biases::<K>(bu, db.add(cols.start), cols, &mut maxima) };
            bu.merge(maxima);
        }
    }

    /// Raises the job's maxima to this task's.
    fn merge_maxima(&self, maxima: [u32; 3]) {
        if let Some(u) = &self.update {
            u.merge(maxima);
        }
        if let Some(c) = &self.c_max {
            c.fetch_max(maxima[0], Ordering::Relaxed);
        }
    }

    /// The fused update of a batch of one (k = 1, `W ← step(W, x ⊗ dz)`) for this task's
    /// block, row by row without packing or tiles (`update::update_rank1`, bit-identical
    /// to the tiled epilogue), and the bias gradient as the tiled path forms it. Returns
    /// false, doing nothing, for any other product.
    fn rank1_update<K: Kernel>(
        &self,
        rows: &Range<usize>,
        cols: &Range<usize>,
        owns_bgrad: bool,
        maxima: &mut [u32; 3],
    ) -> bool {
        let Some(u) = &self.update else { return false };
        if self.k != 1
            || self.accum != Accum::Overwrite
            || self.b.col_stride() != 1
            || rows.is_empty()
            || cols.is_empty()
        {
            return false;
        }
        if let (Some(SharedMut(db)), true) = (self.bgrad, owns_bgrad) {
            // SAFETY: columns `cols` of the n-long bias gradient belong to this task
            // alone (the only task with rows starting at 0 for these columns).
            let db = unsafe { std::slice::from_raw_parts_mut(db.add(cols.start), cols.len()) };
            db.fill(0.0);
            add_b_colsums(self.b, 0, 1, cols.start, db);
        }
        let tu = u.at(rows.start, cols.start, self.n, maxima);
        let x = self.a.as_slice()[rows.start * self.a.row_stride()..].as_ptr();
        let dz = self.b.as_slice()[cols.start..].as_ptr();
        // SAFETY: A (m × 1) has rows `rows` at stride `row_stride` from `x`, all inside
        // its bounds-checked view; B's row 0 has unit column stride, so `dz` starts n −
        // cols.start ≥ cols.len() readable floats; the parameter and state blocks are
        // this task's rows × cols of the m × n buffers checked in `run` (row stride n),
        // touched by no other task; the ISA was checked before the driver was chosen.
        unsafe { kernel::update_rank1(K::ISA, x, self.a.row_stride(), rows.len(), dz, cols.len(), &tu) };
        true
    }

    /// One microkernel call for the tile at `(i, j)` with `mr × nr` valid elements.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn tile<K: Kernel>(
        &self,
        kc: usize,
        a_panel: APanel,
        b_panel: BPanel,
        i: usize,
        j: usize,
        mr: usize,
        nr: usize,
        first: bool,
        last: bool,
        maxima: &mut [u32; 3],
    ) {
        debug_assert!(i < self.m && j < self.n && mr >= 1 && nr >= 1);
        let load_c = !first || self.accum == Accum::Add;
        let colsum = match self.colsums {
            // Tile row i / MR of the scratch, columns j..j+nr.
            Some(SharedMut(s)) if last => s.wrapping_add((i / K::MR) * self.n + j),
            _ => std::ptr::null_mut(),
        };
        // The activation tile, with its row stride; gathered to the stack when its
        // columns are not contiguous.
        let h_stack: [f32; MAX_TILE];
        let h_tile = match self.h {
            Some(h) if last => {
                let (rsh, csh) = (h.row_stride(), h.col_stride());
                let data = h.as_slice();
                if csh == 1 {
                    Some((data[i * rsh + j..].as_ptr(), rsh))
                } else {
                    h_stack = std::array::from_fn(|e| {
                        let (r, q) = (e / K::NR, e % K::NR);
                        if r < mr && q < nr {
                            data[(i + r) * rsh + (j + q) * csh]
                        } else {
                            0.0
                        }
                    });
                    Some((h_stack.as_ptr(), K::NR))
                }
            }
            _ => None,
        };
        let max = if last && self.c_max.is_some() { &mut maxima[0] as *mut u32 } else { std::ptr::null_mut() };
        let epilogue = match (last, self.bias, h_tile) {
            (true, _, _) if self.update.is_some() => {
                let u = self.update.as_ref().expect("checked");
                // Loaded while the k loop runs, so the epilogue finds them in L1.
                u.prefetch_tile(i, j, self.n, mr, nr);
                TileEpilogue::Update(u.at(i, j, self.n, maxima))
            }
            (true, Some(bias), _) if self.relu => TileEpilogue::BiasRelu(bias[j..].as_ptr()),
            (true, Some(bias), _) => TileEpilogue::Bias(bias[j..].as_ptr()),
            (true, None, Some((h, rsh))) => TileEpilogue::ReluMask { h, rsh, colsum },
            _ => TileEpilogue::None,
        };

        // SAFETY: (i, j) with i + mr ≤ m, j + nr ≤ n lies inside the C view, which was
        // bounds-checked when it was made, so every offset below stays in its slice;
        // this task owns the tile (tasks own disjoint rectangles of whole tiles), so no
        // other thread touches it. `a_panel` addresses rows i..i+mr, k steps 0..kc of
        // either the packed block or the A view itself; `b_panel` addresses k steps
        // 0..kc of a packed, padded panel or (kernels that mask B) columns j..j+nr of
        // the B view itself, the bias slice starts at column j and has ≥ nr floats, the
        // activation tile covers mr × nr, and `colsum` addresses this tile's own nr
        // scratch entries. The ISA was checked before the driver was chosen.
        unsafe {
            let c_tile = self.c.0.add(i * self.rsc + j * self.csc);
            if self.csc == 1 {
                let t = Tile { c: c_tile, rsc: self.rsc, mr, nr, load_c, epilogue, max };
                K::tile(kc, a_panel, b_panel, &t);
            } else {
                // Non-contiguous C (e.g. a transposed output view): run the kernel on
                // a stack tile and copy the valid part in and out.
                let mut c_stack = [0.0f32; MAX_TILE];
                if load_c {
                    for r in 0..mr {
                        for q in 0..nr {
                            c_stack[r * K::NR + q] = *c_tile.add(r * self.rsc + q * self.csc);
                        }
                    }
                }
                let t = Tile { c: c_stack.as_mut_ptr(), rsc: K::NR, mr, nr, load_c, epilogue, max };
                K::tile(kc, a_panel, b_panel, &t);
                for r in 0..mr {
                    for q in 0..nr {
                        *c_tile.add(r * self.rsc + q * self.csc) = c_stack[r * K::NR + q];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_follows_the_larger_dimension() {
        assert_eq!(partition_blis(1, 22, 2), (1, 1));
        assert_eq!(partition_blis(2, 22, 2), (2, 1));
        assert_eq!(partition_blis(2, 1, 8), (1, 2));
        assert_eq!(partition_blis(4, 8, 8), (2, 2));
        assert_eq!(partition_blis(8, 2, 2), (2, 2)); // capped by the grid
                                                     // MNIST's first layer at batch 128 on the 6×64 tile: BLIS's split (rows) stays.
        assert_eq!(partition(2, (128, 6), (128, 64)), (2, 1));
        assert_eq!(partition(2, (784, 6), (128, 64)), (2, 1)); // dW = Xᵀ·dZ
    }

    #[test]
    fn a_few_rows_split_by_columns() {
        // Batch 8 on the 6-row tile: by rows one task would get 6 rows of 8, and both
        // all of W; by columns each gets 8 rows and half of W.
        assert_eq!(partition(2, (8, 6), (128, 64)), (1, 2));
        assert_eq!(partition(2, (12, 6), (128, 64)), (1, 2));
        assert_eq!(partition(4, (8, 6), (784, 64)), (1, 4));
        // Even when columns are the only way left, the count may exceed the tiles.
        assert_eq!(partition(3, (8, 6), (64, 64)), (2, 1));
        for (tasks, m, n) in [(2, 1, 1), (7, 100, 3000), (6, 37, 129), (16, 5, 10_000)] {
            let (tm, tn) = partition(tasks, (m, 6), (n, 64));
            assert!(tm >= 1 && tn >= 1 && tm <= m.div_ceil(6) && tn <= n.div_ceil(64), "{tasks} {m} {n}");
        }
    }
}
