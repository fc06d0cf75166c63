//! AArch64 NEON float kernels, bit-exact with [`super::reference`] for both arithmetics:
//!
//! * `F32Arith` (ARMv8.0, any NEON CPU): `FMLA .4s`, weights f32 or f16 (widened by `FCVTL`).
//!   GEMM micro-kernel `fgemm_neon_f32_4x16` (4 tokens × 16 outputs, 16 accumulators, by
//!   element), depthwise `dw_neon_f32_c16` (16 channels per step).
//! * `F16Arith` (FEAT_FP16, Cortex-A76): `FMLA .8h`. GEMM `fgemm_neon_f16_4x16`, depthwise
//!   `dw_neon_f16_c16`. FEAT_FP16 arithmetic is not in `core::arch` on stable Rust, so those
//!   instructions are inline `asm!` (FCVTL/FCVTN too, which take f16 registers).
//!
//! Every kernel accumulates each output in the reference's order with one rounding per
//! step (fused multiply-add by element over 16 output lanes), and the epilogue is the
//! reference's `fma(scale, act(acc), shift)` (+ residual) in f32, then the same narrowing.
//! ReLU is `FMAXNM(x, +0)`, which is exactly the reference's `x > 0 ? x : +0`; GELU is the
//! reference's rational `erf_f32` evaluated on 4 lanes with the same operations; only the
//! tanh form of GELU calls the scalar `act_f32` per lane.
//!
//! Safety: the safe entry points [`pw`], [`dw`] and [`embed`] (called by [`super::float`])
//! check every length once per call, in checked arithmetic, and return `false` without
//! touching anything where a layer does not fit; [`Params::new`] checks the parameter
//! sections. The `unsafe fn`s below them state in `# Safety` what they rely on, and each
//! `unsafe` block says which of those checks bounds its pointer accesses. NEON itself is a
//! compile-time target feature (this module exists only then); FEAT_FP16, which the f16
//! arithmetic kernels need, is checked at run time ([`super::fp16_available`]).
//!
//! The depthwise kernels' contract (what [`dw`] and [`Params::new`] check): `x` and `out`
//! point at the grid's `ht·wt·dim` elements (readable, writable), `dim` is a multiple of 16
//! and at most the channel count the `Params` were built for, their weights hold
//! `kernel²·dim` elements (f16 where `HALF` or in f16 arithmetic), and `pad_top`, `pad_left <
//! kernel`. Every offset the kernels form is then inside a buffer: an input tap `((ty + ky −
//! pad_top)·wt + tx + kx − pad_left)·dim + c` is formed only for kernel rows and columns
//! inside the grid ([`taps`], or a [`dw_steps`] tile, all of whose `K + 3` columns from `tx −
//! pad_left` are), weights `(ky·k + kx)·dim + c < k²·dim`, outputs and residuals `t·dim + c`
//! with `t < ht·wt`, channels `c0 + 16 ≤ dim` (`c0 + 8` in the f32 tiles).
//!
//! (No `preserves_flags` on the asm: FMLA and FCVT set FPSR's cumulative exception bits.)

use super::reference::{act_f32, FloatArith, FloatLayer};
use super::{EmbedGeom, Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;
use core::arch::aarch64::*;
use core::arch::asm;

/// Raw parameters of one float layer of `dim` channels: pointers into its sections. Built
/// only by [`Params::new`], so that `w` always heads the weight elements the layer's kernel
/// reads and the four channel vectors hold `dim` f32 each.
#[derive(Clone, Copy)]
struct Params {
    /// Weights: f32 or f16 elements (the kernels' `HALF`, which is the layer's `W::HALF`).
    w: *const u8,
    bias: *const f32,
    scale: *const f32,
    shift: *const f32,
    unscale: *const f32,
    gelu: GeluConsts,
}

impl Params {
    /// The NEON kernels' view of `l`, a layer of `dim` channels whose kernel reads `w_elems`
    /// weights, in arithmetic `M` (`half_math`: the layer computes in `M`, else always in
    /// f32) on `isa`; `None` where the kernels cannot run it: the scalar ISA, `dim` not a
    /// positive multiple of 16, f16 arithmetic without f16 weights or without FEAT_FP16, or
    /// a section shorter than `w_elems` weights or `dim` channels.
    fn new<W: FloatWeights, M: FloatArith>(
        isa: Isa,
        dim: usize,
        l: &FloatLayer<'_, W>,
        w_elems: Option<usize>,
        half_math: bool,
    ) -> Option<Params> {
        let wsz = if W::HALF { 2 } else { 4 };
        let ok = isa != Isa::Scalar
            && dim > 0
            && dim % 16 == 0
            && (!(half_math && M::HALF) || (W::HALF && super::fp16_available()))
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
enum Acts<'x> {
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
    fn of<M: FloatArith>(x: &'x [M::Act], out: &'x mut [M::Act]) -> Option<Self> {
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
    fn hold(&self, n: usize) -> bool {
        match self {
            Acts::Half(x, o) => x.len() >= n && o.len() >= n,
            Acts::Single(x, o) => x.len() >= n && o.len() >= n,
        }
    }
}

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

/// Depthwise conv + residual with the NEON kernels; `false`, touching nothing, where they
/// do not take it ([`Params::new`], a padding not below the kernel size, or `x` or `out`
/// shorter than the grid).
pub(crate) fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) -> bool {
    let Some(acts) = Acts::of::<M>(x, out) else {
        return false;
    };
    if !(g.elements().is_some_and(|n| acts.hold(n))
        && g.pad_top < g.kernel
        && g.pad_left < g.kernel)
    {
        return false;
    }
    let w_elems = g
        .kernel
        .checked_mul(g.kernel)
        .and_then(|t| t.checked_mul(g.dim));
    let Some(p) = Params::new::<W, M>(isa, g.dim, l, w_elems, true) else {
        return false;
    };
    match acts {
        // SAFETY: x and out hold the grid's ht·wt·dim f16, both paddings are below the
        // kernel size (checked above); Params::new checked dim % 16 == 0, k·k·dim f16
        // weights, dim channels of every vector, and FEAT_FP16.
        Acts::Half(x, o) => unsafe { dw_neon_f16_c16(x.as_ptr(), o.as_mut_ptr(), g, &p, act) },
        // SAFETY: as above with f32 activations and W's weight elements (HALF = W::HALF).
        Acts::Single(x, o) => unsafe {
            let (x, o) = (x.as_ptr(), o.as_mut_ptr());
            if W::HALF {
                dw_neon_f32_c16::<true>(x, o, g, &p, act)
            } else {
                dw_neon_f32_c16::<false>(x, o, g, &p, act)
            }
        },
    }
    true
}

/// Patch embedding with the NEON kernels (always f32 arithmetic, outputs narrowed to
/// `M`'s storage), 4 patches at a time gathered into `scratch` as f32; `false`, touching
/// nothing, where they do not take it ([`Params::new`], a patch size that does not fit the
/// image, `scratch` shorter than 4 patches, `px` shorter than the image or `out` than
/// `tokens · dim`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    isa: Isa,
) -> bool {
    // Every size in checked arithmetic: a wrapped product must not pass a length check.
    let (p, c) = (g.patch, g.in_c);
    if p == 0 || g.in_h < p || g.in_w < p {
        return false;
    }
    let (wt, ht) = ((g.in_w - p) / p + 1, (g.in_h - p) / p + 1);
    // The kernels write f16 (2 bytes) where M::HALF, else f32.
    let esz = if M::HALF { 2 } else { 4 };
    let Ok(out_b) = bytemuck::try_cast_slice_mut::<M::Act, u8>(out) else {
        return false;
    };
    let geom = (|| {
        let k = p.checked_mul(p)?.checked_mul(c)?;
        let tokens = ht.checked_mul(wt)?;
        let row_bytes = dim.checked_mul(esz)?;
        let ok = k > 0
            && scratch.len() >= k.checked_mul(4)?
            && px.len() >= g.in_h.checked_mul(g.in_w)?.checked_mul(c)?
            && out_b.len() >= tokens.checked_mul(row_bytes)?;
        let w_elems = dim.div_ceil(16).checked_mul(16)?.checked_mul(k);
        let prm = Params::new::<W, M>(isa, dim, l, w_elems, false)?;
        ok.then_some((k, tokens, row_bytes, prm))
    })();
    let Some((k, tokens, row_bytes, prm)) = geom else {
        return false;
    };
    // k = p·p·c > 0, so p·c > 0 too: every chunk size below is positive.
    let pc = p * c;
    let mut t = 0;
    while t < tokens {
        let count = (tokens - t).min(4);
        // Gather patches t..t + count (rows of p·c pixels) into scratch rows of k f32. The
        // pixel rows are inside px: (ty·p + ky) < ht·p ≤ in_h and tx·p + p ≤ in_w, checked
        // above to span in_h·in_w·c bytes.
        for (j, patch) in scratch.chunks_exact_mut(k).take(count).enumerate() {
            let (ty, tx) = ((t + j) / wt, (t + j) % wt);
            for (ky, dst) in patch.chunks_exact_mut(pc).enumerate() {
                let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                if let Some(src) = px.get(row..row + pc) {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = f32::from(*v);
                    }
                }
            }
        }
        // Rows past `count` are never written (they repeat the last real one).
        let base = out_b.as_mut_ptr();
        let outs = core::array::from_fn(|j| base.wrapping_add((t + j.min(count - 1)) * row_bytes));
        let s = scratch.as_ptr();
        // SAFETY: count ≤ 4 rows of k f32 in scratch (scratch ≥ 4k, checked above); each
        // outs[j] heads row t + j < tokens of out, dim elements of esz bytes (out ≥
        // tokens·dim·esz); Params::new checked dim % 16 == 0, the dim·k weights of W::HALF
        // (the padded 16-output blocks: dim is a multiple of 16) and the dim channels.
        unsafe {
            match (W::HALF, M::HALF) {
                (false, false) => embed_rows::<false, false>(s, count, k, outs, dim, &prm, act),
                (false, true) => embed_rows::<false, true>(s, count, k, outs, dim, &prm, act),
                (true, false) => embed_rows::<true, false>(s, count, k, outs, dim, &prm, act),
                (true, true) => embed_rows::<true, true>(s, count, k, outs, dim, &prm, act),
            }
        }
        t += count;
    }
    true
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

/// `FCVTL`: the low 4 f16 lanes as f32.
#[inline(always)]
fn widen_lo(h: uint16x8_t) -> float32x4_t {
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
fn widen_hi(h: uint16x8_t) -> float32x4_t {
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
fn narrow(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
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

/// `FMLA acc.8h, w.8h, x.8h` (FEAT_FP16; only inside `unsafe` blocks of `fp16` functions,
/// whose callers guarantee the feature).
macro_rules! fmla_h {
    ($acc:expr, $w:expr, $x:expr) => {
        asm!("fmla {a:v}.8h, {w:v}.8h, {x:v}.8h", a = inout(vreg) $acc, w = in(vreg) $w,
            x = in(vreg) $x, options(pure, nomem, nostack))
    };
}

/// 16 consecutive weights from element `e` on, as f32.
///
/// # Safety
/// Elements `e..e + 16` of `w` (f16 if `HALF`, else f32) are readable.
#[inline(always)]
unsafe fn load_w16<const HALF: bool>(w: *const u8, e: usize) -> [float32x4_t; 4] {
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
unsafe fn finish4(p: &Params, o: usize, act: Activation, acc: float32x4_t) -> float32x4_t {
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
unsafe fn store16<const OUT_HALF: bool>(out: *mut u8, v: [float32x4_t; 4]) {
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
unsafe fn fgemm_f32_tile<const MR: usize, const HALF: bool, const OUT_HALF: bool>(
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

/// Patch embedding (always f32 arithmetic): `rows` holds `count ≤ 4` gathered patches of
/// `k` pixel values each (as f32); outputs go to `out[j]` (`n` elements, f32 or f16).
///
/// # Safety
/// `count ≤ 4`, `rows` points at `count·k` readable f32, each `out[j]` with `j < count` at
/// `n` writable elements (f16 if `OUT_HALF`, else f32), `n % 16 == 0`, `n` at most the
/// channel count `p` was built for, and `p.w` holds `n·k` weight elements (f16 if `HALF`).
#[target_feature(enable = "neon")]
unsafe fn embed_rows<const HALF: bool, const OUT_HALF: bool>(
    rows: *const f32,
    count: usize,
    k: usize,
    out: [*mut u8; 4],
    n: usize,
    p: &Params,
    act: Activation,
) {
    // SAFETY: row j < count of rows is rows + j·k .. + k; out[j] only for j < count.
    unsafe {
        if count == 4 {
            let xs = arr!(4, |j| rows.add(j * k));
            fgemm_f32_tile::<4, HALF, OUT_HALF>(xs, out, k, n, p, act);
        } else {
            for (j, o) in out.iter().enumerate().take(count) {
                fgemm_f32_tile::<1, HALF, OUT_HALF>([rows.add(j * k)], [*o], k, n, p, act);
            }
        }
    }
}

/// The valid tap range `[lo, hi)` of a 'same' depthwise window along one axis: kernel
/// offsets `i` with `0 ≤ pos + i − pad < len` (for `pos < len`, `pad < k`).
#[inline(always)]
fn taps(pos: usize, pad: usize, k: usize, len: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(pos);
    let hi = (len + pad - pos).min(k);
    (lo, hi)
}

/// The order in which the float depthwise kernels visit a grid: row by row, each run of 4
/// interior tokens (every kernel column inside the row: `tx ≥ pad_left`,
/// `tx + 3 + k ≤ wt + pad_left`) as one tile step when `tiles`, every other token alone.
/// Yields `(ty, tx, valid kernel rows, is a tile)`, with `ty < ht`, `tx < wt`.
fn dw_steps(g: Grid, tiles: bool) -> impl Iterator<Item = (usize, usize, (usize, usize), bool)> {
    (0..g.ht).flat_map(move |ty| {
        let ky = taps(ty, g.pad_top, g.kernel, g.ht);
        let mut tx = 0;
        core::iter::from_fn(move || {
            if tx >= g.wt {
                return None;
            }
            let tile = tiles && tx >= g.pad_left && tx + 3 + g.kernel <= g.wt + g.pad_left;
            let at = tx;
            tx += if tile { 4 } else { 1 };
            Some((ty, at, ky, tile))
        })
    })
}

/// 8 consecutive weights from element `e` on, as f32.
///
/// # Safety
/// Elements `e..e + 8` of `w` (f16 if `HALF`, else f32) are readable.
#[inline(always)]
unsafe fn load_w8<const HALF: bool>(w: *const u8, e: usize) -> [float32x4_t; 2] {
    // SAFETY: the caller's 8 elements from e.
    unsafe {
        if HALF {
            let a = vld1q_u16(w.add(2 * e).cast::<u16>());
            [widen_lo(a), widen_hi(a)]
        } else {
            let p = w.add(4 * e).cast::<f32>();
            [vld1q_f32(p), vld1q_f32(p.add(4))]
        }
    }
}

/// The f32 twin of `dw_f16_tile4`: four interior tokens `tx..tx+4` of row `ty`, 8
/// channels (2 `.4s` registers) at a time, the `K + 3` input columns of each kernel row
/// loaded once: `8·K` `FMLA .4s` per kernel row.
///
/// # Safety
/// The depthwise contract (module docs) with `K == kernel ≤ 7`; `(ty, tx)` a tile of
/// [`dw_steps`] and `(ky0, ky1)` its kernel rows.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
// Indices: j < 4, r < 2, c < K + 3 ≤ 10 and j + kx < 3 + K ≤ 10 are loop counters over the
// const lengths of `acc` (4 × 2), `wv` (2) and `col` (10 × 2).
#[allow(clippy::indexing_slicing)]
unsafe fn dw_f32_tile4<const K: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    ty: usize,
    tx: usize,
    (ky0, ky1): (usize, usize),
) {
    let d = g.dim;
    // SAFETY: the depthwise contract: rows ty + ky − pad_top (ky0 ≤ ky < ky1) and columns
    // tx − pad_left .. tx − pad_left + K + 3 are inside the grid, outputs tx..tx + 4 < wt,
    // channels c0 + 8 ≤ dim.
    unsafe {
        for c0 in (0..d).step_by(8) {
            let b = p.bias.add(c0);
            let mut acc = [[vld1q_f32(b), vld1q_f32(b.add(4))]; 4];
            for ky in ky0..ky1 {
                let row = x.add(((ty + ky - g.pad_top) * g.wt + tx - g.pad_left) * d + c0);
                let mut col = [[vdupq_n_f32(0.0); 2]; 10];
                for (c, v) in col.iter_mut().enumerate().take(K + 3) {
                    *v = [vld1q_f32(row.add(c * d)), vld1q_f32(row.add(c * d + 4))];
                }
                for kx in 0..K {
                    let wv = load_w8::<HALF>(p.w, (ky * K + kx) * d + c0);
                    for j in 0..4 {
                        for r in 0..2 {
                            acc[j][r] = vfmaq_f32(acc[j][r], wv[r], col[j + kx][r]);
                        }
                    }
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                let t = (ty * g.wt + tx + j) * d + c0;
                for (r, v) in a.into_iter().enumerate() {
                    let y = vaddq_f32(finish4(p, c0 + 4 * r, act, v), vld1q_f32(x.add(t + 4 * r)));
                    vst1q_f32(out.add(t + 4 * r), y);
                }
            }
        }
    }
}

/// Depthwise 'same' conv + residual in f32 arithmetic (`dim % 16 == 0`):
/// `out = fma(scale, act(acc), shift) + x`. Interior runs of 4 tokens go through
/// `dw_f32_tile4` for k = 3, 5, 7; the rest token by token, 16 channels per step.
///
/// # Safety
/// The depthwise contract (module docs), f32 activations.
#[target_feature(enable = "neon")]
unsafe fn dw_neon_f32_c16<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
) {
    let (k, d) = (g.kernel, g.dim);
    type Tile =
        unsafe fn(*const f32, *mut f32, Grid, &Params, Activation, usize, usize, (usize, usize));
    let tile: Option<Tile> = match k {
        3 => Some(dw_f32_tile4::<3, HALF>),
        5 => Some(dw_f32_tile4::<5, HALF>),
        7 => Some(dw_f32_tile4::<7, HALF>),
        _ => None,
    };
    for (ty, tx, ky, tiled) in dw_steps(g, tile.is_some()) {
        if let (true, Some(f)) = (tiled, tile) {
            // SAFETY: the caller's contract; f is the tile of K = k, (ty, tx) a tile step
            // of dw_steps with its kernel rows ky.
            unsafe { f(x, out, g, p, act, ty, tx, ky) };
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
        // SAFETY: the depthwise contract: taps ky.0..ky.1 and kx0..kx1 are inside the grid,
        // t < ht·wt, channels c0 + 16 ≤ dim.
        unsafe {
            for c0 in (0..d).step_by(16) {
                let b = p.bias.add(c0);
                let mut acc = [
                    vld1q_f32(b),
                    vld1q_f32(b.add(4)),
                    vld1q_f32(b.add(8)),
                    vld1q_f32(b.add(12)),
                ];
                for ky in ky.0..ky.1 {
                    let row = x.add(((ty + ky - g.pad_top) * g.wt) * d + c0);
                    for kx in kx0..kx1 {
                        let xp = row.add((tx + kx - g.pad_left) * d);
                        let wv = load_w16::<HALF>(p.w, (ky * k + kx) * d + c0);
                        for (r, (a, w)) in acc.iter_mut().zip(wv).enumerate() {
                            *a = vfmaq_f32(*a, w, vld1q_f32(xp.add(4 * r)));
                        }
                    }
                }
                let res = x.add(t * d + c0);
                let [a0, a1, a2, a3] = acc;
                let y = [
                    vaddq_f32(finish4(p, c0, act, a0), vld1q_f32(res)),
                    vaddq_f32(finish4(p, c0 + 4, act, a1), vld1q_f32(res.add(4))),
                    vaddq_f32(finish4(p, c0 + 8, act, a2), vld1q_f32(res.add(8))),
                    vaddq_f32(finish4(p, c0 + 12, act, a3), vld1q_f32(res.add(12))),
                ];
                store16::<false>(out.add(t * d + c0).cast(), y);
            }
        }
    }
}

/// 16 f32 biases from `b` narrowed to f16: the f16 accumulators' start.
///
/// # Safety
/// `b` points at 16 readable f32.
#[inline(always)]
unsafe fn bias_h(b: *const f32) -> [uint16x8_t; 2] {
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
unsafe fn finish16_h(
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

/// Four interior output tokens `tx..tx+4` of row `ty` (every kernel column inside the row),
/// 16 channels at a time, for kernel size `K`: per kernel row, the `K + 3` input columns are
/// loaded once and each weight pair once, for `8·K` `FMLA .8h` (each output's taps still in
/// `(ky, kx)` order).
///
/// # Safety
/// The CPU implements FEAT_FP16; the depthwise contract (module docs) with f16
/// activations and weights and `K == kernel ≤ 7`; `(ty, tx)` a tile of [`dw_steps`] and
/// `(ky0, ky1)` its kernel rows.
#[target_feature(enable = "neon,fp16")]
#[allow(clippy::too_many_arguments)]
// Indices: j < 4 and j + kx < 3 + K ≤ 10 are loop counters over the const lengths of `acc`
// (4) and `col` (10); the [0]/[1] halves are constants.
#[allow(clippy::indexing_slicing)]
unsafe fn dw_f16_tile4<const K: usize>(
    x: *const u16,
    out: *mut u16,
    g: Grid,
    p: &Params,
    act: Activation,
    ty: usize,
    tx: usize,
    (ky0, ky1): (usize, usize),
) {
    let d = g.dim;
    let w = p.w.cast::<u16>();
    // SAFETY: the depthwise contract: rows ty + ky − pad_top (ky0 ≤ ky < ky1) and columns
    // tx − pad_left .. tx − pad_left + K + 3 are inside the grid, outputs tx..tx + 4 < wt,
    // channels c0 + 16 ≤ dim; FEAT_FP16 (the caller's).
    unsafe {
        for c0 in (0..d).step_by(16) {
            let mut acc = [bias_h(p.bias.add(c0)); 4];
            for ky in ky0..ky1 {
                let row = x.add(((ty + ky - g.pad_top) * g.wt + tx - g.pad_left) * d + c0);
                let mut col = [[vdupq_n_u16(0); 2]; 10];
                for (c, v) in col.iter_mut().enumerate().take(K + 3) {
                    *v = [vld1q_u16(row.add(c * d)), vld1q_u16(row.add(c * d + 8))];
                }
                for kx in 0..K {
                    let wp = w.add((ky * K + kx) * d + c0);
                    let (w0, w1) = (vld1q_u16(wp), vld1q_u16(wp.add(8)));
                    for j in 0..4 {
                        fmla_h!(acc[j][0], w0, col[j + kx][0]);
                        fmla_h!(acc[j][1], w1, col[j + kx][1]);
                    }
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                let t = (ty * g.wt + tx + j) * d + c0;
                finish16_h(p, c0, act, a, Some(x.add(t)), out.add(t));
            }
        }
    }
}

/// Depthwise 'same' conv + residual in f16 arithmetic, 16 channels (2 `.8h` registers)
/// per step (`dim % 16 == 0`), f16 weights. Interior runs of 4 tokens go through
/// `dw_f16_tile4` for k = 3, 5, 7; the rest token by token.
///
/// # Safety
/// The CPU implements FEAT_FP16; the depthwise contract (module docs) with f16
/// activations and weights.
#[target_feature(enable = "neon,fp16")]
unsafe fn dw_neon_f16_c16(x: *const u16, out: *mut u16, g: Grid, p: &Params, act: Activation) {
    let (k, d) = (g.kernel, g.dim);
    let w = p.w.cast::<u16>();
    type Tile =
        unsafe fn(*const u16, *mut u16, Grid, &Params, Activation, usize, usize, (usize, usize));
    let tile: Option<Tile> = match k {
        3 => Some(dw_f16_tile4::<3>),
        5 => Some(dw_f16_tile4::<5>),
        7 => Some(dw_f16_tile4::<7>),
        _ => None,
    };
    for (ty, tx, ky, tiled) in dw_steps(g, tile.is_some()) {
        if let (true, Some(f)) = (tiled, tile) {
            // SAFETY: the caller's contract; f is the tile of K = k, (ty, tx) a tile step
            // of dw_steps with its kernel rows ky.
            unsafe { f(x, out, g, p, act, ty, tx, ky) };
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
        // SAFETY: the depthwise contract: taps ky.0..ky.1 and kx0..kx1 are inside the grid,
        // t < ht·wt, channels c0 + 16 ≤ dim; FEAT_FP16 (the caller's).
        unsafe {
            for c0 in (0..d).step_by(16) {
                let mut acc = bias_h(p.bias.add(c0));
                for ky in ky.0..ky.1 {
                    let row = x.add(((ty + ky - g.pad_top) * g.wt) * d + c0);
                    for kx in kx0..kx1 {
                        let xp = row.add((tx + kx - g.pad_left) * d);
                        let wp = w.add((ky * k + kx) * d + c0);
                        fmla_h!(acc[0], vld1q_u16(wp), vld1q_u16(xp));
                        fmla_h!(acc[1], vld1q_u16(wp.add(8)), vld1q_u16(xp.add(8)));
                    }
                }
                let at = t * d + c0;
                finish16_h(p, c0, act, acc, Some(x.add(at)), out.add(at));
            }
        }
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
