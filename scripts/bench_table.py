#!/usr/bin/env python3
"""Turns criterion's results (target/criterion) into the README's markdown table.

Run after `cargo bench --bench gemm` (reads $CARGO_TARGET_DIR/criterion when set). Every figure is GFLOP/s from criterion's median
time and the FLOP throughput the bench declares, and a share of the single-core FMA peak
that the same bench run measured (target/criterion/peak.json): 1-thread figures against
one core's peak, 2-thread figures against two cores'.
"""
import json
import pathlib
import sys

import os

default = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else default)
peak_file = root / "peak.json"
if not peak_file.exists():
    sys.exit(f"bench_table: no {peak_file}: run `cargo bench --bench gemm` first "
             "(or pass the criterion directory as the argument)")
peak_info = json.loads(peak_file.read_text())
peak = peak_info["peak_gflops_per_core"]

rows = {}
order = []
for bench in sorted(root.rglob("new/benchmark.json")):
    meta = json.loads(bench.read_text())
    group = meta["group_id"]
    if not group.startswith("gemm/"):
        continue
    est = json.loads((bench.parent / "estimates.json").read_text())
    flops = meta["throughput"]["Elements"]
    gflops = flops / est["median"]["point_estimate"]  # FLOP per ns = GFLOP/s
    if group not in rows:
        rows[group] = {}
        order.append(group)
    rows[group][meta["function_id"] or meta["value_str"]] = gflops


def key(group):
    name = group[len("gemm/"):]
    return (name.startswith("square"), order.index(group))


print(f"Single-core FMA peak measured in the same run ({peak_info['isa']}): **{peak:.1f} GFLOP/s**.\n")
print("| shape (m×k×n, layout) | naive | matrixmultiply 1T | fusegrad 1T | % of 1-core peak "
      "| vs matrixmultiply | fusegrad 2T | % of 2-core peak | 2T / 1T |")
print("|---|---|---|---|---|---|---|---|---|")
for group in sorted(rows, key=key):
    r = rows[group]
    f1, f2, mm, nv = r.get("fusegrad 1T"), r.get("fusegrad 2T"), r.get("matrixmultiply 1T"), r.get("naive")
    cell = lambda x: f"{x:.1f}" if x is not None else "–"
    print(f"| {group[len('gemm/'):]} | {cell(nv)} | {cell(mm)} | **{cell(f1)}** | {100 * f1 / peak:.0f}% "
          f"| {f1 / mm:.2f}× | {cell(f2)} | {100 * f2 / (2 * peak):.0f}% | {f2 / f1:.2f}× |")
