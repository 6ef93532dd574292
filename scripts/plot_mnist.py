#!/usr/bin/env python3
"""Plots MNIST runs from `examples/mnist_timing --json` files with matplotlib: left,
training seconds per epoch; right, test accuracy against cumulative training time,
with the 97% and 98% lines. Each run is labelled with what tells runs apart (network,
optimizer and rate, init, dropout, threads, kernel path, CPU, commit). The output type
follows the file name (.svg, .png, .pdf).

    python3 -m pip install matplotlib
    python3 scripts/plot_mnist.py OUT.svg RUN.json [RUN.json ...]
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402


def label(run, path):
    parts = [run.get("network", "784-128-64-10"), f"{run['optimizer']} lr {run['learning_rate']}"]
    if run.get("init"):
        parts.append(f"{run['init']} init")
    if run.get("dropout"):
        parts.append(f"dropout {run['dropout']}")
    threads = run["threads"]
    parts.append(f"{threads} thread{'s' if threads > 1 else ''}, {run['kernel']}")
    if run.get("commit"):
        parts.append(run["commit"][:8])
    # Files from before the JSON recorded the whole configuration: the file name tells.
    return ", ".join(parts) + f"  ({path.rsplit('/', 1)[-1]})"


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, paths = sys.argv[1], sys.argv[2:]
    runs = [json.load(open(p)) for p in paths]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for run, path in zip(runs, paths):
        secs = run["epoch_seconds"]
        left.plot(range(1, len(secs) + 1), secs, marker="o", markersize=3, label=label(run, path))
        acc = run.get("test_accuracy") or []
        if acc:
            elapsed = [sum(secs[: i + 1]) for i in range(len(secs))]
            right.plot(elapsed[: len(acc)], acc, marker="o", markersize=3)
    left.set(title="Training time per epoch", xlabel="epoch", ylabel="seconds (training only)")
    left.set_ylim(bottom=0)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set(title="Test accuracy against training time", xlabel="cumulative training seconds",
              ylabel="test accuracy")
    for level in (0.97, 0.98):
        right.axhline(level, color="grey", linestyle="--", linewidth=0.8)
        right.annotate(f"{level:.0%}", xy=(1.0, level), xycoords=("axes fraction", "data"),
                       xytext=(3, 0), textcoords="offset points", va="center", fontsize=9, color="grey")
    right.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    right.set_xlim(left=0)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    cpus = {run.get("cpu") for run in runs if run.get("cpu")}
    if cpus:
        fig.suptitle("MNIST on " + "; ".join(sorted(cpus)), fontsize=10)
    fig.legend(loc="outside lower center", ncol=1, fontsize=8, frameon=False)
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
