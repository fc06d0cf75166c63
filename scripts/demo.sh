#!/usr/bin/env bash
# The main job: quantize the MNIST ConvMixer (ONNX) to an int8 and an fp16 .cmx blob, then
# evaluate fp32 (the ONNX itself, run by tract), int8 and fp16 on the held-out images and
# print their top-1 accuracy side by side. Needs only cargo (and python3 for the table).
set -euo pipefail
cd "$(dirname "$0")/.."

EX=examples/mnist
ONNX=$EX/convmixer-mnist.torchscript.onnx
OUT=target/demo
mkdir -p "$OUT"

echo "==== building host-tools"
cargo build --release -p host-tools
ht() { cargo run -q --release -p host-tools -- "$@"; }

PREP=(--mean 0.1307 --std 0.3081 --labels "$EX/labels.txt")
echo "==== quantize int8 -> $OUT/mnist-int8.cmx"
ht quantize "$ONNX" --calib "$EX/calib" "${PREP[@]}" -o "$OUT/mnist-int8.cmx"
echo "==== quantize fp16 -> $OUT/mnist-fp16.cmx"
ht quantize "$ONNX" --calib "$EX/calib" "${PREP[@]}" --precision fp16 -o "$OUT/mnist-fp16.cmx"

# The ONNX carries no preprocessing, so it gets mean/std/labels; the blobs embed them.
echo "==== eval fp32 (ONNX via tract)"
ht eval "$ONNX" "$EX/heldout" "${PREP[@]}" --json | tee "$OUT/eval-fp32.json"
echo "==== eval int8"
ht eval "$OUT/mnist-int8.cmx" "$EX/heldout" --json | tee "$OUT/eval-int8.json"
echo "==== eval fp16"
ht eval "$OUT/mnist-fp16.cmx" "$EX/heldout" --json | tee "$OUT/eval-fp16.json"

echo
python3 - "$OUT" <<'PY'
import json, sys
def top1(path):
    text = open(path).read()
    try:
        doc = json.loads(text)
    except ValueError:  # tolerate log lines around a one-line JSON object
        doc = json.loads([l for l in text.splitlines() if l.lstrip().startswith("{")][-1])
    return float(doc["top1"])
print(f"{'model':<6} {'top-1':>8}")
for name in ("fp32", "int8", "fp16"):
    t = top1(f"{sys.argv[1]}/eval-{name}.json")
    print(f"{name:<6} {t * 100 if t <= 1 else t:>7.2f}%")
PY
