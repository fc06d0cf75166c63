//! The int8 global average pool + linear head, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::le::{F32Le, FloatWeights};

/// The pooled value of one channel: `round_half_up(2^f · sum / T)`, computed in i64 with
/// floor division (`sum = Σ_t (x − zp_in)`).
///
/// ```
/// use convmixer_edge::kernels::reference::gap_mean;
/// assert_eq!((gap_mean(5, 2, 0), gap_mean(-5, 2, 0), gap_mean(5, 2, 1)), (3, -2, 5));
/// ```
#[inline]
pub fn gap_mean(sum: i32, tokens: usize, frac_bits: u32) -> i32 {
    // A validated blob has 1 ≤ tokens ≤ 2^22 and frac_bits ≤ 16; the caps change nothing
    // there and keep other arguments from dividing by zero or overflowing
    // (|2·(sum << 30)| + 2^40 < 2^63).
    let n = (tokens as u64).clamp(1, 1 << 40) as i64;
    ((2 * (i64::from(sum) << frac_bits.min(30)) + n).div_euclid(2 * n)) as i32
}

/// int8 global average pool (to `frac_bits` fixed point) + linear head, dequantised to f32
/// logits: `logit_c = scale_c · Σ_d W_cd · m_d + bias_c`. `mean` is `dim` i32 scratch.
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
) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && logits.len().checked_mul(dim).is_some_and(|n| w.len() >= n);
    if !fits {
        return;
    }
    mean.iter_mut().for_each(|m| *m = 0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row) {
            *m = m.wrapping_add(i32::from(*v).wrapping_sub(zp_in));
        }
    }
    for m in mean.iter_mut() {
        *m = gap_mean(*m, tokens, frac_bits);
    }
    for (c, out) in logits.iter_mut().enumerate() {
        let wc = w.get(c * dim..(c + 1) * dim).unwrap_or_default();
        // i32 arithmetic wraps (as the NEON head's lanes do), so the order is free.
        let acc = wc.iter().zip(mean.iter()).fold(0i32, |s, (a, b)| {
            s.wrapping_add(i32::from(*a).wrapping_mul(*b))
        });
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}
