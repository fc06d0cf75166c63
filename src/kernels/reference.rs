//! Portable scalar reference kernels, one per op. They define the results: every SIMD
//! kernel must match them bit for bit, int8 and float alike (the float kernels fix the
//! summation order, fuse every multiply-add and say where values are rounded).
//!
//! Activations are token-major (`token · dim + channel`); weight layouts are those of
//! `docs/blob-format.md`. Callers pass slices of the documented lengths (the model checks
//! them once, from the validated header).
//!
//! No kernel here panics or overflows on any arguments: each checks once, in checked
//! arithmetic, that the slices it indexes hold the shape's elements (writing nothing where
//! they do not), which also bounds every index it then forms, and reads through `get`;
//! integer accumulation wraps where a validated blob keeps it from overflowing (the reader's
//! accumulator bound), which is what the SIMD kernels' i32 lanes do.
#![forbid(unsafe_code)]

use super::{
    fgemm_packed_len_checked, gemm_index, gemm_packed_len_checked, EmbedGeom, Grid, PW_KR, PW_NR,
};
use crate::le::{F32Le, FloatWeights, I32Le};
use crate::Activation;

// ----------------------------------------------------------------------------------------
// Float path: f32 blobs, and f16 blobs computed in f32 (`F32Arith`) or in f16 (`F16Arith`)
// ----------------------------------------------------------------------------------------

/// The activation in f32: GELU ([`gelu_f32`]), its tanh approximation (libm `tanhf`), or
/// ReLU.
///
/// ```
/// use convmixer_edge::{kernels::reference::act_f32, Activation};
/// assert_eq!(act_f32(Activation::Relu, -1.0), 0.0);
/// assert!((act_f32(Activation::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
/// ```
#[inline]
pub fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        // `x > 0 ? x : +0` (NaN → 0): exactly AArch64 `FMAXNM(x, +0)`.
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Gelu => gelu_f32(x),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/pi)
            0.5 * x * (1.0 + libm::tanhf(C * (x + 0.044_715 * x * x * x)))
        }
    }
}

/// Clamp of [`erf_f32`]'s argument (erf(4) = 1 − 1.5·10⁻⁸: 1 in f32).
pub const ERF_ZMAX: f32 = 4.0;
/// Numerator of [`erf_f32`], coefficients of `t⁰ … t⁶` (`t = z²`).
pub const ERF_P: [f32; 7] = [
    core::f32::consts::FRAC_2_SQRT_PI, // the fit lands on erf'(0) itself
    0.184_356_35,
    0.054_347_407,
    0.003_833_032,
    0.000_385_106_8,
    4.853_495e-6,
    -1.401_876_5e-8,
];
/// Denominator of [`erf_f32`], coefficients of `t⁰ … t⁵`.
pub const ERF_Q: [f32; 6] = [
    1.0,
    0.496_715_16,
    0.113_734_67,
    0.015_448_971,
    0.001_311_494_5,
    6.469_874e-5,
];

/// erf in f32 by a rational approximation that SIMD code evaluates to the same bits:
/// `z ← clamp(z, ±ERF_ZMAX)`, `t = z²`, `P(t)` and `Q(t)` by Horner with fused
/// multiply-adds, `r = (z·P) / Q`, clamped to ±1. Max abs error 2.9·10⁻⁷ in f32 (a weighted
/// least-squares fit of degree 6/5 in z² on [0, 4], about 2·10⁻⁹ in exact arithmetic;
/// `tools/fixtures/fit_erf.py` derives the coefficients). NaN gives ±1 (never NaN).
///
/// ```
/// use convmixer_edge::kernels::reference::erf_f32;
/// assert_eq!(erf_f32(0.0), 0.0);
/// assert!((erf_f32(0.5) - 0.520_499_9).abs() < 3e-7);
/// assert_eq!(erf_f32(9.0), 1.0);
/// ```
#[inline]
#[allow(clippy::manual_clamp)] // `clamp` keeps NaN; maxNum/minNum (NEON's) drop it
pub fn erf_f32(z: f32) -> f32 {
    // f32::max/min are IEEE maxNum/minNum (NaN loses): exactly `FMAXNM`/`FMINNM`. No call
    // here sees two zeros, where their sign choice would be open.
    let z = z.max(-ERF_ZMAX).min(ERF_ZMAX);
    let t = z * z;
    let mut p = ERF_P[6];
    for c in ERF_P[..6].iter().rev() {
        p = libm::fmaf(p, t, *c);
    }
    let mut q = ERF_Q[5];
    for c in ERF_Q[..5].iter().rev() {
        q = libm::fmaf(q, t, *c);
    }
    ((z * p) / q).max(-1.0).min(1.0)
}

/// GELU in f32: `(0.5·x)·(1 + erf_f32(x·(1/√2)))`, each step rounded in f32. Within
/// 7.2·10⁻⁷ (absolute, relative above 1) of the exact GELU.
///
/// ```
/// use convmixer_edge::kernels::reference::gelu_f32;
/// assert!((gelu_f32(1.0) - 0.841_344_7).abs() < 1e-6);
/// assert_eq!(gelu_f32(-10.0), -0.0);
/// ```
#[inline]
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * core::f32::consts::FRAC_1_SQRT_2))
}

/// `a·b + c` in IEEE binary16 with one rounding (AArch64 `FMLA .8h`), for f16 values held
/// in f32. The product is exact in f32 (11 × 11 significand bits); the sum is made exact by
/// TwoSum, rounded to odd at 24 bits, then rounded to nearest-even at 11 bits, which gives
/// the correctly rounded result (24 ≥ 11 + 2).
///
/// ```
/// use convmixer_edge::kernels::reference::fma_f16;
/// // 1 + 2^-11 is a tie at f16 precision (rounds to even, 1.0); with a fused
/// // 2^-24 more it must round up to 1 + 2^-10.
/// let tiny = 2f32.powi(-12);
/// assert_eq!(fma_f16(tiny, 2.0, 1.0), 1.0);
/// assert_eq!(fma_f16(2f32.powi(-12) + 2f32.powi(-22), 2.0, 1.0), 1.0 + 2f32.powi(-10));
/// ```
#[inline]
pub fn fma_f16(a: f32, b: f32, c: f32) -> f32 {
    let p = a * b;
    let s = p + c;
    let mut r = s;
    if s.is_finite() {
        let bb = s - p;
        let e = (p - (s - bb)) + (c - bb);
        if e != 0.0 && r.to_bits() & 1 == 0 {
            // Round to odd: step the even result one ulp toward the exact sum.
            let bits = s.to_bits();
            r = f32::from_bits(if (e > 0.0) == (s > 0.0) {
                bits + 1
            } else {
                bits - 1
            });
        }
    }
    half::f16::from_f32(r).to_f32()
}

/// How a float layer computes and stores: f32 ([`F32Arith`], f32 blobs, and f16 blobs on
/// CPUs without FEAT_FP16) or binary16 ([`F16Arith`], f16 blobs on FEAT_FP16 CPUs). The
/// accumulator is carried as f32 either way (for `F16Arith` it always holds an f16 value).
/// Sealed: the NEON kernels rely on `Act` being `f32` / `u16` as `HALF` says. `F16Arith`
/// expects f16 weights (an f16 blob).
///
/// ```
/// use convmixer_edge::kernels::reference::{F16Arith, F32Arith, FloatArith};
/// assert_eq!(F32Arith::mac(1.0, 3.0, 0.5), 2.5);
/// assert_eq!(F16Arith::widen(F16Arith::narrow(1.0 / 3.0)), 0.333_251_95);
/// ```
pub trait FloatArith: Copy + 'static + crate::sealed::Sealed {
    /// Activation storage: `f32`, or f16 bits.
    type Act: Copy + Default + bytemuck::Pod;
    /// Whether this is binary16 arithmetic.
    const HALF: bool;
    /// The stored activation as f32 (exact).
    fn widen(a: Self::Act) -> f32;
    /// Rounds to the storage type (to nearest, ties to even).
    fn narrow(v: f32) -> Self::Act;
    /// The accumulator's start value for a layer bias.
    #[inline]
    fn init(bias: f32) -> f32 {
        Self::widen(Self::narrow(bias))
    }
    /// `acc + w·x` with one rounding.
    fn mac(acc: f32, w: f32, x: f32) -> f32;
    /// A stored activation tensor as [`Model::logits_traced`](crate::Model::logits_traced)
    /// shows it.
    fn trace(a: &[Self::Act]) -> crate::LayerOutput<'_>;
}

/// f32 arithmetic, f32 activations.
#[derive(Clone, Copy, Debug)]
pub struct F32Arith;

impl crate::sealed::Sealed for F32Arith {}
impl FloatArith for F32Arith {
    type Act = f32;
    const HALF: bool = false;
    #[inline(always)]
    fn widen(a: f32) -> f32 {
        a
    }
    #[inline(always)]
    fn narrow(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    fn mac(acc: f32, w: f32, x: f32) -> f32 {
        libm::fmaf(w, x, acc)
    }
    fn trace(a: &[f32]) -> crate::LayerOutput<'_> {
        crate::LayerOutput::F32(a)
    }
}

/// IEEE binary16 arithmetic, f16 activations (stored as their bits).
#[derive(Clone, Copy, Debug)]
pub struct F16Arith;

impl crate::sealed::Sealed for F16Arith {}
impl FloatArith for F16Arith {
    type Act = u16;
    const HALF: bool = true;
    #[inline(always)]
    fn widen(a: u16) -> f32 {
        half::f16::from_bits(a).to_f32()
    }
    #[inline(always)]
    fn narrow(v: f32) -> u16 {
        half::f16::from_f32(v).to_bits()
    }
    #[inline(always)]
    fn mac(acc: f32, w: f32, x: f32) -> f32 {
        fma_f16(w, x, acc)
    }
    fn trace(a: &[u16]) -> crate::LayerOutput<'_> {
        crate::LayerOutput::F16(a)
    }
}

/// Parameters of one float conv layer: weights, bias and the post-activation affine
/// (the removed BatchNorm).
#[derive(Clone, Copy, Debug)]
pub struct FloatLayer<'a, W> {
    /// Weights in the layer's documented layout.
    pub w: W,
    /// Bias per output channel.
    pub bias: F32Le<'a>,
    /// Affine scale per output channel.
    pub scale: F32Le<'a>,
    /// Affine shift per output channel.
    pub shift: F32Le<'a>,
    /// Per output channel, the power of two (≤ 1) the accumulator is multiplied by before
    /// the activation. The weights and bias are stored multiplied by its inverse, so that
    /// a channel of small weights keeps them in binary16's normal range; in f32 the
    /// product is exact, so the result is that of the unscaled weights.
    pub unscale: F32Le<'a>,
}

/// The float epilogue before the residual and the narrowing: `fma(scale, act(acc), shift)`
/// in f32 (`acc` already multiplied by the layer's `unscale`).
///
/// ```
/// use convmixer_edge::{kernels::reference::finish_f32, Activation};
/// assert_eq!(finish_f32(2.0, 0.5, Activation::Relu, -3.0), 0.5);
/// assert_eq!(finish_f32(2.0, 0.5, Activation::Relu, 3.0), 6.5);
/// ```
#[inline]
pub fn finish_f32(scale: f32, shift: f32, act: Activation, acc: f32) -> f32 {
    libm::fmaf(scale, act_f32(act, acc), shift)
}

impl<W: FloatWeights> FloatLayer<'_, W> {
    #[inline]
    fn finish(&self, o: usize, act: Activation, acc: f32) -> f32 {
        finish_f32(
            self.scale.at(o),
            self.shift.at(o),
            act,
            acc * self.unscale.at(o),
        )
    }
}

/// Patch embedding on raw pixels (HWC `u8`), writing `tokens × dim` activations. Weights
/// are packed ([`fgemm_index`](super::fgemm_index), input `i = (ky·p + kx)·in_c + c`).
/// Always computed in f32 (the pixel-unit weights make large, cancelling partial sums);
/// the outputs are then narrowed to `M`'s storage.
///
/// ```
/// use convmixer_edge::{kernels::{reference::*, EmbedGeom}, le::F32Le, Activation};
/// let one = 1.0f32.to_le_bytes();
/// let zero = 0.0f32.to_le_bytes();
/// // 1 channel, 2x2 image, patch 2, dim 1 (packed to 16 outputs): sums the four pixels.
/// let mut w = vec![0u8; 4 * 16 * 4];
/// for i in 0..4 { w[64 * i..64 * i + 4].copy_from_slice(&one); }
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&zero), scale: F32Le(&one), shift: F32Le(&zero), unscale: F32Le(&one) };
/// let mut out = [0.0f32];
/// embed_f::<_, F32Arith>(&[1, 2, 3, 4], EmbedGeom { in_h: 2, in_w: 2, in_c: 1, patch: 2 }, 1, &l, Activation::Relu, &mut out);
/// assert_eq!(out[0], 10.0);
/// ```
pub fn embed_f<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
) {
    let (p, c) = (g.patch, g.in_c);
    let taps = g.taps();
    let grid = embed_grid(g, px.len(), dim, out.len())
        .filter(|_| fgemm_packed_len_checked(dim, taps).is_some());
    let Some((ht, wt)) = grid else {
        return;
    };
    for ty in 0..ht {
        for tx in 0..wt {
            let t = ty * wt + tx;
            let Some(orow) = out.get_mut(t * dim..(t + 1) * dim) else {
                return;
            };
            for (o, y) in orow.iter_mut().enumerate() {
                let mut acc = l.bias.at(o);
                let mut i = 0;
                for ky in 0..p {
                    let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                    for v in px.get(row..row + p * c).unwrap_or_default() {
                        acc = F32Arith::mac(
                            acc,
                            l.w.at(super::fgemm_index(o, i, taps)),
                            f32::from(*v),
                        );
                        i += 1;
                    }
                }
                *y = M::narrow(l.finish(o, act, acc));
            }
        }
    }
}

/// The token grid `(ht, wt)` of a patch embedding, where the patch fits the image
/// (`0 < p ≤ in_h, in_w`), `px_len` covers the image (`in_h · in_w · in_c`) and `out_len`
/// the `ht · wt · dim` outputs, all in checked arithmetic: below these sizes no index an
/// embedding forms (pixel `((ty·p + ky)·in_w + tx·p)·in_c + …`, output `t·dim + o`) can
/// overflow or leave its slice, and with `dim > 0` the embedding's loops run at most
/// `out_len` times. `None` otherwise.
pub(crate) fn embed_grid(
    g: EmbedGeom,
    px_len: usize,
    dim: usize,
    out_len: usize,
) -> Option<(usize, usize)> {
    let p = g.patch;
    // dim > 0 also bounds the token loops by out_len (no outputs: nothing to do).
    if p == 0 || g.in_h < p || g.in_w < p || dim == 0 {
        return None;
    }
    // (in − p) / p + 1 = in / p for in ≥ p ≥ 1.
    let (ht, wt) = (g.in_h / p, g.in_w / p);
    let image = g.in_h.checked_mul(g.in_w)?.checked_mul(g.in_c)?;
    let outputs = ht.checked_mul(wt)?.checked_mul(dim)?;
    (px_len >= image && out_len >= outputs).then_some((ht, wt))
}

/// Depthwise k×k 'same' conv (zero padding) + activation + affine + residual:
/// `out = narrow(affine(act(dw(x))) + x)`, the taps accumulated in `(ky, kx)` order, padding
/// taps skipped.
pub fn dw_f<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
) {
    let (k, d) = (g.kernel, g.dim);
    // Below these sizes every index formed here is inside its slice (taps outside the
    // grid are skipped) and computed without overflow; d > 0 and the k²·d weights also
    // bound every loop by a buffer's length.
    let wsz = if W::HALF { 2 } else { 4 };
    let fits = d > 0
        && g.elements().is_some_and(|n| x.len() >= n && out.len() >= n)
        && k.checked_mul(k)
            .and_then(|kk| kk.checked_mul(d))
            .is_some_and(|n| l.w.bytes().len() / wsz >= n);
    if !fits {
        return;
    }
    for ty in 0..g.ht {
        for tx in 0..g.wt {
            let t = ty * g.wt + tx;
            let range = t * d..(t + 1) * d;
            let (Some(res), Some(orow)) = (x.get(range.clone()), out.get_mut(range)) else {
                return;
            };
            for (c, (y, r)) in orow.iter_mut().zip(res).enumerate() {
                let mut acc = M::init(l.bias.at(c));
                for ky in 0..k {
                    let yy = (ty + ky).wrapping_sub(g.pad_top);
                    if yy >= g.ht {
                        continue;
                    }
                    for kx in 0..k {
                        let xx = (tx + kx).wrapping_sub(g.pad_left);
                        if xx >= g.wt {
                            continue;
                        }
                        if let Some(v) = x.get((yy * g.wt + xx) * d + c) {
                            acc = M::mac(acc, l.w.at((ky * k + kx) * d + c), M::widen(*v));
                        }
                    }
                }
                *y = M::narrow(l.finish(c, act, acc) + M::widen(*r));
            }
        }
    }
}

/// Pointwise 1×1 conv + activation + affine: `out[t] = narrow(affine(act(W · x[t] + b)))`,
/// inputs accumulated in order. Weights are packed ([`fgemm_index`](super::fgemm_index)).
pub fn pw_f<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
) {
    // dim > 0 also bounds the token loop by x.len().
    let fits = dim > 0
        && tokens
            .checked_mul(dim)
            .is_some_and(|n| x.len() >= n && out.len() >= n)
        && fgemm_packed_len_checked(dim, dim).is_some();
    if !fits {
        return;
    }
    for t in 0..tokens {
        let range = t * dim..(t + 1) * dim;
        let (Some(row), Some(orow)) = (x.get(range.clone()), out.get_mut(range)) else {
            return;
        };
        for (o, y) in orow.iter_mut().enumerate() {
            let mut acc = M::init(l.bias.at(o));
            for (i, v) in row.iter().enumerate() {
                acc = M::mac(acc, l.w.at(super::fgemm_index(o, i, dim)), M::widen(*v));
            }
            *y = M::narrow(l.finish(o, act, acc));
        }
    }
}

/// Global average pool + linear head in f32: `logits = b + W · mean_t(x)`.
/// `mean` is a `dim`-long scratch buffer.
pub fn head_f<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    mean: &mut [f32],
    logits: &mut [f32],
) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && logits.len().checked_mul(dim).is_some();
    let Some(mean) = mean.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    mean.iter_mut().for_each(|m| *m = 0.0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += M::widen(*v);
        }
    }
    let inv = 1.0 / tokens as f32;
    mean.iter_mut().for_each(|m| *m *= inv);
    for (c, out) in logits.iter_mut().enumerate() {
        let mut acc = bias.at(c);
        for (d, m) in mean.iter().enumerate() {
            acc += w.at(c * dim + d) * *m;
        }
        *out = acc;
    }
}

// ----------------------------------------------------------------------------------------
// int8 path
// ----------------------------------------------------------------------------------------

/// AArch64 `SQRDMULH`: `saturate((2·a·b + 2^31) >> 32)`.
///
/// ```
/// use convmixer_edge::kernels::reference::sqrdmulh;
/// assert_eq!(sqrdmulh(1 << 20, 1 << 30), 1 << 19);
/// assert_eq!(sqrdmulh(i32::MIN, i32::MIN), i32::MAX);
/// ```
#[inline]
pub fn sqrdmulh(a: i32, b: i32) -> i32 {
    // (2ab + 2^31) >> 32 == (ab + 2^30) >> 31, and |ab| ≤ 2^62 cannot overflow.
    let p = i64::from(a) * i64::from(b) + (1i64 << 30);
    (p >> 31).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Rounding arithmetic shift right (`SRSHR`): `(v + 2^(s−1)) >> s`, round half up.
///
/// ```
/// use convmixer_edge::kernels::reference::rshr;
/// assert_eq!((rshr(5, 1), rshr(-5, 1), rshr(7, 0)), (3, -2, 7));
/// ```
#[inline]
pub fn rshr(v: i32, s: i32) -> i32 {
    if s <= 0 {
        v
    } else {
        // Every shift s ≥ 32 gives 0 (|v + 2^(s−1)| < 2^s), so capping it at 32 changes no
        // result and keeps the shifts below 64.
        let s = s.min(32);
        ((i64::from(v) + (1i64 << (s - 1))) >> s) as i32
    }
}

/// Fixed-point requantisation `rq(x, m, sh)` of the format document: saturating left
/// shift for `sh < 0`, `SQRDMULH` by `m`, rounding right shift for `sh > 0`.
///
/// ```
/// use convmixer_edge::kernels::reference::rq;
/// // m = 2^30 is 0.5; sh = 1 halves again: 100 * 0.25 = 25.
/// assert_eq!(rq(100, 1 << 30, 1), 25);
/// // sh = -2 multiplies by 4 first.
/// assert_eq!(rq(100, 1 << 30, -2), 200);
/// ```
#[inline]
pub fn rq(x: i32, m: i32, sh: i32) -> i32 {
    let x = if sh < 0 {
        // A left shift by 32 already saturates every x ≠ 0, so capping it changes no result
        // (and −i32::MIN cannot overflow).
        let left = sh.unsigned_abs().min(32);
        (i64::from(x) << left).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    } else {
        x
    };
    rshr(sqrdmulh(x, m), sh)
}

/// One output channel's requantisation record (see the format document).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requant {
    /// Multiplier from the accumulator to the activation input.
    pub m_pre: i32,
    /// Shift paired with `m_pre`.
    pub sh_pre: i32,
    /// Multiplier from the activation output (i16) to the output.
    pub m_post: i32,
    /// Offset in the post-activation product domain (the BatchNorm shift).
    pub b_post: i32,
    /// Rounding right shift of the post-activation sum.
    pub sh_post: i32,
    /// Multiplier of the residual input (depthwise layers), else 0.
    pub m_res: i32,
}

/// Per-layer parameters of one int8 conv layer.
#[derive(Clone, Copy, Debug)]
pub struct QuantLayer<'a> {
    /// Weights, i8, layout as documented.
    pub w: &'a [i8],
    /// Bias per output channel (accumulator units).
    pub bias: I32Le<'a>,
    /// Requant records: 6 i32 fields, field-major (`[field][dim]`, so that a vector
    /// kernel loads one field of consecutive channels at once).
    pub requant: I32Le<'a>,
    /// Zero point of the layer input.
    pub zp_in: i32,
    /// Zero point of the GELU table's input.
    pub zp_z: i32,
    /// Zero point of the output.
    pub zp_out: i32,
    /// GELU table of 256 i16: the 256 low bytes, then the 256 high bytes (planes that a
    /// `TBL` lookup reads directly); empty for ReLU.
    pub table: &'a [u8],
}

impl QuantLayer<'_> {
    /// Requant record of output channel `o`.
    #[inline]
    pub fn requant(&self, o: usize) -> Requant {
        let dim = self.requant.0.len() / 24;
        let r = |k| self.requant.at(k * dim + o);
        Requant {
            m_pre: r(0),
            sh_pre: r(1),
            m_post: r(2),
            b_post: r(3),
            sh_post: r(4),
            m_res: r(5),
        }
    }

    /// GELU table entry `i` (0..256): `lo[i] | hi[i] << 8` as i16 (a byte past the table,
    /// which a validated GELU layer never has, reads as 0).
    #[inline]
    pub fn gelu(&self, i: usize) -> i32 {
        let byte = |j: Option<usize>| j.and_then(|j| self.table.get(j)).copied().unwrap_or(0);
        i32::from(i16::from_le_bytes([
            byte(Some(i)),
            byte(i.checked_add(256)),
        ]))
    }
}

/// The int8 epilogue: accumulator → activation (table or ReLU) → affine (+ residual) → int8.
/// `res` is `x_res − zp_in` for depthwise layers and 0 otherwise.
///
/// ```
/// use convmixer_edge::{kernels::reference::*, le::I32Le, Activation};
/// let l = QuantLayer { w: &[], bias: I32Le(&[]), requant: I32Le(&[]), zp_in: 0, zp_z: 0, zp_out: 3, table: &[] };
/// // ReLU: a = rq(acc) = acc/2; out = zp_out + rshr(a * 4, 2) = 3 + acc/2.
/// let r = Requant { m_pre: 1 << 30, sh_pre: 0, m_post: 4, b_post: 0, sh_post: 2, m_res: 0 };
/// assert_eq!(epilogue_i8(20, 0, &r, &l, Activation::Relu), 13);
/// assert_eq!(epilogue_i8(-20, 0, &r, &l, Activation::Relu), 3);
/// ```
#[inline]
pub fn epilogue_i8(acc: i32, res: i32, r: &Requant, l: &QuantLayer<'_>, act: Activation) -> i8 {
    let pre = rq(acc, r.m_pre, r.sh_pre);
    let a = match act {
        Activation::Relu => pre.clamp(0, i32::from(i16::MAX)),
        Activation::Gelu | Activation::GeluTanh => {
            let z = l.zp_z.saturating_add(pre).clamp(-128, 127);
            l.gelu((z + 128) as usize)
        }
    };
    // |a·m_post| ≤ 2^15·2^14, |res·m_res| < 2^8·2^20 and |b_post| ≤ 2^29 (the reader's
    // bounds): the sum stays below 2^31 and the wrapping forms only keep other parameters
    // from panicking. The saturating add matches the SIMD epilogue's saturating narrows.
    let sum = a
        .wrapping_mul(r.m_post)
        .wrapping_add(res.wrapping_mul(r.m_res))
        .wrapping_add(r.b_post);
    l.zp_out
        .saturating_add(rshr(sum, r.sh_post))
        .clamp(-128, 127) as i8
}

/// int8 patch embedding on raw `u8` pixels: a GEMM over each token's patch (`[ky][kx][c]`,
/// `taps = p·p·in_c` inputs) whose int8 inputs are `pixel − 128` (the layer's zero point is
/// −128, absorbed by the stored bias), weights packed as [`super::gemm_index`] with
/// `k = taps`.
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, reference::{embed_i8, QuantLayer}, EmbedGeom};
/// use convmixer_edge::{le::I32Le, Activation};
/// // One 2×2 grey patch, one output channel with weights 1: Σ (pixel − 128) = 0 + 2 + 4 + 6.
/// let w = vec![1i8; gemm_packed_len(1, 4)];
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&[0; 4]), requant: I32Le(&rq), zp_in: -128, zp_z: 0, zp_out: 0, table: &[] };
/// let g = EmbedGeom { in_h: 2, in_w: 2, in_c: 1, patch: 2 };
/// let mut out = [0i8; 1];
/// embed_i8(&[128, 130, 132, 134], g, 1, &l, Activation::Relu, &mut out);
/// assert_eq!(out, [6]); // 12 / 2
/// ```
pub fn embed_i8(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    let (p, c, taps) = (g.patch, g.in_c, g.taps());
    let grid = embed_grid(g, px.len(), dim, out.len())
        .filter(|_| gemm_packed_len_checked(dim, taps).is_some_and(|n| l.w.len() >= n));
    let Some((ht, wt)) = grid else {
        return;
    };
    for ty in 0..ht {
        for tx in 0..wt {
            let t = ty * wt + tx;
            let Some(orow) = out.get_mut(t * dim..(t + 1) * dim) else {
                return;
            };
            for (o, y) in orow.iter_mut().enumerate() {
                let mut acc = l.bias.at(o);
                let mut tap = 0;
                for ky in 0..p {
                    let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                    for v in px.get(row..row + p * c).unwrap_or_default() {
                        let x = i32::from(*v) - 128;
                        let w = l.w.get(super::gemm_index(o, tap, taps)).copied();
                        acc = acc.wrapping_add(i32::from(w.unwrap_or(0)) * x);
                        tap += 1;
                    }
                }
                *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
            }
        }
    }
}

/// int8 depthwise 'same' conv with the residual add fused into the epilogue:
/// `acc = bias′ + Σ w·x` over the k×k window, where a padded position reads `x = zp_in`
/// (the quantised 0.0; `bias′` already holds `−zp_in·Σ w`, so padding adds exactly zero).
pub fn dw_i8(x: &[i8], g: Grid, l: &QuantLayer<'_>, act: Activation, out: &mut [i8]) {
    let d = g.dim;
    // Below this size no token index overflows; d > 0 bounds the token loops by x.len().
    if d == 0 || !g.elements().is_some_and(|n| x.len() >= n && out.len() >= n) {
        return;
    }
    for ty in 0..g.ht {
        for tx in 0..g.wt {
            let t = ty * g.wt + tx;
            let src = |y: usize, xx: usize| x.get((y * g.wt + xx) * d..(y * g.wt + xx + 1) * d);
            let range = t * d..(t + 1) * d;
            let (Some(res), Some(o)) = (x.get(range.clone()), out.get_mut(range)) else {
                return;
            };
            dw_token_i8(&src, ty, tx, res, g, l, act, o);
        }
    }
}

/// One output token `(ty, tx)` of [`dw_i8`], reading input token `(y, x)` through
/// `src(y, x)` (a `dim`-long channel vector; only called for positions inside the grid)
/// and the residual input from `res`. This is the unit the memory-planned driver
/// ([`super::inplace`]) schedules.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dw_token_i8<'x, S: Fn(usize, usize) -> Option<&'x [i8]> + ?Sized>(
    src: &S,
    ty: usize,
    tx: usize,
    res: &[i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    let (k, d) = (g.kernel, g.dim);
    // The k²·d weights must be there (so that no weight index below overflows or leaves
    // `l.w`); one output per channel of `out` and `res`.
    if k.checked_mul(k)
        .and_then(|kk| kk.checked_mul(d))
        .is_none_or(|n| l.w.len() < n)
    {
        return;
    }
    for (c, (y, r)) in out.iter_mut().zip(res).take(d).enumerate() {
        let mut acc = l.bias.at(c);
        for ky in 0..k {
            let yy = ty.wrapping_add(ky).wrapping_sub(g.pad_top);
            for kx in 0..k {
                let xx = tx.wrapping_add(kx).wrapping_sub(g.pad_left);
                let inside = (yy < g.ht && xx < g.wt).then(|| src(yy, xx)).flatten();
                let v = match inside.and_then(|row| row.get(c)) {
                    Some(v) => i32::from(*v),
                    None => l.zp_in,
                };
                // In bounds: (ky·k + kx)·d + c < k²·d ≤ l.w.len(), checked on entry (this is
                // the scalar depthwise's innermost loop, where `get` would cost a select).
                #[allow(clippy::indexing_slicing)]
                let w = l.w[(ky * k + kx) * d + c];
                acc = acc.wrapping_add(i32::from(w).wrapping_mul(v));
            }
        }
        let res = i32::from(*r).wrapping_sub(l.zp_in);
        *y = epilogue_i8(acc, res, &l.requant(c), l, act);
    }
}

/// int8 GEMM, the pointwise 1×1 conv (`k = n = dim`) and the patch embedding's core: for
/// each of `tokens` rows of `k` int8 inputs (`x`, row stride `k`), `n` outputs (`out`, row
/// stride `n`) through the epilogue; weights packed as [`super::gemm_index`].
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, reference::{gemm_i8, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n) = (3, 2);
/// let w = vec![1i8; gemm_packed_len(n, k)];
/// let bias = [0u8; 8];
/// // Field-major requant records: ReLU(acc / 2).
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let mut out = [0i8; 2];
/// gemm_i8(&[4, 4, 4], 1, k, n, &l, Activation::Relu, &mut out);
/// assert_eq!(out, [6, 6]); // (3 · 4) / 2
/// ```
pub fn gemm_i8(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    // Below these sizes every index formed here is inside its slice, without overflow;
    // n > 0 bounds the token loop by out.len() (no outputs: nothing to do).
    let fits = n > 0
        && tokens.checked_mul(k).is_some_and(|len| x.len() >= len)
        && tokens.checked_mul(n).is_some_and(|len| out.len() >= len)
        && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len);
    if !fits {
        return;
    }
    for t in 0..tokens {
        let (Some(row), Some(orow)) = (x.get(t * k..(t + 1) * k), out.get_mut(t * n..(t + 1) * n))
        else {
            return;
        };
        for (o, y) in orow.iter_mut().enumerate() {
            // Output o's weights of input group j (inputs 4j..4j + 4) are the 4 bytes at
            // gemm_index(o, 4j, k) = base + 64j: the first bytes of the 64-byte chunks of
            // w[base..] (all inside w: the packed length was checked above).
            let base = gemm_index(o, 0, k);
            let wo = l.w.get(base..).unwrap_or_default();
            let mut acc = l.bias.at(o);
            for (xg, wg) in row.chunks(PW_KR).zip(wo.chunks(PW_NR * PW_KR)) {
                for (xv, wv) in xg.iter().zip(wg) {
                    acc = acc.wrapping_add(i32::from(*wv) * i32::from(*xv));
                }
            }
            *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
        }
    }
}

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
/// logits: `logit_c = scale_c · Σ_d W_cd · m_d + bias_c`. `mean` is `dim` i32 scratch.
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
    if !fits {
        return;
    }
    mean.iter_mut().for_each(|m| *m = 0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row) {
            *m = m.wrapping_add(i32::from(*v).wrapping_sub(zp_in));
        }
    }
    for m in mean.iter_mut() {
        *m = gap_mean(*m, tokens, frac_bits);
    }
    for (c, out) in logits.iter_mut().enumerate() {
        let wc = w.get(c * dim..(c + 1) * dim).unwrap_or_default();
        // i32 arithmetic wraps (as the NEON head's lanes do), so the order is free.
        let acc = wc.iter().zip(mean.iter()).fold(0i32, |s, (a, b)| {
            s.wrapping_add(i32::from(*a).wrapping_mul(*b))
        });
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}

// ----------------------------------------------------------------------------------------
// MLP-Mixer: fixed-point LayerNorm of the int16 residual stream, and the residual add
// ----------------------------------------------------------------------------------------

/// `⌊√v⌋` of a u64, bit by bit (exact; no float).
///
/// ```
/// use convmixer_edge::kernels::reference::isqrt_u64;
/// assert_eq!((isqrt_u64(0), isqrt_u64(15), isqrt_u64(16), isqrt_u64(u64::MAX)), (0, 3, 4, u32::MAX as u64));
/// ```
pub fn isqrt_u64(v: u64) -> u64 {
    let (mut rem, mut root) = (v, 0u64);
    let mut bit = 1u64 << 62;
    while bit > v {
        bit >>= 2;
    }
    // Invariant: root < 2^32 and bit ≤ 2^62, so root + bit cannot overflow.
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// The parameters of one fixed-point LayerNorm (a LAYER_NORM section, see
/// `docs/blob-format.md`): `y_c = zp_out + rshr(z_c · mul_c + offset_c, shift)` with
/// `z_c = round(2^16 · (x_c − mean) / √(var + eps))` in residual units.
///
/// ```
/// use convmixer_edge::kernels::reference::LayerNormI16;
/// let mut s = vec![0u8; 16 + 12];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes()); // shift 16
/// let p = LayerNormI16::from_section(&s, 1);
/// assert_eq!((p.eps, p.shift, p.zp_out), (0, 16, 0));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct LayerNormI16<'a> {
    /// `eps · dim² / s_x²`, the variance floor in the units of `dim² · var`.
    pub eps: u64,
    /// Rounding right shift of the affine result.
    pub shift: i32,
    /// Zero point of the int8 output.
    pub zp_out: i32,
    /// `dim` i32 multipliers (the LayerNorm's γ over the output scale, `2^(shift−16)` units).
    pub mul: I32Le<'a>,
    /// `dim` little-endian i64 offsets (β over the output scale, `2^shift` units).
    pub offset: &'a [u8],
}

impl<'a> LayerNormI16<'a> {
    /// Reads a LAYER_NORM section of a `dim`-channel model (a missing `eps`, shift or zero
    /// point reads as zero; with fewer than `dim` multipliers or offsets the LayerNorm
    /// writes nothing).
    pub fn from_section(s: &'a [u8], dim: usize) -> Self {
        let word = |i: usize| I32Le(s).at(i);
        let eps = s.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
        let mul_end = dim.saturating_mul(4).saturating_add(16);
        LayerNormI16 {
            eps,
            shift: word(2),
            zp_out: word(3),
            mul: I32Le(s.get(16..mul_end).unwrap_or_default()),
            offset: s.get(mul_end..).unwrap_or_default(),
        }
    }
}

/// LayerNorm of one token's `dim` residual values `x` into `out` (int8, `out[c]` at
/// `c · stride`, so that the token MLP's transposed input is written directly).
///
/// Exact integer arithmetic: `S1 = Σx`, `S2 = Σx²`, `V = dim·S2 − S1² + eps`,
/// `r = ⌊√V⌋`, `inv = ⌊2^62 / r⌋` (0 where `r = 0`), and per channel
/// `z = (d · inv + 2^45) >> 46` with `d = dim·x_c − S1` (in i128), clamped to ±2^30,
/// then `zp_out + rshr(z · mul_c + offset_c, shift)` clamped to int8.
///
/// ```
/// use convmixer_edge::kernels::reference::{layer_norm_token_i16, LayerNormI16};
/// // dim 2, mul = 1 with shift 16 (z / 2^16 = the normalised value), no offset.
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 2];
/// layer_norm_token_i16(&[100, 300], 2, &p, &mut out, 1);
/// assert_eq!(out, [-1, 1]); // (x − mean) / std
/// ```
pub fn layer_norm_token_i16(
    x: &[i16],
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    stride: usize,
) {
    if let Some(t) = LnToken::new(x, dim, p) {
        t.scalar_from(0, out, stride.max(1));
    }
}

/// One token's LayerNorm terms, shared by [`layer_norm_token_i16`] and its NEON variant:
/// the row, `dim`, `S1`, `inv` and the affine's parameters.
#[derive(Clone, Copy)]
pub(crate) struct LnToken<'a> {
    pub(crate) row: &'a [i16],
    pub(crate) n: i64,
    pub(crate) s1: i64,
    pub(crate) inv: i64,
    pub(crate) muls: &'a [u8],
    pub(crate) offsets: &'a [u8],
    pub(crate) shift: i32,
    pub(crate) half: i64,
    pub(crate) zp: i64,
}

impl<'a> LnToken<'a> {
    /// The terms of the token `x[..dim]`; `None` (nothing to write) where `x` or the
    /// parameters are shorter than `dim` or `dim > 2^16`.
    pub(crate) fn new(x: &'a [i16], dim: usize, p: &LayerNormI16<'a>) -> Option<Self> {
        // dim ≤ 2^16 keeps every sum below in range (|x| ≤ 2^15): |S1| ≤ 2^31, S2 ≤ 2^46,
        // dim·S2 ≤ 2^62, |d| ≤ 2^32.
        let row = x.get(..dim).filter(|_| dim <= 1 << 16)?;
        let (muls, offsets) = (p.mul.0.get(..4 * dim)?, p.offset.get(..8 * dim)?);
        let (s1, s2) = row.iter().fold((0i64, 0i64), |(a, b), &v| {
            let v = i64::from(v);
            (a + v, b + v * v)
        });
        let n = dim as i64;
        // Cauchy–Schwarz: dim·S2 ≥ S1²; both are below 2^63.
        let var = (n * s2 - s1 * s1).max(0) as u64;
        let r = isqrt_u64(var.saturating_add(p.eps));
        // inv ≤ 2^62 fits i64, so d·inv is a 64×64 → 128-bit product (`MUL` + `SMULH`).
        let inv = (1u64 << 62).checked_div(r).unwrap_or(0) as i64;
        let shift = p.shift.clamp(0, 62);
        Some(LnToken {
            row,
            n,
            s1,
            inv,
            muls,
            offsets,
            shift,
            half: if shift > 0 { 1i64 << (shift - 1) } else { 0 },
            zp: i64::from(p.zp_out),
        })
    }

    /// Channels `c0..dim` into `out[c · step]` (where it is long enough).
    #[inline]
    pub(crate) fn scalar_from(&self, c0: usize, out: &mut [i8], step: usize) {
        let params = self
            .muls
            .chunks_exact(4)
            .zip(self.offsets.chunks_exact(8))
            .skip(c0);
        for ((c, &v), (m, off)) in self.row.iter().enumerate().skip(c0).zip(params) {
            let m = m
                .first_chunk::<4>()
                .map_or(0, |b| i64::from(i32::from_le_bytes(*b)));
            let off = off.first_chunk::<8>().map_or(0, |b| i64::from_le_bytes(*b));
            let d = self.n * i64::from(v) - self.s1;
            // |d·inv| < 2^33·2^62, so the shifted product is below 2^49: exact in i64.
            let z = ((i128::from(d) * i128::from(self.inv) + (1i128 << 45)) >> 46) as i64;
            let z = z.clamp(-(1i64 << 30), 1i64 << 30);
            // |z·mul| ≤ 2^61 and |offset| ≤ 2^55 (the reader's bound): nothing below
            // overflows (the wrapping forms only keep other parameters from panicking).
            let y = z.wrapping_mul(m).wrapping_add(off).wrapping_add(self.half) >> self.shift;
            if let Some(o) = out.get_mut(c * step) {
                *o = y.wrapping_add(self.zp).clamp(-128, 127) as i8;
            }
        }
    }
}

/// LayerNorm of all `tokens` rows of the residual stream `x` (`tokens · dim` i16,
/// token-major) into `out` (`tokens · dim` int8): token-major, or channel-major where
/// `transposed` (`out[c · tokens + t]`, the token MLP's input). Nothing is written where a
/// slice is shorter than that.
///
/// ```
/// use convmixer_edge::kernels::reference::{layer_norm_i16, LayerNormI16};
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 4];
/// layer_norm_i16(&[100, 300, 5, -5], 2, 2, &p, &mut out, true);
/// assert_eq!(out, [-1, 1, 1, -1]); // channel 0 of both tokens, then channel 1
/// ```
pub fn layer_norm_i16(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    transposed: bool,
) {
    layer_norm_rows(x, tokens, dim, p, out, transposed, layer_norm_token_i16);
}

/// [`layer_norm_i16`] with `token` for each token (the reference's, or a SIMD variant).
pub(crate) fn layer_norm_rows(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    transposed: bool,
    token: impl Fn(&[i16], usize, &LayerNormI16<'_>, &mut [i8], usize),
) {
    let fits = dim > 0
        && tokens
            .checked_mul(dim)
            .is_some_and(|n| x.len() >= n && out.len() >= n);
    if !fits {
        return;
    }
    for (t, row) in x.chunks_exact(dim).take(tokens).enumerate() {
        let (o, stride) = if transposed {
            (out.get_mut(t..).unwrap_or_default(), tokens)
        } else {
            (out.get_mut(t * dim..).unwrap_or_default(), 1)
        };
        token(row, dim, p, o, stride);
    }
}

/// Adds one int8 GEMM output `q` (zero point `zp`) into residual value `x`:
/// `sat16(x + rshr((q − zp) · m, sh))`, the RES_ADD of `docs/blob-format.md`.
///
/// ```
/// use convmixer_edge::kernels::reference::res_add_i16;
/// assert_eq!(res_add_i16(1000, 10, 2, 3 << 4, 4), 1000 + 24);
/// assert_eq!(res_add_i16(32767, 127, -128, 1 << 22, 0), 32767);
/// ```
#[inline]
pub fn res_add_i16(x: i16, q: i8, zp: i32, m: i32, sh: i32) -> i16 {
    // |q − zp| ≤ 255 and 0 ≤ m ≤ 2^22 (the reader's bounds): the product is below 2^30;
    // wrapping only keeps other arguments from panicking.
    let d = rshr(i32::from(q).wrapping_sub(zp).wrapping_mul(m), sh);
    i32::from(x)
        .saturating_add(d)
        .clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `erf_f32` and `gelu_f32` against libm's f64 `erf`, every 2⁻¹² on [−8, 8] plus both
    /// clamps and the saturated tails.
    #[test]
    fn erf_and_gelu_are_accurate() {
        let (mut we, mut wg) = (0f64, 0f64);
        for i in -(8 << 12)..=(8 << 12) {
            let x = i as f32 / 4096.0;
            we = we.max((f64::from(erf_f32(x)) - libm::erf(f64::from(x))).abs());
            let exact = 0.5 * f64::from(x) * (1.0 + libm::erf(f64::from(x) / 2f64.sqrt()));
            let e = (f64::from(gelu_f32(x)) - exact).abs() / exact.abs().max(1.0);
            wg = wg.max(e);
        }
        assert!(we <= 3.0e-7, "erf max abs error {we}");
        assert!(wg <= 7.5e-7, "gelu max error {wg}");
        assert_eq!((erf_f32(ERF_ZMAX), erf_f32(-100.0)), (1.0, -1.0));
        assert_eq!(erf_f32(f32::NAN).abs(), 1.0);
        assert_eq!(gelu_f32(-20.0), -0.0);
        assert_eq!(gelu_f32(20.0), 20.0);
    }
}
