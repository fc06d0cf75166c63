//! x86_64 AVX2 int8 global average pool + head, bit-exact with [`reference::head_i8`].
//!
//! Safety: [`head_i8_avx2`] checks the CPU's AVX2 and every length once per call and falls
//! back to the reference where they do not fit; its `unsafe` blocks say which check bounds
//! them.

use core::arch::x86_64::*;

use crate::kernels::{reference, Isa};
use crate::le::{F32Le, FloatWeights};

/// int8 global average pool + head with AVX2, same arguments and bits as
/// [`reference::head_i8`]: channel sums of 32 channels at a time in i16 lanes (`VPMOVSXBW`,
/// `VPADDW`; 256 tokens at a time, which cannot overflow: 256 · 128 = 2^15), widened into
/// i32; the class dot products 8 channels at a time by `VPMULLD` (i32 arithmetic wraps like
/// the reference's, so the summation order is free). Falls back to the reference where the
/// CPU lacks AVX2 or the lengths do not fit.
///
/// ```
/// use convmixer_edge::{kernels::{head_i8::x86, reference}, le::F32Le};
/// let (tokens, dim) = (300, 40);
/// let x: Vec<i8> = (0..tokens * dim).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let w: Vec<i8> = (0..3 * dim).map(|i| (i % 255) as i8 - 127).collect();
/// let (scale, bias) = ([0.5f32; 3], [1.0f32; 3]);
/// let sb: Vec<u8> = scale.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let bb: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let (mut m1, mut m2) = ([0i32; 40], [0i32; 40]);
/// let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
/// x86::head_i8_avx2(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m1, &mut a);
/// reference::head_i8(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m2, &mut b);
/// assert_eq!((a, m1), (b, m2));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head_i8_avx2(
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
    let classes = logits.len();
    let fits = Isa::Avx2.available()
        && (1..=1 << 22).contains(&tokens)
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
    // SAFETY: AVX2 and the lengths are checked above.
    unsafe { channel_sums(x, tokens, dim, mean) };
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
        // SAFETY: AVX2 (checked above); row and mean hold dim values.
        let acc = unsafe { dot(row, mean, dim) };
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}

/// `mean[d] = Σ_t x[t·dim + d]` for `d < dim` (wrapping i32, exact for the checked sizes).
///
/// # Safety
/// The CPU has AVX2; `1 ≤ tokens ≤ 2^22`, `x` holds `tokens·dim` bytes, `mean` `dim` i32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn channel_sums(x: &[i8], tokens: usize, dim: usize, mean: &mut [i32]) {
    let d32 = dim / 32 * 32;
    // SAFETY: every load reads x[u·dim + d0 .. +32] with u < tokens, d0 + 32 ≤ dim; every
    // store writes mean[d0 .. +32] (d0 + 32 ≤ dim ≤ mean.len()).
    unsafe {
        for d0 in (0..d32).step_by(32) {
            let mut s = [_mm256_setzero_si256(); 4];
            let mut t = 0;
            while t < tokens {
                let end = (t + 256).min(tokens);
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for u in t..end {
                    let v = _mm256_loadu_si256(x.as_ptr().add(u * dim + d0).cast());
                    lo = _mm256_add_epi16(lo, _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)));
                    hi = _mm256_add_epi16(
                        hi,
                        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
                    );
                }
                let widen = |h: __m256i| {
                    [
                        _mm256_cvtepi16_epi32(_mm256_castsi256_si128(h)),
                        _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(h)),
                    ]
                };
                let [a, b] = widen(lo);
                let [c, d] = widen(hi);
                s = [
                    _mm256_add_epi32(s[0], a),
                    _mm256_add_epi32(s[1], b),
                    _mm256_add_epi32(s[2], c),
                    _mm256_add_epi32(s[3], d),
                ];
                t = end;
            }
            for (q, v) in s.into_iter().enumerate() {
                _mm256_storeu_si256(mean.as_mut_ptr().add(d0 + 8 * q).cast(), v);
            }
        }
    }
    // The channels past the last 32-channel block (dim > 0 where there are any), summed
    // token by token (exact, so in any order).
    if let (true, Some(tail)) = (d32 < dim, mean.get_mut(d32..dim)) {
        tail.iter_mut().for_each(|m| *m = 0);
        for row in x.chunks_exact(dim).take(tokens) {
            for (m, v) in tail.iter_mut().zip(row.iter().skip(d32)) {
                *m += i32::from(*v);
            }
        }
    }
}

/// `Σ_d row[d] · mean[d]` in wrapping i32.
///
/// # Safety
/// The CPU has AVX2; `row` and `mean` hold at least `dim` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot(row: &[i8], mean: &[i32], dim: usize) -> i32 {
    let d8 = dim / 8 * 8;
    // SAFETY: reads row[d0 .. +8] and mean[d0 .. +8] with d0 + 8 ≤ dim; the rest is
    // register-only.
    let mut acc = unsafe {
        let mut a = _mm256_setzero_si256();
        for d0 in (0..d8).step_by(8) {
            let wv = _mm256_cvtepi8_epi32(_mm_loadl_epi64(row.as_ptr().add(d0).cast()));
            let mv = _mm256_loadu_si256(mean.as_ptr().add(d0).cast());
            a = _mm256_add_epi32(a, _mm256_mullo_epi32(wv, mv));
        }
        let h = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b01_00_11_10>(h));
        let h = _mm_add_epi32(h, _mm_shuffle_epi32::<0b10_11_00_01>(h));
        _mm_cvtsi128_si32(h)
    };
    for (wv, m) in row.iter().zip(mean.iter()).take(dim).skip(d8) {
        acc = acc.wrapping_add(i32::from(*wv).wrapping_mul(*m));
    }
    acc
}
