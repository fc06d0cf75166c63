//! AArch64 NEON float depthwise conv + residual, bit-exact with [`reference::dw_f`] in each
//! arithmetic: `dw_neon_f32_c16` (`FMLA .4s`, f32 or f16 weights) and `dw_neon_f16_c16`
//! (FEAT_FP16 `FMLA .8h`), 16 channels per step, interior runs of 4 tokens as one tile for
//! k = 3, 5, 7.
//!
//! The depthwise kernels' contract (what [`dw`] and [`Params::new`] check): `x` and `out`
//! point at the grid's `ht·wt·dim` elements (readable; writable in the channel range
//! `ch`, whole 16-channel steps, the only ones written), `dim` is a multiple of 16
//! and at most the channel count the `Params` were built for, their weights hold
//! `kernel²·dim` elements (f16 where `HALF` or in f16 arithmetic), and `pad_top`, `pad_left
//! < kernel`. Every offset the kernels form is then inside a buffer: an input tap `((ty +
//! ky − pad_top)·wt + tx + kx − pad_left)·dim + c` is formed only for kernel rows and
//! columns inside the grid ([`taps`], or a [`dw_steps`] tile, all of whose `K + 3` columns
//! from `tx − pad_left` are), weights `(ky·k + kx)·dim + c < k²·dim`, outputs and residuals
//! `t·dim + c` with `t < ht·wt`, channels `c0 + 16 ≤ dim` (`c0 + 8` in the f32 tiles).

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::float::neon::{
    bias_h, finish16_h, finish4, fmla_h, load_w16, store16, widen_hi, widen_lo, Params,
};
use crate::kernels::parts::ChannelsMut;
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Depthwise conv + residual of the view's channels with the NEON kernels; `false`,
/// touching nothing, where they do not take it ([`Params::new`], a padding not below the
/// kernel size, `x` or `out` shorter than the grid, `out` not a `dim`-channel view, or its
/// channels not whole 16-channel steps).
pub(crate) fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut ChannelsMut<'_, M::Act>,
    isa: Isa,
) -> bool {
    let ch = out.channels();
    if !(out.dim() == g.dim
        && ch.start.is_multiple_of(16)
        && ch.end.is_multiple_of(16)
        && g.elements().is_some_and(|n| out.len() >= n && x.len() >= n)
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
    let ch = (ch.start, ch.end);
    // The sealed FloatArith pairs HALF with Act = u16 (f16 bits), else f32: these casts
    // are identities (anything else takes no kernel).
    let o = out.as_mut_ptr();
    if M::HALF {
        let Ok(x) = bytemuck::try_cast_slice::<M::Act, u16>(x) else {
            return false;
        };
        if core::mem::size_of::<M::Act>() != 2 {
            return false;
        }
        // SAFETY: x and out (the view's tensor, of which the kernel writes only the
        // view's channels: parts.rs) hold the grid's ht·wt·dim f16, both paddings are below
        // the kernel size, the view's channels are whole 16-channel steps of dim (checked
        // above); Params::new checked dim % 16 == 0, k·k·dim f16 weights, dim channels of
        // every vector, and FEAT_FP16.
        unsafe { dw_neon_f16_c16(x.as_ptr(), o.cast(), g, &p, act, ch) };
    } else {
        let Ok(x) = bytemuck::try_cast_slice::<M::Act, f32>(x) else {
            return false;
        };
        if core::mem::size_of::<M::Act>() != 4 {
            return false;
        }
        // SAFETY: as above with f32 activations and W's weight elements (HALF = W::HALF).
        unsafe {
            if W::HALF {
                dw_neon_f32_c16::<true>(x.as_ptr(), o.cast(), g, &p, act, ch)
            } else {
                dw_neon_f32_c16::<false>(x.as_ptr(), o.cast(), g, &p, act, ch)
            }
        }
    }
    true
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
    (c_lo, c_hi): (usize, usize),
) {
    let d = g.dim;
    // SAFETY: the depthwise contract: rows ty + ky − pad_top (ky0 ≤ ky < ky1) and columns
    // tx − pad_left .. tx − pad_left + K + 3 are inside the grid, outputs tx..tx + 4 < wt,
    // channels c0 + 8 ≤ c_hi ≤ dim (c_lo, c_hi multiples of 16).
    unsafe {
        for c0 in (c_lo..c_hi).step_by(8) {
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
    ch: (usize, usize),
) {
    let k = g.kernel;
    type Tile = unsafe fn(
        *const f32,
        *mut f32,
        Grid,
        &Params,
        Activation,
        usize,
        usize,
        (usize, usize),
        (usize, usize),
    );
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
            unsafe { f(x, out, g, p, act, ty, tx, ky, ch) };
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
        let d = g.dim;
        // SAFETY: the depthwise contract: taps ky.0..ky.1 and kx0..kx1 are inside the grid,
        // t < ht·wt, channels c0 + 16 ≤ ch.1 ≤ dim.
        unsafe {
            for c0 in (ch.0..ch.1).step_by(16) {
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
    (c_lo, c_hi): (usize, usize),
) {
    let d = g.dim;
    let w = p.w.cast::<u16>();
    // SAFETY: the depthwise contract: rows ty + ky − pad_top (ky0 ≤ ky < ky1) and columns
    // tx − pad_left .. tx − pad_left + K + 3 are inside the grid, outputs tx..tx + 4 < wt,
    // channels c0 + 16 ≤ c_hi ≤ dim; FEAT_FP16 (the caller's).
    unsafe {
        for c0 in (c_lo..c_hi).step_by(16) {
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
unsafe fn dw_neon_f16_c16(
    x: *const u16,
    out: *mut u16,
    g: Grid,
    p: &Params,
    act: Activation,
    ch: (usize, usize),
) {
    let (k, d) = (g.kernel, g.dim);
    let w = p.w.cast::<u16>();
    type Tile = unsafe fn(
        *const u16,
        *mut u16,
        Grid,
        &Params,
        Activation,
        usize,
        usize,
        (usize, usize),
        (usize, usize),
    );
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
            unsafe { f(x, out, g, p, act, ty, tx, ky, ch) };
            continue;
        }
        let (kx0, kx1) = taps(tx, g.pad_left, k, g.wt);
        let t = ty * g.wt + tx;
        // SAFETY: the depthwise contract: taps ky.0..ky.1 and kx0..kx1 are inside the grid,
        // t < ht·wt, channels c0 + 16 ≤ ch.1 ≤ dim; FEAT_FP16 (the caller's).
        unsafe {
            for c0 in (ch.0..ch.1).step_by(16) {
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
