#!/usr/bin/env bash
# Makes target/peers-venv from the pinned tools/peers/requirements.txt (once; again when the
# pins change). Used by tools/peers/run.sh and `host-tools bench --host`.
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
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ" >&2
    echo "$WANT" > "$STAMP"
fi
