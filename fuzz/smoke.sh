#!/usr/bin/env bash
# Smoke run of the cargo-fuzz targets (the `fuzz-smoke` stage of scripts/test.sh): build
# both (nightly, address sanitizer, into fuzz/target), then for each target replay every
# input of the repo corpus (fuzz/corpus/TARGET) and of the fixed bugs' inputs
# (fuzz/regressions/TARGET), and run FUZZ_SMOKE_RUNS fresh mutations (default 2000) with a
# fixed seed. New inputs go to a temporary folder (the repo's folders are only read); a
# crash, timeout or out-of-memory fails the stage and leaves the input in
# fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"

RUNS=${FUZZ_SMOKE_RUNS:-2000}
# No fake stacks: safe Rust cannot use a stack frame after return, and they cost a third of
# the kernels' time.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=0}
declare -A MAX_LEN=([blob]=70000 [onnx]=32768)

cargo +nightly fuzz build
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in blob onnx; do
    dirs=("corpus/$t")
    [ -d "regressions/$t" ] && dirs+=("regressions/$t")
    seeds=$(find "${dirs[@]}" -type f | wc -l)
    mkdir "$tmp/$t"
    echo "fuzz-smoke: $t: $seeds inputs (${dirs[*]}) + $RUNS mutations"
    status=0
    cargo +nightly fuzz run "$t" "$tmp/$t" "${dirs[@]}" -- \
        -runs=$((seeds + RUNS)) -seed=1 -max_len="${MAX_LEN[$t]}" \
        -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$tmp/$t.log" 2>&1 || status=$?
    # libFuzzer's summary lines only (not one line per new input).
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::|Done )' "$tmp/$t.log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$tmp/$t.log" >&2
        echo "fuzz-smoke: $t FAILED (exit $status; the input is in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
done
echo "fuzz-smoke: both targets passed"
