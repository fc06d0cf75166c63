#!/usr/bin/env bash
# timm's full-size ConvMixers through every host-tools command, from both exporters (a
# check by hand, not a test: it takes tens of minutes on 2 cores).
#
#   bash tools/fixtures/run.sh timm_convmixers --full   # once: target/timm/<model>/...
#   cargo build --release -p host-tools
#   bash tools/timm/every_command.sh [MODEL...]          # default: all three
#
# For each model: quantize (int8 with 32 calibration pictures, fp16, fp32) from the
# TorchScript export and from the dynamo default export (model.onnx + model.onnx.data),
# checking that both give the same blobs byte for byte; classify; eval of the int8 and fp16
# blobs and of the ONNX itself (tract fp32); report (int8, fp16 and fp32 variants against
# the folded fp32 graph); flash --board pi4 (kernel8.img with the int8 blob). The pictures
# are the synthetic ones of `host-tools bench --host` (target/bench-host/t768, made there
# when missing). Prints one line per command with its wall time and what it printed last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HT="$ROOT/target/release/host-tools"
OUT="$ROOT/target/timm-check"
PICS="$ROOT/target/bench-host/t768"
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(convmixer_768_32 convmixer_1024_20_ks9_p14 convmixer_1536_20)
[ -x "$HT" ] || { echo "build host-tools first: cargo build --release -p host-tools" >&2; exit 1; }
if [ ! -d "$PICS/calib" ]; then
    "$HT" bench --host T768 --json >/dev/null
fi
NORM=(--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)
mkdir -p "$OUT"

run() {   # run LABEL CMD...: time one command, print its last output line
    local label=$1; shift
    local t0 log
    t0=$(date +%s.%N)
    if log=$("$@" 2>&1); then
        printf '%-44s %7.1fs  ok   %s\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)" "$(echo "$log" | tail -1 | cut -c1-150)"
    else
        printf '%-44s %7.1fs  FAILED %s\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)" "$(echo "$log" | tail -1)"
        return 1
    fi
}

for m in "${MODELS[@]}"; do
    dir="$ROOT/target/timm/$m"
    [ -f "$dir/torchscript.onnx" ] || { echo "$dir: missing (bash tools/fixtures/run.sh timm_convmixers --full)" >&2; exit 1; }
    o="$OUT/$m"
    mkdir -p "$o"
    echo "== $m"
    for ex in torchscript dynamo; do
        onnx="$dir/torchscript.onnx"
        [ "$ex" = dynamo ] && onnx="$dir/dynamo/model.onnx"
        run "$m $ex quantize int8 (32 pictures)" "$HT" quantize "$onnx" --calib "$PICS/calib" "${NORM[@]}" -o "$o/$ex-int8.cmx"
        run "$m $ex quantize fp16" "$HT" quantize "$onnx" --precision fp16 "${NORM[@]}" -o "$o/$ex-fp16.cmx"
        run "$m $ex quantize fp32" "$HT" quantize "$onnx" --precision fp32 "${NORM[@]}" -o "$o/$ex-fp32.cmx"
    done
    for p in int8 fp16 fp32; do
        cmp -s "$o/torchscript-$p.cmx" "$o/dynamo-$p.cmx" \
            && echo "$m $p: TorchScript and dynamo blobs identical ($(stat -c %s "$o/dynamo-$p.cmx") bytes)" \
            || { echo "$m $p: TorchScript and dynamo blobs DIFFER" >&2; exit 1; }
    done
    run "$m classify int8 (2 pictures)" "$HT" classify "$o/dynamo-int8.cmx" "$PICS"/images/0/0000.png "$PICS"/images/0/0001.png --top 3
    run "$m eval int8 (16 pictures)" "$HT" eval "$o/dynamo-int8.cmx" --data "$PICS/images"
    run "$m eval fp16 (16 pictures)" "$HT" eval "$o/dynamo-fp16.cmx" --data "$PICS/images"
    run "$m eval ONNX, tract fp32 (16 pictures)" "$HT" eval "$dir/dynamo/model.onnx" --data "$PICS/images" "${NORM[@]}"
    run "$m report (32 calib, 16 labelled)" "$HT" report "$dir/dynamo/model.onnx" --calib "$PICS/calib" --data "$PICS/images" "${NORM[@]}" --json
    run "$m flash --board pi4 (int8)" "$HT" flash "$o/dynamo-int8.cmx" --board pi4 --out "$o/fw-pi4"
    echo "$m: kernel8.img $(stat -c %s "$o/fw-pi4/kernel8.img") bytes"
done
