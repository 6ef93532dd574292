#!/usr/bin/env python3
# (copy of the session harness: "base" is a worktree of the previous commit built into /tmp/base/target)
# cmp.py ROUNDS "hidden/batch/threads/samples" ... : base vs new interleaved, s per 60k (median epoch)
import json, subprocess, sys, os, statistics
R = int(sys.argv[1])
exes = {"base": "/tmp/base/target/release/examples/mnist_timing", "new": "/work/main/target/release/examples/mnist_timing"}
res = {}
for r in range(R):
    for cfg in sys.argv[2:]:
        h, b, t, s = cfg.split("/")
        for name, exe in exes.items():
            subprocess.run([exe, "--hidden", h, "--batch", b, "--threads", t, "--samples", s, "--epochs", "3", "--eval", "off",
                            "--data", "/work/shared/data/mnist", "--json", "/tmp/r.json"], check=True, capture_output=True, env=dict(os.environ))
            v = json.load(open("/tmp/r.json"))["median_epoch_seconds_per_60000"]
            res.setdefault((cfg, name), []).append(v)
for cfg in sys.argv[2:]:
    b, n = res[(cfg, "base")], res[(cfg, "new")]
    print(f"{cfg:28s} base {' '.join(f'{x:.3f}' for x in b)} | new {' '.join(f'{x:.3f}' for x in n)} | best {min(b)/min(n):.2f}x median {statistics.median(b)/statistics.median(n):.2f}x")
