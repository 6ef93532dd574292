#!/usr/bin/env python3
"""Loads a model saved by fusegrad's `save_parameters` with the safetensors package and
NumPy only, runs its forward pass (Dense layers from the file, activations from its
recorded architecture) on the inputs given, and compares with fusegrad's `predict`.

usage: python3 scripts/check_safetensors.py MODEL.safetensors X.txt PROBS.txt [TOL]
(X.txt, PROBS.txt: one row per line, values separated by spaces; TOL default 1e-5)
"""
import re
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main():
    path, xs, ps = sys.argv[1:4]
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-5
    tensors = load_file(path)
    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    assert meta["format"] == "fusegrad", meta
    arch = meta["architecture"]
    layers = arch.split(": ", 1)[1].rsplit("; loss ", 1)
    steps, loss = layers[0].split(", "), layers[1]
    x = np.loadtxt(xs, dtype=np.float32, ndmin=2)
    want = np.loadtxt(ps, dtype=np.float32, ndmin=2)
    h, k = x, 0
    for step in steps:
        if step.startswith("Dense"):
            w, b = tensors[f"dense.{k}.weights"], tensors[f"dense.{k}.biases"]
            h = h @ w + b
            if step.endswith("+ ReLU"):
                h = np.maximum(h, 0)
            k += 1
        elif step == "Relu":
            h = np.maximum(h, 0)
        elif step == "Tanh":
            h = np.tanh(h)
        elif step == "Sigmoid":
            h = 1 / (1 + np.exp(-h))
        elif step.startswith("Dropout"):
            pass  # off at inference
        else:
            sys.exit(f"unknown layer {step!r} in {arch!r}")
    if loss == "SoftmaxCrossEntropy" or re.fullmatch("Softmax", steps[-1]):
        e = np.exp(h - h.max(axis=1, keepdims=True))
        h = e / e.sum(axis=1, keepdims=True)
    diff = float(np.abs(h - want).max())
    print(f"{path}: {len(steps)} layers ({arch}); max |difference| against predict {diff:.2e} (tolerance {tol:g})")
    sys.exit(0 if diff <= tol else 1)


if __name__ == "__main__":
    main()
