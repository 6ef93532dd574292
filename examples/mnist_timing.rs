//! The MNIST epoch timing run behind the README's table: NNFS's 784-128-64-10 ReLU
//! network with softmax + cross-entropy, trained on the real MNIST, every epoch timed
//! against the peak of the kernel path in use. (`examples/mnist.rs` is the short
//! version a user starts from.)
//!
//! ```sh
//! scripts/mnist.sh                  # fetch the data if absent, build, run (defaults below)
//! cargo run --release --example mnist_timing -- --optimizer adam --lr 0.001 --json run.json
//! ```

use fusegrad::data::mnist;
use fusegrad::gemm::{default_isa, peak_gflops, Isa};
use fusegrad::nn::{
    EpochReport, FitObserver, FitOptions, Init, Loss, Optimizer, Regularization, ScaledBytes, Sequential, Targets,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const HELP: &str = "\
Train 784-128-64-10 (or 784-<hidden>-10; ReLU, softmax + cross-entropy) on MNIST and
time every epoch.

usage: cargo run --release --example mnist_timing -- [options]

  --epochs N                 passes over the 60 000 training images   (default 10)
  --batch N                  batch size                               (default 128)
  --optimizer sgd|momentum|adam                                       (default sgd)
  --lr X                     learning rate (default 0.1; 0.001 for adam)
  --decay X                  learning-rate decay per step, NNFS-style  (default 0)
  --threads N                threads (default: all cores)
  --data DIR                 MNIST directory (default: $MNIST_DIR, else data/mnist)
  --seed N                   seed of the weights and the shuffling    (default 42)
  --init he|xavier|nnfs      weight initialisation                    (default he)
  --dropout P                dropout after each hidden layer (training only; default 0)
  --pin on|off               pin the training threads to distinct cores (default on)
  --hidden W1,W2,...         hidden layer widths                      (default 128,64)
  --samples N                train on the first N images only (wide networks; the
                             summary also gives the time per 60 000)   (default 60000)
  --fused on|off             optimizer step inside the weight-gradient GEMMs (default on)
  --eval on|off              evaluate the test set after each epoch     (default on)
  --json PATH                also write the figures as JSON
  --help                     this text

An epoch's time is training only (shuffle, forward, backward, update); the test-set
evaluation after it is timed separately. GFLOP/s counts the FLOP of the forward pass,
the weight gradients and the input gradients of every layer but the first (454 400
per sample for 784-128-64-10), and % of peak is against the FMA peak of the kernel path in use (FUSEGRAD_KERNEL, else
the CPU's best), measured at start-up, × the cores used (threads beyond the core count
add no FMA units).";

/// FLOP per training sample of the network with these layer widths (784 first, 10
/// last): forward + weight gradients of every layer + input gradients of all but the first.
fn flop_per_sample(widths: &[usize]) -> f64 {
    let products: Vec<usize> = widths.windows(2).map(|w| w[0] * w[1]).collect();
    (2 * products.iter().sum::<usize>() * 2 + 2 * products[1..].iter().sum::<usize>()) as f64
}

struct Args {
    epochs: usize,
    batch: usize,
    optimizer: String,
    lr: Option<f32>,
    decay: f32,
    threads: usize,
    data: Option<PathBuf>,
    seed: u64,
    init: Init,
    dropout: f32,
    pin: bool,
    json: Option<PathBuf>,
    hidden: Vec<usize>,
    samples: Option<usize>,
    fused: bool,
    eval: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        epochs: 10,
        batch: 128,
        optimizer: "sgd".into(),
        lr: None,
        decay: 0.0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        data: None,
        seed: 42,
        init: Init::He,
        dropout: 0.0,
        pin: true,
        json: None,
        hidden: vec![128, 64],
        samples: None,
        fused: true,
        eval: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            println!("{HELP}");
            std::process::exit(0);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value (try --help)"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a whole number"));
        match flag.as_str() {
            "--epochs" | "--batch" | "--threads" if num(&value)? == 0 => {
                return Err(format!("{flag} must be at least 1, got 0"))
            }
            "--epochs" => a.epochs = num(&value)?,
            "--batch" => a.batch = num(&value)?,
            "--threads" => a.threads = num(&value)?,
            "--seed" => a.seed = num(&value)? as u64,
            "--lr" => a.lr = Some(value.parse().map_err(|_| format!("--lr: {value:?} is not a number"))?),
            "--decay" => a.decay = value.parse().map_err(|_| format!("--decay: {value:?} is not a number"))?,
            "--optimizer" if ["sgd", "momentum", "adam"].contains(&value.as_str()) => a.optimizer = value,
            "--optimizer" => return Err(format!("--optimizer must be sgd, momentum or adam, got {value:?}")),
            "--init" => {
                a.init = match value.as_str() {
                    "he" => Init::He,
                    "xavier" => Init::Xavier,
                    "nnfs" => Init::Nnfs,
                    _ => return Err(format!("--init must be he, xavier or nnfs, got {value:?}")),
                }
            }
            "--dropout" => {
                a.dropout = value.parse().map_err(|_| format!("--dropout: {value:?} is not a number"))?;
                if !(0.0..1.0).contains(&a.dropout) {
                    return Err(format!("--dropout must be in [0, 1), got {value}"));
                }
            }
            "--pin" if value == "on" || value == "off" => a.pin = value == "on",
            "--pin" => return Err(format!("--pin must be on or off, got {value:?}")),
            "--data" => a.data = Some(value.into()),
            "--hidden" => {
                a.hidden = value.split(',').map(|w| num(w.trim())).collect::<Result<_, _>>()?;
                if a.hidden.contains(&0) {
                    return Err(format!("--hidden: every width must be at least 1, got {value:?}"));
                }
            }
            "--samples" if num(&value)? == 0 => return Err("--samples must be at least 1".into()),
            "--samples" => a.samples = Some(num(&value)?),
            "--fused" if value == "on" || value == "off" => a.fused = value == "on",
            "--fused" => return Err(format!("--fused must be on or off, got {value:?}")),
            "--eval" if value == "on" || value == "off" => a.eval = value == "on",
            "--eval" => return Err(format!("--eval must be on or off, got {value:?}")),
            "--json" => a.json = Some(value.into()),
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    Ok(a)
}

/// `x` as the f64 with the same shortest decimal form (0.1f32 as 0.1, not 0.100000001).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::NAN)
}

/// The CPU's model name and family/model numbers, from /proc/cpuinfo (Linux).
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    Some(format!(
        "{} (family {}, model {})",
        field("model name")?,
        field("cpu family").unwrap_or_default(),
        field("model\t").unwrap_or_default()
    ))
}

/// The commit this was built from, when run inside the repository's work tree.
fn commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

struct Progress {
    bar: ProgressBar,
    peak: f64,
    isa_name: &'static str,
    reports: Vec<EpochReport>,
    /// Training samples per epoch, and FLOP per sample.
    samples: usize,
    flop: f64,
}

impl FitObserver for Progress {
    fn on_step(&mut self, epoch: usize, step: usize, steps: usize) {
        if step == 1 {
            self.bar.set_length(steps as u64);
            self.bar.set_position(0);
            self.bar.set_message(format!("epoch {epoch}"));
        }
        self.bar.inc(1);
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        self.bar.finish_and_clear();
        let secs = r.train_seconds;
        let gflops = self.samples as f64 * self.flop / secs / 1e9;
        // Printed around the bar, not through it: a hidden bar (not a terminal) would
        // swallow the line.
        // Without evaluation there is no test accuracy to print, not a zero one.
        let test = match r.validation.and_then(|v| v.accuracy) {
            Some(acc) => format!("  test acc {acc:.4}"),
            None => String::new(),
        };
        let line = format!(
            "epoch {:3}  loss {:.4}  train acc {:.4}{}  epoch {:.3} s  {:8.0} samples/s  {:6.1} GFLOP/s  {:4.1}% of {} peak  (eval {:.3} s)",
            r.epoch,
            r.loss,
            r.accuracy.unwrap_or(0.0),
            test,
            secs,
            self.samples as f64 / secs,
            gflops,
            100.0 * gflops / self.peak,
            self.isa_name,
            r.eval_seconds
        );
        self.bar.suspend(|| println!("{line}"));
        self.reports.push(r.clone());
        self.bar.reset();
    }
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), fusegrad::Error> {
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; timings are meaningless without --release");
    }
    let dir = mnist::resolve_dir(args.data.as_deref());
    let t = Instant::now();
    let data = mnist::load(&dir)?;
    println!("loaded MNIST from {} in {:.2} s", dir.display(), t.elapsed().as_secs_f64());

    let isa = default_isa().unwrap_or(Isa::Portable);
    let peak1 = peak_gflops(isa, Duration::from_millis(500))?;
    let cores = args.threads.min(std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let peak = peak1 * cores as f64;
    let (optimizer, lr) = match args.optimizer.as_str() {
        "adam" => (Optimizer::adam(args.lr.unwrap_or(1e-3)), args.lr.unwrap_or(1e-3)),
        "momentum" => (Optimizer::sgd_momentum(args.lr.unwrap_or(0.1), 0.9), args.lr.unwrap_or(0.1)),
        _ => (Optimizer::sgd(args.lr.unwrap_or(0.1)), args.lr.unwrap_or(0.1)),
    };
    let optimizer = optimizer.with_decay(args.decay);
    let mut widths = vec![784];
    widths.extend(&args.hidden);
    widths.push(10);
    let network = widths.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("-");
    let flop = flop_per_sample(&widths);
    let samples = args.samples.unwrap_or(60_000).min(60_000);
    println!(
        "{network} on {samples} samples, {} fused update {}, lr {lr} decay {}, batch {}, {:?} init, seed {}, {} thread(s), kernel {}; {} peak {:.1} GFLOP/s per core ({:.1} on the {cores} core(s) used)",
        args.optimizer,
        if args.fused { "on" } else { "off" },
        args.decay,
        args.batch,
        args.init,
        args.seed,
        args.threads,
        isa.name(),
        isa.name(),
        peak1,
        peak
    );
    if Isa::best() != isa {
        let best_peak = peak_gflops(Isa::best(), Duration::from_millis(500))?;
        println!(
            "(this CPU's best path, {}, peaks at {best_peak:.1} GFLOP/s per core: {} was forced)",
            Isa::best().name(),
            isa.name()
        );
    }

    let none = Regularization::default();
    let mut builder = Sequential::builder(784).seed(args.seed);
    for &width in &args.hidden {
        builder = builder.dense_with(width, args.init, none).relu();
        if args.dropout > 0.0 {
            builder = builder.dropout(args.dropout);
        }
    }
    let mut model = builder.dense_with(10, args.init, none).build(Loss::SoftmaxCrossEntropy, optimizer)?;
    model.set_threads(Some(args.threads))?;
    model.set_fused_update(args.fused);
    model.set_pin_threads(args.pin);

    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} steps")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = Progress { bar, peak, isa_name: isa.name(), reports: Vec::new(), samples, flop };
    let mut options = FitOptions::default().with_epochs(args.epochs).with_batch_size(args.batch).with_seed(args.seed);
    if args.eval {
        options = options.with_validation(data.test_images.view(), Targets::Classes(&data.test_labels));
    }
    // Batches are gathered from the pixel bytes: a quarter of the memory traffic of the
    // f32 images, with exactly their values.
    let train = ScaledBytes::new(&data.train_pixels[..samples * 784], 784, mnist::PIXEL_SCALE)?;
    model.fit_observed(train, Targets::Classes(&data.train_labels[..samples]), &options, &mut progress)?;

    let reports = progress.reports;
    let mut times: Vec<f64> = reports.iter().map(|r| r.train_seconds).collect();
    times.sort_by(f64::total_cmp);
    let median = if times.is_empty() { 0.0 } else { times[times.len() / 2] };
    // One entry per evaluated epoch: none at all under `--eval off`.
    let test_acc: Vec<f32> = reports.iter().filter_map(|r| r.validation.and_then(|v| v.accuracy)).collect();
    let milestone = |target: f32| {
        let mut elapsed = 0.0;
        for (r, &acc) in reports.iter().zip(&test_acc) {
            elapsed += r.train_seconds;
            if acc >= target {
                return Some((r.epoch, elapsed));
            }
        }
        None
    };
    let total_train: f64 = reports.iter().map(|r| r.train_seconds).sum();
    let samples_per_second = samples as f64 * reports.len() as f64 / total_train.max(1e-9);
    let gflops = samples_per_second * flop / 1e9;
    let median_pct = 100.0 * samples as f64 * flop / median.max(1e-9) / 1e9 / peak;
    let median_60k = median * 60_000.0 / samples as f64;
    println!("summary: median epoch {median:.3} s ({median_60k:.3} s per 60 000 samples, {median_pct:.1}% of {} peak), {samples_per_second:.0} samples/s, {gflops:.1} GFLOP/s over all epochs", isa.name());
    for target in [0.97, 0.98].into_iter().filter(|_| args.eval) {
        match milestone(target) {
            Some((epoch, secs)) => {
                println!("  {:.0}% test accuracy after epoch {epoch}: {secs:.2} s of training", target * 100.0)
            }
            None => println!("  {:.0}% test accuracy: not reached in {} epochs", target * 100.0, reports.len()),
        }
    }
    if let Some(acc) = test_acc.last().filter(|_| args.eval) {
        println!("  final test accuracy {:.4}", acc);
    }
    let mem = peak_memory_mib();
    if let Some(m) = mem {
        println!("  peak memory {m:.0} MiB");
    }

    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "network": network,
            "samples": samples,
            "fused_update": args.fused,
            "epochs": reports.len(),
            "threads": args.threads,
            "pin_threads": args.pin,
            "batch": args.batch,
            "optimizer": args.optimizer,
            "learning_rate": short(lr),
            "decay": short(args.decay),
            "init": format!("{:?}", args.init),
            "dropout": short(args.dropout),
            "seed": args.seed,
            "kernel": isa.name(),
            "cpu": cpu_name(),
            "commit": commit(),
            "peak_gflops_per_core": peak1,
            "epoch_seconds": reports.iter().map(|r| r.train_seconds).collect::<Vec<_>>(),
            "median_epoch_seconds": median,
            "median_epoch_seconds_per_60000": median_60k,
            "train_loss": reports.iter().map(|r| short(r.loss)).collect::<Vec<_>>(),
            "test_accuracy": test_acc.iter().map(|&a| short(a)).collect::<Vec<_>>(),
            "final_test_accuracy": test_acc.last().map(|&a| short(a)),
            "samples_per_second": samples_per_second,
            "gflops": gflops,
            "percent_of_peak_median_epoch": median_pct,
            "seconds_to_97": milestone(0.97).map(|(_, s)| s),
            "seconds_to_98": milestone(0.98).map(|(_, s)| s),
            "peak_memory_mib": mem,
        });
        let text = serde_json::to_string_pretty(&json).expect("a JSON value serialises") + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        println!("wrote {}", path.display());
    }
    Ok(())
}
