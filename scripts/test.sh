#!/usr/bin/env bash
# The project's test command: formatting, all crates on the x86_64 host (including the
# firmware tests: the bare-metal image booted under qemu-system-aarch64 on virt, Pi 3 and
# Pi 4, and the Linux example under qemu-user), then the runtime crate cross-compiled for
# aarch64 Linux and run under qemu-user with several CPU models.
set -euo pipefail
cd "$(dirname "$0")/.."

# The aarch64 build uses Debian's rustc (another version than rustup stable): give it its
# own target dir so the two compilers never invalidate each other's artifacts.
DEBIAN_TARGET_DIR=target/debian
AARCH64=aarch64-unknown-linux-gnu

passed=(); failed=(); times=()
stage() {   # stage NAME CMD...: run one stage, record and time it, keep going on failure
    local name=$1; shift
    printf '\n==== [%s] %s\n' "$name" "$*"
    local t0=$SECONDS s
    if "$@"; then passed+=("$name"); s=ok; else failed+=("$name"); s=FAILED; fi
    printf '==== [%s] %s in %ss\n' "$name" "$s" $((SECONDS - t0))
    times+=("$(printf '%-26s %-6s %5ss' "$name" "$s" $((SECONDS - t0)))")
}

stage toolchain scripts/install-toolchain.sh
[ ${#failed[@]} -eq 0 ] || { echo "toolchain install failed; stopping" >&2; exit 1; }

stage fmt cargo fmt --all -- --check
# The bare-metal firmware is a workspace of its own (aarch64-unknown-none only).
stage fmt-firmware cargo fmt --manifest-path firmware/baremetal/Cargo.toml -- --check
# CMX_REQUIRE_AVX2: the runtime's kernel suites fail if the x86_64 AVX2 kernels were not
# detected (so that they cannot be skipped silently on this x86_64 host).
stage host-tests env CMX_REQUIRE_AVX2=1 cargo test --workspace --release
# Every public item documented, every intra-doc link resolving.
stage docs env RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
# Clippy, warnings as errors, on the runtime crate: its lints (src/lib.rs, clippy.toml) deny
# undocumented `unsafe`, unwrap/expect/panics and indexing that could panic. Once on x86_64
# (portable code), once for aarch64 with Debian's clippy, where the NEON kernels compile.
# (The rest of the workspace is not yet clippy-clean; widen to --workspace when it is.)
stage clippy cargo clippy -p convmixer-edge --all-targets --release -- -D warnings
stage clippy-aarch64 env CARGO_TARGET_DIR="$DEBIAN_TARGET_DIR" \
    cargo +debian clippy -p convmixer-edge --all-targets --release --target "$AARCH64" -- -D warnings
# The AVX-512 VNNI int8 GEMM, bit for bit, on an emulated Tiger Lake (no machine here
# exposes AVX-512; qemu emulates none): Bochs boots a Debian kernel that runs the kernel
# suites (tools/avx512-emu/run.sh; README "x86_64 kernels").
stage x86-avx512-bochs tools/avx512-emu/run.sh
aarch64_test() ( # aarch64_test QEMU_CPU [CMX_REQUIRE_DOTPROD]; subshell: env stays local
    export QEMU_CPU=$1 CMX_REQUIRE_DOTPROD=${2:-0}
    CARGO_TARGET_DIR=$DEBIAN_TARGET_DIR \
        cargo +debian test -p convmixer-edge --release --target "$AARCH64"
)
# ARMv8.0 (Raspberry Pi 4's core: the SMLAL kernels), then a CPU with the dot product (the
# SDOT kernels; the test fails if dotprod is not detected there, so they cannot be skipped).
stage aarch64-qemu-cortex-a72 aarch64_test cortex-a72
stage aarch64-qemu-max-dotprod aarch64_test max 1
# libFuzzer (cargo fuzz, nightly): both targets over the repo corpus plus 2000 fresh
# mutations each (fuzz/smoke.sh; README "Fuzzing").
stage fuzz-smoke fuzz/smoke.sh

echo
echo "Stage times (total ${SECONDS}s):"
printf '  %s\n' "${times[@]}"
if [ ${#failed[@]} -eq 0 ]; then
    echo "SUMMARY: all ${#passed[@]} stages passed (${passed[*]})"
else
    echo "SUMMARY: ${#failed[@]} stage(s) FAILED: ${failed[*]} (passed: ${passed[*]:-none})"
    exit 1
fi
