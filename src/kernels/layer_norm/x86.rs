//! x86_64 AVX2 fixed-point LayerNorm, 4 channels per step (i64 lanes), bit-exact with
//! [`reference::layer_norm_token_i16`].
//!
//! Safety: the kernel checks the CPU's AVX2 and reads only through the slices
//! `reference::LnToken` checked; its `unsafe` blocks say which lengths bound their loads.

use core::arch::x86_64::*;

use crate::kernels::{reference, Isa};

/// [`reference::layer_norm_token_i16`], 4 channels per step: the same bits. The token's sums
/// and `inv` are the reference's (`reference::LnToken`); per channel the 128-bit `d · inv`
/// is taken as `d · hi · 2^31 + d · lo` with `inv = hi · 2^31 + lo` (two `VPMULDQ` into i64
/// lanes), which gives the same `⌊(d · inv + 2^45) / 2^46⌋` as
/// `⌊(d·hi + ⌊d·lo / 2^31⌋ + 2^14) / 2^15⌋` (exact: the dropped low part is below one unit
/// of the 2^31 step, under the outer floor; the NEON kernel's proof). AVX2 has no 64-bit
/// arithmetic shift: `v >> s` is `((v ⊕ 2^63) >>> s) − 2^(63−s)` (the logical shift of `v`
/// biased to unsigned). `d` fits an i32 lane for `dim ≤ 32767`; larger `dim`, `r ≤ 1`
/// (`hi = 2^31`), a CPU without AVX2 and the last `dim % 4` channels take the reference's
/// scalar step.
///
/// ```
/// use convmixer_edge::kernels::{layer_norm::x86, reference::{self, LayerNormI16}};
/// let dim = 10;
/// let mut s = vec![0u8; 16];
/// s[8..12].copy_from_slice(&20i32.to_le_bytes()); // shift 20
/// for c in 0..dim { s.extend_from_slice(&(1000 + 77 * c as i32).to_le_bytes()); }
/// for c in 0..dim { s.extend_from_slice(&(-5000i64 * c as i64).to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, dim);
/// let x: Vec<i16> = (0..dim as i16).map(|i| i * i * 91 - 700).collect();
/// let (mut a, mut b) = ([0i8; 10], [0i8; 10]);
/// x86::layer_norm_token_i16_avx2(&x, dim, &p, &mut a, 1);
/// reference::layer_norm_token_i16(&x, dim, &p, &mut b, 1);
/// assert_eq!(a, b);
/// ```
pub fn layer_norm_token_i16_avx2(
    x: &[i16],
    dim: usize,
    p: &reference::LayerNormI16<'_>,
    out: &mut [i8],
    stride: usize,
) {
    let Some(tok) = reference::LnToken::new(x, dim, p) else {
        return;
    };
    let hi = tok.inv >> 31;
    let vector = Isa::Avx2.available() && dim <= 32767 && hi <= i64::from(i32::MAX);
    let step = stride.max(1);
    let c = if vector {
        // SAFETY: AVX2 is available and the token's terms fit the lanes (checked above).
        unsafe { quads(&tok, out, step) }
    } else {
        0
    };
    tok.scalar_from(c, out, step);
}

/// `v >> S` (arithmetic) on i64 lanes.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn srai64<const S: i32>(v: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 arithmetic (the caller's AVX2).
    unsafe {
        let sign = _mm256_set1_epi64x(i64::MIN);
        let shifted = _mm256_srli_epi64::<S>(_mm256_xor_si256(v, sign));
        _mm256_sub_epi64(shifted, _mm256_set1_epi64x(1 << (63 - S)))
    }
}

/// `min(max(v, lo), hi)` on i64 lanes.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn clamp64(v: __m256i, lo: __m256i, hi: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 arithmetic (the caller's AVX2).
    unsafe {
        let v = _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi));
        _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v))
    }
}

/// The token's channels 4 at a time into `out[c · step]`; returns how many it did (a
/// multiple of 4).
///
/// # Safety
/// The CPU has AVX2; `tok.n ≤ 32767` and `tok.inv >> 31 ≤ i32::MAX`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quads(tok: &reference::LnToken<'_>, out: &mut [i8], step: usize) -> usize {
    let (hi, lo) = (tok.inv >> 31, tok.inv & 0x7fff_ffff);
    let quads = tok
        .row
        .chunks_exact(4)
        .zip(tok.muls.chunks_exact(16))
        .zip(tok.offsets.chunks_exact(32));
    let mut c = 0;
    for ((xs, ms), os) in quads {
        // SAFETY: xs holds 4 i16 (8 bytes), ms 16 bytes, os 32 bytes: the loads stay inside
        // them. |n·x| < 2^30 and |S1| < 2^30 for dim ≤ 32767, so d fits the low i32 of its
        // lane (what VPMULDQ reads); hi, lo < 2^31; every i64 lane sum is below 2^63
        // (|d·hi| < 2^62, |d·lo| < 2^62, |z·m| ≤ 2^61, |offset| ≤ 2^55 for a valid blob; the
        // adds wrap like the reference's). The shift is in 0..=62 (LnToken clamps it).
        let q: [i64; 4] = unsafe {
            let xv = _mm256_cvtepi16_epi64(_mm_loadl_epi64(xs.as_ptr().cast()));
            let d = _mm256_sub_epi64(
                _mm256_mul_epi32(xv, _mm256_set1_epi64x(tok.n)),
                _mm256_set1_epi64x(tok.s1),
            );
            let a = _mm256_mul_epi32(d, _mm256_set1_epi64x(hi));
            let b = srai64::<31>(_mm256_mul_epi32(d, _mm256_set1_epi64x(lo)));
            let t = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_set1_epi64x(1 << 14));
            let z = clamp64(
                srai64::<15>(t),
                _mm256_set1_epi64x(-(1 << 30)),
                _mm256_set1_epi64x(1 << 30),
            );
            let m = _mm256_cvtepi32_epi64(_mm_loadu_si128(ms.as_ptr().cast()));
            let off = _mm256_loadu_si256(os.as_ptr().cast());
            let v = _mm256_add_epi64(
                _mm256_add_epi64(_mm256_mul_epi32(z, m), off),
                _mm256_set1_epi64x(tok.half),
            );
            // v >> shift, arithmetic: the logical shift of v biased by 2^63, less 2^63 >> shift.
            let shift = _mm_cvtsi32_si128(tok.shift);
            let sign = _mm256_set1_epi64x(i64::MIN);
            let y = _mm256_sub_epi64(
                _mm256_srl_epi64(_mm256_xor_si256(v, sign), shift),
                _mm256_srl_epi64(sign, shift),
            );
            let y = clamp64(
                _mm256_add_epi64(y, _mm256_set1_epi64x(tok.zp)),
                _mm256_set1_epi64x(-128),
                _mm256_set1_epi64x(127),
            );
            let mut lanes = [0i64; 4];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), y);
            lanes
        };
        for (i, v) in q.into_iter().enumerate() {
            if let Some(o) = out.get_mut((c + i) * step) {
                *o = v as i8;
            }
        }
        c += 4;
    }
    c
}
