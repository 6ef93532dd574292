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
import time

import numpy as np

from peer_common import arguments, mnist_train, report


def main():
    args = arguments(__doc__)
    x_all, y_all = mnist_train(args.data, args.samples)
    rng = np.random.default_rng(42)
    sizes = args.sizes
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
    report("numpy", times, len(x_all))


if __name__ == "__main__":
    main()
