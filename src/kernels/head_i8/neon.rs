//! AArch64 NEON int8 global average pool + head, bit-exact with [`reference::head_i8`].
//!
//! Safety: [`head_i8_neon`] checks every length once per call and falls back to the
//! reference where they do not fit; its `unsafe` blocks say which check bounds them.

use core::arch::aarch64::*;

use crate::kernels::reference;

/// int8 global average pool + head with NEON, same arguments and bits as
/// [`reference::head_i8`]: channel sums by `SADDW` into i16 (256 tokens at a time, which
/// cannot overflow: 256 · 128 = 2^15) then into i32; the class dot products by `MLA .4s`
/// (i32 arithmetic wraps like the reference's, so the summation order is free). Falls back
/// to the reference when the lengths do not fit.
///
/// ```
/// use convmixer_edge::{kernels::{head_i8::neon, reference}, le::F32Le};
/// let (tokens, dim) = (300, 20);
/// let x: Vec<i8> = (0..tokens * dim).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let w: Vec<i8> = (0..3 * dim).map(|i| (i % 255) as i8 - 127).collect();
/// let (scale, bias) = ([0.5f32; 3], [1.0f32; 3]);
/// let sb: Vec<u8> = scale.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let bb: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let (mut m1, mut m2) = ([0i32; 20], [0i32; 20]);
/// let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
/// neon::head_i8_neon(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m1, &mut a);
/// reference::head_i8(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m2, &mut b);
/// assert_eq!((a, m1), (b, m2));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head_i8_neon(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    w: &[i8],
    scale: crate::le::F32Le<'_>,
    bias: crate::le::F32Le<'_>,
    mean: &mut [i32],
    logits: &mut [f32],
) {
    use crate::le::FloatWeights;
    let classes = logits.len();
    let fits = (1..=1 << 22).contains(&tokens)
        && (-128..=127).contains(&zp_in)
        && tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && classes.checked_mul(dim).is_some_and(|n| w.len() >= n)
        && mean.len() >= dim
        && scale.0.len() >= 4 * classes
        && bias.0.len() >= 4 * classes;
    if !fits {
        reference::head_i8(
            x, tokens, dim, zp_in, frac_bits, w, scale, bias, mean, logits,
        );
        return;
    }
    let d16 = dim / 16 * 16;
    // SAFETY: every load reads x[u·dim + d0 .. +16] with u < tokens, d0 + 16 ≤ dim; every
    // store writes mean[d0 .. +16] (d0 + 16 ≤ dim ≤ mean.len()). Lengths checked above.
    unsafe {
        for d0 in (0..d16).step_by(16) {
            let mut s = [vdupq_n_s32(0); 4];
            let mut t = 0;
            while t < tokens {
                let end = (t + 256).min(tokens);
                let (mut lo, mut hi) = (vdupq_n_s16(0), vdupq_n_s16(0));
                for u in t..end {
                    let v = vld1q_s8(x.as_ptr().add(u * dim + d0));
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
    // The channels past the last 16-channel block (dim > 0 where there are any), summed
    // token by token (exact, so in any order).
    if let (true, Some(tail)) = (d16 < dim, mean.get_mut(d16..dim)) {
        tail.iter_mut().for_each(|m| *m = 0);
        for row in x.chunks_exact(dim).take(tokens) {
            for (m, v) in tail.iter_mut().zip(row.iter().skip(d16)) {
                *m += i32::from(*v);
            }
        }
    }
    // Σ(x − zp) = Σx − T·zp: both sides are below 2^30 in magnitude, so exact in i32.
    let tz = tokens as i32 * zp_in;
    for m in mean.iter_mut().take(dim) {
        *m = reference::gap_mean(*m - tz, tokens, frac_bits);
    }
    for (c, out) in logits.iter_mut().enumerate() {
        // Inside w (classes·dim ≤ w.len(), checked above), and exactly dim long.
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
