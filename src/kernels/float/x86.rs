//! What the x86_64 AVX2 float kernels (`pw_f`, `dw_f`, `embed_f`) share: a layer's
//! parameters as raw pointers ([`Params`], checked once per call), f16 weights widened by
//! F16C (`VCVTPH2PS`) and f32 outputs narrowed by it (`VCVTPS2PH`, nearest-even), the
//! 8-lane GELU ([`gelu8`], the reference's `gelu_f32` operation for operation) and the
//! epilogue `fma(scale, act(unscale·acc), shift)` for 8 channels ([`finish8`]) or, for the
//! channels of a partial block, one at a time ([`finish1`]).
//!
//! x86 has no binary16 arithmetic, so these kernels compute in f32 only (`F32Arith`: f32
//! blobs, and f16 blobs with f16 weights widened exactly); `F16Arith` runs the reference.
//! Every kernel accumulates each output in the reference's order with one rounding per step
//! (`VFMADD231PS`, vectorised across output channels), and the epilogue is the reference's
//! `fma(scale, act(acc), shift)` (+ residual) in f32, then the same narrowing. ReLU is
//! `MAXPS(x, +0)`, which returns its second operand unless `x > 0`: exactly the reference's
//! `x > 0 ? x : +0` (NaN and −0 give +0). GELU is the reference's rational `erf_f32` on 8
//! lanes with the same operations; its clamps are IEEE maxNum/minNum (`f32::max`/`min`:
//! NaN loses), which `MAXPS`/`MINPS` are not in general (they return the second operand
//! whenever either is NaN), but with the value first and a non-NaN constant second they
//! give maxNum/minNum's result on every input: a NaN value yields the constant, as maxNum
//! does (and no clamp here sees two zeros). Only the tanh form of GELU calls the scalar
//! `act_f32` per lane. `VCVTPH2PS` widens every f16 exactly; `VCVTPS2PH` with an immediate
//! rounding of nearest-even is the reference's `half::f16::from_f32` on every f32 (both
//! give a quiet NaN for a NaN, which the suites treat alike).
//!
//! Safety: [`Params::new`] checks the parameter sections and the CPU's AVX2, FMA and F16C
//! (and only it builds a `Params`); the `unsafe fn`s below state in `# Safety` what they
//! rely on (always: the CPU has AVX2, FMA and F16C, which their callers, `#[target_feature]`
//! kernels reached only through a `Params`, guarantee), and each `unsafe` block says which
//! check bounds its pointer accesses. These helpers have no `#[target_feature]` of their own
//! (so that they can be `#[inline(always)]`): they are inlined into the AVX2 kernels.

use core::arch::x86_64::*;

use super::reference::{act_f32, FloatLayer, ERF_P, ERF_Q, ERF_ZMAX};
use crate::kernels::Isa;
use crate::le::FloatWeights;
use crate::Activation;

/// Raw parameters of one float layer of `dim` channels: pointers into its sections. Built
/// only by [`Params::new`] (its private fields keep any other module from building one), so
/// that `w` always heads the weight elements the layer's kernel reads, the four channel
/// vectors hold `dim` f32 each (at any alignment), and the CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    /// Weights: f32 or f16 elements (the kernels' `HALF`, which is the layer's `W::HALF`).
    w: *const u8,
    bias: *const f32,
    scale: *const f32,
    shift: *const f32,
    unscale: *const f32,
    dim: usize,
}

impl Params {
    /// The AVX2 kernels' view of `l`, a layer of `dim` channels whose kernel reads `w_elems`
    /// weights, on `isa`; `None` where the kernels cannot run it: an ISA other than
    /// [`Isa::Avx2`] or [`Isa::Avx512Vnni`] or a CPU without AVX2, no channels, or a section shorter than `w_elems`
    /// weights or `dim` channels.
    pub(crate) fn new<W: FloatWeights>(
        isa: Isa,
        dim: usize,
        l: &FloatLayer<'_, W>,
        w_elems: Option<usize>,
    ) -> Option<Params> {
        let wsz = if W::HALF { 2 } else { 4 };
        let ok = matches!(isa, Isa::Avx2 | Isa::Avx512Vnni)
            && Isa::Avx2.available()
            && dim > 0
            && w_elems
                .and_then(|e| e.checked_mul(wsz))
                .is_some_and(|b| l.w.bytes().len() >= b)
            && dim.checked_mul(4).is_some_and(|b| {
                [l.bias, l.scale, l.shift, l.unscale]
                    .iter()
                    .all(|v| v.0.len() >= b)
            });
        ok.then(|| Params {
            w: l.w.bytes().as_ptr(),
            bias: l.bias.0.as_ptr().cast(),
            scale: l.scale.0.as_ptr().cast(),
            shift: l.shift.0.as_ptr().cast(),
            unscale: l.unscale.0.as_ptr().cast(),
            dim,
        })
    }

    /// The channel count the parameters hold.
    #[inline(always)]
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// The weights' first byte.
    #[inline(always)]
    pub(crate) fn w(&self) -> *const u8 {
        self.w
    }

    /// The biases of channels `o..o + 8`: the f32 accumulators' start (`F32Arith::init` is
    /// the identity).
    ///
    /// # Safety
    /// The CPU has AVX2 (a `Params` exists: it does), and `o + 8 ≤ dim`.
    #[inline(always)]
    pub(crate) unsafe fn bias8(&self, o: usize) -> __m256 {
        // SAFETY: channels o..o + 8 ≤ dim of the dim-long bias (Params' invariant).
        unsafe { _mm256_loadu_ps(self.bias.add(o)) }
    }

    /// The bias of channel `o`, or 0 for `o ≥ dim` (a partial block's padding lanes).
    #[inline(always)]
    pub(crate) fn bias1(&self, o: usize) -> f32 {
        if o < self.dim {
            // SAFETY: o < dim of the dim-long bias (Params' invariant), read unaligned.
            unsafe { self.bias.add(o).read_unaligned() }
        } else {
            0.0
        }
    }
}

/// 8 consecutive weights from element `e` on, as f32 (f16 widened by `VCVTPH2PS`, exact).
///
/// # Safety
/// The CPU has AVX2 and F16C; elements `e..e + 8` of `w` (f16 if `HALF`, else f32) are
/// readable.
#[inline(always)]
pub(crate) unsafe fn load_w8<const HALF: bool>(w: *const u8, e: usize) -> __m256 {
    // SAFETY: the caller's 8 elements from e: 16 or 32 bytes from w + e·size.
    unsafe {
        if HALF {
            _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * e).cast()))
        } else {
            _mm256_loadu_ps(w.add(4 * e).cast())
        }
    }
}

/// Stores 8 f32 at `out`, as f32 or narrowed to f16 (`OUT_HALF`: `VCVTPS2PH`,
/// nearest-even).
///
/// # Safety
/// The CPU has AVX2 and F16C; `out` points at 8 writable elements (f16 if `OUT_HALF`, else
/// f32).
#[inline(always)]
pub(crate) unsafe fn store8<const OUT_HALF: bool>(out: *mut u8, v: __m256) {
    // SAFETY: the caller's 8 elements at out (16 or 32 bytes).
    unsafe {
        if OUT_HALF {
            _mm_storeu_si128(out.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v));
        } else {
            _mm256_storeu_ps(out.cast(), v);
        }
    }
}

/// Stores one f32 at `out`, as f32 or narrowed to f16 (`OUT_HALF`: the reference's
/// `F16Arith::narrow`).
///
/// # Safety
/// `out` points at one writable element (f16 if `OUT_HALF`, else f32), at any alignment.
#[inline(always)]
pub(crate) unsafe fn store1<const OUT_HALF: bool>(out: *mut u8, v: f32) {
    // SAFETY: the caller's element at out (2 or 4 bytes), written unaligned.
    unsafe {
        if OUT_HALF {
            out.cast::<u16>()
                .write_unaligned(half::f16::from_f32(v).to_bits());
        } else {
            out.cast::<f32>().write_unaligned(v);
        }
    }
}

/// The reference's `gelu_f32` on 8 lanes, operation for operation (see the module docs for
/// the clamps).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub(crate) unsafe fn gelu8(x: __m256) -> __m256 {
    // SAFETY: register-only AVX/FMA arithmetic (the caller's features).
    unsafe {
        let c = |v: f32| _mm256_set1_ps(v);
        let z = _mm256_mul_ps(x, c(core::f32::consts::FRAC_1_SQRT_2));
        // Value first, constant second: a NaN z gives the constant, as maxNum/minNum do.
        let z = _mm256_min_ps(_mm256_max_ps(z, c(-ERF_ZMAX)), c(ERF_ZMAX));
        let t = _mm256_mul_ps(z, z);
        let [p0, p1, p2, p3, p4, p5, p6] = ERF_P;
        let mut p = c(p6);
        for ci in [p5, p4, p3, p2, p1, p0] {
            p = _mm256_fmadd_ps(p, t, c(ci));
        }
        let [q0, q1, q2, q3, q4, q5] = ERF_Q;
        let mut q = c(q5);
        for ci in [q4, q3, q2, q1, q0] {
            q = _mm256_fmadd_ps(q, t, c(ci));
        }
        let r = _mm256_div_ps(_mm256_mul_ps(z, p), q);
        let r = _mm256_min_ps(_mm256_max_ps(r, c(-1.0)), c(1.0));
        _mm256_mul_ps(_mm256_mul_ps(c(0.5), x), _mm256_add_ps(c(1.0), r))
    }
}

/// The activation on 8 lanes: ReLU `MAXPS(x, +0)`, GELU [`gelu8`], tanh-GELU the scalar
/// `act_f32` per lane.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline(always)]
pub(crate) unsafe fn act8(act: Activation, x: __m256) -> __m256 {
    // SAFETY: register-only AVX/FMA arithmetic (the caller's features); the tanh path
    // stores to and loads from a local [f32; 8].
    unsafe {
        match act {
            Activation::Relu => _mm256_max_ps(x, _mm256_setzero_ps()),
            Activation::Gelu => gelu8(x),
            Activation::GeluTanh => {
                let mut v = [0f32; 8];
                _mm256_storeu_ps(v.as_mut_ptr(), x);
                for e in &mut v {
                    *e = act_f32(act, *e);
                }
                _mm256_loadu_ps(v.as_ptr())
            }
        }
    }
}

/// The reference's `fma(scale, act(unscale·acc), shift)` for 8 channels from `o` on.
///
/// # Safety
/// The CPU has AVX2 and FMA, and `o + 8 ≤ dim`, the channel count `p` was built for.
#[inline(always)]
pub(crate) unsafe fn finish8(p: &Params, o: usize, act: Activation, acc: __m256) -> __m256 {
    // SAFETY: channels o..o + 8 ≤ dim of the dim-long unscale, scale and shift vectors
    // (Params' invariant); the features are the caller's.
    unsafe {
        let a = act8(act, _mm256_mul_ps(acc, _mm256_loadu_ps(p.unscale.add(o))));
        _mm256_fmadd_ps(
            _mm256_loadu_ps(p.scale.add(o)),
            a,
            _mm256_loadu_ps(p.shift.add(o)),
        )
    }
}

/// [`finish8`] for one channel `o` (a partial block's): the reference's `finish_f32`.
///
/// # Safety
/// `o < dim`, the channel count `p` was built for.
#[inline(always)]
pub(crate) unsafe fn finish1(p: &Params, o: usize, act: Activation, acc: f32) -> f32 {
    // SAFETY: channel o < dim of the dim-long vectors (Params' invariant), read unaligned.
    let (unscale, scale, shift) = unsafe {
        (
            p.unscale.add(o).read_unaligned(),
            p.scale.add(o).read_unaligned(),
            p.shift.add(o).read_unaligned(),
        )
    };
    super::reference::finish_f32(scale, shift, act, acc * unscale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8-lane GELU and ReLU give the reference's bits on a dense grid over both clamps,
    /// and on infinities, zeros, subnormals and NaN (both NaN).
    #[test]
    fn act8_matches_reference() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut xs: std::vec::Vec<f32> = (-(12 << 10)..=(12 << 10))
            .map(|i| i as f32 / 1024.0)
            .collect();
        // Both clamps of erf's argument (±4 after the 1/√2 product) and of its result, to
        // the last bits around them.
        for edge in [4.0 * core::f32::consts::SQRT_2, 4.0, 1.0] {
            for s in [1.0f32, -1.0] {
                let b = (s * edge).to_bits();
                xs.extend((0..64).map(|d| f32::from_bits(b - 32 + d)));
            }
        }
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            1e-30,
            -1e-30,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::MIN_POSITIVE,
            3e38,
            -3e38,
        ]);
        xs.extend((0..40_000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
        for act in [Activation::Relu, Activation::Gelu, Activation::GeluTanh] {
            for c in xs.chunks(8) {
                let mut v = [0f32; 8];
                v[..c.len()].copy_from_slice(c);
                let mut out = [0f32; 8];
                // SAFETY: AVX2 and FMA were detected above; the arrays hold 8 lanes.
                unsafe {
                    _mm256_storeu_ps(out.as_mut_ptr(), act8(act, _mm256_loadu_ps(v.as_ptr())))
                };
                for (x, y) in v.iter().zip(out) {
                    let r = act_f32(act, *x);
                    assert!(
                        r.to_bits() == y.to_bits() || (r.is_nan() && y.is_nan()),
                        "{act:?}({x}): {y} vs {r}"
                    );
                }
            }
        }
    }

    /// `VCVTPS2PH` (nearest-even) is the reference's narrowing on every kind of f32, and
    /// `VCVTPH2PS` its widening of every f16.
    #[test]
    fn f16c_conversions_match_half() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut s = 0x0123_4567_89ab_cdefu64;
        let mut xs: std::vec::Vec<f32> = (0..200_000)
            .map(|_| f32::from_bits(crate::kernels::float::tests::rng(&mut s) as u32))
            .collect();
        // Around f16's overflow, subnormal and rounding boundaries.
        for b in [
            65504f32,
            65520.0,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            1.0 + 1.0 / 2048.0,
        ] {
            xs.extend((0..64).map(|d| f32::from_bits(b.to_bits() - 32 + d)));
            xs.extend((0..64).map(|d| -f32::from_bits(b.to_bits() - 32 + d)));
        }
        for c in xs.chunks(8) {
            let mut v = [0f32; 8];
            v[..c.len()].copy_from_slice(c);
            let mut out = [0u16; 8];
            // SAFETY: AVX2 and F16C were detected above; 8 f32 in, 8 f16 out.
            unsafe { store8::<true>(out.as_mut_ptr().cast(), _mm256_loadu_ps(v.as_ptr())) };
            for (x, y) in v.iter().zip(out) {
                let r = half::f16::from_f32(*x);
                assert!(
                    r.to_bits() == y || (r.is_nan() && half::f16::from_bits(y).is_nan()),
                    "narrow({x}): {y:#x} vs {:#x}",
                    r.to_bits()
                );
            }
        }
        let all: std::vec::Vec<u16> = (0..=u16::MAX).collect();
        for c in all.chunks(8) {
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and F16C were detected above; 8 f16 in, 8 f32 out.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), load_w8::<true>(c.as_ptr().cast(), 0)) };
            for (h, y) in c.iter().zip(out) {
                let r = half::f16::from_bits(*h).to_f32();
                assert!(r.to_bits() == y.to_bits() || (r.is_nan() && y.is_nan()));
            }
        }
    }
}
