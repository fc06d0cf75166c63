//! The float global average pool + linear head.
//!
//! * `reference.rs`: [`reference::head_f`] = [`reference::pool_f`] (by channel ranges) +
//!   [`reference::logits_f`] (by class ranges), so that a multi-core run splits the pool
//!   by channels and the head by classes;
//! * `x86.rs`: `head_f_avx2_8x8` (8 classes × 8 inputs per transposed weight block, f32
//!   weights or f16 widened by `VCVTPH2PS`; f32 arithmetic only);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The drivers [`pool_f`] and [`logits_f`] run the SIMD kernel where the ISA, the
//! arithmetic and the shape allow it, else the reference: the same bits either way. (NEON
//! has none yet: the head is about 0.01% of a ConvMixer's multiply-adds.)

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

/// Global average pool + linear head: [`reference::head_f`], with AVX2 when possible:
/// [`pool_f`] of every channel, then [`logits_f`] of every class.
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
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && logits.len().checked_mul(dim).is_some();
    let Some(mean) = mean.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    pool_f::<M>(x, tokens, dim, 0, mean, isa);
    logits_f::<W, M>(mean, dim, w, bias, 0, logits, isa);
}

/// One core's share of the pool: `mean[j]` of channels `c0 + j` ([`reference::pool_f`],
/// with AVX2 when possible): the same bits either way.
///
/// ```
/// use convmixer_edge::kernels::{head_f, reference::*, Isa};
/// let x: Vec<f32> = (0..7 * 20).map(|i| i as f32 / 3.0 - 9.0).collect();
/// let (mut whole, mut parts) = ([0f32; 20], [0f32; 20]);
/// pool_f::<F32Arith>(&x, 7, 20, 0, &mut whole);
/// let (a, b) = parts.split_at_mut(8);
/// head_f::pool_f::<F32Arith>(&x, 7, 20, 8, b, Isa::detect());
/// head_f::pool_f::<F32Arith>(&x, 7, 20, 0, a, Isa::detect());
/// assert_eq!(parts, whole);
/// ```
pub fn pool_f<M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    c0: usize,
    mean: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::pool::<M>(x, tokens, dim, c0, mean, isa) {
        return;
    }
    let _ = isa;
    reference::pool_f::<M>(x, tokens, dim, c0, mean);
}

/// One core's share of the head: `logits[j]` of classes `k0 + j` from the pooled `mean`
/// ([`reference::logits_f`], with AVX2 when possible; `M` the blob's arithmetic): the same
/// bits either way.
///
/// ```
/// use convmixer_edge::kernels::{head_f, reference::*, Isa};
/// use convmixer_edge::le::F32Le;
/// let (dim, classes) = (12, 20);
/// let w: Vec<u8> = (0..classes * dim).flat_map(|i| ((i % 7) as f32 / 9.0 - 0.3).to_le_bytes()).collect();
/// let b: Vec<u8> = (0..classes).flat_map(|i| (i as f32 / 10.0).to_le_bytes()).collect();
/// let mean: Vec<f32> = (0..dim).map(|i| i as f32 / 5.0 - 1.0).collect();
/// let (mut whole, mut parts) = ([0f32; 20], [0f32; 20]);
/// logits_f(&mean, dim, &F32Le(&w), F32Le(&b), 0, &mut whole);
/// let (x, y) = parts.split_at_mut(8);
/// head_f::logits_f::<_, F32Arith>(&mean, dim, &F32Le(&w), F32Le(&b), 8, y, Isa::detect());
/// head_f::logits_f::<_, F32Arith>(&mean, dim, &F32Le(&w), F32Le(&b), 0, x, Isa::detect());
/// assert_eq!(parts, whole);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn logits_f<W: FloatWeights, M: FloatArith>(
    mean: &[f32],
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if x86::logits::<W, M>(mean, dim, w, bias, k0, logits, isa) {
        return;
    }
    let _ = isa;
    reference::logits_f(mean, dim, w, bias, k0, logits);
}
