//! Run-time CPU feature detection (FEAT_FP16, FEAT_DotProd) for [`super::Isa`] and
//! [`super::fp16_available`]: besides the SIMD kernels the only `unsafe` in the crate, a
//! libc call on Linux and a system-register read on bare metal, neither of which touches
//! memory the program owns.

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
