#!/usr/bin/env bash
# Peer comparison (a benchmark, not a test): ONNX Runtime's static int8 quantisation next to
# ours on the same ONNX and the same calibration images.
#   bash tools/peers/run.sh [ort_compare.py args...]   (defaults: the shipped MNIST model)
#   bash tools/peers/run.sh --all                      (shipped model + target/peers-models/*,
#                                                       made by tools/fixtures/train_peers.py)
# Creates target/peers-venv from tools/peers/requirements.txt once, builds host-tools and the
# logits helper tools/peers/logits (its own workspace; built into target/peers-logits).
# PEERS_SKIP_BUILD=1 uses the binaries already built (e.g. while the tree does not compile).
# host-tools is copied to target/peers-bin/ first, so a rebuild of target/release/host-tools
# during a long --all run (~25 min on 2 cores) cannot mix two versions in one table.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/target/peers-venv"
bash "$ROOT/tools/peers/venv.sh"
LOGITS="$ROOT/target/peers-logits/release/peers-logits"
if [ "${PEERS_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p host-tools --manifest-path "$ROOT/Cargo.toml"
    cargo build --release -q --manifest-path "$ROOT/tools/peers/logits/Cargo.toml" \
        --target-dir "$ROOT/target/peers-logits"
fi
BIN="$ROOT/target/peers-bin"
mkdir -p "$BIN"
cp -p "$ROOT/target/release/host-tools" "$BIN/host-tools.tmp.$$"
mv -f "$BIN/host-tools.tmp.$$" "$BIN/host-tools"
exec "$VENV/bin/python" "$ROOT/tools/peers/ort_compare.py" --host-tools "$BIN/host-tools" \
    --logits-tool "$LOGITS" "$@"
