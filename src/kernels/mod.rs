//! Compute kernels. [`reference`](mod@reference) holds one plain scalar implementation per op; SIMD
//! variants live beside it, are named by ISA and tile shape, and are tested bit-for-bit
//! against it.

pub mod inplace;
pub mod reference;

// The NEON kernels read little-endian blob fields as native integers.
#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
#[allow(unsafe_code)]
pub mod neon;

/// Which family of kernels runs the int8 layers.
///
/// [`Isa::detect`] picks the best the CPU offers; every level gives bit-identical results.
///
/// ```
/// use convmixer_edge::kernels::Isa;
/// let isa = Isa::detect();
/// assert!(isa.available() && Isa::Scalar.available());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable scalar Rust ([`reference`](mod@reference)), on every target.
    Scalar,
    /// AArch64 ARMv8.0 NEON (`SMULL`/`SMLAL`): Cortex-A53, A72 (Raspberry Pi 3, 4).
    Neon,
    /// AArch64 NEON with the ARMv8.2 dot product (`SDOT`): Cortex-A76 (Raspberry Pi 5).
    NeonDot,
}

impl Isa {
    /// The best level this CPU supports: on aarch64 Linux from the kernel's `AT_HWCAP`,
    /// on bare metal from `ID_AA64ISAR0_EL1`, and from the compile-time target features.
    pub fn detect() -> Isa {
        if Isa::NeonDot.available() {
            Isa::NeonDot
        } else if Isa::Neon.available() {
            Isa::Neon
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Neon => cfg!(all(target_arch = "aarch64", target_endian = "little")),
            Isa::NeonDot => {
                Isa::Neon.available() && (cfg!(target_feature = "dotprod") || cpu::dotprod())
            }
        }
    }
}

#[allow(unsafe_code)]
mod cpu {
    /// FEAT_DotProd from the Linux auxiliary vector (`HWCAP_ASIMDDP`, bit 20).
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    pub fn dotprod() -> bool {
        const AT_HWCAP: core::ffi::c_ulong = 16;
        const HWCAP_ASIMDDP: core::ffi::c_ulong = 1 << 20;
        extern "C" {
            fn getauxval(kind: core::ffi::c_ulong) -> core::ffi::c_ulong;
        }
        // SAFETY: getauxval (glibc, musl, bionic) only reads the process's auxiliary vector.
        (unsafe { getauxval(AT_HWCAP) } & HWCAP_ASIMDDP) != 0
    }

    /// FEAT_DotProd from `ID_AA64ISAR0_EL1.DP` (bits 47:44) on bare metal (EL1 or higher).
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn dotprod() -> bool {
        let isar0: u64;
        // SAFETY: reading an ID register has no side effects and is allowed at EL1+.
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
}

/// Output channels per packed block of int8 pointwise weights.
pub const PW_NR: usize = 16;
/// Input channels per packed group of int8 pointwise weights (one `SDOT` lane).
pub const PW_KR: usize = 4;

/// Bytes of packed int8 GEMM weights for `n` outputs × `k` inputs (the pointwise convs:
/// `n = k = dim`; the patch embedding: `n = dim`, `k = p·p·in_c`). Both dimensions are padded
/// (outputs to [`PW_NR`], inputs to [`PW_KR`]) with zero weights.
///
/// ```
/// use convmixer_edge::kernels::gemm_packed_len;
/// assert_eq!(gemm_packed_len(48, 48), 48 * 48);
/// assert_eq!(gemm_packed_len(10, 10), 16 * 12);
/// assert_eq!(gemm_packed_len(256, 12), 256 * 12);
/// ```
pub const fn gemm_packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(PW_NR) * PW_NR * (k.div_ceil(PW_KR) * PW_KR)
}

/// Byte index of weight `(out o, in i)` in packed int8 GEMM weights with `k` inputs: layout
/// `[o / 16][i / 4][o % 16][i % 4]` — each 16-byte row holds 4 outputs × 4 inputs, what an
/// `SDOT` by element consumes (and `SMULL`/`SMLAL` pairs, two outputs per 8 bytes).
///
/// ```
/// use convmixer_edge::kernels::gemm_index;
/// assert_eq!((gemm_index(0, 0, 48), gemm_index(0, 3, 48), gemm_index(1, 0, 48)), (0, 3, 4));
/// assert_eq!(gemm_index(0, 4, 48), 64);
/// assert_eq!(gemm_index(16, 0, 48), 16 * 48);
/// ```
#[inline]
pub const fn gemm_index(o: usize, i: usize, k: usize) -> usize {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    (o / PW_NR) * PW_NR * kp + (i / PW_KR) * PW_NR * PW_KR + (o % PW_NR) * PW_KR + i % PW_KR
}

/// Geometry of the token grid a mixer layer works on.
///
/// ```
/// let g = convmixer_edge::kernels::Grid { ht: 14, wt: 14, dim: 32, kernel: 5, pad_top: 2, pad_left: 2 };
/// assert_eq!(g.tokens(), 196);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Token rows.
    pub ht: usize,
    /// Token columns.
    pub wt: usize,
    /// Channels.
    pub dim: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise padding above.
    pub pad_top: usize,
    /// Depthwise padding on the left.
    pub pad_left: usize,
}

impl Grid {
    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.ht * self.wt
    }

    /// Bytes of one int8 activation tensor, `ht · wt · dim`, or `None` if that overflows
    /// (the kernels' length checks use this, never a wrapped product).
    ///
    /// ```
    /// let g = convmixer_edge::kernels::Grid { ht: 14, wt: 14, dim: 32, kernel: 5, pad_top: 2, pad_left: 2 };
    /// assert_eq!(g.elements(), Some(196 * 32));
    /// ```
    pub fn elements(&self) -> Option<usize> {
        self.ht.checked_mul(self.wt)?.checked_mul(self.dim)
    }
}

/// Geometry of the patch embedding.
///
/// ```
/// let e = convmixer_edge::kernels::EmbedGeom { in_h: 28, in_w: 28, in_c: 1, patch: 2 };
/// assert_eq!(e.taps(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedGeom {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Patch size.
    pub patch: usize,
}

impl EmbedGeom {
    /// Taps per output channel: `p · p · in_c`.
    pub fn taps(&self) -> usize {
        self.patch * self.patch * self.in_c
    }
}
