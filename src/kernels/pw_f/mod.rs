//! The float pointwise 1×1 conv (f32 blobs, and f16 blobs in f32 or binary16 arithmetic).
//!
//! * `reference.rs`: [`reference::pw_f`];
//! * `neon.rs`: `fgemm_neon_f32_4x16` (`FMLA .4s`) and `fgemm_neon_f16_4x16` (FEAT_FP16
//!   `FMLA .8h`);
//! * `x86.rs`: `fgemm_avx2_f32_6x16` (`VFMADD231PS`, f32 weights or f16 widened by
//!   `VCVTPH2PS`; f32 arithmetic only);
//! * `avx512.rs`: `fgemm_avx512_f32_12x32` (the same on `zmm`, where AVX-512 is present);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The driver [`pw`] runs the SIMD kernel where the ISA, the arithmetic and the shape allow
//! it (NEON: `dim % 16 == 0`; `F16Arith` needs FEAT_FP16 and f16 weights; AVX2: any `dim`,
//! `F32Arith` only), else the reference: the same bits either way.

pub(super) mod reference;

// The NEON kernels exist only where NEON is a compile-time target feature (so no run-time
// check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub(super) mod neon;

// The AVX2 kernels run only where Isa::Avx2 was detected (their entry point checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod x86;

// The AVX-512 tiles, which the AVX2 entry point runs where Isa::Avx512Vnni was detected.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod avx512;

#[cfg(test)]
mod tests;

use super::reference::{FloatArith, FloatLayer};
use super::Isa;
use crate::le::FloatWeights;
use crate::Activation;

/// Pointwise conv: [`reference::pw_f`], with NEON or AVX2 when possible.
///
/// ```
/// use convmixer_edge::kernels::{pw_f, reference::*, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let w: Vec<u8> = (0..16 * 16).flat_map(|i| ((i % 7) as f32 / 9.0 - 0.3).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&ones), scale: F32Le(&ones), shift: F32Le(&ones), unscale: F32Le(&ones) };
/// let x: Vec<f32> = (0..5 * 16).map(|i| i as f32 / 3.0 - 9.0).collect();
/// let (mut a, mut b) = (vec![0f32; 80], vec![0f32; 80]);
/// pw_f::<_, F32Arith>(&x, 5, 16, &l, Activation::Relu, &mut a);
/// pw_f::pw::<_, F32Arith>(&x, 5, 16, &l, Activation::Relu, &mut b, Isa::detect());
/// assert_eq!(a, b);
/// ```
pub fn pw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if neon::pw::<W, M>(x, tokens, dim, l, act, out, isa) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::pw::<W, M>(x, tokens, dim, l, act, out, isa) {
        return;
    }
    let _ = isa;
    reference::pw_f::<W, M>(x, tokens, dim, l, act, out);
}
