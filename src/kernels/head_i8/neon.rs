//! AArch64 NEON int8 global average pool and head, bit-exact with [`reference::pool_i8`]
//! and [`reference::logits_i8`].
//!
//! Safety: [`pool_i8_neon`] and [`logits_i8_neon`] check every length once per call and
//! fall back to the reference where they do not fit; their `unsafe` blocks say which check
//! bounds them.

use core::arch::aarch64::*;

use crate::kernels::reference;

/// [`reference::pool_i8`] with NEON, same arguments and bits: channel sums by `SADDW` into
/// i16 (256 tokens at a time, which cannot overflow: 256 · 128 = 2^15) then into i32, 16
/// channels at a time from `c0`, the last `mean.len() % 16` channels token by token. Falls
/// back to the reference when the lengths do not fit.
///
/// ```
/// use convmixer_edge::kernels::{head_i8::neon, reference};
/// let (tokens, dim) = (300, 40);
/// let x: Vec<i8> = (0..tokens * dim).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut m1, mut m2) = ([0i32; 20], [0i32; 20]);
/// neon::pool_i8_neon(&x, tokens, dim, -3, 4, 17, &mut m1);
/// reference::pool_i8(&x, tokens, dim, -3, 4, 17, &mut m2);
/// assert_eq!(m1, m2);
/// ```
pub fn pool_i8_neon(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    c0: usize,
    mean: &mut [i32],
) {
    let n = mean.len();
    let fits = (1..=1 << 22).contains(&tokens)
        && (-128..=127).contains(&zp_in)
        && tokens.checked_mul(dim).is_some_and(|t| x.len() >= t)
        && c0.checked_add(n).is_some_and(|end| end <= dim);
    if !fits {
        reference::pool_i8(x, tokens, dim, zp_in, frac_bits, c0, mean);
        return;
    }
    let d16 = n / 16 * 16;
    // SAFETY: every load reads x[u·dim + c0 + d0 .. +16] with u < tokens and
    // c0 + d0 + 16 ≤ c0 + n ≤ dim; every store writes mean[d0 .. +16] (d0 + 16 ≤ n).
    // Lengths checked above.
    unsafe {
        for d0 in (0..d16).step_by(16) {
            let mut s = [vdupq_n_s32(0); 4];
            let mut t = 0;
            while t < tokens {
                let end = (t + 256).min(tokens);
                let (mut lo, mut hi) = (vdupq_n_s16(0), vdupq_n_s16(0));
                for u in t..end {
                    let v = vld1q_s8(x.as_ptr().add(u * dim + c0 + d0));
                    lo = vaddw_s8(lo, vget_low_s8(v));
                    hi = vaddw_high_s8(hi, v);
                }
                s[0] = vaddw_s16(s[0], vget_low_s16(lo));
                s[1] = vaddw_high_s16(s[1], lo);
                s[2] = vaddw_s16(s[2], vget_low_s16(hi));
                s[3] = vaddw_high_s16(s[3], hi);
                t = end;
            }
            for (q, v) in s.into_iter().enumerate() {
                vst1q_s32(mean.as_mut_ptr().add(d0 + 4 * q), v);
            }
        }
    }
    // The channels past the last 16-channel block, summed token by token (exact, so in
    // any order).
    if let (true, Some(tail)) = (d16 < n, mean.get_mut(d16..)) {
        tail.iter_mut().for_each(|m| *m = 0);
        for row in x.chunks_exact(dim).take(tokens) {
            for (m, v) in tail.iter_mut().zip(row.iter().skip(c0 + d16)) {
                *m += i32::from(*v);
            }
        }
    }
    // Σ(x − zp) = Σx − T·zp: both sides are below 2^30 in magnitude, so exact in i32.
    let tz = tokens as i32 * zp_in;
    for m in mean.iter_mut() {
        *m = reference::gap_mean(*m - tz, tokens, frac_bits);
    }
}

/// [`reference::logits_i8`] with NEON, same arguments and bits: each class's dot product
/// by `MLA .4s`, 16 inputs at a time (i32 arithmetic wraps like the reference's, so the
/// summation order is free). Falls back to the reference when the lengths do not fit.
///
/// ```
/// use convmixer_edge::{kernels::{head_i8::neon, reference}, le::F32Le};
/// let dim = 20;
/// let mean: Vec<i32> = (0..dim).map(|i| i as i32 * 77 - 600).collect();
/// let w: Vec<i8> = (0..5 * dim).map(|i| (i % 255) as i16 as i8 / 2).collect();
/// let (sb, bb) = (0.5f32.to_le_bytes().repeat(5), 1f32.to_le_bytes().repeat(5));
/// let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
/// neon::logits_i8_neon(&mean, dim, &w, F32Le(&sb), F32Le(&bb), 2, &mut a);
/// reference::logits_i8(&mean, dim, &w, F32Le(&sb), F32Le(&bb), 2, &mut b);
/// assert_eq!(a, b);
/// ```
pub fn logits_i8_neon(
    mean: &[i32],
    dim: usize,
    w: &[i8],
    scale: crate::le::F32Le<'_>,
    bias: crate::le::F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
) {
    use crate::le::FloatWeights;
    let end = k0.checked_add(logits.len());
    let fits = mean.len() >= dim
        && end
            .and_then(|e| e.checked_mul(dim))
            .is_some_and(|n| w.len() >= n)
        && end
            .and_then(|e| e.checked_mul(4))
            .is_some_and(|b| scale.0.len() >= b && bias.0.len() >= b);
    if !fits {
        reference::logits_i8(mean, dim, w, scale, bias, k0, logits);
        return;
    }
    let d16 = dim / 16 * 16;
    for (j, out) in logits.iter_mut().enumerate() {
        let c = k0 + j;
        // Inside w ((k0 + classes)·dim ≤ w.len(), checked above), and exactly dim long.
        let Some(row) = w.get(c * dim..(c + 1) * dim) else {
            continue;
        };
        // SAFETY: reads row[d0 .. +16] and mean[d0 .. +16] with d0 + 16 ≤ dim = row.len() ≤
        // mean.len().
        let mut acc = unsafe {
            let mut a = [vdupq_n_s32(0); 4];
            for d0 in (0..d16).step_by(16) {
                let v = vld1q_s8(row.as_ptr().add(d0));
                let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
                let wq = [
                    vmovl_s16(vget_low_s16(lo)),
                    vmovl_high_s16(lo),
                    vmovl_s16(vget_low_s16(hi)),
                    vmovl_high_s16(hi),
                ];
                for (q, (aq, wv)) in a.iter_mut().zip(wq).enumerate() {
                    *aq = vmlaq_s32(*aq, wv, vld1q_s32(mean.as_ptr().add(d0 + 4 * q)));
                }
            }
            vaddvq_s32(vaddq_s32(vaddq_s32(a[0], a[1]), vaddq_s32(a[2], a[3])))
        };
        for (wv, m) in row.iter().zip(mean.iter()).skip(d16) {
            acc = acc.wrapping_add(i32::from(*wv).wrapping_mul(*m));
        }
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}
