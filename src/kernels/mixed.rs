//! f16 layers inside an int8 model ("mixed precision", `docs/blob-format.md`).
//!
//! `host-tools quantize --accuracy-budget` / `--sqnr-min` keeps the layers that int8 hurts
//! most in float. Such a layer reads the int8 tensor before it, computes exactly as an f16
//! blob's layer does in f32 arithmetic (f16 weights widened to f32, one `fma` per tap in the
//! documented order, activation, affine, residual), and writes its output back as int8 with
//! the tensor's scale and zero point, so the arena and every int8 layer around it stay as
//! they are. What it removes is the layer's own weight, requantisation and GELU-table
//! error, which is where ill-conditioned BatchNorm statistics (tiny variances after the
//! activation) break per-tensor int8.
//!
//! These are plain scalar kernels, used for the few layers a mixed model keeps in float;
//! they run in place with the same scratch as the int8 drivers (those of [`super::gemm_i8`]
//! and [`super::dw_i8`]). Like those, they check their buffers once and do nothing where
//! they do not fit.
#![forbid(unsafe_code)]

use super::dw_i8::{self, Src};
use super::parts::ChannelsMut;
use super::reference::{finish_f32, FloatLayer};
use super::{fgemm_index, fgemm_packed_len_checked, EmbedGeom, Grid};
use crate::le::{F16Le, F32Le, FloatWeights};
use crate::Activation;

/// One f16 layer between int8 tensors: float parameters plus the int8 boundary.
///
/// ```
/// use convmixer_edge::kernels::{mixed::MixedLayer, reference::FloatLayer};
/// use convmixer_edge::le::{F16Le, F32Le};
/// let (s_in, s_out) = (0.5f32.to_le_bytes(), 0.25f32.to_le_bytes());
/// let l = MixedLayer {
///     f: FloatLayer { w: F16Le(&[]), bias: F32Le(&[]), scale: F32Le(&[]), shift: F32Le(&[]), unscale: F32Le(&[]) },
///     s_in: F32Le(&s_in), zp_in: -3, s_out: F32Le(&s_out), zp_out: 10,
/// };
/// assert_eq!(l.dequantize(-1, 0), 1.0);           // 0.5 · (−1 − (−3))
/// assert_eq!(l.quantize(1.0, 0), 14);             // 1.0 / 0.25 + 10
/// assert_eq!(l.quantize(0.375, 0), 12);           // 1.5 rounds to even
/// assert_eq!(l.quantize(1e9, 0), 127);
/// assert_eq!(l.quantize(f32::NAN, 0), 0);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct MixedLayer<'a> {
    /// Weights (f16, laid out as in an f16 blob), bias and affine.
    pub f: FloatLayer<'a, F16Le<'a>>,
    /// Per-channel scales of the int8 input tensor (ignored by the embedding, which reads
    /// pixels).
    pub s_in: F32Le<'a>,
    /// Zero point of the int8 input tensor.
    pub zp_in: i32,
    /// Per-channel scales of the int8 output tensor.
    pub s_out: F32Le<'a>,
    /// Zero point of the int8 output tensor.
    pub zp_out: i32,
}

impl MixedLayer<'_> {
    /// Input channel `c`'s value: `s_in[c] · (q − zp_in)`, one f32 rounding.
    ///
    /// ```
    /// # use convmixer_edge::kernels::{mixed::MixedLayer, reference::FloatLayer};
    /// # use convmixer_edge::le::{F16Le, F32Le};
    /// let s: Vec<u8> = [2f32, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    /// # let l = MixedLayer { f: FloatLayer { w: F16Le(&[]), bias: F32Le(&[]), scale: F32Le(&[]), shift: F32Le(&[]), unscale: F32Le(&[]) }, s_in: F32Le(&s), zp_in: 0, s_out: F32Le(&s), zp_out: 0 };
    /// assert_eq!((l.dequantize(-128, 0), l.dequantize(-128, 1)), (-256.0, -64.0));
    /// ```
    #[inline]
    pub fn dequantize(&self, q: i8, c: usize) -> f32 {
        self.s_in.at(c) * (i32::from(q) - self.zp_in) as f32
    }

    /// Output channel `o`'s int8 value: `clamp(zp_out + rint(y / s_out[o]), −128, 127)` (f32
    /// division, ties to even; NaN gives 0).
    ///
    /// ```
    /// # use convmixer_edge::kernels::{mixed::MixedLayer, reference::FloatLayer};
    /// # use convmixer_edge::le::{F16Le, F32Le};
    /// # let one = 1f32.to_le_bytes();
    /// # let l = MixedLayer { f: FloatLayer { w: F16Le(&[]), bias: F32Le(&[]), scale: F32Le(&[]), shift: F32Le(&[]), unscale: F32Le(&[]) }, s_in: F32Le(&one), zp_in: 0, s_out: F32Le(&one), zp_out: -128 };
    /// assert_eq!(l.quantize(-5.0, 0), -128);
    /// ```
    #[inline]
    pub fn quantize(&self, y: f32, o: usize) -> i8 {
        let q = libm::rintf(y / self.s_out.at(o)) + self.zp_out as f32;
        // `as` saturates and maps NaN to 0.
        q.clamp(-128.0, 127.0) as i8
    }

    #[inline]
    fn finish(&self, o: usize, act: Activation, acc: f32) -> f32 {
        let acc = acc * self.f.unscale.at(o);
        finish_f32(self.f.scale.at(o), self.f.shift.at(o), act, acc)
    }
}

/// The patch embedding in float from raw HWC pixels (as [`super::reference::embed_f`]
/// with f32 arithmetic), quantised into `out` (`tokens · dim` int8). Writes nothing if `px`
/// or `out` is too short.
///
/// ```
/// use convmixer_edge::kernels::{mixed::{self, MixedLayer}, reference::FloatLayer, EmbedGeom};
/// use convmixer_edge::{le::{F16Le, F32Le}, Activation};
/// // 1 channel, 2x2 image, patch 2, dim 1 (packed to 16 outputs): the sum of the pixels.
/// let mut w = vec![0u8; 4 * 16 * 2];
/// for i in 0..4 { w[32 * i..32 * i + 2].copy_from_slice(&half::f16::ONE.to_bits().to_le_bytes()); }
/// let (zero, one) = (0f32.to_le_bytes(), 1f32.to_le_bytes());
/// let f = FloatLayer { w: F16Le(&w), bias: F32Le(&zero), scale: F32Le(&one), shift: F32Le(&zero), unscale: F32Le(&one) };
/// let (one, half) = (1f32.to_le_bytes(), 0.5f32.to_le_bytes());
/// let l = MixedLayer { f, s_in: F32Le(&one), zp_in: -128, s_out: F32Le(&half), zp_out: -128 };
/// let mut out = [0i8];
/// mixed::embed(&[1, 2, 3, 4], EmbedGeom { in_h: 2, in_w: 2, in_c: 1, patch: 2 }, 1, &l, Activation::Relu, &mut out);
/// assert_eq!(out[0], -128 + 20);
/// ```
pub fn embed(
    px: &[u8],
    e: EmbedGeom,
    dim: usize,
    l: &MixedLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    if let Some((ht, wt)) = e.grid(px.len(), dim, out.len()) {
        embed_tokens(px, e, dim, l, act, out, 0..ht * wt);
    }
}

/// [`embed`] for tokens `tokens` only, into `out` (`tokens.len() · dim`, the first token's
/// outputs first): one core's part of an embedding split by token ranges. Writes nothing
/// where the range is not inside the grid or `out` does not hold it.
///
/// ```
/// use convmixer_edge::kernels::{mixed::{self, MixedLayer}, reference::FloatLayer, EmbedGeom};
/// use convmixer_edge::{le::{F16Le, F32Le}, Activation};
/// let mut w = vec![0u8; 16 * 2];
/// w[..2].copy_from_slice(&half::f16::ONE.to_bits().to_le_bytes());
/// let (zero, one) = (0f32.to_le_bytes(), 1f32.to_le_bytes());
/// let f = FloatLayer { w: F16Le(&w), bias: F32Le(&zero), scale: F32Le(&one), shift: F32Le(&zero), unscale: F32Le(&one) };
/// let l = MixedLayer { f, s_in: F32Le(&one), zp_in: 0, s_out: F32Le(&one), zp_out: 0 };
/// let e = EmbedGeom { in_h: 1, in_w: 3, in_c: 1, patch: 1 };
/// let mut part = [0i8; 2];
/// mixed::embed_tokens(&[7, 8, 9], e, 1, &l, Activation::Relu, &mut part, 1..3);
/// assert_eq!(part, [8, 9]);
/// ```
pub fn embed_tokens(
    px: &[u8],
    e: EmbedGeom,
    dim: usize,
    l: &MixedLayer<'_>,
    act: Activation,
    out: &mut [i8],
    tokens: core::ops::Range<usize>,
) {
    super::embed_f::reference::embed_tokens_with(
        px,
        e,
        dim,
        &l.f.w,
        l.f.bias,
        out,
        tokens,
        |o, acc| l.quantize(l.finish(o, act, acc), o),
    );
}

/// One depthwise output token in float: taps in `(ky, kx)` order skipping the padding,
/// then `quantize(affine(act(acc)) + dequantize(residual))`.
#[allow(clippy::too_many_arguments)]
fn dw_token(
    src: Src<'_, '_>,
    ty: usize,
    tx: usize,
    res: &[i8],
    g: Grid,
    l: &MixedLayer<'_>,
    act: Activation,
    out: &mut [i8],
    c0: usize,
) {
    let (k, d) = (g.kernel, g.dim);
    // The k²·d f16 weights must be there (so no weight index overflows, and the tap loops
    // are bounded by the section); one output per channel of `out` and `res`, channels
    // c0.. of the layer.
    let taps = k.checked_mul(k).and_then(|kk| kk.checked_mul(d));
    if taps.is_none_or(|n| l.f.w.0.len() / 2 < n) {
        return;
    }
    let local = out
        .iter_mut()
        .zip(res)
        .take(d.saturating_sub(c0))
        .enumerate();
    for (c, (y, r)) in local {
        let ch = c0 + c;
        let mut acc = l.f.bias.at(ch);
        for ky in 0..k {
            let yy = ty.wrapping_add(ky).wrapping_sub(g.pad_top);
            for kx in 0..k {
                let xx = tx.wrapping_add(kx).wrapping_sub(g.pad_left);
                let inside = (yy < g.ht && xx < g.wt).then(|| src(yy, xx)).flatten();
                if let Some(v) = inside.and_then(|row| row.get(c)) {
                    acc = libm::fmaf(l.f.w.at((ky * k + kx) * d + ch), l.dequantize(*v, ch), acc);
                }
            }
        }
        *y = l.quantize(l.finish(ch, act, acc) + l.dequantize(*r, ch), ch);
    }
}

/// Depthwise conv + residual in float, in place on the int8 tensor `a`, through the same
/// ring and queue as the int8 driver ([`dw_i8::scratch_len`] bytes of `scratch`).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8, mixed::{self, MixedLayer}, reference::FloatLayer, Grid};
/// use convmixer_edge::{le::{F16Le, F32Le}, Activation};
/// let g = Grid { ht: 3, wt: 3, dim: 1, kernel: 3, pad_top: 1, pad_left: 1 };
/// // All-zero weights and affine: the output is the residual, requantised.
/// let w = vec![0u8; 9 * 2];
/// let zero = 0f32.to_le_bytes();
/// let aff = [0u8; 8];
/// let one = 1f32.to_le_bytes();
/// let f = FloatLayer { w: F16Le(&w), bias: F32Le(&zero), scale: F32Le(&aff[..4]), shift: F32Le(&aff[4..]), unscale: F32Le(&one) };
/// let (one, two) = (1f32.to_le_bytes(), 2f32.to_le_bytes());
/// let l = MixedLayer { f, s_in: F32Le(&one), zp_in: 0, s_out: F32Le(&two), zp_out: 0 };
/// let mut a: Vec<i8> = (0..9).map(|i| 2 * i as i8).collect();
/// let mut scratch = vec![0i8; dw_i8::scratch_len(g)];
/// mixed::dw_inplace(&mut a, &mut scratch, g, &l, Activation::Relu);
/// assert_eq!(a, (0..9).collect::<Vec<i8>>());
/// ```
pub fn dw_inplace(a: &mut [i8], scratch: &mut [i8], g: Grid, l: &MixedLayer<'_>, act: Activation) {
    dw_channels(&mut ChannelsMut::whole(a, g.dim), scratch, g, l, act);
}

/// [`dw_inplace`] on one core's channels of the layer (a view from [`ChannelsMut::split`]),
/// with that core's `scratch` ([`dw_i8::scratch_len`] bytes): the parts of a split, in any
/// order or at the same time, give the bytes of one whole run.
///
/// ```
/// # use convmixer_edge::kernels::{dw_i8, mixed::{self, MixedLayer}, parts::ChannelsMut, reference::FloatLayer, Grid};
/// # use convmixer_edge::{le::{F16Le, F32Le}, Activation};
/// # let g = Grid { ht: 3, wt: 3, dim: 2, kernel: 3, pad_top: 1, pad_left: 1 };
/// # let w = vec![0u8; 9 * 2 * 2];
/// # let (zero, aff, one, two) = ([0u8; 8], [0u8; 16], 1f32.to_le_bytes().repeat(2), 2f32.to_le_bytes().repeat(2));
/// # let f = FloatLayer { w: F16Le(&w), bias: F32Le(&zero), scale: F32Le(&aff[..8]), shift: F32Le(&aff[8..]), unscale: F32Le(&one) };
/// # let l = MixedLayer { f, s_in: F32Le(&one), zp_in: 0, s_out: F32Le(&two), zp_out: 0 };
/// let mut a: Vec<i8> = (0..18).map(|i| 2 * i as i8).collect();
/// let mut scratch = vec![0i8; dw_i8::scratch_len(g)];
/// for mut part in ChannelsMut::split(&mut a, 2, 1, 2) {
///     mixed::dw_channels(&mut part, &mut scratch, g, &l, Activation::Relu);
/// }
/// assert_eq!(a, (0..18).collect::<Vec<i8>>());
/// ```
pub fn dw_channels(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &MixedLayer<'_>,
    act: Activation,
) {
    let c0 = a.channels().start;
    dw_i8::dw_inplace_by_token(a, scratch, g, |src, y, x, res, out| {
        dw_token(src, y, x, res, g, l, act, out, c0)
    });
}

/// Pointwise conv in float, in place on the int8 tensor `a` (`tokens · dim`), one token at
/// a time through `scratch` (at least `dim` bytes; the int8 drivers' scratch is larger).
/// Inputs are accumulated in channel order, weights packed as in float blobs.
///
/// ```
/// use convmixer_edge::kernels::{mixed::{self, MixedLayer}, reference::FloatLayer};
/// use convmixer_edge::{le::{F16Le, F32Le}, Activation};
/// // dim 1, weight 3, bias 1, identity affine: out = 3·x + 1.
/// let mut w = vec![0u8; 16 * 2];
/// w[..2].copy_from_slice(&half::f16::from_f32(3.0).to_bits().to_le_bytes());
/// let (one, zero) = (1f32.to_le_bytes(), 0f32.to_le_bytes());
/// let f = FloatLayer { w: F16Le(&w), bias: F32Le(&one), scale: F32Le(&one), shift: F32Le(&zero), unscale: F32Le(&one) };
/// let l = MixedLayer { f, s_in: F32Le(&one), zp_in: 0, s_out: F32Le(&one), zp_out: 0 };
/// let mut a = [0i8, 1, 2, -5];
/// mixed::pw_inplace(&mut a, &mut [0i8; 4], 4, 1, &l, Activation::Relu);
/// assert_eq!(a, [1, 4, 7, 0]);
/// ```
pub fn pw_inplace(
    a: &mut [i8],
    scratch: &mut [i8],
    tokens: usize,
    dim: usize,
    l: &MixedLayer<'_>,
    act: Activation,
) {
    // dim > 0 also bounds the token loop by a.len().
    let fits = dim > 0
        && tokens.checked_mul(dim).is_some_and(|n| a.len() >= n)
        && fgemm_packed_len_checked(dim, dim).is_some();
    let Some(y) = scratch.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    for t in 0..tokens {
        // Inside `a` (checked above), dim long like `y`.
        let Some(x) = a.get_mut(t * dim..(t + 1) * dim) else {
            return;
        };
        for (o, out) in y.iter_mut().enumerate() {
            let mut acc = l.f.bias.at(o);
            for (i, &v) in x.iter().enumerate() {
                acc = libm::fmaf(l.f.w.at(fgemm_index(o, i, dim)), l.dequantize(v, i), acc);
            }
            *out = l.quantize(l.finish(o, act, acc), o);
        }
        x.copy_from_slice(y);
    }
}

/// The head in float after int8 layers: per channel `m_d = (s_in[d] · Σ_t (x_td − zp_in)) /
/// T` (the sum exact in i32, then two f32 roundings), then `logit_c = bias_c + Σ_d W_cd·m_d`
/// with one `fma` per channel in order; `w` is `[class][channel]` f16. `mean` is a
/// `dim`-long scratch. Writes nothing if a slice is too short.
///
/// ```
/// use convmixer_edge::kernels::mixed;
/// use convmixer_edge::le::{F16Le, F32Le};
/// // 2 tokens, 1 channel, scale 0.5, zero point −1; one class with weight 2, bias 1.
/// let (s, b) = (0.5f32.to_le_bytes(), 1f32.to_le_bytes());
/// let w = half::f16::from_f32(2.0).to_bits().to_le_bytes();
/// let (mut mean, mut logits) = ([0i32], [0f32]);
/// mixed::head(&[3, 5], 2, 1, -1, F32Le(&s), F16Le(&w), F32Le(&b), &mut mean, &mut logits);
/// assert_eq!(logits[0], 1.0 + 2.0 * 0.5 * (4.0 + 6.0) / 2.0);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    s_in: F32Le<'_>,
    w: F16Le<'_>,
    bias: F32Le<'_>,
    mean: &mut [i32],
    logits: &mut [f32],
) {
    let classes = logits.len();
    let bytes = |n: usize, size: usize| n.checked_mul(size);
    if tokens.checked_mul(dim).is_none_or(|n| x.len() < n)
        || bytes(dim, 4).is_none_or(|n| s_in.0.len() < n)
        || bytes(classes, 4).is_none_or(|n| bias.0.len() < n)
        || classes
            .checked_mul(dim)
            .and_then(|n| bytes(n, 2))
            .is_none_or(|n| w.0.len() < n)
    {
        return;
    }
    let Some(mean) = mean.get_mut(..dim) else {
        return;
    };
    head_pool(x, tokens, dim, zp_in, 0, mean);
    head_logits(mean, tokens, dim, s_in, w, bias, 0, logits);
}

/// One core's share of [`head`]'s pool: `sums[j] = Σ_t (x_t,c0+j − zp_in)` (wrapping i32;
/// exact for a valid blob) of channels `c0 + j`, the tokens in order. Nothing is written
/// where `x` is shorter or the channels pass `dim`.
///
/// ```
/// use convmixer_edge::kernels::mixed;
/// let mut s = [0i32; 2];
/// mixed::head_pool(&[1, 2, 3, 4, 5, 6], 2, 3, 1, 1, &mut s); // channels 1 and 2
/// assert_eq!(s, [5, 7]);
/// ```
pub fn head_pool(x: &[i8], tokens: usize, dim: usize, zp_in: i32, c0: usize, sums: &mut [i32]) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && c0.checked_add(sums.len()).is_some_and(|end| end <= dim);
    if !fits {
        return;
    }
    sums.iter_mut().for_each(|m| *m = 0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in sums.iter_mut().zip(row.iter().skip(c0)) {
            *m = m.wrapping_add(i32::from(*v).wrapping_sub(zp_in));
        }
    }
}

/// One core's share of [`head`]'s classes: `logits[j]` of classes `k0 + j` from the pool's
/// `sums` (`dim` of them): `acc = bias_c`, then per channel in order
/// `acc = fma(w_cd, (s_in[d] · sums_d) / tokens, acc)`. Nothing is written where a buffer
/// is shorter than those classes need.
///
/// ```
/// use convmixer_edge::{kernels::mixed, le::{F16Le, F32Le}};
/// let (s, b) = (1f32.to_le_bytes(), 0.5f32.to_le_bytes().repeat(2));
/// let w: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect();
/// let mut l = [0f32; 1];
/// mixed::head_logits(&[8], 2, 1, F32Le(&s), F16Le(&w), F32Le(&b), 1, &mut l); // class 1
/// assert_eq!(l, [8.5]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head_logits(
    sums: &[i32],
    tokens: usize,
    dim: usize,
    s_in: F32Le<'_>,
    w: F16Le<'_>,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
) {
    let end = k0.checked_add(logits.len());
    let fits = dim.checked_mul(4).is_some_and(|n| s_in.0.len() >= n)
        && end
            .and_then(|e| e.checked_mul(4))
            .is_some_and(|n| bias.0.len() >= n)
        && end
            .and_then(|e| e.checked_mul(dim))
            .and_then(|n| n.checked_mul(2))
            .is_some_and(|n| w.0.len() >= n);
    let Some(sums) = sums.get(..dim).filter(|_| fits) else {
        return;
    };
    for (j, out) in logits.iter_mut().enumerate() {
        let c = k0 + j;
        let mut acc = bias.at(c);
        for (d, &m) in sums.iter().enumerate() {
            let md = (s_in.at(d) * m as f32) / tokens as f32;
            acc = libm::fmaf(w.at(c * dim + d), md, acc);
        }
        *out = acc;
    }
}

#[cfg(test)]
mod tests {
    //! The in-place drivers against plain out-of-place loops over a copy of the input.
    use super::*;
    use crate::kernels::{dw_i8, fgemm_packed_len};
    use crate::le::F32Le;
    use std::vec::Vec;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self, scale: f32) -> f32 {
            (self.next() % 2001) as f32 / 1000.0 * scale - scale
        }
    }

    fn f16s(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    }
    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Random parameters: weights (`n_w` values), bias, scale, shift and unscale (powers
    /// of two) for `dim` channels.
    fn params(r: &mut Rng, n_w: usize, dim: usize) -> [Vec<u8>; 5] {
        let w: Vec<f32> = (0..n_w).map(|_| r.f(0.5)).collect();
        let b: Vec<f32> = (0..dim).map(|_| r.f(1.0)).collect();
        let s: Vec<f32> = (0..dim).map(|_| r.f(2.0)).collect();
        let t: Vec<f32> = (0..dim).map(|_| r.f(1.0)).collect();
        let u: Vec<f32> = (0..dim)
            .map(|_| 0.5f32.powi((r.next() % 8) as i32))
            .collect();
        [f16s(&w), f32s(&b), f32s(&s), f32s(&t), f32s(&u)]
    }

    /// Per-channel input and output scales for `dim` channels.
    fn scales(r: &mut Rng, dim: usize) -> Vec<u8> {
        (0..2 * dim)
            .flat_map(|_| (0.01 + (r.next() % 100) as f32 / 1000.0).to_le_bytes())
            .collect()
    }

    fn layer<'a>(p: &'a [Vec<u8>; 5], io: &'a [u8], r: &mut Rng) -> MixedLayer<'a> {
        let (s_in, s_out) = io.split_at(io.len() / 2);
        MixedLayer {
            f: FloatLayer {
                w: F16Le(&p[0]),
                bias: F32Le(&p[1]),
                scale: F32Le(&p[2]),
                shift: F32Le(&p[3]),
                unscale: F32Le(&p[4]),
            },
            s_in: F32Le(s_in),
            zp_in: (r.next() % 256) as i32 - 128,
            s_out: F32Le(s_out),
            zp_out: (r.next() % 256) as i32 - 128,
        }
    }

    #[test]
    fn depthwise_in_place_equals_out_of_place() {
        let mut r = Rng(7);
        for (ht, wt, dim, k) in [(5, 7, 3, 3), (4, 4, 16, 5), (6, 3, 5, 1), (3, 9, 2, 7)] {
            let g = Grid {
                ht,
                wt,
                dim,
                kernel: k,
                pad_top: (k - 1) / 2,
                pad_left: (k - 1) / 2,
            };
            let p = params(&mut r, k * k * dim, dim);
            let io = scales(&mut r, dim);
            let l = layer(&p, &io, &mut r);
            let x: Vec<i8> = (0..ht * wt * dim).map(|_| r.next() as i8).collect();
            for act in [Activation::Gelu, Activation::Relu] {
                let mut want = std::vec![0i8; x.len()];
                for ty in 0..ht {
                    for tx in 0..wt {
                        for c in 0..dim {
                            let mut acc = l.f.bias.at(c);
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (y, xx) = (ty + ky, tx + kx);
                                    if y < g.pad_top || xx < g.pad_left {
                                        continue;
                                    }
                                    let (y, xx) = (y - g.pad_top, xx - g.pad_left);
                                    if y >= ht || xx >= wt {
                                        continue;
                                    }
                                    let v = l.dequantize(x[(y * wt + xx) * dim + c], c);
                                    acc = libm::fmaf(l.f.w.at((ky * k + kx) * dim + c), v, acc);
                                }
                            }
                            let t = ty * wt + tx;
                            let y = l.finish(c, act, acc) + l.dequantize(x[t * dim + c], c);
                            want[t * dim + c] = l.quantize(y, c);
                        }
                    }
                }
                let mut a = x.clone();
                let mut scratch = std::vec![0i8; dw_i8::scratch_len(g)];
                dw_inplace(&mut a, &mut scratch, g, &l, act);
                assert_eq!(a, want, "{g:?} {act:?}");
                // Split by channels into 2..=4 cores' parts, last first.
                for parts in 2..=4 {
                    let mut a = x.clone();
                    let mut views = ChannelsMut::split(&mut a, dim, 1, parts);
                    for v in views.iter_mut().rev() {
                        dw_channels(v, &mut scratch, g, &l, act);
                    }
                    drop(views);
                    assert_eq!(a, want, "{g:?} {act:?}: {parts} parts");
                }
                assert!(want.iter().any(|&v| v != want[0]), "degenerate test layer");
            }
        }
    }

    #[test]
    fn pointwise_and_embedding_equal_plain_loops() {
        let mut r = Rng(11);
        for dim in [1usize, 5, 16, 33] {
            let tokens = 6;
            let p = params(&mut r, fgemm_packed_len(dim, dim), dim);
            let io = scales(&mut r, dim);
            let l = layer(&p, &io, &mut r);
            let x: Vec<i8> = (0..tokens * dim).map(|_| r.next() as i8).collect();
            let mut want = std::vec![0i8; x.len()];
            for t in 0..tokens {
                for o in 0..dim {
                    let mut acc = l.f.bias.at(o);
                    for i in 0..dim {
                        let w = l.f.w.at(fgemm_index(o, i, dim));
                        acc = libm::fmaf(w, l.dequantize(x[t * dim + i], i), acc);
                    }
                    want[t * dim + o] = l.quantize(l.finish(o, Activation::Gelu, acc), o);
                }
            }
            let mut a = x.clone();
            pw_inplace(
                &mut a,
                &mut std::vec![0i8; dim],
                tokens,
                dim,
                &l,
                Activation::Gelu,
            );
            assert_eq!(a, want, "dim {dim}");
            // Too little scratch: nothing is written.
            let mut b = x.clone();
            pw_inplace(
                &mut b,
                &mut std::vec![0i8; dim - 1],
                tokens,
                dim,
                &l,
                Activation::Gelu,
            );
            assert_eq!(b, x);
        }
        // Embedding: 3 channels, 6×4 pixels, patch 2 → 3×2 tokens.
        let e = EmbedGeom {
            in_h: 6,
            in_w: 4,
            in_c: 3,
            patch: 2,
        };
        let dim = 7;
        let p = params(&mut r, fgemm_packed_len(dim, e.taps()), dim);
        let io = scales(&mut r, dim);
        let l = layer(&p, &io, &mut r);
        let px: Vec<u8> = (0..6 * 4 * 3).map(|_| r.next() as u8).collect();
        let mut out = std::vec![0i8; 6 * dim];
        embed(&px, e, dim, &l, Activation::Relu, &mut out);
        for t in 0..6 {
            let (ty, tx) = (t / 2, t % 2);
            for o in 0..dim {
                let mut acc = l.f.bias.at(o);
                for ky in 0..2 {
                    for kx in 0..2 {
                        for c in 0..3 {
                            let i = (ky * 2 + kx) * 3 + c;
                            let v = px[((ty * 2 + ky) * 4 + tx * 2 + kx) * 3 + c];
                            acc = libm::fmaf(l.f.w.at(fgemm_index(o, i, 12)), f32::from(v), acc);
                        }
                    }
                }
                let want = l.quantize(l.finish(o, Activation::Relu, acc), o);
                assert_eq!(out[t * dim + o], want, "token {t} channel {o}");
            }
        }
    }

    #[test]
    fn head_equals_a_plain_loop() {
        let mut r = Rng(5);
        let (tokens, dim, classes) = (7, 9, 4);
        let x: Vec<i8> = (0..tokens * dim).map(|_| r.next() as i8).collect();
        let w: Vec<f32> = (0..classes * dim).map(|_| r.f(3.0)).collect();
        let b: Vec<f32> = (0..classes).map(|_| r.f(1.0)).collect();
        let io = scales(&mut r, dim);
        let (wb, bb) = (f16s(&w), f32s(&b));
        let s_in = F32Le(&io[..4 * dim]);
        let zp = 17;
        let mut logits = std::vec![0f32; classes];
        head(
            &x,
            tokens,
            dim,
            zp,
            s_in,
            F16Le(&wb),
            F32Le(&bb),
            &mut std::vec![0i32; dim],
            &mut logits,
        );
        for c in 0..classes {
            let mut acc = b[c];
            for d in 0..dim {
                let sum: i32 = (0..tokens).map(|t| i32::from(x[t * dim + d]) - zp).sum();
                let m = s_in.at(d) * sum as f32 / tokens as f32;
                acc = libm::fmaf(F16Le(&wb).at(c * dim + d), m, acc);
            }
            assert_eq!(logits[c], acc, "class {c}");
        }
        // Split over 2..=4 cores, last part first: the same logits.
        for parts in 2..=4 {
            let (mut sums, mut split) = (std::vec![0i32; dim], std::vec![0f32; classes]);
            let ranges = |n| crate::cores::bounds(n, parts).collect::<Vec<_>>();
            for r in ranges(dim).into_iter().rev() {
                head_pool(&x, tokens, dim, zp, r.start, &mut sums[r]);
            }
            for r in ranges(classes).into_iter().rev() {
                let (k0, l) = (r.start, &mut split[r]);
                head_logits(&sums, tokens, dim, s_in, F16Le(&wb), F32Le(&bb), k0, l);
            }
            assert_eq!(split, logits, "{parts} parts");
        }
        // A scratch too short: nothing written.
        let mut untouched = std::vec![7f32; classes];
        head(
            &x,
            tokens,
            dim,
            zp,
            s_in,
            F16Le(&wb),
            F32Le(&bb),
            &mut std::vec![0i32; dim - 1],
            &mut untouched,
        );
        assert!(untouched.iter().all(|&v| v == 7.0));
    }
}
