#!/usr/bin/env python3
"""The NumPy peer of the MNIST timing run: 784-<hidden>-10 (ReLU, softmax +
cross-entropy), SGD lr 0.1, He init, NNFS-style (plain NumPy, no dX for layer 1). Prints
the median epoch time (training only) over --epochs epochs, and that time per 60 000
samples when --samples trains on fewer. Threads: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS,
as for any NumPy program.

    python3 -m pip install numpy
    OPENBLAS_NUM_THREADS=2 python3 scripts/numpy_epoch.py [--data DIR] [--epochs 3]
        [--hidden 128,64] [--batch 128] [--samples 60000]
"""
import argparse
import os
import struct
import time

import numpy as np


def images(data, name):
    raw = open(os.path.join(data, name), "rb").read()
    (n,) = struct.unpack(">I", raw[4:8])
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 784).astype(np.float32) / 255


def labels(data, name):
    return np.frombuffer(open(os.path.join(data, name), "rb").read(), np.uint8, offset=8).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("MNIST_DIR", "data/mnist"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=60000)
    args = ap.parse_args()
    x_all, y_all = images(args.data, "train-images-idx3-ubyte"), labels(args.data, "train-labels-idx1-ubyte")
    x_all, y_all = x_all[: args.samples], y_all[: args.samples]
    rng = np.random.default_rng(42)
    sizes = [784] + [int(w) for w in args.hidden.split(",")] + [10]
    w = [(rng.standard_normal((i, o)) * np.sqrt(2 / i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    b = [np.zeros(o, np.float32) for o in sizes[1:]]
    lr, batch, times = np.float32(0.1), args.batch, []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x_all))
        for s in range(0, len(x_all), batch):
            idx = order[s : s + batch]
            x, y = x_all[idx], y_all[idx]
            hs = [x]
            for l in range(len(w) - 1):
                hs.append(np.maximum(hs[-1] @ w[l] + b[l], 0))
            z = hs[-1] @ w[-1] + b[-1]
            e = np.exp(z - z.max(1, keepdims=True))
            dz = e / e.sum(1, keepdims=True)
            dz[np.arange(len(y)), y] -= 1
            dz /= len(y)
            for l in range(len(w) - 1, -1, -1):
                dw, db = hs[l].T @ dz, dz.sum(0)
                if l > 0:
                    dz = dz @ w[l].T
                    dz[hs[l] <= 0] = 0
                w[l] -= lr * dw
                b[l] -= lr * db
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    print(f"numpy median epoch {median:.3f} s ({median * 60000 / len(x_all):.3f} s per 60 000 samples)")


if __name__ == "__main__":
    main()
