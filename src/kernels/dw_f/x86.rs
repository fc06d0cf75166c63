//! x86_64 AVX2 float depthwise conv + residual, bit-exact with [`reference::dw_f`] in f32
//! arithmetic (`F32Arith`; f32 weights or f16 widened by `VCVTPH2PS`; `F16Arith` runs the
//! reference), 8 channels per `ymm`: `dw_avx2_f32_8x8`, runs of 8 (then 4) interior tokens
//! of a row (every kernel column inside the row) as one tile, 8 accumulators, each tap's
//! weights loaded once for the tile's tokens and each input a memory operand of its
//! `VFMADD231PS`; the other tokens one at a time, 32 channels (4 accumulators) per step.
//! Each output adds its taps in `(ky, kx)` order, skipping the padding, one rounding each,
//! from the bias; then the reference's epilogue and residual add.
//!
//! [`reference::dw_f`]: crate::kernels::reference::dw_f
//!
//! The depthwise kernels' contract (what [`dw`] and [`Params::new`] check): `x` and `out`
//! point at the grid's `ht·wt·dim` f32 (readable, writable), `dim` is a multiple of 8 and
//! the channel count the `Params` were built for, their weights hold `kernel²·dim`
//! elements (f16 where `HALF`), and `pad_top`, `pad_left < kernel`. Every offset the
//! kernels form is then inside a buffer: an input tap `((ty + ky − pad_top)·wt + tx + kx −
//! pad_left)·dim + c` is formed only for kernel rows and columns inside the grid ([`taps`],
//! or a tile, all of whose `T + kernel − 1` columns from `tx − pad_left` are), weights
//! `(ky·k + kx)·dim + c < k²·dim`, outputs and residuals `t·dim + c` with `t < ht·wt`,
//! channels `c0 + 8 ≤ dim`.

use core::arch::x86_64::*;

use crate::kernels::float::x86::{finish8, load_w8, Params};
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Depthwise conv + residual with the AVX2 kernels; `false`, touching nothing, where they
/// do not take it (`F16Arith`, [`Params::new`], `dim` not a multiple of 8, a padding not
/// below the kernel size, or `x` or `out` shorter than the grid).
pub(crate) fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
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
    if !(g.elements().is_some_and(|n| x.len() >= n && out.len() >= n)
        && g.dim % 8 == 0
        && g.pad_top < g.kernel
        && g.pad_left < g.kernel)
    {
        return false;
    }
    let w_elems = g
        .kernel
        .checked_mul(g.kernel)
        .and_then(|t| t.checked_mul(g.dim));
    let Some(p) = Params::new::<W>(isa, g.dim, l, w_elems) else {
        return false;
    };
    let (x, o) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: x and out hold the grid's ht·wt·dim f32, dim % 8 == 0 and both paddings are
    // below the kernel size (checked above); Params::new checked the CPU's features, dim >
    // 0, k·k·dim weight elements of W (read as HALF = W::HALF) and dim channels of every
    // vector: the depthwise contract.
    unsafe {
        if W::HALF {
            dw_avx2_f32::<true>(x, o, g, &p, act)
        } else {
            dw_avx2_f32::<false>(x, o, g, &p, act)
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

/// Whether the `T` tokens from column `tx` on are interior: every kernel column of each is
/// inside the row (`tx ≥ pad_left`, `tx + T − 1 + k − 1 − pad_left < wt`).
#[inline(always)]
fn interior<const T: usize>(g: &Grid, tx: usize) -> bool {
    tx >= g.pad_left && tx + T + g.kernel <= g.wt + g.pad_left + 1
}

/// Depthwise 'same' conv + residual in f32 arithmetic: `out = fma(scale, act(acc), shift)
/// + x`, row by row, interior runs of 8 or 4 tokens through [`dw_avx2_f32_8x8`], the other
/// tokens through [`dw_token`].
///
/// # Safety
/// The depthwise contract (module docs); `p` holds (so the CPU has AVX2, FMA and F16C).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dw_avx2_f32<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
) {
    for ty in 0..g.ht {
        let ky = taps(ty, g.pad_top, g.kernel, g.ht);
        let mut tx = 0;
        while tx < g.wt {
            // SAFETY: the caller's contract; ty < ht, tx < wt, ky the valid kernel rows of
            // row ty, and the tiles' tokens interior (checked) and inside the row.
            unsafe {
                if interior::<8>(&g, tx) {
                    dw_avx2_f32_8x8::<8, HALF>(x, out, g, p, act, ty, tx, ky);
                    tx += 8;
                } else if interior::<4>(&g, tx) {
                    dw_avx2_f32_8x8::<4, HALF>(x, out, g, p, act, ty, tx, ky);
                    tx += 4;
                } else {
                    dw_token::<HALF>(x, out, g, p, act, ty, tx, ky);
                    tx += 1;
                }
            }
        }
    }
}

/// `T` (8 or 4) interior output tokens `tx..tx + T` of row `ty`, 8 channels at a time:
/// `T` accumulators; per tap one weight load (and widening) and `T` `VFMADD231PS` with the
/// inputs as memory operands (each output's taps in `(ky, kx)` order).
///
/// # Safety
/// The depthwise contract (module docs); `p` holds; `ty < ht`, `(ky0, ky1)` the valid
/// kernel rows of row `ty`, and the `T` tokens from `tx` interior ([`interior`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2_f32_8x8<const T: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    ty: usize,
    tx: usize,
    (ky0, ky1): (usize, usize),
) {
    let (d, k) = (g.dim, g.kernel);
    // SAFETY: the depthwise contract: rows ty + ky − pad_top (ky0 ≤ ky < ky1) and columns
    // tx − pad_left .. tx − pad_left + T + k − 1 are inside the grid, outputs tx..tx + T ≤
    // wt, channels c0 + 8 ≤ dim, weights (ky·k + kx)·dim + c0 + 8 ≤ k²·dim; the features
    // are the caller's.
    unsafe {
        for c0 in (0..d).step_by(8) {
            let mut acc = [p.bias8(c0); T];
            for ky in ky0..ky1 {
                let row = x.add(((ty + ky - g.pad_top) * g.wt + tx - g.pad_left) * d + c0);
                let wr = ky * k * d + c0;
                for kx in 0..k {
                    let wv = load_w8::<HALF>(p.w(), wr + kx * d);
                    let xp = row.add(kx * d);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(j * d)), *a);
                    }
                }
            }
            for (j, a) in acc.into_iter().enumerate() {
                let t = (ty * g.wt + tx + j) * d + c0;
                let y = _mm256_add_ps(finish8(p, c0, act, a), _mm256_loadu_ps(x.add(t)));
                _mm256_storeu_ps(out.add(t), y);
            }
        }
    }
}

/// One token `(ty, tx)` (any, the border's included: only its taps inside the grid), 32
/// channels (4 accumulators) per step, then 8.
///
/// # Safety
/// The depthwise contract (module docs); `p` holds; `ty < ht`, `tx < wt`, `ky` the valid
/// kernel rows of row `ty`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_token<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    ty: usize,
    tx: usize,
    ky: (usize, usize),
) {
    let kx = taps(tx, g.pad_left, g.kernel, g.wt);
    let mut c0 = 0;
    // SAFETY: channels c0 + 32 ≤ dim, then c0 + 8 ≤ dim (dim % 8 == 0); the rest is the
    // caller's.
    unsafe {
        while c0 + 32 <= g.dim {
            dw_token_c::<4, HALF>(x, out, g, p, act, (ty, tx), (ky, kx), c0);
            c0 += 32;
        }
        while c0 < g.dim {
            dw_token_c::<1, HALF>(x, out, g, p, act, (ty, tx), (ky, kx), c0);
            c0 += 8;
        }
    }
}

/// Channels `c0..c0 + 8·C` of token `(ty, tx)`, taps `ky.0..ky.1` × `kx.0..kx.1`.
///
/// # Safety
/// The depthwise contract (module docs); `p` holds; `ty < ht`, `tx < wt`, `ky` and `kx` the
/// valid kernel rows and columns of the token, `c0 + 8·C ≤ dim`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_token_c<const C: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    (ty, tx): (usize, usize),
    (ky, kx): ((usize, usize), (usize, usize)),
    c0: usize,
) {
    let (d, k) = (g.dim, g.kernel);
    let t = (ty * g.wt + tx) * d + c0;
    // SAFETY: the depthwise contract: taps ky.0..ky.1 and kx.0..kx.1 are inside the grid,
    // t < ht·wt·dim with channels c0 + 8·C ≤ dim, weights (ky·k + kx)·dim + c0 + 8·C ≤
    // k²·dim; the features are the caller's.
    unsafe {
        let mut acc: [__m256; C] = core::array::from_fn(|r| p.bias8(c0 + 8 * r));
        for ky in ky.0..ky.1 {
            let row = x.add((ty + ky - g.pad_top) * g.wt * d + c0);
            for kx in kx.0..kx.1 {
                let xp = row.add((tx + kx - g.pad_left) * d);
                let we = (ky * k + kx) * d + c0;
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = load_w8::<HALF>(p.w(), we + 8 * r);
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(8 * r)), *a);
                }
            }
        }
        for (r, a) in acc.into_iter().enumerate() {
            let y = _mm256_add_ps(
                finish8(p, c0 + 8 * r, act, a),
                _mm256_loadu_ps(x.add(t + 8 * r)),
            );
            _mm256_storeu_ps(out.add(t + 8 * r), y);
        }
    }
}
