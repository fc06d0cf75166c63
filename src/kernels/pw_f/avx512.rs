//! x86_64 AVX-512 float pointwise conv, bit-exact with [`reference::pw_f`] in f32
//! arithmetic (`F32Arith`), reached through the AVX2 entry point (`x86::pw`, which checks
//! the layer) where [`Isa::Avx512Vnni`] was detected: [`fgemm_avx512_f32_12x32`], 12 tokens
//! × 32 outputs (two of the packing's 16-output blocks, one `zmm` each) in 24 accumulators,
//! one input at a time: per input 2 weight vector loads (f32, or f16 widened by
//! `VCVTPH2PS`), 12 broadcasts of the tokens' inputs and 24 `VFMADD231PS`. Each output adds
//! its inputs in order, one rounding each, from its bias, as the AVX2 kernel and the
//! reference do; the sums then go through the AVX2 epilogue 8 channels at a time, so the
//! activation, affine and rounding are the AVX2 kernel's exactly.
//!
//! The layer runs in macro-tiles of [`TB`] tokens, each pair of full 16-output blocks over
//! the macro-tile's 12-token tiles; what the tiles leave — the last tokens of a macro-tile
//! (fewer than 12), a last single full block and a last partial block — runs the AVX2
//! tiles (`x86::pw_rows`), whose results are the same bits.
//!
//! Why: where the CPU executes 512-bit FMAs at full width (two FMA units of 16 lanes, as
//! Intel's server cores), these tiles do twice the AVX2 kernel's multiply-adds per cycle;
//! where it splits them in two (Zen 4) they run about as fast as AVX2. The level is
//! [`Isa::Avx512Vnni`] (F, BW, VL and VNNI), as the int8 GEMM's: an AVX-512 CPU without
//! VNNI (Skylake-SP) runs the AVX2 kernels.
//!
//! Speed: not measured. The machine these kernels were written on has no AVX-512; they are
//! tested under Bochs' Tiger Lake model (`tools/avx512-emu/run.sh`, CI's
//! `x86-avx512-bochs` stage), which checks results, not time.
//!
//! [`reference::pw_f`]: crate::kernels::reference::pw_f
//!
//! Safety: the entry point (`x86::pw`) checks every length once per call and builds the
//! [`Params`] (the parameter sections and AVX2); [`takes`] checks AVX-512. The `unsafe fn`s
//! state in `# Safety` what they rely on, and each `unsafe` block which check bounds it.

use core::arch::x86_64::*;

use super::x86::pw_rows;
use crate::kernels::float::x86::{finish8, store8, Params};
use crate::kernels::{Isa, FGEMM_NR};
use crate::Activation;

/// Tokens per micro-tile.
const MR: usize = 12;

/// Tokens per macro-tile (a multiple of [`MR`]).
const TB: usize = 4 * MR;

/// Whether the AVX-512 tiles run on `isa`: [`Isa::Avx512Vnni`], detected on this CPU.
pub(super) fn takes(isa: Isa) -> bool {
    isa == Isa::Avx512Vnni && isa.available()
}

/// 16 weights from element `e` of `w` (f16 if `HALF`, widened exactly, else f32).
///
/// # Safety
/// The CPU has AVX-512F; `w` holds elements `e..e + 16`.
#[inline(always)]
unsafe fn load_w16<const HALF: bool>(w: *const u8, e: usize) -> __m512 {
    // SAFETY: the caller's 16 elements from e: 32 or 64 bytes from w + e·size.
    unsafe {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * e).cast()))
        } else {
            _mm512_loadu_ps(w.add(4 * e).cast())
        }
    }
}

/// The two 8-lane halves of `v`.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn halves(v: __m512) -> [__m256; 2] {
    // SAFETY: register-only casts and an extract of AVX-512F, the caller's feature.
    unsafe {
        let d = _mm512_castps_pd(v);
        [
            _mm256_castpd_ps(_mm512_castpd512_pd256(d)),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(d)),
        ]
    }
}

/// The GEMM micro-kernel: [`MR`] token rows × `NB` (1 or 2) blocks of 16 outputs, `k`
/// inputs, `w[b]` pointing at block `b`'s packed weights (f32 or f16), accumulators
/// starting at `bias`. Inputs are consumed in order, one `VFMADD231PS` per input, token and
/// block.
///
/// # Safety
/// The CPU has AVX-512F; each `x[m]` points at `k` readable f32 and each `w[b]` at `16·k`
/// readable weight elements (f16 if `HALF`, else f32).
#[inline(always)]
// Indices: m < MR and b < NB are loop counters over the const lengths of `x`, `acc` and
// `wv`.
#[allow(clippy::indexing_slicing)]
pub(crate) unsafe fn fgemm_avx512_f32_12x32<const NB: usize, const HALF: bool>(
    x: [*const f32; MR],
    k: usize,
    w: [*const u8; NB],
    bias: [__m512; NB],
) -> [[__m512; NB]; MR] {
    let mut acc = [bias; MR];
    // SAFETY: weights 16·i + 0..16 < 16·k of each block and inputs x[m] + i < k for i < k:
    // inside the caller's ranges; the features are the caller's.
    unsafe {
        for i in 0..k {
            let wv: [__m512; NB] = core::array::from_fn(|b| load_w16::<HALF>(w[b], 16 * i));
            for m in 0..MR {
                let xv = _mm512_set1_ps(x[m].add(i).read());
                for b in 0..NB {
                    acc[m][b] = _mm512_fmadd_ps(wv[b], xv, acc[m][b]);
                }
            }
        }
    }
    acc
}

/// Output blocks `ob..ob + NB` (full ones) of the 12 tokens from `t` on, finished.
///
/// # Safety
/// As [`pw_avx512`], `t + 12 ≤ tokens` and `16·(ob + NB) ≤ n`.
#[inline(always)]
unsafe fn tile<const NB: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    t: usize,
    ob: usize,
    p: &Params,
    act: Activation,
) {
    let n = p.dim();
    let wsz = if HALF { 2 } else { 4 };
    // Rows t + m < tokens of x and out (n elements each): inside both (the caller's).
    let xs: [*const f32; MR] = core::array::from_fn(|m| x.wrapping_add((t + m) * n));
    // SAFETY: blocks ob + b < ⌈n/16⌉: weight elements 16·(ob + b)·n .. + 16·n of the
    // packing, bias and affine channels 16·(ob + b) + 16 ≤ n, output rows t + m < tokens
    // (n f32 each); the features are the caller's.
    unsafe {
        let w: [*const u8; NB] = core::array::from_fn(|b| p.w().add(FGEMM_NR * (ob + b) * n * wsz));
        let bias: [__m512; NB] = core::array::from_fn(|b| {
            let o = FGEMM_NR * (ob + b);
            let (lo, hi) = (p.bias8(o), p.bias8(o + 8));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                _mm256_castps_pd(hi),
            ))
        });
        let acc = fgemm_avx512_f32_12x32::<NB, HALF>(xs, n, w, bias);
        for (m, a) in acc.iter().enumerate() {
            let row = out.add((t + m) * n);
            for (b, v) in a.iter().enumerate() {
                let o = FGEMM_NR * (ob + b);
                let [lo, hi] = halves(*v);
                store8::<false>(row.add(o).cast(), finish8(p, o, act, lo));
                store8::<false>(row.add(o + 8).cast(), finish8(p, o + 8, act, hi));
            }
        }
    }
}

/// Pointwise layer in f32 arithmetic with the AVX-512 tiles (module docs): `x`, `out`:
/// `tokens × n` f32 (`n` the channel count `p` was built for).
///
/// # Safety
/// `p` holds (so the CPU has AVX2, FMA and F16C), the CPU has AVX-512 F, BW and VL
/// ([`takes`]), `x` and `out` point at `tokens·n` f32 (readable, writable), and `p.w` holds
/// the `⌈n/16⌉·16·n` packed weight elements (f16 if `HALF`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn pw_avx512<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    tokens: usize,
    p: &Params,
    act: Activation,
) {
    let n = p.dim();
    let (full, blocks) = (n / FGEMM_NR, n.div_ceil(FGEMM_NR));
    let mut t0 = 0;
    while t0 < tokens {
        let t1 = t0 + (tokens - t0).min(TB);
        // Tokens t0..tt in whole 12-token tiles; tt..t1 (fewer than 12) left to AVX2.
        let tt = t0 + (t1 - t0) / MR * MR;
        let mut ob = 0;
        // SAFETY: tiles t..t + 12 ≤ tt ≤ tokens, blocks ob + NB ≤ full (16·full ≤ n), and
        // the AVX2 rows t1 ≤ tokens, ob < ⌈n/16⌉; the rest is the caller's.
        unsafe {
            while ob < blocks {
                let nb = if ob + 2 <= full {
                    2
                } else if ob < full {
                    1
                } else {
                    0
                };
                let mut t = t0;
                while nb > 0 && t < tt {
                    if nb == 2 {
                        tile::<2, HALF>(x, out, t, ob, p, act);
                    } else {
                        tile::<1, HALF>(x, out, t, ob, p, act);
                    }
                    t += MR;
                }
                // What the tiles left: the last tokens, or the partial block's tokens.
                for b in ob..ob + nb.max(1) {
                    pw_rows::<HALF>(x, out, (t, t1), b, p, act);
                }
                ob += nb.max(1);
            }
        }
        t0 = t1;
    }
}
