//! The float patch embedding on raw pixels (always f32 arithmetic, outputs narrowed to the
//! layer's storage).
//!
//! * `reference.rs`: [`reference::embed_f`];
//! * `neon.rs`: 4 gathered patches through the f32 GEMM tile of `pw_f`;
//! * `x86.rs`: 6 gathered patches through the AVX2 GEMM tile of `pw_f`
//!   (`fgemm_avx2_f32_6x16`);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The driver [`embed`] runs the SIMD kernel where the ISA and the shape allow it (NEON:
//! `dim % 16 == 0`; AVX2: any `dim`), else the reference: the same bits either way.

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

#[cfg(test)]
mod tests;

use super::reference::{FloatArith, FloatLayer};
use super::{EmbedGeom, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Scratch f32 elements the embedding driver uses for its SIMD paths: 6 gathered patches
/// (AVX2's tile; NEON's uses 4), saturating.
///
/// ```
/// use convmixer_edge::kernels::{embed_f::embed_scratch_len, EmbedGeom};
/// assert_eq!(embed_scratch_len(EmbedGeom { in_h: 32, in_w: 32, in_c: 3, patch: 2 }), 72);
/// ```
pub fn embed_scratch_len(g: EmbedGeom) -> usize {
    g.taps().saturating_mul(6)
}

/// Patch embedding: [`reference::embed_f`] (f32 arithmetic, outputs narrowed to `M`), with
/// NEON or AVX2 when possible. `scratch` should hold [`embed_scratch_len`] f32 (else the
/// reference runs, or AVX2 one patch at a time where it holds at least one).
///
/// ```
/// use convmixer_edge::kernels::{embed_f, reference::*, EmbedGeom, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = EmbedGeom { in_h: 4, in_w: 4, in_c: 1, patch: 2 };
/// let w: Vec<u8> = (0..16 * 4).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let zeros = vec![0u8; 64];
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&zeros), scale: F32Le(&ones), shift: F32Le(&zeros), unscale: F32Le(&ones) };
/// let px: Vec<u8> = (0..16).collect();
/// let (mut a, mut b) = ([0f32; 64], [0f32; 64]);
/// embed_f::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut a);
/// embed_f::embed::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut b, &mut [0.0; 16], Isa::detect());
/// assert_eq!(a, b);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn embed<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    isa: Isa,
) {
    if let Some((ht, wt)) = g.grid(px.len(), dim, out.len()) {
        embed_tokens::<W, M>(px, g, dim, l, act, out, scratch, isa, 0..ht * wt);
    }
}

/// [`embed`] for tokens `tokens` only, into `out` (`tokens.len() · dim` elements, the
/// first token's outputs first), with its own `scratch`: one core's part of an embedding
/// split by token ranges. The same bits as the whole layer's outputs for those tokens.
///
/// ```
/// use convmixer_edge::kernels::{embed_f, reference::*, EmbedGeom, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = EmbedGeom { in_h: 4, in_w: 4, in_c: 1, patch: 2 };
/// let w: Vec<u8> = (0..16 * 4).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let zeros = vec![0u8; 64];
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&zeros), scale: F32Le(&ones), shift: F32Le(&zeros), unscale: F32Le(&ones) };
/// let px: Vec<u8> = (0..16).collect();
/// let (mut all, mut part) = ([0f32; 64], [0f32; 32]);
/// embed_f::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut all);
/// embed_f::embed_tokens::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut part, &mut [0.0; 24], Isa::detect(), 2..4);
/// assert_eq!(all[32..], part);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn embed_tokens<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    isa: Isa,
    tokens: core::ops::Range<usize>,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if neon::embed::<W, M>(px, g, dim, l, act, out, scratch, (isa, tokens.clone())) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::embed::<W, M>(px, g, dim, l, act, out, scratch, (isa, tokens.clone())) {
        return;
    }
    let _ = (scratch, isa);
    reference::embed_f_tokens::<W, M>(px, g, dim, l, act, out, tokens);
}
