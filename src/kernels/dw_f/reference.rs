//! The float depthwise conv + residual's reference, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::float::reference::{FloatArith, FloatLayer};
use crate::kernels::parts::ChannelsMut;
use crate::kernels::Grid;
use crate::le::FloatWeights;
use crate::Activation;

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
    dw_f_channels::<W, M>(x, g, l, act, &mut ChannelsMut::whole(out, g.dim));
}

/// [`dw_f`] for the view's channels only (of every token): what one core computes of a
/// layer split by channel slices. Nothing is written where `out` is not a `dim`-channel
/// view of at least the grid's elements.
pub fn dw_f_channels<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut ChannelsMut<'_, M::Act>,
) {
    let (k, d) = (g.kernel, g.dim);
    // Below these sizes every index formed here is inside its slice (taps outside the
    // grid are skipped) and computed without overflow; d > 0 and the k²·d weights also
    // bound every loop by a buffer's length.
    let wsz = if W::HALF { 2 } else { 4 };
    let fits = d > 0
        && out.dim() == d
        && g.elements().is_some_and(|n| x.len() >= n && out.len() >= n)
        && k.checked_mul(k)
            .and_then(|kk| kk.checked_mul(d))
            .is_some_and(|n| l.w.bytes().len() / wsz >= n);
    if !fits {
        return;
    }
    let lo = out.channels().start;
    for ty in 0..g.ht {
        for tx in 0..g.wt {
            let t = ty * g.wt + tx;
            let (Some(res), Some(orow)) = (x.get(t * d + lo..(t + 1) * d), out.token(t)) else {
                return;
            };
            for (c, (y, r)) in (lo..).zip(orow.iter_mut().zip(res)) {
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
