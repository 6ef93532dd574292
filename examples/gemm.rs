//! Times one GEMM shape: GFLOP/s, % of this machine's measured FMA peak, and (with
//! `--peer`) matrixmultiply's figure on the same shape, measured in the same run.
//!
//! ```sh
//! cargo run --release --example gemm -- --m 128 --k 784 --n 128 --layout tn --peer
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use fusegrad::gemm::{gemm_with, peak_gflops, Accum, Epilogue, GemmOptions, Isa};
use fusegrad::Matrix;
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
  --peer         also time matrixmultiply::sgemm (single-threaded) on the same shape
  --seconds S    time budget per contender         (default 1.0)
  --help         this text

Prints best and median GFLOP/s over repeated samples, and the share of the peak
(single-core FMA peak of the chosen kernel, measured now, × threads).";

struct Args {
    m: usize,
    k: usize,
    n: usize,
    layout: String,
    epilogue: String,
    threads: usize,
    isa: Option<Isa>,
    peer: bool,
    seconds: f64,
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
        seconds: 1.0,
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
            "--seconds" => args.seconds = value()?.parse().map_err(|_| "--seconds takes a number".to_string())?,
            "--min-work" => args.min_work = Some(num(value()?)?),
            "--peer" => args.peer = true,
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

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; timings are meaningless without --release");
    }
    let isa = args.isa.unwrap_or_else(|| fusegrad::gemm::default_isa().unwrap_or(Isa::Portable));
    let (m, k, n) = (args.m, args.k, args.n);
    let a_store =
        Matrix::from_fn(if args.layout == "tn" { k } else { m }, if args.layout == "tn" { m } else { k }, |i, j| {
            ((i * 31 + j * 17) % 101) as f32 / 101.0 - 0.5
        });
    let b_store =
        Matrix::from_fn(if args.layout == "nt" { n } else { k }, if args.layout == "nt" { k } else { n }, |i, j| {
            ((i * 13 + j * 7) % 97) as f32 / 97.0 - 0.5
        });
    let a = if args.layout == "tn" { a_store.t() } else { a_store.view() };
    let b = if args.layout == "nt" { b_store.t() } else { b_store.view() };
    let bias = vec![0.01f32; n];
    let mut c = Matrix::zeros(m, n);
    let flops = 2.0 * (m * n * k) as f64;
    let budget = Duration::from_secs_f64(args.seconds);

    let peak1 = peak_gflops(isa, Duration::from_millis(500)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let peak = peak1 * args.threads as f64;
    println!(
        "shape {m}×{k}×{n} layout {} epilogue {} kernel {} threads {}",
        args.layout,
        args.epilogue,
        isa.name(),
        args.threads
    );
    println!("peak (measured FMA throughput): {peak1:.1} GFLOP/s per core, {peak:.1} for {} threads", args.threads);

    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build().expect("thread pool");
    let opts = GemmOptions { isa: Some(isa), threads: Some(args.threads), min_work_per_thread: args.min_work };
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
        "fusegrad        best {:8.1} µs  {g:7.1} GFLOP/s  {:5.1}% of peak   (median {:.1} GFLOP/s)",
        best * 1e6,
        100.0 * g / peak,
        flops / median / 1e9
    );
    if args.peer {
        let (pbest, pmedian) = time(budget, || common::matrixmultiply_gemm(c.view_mut(), a, b));
        let pg = flops / pbest / 1e9;
        println!(
            "matrixmultiply  best {:8.1} µs  {pg:7.1} GFLOP/s  {:5.1}% of 1-core peak (median {:.1} GFLOP/s; 1 thread)",
            pbest * 1e6,
            100.0 * pg / peak1,
            flops / pmedian / 1e9
        );
        println!("ratio fusegrad / matrixmultiply: {:.2}×", g / pg);
    }
}
