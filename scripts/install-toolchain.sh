#!/usr/bin/env bash
# Install what the build and tests need on Debian 12 (x86_64 host):
#  * rustup stable with rustfmt + clippy (host builds, fmt check);
#  * Debian's own Rust 1.96 ("-web" packages) plus the prebuilt arm64 std, so we can
#    cross-compile for aarch64-unknown-linux-gnu (rustup offers no extra targets here),
#    and its clippy (`cargo +debian clippy --target aarch64-…` lints the NEON kernels);
#  * the aarch64 cross gcc (used as linker) and qemu-user (runs the aarch64 test binaries);
#  * llvm-14 for llvm-mca (cycle estimates in `host-tools bench`);
#  * qemu-system-aarch64 10 (bookworm-backports) to boot the bare-metal firmware;
#  * chromium: the `host-tools report` test renders the HTML page in headless Chromium.
#  * cargo-fuzz 0.13.2 (needs rustup's nightly toolchain) for the fuzz targets in fuzz/;
#  * Python's onnx in target/onnx-venv (onnx.checker on the files `host-tools train` writes).
# Idempotent: every step checks first and is skipped when already done.
set -euo pipefail

step() { printf '[install-toolchain] %s\n' "$*"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        step "ERROR: not root and no sudo; cannot install system packages" >&2; exit 1
    fi
fi

PKGS=(rustc-web cargo-web rust-web-src rust-web-clippy libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
      qemu-user llvm-14 chromium)

# 1. arm64 as a foreign dpkg architecture (needed for libstd-rust-web-dev:arm64).
if dpkg --print-foreign-architectures | grep -qx arm64; then
    step "dpkg arch arm64: already enabled"
else
    step "dpkg arch arm64: enabling"
    "${SUDO[@]}" dpkg --add-architecture arm64
fi

# 2. Debian packages (only if something is missing).
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    step "apt packages: already installed"
else
    step "apt packages: installing ${missing[*]}"
    # Lock timeout: wait for another apt run rather than failing on its lock.
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}"
fi

# 3. rustup must exist (it provides the stable host toolchain).
command -v rustup >/dev/null 2>&1 || { step "ERROR: rustup not found on PATH" >&2; exit 1; }

# 4. Expose Debian's /usr/bin/{rustc,cargo} to rustup as toolchain "debian",
#    so `cargo +debian ...` works next to rustup's stable.
if cargo +debian --version >/dev/null 2>&1; then
    step "rustup toolchain 'debian': already linked ($(cargo +debian --version))"
else
    step "rustup toolchain 'debian': linking /usr"
    rustup toolchain link debian /usr
    cargo +debian --version
fi

# 5. rustfmt and clippy for the stable toolchain.
if cargo +stable fmt --version >/dev/null 2>&1 && cargo +stable clippy --version >/dev/null 2>&1; then
    step "rustfmt + clippy (stable): already installed"
else
    step "rustfmt + clippy (stable): installing"
    rustup component add --toolchain stable rustfmt clippy
fi

# 6. qemu-system-aarch64 10 from bookworm-backports (bookworm's 7.2 has no raspi4b machine):
#    boots the bare-metal firmware (firmware/baremetal) in the tests.
if qemu-system-aarch64 -machine help 2>/dev/null | grep -q '^raspi4b'; then
    step "qemu-system-aarch64 with raspi4b: already installed"
else
    step "qemu-system-aarch64: installing from bookworm-backports"
    BP=/etc/apt/sources.list.d/bookworm-backports.sources
    if [ ! -f "$BP" ]; then
        # The mirror is the one this machine's own apt sources use for bookworm (whatever
        # mirror or proxy it is configured with): no registry host is written here.
        URI=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' \
            | awk '$2 == "bookworm" { print $1; exit }')
        if [ -z "$URI" ]; then
            step "ERROR: no apt source for Debian bookworm found (needed for bookworm-backports)" >&2
            exit 1
        fi
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$URI" \
            | "${SUDO[@]}" tee "$BP" >/dev/null
    fi
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q
    # Name the release per package: `-t bookworm-backports` would also upgrade qemu-user to
    # the backport, whose qemu-aarch64 has no TCG plugins (host-tools bench counts with one).
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y -q --no-install-recommends qemu-system-arm/bookworm-backports \
        qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports
fi

# 7. Sanity: the cross tools are callable.
for t in aarch64-linux-gnu-gcc aarch64-linux-gnu-ld aarch64-linux-gnu-objcopy qemu-aarch64 qemu-system-aarch64 \
    chromium; do
    command -v "$t" >/dev/null 2>&1 || { step "ERROR: $t not found after install" >&2; exit 1; }
done
# 8. cargo-fuzz, pinned (the fuzz-smoke stage runs fuzz/smoke.sh): libFuzzer needs nightly.
CARGO_FUZZ_VERSION=0.13.2
if ! cargo +nightly --version >/dev/null 2>&1; then
    step "ERROR: the nightly toolchain is missing (cargo fuzz needs it: rustup toolchain install nightly)" >&2
    exit 1
fi
if [ "$(cargo fuzz --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    step "cargo-fuzz $CARGO_FUZZ_VERSION: already installed"
else
    step "cargo-fuzz $CARGO_FUZZ_VERSION: installing"
    cargo +stable install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
fi
# 9. Python's onnx (pinned as tools/fixtures/requirements.txt pins it) in its own small
#    venv: host-tools/tests/train.rs runs onnx.checker on the ONNX files `train` writes.
ONNX_VERSION=1.23.2
ONNX_VENV="$(cd "$(dirname "$0")/.." && pwd)/target/onnx-venv"
if [ "$("$ONNX_VENV/bin/python" -c 'import onnx; print(onnx.__version__)' 2>/dev/null)" = "$ONNX_VERSION" ]; then
    step "python onnx $ONNX_VERSION: already installed"
else
    step "python onnx $ONNX_VERSION: installing into $ONNX_VENV"
    python3 -m venv "$ONNX_VENV"
    "$ONNX_VENV/bin/python" -m pip install --disable-pip-version-check -q "onnx==$ONNX_VERSION"
fi
step "done"
