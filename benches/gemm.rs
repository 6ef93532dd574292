//! `cargo bench --bench gemm`: fusegrad (1 and 2 threads) vs the naive twin vs
//! `matrixmultiply::sgemm` (single-threaded) on the MNIST training shapes at batch 128
//! and on squares. Throughput is set to FLOPs (2·m·n·k), so criterion's "elem/s" is
//! FLOP/s. Before the benches run, the single-core FMA peak of the dispatched kernel is
//! measured and written to `target/criterion/peak.json` (under `$CARGO_TARGET_DIR`
//! when set); `scripts/bench_table.py`
//! turns the results into the README table as a share of that peak.

#[path = "common/mod.rs"]
mod common;

use criterion::{BenchmarkId, Criterion, Throughput};
use fusegrad::gemm::{default_isa, gemm_naive, gemm_with, peak_gflops, Accum, Epilogue, GemmOptions};
use fusegrad::{MatRef, Matrix};
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Operands {
    a_store: Matrix,
    b_store: Matrix,
    layout: &'static str,
}

impl Operands {
    fn new(m: usize, k: usize, n: usize, layout: &'static str) -> Self {
        let fill = |r, c, s: usize| Matrix::from_fn(r, c, |i, j| ((i * 31 + j * 17 + s) % 101) as f32 / 101.0 - 0.5);
        let a_store = if layout == "tn" { fill(k, m, 1) } else { fill(m, k, 1) };
        let b_store = if layout == "nt" { fill(n, k, 2) } else { fill(k, n, 2) };
        Operands { a_store, b_store, layout }
    }
    fn a(&self) -> MatRef<'_> {
        if self.layout == "tn" {
            self.a_store.t()
        } else {
            self.a_store.view()
        }
    }
    fn b(&self) -> MatRef<'_> {
        if self.layout == "nt" {
            self.b_store.t()
        } else {
            self.b_store.view()
        }
    }
}

fn bench_gemm(c: &mut Criterion) {
    let mut shapes = common::mnist_shapes(128);
    for s in [256, 512, 1024] {
        shapes.push((format!("square {s}"), s, s, s, "nn"));
    }
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("2-thread pool");
    for (name, m, k, n, layout) in shapes {
        let ops = Operands::new(m, k, n, layout);
        let (a, b) = (ops.a(), ops.b());
        let mut out = Matrix::zeros(m, n);
        let flops = 2 * m * n * k;
        let mut group = c.benchmark_group(format!("gemm/{name} {layout}"));
        group.throughput(Throughput::Elements(flops as u64));
        if flops > 100_000_000 {
            group.sample_size(10).measurement_time(Duration::from_secs(3));
        }
        if flops <= 200_000_000 {
            // The naive twin takes seconds per call above this size.
            group.bench_function(BenchmarkId::from_parameter("naive"), |bch| {
                bch.iter(|| {
                    gemm_naive(out.view_mut(), black_box(a), black_box(b), Accum::Overwrite, Epilogue::None).unwrap()
                })
            });
        }
        let one = GemmOptions::default().with_threads(1);
        group.bench_function(BenchmarkId::from_parameter("fusegrad 1T"), |bch| {
            bch.iter(|| {
                gemm_with(out.view_mut(), black_box(a), black_box(b), Accum::Overwrite, Epilogue::None, &one).unwrap()
            })
        });
        // Called from inside the pool, as a training loop does: a call from a thread
        // outside the pool also pays for waking the workers (≈10–20 µs median here).
        let two = GemmOptions::default().with_threads(2);
        group.bench_function(BenchmarkId::from_parameter("fusegrad 2T"), |bch| {
            bch.iter_custom(|iters| {
                pool2.install(|| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        gemm_with(out.view_mut(), black_box(a), black_box(b), Accum::Overwrite, Epilogue::None, &two)
                            .unwrap();
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(BenchmarkId::from_parameter("matrixmultiply 1T"), |bch| {
            bch.iter(|| common::matrixmultiply_gemm(out.view_mut(), black_box(a), black_box(b)))
        });
        group.finish();
    }
}

fn record_peak() -> f64 {
    let isa = default_isa().expect("kernel selection");
    let peak = peak_gflops(isa, Duration::from_secs(1)).expect("peak probe");
    println!("single-core FMA peak ({}): {peak:.1} GFLOP/s", isa.name());
    // Where criterion writes its results: $CARGO_TARGET_DIR/criterion, else target/.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), std::path::PathBuf::from);
    let dir = target.join("criterion");
    let dir = dir.as_path();
    if std::fs::create_dir_all(dir).is_ok() {
        let json = format!("{{\"isa\": \"{}\", \"peak_gflops_per_core\": {peak:.2}}}\n", isa.name());
        let _ = std::fs::write(dir.join("peak.json"), json);
    }
    peak
}

fn main() {
    let peak = record_peak();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_gemm(&mut c);
    c.final_summary();
    // Criterion has no unit of its own for a declared FLOP count: say what "elem/s" is.
    println!(
        "thrpt above is GFLOP/s (criterion prints it as Gelem/s: 2·m·n·k FLOP per call); \
         python3 scripts/bench_table.py prints the table with shares of the {:.1} GFLOP/s peak",
        peak
    );
}
