//! Choosing, while `fit` runs, how a training step uses the threads it has.
//!
//! On a quiet machine two threads beat one (the GEMM tiles split between them). On a
//! busy one they can lose badly: if another process shares a core with one of the
//! workers, every fork-join of a step waits for that worker's next time slice, and a
//! step can take several times as long on 2 threads as on 1. The governor
//! measures instead of guessing. It times steps in three modes:
//!
//! - [`Mode::Parallel`]: the step's GEMMs and passes split over the pool;
//! - [`Mode::SerialHere`]: the whole step on the thread running the loop, the other
//!   workers parked;
//! - [`Mode::SerialThere`]: the whole step handed to another worker (the loop's own
//!   core may be the busy one, and a pinned thread cannot move off it).
//!
//! It probes every mode for a window of steps, keeps the fastest for a long period, and
//! probes again when that period ends or as soon as the kept mode's steps get much
//! slower than when it was chosen (a neighbour started). Results do not depend on the
//! mode: the GEMMs are bit-identical for any thread count and the other passes are
//! elementwise, so switching changes only the time.

/// Whether `FUSEGRAD_GOVERNOR_LOG` is set: then every decision is printed to stderr
/// (a diagnostic for "why is my 2-thread run slow": which mode, at what speed).
fn log_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUSEGRAD_GOVERNOR_LOG").is_some_and(|v| !v.is_empty()))
}

/// How a training step uses the pool's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Split over every thread of the pool.
    Parallel,
    /// On the thread running the training loop; the others park.
    SerialHere,
    /// On one other worker of the pool; the loop's thread waits, yielding its core.
    SerialThere,
}

/// Steps per measurement window; the first step of each window is not counted (it pays
/// for waking or parking workers after a switch). A window's figure is the mean time
/// per sample of the rest without its slowest step: a mean, because on a core shared
/// with another process the steps alternate between fast and slow with the scheduler's
/// time slices (≈ 4 ms), and only the mean says what a mode costs in the long run;
/// without the slowest, so that one hiccup does not decide. 24 steps of an MNIST batch
/// span several time slices.
pub(crate) const WINDOW: usize = 24;
/// ... or fewer, once at least [`MIN_WINDOW_STEPS`] counted steps have taken this long
/// (seconds): a dozen time slices. Without it, the steps of a wide network at a large
/// batch (0.1 s each on one thread) spent 5 s in the serial modes' windows of the
/// first probe, which on a short run was most of its time.
pub(crate) const WINDOW_SECONDS: f64 = 0.05;
/// The fewest counted steps of a window cut short by [`WINDOW_SECONDS`].
pub(crate) const MIN_WINDOW_STEPS: usize = 4;
/// Full windows' worth of steps (`KEEP_WINDOWS · WINDOW`) the chosen mode is kept before
/// every mode is probed again: about two MNIST epochs at batch 128, so that probing the
/// slower modes costs ≈ 1.5% on a quiet machine.
pub(crate) const KEEP_WINDOWS: usize = 40;
/// And at least this long (the kept mode's steps, in seconds): a probe costs a few ms
/// whatever the step (the working set moves to the other core and back), which short
/// steps (a batch of one: ≈ 7 µs) would otherwise pay every few ms.
pub(crate) const MIN_KEEP_SECONDS: f64 = 0.25;
/// A kept mode whose figure exceeds its expected one by this factor in two windows in
/// a row triggers an early probe.
pub(crate) const DEGRADED: f64 = 1.5;
/// Parallel is kept unless a serial mode is faster by more than this factor: noise
/// must not switch a quiet machine to one thread.
pub(crate) const PREFER_PARALLEL: f64 = 0.97;
/// A probe window is cut short once 3 of its counted steps average this many times the
/// best mode's figure so far, or one step four times it: on a busy machine a full
/// window of a slow mode costs more than the rest of the probe.
pub(crate) const HOPELESS: f64 = 2.0;
/// When a probe keeps the same mode, the next keep period doubles, up to this many
/// times [`KEEP_WINDOWS`]: a steady machine is probed less and less often.
pub(crate) const MAX_KEEP_FACTOR: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Measuring `modes[order[next]]`; `figures[i]` is that of `modes[order[i]]` for
    /// `i < next` (fixed arrays: deciding never allocates, so neither does a step). A
    /// re-probe measures the kept mode first, so that a hopeless one can be cut short.
    Probe { next: usize, order: [usize; 3], figures: [f64; 3] },
    /// Running `mode`, expected at `baseline` seconds per sample (the probe's figure,
    /// then a moving average of the windows since), for `steps_left` more steps (a
    /// keep period is counted in steps of full windows, so that windows cut short by
    /// [`WINDOW_SECONDS`] do not make probes more frequent);
    /// `slow` tells whether the last window was over [`DEGRADED`] × `baseline`;
    /// `runner_up` is the second-best figure of the probe that chose it; `seconds` is
    /// the time its steps have taken so far.
    Keep { mode: Mode, baseline: f64, steps_left: usize, slow: bool, runner_up: f64, seconds: f64 },
}

/// The decision state. Feed it the time of every step with [`Governor::record`]; ask it
/// the mode of the next step with [`Governor::mode`].
#[derive(Clone, Debug)]
pub(crate) struct Governor {
    /// The modes it chooses from (static: a governor allocates only its window).
    modes: &'static [Mode],
    phase: Phase,
    /// Seconds per sample of the current window's counted steps.
    window: Vec<f64>,
    /// Steps seen in the current window, counted or not.
    seen: usize,
    /// Seconds the current window's counted steps took.
    window_seconds: f64,
    /// A window ends once its counted steps took this long ([`WINDOW_SECONDS`]).
    window_limit: f64,
    /// The mode the last probe chose, and the length of the keep period after it.
    last_choice: Option<Mode>,
    keep_windows: usize,
}

impl Governor {
    /// A governor for a pool of `threads` threads: with one there is nothing to choose.
    pub(crate) fn new(threads: usize) -> Governor {
        if threads <= 1 {
            return Governor::fixed(Mode::SerialHere);
        }
        Governor {
            modes: &[Mode::Parallel, Mode::SerialHere, Mode::SerialThere],
            // The serial modes first: on a busy machine the parallel window can then be
            // cut short as hopeless instead of running in full.
            phase: Phase::Probe { next: 0, order: [1, 2, 0], figures: [f64::INFINITY; 3] },
            window: Vec::with_capacity(WINDOW),
            seen: 0,
            window_seconds: 0.0,
            window_limit: WINDOW_SECONDS,
            last_choice: None,
            keep_windows: KEEP_WINDOWS,
        }
    }

    /// A governor that always answers `mode`.
    pub(crate) fn fixed(mode: Mode) -> Governor {
        let phase = Phase::Keep {
            mode,
            baseline: f64::INFINITY,
            steps_left: usize::MAX,
            slow: false,
            runner_up: f64::INFINITY,
            seconds: 0.0,
        };
        let modes: &'static [Mode] = match mode {
            Mode::Parallel => &[Mode::Parallel],
            Mode::SerialHere => &[Mode::SerialHere],
            Mode::SerialThere => &[Mode::SerialThere],
        };
        Governor {
            modes,
            phase,
            window: Vec::new(),
            seen: 0,
            window_seconds: 0.0,
            window_limit: WINDOW_SECONDS,
            last_choice: None,
            keep_windows: usize::MAX,
        }
    }

    /// The mode the next step should run in.
    pub(crate) fn mode(&self) -> Mode {
        match &self.phase {
            Phase::Probe { next, order, .. } => self.modes[order[*next]],
            Phase::Keep { mode, .. } => *mode,
        }
    }

    /// Records the last step: it took `seconds` for `samples` samples (compared per
    /// sample, so that a short last batch compares fairly).
    pub(crate) fn record(&mut self, seconds: f64, samples: usize) {
        if self.modes.len() == 1 {
            return;
        }
        let seconds_per_sample = seconds / samples.max(1) as f64;
        if let Phase::Keep { seconds: kept, .. } = &mut self.phase {
            *kept += seconds;
        }
        self.seen += 1;
        if self.seen > 1 {
            self.window.push(seconds_per_sample);
            self.window_seconds += seconds;
        }
        let hopeless = match self.phase {
            Phase::Probe { next, figures, .. } if next > 0 && !self.window.is_empty() => {
                let best = figures[..next].iter().copied().fold(f64::INFINITY, f64::min);
                let mean = self.window.iter().sum::<f64>() / self.window.len() as f64;
                (self.window.len() >= 3 && mean > best * HOPELESS) || mean > best * 2.0 * HOPELESS
            }
            _ => false,
        };
        let long_enough = self.window.len() >= MIN_WINDOW_STEPS && self.window_seconds >= self.window_limit;
        if self.seen < WINDOW && !hopeless && !long_enough {
            return;
        }
        let window_figure = figure(&self.window);
        let steps = self.seen;
        self.window.clear();
        self.seen = 0;
        self.window_seconds = 0.0;
        self.phase = match self.phase {
            Phase::Probe { next, order, mut figures } => {
                figures[next] = window_figure;
                if next + 1 < self.modes.len() {
                    Phase::Probe { next: next + 1, order, figures }
                } else {
                    let probed: [Mode; 3] = std::array::from_fn(|i| self.modes[order[i] % self.modes.len()]);
                    let (mode, baseline) = choose(&probed[..self.modes.len()], &figures);
                    if log_enabled() {
                        let seen: Vec<String> = probed
                            .iter()
                            .zip(figures)
                            .map(|(m, t)| format!("{m:?} {:.2} µs/sample", t * 1e6))
                            .collect();
                        eprintln!("fusegrad governor: probed {}; keeping {mode:?}", seen.join(", "));
                    }
                    self.keep_windows = if self.last_choice == Some(mode) {
                        (self.keep_windows * 2).min(KEEP_WINDOWS * MAX_KEEP_FACTOR)
                    } else {
                        KEEP_WINDOWS
                    };
                    self.last_choice = Some(mode);
                    let runner_up = probed[..self.modes.len()]
                        .iter()
                        .zip(figures)
                        .filter(|(m, _)| **m != mode)
                        .fold(f64::INFINITY, |b, (_, t)| b.min(t));
                    Phase::Keep {
                        mode,
                        baseline,
                        steps_left: self.keep_windows.saturating_mul(WINDOW),
                        slow: false,
                        runner_up,
                        seconds: 0.0,
                    }
                }
            }
            Phase::Keep { mode, baseline, steps_left, slow, runner_up, seconds } => {
                let slow_now = window_figure > baseline * DEGRADED;
                // The kept mode's running average has fallen behind what the runner-up
                // measured: its probe figure was a lucky stretch.
                let overtaken = moving_average(baseline, window_figure) > runner_up * 1.1;
                let period_over = steps_left <= steps && seconds >= MIN_KEEP_SECONDS;
                if (slow && slow_now) || overtaken || period_over {
                    if log_enabled() {
                        let why = if period_over {
                            "period over"
                        } else if overtaken {
                            "overtaken by the runner-up's figure"
                        } else {
                            "slowed down"
                        };
                        eprintln!(
                            "fusegrad governor: {mode:?} at {:.2} µs/sample (chosen at {:.2}): {why}, probing",
                            window_figure * 1e6,
                            baseline * 1e6
                        );
                    }
                    // The kept mode is not measured again: its figure is the average of
                    // every window it ran (a fresh window of it could land in a lucky
                    // stretch of time slices). The others are probed in their usual
                    // order, and cut short against it when hopeless.
                    let kept = self.modes.iter().position(|&m| m == mode).unwrap_or(0);
                    let mut order = [kept, 0, 0];
                    for (slot, i) in order[1..].iter_mut().zip((0..3).filter(|&i| i != kept)) {
                        *slot = i;
                    }
                    let average = moving_average(baseline, window_figure);
                    Phase::Probe { next: 1, order, figures: [average, f64::INFINITY, f64::INFINITY] }
                } else {
                    // The expected figure follows every window (slow ones too: time
                    // slices make a mode's steps alternate); a sudden slowdown outruns
                    // the average and is caught above.
                    let baseline = moving_average(baseline, window_figure);
                    Phase::Keep {
                        mode,
                        baseline,
                        steps_left: steps_left.saturating_sub(steps).max(1),
                        slow: slow_now,
                        runner_up,
                        seconds,
                    }
                }
            }
        };
    }
}

/// The fastest mode, with parallel kept unless a serial one beats it clearly.
fn choose(modes: &[Mode], figures: &[f64; 3]) -> (Mode, f64) {
    let measured = || modes.iter().copied().zip(figures.iter().copied());
    let best = measured().fold((modes[0], f64::INFINITY), |b, m| if m.1 < b.1 { m } else { b });
    match measured().find(|(m, _)| *m == Mode::Parallel) {
        Some((_, parallel)) if best.1 >= parallel * PREFER_PARALLEL => (Mode::Parallel, parallel),
        _ => best,
    }
}

/// The expected figure of a kept mode after one more window: an exponential moving
/// average, so that a lucky probe window fades and one slow window does not decide.
fn moving_average(expected: f64, window: f64) -> f64 {
    0.8 * expected + 0.2 * window
}

/// A window's figure: the mean of its counted steps without the slowest one (the
/// mean of all when there are fewer than three).
fn figure(v: &[f64]) -> f64 {
    let (sum, max) = v.iter().fold((0.0, f64::NEG_INFINITY), |(s, m), &x| (s + x, f64::max(m, x)));
    if v.len() >= 3 {
        (sum - max) / (v.len() - 1) as f64
    } else if v.is_empty() {
        f64::INFINITY
    } else {
        sum / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `steps` steps, timing each by `cost(mode)`; returns the mode of every step.
    fn run(g: &mut Governor, steps: usize, mut cost: impl FnMut(Mode) -> f64) -> Vec<Mode> {
        (0..steps)
            .map(|_| {
                let m = g.mode();
                g.record(cost(m), 1);
                m
            })
            .collect()
    }

    /// A governor of 2 threads whose windows always run WINDOW steps (the tests below
    /// time steps in arbitrary units, often 1 s).
    fn counting_steps() -> Governor {
        Governor { window_limit: f64::INFINITY, ..Governor::new(2) }
    }

    fn time(parallel: f64, here: f64, there: f64) -> impl Fn(Mode) -> f64 {
        move |m| match m {
            Mode::Parallel => parallel,
            Mode::SerialHere => here,
            Mode::SerialThere => there,
        }
    }

    #[test]
    fn one_thread_never_probes() {
        let mut g = Governor::new(1);
        assert!(run(&mut g, 1000, time(1.0, 1.0, 1.0)).iter().all(|&m| m == Mode::SerialHere));
    }

    #[test]
    fn a_quiet_machine_keeps_parallel_and_probes_rarely() {
        let mut g = counting_steps();
        let modes = run(&mut g, 10 * WINDOW * KEEP_WINDOWS, time(1.0, 1.6, 1.6));
        // The first probe tries each mode once, the serial ones first, then parallel is kept.
        assert_eq!(
            &modes[..3 * WINDOW],
            &[[Mode::SerialHere; WINDOW], [Mode::SerialThere; WINDOW], [Mode::Parallel; WINDOW]].concat()[..]
        );
        let serial = modes.iter().filter(|&&m| m != Mode::Parallel).count();
        let share = serial as f64 / modes.len() as f64;
        assert!(share < 0.03, "{:.1}% of steps spent probing the serial modes", 100.0 * share);
    }

    #[test]
    fn a_busy_core_switches_to_the_free_one_and_back() {
        let mut g = counting_steps();
        // Quiet: parallel wins.
        run(&mut g, 3 * WINDOW, time(1.0, 1.6, 1.6));
        assert_eq!(g.mode(), Mode::Parallel);
        // A neighbour starts on the loop's core: parallel 10× slower, here 2×, there 1.6×.
        let after = run(&mut g, 6 * WINDOW, time(10.0, 3.2, 1.6));
        assert_eq!(g.mode(), Mode::SerialThere, "modes after the load started: {after:?}");
        // Detected after one window (its average passes the runner-up's figure); the
        // probe then measures only the others (parallel's figure is its average).
        assert_eq!(after.iter().filter(|&&m| m == Mode::Parallel).count(), WINDOW, "{after:?}");
        // The neighbour leaves: parallel wins again at the next periodic probe.
        run(&mut g, WINDOW * (KEEP_WINDOWS + 4), time(1.0, 1.6, 1.6));
        assert_eq!(g.mode(), Mode::Parallel);
    }

    #[test]
    fn short_steps_are_probed_no_more_often_than_the_keep_time() {
        // Steps of 10 µs (a batch of one): 40 windows take 10 ms, far less than
        // MIN_KEEP_SECONDS, so the period lasts until the kept mode has run that long.
        let mut g = Governor::new(2);
        let step = 1e-5;
        let cost = |m: Mode| step * if m == Mode::Parallel { 1.0 } else { 1.6 };
        run(&mut g, 3 * WINDOW, cost);
        assert_eq!(g.mode(), Mode::Parallel);
        let steps_in_keep_time = (MIN_KEEP_SECONDS / step) as usize;
        let kept = run(&mut g, steps_in_keep_time - 2 * WINDOW, cost);
        assert!(kept.iter().all(|&m| m == Mode::Parallel), "probed within {MIN_KEEP_SECONDS} s");
        let later = run(&mut g, 4 * WINDOW, cost);
        assert!(later.contains(&Mode::SerialHere), "no probe after {MIN_KEEP_SECONDS} s: {later:?}");
    }

    #[test]
    fn long_steps_are_probed_in_short_windows() {
        // Steps of 0.1 s on two threads, 0.18 s on one (a wide network at batch 512):
        // each window ends after its uncounted step and MIN_WINDOW_STEPS counted ones,
        // so the first probe takes 3 · 5 steps, not 3 · 24, and parallel is kept.
        let mut g = Governor::new(2);
        let w = MIN_WINDOW_STEPS + 1;
        let modes = run(&mut g, 3 * w + 30 * w, time(0.1, 0.18, 0.18));
        assert_eq!(
            &modes[..3 * w],
            &[vec![Mode::SerialHere; w], vec![Mode::SerialThere; w], vec![Mode::Parallel; w]].concat()[..]
        );
        // Kept for KEEP_WINDOWS windows (of w steps now).
        assert!(modes[3 * w..].iter().all(|&m| m == Mode::Parallel), "{modes:?}");
        // And a busy core is still caught: parallel slows to 0.5 s a step.
        let later = run(&mut g, 8 * w, time(0.5, 0.18, 0.3));
        assert_eq!(g.mode(), Mode::SerialHere, "{later:?}");
    }

    #[test]
    fn the_busy_core_may_be_the_other_one() {
        let mut g = counting_steps();
        run(&mut g, 3 * WINDOW, time(1.0, 1.6, 1.6));
        run(&mut g, 6 * WINDOW, time(10.0, 1.6, 3.2));
        assert_eq!(g.mode(), Mode::SerialHere);
    }

    #[test]
    fn noise_does_not_leave_parallel() {
        // Serial only 2% faster (noise): parallel stays.
        let mut g = counting_steps();
        run(&mut g, 3 * WINDOW, time(1.0, 0.98, 0.99));
        assert_eq!(g.mode(), Mode::Parallel);
        // One slow step per window (a hiccup) does not trigger a probe.
        let mut i = 0;
        let modes = run(&mut g, 20 * WINDOW, |_| {
            i += 1;
            if i % WINDOW == 5 {
                50.0
            } else {
                1.0
            }
        });
        assert!(modes.iter().all(|&m| m == Mode::Parallel));
    }

    #[test]
    fn hopeless_probes_end_early_and_steady_machines_are_probed_less() {
        let mut g = counting_steps();
        // Busy: parallel 10× slower. The first probe measures the serial modes, then cuts
        // parallel short after 1 + 1 steps (one step over 4× the best).
        let first = run(&mut g, 2 * WINDOW + 2, time(10.0, 1.6, 1.0));
        assert_eq!(first.iter().filter(|&&m| m == Mode::Parallel).count(), 2);
        assert_eq!(g.mode(), Mode::SerialThere);
        // Each later probe of parallel stops as early; and the keep periods double
        // while the choice holds: 40, 80, 160, 160 windows.
        let modes = run(&mut g, WINDOW * (40 + 80 + 160 + 160) + 8 * WINDOW, time(10.0, 1.6, 1.0));
        let parallel_runs: Vec<usize> =
            modes.chunk_by(|a, b| a == b).filter(|run| run[0] == Mode::Parallel).map(|run| run.len()).collect();
        assert_eq!(parallel_runs, vec![2, 2, 2, 2], "parallel probes: {parallel_runs:?}");
    }

    #[test]
    fn time_sliced_steps_are_judged_by_their_mean() {
        // A helper sharing its core: parallel steps alternate between 1 and 8 (mean
        // 4.5, median anywhere between); the loop's own core is free: serial here 3.
        let mut g = counting_steps();
        let mut i = 0;
        run(&mut g, 10 * WINDOW, |m| {
            i += 1;
            match m {
                Mode::Parallel if i % 2 == 0 => 8.0,
                Mode::Parallel => 1.0,
                Mode::SerialHere => 3.0,
                Mode::SerialThere => 30.0,
            }
        });
        assert_eq!(g.mode(), Mode::SerialHere);
    }

    #[test]
    fn a_lucky_probe_is_corrected_by_the_running_average() {
        // Parallel probes at 1.0 (its helper had rested during the serial windows),
        // then runs at a mean of 2.0 (steps of 1 and 3); serial here steady at 1.5.
        let mut g = counting_steps();
        let mut parallel_steps = 0;
        let modes = run(&mut g, 20 * WINDOW, |m| match m {
            Mode::Parallel => {
                parallel_steps += 1;
                // Its probe window (the first WINDOW parallel steps) is the lucky one.
                if parallel_steps > WINDOW && parallel_steps % 2 == 0 {
                    3.0
                } else {
                    1.0
                }
            }
            Mode::SerialHere => 1.5,
            Mode::SerialThere => 5.0,
        });
        let runs: Vec<(Mode, usize)> = modes.chunk_by(|a, b| a == b).map(|r| (r[0], r.len())).collect();
        assert_eq!(g.mode(), Mode::SerialHere, "{runs:?}");
        // Within a few windows, not at the end of the keep period.
        assert!(runs[2].1 <= 4 * WINDOW, "{runs:?}");
    }

    #[test]
    fn the_first_step_of_a_window_is_not_counted() {
        // A switch's first step pays for waking workers: 100× slower, ignored.
        let mut g = counting_steps();
        let mut n = 0;
        run(&mut g, 3 * WINDOW, |m| {
            n += 1;
            let first = (n - 1) % WINDOW == 0;
            match (m, first) {
                (_, true) => 100.0,
                (Mode::Parallel, _) => 1.0,
                _ => 1.6,
            }
        });
        assert_eq!(g.mode(), Mode::Parallel);
    }
}
