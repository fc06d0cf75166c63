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
//! Callers ([`super::float`]) check every length before calling; the kernels trust them.
//! (No `preserves_flags` on the asm: FMLA and FCVT set FPSR's cumulative exception bits.)

use super::reference::act_f32;
use crate::Activation;
use core::arch::aarch64::*;
use core::arch::asm;

/// Raw parameters of one float layer (pointers into validated blob sections).
#[derive(Clone, Copy)]
pub(crate) struct Params {
    /// Weights: f32 or f16 elements (`HALF`).
    pub w: *const u8,
    pub bias: *const f32,
    pub scale: *const f32,
    pub shift: *const f32,
    pub unscale: *const f32,
    pub gelu: GeluConsts,
}

/// `[f(0), f(1), …]` for a const length, without `core::array::from_fn`'s closure call
/// (which LLVM does not always inline into these kernels).
macro_rules! arr {
    ($n:expr, |$i:ident| $e:expr) => {{
        let mut a = [unsafe { core::mem::zeroed() }; $n];
        for $i in 0..$n {
            a[$i] = $e;
        }
        a
    }};
}

/// `FCVTL`: the low 4 f16 lanes as f32.
#[inline(always)]
unsafe fn widen_lo(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl {r:v}.4s, {h:v}.4h", r = lateout(vreg) r, h = in(vreg) h,
        options(pure, nomem, nostack));
    r
}

/// `FCVTL2`: the high 4 f16 lanes as f32.
#[inline(always)]
unsafe fn widen_hi(h: uint16x8_t) -> float32x4_t {
    let r: float32x4_t;
    asm!("fcvtl2 {r:v}.4s, {h:v}.8h", r = lateout(vreg) r, h = in(vreg) h,
        options(pure, nomem, nostack));
    r
}

/// `FCVTN`/`FCVTN2`: 8 f32 to f16 (nearest, ties to even).
#[inline(always)]
unsafe fn narrow(lo: float32x4_t, hi: float32x4_t) -> uint16x8_t {
    let r: uint16x8_t;
    asm!("fcvtn {r:v}.4h, {lo:v}.4s", "fcvtn2 {r:v}.8h, {hi:v}.4s", r = out(vreg) r,
        lo = in(vreg) lo, hi = in(vreg) hi, options(pure, nomem, nostack));
    r
}

/// `FMLA acc.8h, w.8h, x.h[L]` (FEAT_FP16; only inside `fp16` functions).
macro_rules! fmla_h_lane {
    ($acc:expr, $w:expr, $x:expr, $l:literal) => {
        asm!(concat!("fmla {a:v}.8h, {w:v}.8h, {x:v}.h[", $l, "]"), a = inout(vreg) $acc,
            w = in(vreg) $w, x = in(vreg_low16) $x, options(pure, nomem, nostack))
    };
}

/// `FMLA acc.8h, w.8h, x.8h` (FEAT_FP16; only inside `fp16` functions).
macro_rules! fmla_h {
    ($acc:expr, $w:expr, $x:expr) => {
        asm!("fmla {a:v}.8h, {w:v}.8h, {x:v}.8h", a = inout(vreg) $acc, w = in(vreg) $w,
            x = in(vreg) $x, options(pure, nomem, nostack))
    };
}

/// 16 consecutive weights from element `e` on, as f32.
#[inline(always)]
unsafe fn load_w16<const HALF: bool>(w: *const u8, e: usize) -> [float32x4_t; 4] {
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

/// GELU's constants, broadcast: `[1/√2, −zmax, zmax, −1, 1, 0.5, P0..P6, Q1..Q5]`.
#[derive(Clone, Copy)]
pub(crate) struct GeluConsts([float32x4_t; 18]);

impl GeluConsts {
    /// Loads the constants once per layer. The scalars are read volatile so that LLVM
    /// keeps them as data (one load each where registers run out) instead of
    /// re-materialising every one with `MOV`/`MOVK`/`DUP` inside the epilogue.
    pub(crate) fn load() -> Self {
        use super::reference::{ERF_P, ERF_Q, ERF_ZMAX};
        let mut v = [0f32; 18];
        v[..6].copy_from_slice(&[
            core::f32::consts::FRAC_1_SQRT_2,
            -ERF_ZMAX,
            ERF_ZMAX,
            -1.0,
            1.0,
            0.5,
        ]);
        v[6..13].copy_from_slice(&ERF_P);
        v[13..].copy_from_slice(&ERF_Q[1..]);
        // SAFETY: reading initialised locals; NEON is baseline on aarch64.
        GeluConsts(core::array::from_fn(|i| unsafe {
            vdupq_n_f32(core::ptr::read_volatile(&v[i]))
        }))
    }
}

/// The reference's `gelu_f32` on 4 lanes, operation for operation.
#[inline(always)]
unsafe fn gelu4(x: float32x4_t, k: &GeluConsts) -> float32x4_t {
    let c = &k.0;
    let z = vmulq_f32(x, c[0]);
    let z = vminnmq_f32(vmaxnmq_f32(z, c[1]), c[2]);
    let t = vmulq_f32(z, z);
    let mut p = c[12];
    for i in (6..12).rev() {
        p = vfmaq_f32(c[i], p, t);
    }
    let mut q = c[17];
    for i in (13..17).rev() {
        q = vfmaq_f32(c[i], q, t);
    }
    // Q0 = 1.
    q = vfmaq_f32(c[4], q, t);
    let r = vdivq_f32(vmulq_f32(z, p), q);
    let r = vminnmq_f32(vmaxnmq_f32(r, c[3]), c[4]);
    vmulq_f32(vmulq_f32(c[5], x), vaddq_f32(c[4], r))
}

/// The reference's `fma(scale, act(unscale·acc), shift)` for 4 channels from `o` on.
#[inline(always)]
unsafe fn finish4(p: &Params, o: usize, act: Activation, acc: float32x4_t) -> float32x4_t {
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

/// Stores 16 f32 at `out`, as f32 or narrowed to f16 (`OUT_HALF`).
#[inline(always)]
unsafe fn store16<const OUT_HALF: bool>(out: *mut u8, v: [float32x4_t; 4]) {
    if OUT_HALF {
        let p = out.cast::<u16>();
        vst1q_u16(p, narrow(v[0], v[1]));
        vst1q_u16(p.add(8), narrow(v[2], v[3]));
    } else {
        let p = out.cast::<f32>();
        for (r, x) in v.into_iter().enumerate() {
            vst1q_f32(p.add(4 * r), x);
        }
    }
}

/// f32 GEMM micro-kernel: `MR` (≤ 4) token rows × 16 outputs, `k` inputs, weights `w`
/// pointing at one packed 16-output block (f32 or f16), accumulators starting at `bias`.
/// Inputs are consumed in order, one fused `FMLA .4s` by element per input and register.
#[inline(always)]
unsafe fn fgemm_neon_f32_4x16<const MR: usize, const HALF: bool>(
    x: [*const f32; MR],
    k: usize,
    w: *const u8,
    bias: *const f32,
) -> [[float32x4_t; 4]; MR] {
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

/// One `MR`-token tile of an f32 GEMM layer over all `n / 16` output blocks: rows `x[t]`
/// (`k` f32 each), outputs at `out[t]` (`n` elements, f32 or f16).
#[inline(always)]
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
        let acc = fgemm_neon_f32_4x16::<MR, HALF>(x, k, p.w.add(o0 * k * wsz), p.bias.add(o0));
        for t in 0..MR {
            let y: [float32x4_t; 4] = arr!(4, |r| finish4(p, o0 + 4 * r, act, acc[t][r]));
            store16::<OUT_HALF>(out[t].add(o0 * esz), y);
        }
    }
}

/// Pointwise layer in f32 arithmetic: `x`, `out`: `tokens × n` f32; `n % 16 == 0`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn pw_f32<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    tokens: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    let mut t = 0;
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

/// Patch embedding (always f32 arithmetic): `rows` holds `MR ≤ 4` gathered patches of `k`
/// pixel values each (as f32); outputs go to `out[t]` (`n` elements, f32 or f16).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn embed_rows<const HALF: bool, const OUT_HALF: bool>(
    rows: *const f32,
    count: usize,
    k: usize,
    out: [*mut u8; 4],
    n: usize,
    p: &Params,
    act: Activation,
) {
    if count == 4 {
        let xs = arr!(4, |j| rows.add(j * k));
        fgemm_f32_tile::<4, HALF, OUT_HALF>(xs, out, k, n, p, act);
    } else {
        for (j, o) in out.iter().enumerate().take(count) {
            fgemm_f32_tile::<1, HALF, OUT_HALF>([rows.add(j * k)], [*o], k, n, p, act);
        }
    }
}

/// The valid tap range `[lo, hi)` of a 'same' depthwise window along one axis.
#[inline(always)]
fn taps(pos: usize, pad: usize, k: usize, len: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(pos);
    let hi = (len + pad - pos).min(k);
    (lo, hi)
}

use super::Grid;

/// The order in which the float depthwise kernels visit a grid: row by row, each run of 4
/// interior tokens (every kernel column inside the row: `tx ≥ pad_left`,
/// `tx + 3 + k ≤ wt + pad_left`) as one tile step when `tiles`, every other token alone.
/// Yields `(ty, tx, valid kernel rows, is a tile)`.
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
#[inline(always)]
unsafe fn load_w8<const HALF: bool>(w: *const u8, e: usize) -> [float32x4_t; 2] {
    if HALF {
        let a = vld1q_u16(w.add(2 * e).cast::<u16>());
        [widen_lo(a), widen_hi(a)]
    } else {
        let p = w.add(4 * e).cast::<f32>();
        [vld1q_f32(p), vld1q_f32(p.add(4))]
    }
}

/// The f32 twin of `dw_f16_tile4`: four interior tokens `tx..tx+4` of row `ty`, 8
/// channels (2 `.4s` registers) at a time, the `K + 3` input columns of each kernel row
/// loaded once: `8·K` `FMLA .4s` per kernel row.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
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

/// Depthwise 'same' conv + residual in f32 arithmetic (`dim % 16 == 0`):
/// `out = fma(scale, act(acc), shift) + x`. Interior runs of 4 tokens go through
/// `dw_f32_tile4` for k = 3, 5, 7; the rest token by token, 16 channels per step.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dw_neon_f32_c16<const HALF: bool>(
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
            f(x, out, g, p, act, ty, tx, ky);
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
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
                    for r in 0..4 {
                        acc[r] = vfmaq_f32(acc[r], wv[r], vld1q_f32(xp.add(4 * r)));
                    }
                }
            }
            let res = x.add(t * d + c0);
            let y: [float32x4_t; 4] = arr!(4, |r| {
                vaddq_f32(
                    finish4(p, c0 + 4 * r, act, acc[r]),
                    vld1q_f32(res.add(4 * r)),
                )
            });
            store16::<false>(out.add(t * d + c0).cast(), y);
        }
    }
}

/// 16 f32 biases from `b` narrowed to f16: the f16 accumulators' start.
#[inline(always)]
unsafe fn bias_h(b: *const f32) -> [uint16x8_t; 2] {
    [
        narrow(vld1q_f32(b), vld1q_f32(b.add(4))),
        narrow(vld1q_f32(b.add(8)), vld1q_f32(b.add(12))),
    ]
}

/// The f16 epilogue for 16 channels from `o`: widen, finish in f32, add the residual
/// (`res`, 16 f16, if any), narrow, store at `out`.
#[inline(always)]
unsafe fn finish16_h(
    p: &Params,
    o: usize,
    act: Activation,
    acc: [uint16x8_t; 2],
    res: Option<*const u16>,
    out: *mut u16,
) {
    let a = [
        widen_lo(acc[0]),
        widen_hi(acc[0]),
        widen_lo(acc[1]),
        widen_hi(acc[1]),
    ];
    let mut y: [float32x4_t; 4] = arr!(4, |r| finish4(p, o + 4 * r, act, a[r]));
    if let Some(res) = res {
        let (r0, r1) = (vld1q_u16(res), vld1q_u16(res.add(8)));
        let rv = [widen_lo(r0), widen_hi(r0), widen_lo(r1), widen_hi(r1)];
        for r in 0..4 {
            y[r] = vaddq_f32(y[r], rv[r]);
        }
    }
    store16::<true>(out.cast(), y);
}

/// f16 GEMM micro-kernel: `MR` (≤ 4) token rows × 16 outputs (2 `.8h` registers each),
/// inputs in order, one `FMLA .8h` by element per input and register.
#[target_feature(enable = "neon,fp16")]
unsafe fn fgemm_neon_f16_4x16<const MR: usize>(
    x: [*const u16; MR],
    k: usize,
    w: *const u16,
    bias: [uint16x8_t; 2],
) -> [[uint16x8_t; 2]; MR] {
    let mut acc = [bias; MR];
    let mut i = 0;
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
    acc
}

/// One `MR`-token tile of the f16 pointwise layer over all output blocks.
#[target_feature(enable = "neon,fp16")]
unsafe fn pw_f16_tile<const MR: usize>(
    x: *const u16,
    out: *mut u16,
    t: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
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

/// Pointwise layer in f16 arithmetic: `x`, `out`: `tokens × n` f16 bits; `n % 16 == 0`;
/// f16 weights.
#[target_feature(enable = "neon,fp16")]
pub(crate) unsafe fn pw_f16(
    x: *const u16,
    out: *mut u16,
    tokens: usize,
    n: usize,
    p: &Params,
    act: Activation,
) {
    let mut t = 0;
    while t + 4 <= tokens {
        pw_f16_tile::<4>(x, out, t, n, p, act);
        t += 4;
    }
    while t < tokens {
        pw_f16_tile::<1>(x, out, t, n, p, act);
        t += 1;
    }
}

/// Four interior output tokens `tx..tx+4` of row `ty` (every kernel column inside the row),
/// 16 channels at a time, for kernel size `K`: per kernel row, the `K + 3` input columns are
/// loaded once and each weight pair once, for `8·K` `FMLA .8h` (each output's taps still in
/// `(ky, kx)` order).
#[target_feature(enable = "neon,fp16")]
#[allow(clippy::too_many_arguments)]
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

/// Depthwise 'same' conv + residual in f16 arithmetic, 16 channels (2 `.8h` registers)
/// per step (`dim % 16 == 0`), f16 weights. Interior runs of 4 tokens go through
/// `dw_f16_tile4` for k = 3, 5, 7; the rest token by token.
#[target_feature(enable = "neon,fp16")]
pub(crate) unsafe fn dw_neon_f16_c16(
    x: *const u16,
    out: *mut u16,
    g: Grid,
    p: &Params,
    act: Activation,
) {
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
            f(x, out, g, p, act, ty, tx, ky);
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
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
