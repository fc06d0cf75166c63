//! The int8 global average pool + linear head, dequantised to f32 logits.
//!
//! * `reference.rs`: [`reference::head_i8`] and
//!   [`reference::gap_mean`];
//! * `neon.rs`: `head_i8_neon`; `x86.rs`: `head_i8_avx2`;
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.

pub(super) mod reference;

// The NEON kernels read little-endian blob fields as native integers, and exist only where
// NEON is a compile-time target feature (so no run-time check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub mod neon;

// The AVX2 kernels run only where Isa::Avx2 was detected (their entry points check).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86;

#[cfg(test)]
mod tests;

use super::Isa;
use crate::le::F32Le;

/// int8 global average pool + head ([`reference::head_i8`];
/// `neon::head_i8_neon` where `isa` is a NEON level, `x86::head_i8_avx2` for AVX2): the same
/// bits either way.
#[allow(clippy::too_many_arguments)]
pub fn head_i8(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    w: &[i8],
    scale: F32Le<'_>,
    bias: F32Le<'_>,
    mean: &mut [i32],
    logits: &mut [f32],
    isa: Isa,
) {
    let kernel = match isa {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::Neon | Isa::NeonDot => neon::head_i8_neon,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::head_i8_avx2,
        _ => reference::head_i8,
    };
    kernel(
        x, tokens, dim, zp_in, frac_bits, w, scale, bias, mean, logits,
    );
}
