//! The int8 global average pool + linear head, dequantised to f32 logits.
//!
//! * `reference.rs`: [`reference::head_i8`] = [`reference::pool_i8`] (by channel ranges,
//!   [`reference::gap_mean`]) + [`reference::logits_i8`] (by class ranges), so that a
//!   multi-core run splits the pool by channels and the head by classes;
//! * `neon.rs`: `pool_i8_neon`, `logits_i8_neon`; `x86.rs`: `pool_i8_avx2`,
//!   `logits_i8_avx2`;
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

/// int8 global average pool + head ([`reference::head_i8`]): [`pool_i8`] of every
/// channel, then [`logits_i8`] of every class; the same bits on every `isa`.
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
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && logits.len().checked_mul(dim).is_some_and(|n| w.len() >= n);
    let Some(m) = mean.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    pool_i8(x, tokens, dim, zp_in, frac_bits, 0, m, isa);
    logits_i8(m, dim, w, scale, bias, 0, logits, isa);
}

/// One core's share of the pool: `mean[j]` of channels `c0 + j` ([`reference::pool_i8`];
/// `neon::pool_i8_neon` where `isa` is a NEON level, `x86::pool_i8_avx2` for AVX2): the
/// same bits either way.
///
/// ```
/// use convmixer_edge::kernels::{head_i8, reference, Isa};
/// let x: Vec<i8> = (0..7 * 40).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut whole, mut parts) = ([0i32; 40], [0i32; 40]);
/// reference::pool_i8(&x, 7, 40, 5, 3, 0, &mut whole);
/// let (a, b) = parts.split_at_mut(16);
/// head_i8::pool_i8(&x, 7, 40, 5, 3, 16, b, Isa::detect());
/// head_i8::pool_i8(&x, 7, 40, 5, 3, 0, a, Isa::detect());
/// assert_eq!(parts, whole);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn pool_i8(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    c0: usize,
    mean: &mut [i32],
    isa: Isa,
) {
    let kernel = match isa {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::Neon | Isa::NeonDot => neon::pool_i8_neon,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::pool_i8_avx2,
        _ => reference::pool_i8,
    };
    kernel(x, tokens, dim, zp_in, frac_bits, c0, mean);
}

/// One core's share of the head: `logits[j]` of classes `k0 + j` from the pooled `mean`
/// ([`reference::logits_i8`]; `neon::logits_i8_neon` where `isa` is a NEON level,
/// `x86::logits_i8_avx2` for AVX2): the same bits either way.
///
/// ```
/// use convmixer_edge::{kernels::{head_i8, reference, Isa}, le::F32Le};
/// let mean: Vec<i32> = (0..24).map(|i| i * 91 - 999).collect();
/// let w: Vec<i8> = (0..5 * 24).map(|i| (i % 200) as i8 - 100).collect();
/// let (s, b) = (0.25f32.to_le_bytes().repeat(5), 2f32.to_le_bytes().repeat(5));
/// let (mut whole, mut parts) = ([0f32; 5], [0f32; 5]);
/// reference::logits_i8(&mean, 24, &w, F32Le(&s), F32Le(&b), 0, &mut whole);
/// let (x, y) = parts.split_at_mut(2);
/// head_i8::logits_i8(&mean, 24, &w, F32Le(&s), F32Le(&b), 2, y, Isa::detect());
/// head_i8::logits_i8(&mean, 24, &w, F32Le(&s), F32Le(&b), 0, x, Isa::detect());
/// assert_eq!(parts, whole);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn logits_i8(
    mean: &[i32],
    dim: usize,
    w: &[i8],
    scale: F32Le<'_>,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
    isa: Isa,
) {
    let kernel = match isa {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::Neon | Isa::NeonDot => neon::logits_i8_neon,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::logits_i8_avx2,
        _ => reference::logits_i8,
    };
    kernel(mean, dim, w, scale, bias, k0, logits);
}
