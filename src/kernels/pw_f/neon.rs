//! AArch64 NEON float pointwise conv, bit-exact with [`reference::pw_f`] in each
//! arithmetic: `F32Arith` (ARMv8.0, any NEON CPU) by the GEMM micro-kernel
//! `fgemm_neon_f32_4x16` (`FMLA .4s` by element, 4 tokens × 16 outputs, weights f32 or f16
//! widened by `FCVTL`), `F16Arith` (FEAT_FP16, Cortex-A76) by `fgemm_neon_f16_4x16`
//! (`FMLA .8h`). The patch embedding (`embed_f`) uses the f32 tile too.
//!
//! Safety: the safe entry point [`pw`] checks every length once per call, in checked
//! arithmetic, and returns `false` without touching anything where a layer does not fit
//! ([`Params::new`] checks the parameter sections); the `unsafe fn`s below state in
//! `# Safety` what they rely on, and each `unsafe` block which check bounds it.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::float::neon::{
    arr, bias_h, finish16_h, finish4, fmla_h, fmla_h_lane, load_w16, store16, Acts, Params,
};
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::Isa;
use crate::le::FloatWeights;
use crate::Activation;

/// Pointwise layer (`dim` → `dim` over `tokens` tokens, f32 or f16 arithmetic) with the NEON
/// kernels; `false`, touching nothing, where they do not take it ([`Params::new`], or `x`
/// or `out` shorter than `tokens · dim`).
pub(crate) fn pw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) -> bool {
    let Some(acts) = Acts::of::<M>(x, out) else {
        return false;
    };
    if !tokens.checked_mul(dim).is_some_and(|n| acts.hold(n)) {
        return false;
    }
    let Some(p) = Params::new::<W, M>(isa, dim, l, dim.checked_mul(dim), true) else {
        return false;
    };
    match acts {
        // SAFETY: x and out hold tokens·dim f16 (checked above); Params::new checked dim % 16
        // == 0, dim·dim f16 weights (f16 arithmetic requires W::HALF there), dim channels of
        // every vector, and FEAT_FP16.
        Acts::Half(x, o) => unsafe { pw_f16(x.as_ptr(), o.as_mut_ptr(), tokens, dim, &p, act) },
        // SAFETY: as above with f32 activations; the weights are W's elements, which the
        // kernel reads as HALF = W::HALF.
        Acts::Single(x, o) => unsafe {
            let (x, o) = (x.as_ptr(), o.as_mut_ptr());
            if W::HALF {
                pw_f32::<true>(x, o, tokens, dim, &p, act)
            } else {
                pw_f32::<false>(x, o, tokens, dim, &p, act)
            }
        },
    }
    true
}

/// f32 GEMM micro-kernel: `MR` (≤ 4) token rows × 16 outputs, `k` inputs, weights `w`
/// pointing at one packed 16-output block (f32 or f16), accumulators starting at `bias`.
/// Inputs are consumed in order, one fused `FMLA .4s` by element per input and register.
///
/// # Safety
/// Each `x[t]` points at `k` readable f32, `w` at `16·k` readable weight elements (f16 if
/// `HALF`, else f32) and `bias` at 16 readable f32.
#[inline(always)]
// Indices: t < MR and r < 4 are loop counters over the const lengths of the arrays they
// index (`x`, `xv`, `acc`: MR; `wv`, `acc[t]`: 4), so every index is in bounds.
#[allow(clippy::indexing_slicing)]
unsafe fn fgemm_neon_f32_4x16<const MR: usize, const HALF: bool>(
    x: [*const f32; MR],
    k: usize,
    w: *const u8,
    bias: *const f32,
) -> [[float32x4_t; 4]; MR] {
    // SAFETY: bias + 0..16, inputs x[t] + i (+ 0..4) with i < k (i + 4 ≤ k in the unrolled
    // loop), weights (i + j)·16 + 0..16 with i + j < k: all inside the caller's ranges.
    unsafe {
        let b = [
            vld1q_f32(bias),
            vld1q_f32(bias.add(4)),
            vld1q_f32(bias.add(8)),
            vld1q_f32(bias.add(12)),
        ];
        let mut acc = [b; MR];
        let mut i = 0;
        while i + 4 <= k {
            let xv: [float32x4_t; MR] = arr!(MR, |t| vld1q_f32(x[t].add(i)));
            macro_rules! step {
                ($j:literal) => {
                    let wv = load_w16::<HALF>(w, (i + $j) * 16);
                    for t in 0..MR {
                        for r in 0..4 {
                            acc[t][r] = vfmaq_laneq_f32::<$j>(acc[t][r], wv[r], xv[t]);
                        }
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            i += 4;
        }
        while i < k {
            let wv = load_w16::<HALF>(w, i * 16);
            for t in 0..MR {
                let xs = vld1q_dup_f32(x[t].add(i));
                for r in 0..4 {
                    acc[t][r] = vfmaq_f32(acc[t][r], wv[r], xs);
                }
            }
            i += 1;
        }
        acc
    }
}

/// One `MR`-token tile of an f32 GEMM layer over all `n / 16` output blocks: rows `x[t]`
/// (`k` f32 each), outputs at `out[t]` (`n` elements, f32 or f16).
///
/// # Safety
/// `n % 16 == 0`, `n` at most the channel count `p` was built for, `p.w` holds the `n·k`
/// packed weight elements (f16 if `HALF`), each `x[t]` points at `k` readable f32 and each
/// `out[t]` at `n` writable elements (f16 if `OUT_HALF`, else f32).
#[inline(always)]
// Index t < MR is a loop counter over the const length MR of `acc` and `out`.
#[allow(clippy::indexing_slicing)]
pub(crate) unsafe fn fgemm_f32_tile<const MR: usize, const HALF: bool, const OUT_HALF: bool>(
    x: [*const f32; MR],
    out: [*mut u8; MR],
    k: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    let esz = if OUT_HALF { 2 } else { 4 };
    let wsz = if HALF { 2 } else { 4 };
    for ob in 0..n / 16 {
        let o0 = 16 * ob;
        // SAFETY: block ob's weights are elements o0·k .. o0·k + 16·k ≤ n·k; biases and the
        // affine o0 .. o0 + 16 ≤ n ≤ dim; out[t] + o0 .. o0 + 16 ≤ n elements.
        unsafe {
            let acc = fgemm_neon_f32_4x16::<MR, HALF>(x, k, p.w.add(o0 * k * wsz), p.bias.add(o0));
            for t in 0..MR {
                let y: [float32x4_t; 4] = arr!(4, |r| finish4(p, o0 + 4 * r, act, acc[t][r]));
                store16::<OUT_HALF>(out[t].add(o0 * esz), y);
            }
        }
    }
}

/// Pointwise layer in f32 arithmetic: `x`, `out`: `tokens × n` f32; `n % 16 == 0`.
///
/// # Safety
/// `x` and `out` point at `tokens·n` f32 (readable, writable), `n % 16 == 0`, `n` at most
/// the channel count `p` was built for, and `p.w` holds `n·n` weight elements (f16 if
/// `HALF`).
#[target_feature(enable = "neon")]
unsafe fn pw_f32<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    tokens: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    let mut t = 0;
    // SAFETY: rows t + j < tokens of x and out, n elements each; the weights and n as the
    // caller guarantees.
    unsafe {
        while t + 4 <= tokens {
            let xs = arr!(4, |j| x.add((t + j) * n));
            let os = arr!(4, |j| out.add((t + j) * n).cast::<u8>());
            fgemm_f32_tile::<4, HALF, false>(xs, os, n, n, p, act);
            t += 4;
        }
        while t < tokens {
            fgemm_f32_tile::<1, HALF, false>([x.add(t * n)], [out.add(t * n).cast()], n, n, p, act);
            t += 1;
        }
    }
}

/// f16 GEMM micro-kernel: `MR` (≤ 4) token rows × 16 outputs (2 `.8h` registers each),
/// inputs in order, one `FMLA .8h` by element per input and register.
///
/// # Safety
/// The CPU implements FEAT_FP16; each `x[t]` points at `k` readable f16 and `w` at `16·k`.
#[target_feature(enable = "neon,fp16")]
// Index t < MR is a loop counter over the const length MR of `x`, `xv` and `acc`.
#[allow(clippy::indexing_slicing)]
unsafe fn fgemm_neon_f16_4x16<const MR: usize>(
    x: [*const u16; MR],
    k: usize,
    w: *const u16,
    bias: [uint16x8_t; 2],
) -> [[uint16x8_t; 2]; MR] {
    let mut acc = [bias; MR];
    let mut i = 0;
    // SAFETY: inputs x[t] + i (+ 0..8) with i < k (i + 8 ≤ k in the unrolled loop), weights
    // (i + j)·16 + 0..16 with i + j < k; FEAT_FP16 for the FMLA .8h (the caller's).
    unsafe {
        while i + 8 <= k {
            let xv: [uint16x8_t; MR] = arr!(MR, |t| vld1q_u16(x[t].add(i)));
            macro_rules! step {
                ($j:literal) => {
                    let wp = w.add((i + $j) * 16);
                    let (w0, w1) = (vld1q_u16(wp), vld1q_u16(wp.add(8)));
                    for t in 0..MR {
                        fmla_h_lane!(acc[t][0], w0, xv[t], $j);
                        fmla_h_lane!(acc[t][1], w1, xv[t], $j);
                    }
                };
            }
            step!(0);
            step!(1);
            step!(2);
            step!(3);
            step!(4);
            step!(5);
            step!(6);
            step!(7);
            i += 8;
        }
        while i < k {
            let wp = w.add(i * 16);
            let (w0, w1) = (vld1q_u16(wp), vld1q_u16(wp.add(8)));
            for t in 0..MR {
                let xs = vld1q_dup_u16(x[t].add(i));
                fmla_h!(acc[t][0], w0, xs);
                fmla_h!(acc[t][1], w1, xs);
            }
            i += 1;
        }
    }
    acc
}

/// One `MR`-token tile of the f16 pointwise layer over all output blocks.
///
/// # Safety
/// The CPU implements FEAT_FP16; `x` and `out` point at `tokens·n` f16 with `t + MR ≤
/// tokens`; `n % 16 == 0`, `n` at most the channel count `p` was built for, and `p.w` holds
/// `n·n` f16 weights.
#[target_feature(enable = "neon,fp16")]
unsafe fn pw_f16_tile<const MR: usize>(
    x: *const u16,
    out: *mut u16,
    t: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    // SAFETY: rows t + j < tokens of x and out (n elements each); block ob's weights are
    // o0·n .. o0·n + 16·n ≤ n·n, biases o0 + 16 ≤ n; FEAT_FP16 (the caller's).
    unsafe {
        let xs: [*const u16; MR] = arr!(MR, |j| x.add((t + j) * n));
        for ob in 0..n / 16 {
            let o0 = 16 * ob;
            let w = p.w.cast::<u16>().add(o0 * n);
            let acc = fgemm_neon_f16_4x16::<MR>(xs, n, w, bias_h(p.bias.add(o0)));
            for (j, a) in acc.into_iter().enumerate() {
                finish16_h(p, o0, act, a, None, out.add((t + j) * n + o0));
            }
        }
    }
}

/// Pointwise layer in f16 arithmetic: `x`, `out`: `tokens × n` f16 bits; `n % 16 == 0`;
/// f16 weights.
///
/// # Safety
/// The CPU implements FEAT_FP16; `x` and `out` point at `tokens·n` f16 (readable,
/// writable), `n % 16 == 0`, `n` at most the channel count `p` was built for, and `p.w`
/// holds `n·n` f16 weights.
#[target_feature(enable = "neon,fp16")]
unsafe fn pw_f16(
    x: *const u16,
    out: *mut u16,
    tokens: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    let mut t = 0;
    // SAFETY: tiles t..t + 4 ≤ tokens and t..t + 1 ≤ tokens; the rest is the caller's.
    unsafe {
        while t + 4 <= tokens {
            pw_f16_tile::<4>(x, out, t, n, p, act);
            t += 4;
        }
        while t < tokens {
            pw_f16_tile::<1>(x, out, t, n, p, act);
            t += 1;
        }
    }
}
