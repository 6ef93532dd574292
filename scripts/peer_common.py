"""What the MNIST timing peers (torch_epoch.py, numpy_epoch.py) share: their command
line, the IDX files read into NumPy arrays, and the line they print."""
import argparse
import os
import struct

import numpy as np


def arguments(description, threads=False):
    """The peers' options; `threads` adds --threads (PyTorch sets its own count)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", default=os.environ.get("MNIST_DIR", "data/mnist"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", default="128,64", help="hidden widths, e.g. 512,512")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=60000, help="train on the first N samples")
    if threads:
        ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    args.sizes = [784] + [int(w) for w in args.hidden.split(",")] + [10]
    return args


def mnist_train(data, samples):
    """The first `samples` training images (float32 in [0, 1], samples × 784) and labels."""
    raw = open(os.path.join(data, "train-images-idx3-ubyte"), "rb").read()
    (n,) = struct.unpack(">I", raw[4:8])
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(n, 784)[:samples].astype(np.float32) / 255
    labels = open(os.path.join(data, "train-labels-idx1-ubyte"), "rb").read()
    y = np.frombuffer(labels, np.uint8, offset=8)[:samples].astype(np.int64)
    return x, y


def report(name, times, samples):
    """The median epoch, and that time per 60 000 samples (what sweep.py parses)."""
    median = sorted(times)[len(times) // 2]
    print(f"{name} median epoch {median:.3f} s ({median * 60000 / samples:.3f} s per 60 000 samples)")
