#!/usr/bin/env python3
"""The NumPy peer of the MNIST timing run: 784-128-64-10 (ReLU, softmax + cross-entropy),
batch 128, SGD lr 0.1, He init, NNFS-style (plain NumPy, no dX for layer 1). Prints the
median epoch time (training only) over --epochs epochs. Threads: OPENBLAS_NUM_THREADS /
OMP_NUM_THREADS, as for any NumPy program.

    python3 -m pip install numpy
    OPENBLAS_NUM_THREADS=2 python3 scripts/numpy_epoch.py [--data DIR] [--epochs 3]
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
    args = ap.parse_args()
    x_all, y_all = images(args.data, "train-images-idx3-ubyte"), labels(args.data, "train-labels-idx1-ubyte")
    rng = np.random.default_rng(42)
    sizes = [784, 128, 64, 10]
    w = [(rng.standard_normal((i, o)) * np.sqrt(2 / i)).astype(np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    b = [np.zeros(o, np.float32) for o in sizes[1:]]
    lr, batch, times = np.float32(0.1), 128, []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = rng.permutation(len(x_all))
        for s in range(0, len(x_all), batch):
            idx = order[s:s + batch]
            x, y = x_all[idx], y_all[idx]
            h1 = np.maximum(x @ w[0] + b[0], 0)
            h2 = np.maximum(h1 @ w[1] + b[1], 0)
            z = h2 @ w[2] + b[2]
            e = np.exp(z - z.max(1, keepdims=True))
            dz = e / e.sum(1, keepdims=True)
            dz[np.arange(len(y)), y] -= 1
            dz /= len(y)
            dw2, db2, dh2 = h2.T @ dz, dz.sum(0), dz @ w[2].T
            dh2[h2 <= 0] = 0
            dw1, db1, dh1 = h1.T @ dh2, dh2.sum(0), dh2 @ w[1].T
            dh1[h1 <= 0] = 0
            dw0, db0 = x.T @ dh1, dh1.sum(0)
            for p, g in zip(w + b, [dw0, dw1, dw2, db0, db1, db2]):
                p -= lr * g
        times.append(time.perf_counter() - start)
    print(f"numpy median epoch {sorted(times)[len(times) // 2]:.3f} s")


if __name__ == "__main__":
    main()
