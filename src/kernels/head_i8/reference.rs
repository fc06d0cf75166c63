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
/// logits: `logit_c = scale_c · Σ_d W_cd · m_d + bias_c`. `mean` is `dim` i32 scratch:
/// [`pool_i8`] of every channel, then [`logits_i8`] of every class.
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
    let Some(m) = mean.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    pool_i8(x, tokens, dim, zp_in, frac_bits, 0, m);
    logits_i8(m, dim, w, scale, bias, 0, logits);
}

/// The pooled values `mean[j]` of channels `c0 + j` (one core's share of the pool):
/// `gap_mean(Σ_t (x − zp_in))` over the `tokens` rows of `x` (`tokens · dim`). Nothing is
/// written where `x` is shorter or the channels pass `dim`.
///
/// ```
/// use convmixer_edge::kernels::reference::pool_i8;
/// let x = [1i8, 2, 3, 4, 5, 6]; // 2 tokens × 3 channels
/// let mut m = [0i32; 2];
/// pool_i8(&x, 2, 3, 0, 0, 1, &mut m); // channels 1 and 2
/// assert_eq!(m, [4, 5]);
/// ```
pub fn pool_i8(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    c0: usize,
    mean: &mut [i32],
) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && c0.checked_add(mean.len()).is_some_and(|end| end <= dim);
    if !fits {
        return;
    }
    mean.iter_mut().for_each(|m| *m = 0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row.iter().skip(c0)) {
            *m = m.wrapping_add(i32::from(*v).wrapping_sub(zp_in));
        }
    }
    for m in mean.iter_mut() {
        *m = gap_mean(*m, tokens, frac_bits);
    }
}

/// The logits `logits[j]` of classes `k0 + j` (one core's share of the head) from the
/// pooled `mean` (`dim` values): `scale_c · Σ_d W_cd · m_d + bias_c`, in wrapping i32 then
/// f32. A class whose weight row is past `w` gets only its bias.
///
/// ```
/// use convmixer_edge::{kernels::reference::logits_i8, le::F32Le};
/// let w = [1i8, 2, -1, 0]; // 2 classes × 2 inputs
/// let (s, b) = (1f32.to_le_bytes().repeat(2), 0f32.to_le_bytes().repeat(2));
/// let mut l = [0f32; 1];
/// logits_i8(&[3, 4], 2, &w, F32Le(&s), F32Le(&b), 1, &mut l); // class 1
/// assert_eq!(l, [-3.0]);
/// ```
pub fn logits_i8(
    mean: &[i32],
    dim: usize,
    w: &[i8],
    scale: F32Le<'_>,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
) {
    let Some(mean) = mean.get(..dim) else {
        return;
    };
    for (j, out) in logits.iter_mut().enumerate() {
        let c = k0.saturating_add(j);
        let wc = c
            .checked_mul(dim)
            .and_then(|a| w.get(a..a.checked_add(dim)?))
            .unwrap_or_default();
        // i32 arithmetic wraps (as the NEON head's lanes do), so the order is free.
        let acc = wc.iter().zip(mean.iter()).fold(0i32, |s, (a, b)| {
            s.wrapping_add(i32::from(*a).wrapping_mul(*b))
        });
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}
