//! Run-time CPU feature detection (FEAT_FP16, FEAT_DotProd on aarch64; AVX2, FMA, F16C and
//! AVX-512 with VNNI on x86_64) for [`super::Isa`] and [`super::fp16_available`], without
//! `std`: besides the SIMD kernels the only `unsafe` in the crate, a libc call on aarch64 Linux, a
//! system-register read on aarch64 bare metal, and `CPUID`/`XGETBV` on x86_64, none of
//! which touches memory the program owns.

#[cfg(target_arch = "x86_64")]
use core::sync::atomic::{AtomicU8, Ordering};

/// The Linux auxiliary vector's `AT_HWCAP` word.
#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
fn hwcap() -> core::ffi::c_ulong {
    const AT_HWCAP: core::ffi::c_ulong = 16;
    extern "C" {
        fn getauxval(kind: core::ffi::c_ulong) -> core::ffi::c_ulong;
    }
    // SAFETY: getauxval (glibc, musl, bionic) takes any integer and only reads the
    // process's auxiliary vector (0 for an unknown kind); no pointer is involved.
    unsafe { getauxval(AT_HWCAP) }
}

/// FEAT_FP16 (scalar and vector) from the Linux auxiliary vector (`HWCAP_FPHP` bit 9,
/// `HWCAP_ASIMDHP` bit 10).
#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
pub fn fp16() -> bool {
    const BOTH: core::ffi::c_ulong = (1 << 9) | (1 << 10);
    hwcap() & BOTH == BOTH
}

/// FEAT_FP16 from `ID_AA64PFR0_EL1.AdvSIMD` (bits 23:20) = 1 on bare metal (EL1+).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn fp16() -> bool {
    let pfr0: u64;
    // SAFETY: reading an ID register has no side effects and is allowed at EL1+; the asm
    // touches no memory (nomem) and only writes its output register.
    unsafe {
        core::arch::asm!("mrs {}, ID_AA64PFR0_EL1", out(reg) pfr0, options(nomem, nostack, preserves_flags))
    };
    (pfr0 >> 20) & 0xf == 1
}

/// No run-time detection elsewhere.
#[cfg(not(all(target_arch = "aarch64", any(target_os = "linux", target_os = "none"))))]
pub fn fp16() -> bool {
    false
}

/// FEAT_DotProd from the Linux auxiliary vector (`HWCAP_ASIMDDP`, bit 20).
#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
pub fn dotprod() -> bool {
    const HWCAP_ASIMDDP: core::ffi::c_ulong = 1 << 20;
    hwcap() & HWCAP_ASIMDDP != 0
}

/// FEAT_DotProd from `ID_AA64ISAR0_EL1.DP` (bits 47:44) on bare metal (EL1 or higher).
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn dotprod() -> bool {
    let isar0: u64;
    // SAFETY: reading an ID register has no side effects and is allowed at EL1+; the asm
    // touches no memory (nomem) and only writes its output register.
    unsafe {
        core::arch::asm!("mrs {}, ID_AA64ISAR0_EL1", out(reg) isar0, options(nomem, nostack, preserves_flags))
    };
    (isar0 >> 44) & 0xf >= 1
}

/// No run-time detection elsewhere.
#[cfg(not(all(target_arch = "aarch64", any(target_os = "linux", target_os = "none"))))]
pub fn dotprod() -> bool {
    false
}

/// `CPUID` leaf `leaf`, sub-leaf `sub`: `[eax, ebx, ecx, edx]`.
#[cfg(target_arch = "x86_64")]
fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: CPUID exists on every x86_64 CPU, takes any leaf (an unknown one returns
    // zeros or the highest leaf's data) and only writes eax..edx; rbx, which LLVM reserves,
    // is saved in a scratch register around it and restored. No memory is touched.
    unsafe {
        core::arch::asm!(
            "mov {bx:r}, rbx",
            "cpuid",
            "xchg {bx:r}, rbx",
            bx = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") sub => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    };
    [eax, ebx, ecx, edx]
}

/// AVX2, FMA and F16C with the OS saving the YMM registers: `CPUID` leaf 1 (ECX: FMA bit
/// 12, OSXSAVE bit 27, AVX bit 28, F16C bit 29), `XCR0` bits 1 and 2 (the OS saves SSE and
/// AVX state; `XGETBV`, which OSXSAVE allows), `CPUID` leaf 7 (EBX: AVX2 bit 5). `CPUID`
/// exits to the hypervisor under virtualisation, so the answer is read once and kept.
#[cfg(target_arch = "x86_64")]
pub fn avx2() -> bool {
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    kept(&KNOWN, read_avx2)
}

/// A CPU-feature answer read once by `read` and kept in `known` (0: not read yet, 1:
/// absent, 2: present); a race only reads it twice.
#[cfg(target_arch = "x86_64")]
fn kept(known: &AtomicU8, read: impl FnOnce() -> bool) -> bool {
    match known.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let has = read();
            known.store(if has { 2 } else { 1 }, Ordering::Relaxed);
            has
        }
    }
}

/// [`avx2`] from the CPU itself.
#[cfg(target_arch = "x86_64")]
fn read_avx2() -> bool {
    const FMA: u32 = 1 << 12;
    const OSXSAVE: u32 = 1 << 27;
    const AVX: u32 = 1 << 28;
    const F16C: u32 = 1 << 29;
    const LEAF1: u32 = FMA | OSXSAVE | AVX | F16C;
    if cpuid(0, 0)[0] < 7 || cpuid(1, 0)[2] & LEAF1 != LEAF1 {
        return false;
    }
    xcr0() & 0b110 == 0b110 && cpuid(7, 0)[1] & (1 << 5) != 0
}

/// `XCR0`, the state components the OS saves (call it only where `CPUID` leaf 1 reports
/// OSXSAVE).
#[cfg(target_arch = "x86_64")]
fn xcr0() -> u32 {
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0 and is allowed where CPUID reports OSXSAVE
    // (both callers check it first); it only writes eax and edx and touches no memory.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") lo,
            out("edx") _hi,
            options(nomem, nostack, preserves_flags),
        )
    };
    lo
}

/// [`avx2`] plus AVX-512 F, BW and VL and AVX512-VNNI, with the OS saving the opmask and
/// ZMM registers: `CPUID` leaf 7 (EBX: AVX512F bit 16, AVX512BW bit 30, AVX512VL bit 31;
/// ECX: AVX512_VNNI bit 11), `XCR0` bits 5, 6, 7. Read once and kept, like [`avx2`].
#[cfg(target_arch = "x86_64")]
pub fn avx512vnni() -> bool {
    const EBX: u32 = (1 << 16) | (1 << 30) | (1 << 31);
    const ZMM: u32 = 0b1110_0110;
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    kept(&KNOWN, || {
        // avx2() checked OSXSAVE, so XGETBV may run.
        avx2() && {
            let l7 = cpuid(7, 0);
            l7[1] & EBX == EBX && l7[2] & (1 << 11) != 0 && xcr0() & ZMM == ZMM
        }
    })
}

/// Whether this CPU runs a 512-bit FMA as two 256-bit halves: AMD's Zen 4 (family 19h,
/// the only AMD family with AVX-512 before Zen 5's full-width units), whose two FMA pipes
/// then do the same work per cycle with `zmm` as with `ymm`. The float pointwise conv keeps
/// its AVX2 tiles there: the 12×32 AVX-512 tiles gain nothing and lose to the AVX2 tiles'
/// blocking (measured on a 2-vCPU EPYC (Zen 4), timm's ConvMixer-768/32 fp16 blob,
/// `kernel-bench model`: 0.43 s per image with the AVX-512 tiles, 0.39 s without). Read
/// once and kept, like [`avx2`].
#[cfg(target_arch = "x86_64")]
pub fn split_512_fma() -> bool {
    static KNOWN: AtomicU8 = AtomicU8::new(0);
    kept(&KNOWN, || {
        let v = cpuid(0, 0);
        // "AuthenticAMD" in EBX, EDX, ECX.
        let amd = [v[1], v[3], v[2]] == [0x6874_7541, 0x6974_6e65, 0x444d_4163];
        let eax = cpuid(1, 0)[0];
        let base = (eax >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((eax >> 20) & 0xff)
        } else {
            base
        };
        amd && family == 0x19
    })
}

/// No x86_64 detection elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub fn avx512vnni() -> bool {
    false
}

/// No x86_64 detection elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub fn avx2() -> bool {
    false
}
