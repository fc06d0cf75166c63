#!/usr/bin/env bash
# The runtime's kernel suites on an emulated AVX-512 VNNI CPU: the machines this project is
# built on have AVX2 only, and qemu's TCG emulates no AVX-512, so the AVX-512 VNNI int8 GEMM
# (src/kernels/gemm_i8/avx512.rs) is tested bit for bit against the reference under Bochs'
# Tiger Lake model (AVX-512 F/BW/VL/VNNI), booting a Debian kernel whose initramfs runs the
# statically linked test binary. Bochs checks results, not speed (it runs about 30 M
# instructions/s here).
#
# Usage: tools/avx512-emu/run.sh [TEST-ARGS...]   (default: the kernel suites, see ARGS)
# Needs: apt sources (packages are fetched with `apt-get download` from the machine's own
# configuration and unpacked under target/avx512-emu, nothing installed), rustup's stable.
# Env: BOCHS_TIMEOUT (seconds, default 1500).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
D=$ROOT/target/avx512-emu
R=$D/root; W=$D/work
mkdir -p "$D/debs" "$R" "$W"

# Every kernel suite (the ops without an AVX-512 kernel run their AVX2 one under
# Isa::Avx512Vnni), failing if AVX-512 VNNI was not detected, but three tests:
# - the panel test: its reference side takes 5 s natively, over 10 minutes here, and the
#   VNNI kernel has no panels (its in-place path is inplace_pointwise_equals_the_reference's);
# - the two that check F16C's float -> half rounding: Bochs 2.7 rounds VCVTPS2PH's ties away
#   from zero (-0.18121338, halfway between two halves, gives 0xb1cd; real CPUs and IEEE's
#   ties-to-even give 0xb1cc), so they fail under it, on a kernel real CPUs run correctly
#   (they pass in the host-tests stage).
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(CMX_REQUIRE_AVX512VNNI=1 kernels:: --test-threads 1
    --skip inplace_pointwise_panels --skip f16c_conversions_match_half
    --skip embed_f::tests::embed_drivers_match_reference)

# 1. The test binary, static (the initramfs has no libc).
echo "building the static test binary"
BIN=$(RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$D/cargo" \
    cargo test -p convmixer-edge --release --lib --no-run --target x86_64-unknown-linux-gnu \
    --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "convmixer_edge":
        print(m["executable"])' | tail -1)
[ -x "$BIN" ] || { echo "error: the static test binary was not built" >&2; exit 1; }
rustc -O -C target-feature=+crt-static --target x86_64-unknown-linux-gnu \
    tools/avx512-emu/init.rs -o "$D/init"

# 2. Bochs, its BIOS, isolinux and a kernel, unpacked. The kernel: Debian's newest 6.12
# "cloud" build (6.1 hangs under Bochs 2.7 early in boot, rewriting its own entry code).
kernel_pkg() {
    apt-cache search --names-only '^linux-image-6\.12\..*-cloud-amd64$' | awk '{print $1}' | sort -V | tail -1
}
KPKG=$(kernel_pkg)
if [ -z "$KPKG" ]; then  # package lists missing or stale: refresh them once
    SUDO=(); [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    KPKG=$(kernel_pkg)
fi
[ -n "$KPKG" ] || { echo "error: no linux-image-6.12.*-cloud-amd64 package in the apt sources" >&2; exit 1; }
PKGS=(bochs bochsbios vgabios libltdl7 libsamplerate0 isolinux syslinux-common genisoimage "$KPKG")
(
    cd "$D/debs"
    for p in "${PKGS[@]}"; do
        ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p" 2>&1 | grep -v unsandboxed || true
    done
    rm -rf "$R" "$D/kernel"; mkdir -p "$R" "$D/kernel"
    for p in "${PKGS[@]}"; do
        [ "$p" = "$KPKG" ] || dpkg -x "${p}"_*.deb "$R"
    done
    dpkg-deb --fsys-tarfile "${KPKG}"_*.deb | tar -x -C "$D/kernel" ./boot
)

# 3. A boot CD: isolinux, the kernel, an initramfs of /init, /test and /test.args.
rm -rf "$W"; mkdir -p "$W/iso/isolinux"
printf '%s\n' "${ARGS[*]}" > "$W/test.args"
python3 tools/avx512-emu/mkcpio.py "$W/iso/isolinux/initrd.gz" \
    init="$D/init" test="$BIN" test.args="$W/test.args"
cp "$D"/kernel/boot/vmlinuz-* "$W/iso/isolinux/vmlinuz"
cp "$R/usr/lib/ISOLINUX/isolinux.bin" "$R/usr/lib/syslinux/modules/bios/ldlinux.c32" "$W/iso/isolinux/"
# clearcpuid=pku,xsaves,xsavec: Bochs 2.7 lists PKRU in XCR0 with size 0 and a compacted
# XSAVE size the kernel disagrees with; either makes Linux turn XSAVE off (and with it the
# AVX-512 state). Without them the kernel saves x87, SSE, AVX, opmask and both ZMM halves.
cat > "$W/iso/isolinux/isolinux.cfg" <<CFG
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL vmlinuz
  APPEND initrd=initrd.gz console=ttyS0,115200 rdinit=/init panic=-1 nokaslr mitigations=off clearcpuid=pku,xsaves,xsavec ibt=off quiet
CFG
"$R/usr/bin/genisoimage" -quiet -o "$W/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table -R -J "$W/iso"

# 4. Bochs, headless (Debian's build has no `nogui`: a VNC display that waits for nobody;
# it is built with the debugger, so `-rc` answers its prompt with `c`ontinue).
cat > "$W/bochsrc" <<RC
memory: guest=512, host=512
cpu: model=tigerlake, count=1, ips=200000000, reset_on_triple_fault=0
romimage: file=$R/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=$R/usr/share/bochs/VGABIOS-lgpl-latest
ata0-master: type=cdrom, path=$W/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$W/serial.log
display_library: rfb, options="timeout=0"
clock: sync=none, time0=local
log: $W/bochs.log
panic: action=fatal
error: action=ignore
info: action=report
debug: action=ignore
mouse: enabled=0
RC
printf 'c\nquit\n' > "$W/dbg.rc"
echo "booting Bochs (tigerlake): about a minute to /init, then the tests"
: > "$W/serial.log"
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu
export LTDL_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu/bochs/plugins BXSHARE=$R/usr/share/bochs
t0=$SECONDS
timeout "${BOCHS_TIMEOUT:-1500}" "$R/usr/bin/bochs-bin" -q -f "$W/bochsrc" -rc "$W/dbg.rc" \
    > "$W/stdout.log" 2>&1 &
BPID=$!
# The guest powers off after the tests; should it not, stop Bochs a minute after they end.
done_at=
while kill -0 $BPID 2>/dev/null; do
    if [ -z "$done_at" ] && grep -aq 'TEST-EXIT' "$W/serial.log"; then done_at=$SECONDS; fi
    if [ -n "$done_at" ] && [ $((SECONDS - done_at)) -gt 60 ]; then kill $BPID 2>/dev/null || true; fi
    sleep 2
done
wait $BPID 2>/dev/null || true
grep -a -v '^\[ *[0-9]*\.[0-9]*\]' "$W/serial.log" || true
echo "Bochs ran $((SECONDS - t0)) s (serial log: $W/serial.log)"
grep -aq '^\[init\] TEST-EXIT 0' "$W/serial.log"
