#!/usr/bin/env python3
"""The PyTorch (eager) peer of the MNIST timing run: 784-<hidden>-10 as nn.Linear +
ReLU layers, nn.CrossEntropyLoss, torch.optim.SGD lr 0.1, He (kaiming normal) init,
batches gathered from a float32 tensor of the images. Prints the median epoch time
(training only) over --epochs epochs, and that time per 60 000 samples.

    python3 -m pip install torch
    python3 scripts/torch_epoch.py [--threads 2] [--hidden 128,64] [--batch 128]
        [--samples 60000] [--epochs 3] [--data DIR]
"""
import argparse
import os
import struct
import time

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("MNIST_DIR", "data/mnist"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    raw = open(os.path.join(args.data, "train-images-idx3-ubyte"), "rb").read()
    (n,) = struct.unpack(">I", raw[4:8])
    x_all = torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, 784).float() / 255
    lab = open(os.path.join(args.data, "train-labels-idx1-ubyte"), "rb").read()
    y_all = torch.frombuffer(bytearray(lab[8:]), dtype=torch.uint8).long()
    x_all, y_all = x_all[: args.samples].contiguous(), y_all[: args.samples].contiguous()
    sizes = [784] + [int(w) for w in args.hidden.split(",")] + [10]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(a, b)
        torch.nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        torch.nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x_all))
        for s in range(0, len(x_all), args.batch):
            idx = order[s : s + args.batch]
            x, y = x_all[idx], y_all[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    print(f"torch median epoch {median:.3f} s ({median * 60000 / len(x_all):.3f} s per 60 000 samples)")


if __name__ == "__main__":
    main()
