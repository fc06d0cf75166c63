//! The float arithmetic every float op shares, in plain scalar Rust: the activations
//! ([`act_f32`], the rational [`erf_f32`] and [`gelu_f32`]), binary16's fused multiply-add
//! ([`fma_f16`]), the two arithmetics ([`F32Arith`], [`F16Arith`]), one layer's
//! parameters ([`FloatLayer`]) and its epilogue ([`finish_f32`]). The SIMD kernels evaluate
//! them to the same bits (they fix the summation order, fuse every multiply-add and say
//! where values are rounded).
#![forbid(unsafe_code)]

use crate::le::{F32Le, FloatWeights};
use crate::Activation;

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
    type Act: Copy + Default + bytemuck::Pod + Send + Sync;
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
    pub(crate) fn finish(&self, o: usize, act: Activation, acc: f32) -> f32 {
        finish_f32(
            self.scale.at(o),
            self.shift.at(o),
            act,
            acc * self.unscale.at(o),
        )
    }
}
