#!/usr/bin/env python3
"""The PyTorch (eager) peer of the MNIST timing run: 784-<hidden>-10 as nn.Linear +
ReLU layers, nn.CrossEntropyLoss, torch.optim.SGD lr 0.1, He (kaiming normal) init,
batches gathered from a float32 tensor of the images. Prints the median epoch time
(training only) over --epochs epochs, and that time per 60 000 samples.

    python3 -m pip install torch
    python3 scripts/torch_epoch.py [--threads 2] [--hidden 128,64] [--batch 128]
        [--samples 60000] [--epochs 3] [--data DIR]
"""
import time

import torch

from peer_common import arguments, mnist_train, report


def main():
    args = arguments(__doc__, threads=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    x, y = mnist_train(args.data, args.samples)
    x_all, y_all = torch.from_numpy(x), torch.from_numpy(y)
    sizes = args.sizes
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
    report("torch", times, len(x_all))


if __name__ == "__main__":
    main()
