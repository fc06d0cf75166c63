#!/usr/bin/env bash
# Peer comparison (a benchmark, not a test): ONNX Runtime's static int8 quantisation next to
# ours on the same ONNX and the same calibration images.
#   bash tools/peers/run.sh [ort_compare.py args...]   (defaults: the shipped MNIST model)
# Creates target/peers-venv from tools/peers/requirements.txt once, builds host-tools.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/target/peers-venv"
REQ="$ROOT/tools/peers/requirements.txt"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
    echo "$WANT" > "$STAMP"
fi
cargo build --release -q -p host-tools --manifest-path "$ROOT/Cargo.toml"
exec "$VENV/bin/python" "$ROOT/tools/peers/ort_compare.py" --host-tools "$ROOT/target/release/host-tools" "$@"
