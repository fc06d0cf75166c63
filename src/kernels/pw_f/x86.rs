//! x86_64 AVX2 float pointwise conv, bit-exact with [`reference::pw_f`] in f32 arithmetic
//! (`F32Arith`: f32 blobs, and f16 blobs, whose weights F16C widens exactly; x86 has no
//! binary16 arithmetic, so `F16Arith` runs the reference): the GEMM micro-kernel
//! [`fgemm_avx2_f32_6x16`], 6 tokens × 16 outputs in 12 `ymm` accumulators, one input at a
//! time: the input's 16 packed weights (one `[o / 16][i][o % 16]` row) are loaded, or
//! loaded and widened by `VCVTPH2PS`, once into 2 registers and multiplied by each of the 6
//! tokens' input (`VBROADCASTSS`) with `VFMADD231PS`, so each output still adds its
//! inputs in order, one rounding each, starting from the bias. Any `dim`: the last,
//! partial block of outputs runs on the packing's zero padding and finishes its real
//! channels one at a time. The patch embedding (`embed_f`) uses the same tile.
//!
//! The layer runs in macro-tiles of [`TB`] tokens: for each 16-output block, all the
//! macro-tile's 6-token tiles in turn, so that the block's weights (`16·dim` elements: 24
//! KiB of f16 or 48 KiB of f32 at `dim` = 768) are read from L1/L2 by all of them, and the
//! macro-tile's inputs (`TB·dim` f32) stay in L2. On the Zen 4 below this measures the same
//! as one 6-token tile at a time over all the blocks (43 GMAC/s either way: a block's
//! weights are 5–10 bytes per cycle of its tile's FMAs, which its L2 and L3 sustain); it
//! bounds that traffic where a cache hierarchy does not.
//!
//! [`reference::pw_f`]: crate::kernels::reference::pw_f
//!
//! Speed, measured with `cargo run --release -p kernel-bench` (thread CPU time, best of 30
//! calls through the driver, epilogue included) on one core of the 2-vCPU AMD EPYC (Zen 4,
//! KVM, 2.8 GHz, no AVX-512 exposed) these kernels were written on: the pointwise layer of
//! ConvMixer-768/32 (1024 tokens, 768 → 768, ReLU) takes 13.9 ms, 43.4 GMAC/s with f32
//! weights and 43.9 with f16 (the reference: 0.41 and 0.33), about 15.6 MACs per cycle:
//! 97% of the 16 that the two 8-lane FMA pipes allow. Its patch embedding (147 inputs)
//! runs at 42 GMAC/s, the depthwise layer (`dw_f::x86`) at 27; with the scalar pool and
//! head, an fp16 or fp32 image extrapolates to 0.49 s (the reference: 65 s and 52 s),
//! against the 1.25 s per image reported for ONNX Runtime's fp32 on this machine.
//!
//! Safety: the safe entry point [`pw`] checks every length once per call, in checked
//! arithmetic, and returns `false` without touching anything where a layer does not fit
//! ([`Params::new`] checks the parameter sections and the CPU); the `unsafe fn`s below state
//! in `# Safety` what they rely on, and each `unsafe` block which check bounds it.

use core::arch::x86_64::*;

use crate::kernels::fgemm_packed_len_checked;
use crate::kernels::float::x86::{finish1, finish8, load_w8, store1, store8, Params};
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{Isa, FGEMM_NR};
use crate::le::FloatWeights;
use crate::Activation;

/// Tokens per micro-tile.
pub(crate) const MR: usize = 6;

/// Tokens per macro-tile (a multiple of [`MR`]).
const TB: usize = 8 * MR;

/// Pointwise layer (`dim` → `dim` over `tokens` tokens, f32 arithmetic) with the AVX2
/// kernels; `false`, touching nothing, where they do not take it (`F16Arith`,
/// [`Params::new`], or `x` or `out` shorter than `tokens · dim`). Under
/// [`Isa::Avx512Vnni`] the AVX-512 tiles, except on a CPU that splits 512-bit FMAs
/// ([`crate::kernels::cpu::split_512_fma`]), where the AVX2 tiles are faster.
pub(crate) fn pw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) -> bool {
    let wide = !crate::kernels::cpu::split_512_fma();
    pw_tiles::<W, M>(x, tokens, dim, l, act, out, (isa, wide))
}

/// [`pw`] with the AVX-512 tiles where `wide` and `isa` is [`Isa::Avx512Vnni`] (detected),
/// else the AVX2 tiles: the shared suite runs both on an AVX-512 CPU, whichever [`pw`]
/// picks.
pub(crate) fn pw_tiles<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    (isa, wide): (Isa, bool),
) -> bool {
    if M::HALF {
        return false;
    }
    // The sealed FloatArith pairs !HALF with Act = f32: identity casts.
    let (Ok(x), Ok(out)) = (
        bytemuck::try_cast_slice::<M::Act, f32>(x),
        bytemuck::try_cast_slice_mut::<M::Act, f32>(out),
    ) else {
        return false;
    };
    if !tokens
        .checked_mul(dim)
        .is_some_and(|n| x.len() >= n && out.len() >= n)
    {
        return false;
    }
    let Some(p) = Params::new::<W>(isa, dim, l, fgemm_packed_len_checked(dim, dim)) else {
        return false;
    };
    let (x, o) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: x and out hold tokens·dim f32 (checked above); Params::new checked the CPU's
    // features, dim > 0, the packed ⌈dim/16⌉·16·dim weight elements of W (read as HALF =
    // W::HALF) and dim channels of every vector.
    // With AVX-512 (F, BW, VL) the 12×32 tiles, else the AVX2 kernel throughout.
    unsafe {
        match (W::HALF, wide && super::avx512::takes(isa)) {
            (true, true) => super::avx512::pw_avx512::<true>(x, o, tokens, &p, act),
            (false, true) => super::avx512::pw_avx512::<false>(x, o, tokens, &p, act),
            (true, false) => pw_avx2::<true>(x, o, tokens, &p, act),
            (false, false) => pw_avx2::<false>(x, o, tokens, &p, act),
        }
    }
    true
}

/// The GEMM micro-kernel: `M` (≤ 6) token rows × 16 outputs, `k` inputs, weights `w`
/// pointing at one packed 16-output block (f32 or f16), accumulators starting at `bias`.
/// Inputs are consumed in order, one `VFMADD231PS` per input, token and 8 outputs.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; each `x[m]` points at `k` readable f32 and `w` at `16·k`
/// readable weight elements (f16 if `HALF`, else f32).
#[inline(always)]
// Indices: m < M is a loop counter over the const length M of `x` and `acc`; [0] and [1]
// are constants below the inner arrays' length 2.
#[allow(clippy::indexing_slicing)]
pub(crate) unsafe fn fgemm_avx2_f32_6x16<const M: usize, const HALF: bool>(
    x: [*const f32; M],
    k: usize,
    w: *const u8,
    bias: [__m256; 2],
) -> [[__m256; 2]; M] {
    let mut acc = [bias; M];
    // SAFETY: weights 16·i + 0..16 < 16·k and inputs x[m] + i < k for i < k: inside the
    // caller's ranges; the features are the caller's.
    unsafe {
        for i in 0..k {
            let w0 = load_w8::<HALF>(w, 16 * i);
            let w1 = load_w8::<HALF>(w, 16 * i + 8);
            for m in 0..M {
                let xv = _mm256_set1_ps(x[m].add(i).read());
                acc[m][0] = _mm256_fmadd_ps(w0, xv, acc[m][0]);
                acc[m][1] = _mm256_fmadd_ps(w1, xv, acc[m][1]);
            }
        }
    }
    acc
}

/// Outputs `16·ob .. min(16·ob + 16, n)` of `M` tokens (`n`: the channel count `p` was built
/// for), finished: rows `x[m]` (`k` f32 each), output rows `out[m]` (`n` elements, f32 or
/// f16: `OUT_HALF`). A partial last block computes on the packing's zero weights and
/// finishes only its real channels, one at a time.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `16·ob < n`; `p.w` holds the `⌈n/16⌉·16·k` packed weight
/// elements (f16 if `HALF`); each `x[m]` points at `k` readable f32 and each `out[m]` at `n`
/// writable elements (f16 if `OUT_HALF`, else f32).
#[inline(always)]
// Index m < M is a loop counter over the const length M of `acc` and `out`.
#[allow(clippy::indexing_slicing)]
pub(crate) unsafe fn fgemm_block<const M: usize, const HALF: bool, const OUT_HALF: bool>(
    x: [*const f32; M],
    out: [*mut u8; M],
    k: usize,
    ob: usize,
    p: &Params,
    act: Activation,
) {
    let n = p.dim();
    let o0 = FGEMM_NR * ob;
    let esz = if OUT_HALF { 2 } else { 4 };
    let wsz = if HALF { 2 } else { 4 };
    let full = o0 + FGEMM_NR <= n;
    // SAFETY: block ob's weights are elements o0·k .. o0·k + 16·k ≤ ⌈n/16⌉·16·k; the bias
    // and affine channels o0 .. o0 + 16 ≤ n where the block is full (else one at a time
    // below n); out[m] + o0 .. o0 + 16 ≤ n elements (full), else o0 + j < n; the features
    // are the caller's.
    unsafe {
        let bias = if full {
            [p.bias8(o0), p.bias8(o0 + 8)]
        } else {
            let b: [f32; FGEMM_NR] = core::array::from_fn(|j| p.bias1(o0 + j));
            [
                _mm256_loadu_ps(b.as_ptr()),
                _mm256_loadu_ps(b.as_ptr().add(8)),
            ]
        };
        let acc = fgemm_avx2_f32_6x16::<M, HALF>(x, k, p.w().add(o0 * k * wsz), bias);
        if full {
            for m in 0..M {
                let o = out[m].add(o0 * esz);
                store8::<OUT_HALF>(o, finish8(p, o0, act, acc[m][0]));
                store8::<OUT_HALF>(o.add(8 * esz), finish8(p, o0 + 8, act, acc[m][1]));
            }
        } else {
            for m in 0..M {
                let mut v = [0f32; FGEMM_NR];
                _mm256_storeu_ps(v.as_mut_ptr(), acc[m][0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), acc[m][1]);
                for (j, a) in v.iter().enumerate().take(n - o0) {
                    let y = finish1(p, o0 + j, act, *a);
                    store1::<OUT_HALF>(out[m].add((o0 + j) * esz), y);
                }
            }
        }
    }
}

/// Output block `ob` of the `M` tokens from `t` on of a pointwise layer.
///
/// # Safety
/// The conditions of [`pw_avx2`], `t + M ≤ tokens` and `16·ob < n`.
#[inline(always)]
unsafe fn pw_tile<const M: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    t: usize,
    ob: usize,
    p: &Params,
    act: Activation,
) {
    let n = p.dim();
    // Rows t + m < tokens of x and out (n elements each): inside both (the caller's).
    let xs: [*const f32; M] = core::array::from_fn(|m| x.wrapping_add((t + m) * n));
    let os: [*mut u8; M] = core::array::from_fn(|m| out.wrapping_add((t + m) * n).cast());
    // SAFETY: the rows above; n·n packed weights, 16·ob < n and the features (the
    // caller's).
    unsafe { fgemm_block::<M, HALF, false>(xs, os, n, ob, p, act) }
}

/// Pointwise layer in f32 arithmetic: `x`, `out`: `tokens × n` f32 (`n` the channel count
/// `p` was built for), in macro-tiles of [`TB`] tokens, each 16-output block over the
/// macro-tile's 6-token tiles.
///
/// # Safety
/// `p` holds (so the CPU has AVX2, FMA and F16C), `x` and `out` point at `tokens·n` f32
/// (readable, writable), and `p.w` holds the `⌈n/16⌉·16·n` packed weight elements (f16 if
/// `HALF`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pw_avx2<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    tokens: usize,
    p: &Params,
    act: Activation,
) {
    let blocks = p.dim().div_ceil(FGEMM_NR);
    let mut t0 = 0;
    while t0 < tokens {
        let t1 = t0 + (tokens - t0).min(TB);
        for ob in 0..blocks {
            // SAFETY: tokens t0..t1 ≤ tokens; ob < ⌈n/16⌉; the rest is the caller's.
            unsafe { pw_rows::<HALF>(x, out, (t0, t1), ob, p, act) };
        }
        t0 = t1;
    }
}

/// Output block `ob` of tokens `t0..t1`, in 6-token tiles (the last one shorter).
///
/// # Safety
/// As [`pw_avx2`], `t1 ≤ tokens` and `16·ob < n`.
#[inline(always)]
pub(super) unsafe fn pw_rows<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    (t0, t1): (usize, usize),
    ob: usize,
    p: &Params,
    act: Activation,
) {
    let mut t = t0;
    // SAFETY: tiles t..t + M ≤ t1 ≤ tokens; the rest is the caller's.
    unsafe {
        while t + MR <= t1 {
            pw_tile::<MR, HALF>(x, out, t, ob, p, act);
            t += MR;
        }
        match t1 - t {
            5 => pw_tile::<5, HALF>(x, out, t, ob, p, act),
            4 => pw_tile::<4, HALF>(x, out, t, ob, p, act),
            3 => pw_tile::<3, HALF>(x, out, t, ob, p, act),
            2 => pw_tile::<2, HALF>(x, out, t, ob, p, act),
            1 => pw_tile::<1, HALF>(x, out, t, ob, p, act),
            _ => {}
        }
    }
}
