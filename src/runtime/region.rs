//! One parallel region per step: the thread that runs a training step (the leader)
//! and `threads − 1` workers of the pool (the helpers) stay together for the whole
//! step, and every GEMM of the step shares its tasks among them statically — task
//! `t` runs on thread `t mod threads`, the same thread each step — with one spin
//! barrier at its end, instead of a rayon fork-join per product (OpenMP's parallel
//! region with `schedule(static)` loops).
//!
//! The helpers are rayon jobs of the pool: a [`Team`] spawns them when a region opens
//! and, after it closes, they keep spinning for [`LINGER`] (OpenMP's "blocktime"), so
//! that the next step of a loop calling `train_step` per batch finds them awake; then
//! they park (in a pool of the team's own, woken by the next region without a spawn,
//! which would allocate) or leave (a shared pool). While
//! they wait inside a region they also run any rayon work of their pool (the passes
//! that still use `rayon::join`); between regions they leave it to the pool's other
//! workers. Results never depend on any of this: the GEMM tiles are computed
//! alike on any thread (see `gemm::driver`).

use std::any::Any;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long helpers keep spinning after their region closes, waiting for the next.
pub(crate) const LINGER: Duration = Duration::from_millis(2);
/// How long a region waits for helpers it has just spawned to start; past it (the
/// pool's workers are busy with other work), and while they have still not started,
/// regions run on the leader alone.
const START_TIMEOUT: Duration = Duration::from_millis(100);

/// Helpers spawned so far, by every team (see [`spawns`]).
static SPAWNS: AtomicUsize = AtomicUsize::new(0);

/// Helpers spawned so far by every team of the process: each spawn is a rayon job, one
/// small allocation. Teams of a pool of their own spawn once; teams of a shared pool
/// again each time their helpers left it idle.
pub(crate) fn spawns() -> usize {
    SPAWNS.load(Ordering::Relaxed)
}

/// A job as the helpers see it: a closure of the thread index (1..threads), borrowed
/// from the leader's stack, its lifetime erased (see [`Shared::run`]).
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync + 'static));

/// Who is in the team; changed only when a region opens or a helper leaves.
struct Members {
    /// A leader is inside a region.
    open: bool,
    /// `spawned[i]`: helper `i` has been spawned and has not left (index 0 is the leader).
    spawned: Vec<bool>,
    /// Helpers running their loop (parked ones included).
    running: usize,
    /// `parked[i]`: helper `i`, of a pool of the team's own, sleeps between regions
    /// until a leader unparks it (taking the handle).
    parked: Vec<Option<std::thread::Thread>>,
}

struct Shared {
    threads: usize,
    /// Bumped by the leader to post a job; helpers run the job when it changes.
    epoch: AtomicUsize,
    /// The posted job: written by the leader before it bumps `epoch` (Release), read by
    /// helpers after they see the bump (Acquire), not written again before every
    /// helper has counted itself out of `remaining`.
    job: UnsafeCell<Option<JobRef>>,
    /// Helpers that have not finished the posted job.
    remaining: AtomicUsize,
    /// Bumped when a region opens and when it closes: a helper's linger starts over
    /// (so it counts from the region's end, not from its last job, which a long
    /// serial stretch of the step may have left far behind).
    regions: AtomicUsize,
    /// A region is open and all its helpers have started: only then do waiting helpers
    /// run other rayon work of the pool (the passes of the step that still fork).
    /// Between regions a job of the pool may be the next call's, which a helper would
    /// then run alone; while the leader waits for helpers to start, the job may be a
    /// sibling's helper loop, which would leave at once (see `serve`).
    started: AtomicBool,
    /// Spin while waiting (else sleep a millisecond at a time: the governor's serial mode).
    hot: AtomicBool,
    /// The team was dropped: helpers leave.
    retired: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    members: Mutex<Members>,
}

// SAFETY: `job` is the only field that is not Sync by itself; it is written by the
// leader only while no helper reads it (see the field's doc) and read by helpers only
// between the epoch bump that published it and their decrement of `remaining`.
unsafe impl Sync for Shared {}
// SAFETY: a `JobRef` points to a `Sync` closure; sending the pointer is sending `&F`.
unsafe impl Send for Shared {}

impl Shared {
    fn members(&self) -> MutexGuard<'_, Members> {
        // A panic while holding the lock cannot leave the counts half-changed.
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts `job` to every helper, runs `job(0)` here (or, when `leader_waits`, only
    /// waits, yielding this core), and returns once every helper has finished it;
    /// a panic of any thread is resumed here after that.
    fn run(&self, job: &(dyn Fn(usize) + Sync), leader_waits: bool) {
        self.run_beside(job, leader_waits, || {
            if !leader_waits {
                job(0);
            }
        })
    }

    /// Posts `job` to every helper and runs `f` here meanwhile; returns `f`'s result
    /// once every helper has finished the job (waiting `yielding` this core, or
    /// spinning), a panic of any thread resumed here after that.
    fn run_beside<R>(&self, job: &(dyn Fn(usize) + Sync), yielding: bool, f: impl FnOnce() -> R) -> R {
        // SAFETY: the `'static` is a lie told only to the helpers, which call the job
        // between the epoch bump below and their decrement of `remaining`; this function
        // does not return, nor unwind (`WaitForHelpers` waits on drop), before
        // `remaining` is 0, so the closure outlives every call.
        let erased: JobRef = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), JobRef>(job) };
        // SAFETY: no helper reads `job` now: the previous job's `remaining` reached 0
        // before the previous `run_beside` returned, and helpers read it only after a bump.
        unsafe { *self.job.get() = Some(erased) };
        self.remaining.store(self.threads - 1, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Release);
        let wait = WaitForHelpers { shared: self, yielding };
        let r = f();
        drop(wait);
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
        r
    }
}

/// Runs `job` on helper 1 of the region this thread leads while this thread runs `f`,
/// and returns `f`'s result once both are done: work for a helper that would otherwise
/// wait through a serial stretch of the step (the next batch's gather). Inside `f`
/// [`share`] declines (the helper is busy), so `f`'s passes run their own way, best on
/// one thread. Without a region (or inside one of its jobs), runs `job` and then `f`
/// here.
pub(crate) fn beside<R>(job: &(dyn Fn() + Sync), f: impl FnOnce() -> R) -> R {
    let shared = match CURRENT.get() {
        // SAFETY: as in `share`.
        Some(ptr) if !IN_JOB.get() => unsafe { ptr.as_ref() },
        _ => {
            job();
            return f();
        }
    };
    let helper_job = |index: usize| {
        if index == 1 {
            job();
        }
    };
    as_job(|| shared.run_beside(&helper_job, false, f))
}

/// Runs `f` marked as inside a job of this thread's region (also while unwinding):
/// a [`share`] or [`beside`] from within then declines.
fn as_job<R>(f: impl FnOnce() -> R) -> R {
    IN_JOB.set(true);
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_JOB.set(false);
        }
    }
    let _reset = Reset;
    f()
}

/// Waits, when dropped (also while unwinding), until every helper has finished the job.
struct WaitForHelpers<'a> {
    shared: &'a Shared,
    yielding: bool,
}

impl Drop for WaitForHelpers<'_> {
    fn drop(&mut self) {
        let mut spins = 0u32;
        while self.shared.remaining.load(Ordering::Acquire) != 0 {
            spins += 1;
            if self.yielding || spins > 4096 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// A leader's set of helpers for regions of `threads` threads, kept between regions.
/// Dropping it sends the helpers home.
pub(crate) struct Team {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Team({} threads)", self.shared.threads)
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.retired.store(true, Ordering::Release);
        for helper in self.shared.members().parked.iter_mut().filter_map(Option::take) {
            helper.unpark();
        }
    }
}

/// Where a team's helpers are spawned.
pub(crate) enum Spawn<'a> {
    /// Into this pool, the team's own: between regions its helpers park instead of
    /// leaving, so that a later region wakes them without spawning (which allocates).
    Pool(&'a rayon::ThreadPool),
    /// Into the current rayon pool (the global one outside a pool).
    Current,
}

thread_local! {
    /// The region this thread leads, and whether it is running one of its jobs (or
    /// work of its own beside a helper's, see [`beside`]).
    static CURRENT: Cell<Option<NonNull<Shared>>> = const { Cell::new(None) };
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// This thread is a helper's loop (so a nested one must not start).
    static SERVING: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// Threads of its regions, the leader included.
    pub(crate) fn threads(&self) -> usize {
        self.shared.threads
    }

    /// A team for regions of `threads` threads (the leader and `threads − 1` helpers).
    pub(crate) fn new(threads: usize) -> Team {
        let threads = threads.max(1);
        Team {
            shared: Arc::new(Shared {
                threads,
                epoch: AtomicUsize::new(0),
                job: UnsafeCell::new(None),
                remaining: AtomicUsize::new(0),
                regions: AtomicUsize::new(0),
                started: AtomicBool::new(false),
                hot: AtomicBool::new(true),
                retired: AtomicBool::new(false),
                panic: Mutex::new(None),
                members: Mutex::new(Members {
                    open: false,
                    spawned: vec![false; threads],
                    running: 0,
                    parked: vec![None; threads],
                }),
            }),
        }
    }

    /// Runs `f` as the leader of a region of this team's threads, spawning the helpers
    /// that are not already waiting. `f` gets the region, or `None` when the region
    /// cannot have its threads (another leader holds the team, this thread is already
    /// a leader or a helper, or the helpers did not start in time): then `f` should
    /// run on this thread alone.
    pub(crate) fn lead<R>(&self, spawn: Spawn<'_>, f: impl FnOnce(Option<&Region>) -> R) -> R {
        let shared = &*self.shared;
        if shared.threads == 1 || CURRENT.get().is_some() || SERVING.get() {
            return f(None);
        }
        let fresh;
        {
            let mut members = shared.members();
            if members.open {
                return f(None);
            }
            members.open = true;
            shared.regions.fetch_add(1, Ordering::Relaxed);
            shared.hot.store(true, Ordering::Release);
            let epoch = shared.epoch.load(Ordering::Acquire);
            fresh = members.running + 1 < shared.threads && members.spawned.iter().skip(1).any(|s| !s);
            for helper in members.parked.iter_mut().filter_map(Option::take) {
                helper.unpark();
            }
            let parks = matches!(spawn, Spawn::Pool(_));
            for index in 1..shared.threads {
                if !members.spawned[index] {
                    members.spawned[index] = true;
                    SPAWNS.fetch_add(1, Ordering::Relaxed);
                    let s = Arc::clone(&self.shared);
                    let helper = move || serve(s, index, epoch, parks);
                    match spawn {
                        Spawn::Pool(pool) => pool.spawn(helper),
                        Spawn::Current => rayon::spawn(helper),
                    }
                }
            }
        }
        let close = Close(shared);
        let start = Instant::now();
        while shared.members().running < shared.threads - 1 {
            // Helpers spawned by an earlier region that have still not started: the
            // pool is busy; do not wait for them again.
            if !fresh || start.elapsed() > START_TIMEOUT {
                drop(close);
                return f(None);
            }
            std::thread::yield_now();
        }
        shared.started.store(true, Ordering::Relaxed);
        CURRENT.set(Some(NonNull::from(shared)));
        let region = Region { shared };
        f(Some(&region))
    }
}

/// Closes the region when dropped (also while unwinding).
struct Close<'a>(&'a Shared);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        CURRENT.set(None);
        // Lingering helpers spin (and leave after LINGER), whatever the region left:
        // parked ones would look for the next region only every millisecond.
        self.0.hot.store(true, Ordering::Release);
        self.0.started.store(false, Ordering::Relaxed);
        self.0.regions.fetch_add(1, Ordering::Relaxed);
        self.0.members().open = false;
    }
}

/// An open region, as its leader sees it.
pub(crate) struct Region<'a> {
    shared: &'a Shared,
}

impl Region<'_> {
    /// Threads in the region, the leader included.
    pub(crate) fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Whether waiting helpers spin (hot) or sleep a millisecond at a time, leaving their
    /// cores to other processes (the governor's serial mode). Hot on opening.
    pub(crate) fn set_hot(&self, hot: bool) {
        self.shared.hot.store(hot, Ordering::Release);
    }

    /// Runs `f` once on every thread of the region, the leader included.
    pub(crate) fn on_every_thread(&self, f: impl Fn() + Sync) {
        self.shared.run(&|_| f(), false);
    }

    /// Runs `f` on helper 1 while this thread waits, yielding its core (the governor's
    /// mode for a busy leader's core). With one thread, runs it here.
    pub(crate) fn on_helper<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.shared.threads < 2 {
            return f();
        }
        let task = Mutex::new(Some(f));
        let out = Mutex::new(None);
        let job = |index: usize| {
            if index == 1 {
                if let Some(f) = task.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(f());
                }
            }
        };
        self.shared.run(&job, true);
        out.into_inner().unwrap_or_else(|e| e.into_inner()).expect("helper 1 ran the job")
    }
}

/// Runs `task(0..tasks)` over the region this thread leads, task `t` on thread
/// `t mod threads` (the leader is thread 0), and returns when all are done. Returns
/// false without running anything when this thread leads no region (or is inside one
/// of its own jobs): the caller then runs the tasks its own way.
pub(crate) fn share(tasks: usize, task: &(dyn Fn(usize) + Sync)) -> bool {
    let Some(ptr) = CURRENT.get() else { return false };
    if IN_JOB.get() {
        return false;
    }
    // SAFETY: `CURRENT` is set only by `Team::lead` on this thread, to a `Shared` kept
    // alive by that team for the whole region, and cleared (by `Close`) before it ends.
    let shared = unsafe { ptr.as_ref() };
    let threads = shared.threads;
    let job = |index: usize| {
        for t in (index..tasks).step_by(threads) {
            task(t);
        }
    };
    as_job(|| shared.run(&job, false));
    true
}

/// The threads of the region this thread leads, if any.
#[cfg(test)]
fn current_threads() -> Option<usize> {
    // SAFETY: as in `share`.
    CURRENT.get().map(|p| unsafe { p.as_ref() }.threads)
}

/// A helper's loop: runs posted jobs as thread `index` until the team retires, or its
/// region has been closed for [`LINGER`] (then, when it `parks`, it sleeps until the
/// next region instead of leaving); in between runs other rayon work of its pool,
/// spinning (or, cold, sleeping).
fn serve(shared: Arc<Shared>, index: usize, mut seen: usize, parks: bool) {
    if SERVING.get() {
        // A helper of another team picked this one up while waiting: leave, so that
        // neither team's jobs wait on the other (this team's leader runs alone).
        let mut members = shared.members();
        members.spawned[index] = false;
        return;
    }
    // Size this thread's GEMM workspace before it counts as running: a helper that
    // joins after the model's first step (it started late) would otherwise allocate in
    // its first task, inside a step that must not.
    crate::gemm::reserve_workspace_for(1);
    {
        let mut members = shared.members();
        if shared.retired.load(Ordering::Acquire) {
            members.spawned[index] = false;
            return;
        }
        members.running += 1;
    }
    SERVING.set(true);
    let mut regions = shared.regions.load(Ordering::Relaxed);
    let mut last_work = Instant::now();
    let mut idle = 0u32;
    loop {
        let epoch = shared.epoch.load(Ordering::Acquire);
        if epoch != seen {
            seen = epoch;
            // SAFETY: the leader wrote the job before the bump just seen and keeps it
            // (and the closure it points to) until this helper decrements `remaining`.
            let job = unsafe { (*shared.job.get()).expect("a posted job") };
            // SAFETY: as above: the closure is alive until `remaining` is decremented.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(index) }));
            if let Err(p) = result {
                *shared.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
            shared.remaining.fetch_sub(1, Ordering::Release);
            (idle, last_work) = (0, Instant::now());
            continue;
        }
        idle = idle.saturating_add(1);
        // Other rayon work only now and then (looking for it takes longer than a posted
        // job should wait to be seen), and only inside a started region (see `started`).
        if idle.is_multiple_of(32)
            && shared.started.load(Ordering::Relaxed)
            && rayon::yield_now() == Some(rayon::Yield::Executed)
        {
            (idle, last_work) = (0, Instant::now());
            continue;
        }
        if idle.is_multiple_of(256) {
            let now_regions = shared.regions.load(Ordering::Relaxed);
            if now_regions != regions {
                (regions, last_work) = (now_regions, Instant::now());
            }
            let retired = shared.retired.load(Ordering::Acquire);
            if retired || last_work.elapsed() > LINGER {
                let mut members = shared.members();
                // Leave only between regions and with no job posted since `seen`.
                if !retired && parks && !members.open && shared.epoch.load(Ordering::Acquire) == seen {
                    members.parked[index] = Some(std::thread::current());
                    drop(members);
                    // Until a leader (or the team's drop) takes the handle; a wake-up
                    // without that is spurious.
                    loop {
                        std::thread::park();
                        let members = shared.members();
                        if members.parked[index].is_none() || shared.retired.load(Ordering::Acquire) {
                            break;
                        }
                    }
                    (idle, last_work) = (0, Instant::now());
                    continue;
                }
                if retired || (!members.open && shared.epoch.load(Ordering::Acquire) == seen) {
                    members.spawned[index] = false;
                    members.running -= 1;
                    members.parked[index] = None;
                    SERVING.set(false);
                    return;
                }
            }
        }
        if shared.hot.load(Ordering::Acquire) || idle < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
    }

    /// Leads regions until one has its helpers (other tests may keep the cores busy
    /// past the start timeout), then runs `f` in it.
    fn lead_some<R>(team: &Team, pool: &rayon::ThreadPool, f: impl Fn(&Region) -> R) -> R {
        let start = Instant::now();
        loop {
            if let Some(r) = team.lead(Spawn::Pool(pool), |region| region.map(&f)) {
                return r;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the helpers never started");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn tasks_run_once_each_on_their_static_thread() {
        for threads in [2, 3] {
            let pool = pool(threads);
            let team = Team::new(threads);
            for round in 0..20 {
                let ran = lead_some(&team, &pool, |_| {
                    let tasks = 7 + round % 3;
                    let count: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                    let who: Vec<Mutex<Option<std::thread::ThreadId>>> = (0..tasks).map(|_| Mutex::new(None)).collect();
                    assert!(share(tasks, &|t| {
                        count[t].fetch_add(1, Ordering::Relaxed);
                        *who[t].lock().unwrap() = Some(std::thread::current().id());
                    }));
                    assert!(count.iter().all(|c| c.load(Ordering::Relaxed) == 1), "every task once");
                    let who: Vec<_> = who.into_iter().map(|w| w.into_inner().unwrap().unwrap()).collect();
                    // Task t and t + threads on one thread; task 0 on the leader.
                    assert_eq!(who[0], std::thread::current().id());
                    for t in threads..tasks {
                        assert_eq!(who[t], who[t - threads], "task {t}");
                    }
                    assert_ne!(who[1], who[0], "task 1 ran on a helper");
                    true
                });
                assert!(ran);
            }
        }
    }

    #[test]
    fn outside_a_region_nothing_is_shared() {
        assert!(!share(4, &|_| panic!("must not run")));
        assert_eq!(current_threads(), None);
        let team = Team::new(1);
        let pool = pool(1);
        assert!(team.lead(Spawn::Pool(&pool), |r| r.is_none()), "one thread: no region");
    }

    #[test]
    fn a_helper_panic_reaches_the_leader_and_the_team_still_works() {
        let pool = pool(2);
        let team = Team::new(2);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            team.lead(Spawn::Pool(&pool), |_| {
                share(2, &|t| {
                    if t == 1 {
                        panic!("task 1 failed")
                    }
                })
            })
        }));
        let msg = r.expect_err("the panic is resumed").downcast::<&str>().map(|b| *b);
        assert_eq!(msg.ok(), Some("task 1 failed"));
        let sum = AtomicU64::new(0);
        lead_some(&team, &pool, |_| {
            share(4, &|t| {
                sum.fetch_add(t as u64, Ordering::Relaxed);
            });
        });
        assert_eq!(sum.into_inner(), 6);
    }

    #[test]
    fn a_leader_panic_waits_for_the_helpers_first() {
        let pool = pool(2);
        let team = Team::new(2);
        let done = AtomicBool::new(false);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            lead_some(&team, &pool, |_| {
                share(2, &|t| {
                    if t == 0 {
                        panic!("leader's task")
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    done.store(true, Ordering::Release);
                })
            })
        }));
        assert!(r.is_err());
        assert!(done.load(Ordering::Acquire), "the helper's task finished before the leader unwound");
    }

    #[test]
    fn nested_and_concurrent_regions_fall_back_to_one_thread() {
        let pool = pool(2);
        let team = Team::new(2);
        lead_some(&team, &pool, |_| {
            assert_eq!(current_threads(), Some(2));
            // A second region led from inside the first runs alone.
            assert!(team.lead(Spawn::Pool(&pool), |inner| inner.is_none()));
            // A job that shares again runs its tasks itself.
            share(2, &|_| assert!(!share(2, &|_| {})));
        });
        assert_eq!(current_threads(), None);
    }

    #[test]
    fn work_handed_to_a_helper_runs_there() {
        let pool = pool(2);
        let team = Team::new(2);
        lead_some(&team, &pool, |region| {
            let here = std::thread::current().id();
            assert_ne!(region.on_helper(|| std::thread::current().id()), here);
            region.set_hot(false);
            std::thread::sleep(Duration::from_millis(5));
            assert_ne!(region.on_helper(|| std::thread::current().id()), here, "cold helpers still work");
            // rayon work of the pool runs while the helpers wait.
            use rayon::prelude::*;
            let sum: u64 = pool.install(|| (0..10_000u64).into_par_iter().sum());
            assert_eq!(sum, 10_000 * 9_999 / 2);
        });
    }

    #[test]
    fn work_beside_runs_on_a_helper_while_the_leader_runs_alone() {
        for threads in [2, 3] {
            let pool = pool(threads);
            let team = Team::new(threads);
            lead_some(&team, &pool, |_| {
                let here = std::thread::current().id();
                let (ran, job_thread) = (AtomicU64::new(0), Mutex::new(None));
                let job = || {
                    ran.fetch_add(1, Ordering::Relaxed);
                    *job_thread.lock().unwrap() = Some(std::thread::current().id());
                    // Still running when the leader's part is done: it waits for this.
                    std::thread::sleep(Duration::from_millis(20));
                };
                let out = beside(&job, || {
                    // The helper is busy: sharing declines and the caller runs its tasks.
                    assert!(!share(2, &|_| panic!("must not run")));
                    assert_eq!(std::thread::current().id(), here);
                    7
                });
                assert_eq!((out, ran.load(Ordering::Relaxed)), (7, 1), "the job once, the result returned");
                assert_ne!(job_thread.lock().unwrap().unwrap(), here, "the job ran on a helper");
                // The region works as before afterwards.
                assert!(share(2, &|_| {}));
            });
        }
        // Outside a region: the job, then `f`, on this thread.
        let order = Mutex::new(Vec::new());
        beside(&|| order.lock().unwrap().push("job"), || order.lock().unwrap().push("f"));
        assert_eq!(*order.lock().unwrap(), ["job", "f"]);
    }

    #[test]
    fn a_panic_beside_reaches_the_leader_after_both_finished() {
        let pool = pool(2);
        let team = Team::new(2);
        let done = AtomicBool::new(false);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            lead_some(&team, &pool, |_| beside(&|| panic!("the job failed"), || done.store(true, Ordering::Release)))
        }));
        let msg = r.expect_err("the panic is resumed").downcast::<&str>().map(|b| *b);
        assert_eq!(msg.ok(), Some("the job failed"));
        assert!(done.load(Ordering::Acquire), "the leader's part ran");
        assert!(lead_some(&team, &pool, |_| share(2, &|_| {})), "the team still works");
    }

    /// Waits (at most 5 s) until `done` holds of the team's members.
    fn eventually(team: &Team, what: &str, done: impl Fn(&Members) -> bool) {
        let start = Instant::now();
        while !done(&team.shared.members()) {
            assert!(start.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn helpers_of_a_shared_pool_linger_then_leave_and_come_back() {
        let pool = pool(2);
        pool.install(|| {
            let team = Team::new(2);
            for _ in 0..3 {
                let start = Instant::now();
                while !team.lead(Spawn::Current, |region| region.is_some()) {
                    assert!(start.elapsed() < Duration::from_secs(20), "the helper never started");
                }
                eventually(&team, "the helper never left", |m| m.running == 0 && !m.spawned[1]);
            }
        });
    }

    #[test]
    fn helpers_linger_from_the_regions_end_not_from_their_last_job() {
        let pool = pool(2);
        pool.install(|| {
            let team = Team::new(2);
            // A region whose last job is long past when it closes (a serial stretch of a
            // step); a short while after it, the helper is still there. Tried a few
            // times: a busy machine may oversleep the short while past LINGER.
            let stayed = (0..5).any(|_| {
                let start = Instant::now();
                while !team.lead(Spawn::Current, |region| {
                    region
                        .map(|_| {
                            share(2, &|_| {});
                            std::thread::sleep(3 * LINGER);
                        })
                        .is_some()
                }) {
                    assert!(start.elapsed() < Duration::from_secs(20), "the helper never started");
                }
                std::thread::sleep(LINGER / 4);
                team.shared.members().spawned[1]
            });
            assert!(stayed, "the helper left as soon as the region closed");
        });
    }

    #[test]
    fn between_regions_a_lingering_helper_leaves_the_pools_jobs_to_the_pool() {
        let pool = pool(2);
        pool.install(|| {
            let team = Team::new(2);
            let start = Instant::now();
            while team.lead(Spawn::Current, |region| region.map(|_| share(2, &|_| {}))).is_none() {
                assert!(start.elapsed() < Duration::from_secs(20), "the helper never started");
            }
            // This worker blocks below, so only the other one, the lingering helper, can
            // run the job: once it has left its loop, not from inside it (where a job
            // leading a region of its own, the next call, would have to run alone).
            // Spawned a while after the close (the helper still lingers): a helper that
            // saw the region started just before it closed may still look for work
            // once (under qemu that window is wide), a race that costs only speed.
            std::thread::sleep(LINGER / 4);
            let (tx, rx) = std::sync::mpsc::channel();
            rayon::spawn(move || tx.send(SERVING.get()).expect("the test waits"));
            let in_helper_loop = rx.recv_timeout(Duration::from_secs(5)).expect("the job ran");
            assert!(!in_helper_loop, "the job ran inside the helper's loop");
        });
    }

    #[test]
    fn helpers_of_the_teams_own_pool_park_between_regions_and_leave_on_drop() {
        let pool = pool(1);
        let team = Team::new(2);
        let sum = AtomicU64::new(0);
        for round in 0..3u64 {
            lead_some(&team, &pool, |_| {
                share(2, &|t| {
                    sum.fetch_add(t as u64 + round, Ordering::Relaxed);
                });
            });
            eventually(&team, "the helper never parked", |m| m.parked[1].is_some() && m.running == 1);
        }
        assert_eq!(sum.into_inner(), 3 + 2 * (1 + 2)); // Σ over rounds of (0 + r) + (1 + r)
        let shared = Arc::clone(&team.shared);
        drop(team);
        let start = Instant::now();
        while shared.members().running > 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "the parked helper never left");
            std::thread::yield_now();
        }
    }

    #[test]
    fn busy_pool_workers_make_the_region_run_alone() {
        let pool = pool(2);
        let release = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            let release = Arc::clone(&release);
            pool.spawn(move || {
                while !release.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        }
        let team = Team::new(2);
        let t = Instant::now();
        assert!(team.lead(Spawn::Pool(&pool), |region| region.is_none()), "no worker free: alone");
        assert!(t.elapsed() < Duration::from_secs(2));
        release.store(true, Ordering::Release);
        // Once the workers are free, the helper spawned above starts and serves.
        assert_eq!(lead_some(&team, &pool, |r| r.threads()), 2);
    }
}
