//! The float global average pool + linear head.
//!
//! * `reference.rs`: [`reference::head_f`];
//! * `x86.rs`: `head_f_avx2_8x8` (8 classes × 8 inputs per transposed weight block, f32
//!   weights or f16 widened by `VCVTPH2PS`; f32 arithmetic only);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The driver [`head`] runs the SIMD kernel where the ISA, the arithmetic and the shape
//! allow it, else the reference: the same bits either way. (NEON has none yet: the head is
//! about 0.01% of a ConvMixer's multiply-adds.)

pub(super) mod reference;

// The AVX2 kernel runs only where Isa::Avx2 was detected (its entry point checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

#[cfg(test)]
mod tests;

use super::reference::FloatArith;
use super::Isa;
use crate::le::{F32Le, FloatWeights};

/// Global average pool + linear head: [`reference::head_f`], with AVX2 when possible.
///
/// ```
/// use convmixer_edge::kernels::{head_f, reference::*, Isa};
/// use convmixer_edge::le::F32Le;
/// let (tokens, dim, classes) = (5, 12, 10);
/// let w: Vec<u8> = (0..classes * dim).flat_map(|i| ((i % 7) as f32 / 9.0 - 0.3).to_le_bytes()).collect();
/// let b: Vec<u8> = (0..classes).flat_map(|i| (i as f32 / 10.0).to_le_bytes()).collect();
/// let x: Vec<f32> = (0..tokens * dim).map(|i| i as f32 / 3.0 - 9.0).collect();
/// let (mut m, mut a, mut c) = (vec![0f32; dim], vec![0f32; classes], vec![0f32; classes]);
/// head_f::<_, F32Arith>(&x, tokens, dim, &F32Le(&w), F32Le(&b), &mut m, &mut a);
/// head_f::head::<_, F32Arith>(&x, tokens, dim, &F32Le(&w), F32Le(&b), &mut m, &mut c, Isa::detect());
/// assert_eq!(a, c);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    mean: &mut [f32],
    logits: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::head::<W, M>(x, tokens, dim, w, bias, mean, logits, isa) {
        return;
    }
    let _ = isa;
    reference::head_f::<W, M>(x, tokens, dim, w, bias, mean, logits);
}
