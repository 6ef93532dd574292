#!/usr/bin/env python3
"""The network × batch × threads sweep of issue #17: fusegrad (examples/mnist_timing),
and PyTorch eager and NumPy when they are installed, on real MNIST, interleaved config
by config in one sitting. Prints one Markdown table: seconds per 60 000 training
samples (each run's median epoch, the best of --repeats runs), the share of the FMA
peak of fusegrad's kernel path measured at the start of the same run (× the threads),
and fusegrad's speed-up over each peer.

    cargo build --release --example mnist_timing
    python3 -m pip install numpy torch      # optional peers
    python3 scripts/sweep.py [--quick | --only 128,64/1 ...] [--repeats 3] [--data DIR]

Wide networks and small batches train on the first --samples images (the time is
scaled to 60 000); the defaults follow the issue's table. FUSEGRAD_KERNEL=avx2 forces a
path, as for every run.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (hidden widths, batch, samples trained on per epoch)
CONFIGS = [
    ("128,64", 128, 60000),
    ("512,512", 128, 60000),
    ("1024,1024,1024", 128, 12000),
    ("2048,2048", 128, 12000),
    ("1024,1024,1024", 512, 12000),
    ("128,64", 32, 60000),
    ("128,64", 8, 24000),
    ("128,64", 1, 6000),
    ("32,32", 128, 60000),
]


def flop_per_sample(hidden):
    w = [784] + [int(x) for x in hidden.split(",")] + [10]
    p = [a * b for a, b in zip(w[:-1], w[1:])]
    return 4 * sum(p) + 2 * sum(p[1:])


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))


def run_fusegrad(args, hidden, batch, samples, threads):
    exe = os.path.join(target_dir(), "release", "examples", "mnist_timing")
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [exe, "--hidden", hidden, "--batch", str(batch), "--samples", str(samples), "--threads", str(threads),
               "--epochs", str(args.epochs), "--eval", "off", "--data", args.data, "--json", f.name]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = json.load(open(f.name))
    return r["median_epoch_seconds_per_60000"], r["peak_gflops_per_core"], r["kernel"]


def run_peer(script, args, hidden, batch, samples, threads):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, os.path.join(ROOT, "scripts", script), "--hidden", hidden, "--batch", str(batch),
           "--samples", str(samples), "--epochs", str(args.epochs), "--data", args.data]
    if script == "torch_epoch.py":
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return float(out.split("(")[1].split(" s per")[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("MNIST_DIR", os.path.join(ROOT, "data", "mnist")))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="the 784-128-64-10 rows only")
    ap.add_argument("--only", nargs="+", metavar="HIDDEN/BATCH",
                    help="just these rows of the table, e.g. --only 128,64/1 128,64/8")
    ap.add_argument("--no-peers", action="store_true", help="fusegrad only (e.g. with FUSEGRAD_KERNEL=avx2)")
    args = ap.parse_args()
    exe = os.path.join(target_dir(), "release", "examples", "mnist_timing")
    if not os.path.exists(exe):
        sys.exit(f"{exe} is missing: run `cargo build --release --example mnist_timing` first")
    peers = [(name, script) for name, module, script in [("PyTorch", "torch", "torch_epoch.py"), ("NumPy", "numpy", "numpy_epoch.py")]
             if importlib.util.find_spec(module) and not args.no_peers]
    missing = {"PyTorch", "NumPy"} - {p for p, _ in peers}
    if missing and not args.no_peers:
        print(f"(not installed, left out: {', '.join(sorted(missing))}; `python3 -m pip install numpy torch`)")
    configs = [c for c in CONFIGS if not args.quick or c[0] == "128,64"]
    if args.only:
        configs = [c for c in configs if f"{c[0]}/{c[1]}" in args.only]
        if len(configs) != len(args.only):
            known = " ".join(f"{h}/{b}" for h, b, _ in CONFIGS)
            sys.exit(f"--only {' '.join(args.only)}: rows are named HIDDEN/BATCH, one of: {known}")
    head = ["network, batch", "threads", "fusegrad s / 60k", "share of peak"] + [f"{p} s / 60k" for p, _ in peers] + \
        [f"vs {p}" for p, _ in peers]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for hidden, batch, samples in configs:
        for threads in [int(t) for t in args.threads.split(",")]:
            fg, peaks, peer_t = [], [], {p: [] for p, _ in peers}
            for _ in range(args.repeats):
                secs, peak, kernel = run_fusegrad(args, hidden, batch, samples, threads)
                fg.append(secs)
                peaks.append(peak)
                for p, script in peers:
                    peer_t[p].append(run_peer(script, args, hidden, batch, samples, threads))
            best = min(fg)
            cores = min(threads, os.cpu_count() or 1)
            share = 100 * 60000 * flop_per_sample(hidden) / best / 1e9 / (max(peaks) * cores)
            row = [f"784-{hidden.replace(',', '-')}-10, b{batch}", str(threads), f"{best:.3f}",
                   f"{share:.0f}% ({kernel})"]
            row += [f"{min(peer_t[p]):.3f}" for p, _ in peers]
            row += [f"{min(peer_t[p]) / best:.2f}×" for p, _ in peers]
            print("| " + " | ".join(row) + " |", flush=True)
    partial = ", ".join(f"784-{h.replace(',', '-')}-10 b{b}: {s}" for h, b, s in configs if s != 60000)
    print(f"\n(samples per epoch where fewer than 60 000: {partial}; best of {args.repeats} run(s), "
          f"each the median of {args.epochs} epochs)")


if __name__ == "__main__":
    main()
