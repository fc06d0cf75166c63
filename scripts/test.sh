#!/usr/bin/env bash
# The project's test command: formatting, all crates on the x86_64 host, then the runtime
# crate cross-compiled for aarch64 Linux and run under qemu-user with several CPU models.
set -euo pipefail
cd "$(dirname "$0")/.."

# The aarch64 build uses Debian's rustc (another version than rustup stable): give it its
# own target dir so the two compilers never invalidate each other's artifacts.
DEBIAN_TARGET_DIR=target/debian
AARCH64=aarch64-unknown-linux-gnu

passed=(); failed=()
stage() {   # stage NAME CMD...: run one stage, record and time it, keep going on failure
    local name=$1; shift
    printf '\n==== [%s] %s\n' "$name" "$*"
    local t0=$SECONDS s
    if "$@"; then passed+=("$name"); s=ok; else failed+=("$name"); s=FAILED; fi
    printf '==== [%s] %s in %ss\n' "$name" "$s" $((SECONDS - t0))
}

stage toolchain scripts/install-toolchain.sh
[ ${#failed[@]} -eq 0 ] || { echo "toolchain install failed; stopping" >&2; exit 1; }

stage fmt cargo fmt --all -- --check
stage host-tests cargo test --workspace --release
aarch64_test() ( # aarch64_test QEMU_CPU_VALUE ("" = qemu's default CPU); subshell: env stays local
    if [ -n "$1" ]; then export QEMU_CPU=$1; else unset QEMU_CPU; fi
    CARGO_TARGET_DIR=$DEBIAN_TARGET_DIR \
        cargo +debian test -p convmixer-edge --release --target "$AARCH64"
)
stage aarch64-qemu-default aarch64_test ""
stage aarch64-qemu-cortex-a72 aarch64_test cortex-a72
stage aarch64-qemu-max aarch64_test max

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "SUMMARY: all ${#passed[@]} stages passed (${passed[*]})"
else
    echo "SUMMARY: ${#failed[@]} stage(s) FAILED: ${failed[*]} (passed: ${passed[*]:-none})"
    exit 1
fi
