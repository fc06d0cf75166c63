//! The int8 depthwise 'same' conv + residual, in plain scalar Rust: the whole layer out of
//! place ([`dw_i8`]) and one output token ([`dw_token_i8`], the unit the in-place
//! ring-and-queue driver schedules).
#![forbid(unsafe_code)]

use crate::kernels::quant::reference::{epilogue_i8, QuantLayer};
use crate::kernels::Grid;
use crate::Activation;

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
            dw_token_i8(&src, ty, tx, res, g, l, act, o, 0);
        }
    }
}

/// Channels `c0 .. c0 + out.len()` of one output token `(ty, tx)` of [`dw_i8`], reading
/// those channels of input token `(y, x)` through `src(y, x)` (only called for positions
/// inside the grid) and of the residual input from `res`. This is the unit the
/// memory-planned driver ([`dw_i8_inplace`](crate::kernels::dw_i8::dw_i8_inplace),
/// [`dw_i8_channels`](crate::kernels::dw_i8::dw_i8_channels)) schedules.
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
    c0: usize,
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
    let local = out
        .iter_mut()
        .zip(res)
        .take(d.saturating_sub(c0))
        .enumerate();
    for (c, (y, r)) in local {
        let ch = c0 + c;
        let mut acc = l.bias.at(ch);
        for ky in 0..k {
            let yy = ty.wrapping_add(ky).wrapping_sub(g.pad_top);
            for kx in 0..k {
                let xx = tx.wrapping_add(kx).wrapping_sub(g.pad_left);
                let inside = (yy < g.ht && xx < g.wt).then(|| src(yy, xx)).flatten();
                let v = match inside.and_then(|row| row.get(c)) {
                    Some(v) => i32::from(*v),
                    None => l.zp_in,
                };
                // In bounds: (ky·k + kx)·d + ch < k²·d ≤ l.w.len() (ch < d), checked on
                // entry (this is the scalar depthwise's innermost loop, where `get` would
                // cost a select).
                #[allow(clippy::indexing_slicing)]
                let w = l.w[(ky * k + kx) * d + ch];
                acc = acc.wrapping_add(i32::from(w).wrapping_mul(v));
            }
        }
        let res = i32::from(*r).wrapping_sub(l.zp_in);
        *y = epilogue_i8(acc, res, &l.requant(ch), l, act);
    }
}
