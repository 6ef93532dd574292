#!/usr/bin/env python3
"""Plots MNIST runs from `examples/mnist --json` files as one SVG (no dependencies):
left, training seconds per epoch; right, test accuracy against cumulative training time.

usage: python3 scripts/plot_mnist.py OUT.svg RUN.json [RUN.json ...]
"""
import json
import sys

W, H, PAD = 920, 360, 56
PANEL = (W - 3 * PAD) / 2
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def label(run):
    return f"{run['optimizer']} lr {run['learning_rate']}, {run['threads']} thread{'s' if run['threads'] > 1 else ''}"


def panel(x0, title, xlabel, ylabel, series, xmax, ymin, ymax, yfmt):
    out = [f'<text x="{x0 + PANEL / 2}" y="{PAD - 24}" text-anchor="middle" font-weight="bold">{title}</text>']
    y0, h = PAD, H - 2 * PAD
    out.append(f'<rect x="{x0}" y="{y0}" width="{PANEL}" height="{h}" fill="none" stroke="#444"/>')
    sx = lambda v: x0 + PANEL * v / xmax
    sy = lambda v: y0 + h * (1 - (v - ymin) / (ymax - ymin))
    for i in range(5):
        yv = ymin + (ymax - ymin) * i / 4
        out.append(f'<line x1="{x0}" x2="{x0 + PANEL}" y1="{sy(yv)}" y2="{sy(yv)}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{sy(yv) + 4}" text-anchor="end" font-size="11">{yfmt(yv)}</text>')
        xv = xmax * i / 4
        out.append(f'<text x="{sx(xv)}" y="{y0 + h + 16}" text-anchor="middle" font-size="11">{xv:.3g}</text>')
    out.append(f'<text x="{x0 + PANEL / 2}" y="{y0 + h + 34}" text-anchor="middle" font-size="12">{xlabel}</text>')
    out.append(f'<text x="{x0 - 44}" y="{y0 + h / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 {x0 - 44} {y0 + h / 2})">{ylabel}</text>')
    for color, pts in series:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
    return out


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    runs = [json.load(open(p)) for p in sys.argv[2:]]
    colors = COLORS * 4
    times = [(c, [(i + 1, s) for i, s in enumerate(r["epoch_seconds"])]) for c, r in zip(colors, runs)]
    accs = []
    for c, r in zip(colors, runs):
        t, pts = 0.0, []
        for s, a in zip(r["epoch_seconds"], r["test_accuracy"]):
            t += s
            pts.append((t, 100 * a))
        accs.append((c, pts))
    max_epochs = max(len(r["epoch_seconds"]) for r in runs)
    max_time = max(p[-1][0] for _, p in accs)
    max_sec = max(max(r["epoch_seconds"]) for r in runs) * 1.15
    lo_acc = min(min(r["test_accuracy"]) for r in runs) * 100 - 0.5
    hi_acc = min(100.0, max(max(r["test_accuracy"]) for r in runs) * 100 + 0.5)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 20 * len(runs)}" font-family="sans-serif">',
           f'<rect width="100%" height="100%" fill="white"/>']
    svg += panel(PAD, "Seconds per epoch (training only)", "epoch", "seconds", times, max_epochs, 0, max_sec, lambda v: f"{v:.2f}")
    svg += panel(2 * PAD + PANEL, "Test accuracy vs training time", "cumulative training seconds", "test accuracy %",
                 accs, max_time, lo_acc, hi_acc, lambda v: f"{v:.1f}")
    for i, (c, r) in enumerate(zip(colors, runs)):
        y = H + 4 + 18 * i
        svg.append(f'<rect x="{PAD}" y="{y - 9}" width="14" height="4" fill="{c}"/>')
        svg.append(f'<text x="{PAD + 20}" y="{y - 4}" font-size="12">{label(r)}: median epoch {r["median_epoch_seconds"]:.3f} s, '
                   f'final test accuracy {100 * r["final_test_accuracy"]:.2f}% ({r["kernel"]}, peak {r["peak_gflops_per_core"]:.0f} GFLOP/s per core)</text>')
    svg.append("</svg>")
    open(sys.argv[1], "w").write("\n".join(svg))
    print(f"wrote {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
