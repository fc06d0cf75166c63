//! What the AArch64 NEON float kernels (`pw_f`, `dw_f`, `embed_f`) share: a layer's
//! parameters as raw pointers ([`Params`], checked once per call), the activations as the
//! kernels' element type ([`Acts`]), f16 ⇄ f32 conversion, binary16 `FMLA` (`asm!`,
//! FEAT_FP16 arithmetic is not in `core::arch` on stable Rust), the 4-lane GELU ([`gelu4`],
//! the reference's `gelu_f32` operation for operation) and the epilogue `fma(scale,
//! act(unscale·acc), shift)` for 4 or 16 channels.
//!
//! Every kernel accumulates each output in the reference's order with one rounding per step
//! (fused multiply-add by element over 16 output lanes), and the epilogue is the
//! reference's `fma(scale, act(acc), shift)` (+ residual) in f32, then the same narrowing.
//! ReLU is `FMAXNM(x, +0)`, which is exactly the reference's `x > 0 ? x : +0`; GELU is the
//! reference's rational `erf_f32` evaluated on 4 lanes with the same operations; only the
//! tanh form of GELU calls the scalar `act_f32` per lane.
//!
//! Safety: [`Params::new`] checks the parameter sections (and only it builds a `Params`);
//! the `unsafe fn`s below state in `# Safety` what they rely on, and each `unsafe` block
//! says which check bounds its pointer accesses. NEON itself is a compile-time target
//! feature (this module exists only then); FEAT_FP16, which the f16 arithmetic kernels
//! need, is checked at run time ([`fp16_available`](crate::kernels::fp16_available)).
//!
//! (No `preserves_flags` on the asm: FMLA and FCVT set FPSR's cumulative exception bits.)

use core::arch::aarch64::*;
use core::arch::asm;

use super::reference::{act_f32, FloatArith, FloatLayer};
use crate::kernels::Isa;
use crate::le::FloatWeights;
use crate::Activation;

/// Raw parameters of one float layer of `dim` channels: pointers into its sections. Built
/// only by [`Params::new`] (its private field keeps any other module from building one), so
/// that `w` always heads the weight elements the layer's kernel reads and the four channel
/// vectors hold `dim` f32 each.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    /// Weights: f32 or f16 elements (the kernels' `HALF`, which is the layer's `W::HALF`).
    pub(crate) w: *const u8,
    pub(crate) bias: *const f32,
    pub(crate) scale: *const f32,
    pub(crate) shift: *const f32,
    pub(crate) unscale: *const f32,
    gelu: GeluConsts,
}

impl Params {
    /// The NEON kernels' view of `l`, a layer of `dim` channels whose kernel reads `w_elems`
    /// weights, in arithmetic `M` (`half_math`: the layer computes in `M`, else always in
    /// f32) on `isa`; `None` where the kernels cannot run it: the scalar ISA, `dim` not a
    /// positive multiple of 16, f16 arithmetic without f16 weights or without FEAT_FP16, or
    /// a section shorter than `w_elems` weights or `dim` channels.
    pub(crate) fn new<W: FloatWeights, M: FloatArith>(
        isa: Isa,
        dim: usize,
        l: &FloatLayer<'_, W>,
        w_elems: Option<usize>,
        half_math: bool,
    ) -> Option<Params> {
        let wsz = if W::HALF { 2 } else { 4 };
        let ok = isa != Isa::Scalar
            && dim > 0
            && dim.is_multiple_of(16)
            && (!(half_math && M::HALF) || (W::HALF && crate::kernels::fp16_available()))
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
            gelu: GeluConsts::load(),
        })
    }
}

/// A layer's input and output activations as the kernels' element type.
pub(crate) enum Acts<'x> {
    /// f16 bits (`F16Arith`).
    Half(&'x [u16], &'x mut [u16]),
    /// f32 (`F32Arith`).
    Single(&'x [f32], &'x mut [f32]),
}

impl<'x> Acts<'x> {
    /// `x` and `out` as `u16` where `M::HALF`, else as `f32`: the sealed `FloatArith` pairs
    /// `HALF` with `Act = u16`, else `f32`, so the casts are identities (anything else gives
    /// `None`). Callers check lengths on the cast slices, so even a mismatch could not make
    /// a kernel read past them.
    pub(crate) fn of<M: FloatArith>(x: &'x [M::Act], out: &'x mut [M::Act]) -> Option<Self> {
        Some(if M::HALF {
            Acts::Half(
                bytemuck::try_cast_slice(x).ok()?,
                bytemuck::try_cast_slice_mut(out).ok()?,
            )
        } else {
            Acts::Single(
                bytemuck::try_cast_slice(x).ok()?,
                bytemuck::try_cast_slice_mut(out).ok()?,
            )
        })
    }

    /// Whether both hold at least `n` elements.
    pub(crate) fn hold(&self, n: usize) -> bool {
        match self {
            Acts::Half(x, o) => x.len() >= n && o.len() >= n,
            Acts::Single(x, o) => x.len() >= n && o.len() >= n,
        }
    }
}

/// `[f(0), f(1), …]` for a const length, without `core::array::from_fn`'s closure call
/// (which LLVM does not always inline into these kernels).
macro_rules! arr {
    ($n:expr, |$i:ident| $e:expr) => {{
        // SAFETY: every element type this builds (NEON vectors, raw pointers) is valid
        // all-zero; each element is overwritten below. (Its uses sit inside `unsafe` blocks
        // of their own, which would make this one redundant.)
        #[allow(unused_unsafe)]
        let mut a = [unsafe { core::mem::zeroed() }; $n];
        for ($i, v) in a.iter_mut().enumerate() {
            *v = $e;
        }
        a
    }};
}

pub(crate) use arr;

/// `FCVTL`: the low 4 f16 lanes as f32.
#[inline(always)]
pub(crate) fn widen_lo(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: register-only instruction (pure, nomem) of the base FP/NEON ISA.
    unsafe {
        asm!("fcvtl {r:v}.4s, {h:v}.4h", r = lateout(vreg) r, h = in(vreg) h,
            options(pure, nomem, nostack))
    };
    r
}

/// `FCVTL2`: the high 4 f16 lanes as f32.
#[inline(always)]
pub(crate) fn widen_hi(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    // SAFETY: register-only instruction (pure, nomem) of the base FP/NEON ISA.
    unsafe {
        asm!("fcvtl2 {r:v}.4s, {h:v}.8h", r = lateout(vreg) r, h = in(vreg) h,
            options(pure, nomem, nostack))
    };
    r
}

/// `FCVTN`/`FCVTN2`: 8 f32 to f16 (nearest, ties to even).
#[inline(always)]
pub(crate) fn narrow(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
    let r: uint16x8_t;
    // SAFETY: register-only instructions (pure, nomem) of the base FP/NEON ISA.
    unsafe {
        asm!("fcvtn {r:v}.4h, {lo:v}.4s", "fcvtn2 {r:v}.8h, {hi:v}.4s", r = out(vreg) r,
            lo = in(vreg) lo, hi = in(vreg) hi, options(pure, nomem, nostack))
    };
    r
}

/// `FMLA acc.8h, w.8h, x.h[L]` (FEAT_FP16; only inside `unsafe` blocks of `fp16`
/// functions, whose callers guarantee the feature).
macro_rules! fmla_h_lane {
    ($acc:expr, $w:expr, $x:expr, $l:literal) => {
        asm!(concat!("fmla {a:v}.8h, {w:v}.8h, {x:v}.h[", $l, "]"), a = inout(vreg) $acc,
            w = in(vreg) $w, x = in(vreg_low16) $x, options(pure, nomem, nostack))
    };
}

pub(crate) use fmla_h_lane;

/// `FMLA acc.8h, w.8h, x.8h` (FEAT_FP16; only inside `unsafe` blocks of `fp16` functions,
/// whose callers guarantee the feature).
macro_rules! fmla_h {
    ($acc:expr, $w:expr, $x:expr) => {
        asm!("fmla {a:v}.8h, {w:v}.8h, {x:v}.8h", a = inout(vreg) $acc, w = in(vreg) $w,
            x = in(vreg) $x, options(pure, nomem, nostack))
    };
}

pub(crate) use fmla_h;

/// 16 consecutive weights from element `e` on, as f32.
///
/// # Safety
/// Elements `e..e + 16` of `w` (f16 if `HALF`, else f32) are readable.
#[inline(always)]
pub(crate) unsafe fn load_w16<const HALF: bool>(w: *const u8, e: usize) -> [float32x4_t; 4] {
    // SAFETY: the caller's 16 elements from e: 2·16 or 4·16 bytes from w + e·size.
    unsafe {
        if HALF {
            let p = w.add(2 * e).cast::<u16>();
            let (a, b) = (vld1q_u16(p), vld1q_u16(p.add(8)));
            [widen_lo(a), widen_hi(a), widen_lo(b), widen_hi(b)]
        } else {
            let p = w.add(4 * e).cast::<f32>();
            [
                vld1q_f32(p),
                vld1q_f32(p.add(4)),
                vld1q_f32(p.add(8)),
                vld1q_f32(p.add(12)),
            ]
        }
    }
}

/// GELU's constants, broadcast: `[1/√2, −zmax, zmax, −1, 1, 0.5, P0..P6, Q1..Q5]`.
#[derive(Clone, Copy)]
struct GeluConsts([float32x4_t; 18]);

impl GeluConsts {
    /// Loads the constants once per layer. The scalars are read volatile so that LLVM
    /// keeps them as data (one load each where registers run out) instead of
    /// re-materialising every one with `MOV`/`MOVK`/`DUP` inside the epilogue.
    fn load() -> Self {
        use super::reference::{ERF_P, ERF_Q, ERF_ZMAX};
        let [p0, p1, p2, p3, p4, p5, p6] = ERF_P;
        let [_, q1, q2, q3, q4, q5] = ERF_Q;
        let v = [
            core::f32::consts::FRAC_1_SQRT_2,
            -ERF_ZMAX,
            ERF_ZMAX,
            -1.0,
            1.0,
            0.5,
            p0,
            p1,
            p2,
            p3,
            p4,
            p5,
            p6,
            q1,
            q2,
            q3,
            q4,
            q5,
        ];
        // SAFETY: volatile reads of initialised, aligned locals; DUP is register-only.
        GeluConsts(
            v.each_ref()
                .map(|x| unsafe { vdupq_n_f32(core::ptr::read_volatile(x)) }),
        )
    }
}

/// The reference's `gelu_f32` on 4 lanes, operation for operation.
#[inline(always)]
fn gelu4(x: float32x4_t, k: &GeluConsts) -> float32x4_t {
    let c = &k.0;
    // SAFETY: register-only NEON arithmetic (NEON is a compile-time feature here).
    unsafe {
        let z = vmulq_f32(x, c[0]);
        let z = vminnmq_f32(vmaxnmq_f32(z, c[1]), c[2]);
        let t = vmulq_f32(z, z);
        // Horner from the top coefficient down: P6 (c[12]) .. P0 (c[6]), Q5 (c[17]) .. Q1
        // (c[13]), then Q0 = 1.
        let mut p = c[12];
        for &ci in c[6..12].iter().rev() {
            p = vfmaq_f32(ci, p, t);
        }
        let mut q = c[17];
        for &ci in c[13..17].iter().rev() {
            q = vfmaq_f32(ci, q, t);
        }
        q = vfmaq_f32(c[4], q, t);
        let r = vdivq_f32(vmulq_f32(z, p), q);
        let r = vminnmq_f32(vmaxnmq_f32(r, c[3]), c[4]);
        vmulq_f32(vmulq_f32(c[5], x), vaddq_f32(c[4], r))
    }
}

/// The reference's `fma(scale, act(unscale·acc), shift)` for 4 channels from `o` on.
///
/// # Safety
/// `o + 4 ≤ dim`, the channel count `p` was built for.
#[inline(always)]
pub(crate) unsafe fn finish4(
    p: &Params,
    o: usize,
    act: Activation,
    acc: float32x4_t,
) -> float32x4_t {
    // SAFETY: channels o..o + 4 < dim of the dim-long unscale, scale and shift vectors
    // (Params' invariant); the tanh path stores to and loads from a local [f32; 4].
    unsafe {
        let acc = vmulq_f32(acc, vld1q_f32(p.unscale.add(o)));
        let a = if act == Activation::Relu {
            vmaxnmq_f32(acc, vdupq_n_f32(0.0))
        } else if act == Activation::Gelu {
            gelu4(acc, &p.gelu)
        } else {
            let mut v = [0f32; 4];
            vst1q_f32(v.as_mut_ptr(), acc);
            for e in &mut v {
                *e = act_f32(act, *e);
            }
            vld1q_f32(v.as_ptr())
        };
        vfmaq_f32(vld1q_f32(p.shift.add(o)), vld1q_f32(p.scale.add(o)), a)
    }
}

/// Stores 16 f32 at `out`, as f32 or narrowed to f16 (`OUT_HALF`).
///
/// # Safety
/// `out` points at 16 writable elements (f16 if `OUT_HALF`, else f32).
#[inline(always)]
pub(crate) unsafe fn store16<const OUT_HALF: bool>(out: *mut u8, v: [float32x4_t; 4]) {
    let [v0, v1, v2, v3] = v;
    // SAFETY: the caller's 16 elements at out (32 or 64 bytes).
    unsafe {
        if OUT_HALF {
            let p = out.cast::<u16>();
            vst1q_u16(p, narrow(v0, v1));
            vst1q_u16(p.add(8), narrow(v2, v3));
        } else {
            let p = out.cast::<f32>();
            for (r, x) in v.into_iter().enumerate() {
                vst1q_f32(p.add(4 * r), x);
            }
        }
    }
}

/// 16 f32 biases from `b` narrowed to f16: the f16 accumulators' start.
///
/// # Safety
/// `b` points at 16 readable f32.
#[inline(always)]
pub(crate) unsafe fn bias_h(b: *const f32) -> [uint16x8_t; 2] {
    // SAFETY: b + 0..16 (the caller's).
    unsafe {
        [
            narrow(vld1q_f32(b), vld1q_f32(b.add(4))),
            narrow(vld1q_f32(b.add(8)), vld1q_f32(b.add(12))),
        ]
    }
}

/// The f16 epilogue for 16 channels from `o`: widen, finish in f32, add the residual
/// (`res`, 16 f16, if any), narrow, store at `out`.
///
/// # Safety
/// `o + 16 ≤ dim`, the channel count `p` was built for; `res` (if any) points at 16
/// readable and `out` at 16 writable f16.
#[inline(always)]
pub(crate) unsafe fn finish16_h(
    p: &Params,
    o: usize,
    act: Activation,
    acc: [uint16x8_t; 2],
    res: Option<*const u16>,
    out: *mut u16,
) {
    let [acc0, acc1] = acc;
    let a = [
        widen_lo(acc0),
        widen_hi(acc0),
        widen_lo(acc1),
        widen_hi(acc1),
    ];
    // SAFETY: channels o..o + 16 ≤ dim; res + 0..16 and out + 0..16 (the caller's).
    unsafe {
        let mut y: [float32x4_t; 4] = [
            finish4(p, o, act, a[0]),
            finish4(p, o + 4, act, a[1]),
            finish4(p, o + 8, act, a[2]),
            finish4(p, o + 12, act, a[3]),
        ];
        if let Some(res) = res {
            let (r0, r1) = (vld1q_u16(res), vld1q_u16(res.add(8)));
            let rv = [widen_lo(r0), widen_hi(r0), widen_lo(r1), widen_hi(r1)];
            for (v, r) in y.iter_mut().zip(rv) {
                *v = vaddq_f32(*v, r);
            }
        }
        store16::<true>(out.cast(), y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::gelu_f32;

    /// The 4-lane GELU gives the reference's bits on a dense grid over both clamps, and on
    /// infinities, zeros and NaN (both NaN).
    #[test]
    fn gelu4_matches_reference() {
        let mut xs: std::vec::Vec<f32> = (-(12 << 10)..=(12 << 10))
            .map(|i| i as f32 / 1024.0)
            .collect();
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::NAN,
            1e-30,
            -1e-30,
            3e38,
            -3e38,
        ]);
        xs.extend((0..4000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
        for c in xs.chunks(4) {
            let mut v = [0f32; 4];
            v[..c.len()].copy_from_slice(c);
            let mut out = [0f32; 4];
            // SAFETY: NEON is baseline on aarch64; the arrays hold 4 lanes.
            unsafe {
                vst1q_f32(
                    out.as_mut_ptr(),
                    gelu4(vld1q_f32(v.as_ptr()), &GeluConsts::load()),
                )
            };
            for (x, y) in v.iter().zip(out) {
                let r = gelu_f32(*x);
                assert!(
                    r.to_bits() == y.to_bits() || (r.is_nan() && y.is_nan()),
                    "gelu({x}): {y} vs {r}"
                );
            }
        }
    }
}
