//! The float depthwise conv + residual's reference, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::float::reference::{FloatArith, FloatLayer};
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
