//! x86_64 AVX2 float global average pool + linear head, bit-exact with
//! [`reference::head_f`] in f32 arithmetic (`F32Arith`: f32 blobs, and f16 blobs, whose
//! weights F16C widens exactly; `F16Arith` runs the reference): [`head_f_avx2_8x8`].
//!
//! The pool adds the token rows in order, 8 channels per `VADDPS` (each channel's sum in
//! the reference's order), and scales by the reference's `1 / tokens`. The head computes 8
//! classes at a time, vectorised across classes: per 8 inputs the 8 classes' weight rows
//! (8 contiguous weights each, f16 widened by `VCVTPH2PS`) are loaded and transposed 8×8 in
//! registers, so that input `d`'s 8 weights are one vector, then `acc = acc + w · mean[d]`
//! with a `VMULPS` and a `VADDPS` (two roundings, as the reference's `acc += w * m`; no
//! FMA), inputs in order from the bias. The inputs past the last multiple of 8 and the
//! classes past the last multiple of 8 run the reference's loop on the same values.
//!
//! [`reference::head_f`]: crate::kernels::reference::head_f
//!
//! Speed (`cargo run --release -p kernel-bench`, one core of the Zen 4 of `pw_f::x86`):
//! ConvMixer-768/32's pool and 1000-class head take 0.16 ms with f32 or f16 weights,
//! against the reference's 0.88 and 1.33 ms (software f16 widening).
//!
//! Safety: the safe entry points [`pool`] and [`logits`] check every length once per call,
//! in checked arithmetic, and the CPU's AVX2 and F16C, and return `false` without touching
//! anything where they do not fit; the `unsafe fn`s state in `# Safety` what they rely on, and each
//! `unsafe` block which check bounds it.

use core::arch::x86_64::*;

use crate::kernels::reference::{self, FloatArith};
use crate::kernels::Isa;
use crate::le::{F32Le, FloatWeights};

/// Whether the AVX2 kernels take this arithmetic on this ISA (f32 activations; the CPU
/// has AVX2 and F16C).
fn takes<M: FloatArith>(isa: Isa) -> bool {
    !M::HALF && matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) && Isa::Avx2.available()
}

/// [`reference::pool_f`] with AVX2: `false`, touching nothing, where it does not take it
/// (`F16Arith`, an ISA without AVX2, or the lengths do not fit: `tokens · dim` inputs,
/// `c0 + mean.len() ≤ dim`).
///
/// [`reference::pool_f`]: crate::kernels::reference::pool_f
pub(crate) fn pool<M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    c0: usize,
    mean: &mut [f32],
    isa: Isa,
) -> bool {
    if !takes::<M>(isa) {
        return false;
    }
    // The sealed FloatArith pairs !HALF with Act = f32: an identity cast.
    let Ok(x) = bytemuck::try_cast_slice::<M::Act, f32>(x) else {
        return false;
    };
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && c0.checked_add(mean.len()).is_some_and(|end| end <= dim);
    if !fits {
        return false;
    }
    // SAFETY: rows t < tokens of x hold dim f32 from x[t·dim], of which c0 .. c0 +
    // mean.len() ≤ dim are read (checked above); mean holds mean.len() f32; the CPU has
    // AVX2 (checked above).
    unsafe {
        pool_avx2(
            x.as_ptr().wrapping_add(c0),
            tokens,
            dim,
            mean.len(),
            mean.as_mut_ptr(),
        )
    };
    true
}

/// [`reference::logits_f`] with AVX2 in f32 arithmetic, classes in blocks of 8
/// ([`head_f_avx2_8x8`]), the rest the reference's loop: `false`, touching nothing, where
/// it does not take it (`F16Arith`, an ISA without AVX2, no channels, or a buffer shorter
/// than the classes `k0 .. k0 + logits.len()` need: their weight rows and biases, `dim` of
/// `mean`).
///
/// [`reference::logits_f`]: crate::kernels::reference::logits_f
pub(crate) fn logits<W: FloatWeights, M: FloatArith>(
    mean: &[f32],
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
    isa: Isa,
) -> bool {
    if !takes::<M>(isa) {
        return false;
    }
    let wsz = if W::HALF { 2 } else { 4 };
    let end = k0.checked_add(logits.len());
    let fits = dim > 0
        && end
            .and_then(|e| e.checked_mul(dim))
            .and_then(|n| n.checked_mul(wsz))
            .is_some_and(|b| w.bytes().len() >= b)
        && end
            .and_then(|e| e.checked_mul(4))
            .is_some_and(|b| bias.0.len() >= b)
        && mean.len() >= dim;
    let Some(mean) = mean.get(..dim).filter(|_| fits) else {
        return false;
    };
    let full = logits.len() / 8 * 8;
    let (lp, wp) = (logits.as_mut_ptr(), w.bytes().as_ptr());
    for j in (0..full).step_by(8) {
        // SAFETY: classes k0 + j + 8 ≤ k0 + logits.len(): weight rows inside the checked
        // (k0 + logits.len())·dim elements and biases, logits j .. j + 8; mean holds dim
        // f32; AVX2, F16C above.
        unsafe {
            if W::HALF {
                head_f_avx2_8x8::<true>(wp, bias, k0 + j, dim, mean.as_ptr(), lp.add(j));
            } else {
                head_f_avx2_8x8::<false>(wp, bias, k0 + j, dim, mean.as_ptr(), lp.add(j));
            }
        }
    }
    // The classes past the last multiple of 8: the reference.
    if let Some(tail) = logits.get_mut(full..) {
        reference::logits_f(mean, dim, w, bias, k0 + full, tail);
    }
    true
}

/// The pool of `n` channels: `mean[d] = (Σ_t x[t·stride + d]) · (1 / tokens)`, the tokens
/// in order.
///
/// # Safety
/// The CPU has AVX2; `x` points at `tokens` rows `stride` apart of which the first `n` f32
/// are readable, `mean` at `n` writable f32.
#[target_feature(enable = "avx2")]
unsafe fn pool_avx2(x: *const f32, tokens: usize, stride: usize, n: usize, mean: *mut f32) {
    let vec = n / 8 * 8;
    // SAFETY: channels d + 8 ≤ vec ≤ n and d < n of mean and of row t < tokens of x.
    unsafe {
        for d in 0..n {
            mean.add(d).write(0.0);
        }
        for t in 0..tokens {
            let row = x.add(t * stride);
            for d in (0..vec).step_by(8) {
                let s = _mm256_add_ps(_mm256_loadu_ps(mean.add(d)), _mm256_loadu_ps(row.add(d)));
                _mm256_storeu_ps(mean.add(d), s);
            }
            for d in vec..n {
                *mean.add(d) += row.add(d).read();
            }
        }
        let inv = 1.0 / tokens as f32;
        let iv = _mm256_set1_ps(inv);
        for d in (0..vec).step_by(8) {
            _mm256_storeu_ps(mean.add(d), _mm256_mul_ps(_mm256_loadu_ps(mean.add(d)), iv));
        }
        for d in vec..n {
            *mean.add(d) *= inv;
        }
    }
}

/// Transposes the 8×8 block `r` (rows in, columns out).
///
/// # Safety
/// The CPU has AVX.
#[inline(always)]
unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // SAFETY: register-only AVX shuffles, the caller's feature.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }
}

/// `head_f_avx2_8x8`: the logits of classes `c0 .. c0 + 8`, `logits[l] = bias[c0 + l] +
/// Σ_d w[c0 + l][d] · mean[d]` in the reference's order and roundings (module docs), 8
/// inputs per transposed block, the last `dim % 8` inputs one at a time.
///
/// # Safety
/// The CPU has AVX2 and F16C; `w` holds `(c0 + 8)·dim` weight elements (f16 if `HALF`, else
/// f32), `bias` at least `c0 + 8` f32, `mean` points at `dim` readable f32 and `logits` at 8
/// writable f32.
#[target_feature(enable = "avx2,f16c")]
unsafe fn head_f_avx2_8x8<const HALF: bool>(
    w: *const u8,
    bias: F32Le<'_>,
    c0: usize,
    dim: usize,
    mean: *const f32,
    logits: *mut f32,
) {
    let wsz = if HALF { 2 } else { 4 };
    let vec = dim / 8 * 8;
    // SAFETY: weight rows c0 + l < c0 + 8, elements d + 8 ≤ vec ≤ dim (blocks) and d < dim
    // (the tail) of each; mean d < dim; logits 8 (the caller's).
    unsafe {
        let b: [f32; 8] = core::array::from_fn(|l| bias.at(c0 + l));
        let mut acc = _mm256_loadu_ps(b.as_ptr());
        let row = |l: usize, d: usize| w.add(((c0 + l) * dim + d) * wsz);
        for d in (0..vec).step_by(8) {
            let rows: [__m256; 8] = core::array::from_fn(|l| {
                if HALF {
                    _mm256_cvtph_ps(_mm_loadu_si128(row(l, d).cast()))
                } else {
                    _mm256_loadu_ps(row(l, d).cast())
                }
            });
            for (dd, col) in transpose8(rows).into_iter().enumerate() {
                let m = _mm256_set1_ps(mean.add(d + dd).read());
                acc = _mm256_add_ps(acc, _mm256_mul_ps(col, m));
            }
        }
        for d in vec..dim {
            let col: [f32; 8] = core::array::from_fn(|l| {
                if HALF {
                    half::f16::from_bits(row(l, d).cast::<u16>().read_unaligned()).to_f32()
                } else {
                    row(l, d).cast::<f32>().read_unaligned()
                }
            });
            let m = _mm256_set1_ps(mean.add(d).read());
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(col.as_ptr()), m));
        }
        _mm256_storeu_ps(logits, acc);
    }
}
