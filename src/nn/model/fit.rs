//! `Sequential::fit`: epochs of shuffled mini-batches, each step run the way the
//! thread governor picks, with per-epoch reports.

use super::{first_nonfinite_row, Evaluation, Sequential};
use crate::error::{Error, Result};
use crate::gemm::nonzero_map::{words_per_row, NonzeroMap, NonzeroMapRef};
use crate::gemm::Isa;
use crate::matrix::{MatRef, Matrix};
use crate::nn::inputs::{Inputs, Sealed};
use crate::nn::loss::Targets;
use crate::rng::Rng;
use crate::runtime::governor::{Governor, Mode};
use crate::runtime::region::Region;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What one epoch of [`Sequential::fit`] did (a report: `#[non_exhaustive]`, so that
/// fields can be added).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training data loss over the epoch's batches (weighted by batch size).
    pub loss: f32,
    /// Regularization penalty at the end of the epoch.
    pub regularization_loss: f32,
    /// Training accuracy over the epoch, for classification losses.
    pub accuracy: Option<f32>,
    /// Loss and accuracy on the validation data, when given.
    pub validation: Option<Evaluation>,
    /// Seconds spent training (shuffle, forward, backward, update); evaluation excluded.
    pub train_seconds: f64,
    /// Seconds spent on validation.
    pub eval_seconds: f64,
    /// Optimizer steps so far.
    pub iterations: u64,
    /// Learning rate at the end of the epoch (after decay).
    pub learning_rate: f32,
}

/// Hooks into [`Sequential::fit_observed`]: called on the training thread after every
/// step and every epoch. Both default to doing nothing.
pub trait FitObserver: Send {
    /// After step `step` (1-based) of `steps` in epoch `epoch` (1-based).
    fn on_step(&mut self, _epoch: usize, _step: usize, _steps: usize) {}
    /// After each epoch, with its report.
    fn on_epoch(&mut self, _report: &EpochReport) {}
    /// After [`FitObserver::on_epoch`]: `false` ends `fit` after this epoch (its report
    /// is the last one returned). Default: keep training.
    fn keep_training(&mut self, _report: &EpochReport) -> bool {
        true
    }
}

/// Early stopping: ends `fit` once the validation loss (the training loss without
/// validation data) has not improved by more than `min_delta` for `patience` epochs.
/// Pass it to [`Sequential::fit_observed`].
///
/// ```
/// use fusegrad::data::spiral;
/// use fusegrad::nn::{EarlyStopping, FitOptions, Loss, Optimizer, Sequential, Targets};
/// let (x, y) = spiral(50, 3, 0);
/// let mut model = Sequential::builder(2).dense(16).relu().dense(3)
///     .build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.05))?;
/// let mut stop = EarlyStopping::new(5);
/// let opts = FitOptions::default().with_epochs(10_000).with_batch_size(150);
/// let reports = model.fit_observed(x.view(), Targets::Classes(&y), &opts, &mut stop)?;
/// assert!(reports.len() < 10_000);
/// assert_eq!(stop.best_epoch(), Some(reports.len() - 5));
/// # Ok::<(), fusegrad::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    patience: usize,
    min_delta: f32,
    best: Option<(usize, f32)>,
}

impl EarlyStopping {
    /// Stops after `patience` epochs without improvement (`min_delta` 0).
    pub fn new(patience: usize) -> Self {
        EarlyStopping { patience, min_delta: 0.0, best: None }
    }
    /// Counts only improvements larger than `min_delta`.
    pub fn with_min_delta(mut self, min_delta: f32) -> Self {
        self.min_delta = min_delta;
        self
    }
    /// The epoch with the lowest loss so far.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.map(|(e, _)| e)
    }
}

impl FitObserver for EarlyStopping {
    fn keep_training(&mut self, report: &EpochReport) -> bool {
        let loss = report.validation.map_or(report.loss, |v| v.loss);
        if self.best.is_none_or(|(_, best)| loss < best - self.min_delta) {
            self.best = Some((report.epoch, loss));
        }
        let best_epoch = self.best.map_or(report.epoch, |(e, _)| e);
        report.epoch - best_epoch < self.patience
    }
}

/// Adapts an epoch callback to a [`FitObserver`].
struct OnEpoch<F>(F);

impl<F: FnMut(&EpochReport) + Send> FitObserver for OnEpoch<F> {
    fn on_epoch(&mut self, report: &EpochReport) {
        (self.0)(report)
    }
}

/// How [`Sequential::fit`] runs. Start from `default()` (1 epoch, batch 128, shuffled
/// with seed 0, no validation) and change what you need with the `with_*` setters; the
/// struct is `#[non_exhaustive]`, so a new option is not a breaking change.
///
/// ```
/// use fusegrad::nn::FitOptions;
/// let opts = FitOptions::default().with_epochs(10).with_batch_size(64).with_seed(42);
/// assert_eq!((opts.epochs, opts.batch_size, opts.shuffle), (10, 64, true));
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FitOptions<'a> {
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Shuffle the samples every epoch.
    pub shuffle: bool,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Data to evaluate after each epoch.
    pub validation: Option<(MatRef<'a>, Targets<'a>)>,
    /// Holds out this fraction of the samples, the last ones (before shuffling), as
    /// validation data (Keras's `validation_split`).
    pub validation_split: Option<f32>,
}

impl Default for FitOptions<'_> {
    fn default() -> Self {
        FitOptions { epochs: 1, batch_size: 128, shuffle: true, seed: 0, validation: None, validation_split: None }
    }
}

impl<'a> FitOptions<'a> {
    /// `epochs` passes over the training data.
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }
    /// `batch_size` samples per step.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Shuffles the samples every epoch, or keeps their order.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }
    /// The seed of the shuffling.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Evaluates `inputs` against `targets` after each epoch.
    pub fn with_validation(mut self, inputs: MatRef<'a>, targets: Targets<'a>) -> Self {
        self.validation = Some((inputs, targets));
        self
    }
    /// Trains on the first `1 − fraction` of the samples and evaluates the rest after
    /// each epoch (the last rows, as given, so the split does not change with the seed).
    ///
    /// ```
    /// use fusegrad::data::spiral;
    /// use fusegrad::nn::{FitOptions, Loss, Optimizer, Sequential, Targets};
    /// let (x, y) = spiral(50, 3, 0);
    /// let mut m = Sequential::builder(2).dense(8).relu().dense(3).build(Loss::SoftmaxCrossEntropy, Optimizer::adam(0.01))?;
    /// let r = m.fit(x.view(), Targets::Classes(&y), &FitOptions::default().with_validation_split(0.2))?;
    /// assert!(r[0].validation.is_some());
    /// assert_eq!(m.iterations(), 1); // 120 training samples: one batch of 128
    /// # Ok::<(), fusegrad::Error>(())
    /// ```
    pub fn with_validation_split(mut self, fraction: f32) -> Self {
        self.validation_split = Some(fraction);
        self
    }
}

impl Sequential {
    /// Trains for `options.epochs` epochs; see [`Self::fit_with`].
    ///
    /// # Errors
    /// As [`Self::fit_with`].
    pub fn fit(&mut self, x: impl Inputs, targets: Targets<'_>, options: &FitOptions<'_>) -> Result<Vec<EpochReport>> {
        self.fit_with(x, targets, options, |_| {})
    }

    /// Trains for `options.epochs` epochs over mini-batches, calling `on_epoch` after
    /// each epoch with its report (and returning all reports).
    ///
    /// # Errors
    /// Bad shapes, targets or options are reported before any training; a NaN or
    /// infinity stops training with [`Error::NonFinite`] naming the step, layer and
    /// tensor (the parameters keep the values of the last good step).
    pub fn fit_with(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        on_epoch: impl FnMut(&EpochReport) + Send,
    ) -> Result<Vec<EpochReport>> {
        self.fit_observed(x, targets, options, &mut OnEpoch(on_epoch))
    }

    /// [`Self::fit_with`] with a [`FitObserver`] that also hears about every step
    /// (for a progress bar).
    ///
    /// # Errors
    /// As [`Self::fit_with`].
    pub fn fit_observed(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        observer: &mut dyn FitObserver,
    ) -> Result<Vec<EpochReport>> {
        self.check_shape(x.rows(), x.cols(), Some(&targets))?;
        if options.batch_size == 0 {
            return Err(Error::InvalidArgument("batch_size must be at least 1".into()));
        }
        if x.rows() == 0 {
            return Err(Error::InvalidArgument("fit needs at least one sample".into()));
        }
        if let Some((vx, vt)) = &options.validation {
            self.check_inputs(vx, Some(vt))?;
        }
        let Some(fraction) = options.validation_split else {
            let options = *options;
            return self.in_pool(move |m, threads| m.fit_loop(x, targets, &options, observer, threads))?;
        };
        if options.validation.is_some() {
            return Err(Error::InvalidArgument("give validation data or a validation split, not both".into()));
        }
        let n = x.rows();
        let held = (n as f64 * fraction as f64).round() as usize;
        if !(fraction > 0.0 && fraction < 1.0) || held == 0 || held >= n {
            return Err(Error::InvalidArgument(format!(
                "validation_split must leave samples on both sides: {fraction} of {n} samples holds out {held}"
            )));
        }
        let train = n - held;
        let mut vx = Matrix::zeros(held, x.cols());
        x.gather(&(train..n).collect::<Vec<_>>(), vx.as_mut_slice());
        let (train_t, val_t) = match targets {
            Targets::Classes(c) => (Targets::Classes(&c[..train]), Targets::Classes(&c[train..])),
            Targets::Values(v) => (
                Targets::Values(v.submatrix(0, 0, train, v.cols())?),
                Targets::Values(v.submatrix(train, 0, held, v.cols())?),
            ),
        };
        let options = FitOptions { validation: Some((vx.view(), val_t)), validation_split: None, ..*options };
        let x = FirstRows { inner: x, rows: train };
        self.in_pool(move |m, threads| m.fit_loop(x, train_t, &options, observer, threads))?
    }

    fn fit_loop(
        &mut self,
        x: impl Inputs,
        targets: Targets<'_>,
        options: &FitOptions<'_>,
        observer: &mut dyn FitObserver,
        threads: usize,
    ) -> Result<Vec<EpochReport>> {
        let n = x.rows();
        let batch = options.batch_size.min(n);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = Rng::new(options.seed);
        // Continue the shuffle where the epochs already trained left it, so that a
        // resumed run (another `fit` call, a checkpoint) sees the same batches.
        if options.shuffle {
            for _ in 0..self.epochs {
                rng.shuffle(&mut order);
            }
        }
        let mut reports = Vec::with_capacity(options.epochs);
        // The batch buffers leave `self` for the epoch, so a step can borrow both.
        let mut bx = std::mem::take(&mut self.batch_x);
        let mut bc = std::mem::take(&mut self.batch_classes);
        let mut bv = std::mem::take(&mut self.batch_values);
        let mut bm = std::mem::take(&mut self.batch_map);
        let (mut nx, mut nm) = std::mem::take(&mut self.batch_next);
        let map_isa = self.input_map_isa();
        // Every worker's GEMM buffers now, not on its first task mid-epoch.
        crate::gemm::reserve_workspace_for(threads);
        // The other workers spin between GEMMs instead of sleeping: a wake-up costs
        // more than a small product (see `runtime::with_hot_workers`). The governor
        // times the steps and, where another process makes a worker slow, runs them on
        // one thread instead (see `governor`); results do not depend on its choice.
        // A one-thread model runs serially here, whatever pool it was called from: nothing
        // to govern.
        let governor = match (self.adaptive_threads, threads) {
            (_, 1) => Governor::fixed(Mode::SerialHere),
            (true, threads) => Governor::new(threads),
            (false, _) => Governor::fixed(Mode::Parallel),
        };
        let mut epochs = Epochs {
            x,
            targets,
            order,
            batch,
            governor,
            bufs: (&mut bx, &mut bc, &mut bv, &mut bm),
            next: (&mut nx, &mut nm),
            ready: None,
            map_isa,
        };
        // One region for the whole loop: the helpers stay with this thread between
        // steps, and every step's products share their tiles among the same threads.
        // (Through a clone of the pool, written back after: the team it starts is kept
        // for the next call, whose helpers may still be waiting.)
        let pool = self.pool.clone();
        let result = pool.lead_here(threads, |region, threads| {
            // No helpers to be had (another call holds them): the loop runs alone.
            if region.is_none() {
                epochs.governor = Governor::fixed(Mode::SerialHere);
            }
            for epoch in 1..=options.epochs {
                let start = Instant::now();
                if options.shuffle {
                    rng.shuffle(&mut epochs.order);
                }
                let sums = self.train_epoch(&mut epochs, epoch, region, observer, threads)?;
                self.epochs += 1;
                let train_seconds = start.elapsed().as_secs_f64();
                let report = self.epoch_report(epoch, sums, train_seconds, options.validation, batch, threads)?;
                observer.on_epoch(&report);
                let keep_training = observer.keep_training(&report);
                reports.push(report);
                if !keep_training {
                    break;
                }
            }
            Ok(reports)
        });
        (self.batch_x, self.batch_classes, self.batch_values, self.batch_map) = (bx, bc, bv, bm);
        self.batch_next = (nx, nm);
        self.pool = pool;
        result
    }

    /// One epoch's steps, in runs of one mode each, until the governor changes its mind
    /// or the epoch ends. Handed to another worker, a run goes as one job: waking this
    /// thread after every step would cost a time slice of the busy core each time.
    fn train_epoch<I: Inputs>(
        &mut self,
        epochs: &mut Epochs<'_, '_, I>,
        epoch: usize,
        region: Option<&Region<'_>>,
        observer: &mut dyn FitObserver,
        threads: usize,
    ) -> Result<StepSums> {
        let steps = epochs.x.rows().div_ceil(epochs.batch);
        let (mut sums, mut next_step) = (StepSums::default(), 0);
        epochs.ready = None;
        while next_step < steps {
            let mode = epochs.governor.mode();
            if let Some(r) = region {
                r.set_hot(mode != Mode::SerialHere);
            }
            let first = next_step;
            let mut run = StepRun { epochs: &mut *epochs, steps, mode, next_step: &mut next_step, sums: &mut sums };
            let result = match mode {
                Mode::Parallel => run.run(self, threads),
                Mode::SerialHere => run.run(self, 1),
                Mode::SerialThere => match region {
                    Some(r) => r.on_helper(|| run.run(self, 1)),
                    None => run.run(self, 1),
                },
            };
            for step in first..next_step {
                observer.on_step(epoch, step + 1, steps);
            }
            result?;
        }
        Ok(sums)
    }

    /// The report of an epoch: its sums, the validation data evaluated (timed apart).
    fn epoch_report(
        &mut self,
        epoch: usize,
        sums: StepSums,
        train_seconds: f64,
        validation: Option<(MatRef<'_>, Targets<'_>)>,
        batch: usize,
        threads: usize,
    ) -> Result<EpochReport> {
        let StepSums { samples, loss_sum, correct, total } = sums;
        let eval_start = Instant::now();
        let validation = match validation {
            Some((vx, vt)) => Some(self.evaluate_batches(vx, vt, batch, threads)?),
            None => None,
        };
        Ok(EpochReport {
            epoch,
            loss: (loss_sum / samples as f64) as f32,
            regularization_loss: self.regularization_loss(),
            accuracy: self.loss.is_classification().then(|| correct as f32 / total.max(1) as f32),
            validation,
            train_seconds,
            eval_seconds: eval_start.elapsed().as_secs_f64(),
            iterations: self.iterations,
            learning_rate: self.learning_rate(),
        })
    }
}

/// The first `rows` samples of `inner` (the training part of a validation split).
#[derive(Clone, Copy)]
struct FirstRows<I> {
    inner: I,
    rows: usize,
}

impl<I: Inputs> Inputs for FirstRows<I> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.inner.cols()
    }
    fn gather(&self, rows: &[usize], out: &mut [f32]) {
        self.inner.gather(rows, out)
    }
    fn gather_mapped(&self, rows: &[usize], out: &mut [f32], isa: Isa, words: &mut [u64], s: Sealed) {
        self.inner.gather_mapped(rows, out, isa, words, s)
    }
    fn prefetch(&self, rows: &[usize]) {
        self.inner.prefetch(rows)
    }
    fn max_abs_bound(&self) -> Option<f32> {
        self.inner.max_abs_bound()
    }
}

/// What the epoch loop keeps from one epoch to the next.
struct Epochs<'a, 'b, I: Inputs> {
    x: I,
    targets: Targets<'a>,
    /// The sample order, shuffled each epoch.
    order: Vec<usize>,
    batch: usize,
    governor: Governor,
    bufs: (&'b mut Matrix, &'b mut Vec<usize>, &'b mut Matrix, &'b mut NonzeroMap),
    /// The next step's inputs and their map, when a helper gathered them during a step.
    next: (&'b mut Matrix, &'b mut NonzeroMap),
    /// The step whose batch `next` holds, if any.
    ready: Option<usize>,
    /// The path that maps each batch's zeros for the first layer, if it reads a map.
    map_isa: Option<Isa>,
}

/// Running sums of an epoch's steps.
#[derive(Default)]
struct StepSums {
    /// Samples trained on.
    samples: usize,
    loss_sum: f64,
    correct: usize,
    total: usize,
}

/// Consecutive training steps of one epoch run in one [`Mode`]: everything a run
/// needs, so that it can be handed to another worker as one job.
struct StepRun<'r, 'a, 'b, I: Inputs> {
    epochs: &'r mut Epochs<'a, 'b, I>,
    steps: usize,
    mode: Mode,
    next_step: &'r mut usize,
    sums: &'r mut StepSums,
}

impl<I: Inputs> StepRun<'_, '_, '_, I> {
    /// Runs steps from `next_step` while the governor keeps this run's mode.
    /// Every pass of a step uses `threads` threads (1 in the serial modes).
    fn run(&mut self, model: &mut Sequential, threads: usize) -> Result<()> {
        let Epochs { x, targets, order, batch, governor, bufs, next: spare, ready, map_isa } = &mut *self.epochs;
        let (x, targets, batch, n, map_isa) = (*x, *targets, *batch, order.len(), *map_isa);
        while *self.next_step < self.steps && governor.mode() == self.mode {
            let step = *self.next_step;
            let chunk = &order[step * batch..((step + 1) * batch).min(n)];
            let start = Instant::now();
            let (bx, bc, bv, bm) = (&mut *bufs.0, &mut *bufs.1, &mut *bufs.2, &mut *bufs.3);
            let batch_of = |s: usize| order.get(s * batch..((s + 1) * batch).min(n)).unwrap_or(&[]);
            let (next, after) = (batch_of(step + 1), batch_of(step + 2));
            // With helpers, one of them gathers the next batch while this thread runs
            // the step's serial stretch (see `Sequential::gathers_beside`).
            let beside = threads > 1 && !next.is_empty() && model.gathers_beside(chunk.len());
            let (t, map) = if ready.take() == Some(step) {
                std::mem::swap(bx, spare.0);
                std::mem::swap(bm, spare.1);
                if !beside {
                    x.prefetch(next);
                }
                (batch_targets(targets, chunk, bc, bv), map_isa.map(|_| bm.view()))
            } else {
                // The next batch's rows load while this step computes (unless a helper
                // gathers them during it).
                let bm = map_isa.map(|isa| (isa, bm));
                gather(x, targets, chunk, if beside { &[] } else { next }, bx, bc, bv, bm, threads)
            };
            let gathered = AtomicBool::new(false);
            let next_bufs = Mutex::new((&mut *spare.0, &mut *spare.1));
            let gather_next = || {
                let mut bufs = next_bufs.lock().unwrap_or_else(|e| e.into_inner());
                let (nx, nm) = &mut *bufs;
                gather_inputs(x, next, after, nx, map_isa.map(|isa| (isa, &mut **nm)), 1);
                gathered.store(true, Ordering::Relaxed);
            };
            let background = beside.then_some(&gather_next as &(dyn Fn() + Sync));
            let b = model.step_prechecked(bx.view(), map, t, threads, x.max_abs_bound(), background);
            if gathered.load(Ordering::Relaxed) {
                *ready = Some(step + 1);
            }
            let b = b.map_err(|e| match e {
                // In `fit` the sample is known: name it.
                Error::NonFinite { step, tensor, .. } if tensor == "inputs" => {
                    let row = first_nonfinite_row(bx.view()).unwrap_or(0);
                    let sample = chunk.get(row).copied().unwrap_or(0);
                    Error::NonFinite {
                        step,
                        layer: format!("sample {sample} of the data (row {row} of the batch)"),
                        tensor,
                    }
                }
                e => e,
            })?;
            governor.record(start.elapsed().as_secs_f64(), chunk.len());
            self.sums.samples += chunk.len();
            self.sums.loss_sum += b.loss as f64 * chunk.len() as f64;
            (self.sums.correct, self.sums.total) = (self.sums.correct + b.correct, self.sums.total + b.total);
            *self.next_step += 1;
        }
        Ok(())
    }
}

/// Copies the samples `rows` of `x` (and their targets) into the batch buffers, and
/// starts loading the samples `next` (the next step's) into cache, on `threads`
/// threads of the current region. With `map`, also maps the batch's zeros on that
/// path's vectors and returns the map.
#[allow(clippy::too_many_arguments)]
fn gather<'b>(
    x: impl Inputs,
    targets: Targets<'_>,
    rows: &[usize],
    next: &[usize],
    bx: &mut Matrix,
    bc: &'b mut Vec<usize>,
    bv: &'b mut Matrix,
    map: Option<(Isa, &'b mut NonzeroMap)>,
    threads: usize,
) -> (Targets<'b>, Option<NonzeroMapRef<'b>>) {
    let map = match map {
        Some((isa, map)) => {
            gather_inputs(x, rows, next, bx, Some((isa, &mut *map)), threads);
            let map: &'b NonzeroMap = map;
            Some(map.view())
        }
        None => {
            gather_inputs(x, rows, next, bx, None, threads);
            None
        }
    };
    (batch_targets(targets, rows, bc, bv), map)
}

/// The inputs part of [`gather`]: the samples `rows` of `x` into `bx` (and the map of
/// their zeros into `map`), the samples `next` prefetched.
fn gather_inputs(
    x: impl Inputs,
    rows: &[usize],
    next: &[usize],
    bx: &mut Matrix,
    map: Option<(Isa, &mut NonzeroMap)>,
    threads: usize,
) {
    bx.resize(rows.len(), x.cols());
    match map {
        Some((isa, map)) => {
            gather_rows(
                x,
                rows,
                next,
                bx.as_mut_slice(),
                Some((isa, map.row_words_mut(rows.len(), x.cols()))),
                threads,
            );
            map.publish();
        }
        None => gather_rows(x, rows, next, bx.as_mut_slice(), None, threads),
    }
}

/// The targets of the samples `rows`, copied into the batch buffers.
fn batch_targets<'b>(targets: Targets<'_>, rows: &[usize], bc: &'b mut Vec<usize>, bv: &'b mut Matrix) -> Targets<'b> {
    match targets {
        Targets::Classes(c) => {
            bc.clear();
            bc.extend(rows.iter().map(|&r| c[r]));
            Targets::Classes(bc)
        }
        Targets::Values(v) => {
            bv.resize(rows.len(), v.cols());
            for (dst, &r) in rows.iter().enumerate() {
                bv.row_mut(dst).copy_from_slice(v.row(r));
            }
            Targets::Values(bv.view())
        }
    }
}

/// The most parts a batch is gathered in (their slices live in an array on the stack:
/// no allocation per step).
const GATHER_PARTS: usize = 8;
/// The fewest rows worth a part of their own.
const GATHER_ROWS_PER_PART: usize = 8;

/// Writes the samples `rows` of `x` into `out` and prefetches the samples `next`; with
/// `map`, also the bits of each row's nonzeros into its words, on that path's vectors
/// ([`Inputs::gather_mapped`]).
///
/// Inside a region, part `t` of the rows (whole rows, contiguous) is gathered by
/// region thread `t`, which then prefetches part `t` of `next`: the thread that
/// will gather a row next step is the one that loaded it, so the prefetch lands in
/// the cache that uses it and the prefetch misses are split over the cores like the
/// gather's (a prefetch of the whole next batch by one thread measured slower on two
/// threads than none at all). Outside a region the parts go over the pool and the
/// calling thread prefetches.
fn gather_rows(
    x: impl Inputs,
    rows: &[usize],
    next: &[usize],
    out: &mut [f32],
    map: Option<(Isa, &mut [u64])>,
    threads: usize,
) {
    let cols = x.cols();
    let wpr = words_per_row(cols);
    let (isa, mut words) = match map {
        Some((isa, words)) => (Some(isa), words),
        None => (None, &mut [][..]),
    };
    let parts = threads.min(GATHER_PARTS).min(rows.len() / GATHER_ROWS_PER_PART).max(1);
    let part = |len: usize, t: usize| t * len / parts..(t + 1) * len / parts;
    if parts > 1 && cols > 0 {
        // One lock per part, never contended: how a `Fn + Sync` task gets its own
        // disjoint pieces of `out` and the words without unsafe code or an allocation.
        type Part<'o> = Mutex<(&'o mut [f32], &'o mut [u64])>;
        let mut slices: [Part<'_>; GATHER_PARTS] = std::array::from_fn(|_| Mutex::new((&mut [][..], &mut [][..])));
        let mut remaining = out;
        for (t, slot) in slices.iter_mut().enumerate().take(parts) {
            let n = part(rows.len(), t).len();
            let (mine, tail) = std::mem::take(&mut remaining).split_at_mut(n * cols);
            let (my_words, words_tail) =
                std::mem::take(&mut words).split_at_mut(if isa.is_some() { n * wpr } else { 0 });
            *slot.get_mut().unwrap_or_else(|e| e.into_inner()) = (mine, my_words);
            (remaining, words) = (tail, words_tail);
        }
        let task = |t: usize| {
            let mut mine = slices[t].lock().unwrap_or_else(|e| e.into_inner());
            let (out, words) = &mut *mine;
            gather_mapped(x, &rows[part(rows.len(), t)], out, isa, words);
            x.prefetch(&next[part(next.len(), t)]);
        };
        if crate::runtime::region::share(parts, &task) {
            return;
        }
        // Not in a region: over the pool, and one thread prefetches (no thread would
        // gather what it prefetched).
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(|t| {
            let mut mine = slices[t].lock().unwrap_or_else(|e| e.into_inner());
            let (out, words) = &mut *mine;
            gather_mapped(x, &rows[part(rows.len(), t)], out, isa, words);
        });
        x.prefetch(next);
        return;
    }
    gather_mapped(x, rows, out, isa, words);
    x.prefetch(next);
}

/// `x.gather(rows, out)`, and with `isa` the words of each row's nonzeros into `words`
/// ([`Inputs::gather_mapped`]).
fn gather_mapped(x: impl Inputs, rows: &[usize], out: &mut [f32], isa: Option<Isa>, words: &mut [u64]) {
    match isa {
        Some(isa) => x.gather_mapped(rows, out, isa, words, Sealed(())),
        None => x.gather(rows, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Loss, Optimizer};

    #[test]
    fn the_next_batch_is_gathered_beside_steps_whose_upper_layers_are_small() {
        let model = |widths: &[usize]| {
            let mut b = Sequential::builder(784);
            for &w in widths {
                b = b.dense(w).relu();
            }
            b.dense(10).build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1)).unwrap()
        };
        let mnist = model(&[128, 64]);
        // From the first batch whose first-layer products split (2 × 2¹⁸ multiply-adds).
        assert!(!mnist.gathers_beside(5) && mnist.gathers_beside(6) && mnist.gathers_beside(128));
        // Upper layers too small to hide a gather, or large enough to split themselves.
        assert!(!model(&[32, 32]).gathers_beside(128));
        assert!(!model(&[512, 512]).gathers_beside(128) && model(&[1024]).gathers_beside(128));
        assert!(!model(&[256, 128]).gathers_beside(128) && model(&[256, 128]).gathers_beside(32));
        // A first layer that is not Dense: nothing splits.
        let dropout_first = Sequential::builder(784)
            .dropout(0.1)
            .dense(128)
            .relu()
            .dense(10)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
            .unwrap();
        assert!(!dropout_first.gathers_beside(128));
    }

    /// The products of the first layer get the map a step is given: one that is not the
    /// batch's trips their debug check (the only reader of the map), so a step that
    /// dropped it on the way would pass here and make the gather's map for nothing.
    #[test]
    #[cfg(debug_assertions)]
    fn a_step_hands_its_map_to_the_first_layers_products() {
        use crate::gemm::nonzero_map::NonzeroMap;
        let mut m = Sequential::builder(70)
            .seed(1)
            .dense(40)
            .relu()
            .dense(3)
            .build(Loss::SoftmaxCrossEntropy, Optimizer::sgd(0.1))
            .unwrap();
        let x = Matrix::from_fn(16, 70, |i, j| f32::from((i + j) % 3 == 0));
        let other = Matrix::from_fn(16, 70, |i, j| f32::from((i + j) % 3 == 1));
        let (map, wrong) = (NonzeroMap::of(x.view()), NonzeroMap::of(other.view()));
        let y: Vec<usize> = (0..16).map(|i| i % 3).collect();
        for _ in 0..2 {
            m.step_prechecked(x.view(), Some(map.view()), Targets::Classes(&y), 1, None, None).unwrap();
        }
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.step_prechecked(x.view(), Some(wrong.view()), Targets::Classes(&y), 1, None, None)
        }));
        assert!(step.is_err(), "a map that is not the batch's reached no product");
    }
}
