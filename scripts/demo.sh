#!/usr/bin/env bash
# The main job: quantize the MNIST ConvMixer (ONNX) to an int8 and an fp16 .cmx blob, then
# evaluate fp32 (the ONNX itself, run by tract), int8 and fp16 on the held-out images and
# print their top-1 accuracy side by side. Needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

EX=examples/mnist
ONNX=$EX/convmixer-mnist.torchscript.onnx
OUT=target/demo
mkdir -p "$OUT"

# Without the default `train` feature: burn (training) is not needed here and is about half
# of a cold build.
echo "==== building host-tools (without the train feature)"
cargo build --release -p host-tools --no-default-features
ht() { target/release/host-tools "$@"; }

PREP=(--mean 0.1307 --std 0.3081 --labels "$EX/labels.txt")
echo "==== quantize int8 -> $OUT/mnist-int8.cmx"
ht quantize "$ONNX" --calib "$EX/calib" "${PREP[@]}" -o "$OUT/mnist-int8.cmx"
echo "==== quantize fp16 -> $OUT/mnist-fp16.cmx"
ht quantize "$ONNX" --calib "$EX/calib" "${PREP[@]}" --precision fp16 -o "$OUT/mnist-fp16.cmx"

# The ONNX carries no preprocessing, so it gets mean/std; the blobs embed them.
echo "==== eval fp32 (ONNX via tract)"
ht eval "$ONNX" --data "$EX/heldout" --mean 0.1307 --std 0.3081 --json | tee "$OUT/eval-fp32.json"
echo "==== eval int8"
ht eval "$OUT/mnist-int8.cmx" --data "$EX/heldout" --json | tee "$OUT/eval-int8.json"
echo "==== eval fp16"
ht eval "$OUT/mnist-fp16.cmx" --data "$EX/heldout" --json | tee "$OUT/eval-fp16.json"

top1() { sed -n 's/.*"top1":\([0-9.eE+-]*\).*/\1/p' "$OUT/eval-$1.json"; }
n=$(sed -n 's/.*"n":\([0-9]*\).*/\1/p' "$OUT/eval-int8.json")
echo
echo "MNIST held-out digits ($n images), top-1:"
for p in fp32 int8 fp16; do
    awk -v p="$p" -v t="$(top1 "$p")" 'BEGIN { printf "  %-5s %6.2f%%\n", p, 100 * t }'
done
