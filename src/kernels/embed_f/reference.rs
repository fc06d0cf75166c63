//! The float patch embedding's reference, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::float::reference::{F32Arith, FloatArith, FloatLayer};
use crate::kernels::{fgemm_packed_len_checked, EmbedGeom};
use crate::le::{F32Le, FloatWeights};
use crate::Activation;

/// Patch embedding on raw pixels (HWC `u8`), writing `tokens × dim` activations. Weights
/// are packed ([`fgemm_index`](crate::kernels::fgemm_index), input `i = (ky·p + kx)·in_c +
/// c`). Always computed in f32 (the pixel-unit weights make large, cancelling partial
/// sums); the outputs are then narrowed to `M`'s storage.
///
/// ```
/// use convmixer_edge::{kernels::{reference::*, EmbedGeom}, le::F32Le, Activation};
/// let one = 1.0f32.to_le_bytes();
/// let zero = 0.0f32.to_le_bytes();
/// // 1 channel, 2x2 image, patch 2, dim 1 (packed to 16 outputs): sums the four pixels.
/// let mut w = vec![0u8; 4 * 16 * 4];
/// for i in 0..4 { w[64 * i..64 * i + 4].copy_from_slice(&one); }
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&zero), scale: F32Le(&one), shift: F32Le(&zero), unscale: F32Le(&one) };
/// let mut out = [0.0f32];
/// embed_f::<_, F32Arith>(&[1, 2, 3, 4], EmbedGeom { in_h: 2, in_w: 2, in_c: 1, patch: 2 }, 1, &l, Activation::Relu, &mut out);
/// assert_eq!(out[0], 10.0);
/// ```
pub fn embed_f<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
) {
    if let Some((ht, wt)) = g.grid(px.len(), dim, out.len()) {
        embed_f_tokens::<W, M>(px, g, dim, l, act, out, 0..ht * wt);
    }
}

/// [`embed_f`] for tokens `tokens` only, into `out` (`tokens.len() · dim` elements, the
/// first token's outputs first): one core's part of a split embedding. Nothing is written
/// where the range is not inside the grid or `out` does not hold it.
pub fn embed_f_tokens<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    tokens: core::ops::Range<usize>,
) {
    embed_tokens_with(px, g, dim, &l.w, l.bias, out, tokens, |o, acc| {
        M::narrow(l.finish(o, act, acc))
    });
}

/// The patch embedding's sums for tokens `tokens` into `out` (`tokens.len() · dim`, the
/// first token's outputs first): per output `o` of a token, the bias plus each pixel times
/// its packed weight ([`fgemm_index`](crate::kernels::fgemm_index)), one `fma` each in f32,
/// stored as `finish(o, sum)`. The one loop of [`embed_f_tokens`] and of the
/// mixed-precision embedding (`mixed::embed_tokens`, which quantises instead of
/// narrowing). Nothing is written where the range is not inside the grid or `out` does not
/// hold it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed_tokens_with<W: FloatWeights, T>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    out: &mut [T],
    tokens: core::ops::Range<usize>,
    finish: impl Fn(usize, f32) -> T,
) {
    let (p, c) = (g.patch, g.in_c);
    let taps = g.taps();
    // The grid's outputs are checked as if `out` held them all; it holds `tokens`. Below
    // these sizes no index formed here overflows or leaves its slice.
    let grid = g
        .grid(px.len(), dim, usize::MAX)
        .filter(|_| fgemm_packed_len_checked(dim, taps).is_some());
    let Some((ht, wt)) = grid else {
        return;
    };
    if tokens.start > tokens.end || tokens.end > ht * wt || out.len() < tokens.len() * dim {
        return;
    }
    for t in tokens.clone() {
        let (ty, tx) = (t / wt, t % wt);
        let o0 = t - tokens.start;
        let Some(orow) = out.get_mut(o0 * dim..(o0 + 1) * dim) else {
            return;
        };
        for (o, y) in orow.iter_mut().enumerate() {
            let mut acc = bias.at(o);
            let mut i = 0;
            for ky in 0..p {
                let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                for v in px.get(row..row + p * c).unwrap_or_default() {
                    let wv = w.at(crate::kernels::fgemm_index(o, i, taps));
                    acc = F32Arith::mac(acc, wv, f32::from(*v));
                    i += 1;
                }
            }
            *y = finish(o, acc);
        }
    }
}
