//! x86_64 AVX2 int8 global average pool and head, bit-exact with [`reference::pool_i8`]
//! and [`reference::logits_i8`].
//!
//! Safety: [`pool_i8_avx2`] and [`logits_i8_avx2`] check the CPU's AVX2 and every length
//! once per call and fall back to the reference where they do not fit; their `unsafe`
//! blocks say which check bounds them.

use core::arch::x86_64::*;

use crate::kernels::{reference, Isa};
use crate::le::{F32Le, FloatWeights};

/// [`reference::pool_i8`] with AVX2, same arguments and bits: channel sums of 32 channels
/// at a time from `c0` in i16 lanes (`VPMOVSXBW`, `VPADDW`; 256 tokens at a time, which
/// cannot overflow: 256 · 128 = 2^15), widened into i32. Falls back to the reference where
/// the CPU lacks AVX2 or the lengths do not fit.
///
/// ```
/// use convmixer_edge::kernels::{head_i8::x86, reference};
/// let (tokens, dim) = (300, 80);
/// let x: Vec<i8> = (0..tokens * dim).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut m1, mut m2) = ([0i32; 40], [0i32; 40]);
/// x86::pool_i8_avx2(&x, tokens, dim, -3, 4, 33, &mut m1);
/// reference::pool_i8(&x, tokens, dim, -3, 4, 33, &mut m2);
/// assert_eq!(m1, m2);
/// ```
pub fn pool_i8_avx2(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    c0: usize,
    mean: &mut [i32],
) {
    let fits = Isa::Avx2.available()
        && (1..=1 << 22).contains(&tokens)
        && (-128..=127).contains(&zp_in)
        && tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && c0.checked_add(mean.len()).is_some_and(|end| end <= dim);
    if !fits {
        reference::pool_i8(x, tokens, dim, zp_in, frac_bits, c0, mean);
        return;
    }
    // SAFETY: AVX2 and the lengths are checked above.
    unsafe { channel_sums(x, tokens, dim, c0, mean) };
    // Σ(x − zp) = Σx − T·zp: both sides are below 2^30 in magnitude, so exact in i32.
    let tz = tokens as i32 * zp_in;
    for m in mean.iter_mut() {
        *m = reference::gap_mean(*m - tz, tokens, frac_bits);
    }
}

/// [`reference::logits_i8`] with AVX2, same arguments and bits: each class's dot product 8
/// inputs at a time by `VPMULLD` (i32 arithmetic wraps like the reference's, so the
/// summation order is free). Falls back to the reference where the CPU lacks AVX2 or the
/// lengths do not fit.
///
/// ```
/// use convmixer_edge::{kernels::{head_i8::x86, reference}, le::F32Le};
/// let dim = 40;
/// let mean: Vec<i32> = (0..dim).map(|i| i as i32 * 77 - 600).collect();
/// let w: Vec<i8> = (0..5 * dim).map(|i| (i % 255) as i16 as i8 / 2).collect();
/// let (sb, bb) = (0.5f32.to_le_bytes().repeat(5), 1f32.to_le_bytes().repeat(5));
/// let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
/// x86::logits_i8_avx2(&mean, dim, &w, F32Le(&sb), F32Le(&bb), 2, &mut a);
/// reference::logits_i8(&mean, dim, &w, F32Le(&sb), F32Le(&bb), 2, &mut b);
/// assert_eq!(a, b);
/// ```
pub fn logits_i8_avx2(
    mean: &[i32],
    dim: usize,
    w: &[i8],
    scale: F32Le<'_>,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
) {
    let end = k0.checked_add(logits.len());
    let fits = Isa::Avx2.available()
        && mean.len() >= dim
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
    for (j, out) in logits.iter_mut().enumerate() {
        let c = k0 + j;
        // Inside w ((k0 + classes)·dim ≤ w.len(), checked above), and exactly dim long.
        let Some(row) = w.get(c * dim..(c + 1) * dim) else {
            continue;
        };
        // SAFETY: AVX2 (checked above); row and mean hold dim values.
        let acc = unsafe { dot(row, mean, dim) };
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}

/// `mean[j] = Σ_t x[t·dim + c0 + j]` for `j < mean.len()` (wrapping i32, exact for the
/// checked sizes).
///
/// # Safety
/// The CPU has AVX2; `1 ≤ tokens ≤ 2^22`, `x` holds `tokens·dim` bytes, and
/// `c0 + mean.len() ≤ dim`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn channel_sums(x: &[i8], tokens: usize, dim: usize, c0: usize, mean: &mut [i32]) {
    let n = mean.len();
    let d32 = n / 32 * 32;
    // SAFETY: every load reads x[u·dim + c0 + d0 .. +32] with u < tokens and
    // c0 + d0 + 32 ≤ c0 + n ≤ dim; every store writes mean[d0 .. +32] (d0 + 32 ≤ n).
    unsafe {
        for d0 in (0..d32).step_by(32) {
            let mut s = [_mm256_setzero_si256(); 4];
            let mut t = 0;
            while t < tokens {
                let end = (t + 256).min(tokens);
                let (mut lo, mut hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for u in t..end {
                    let v = _mm256_loadu_si256(x.as_ptr().add(u * dim + c0 + d0).cast());
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
    if let (true, Some(tail)) = (d32 < n, mean.get_mut(d32..)) {
        tail.iter_mut().for_each(|m| *m = 0);
        for row in x.chunks_exact(dim).take(tokens) {
            for (m, v) in tail.iter_mut().zip(row.iter().skip(c0 + d32)) {
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
