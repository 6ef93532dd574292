//! Times one GEMM shape: GFLOP/s, % of the measured FMA peak of the kernel path in
//! use, and (with `--peer`) matrixmultiply's and the gemm crate's figures on the same
//! shape, measured in the same run. `--all-isas` times every path this CPU runs on the
//! MNIST shapes and 1024³ instead, one table.
//!
//! ```sh
//! cargo run --release --example gemm -- --m 128 --k 784 --n 128 --layout tn --peer
//! cargo run --release --example gemm -- --all-isas
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use fusegrad::gemm::{gemm_with, peak_gflops, peak_gflops_asm, Accum, Epilogue, GemmOptions, Isa};
use fusegrad::{MatMut, MatRef, Matrix};
use std::time::{Duration, Instant};

const HELP: &str = "\
Time one GEMM shape, C (m×n) = op(A) (m×k) · op(B) (k×n).

usage: cargo run --release --example gemm -- [options]

  --m N          rows of C                         (default 128)
  --k N          inner dimension                   (default 784)
  --n N          columns of C                      (default 128)
  --layout L     nn | tn (A transposed, as dW = Xᵀ·dZ) | nt (B transposed, as dX = dZ·Wᵀ)
                                                   (default nn)
  --epilogue E   none | bias | biasrelu            (default none)
  --threads N    rayon threads                     (default: all cores)
  --kernel K     avx512 | avx2 | portable          (default: FUSEGRAD_KERNEL, else best)
  --min-work N   smallest multiply-add count worth a thread (default: built-in threshold)
  --peer         also time matrixmultiply and the gemm crate (single-threaded)
  --all-isas     time every kernel path this CPU runs on the MNIST shapes (batch 128)
                 and 1024³, beside both peers, and print one table
  --seconds S    time budget per contender         (default 1.0; 0.3 with --all-isas)
  --help         this text

Prints best and median GFLOP/s over repeated samples, and the share of the peak of
the kernel path in use (its single-core FMA peak measured now, × the cores used).";

struct Args {
    m: usize,
    k: usize,
    n: usize,
    layout: String,
    epilogue: String,
    threads: usize,
    isa: Option<Isa>,
    peer: bool,
    all_isas: bool,
    seconds: Option<f64>,
    min_work: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        m: 128,
        k: 784,
        n: 128,
        layout: "nn".into(),
        epilogue: "none".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        isa: None,
        peer: false,
        all_isas: false,
        seconds: None,
        min_work: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a whole number"));
        match flag.as_str() {
            "--m" => args.m = num(value()?)?,
            "--k" => args.k = num(value()?)?,
            "--n" => args.n = num(value()?)?,
            "--threads" => args.threads = num(value()?)?.max(1),
            "--layout" => args.layout = value()?,
            "--epilogue" => args.epilogue = value()?,
            "--kernel" => args.isa = Some(Isa::parse(&value()?).map_err(|e| e.to_string())?),
            "--seconds" => args.seconds = Some(value()?.parse().map_err(|_| "--seconds takes a number".to_string())?),
            "--min-work" => args.min_work = Some(num(value()?)?),
            "--peer" => args.peer = true,
            "--all-isas" => args.all_isas = true,
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if !["nn", "tn", "nt"].contains(&args.layout.as_str()) {
        return Err(format!("--layout must be nn, tn or nt, got {:?}", args.layout));
    }
    if !["none", "bias", "biasrelu"].contains(&args.epilogue.as_str()) {
        return Err(format!("--epilogue must be none, bias or biasrelu, got {:?}", args.epilogue));
    }
    Ok(args)
}

/// Runs `f` repeatedly for about `budget`; returns (best, median) seconds per call.
fn time(budget: Duration, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up: packing buffers, caches, thread pool
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64().max(1e-7);
    let per_sample = ((2e-3 / one) as usize).max(1); // ~2 ms samples
    let mut samples = Vec::new();
    let end = Instant::now() + budget;
    while Instant::now() < end || samples.len() < 5 {
        let t = Instant::now();
        for _ in 0..per_sample {
            f();
        }
        samples.push(t.elapsed().as_secs_f64() / per_sample as f64);
    }
    samples.sort_by(f64::total_cmp);
    (samples[0], samples[samples.len() / 2])
}

/// The cores the peak is counted over: `threads`, but never more than the machine has
/// (4 threads on 2 cores still have only 2 cores' FMA units).
fn cores_used(threads: usize) -> usize {
    threads.min(std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// A[m×k] and B[k×n] for a layout, filled with small deterministic values.
fn operands(m: usize, k: usize, n: usize, layout: &str) -> (Matrix, Matrix) {
    let tn = layout == "tn";
    let nt = layout == "nt";
    let a = Matrix::from_fn(if tn { k } else { m }, if tn { m } else { k }, |i, j| {
        ((i * 31 + j * 17) % 101) as f32 / 101.0 - 0.5
    });
    let b = Matrix::from_fn(if nt { n } else { k }, if nt { k } else { n }, |i, j| {
        ((i * 13 + j * 7) % 97) as f32 / 97.0 - 0.5
    });
    (a, b)
}

fn view<'a>(store: &'a Matrix, transposed: bool) -> MatRef<'a> {
    if transposed {
        store.t()
    } else {
        store.view()
    }
}

/// A peer's GEMM entry: `C = op(A)·op(B)`.
type Peer = fn(MatMut<'_>, MatRef<'_>, MatRef<'_>);

/// Times several contenders on one shape *interleaved*: round after round, one ~2 ms
/// sample of each in turn, for about `budget` in all, so that a slow spell of a shared
/// host falls on all of them alike. Returns each contender's median GFLOP/s.
fn time_interleaved(flops: f64, budget: Duration, contenders: &mut [Box<dyn FnMut() + Send + '_>]) -> Vec<f64> {
    let reps: Vec<usize> = contenders
        .iter_mut()
        .map(|f| {
            f(); // warm-up: packing buffers, caches, thread pool
            let t = Instant::now();
            f();
            ((2e-3 / t.elapsed().as_secs_f64().max(1e-7)) as usize).max(1)
        })
        .collect();
    let mut samples = vec![Vec::new(); contenders.len()];
    let end = Instant::now() + budget;
    while Instant::now() < end || samples[0].len() < 5 {
        for ((f, &n), out) in contenders.iter_mut().zip(&reps).zip(samples.iter_mut()) {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            out.push(t.elapsed().as_secs_f64() / n as f64);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            flops / s[s.len() / 2] / 1e9
        })
        .collect()
}

/// Which kernels the two peers run on this CPU, as built.
fn print_peers() {
    println!(
        "peers: matrixmultiply runs its {} kernel{}; the gemm crate its AVX2+FMA kernels",
        common::matrixmultiply_kernel(),
        if cfg!(feature = "peer-avx512") { "" } else { " (built without --features peer-avx512)" }
    );
}

/// `--all-isas`: every path this CPU runs, forced in turn, on the MNIST shapes and 1024³,
/// each against its own path's peak, beside both peers, in one run.
fn all_isas(seconds: f64) {
    let budget = Duration::from_secs_f64(seconds);
    let isas: Vec<Isa> = Isa::ALL.iter().copied().filter(|i| i.is_available()).collect();
    println!("machine: {}; best path {}; 1 thread unless marked 2T", cpu_name(), Isa::best().name());
    print_peers();
    println!();
    println!("| path | peak per core (intrinsics probe) | assembly probe, 8 / 12 chains |");
    println!("|---|---|---|");
    let mut peaks = Vec::new();
    for &isa in &isas {
        let peak = peak_gflops(isa, Duration::from_millis(500)).expect("peak probe");
        let asm: Vec<String> = [8, 12]
            .iter()
            .map(|&ch| peak_gflops_asm(isa, ch, Duration::from_millis(300)).map_or("–".into(), |g| format!("{g:.1}")))
            .collect();
        println!("| {} | {peak:.1} GFLOP/s | {} |", isa.name(), asm.join(" / "));
        peaks.push(peak);
    }
    println!();
    let mut shapes: Vec<(String, usize, usize, usize, &str, usize)> =
        common::mnist_shapes(128).into_iter().map(|(name, m, k, n, l)| (name, m, k, n, l, 1)).collect();
    shapes.push(("square 1024x1024x1024".into(), 1024, 1024, 1024, "nn", 1));
    shapes.push(("square 1024x1024x1024 2T".into(), 1024, 1024, 1024, "nn", 2));
    let header: Vec<String> = isas.iter().map(|i| format!("{} GFLOP/s (% of its peak)", i.name())).collect();
    println!(
        "| shape (m×k×n, layout) | {} | matrixmultiply ({mm}) | gemm crate | {} vs matrixmultiply | {} vs gemm crate |",
        header.join(" | "),
        isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(" / "),
        isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(" / "),
        mm = common::matrixmultiply_kernel()
    );
    println!("|---|{}---|---|---|---|", "---|".repeat(isas.len()));
    for (name, m, k, n, layout, threads) in shapes {
        let (sa, sb) = operands(m, k, n, layout);
        let (a, b) = (view(&sa, layout == "tn"), view(&sb, layout == "nt"));
        let flops = 2.0 * (m * k * n) as f64;
        // Each contender writes its own C. The whole timing runs inside the pool, as a
        // training loop calls the GEMM (a call from outside would add a wake-up each).
        let mut contenders: Vec<Box<dyn FnMut() + Send + '_>> = Vec::new();
        for &isa in &isas {
            let opts = GemmOptions::default().with_isa(isa).with_threads(threads);
            let mut c = Matrix::zeros(m, n);
            contenders.push(Box::new(move || {
                gemm_with(c.view_mut(), a, b, Accum::Overwrite, Epilogue::None, &opts).expect("gemm")
            }));
        }
        if threads == 1 {
            for peer in [common::matrixmultiply_gemm as Peer, common::gemm_crate_gemm] {
                let mut c = Matrix::zeros(m, n);
                contenders.push(Box::new(move || peer(c.view_mut(), a, b)));
            }
        }
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
        let rates = pool.install(|| time_interleaved(flops, budget * contenders.len() as u32, &mut contenders));
        drop(contenders);
        let ours = &rates[..isas.len()];
        let (mm, gc) = if threads == 1 { (rates[isas.len()], rates[isas.len() + 1]) } else { (f64::NAN, f64::NAN) };
        let cores = cores_used(threads) as f64;
        let cells: Vec<String> =
            ours.iter().zip(&peaks).map(|(g, p)| format!("{g:.1} ({:.0}%)", 100.0 * g / (p * cores))).collect();
        let ratio = |peer: f64| -> String {
            if peer.is_nan() {
                "–".into()
            } else {
                ours.iter().map(|g| format!("{:.2}×", g / peer)).collect::<Vec<_>>().join(" / ")
            }
        };
        let fmt = |g: f64| if g.is_nan() { "–".to_string() } else { format!("{g:.1}") };
        println!(
            "| {name} {layout} | {} | {} | {} | {} | {} |",
            cells.join(" | "),
            fmt(mm),
            fmt(gc),
            ratio(mm),
            ratio(gc)
        );
    }
}

/// The CPU's model name and family/model numbers, from /proc/cpuinfo where there is one.
fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model\t")) {
        (Some(name), Some(fam), Some(model)) => format!("{name} (family {fam}, model {model})"),
        (Some(name), _, _) => name,
        _ => std::env::consts::ARCH.to_string(),
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; timings are meaningless without --release");
    }
    if args.all_isas {
        all_isas(args.seconds.unwrap_or(0.3));
        return;
    }
    let isa = args.isa.unwrap_or_else(|| fusegrad::gemm::default_isa().unwrap_or(Isa::Portable));
    let (m, k, n) = (args.m, args.k, args.n);
    let (a_store, b_store) = operands(m, k, n, &args.layout);
    let (a, b) = (view(&a_store, args.layout == "tn"), view(&b_store, args.layout == "nt"));
    let bias = vec![0.01f32; n];
    let mut c = Matrix::zeros(m, n);
    let flops = 2.0 * (m * n * k) as f64;
    let budget = Duration::from_secs_f64(args.seconds.unwrap_or(1.0));

    let peak1 = peak_gflops(isa, Duration::from_millis(500)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let cores = cores_used(args.threads);
    let peak = peak1 * cores as f64;
    println!(
        "shape {m}×{k}×{n} layout {} epilogue {} kernel {} threads {}",
        args.layout,
        args.epilogue,
        isa.name(),
        args.threads
    );
    println!(
        "{} peak (measured FMA throughput): {peak1:.1} GFLOP/s per core, {peak:.1} on the {cores} core(s) used",
        isa.name()
    );
    let best_isa = Isa::best();
    if best_isa != isa {
        if let Ok(best_peak) = peak_gflops(best_isa, Duration::from_millis(500)) {
            println!(
                "(this CPU's best path, {}, peaks at {best_peak:.1} GFLOP/s per core: {isa} was forced)",
                best_isa.name(),
                isa = isa.name()
            );
        }
    }

    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().expect("thread pool");
    let mut opts = GemmOptions::default().with_isa(isa).with_threads(args.threads);
    opts.min_work_per_thread = args.min_work;
    let (best, median) = pool.install(|| {
        time(budget, || {
            let epi = match args.epilogue.as_str() {
                "bias" => Epilogue::Bias(&bias),
                "biasrelu" => Epilogue::BiasRelu(&bias),
                _ => Epilogue::None,
            };
            gemm_with(c.view_mut(), a, b, Accum::Overwrite, epi, &opts).expect("gemm");
        })
    });
    let g = flops / best / 1e9;
    println!(
        "fusegrad        best {:8.1} µs  {g:7.1} GFLOP/s  {:5.1}% of {} peak   (median {:.1} GFLOP/s)",
        best * 1e6,
        100.0 * g / peak,
        isa.name(),
        flops / median / 1e9
    );
    if args.peer {
        print_peers();
        let peers: [(&str, Peer); 2] =
            [("matrixmultiply", common::matrixmultiply_gemm), ("gemm crate", common::gemm_crate_gemm)];
        for (name, peer) in peers {
            let (pbest, pmedian) = time(budget, || peer(c.view_mut(), a, b));
            let pg = flops / pbest / 1e9;
            println!(
                "{name:15} best {:8.1} µs  {pg:7.1} GFLOP/s  {:5.1}% of 1-core {} peak (median {:.1} GFLOP/s; 1 thread)",
                pbest * 1e6,
                100.0 * pg / peak1,
                isa.name(),
                flops / pmedian / 1e9
            );
            println!("ratio fusegrad / {name}: {:.2}× (best), {:.2}× (median)", g / pg, pmedian / median);
        }
    }
}
