//! The float global average pool + linear head, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::float::reference::FloatArith;
use crate::le::{F32Le, FloatWeights};

/// Global average pool + linear head in f32: `logits = b + W · mean_t(x)`.
/// `mean` is a `dim`-long scratch buffer: [`pool_f`] of every channel, then [`logits_f`] of
/// every class.
pub fn head_f<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    mean: &mut [f32],
    logits: &mut [f32],
) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && logits.len().checked_mul(dim).is_some();
    let Some(mean) = mean.get_mut(..dim).filter(|_| fits) else {
        return;
    };
    pool_f::<M>(x, tokens, dim, 0, mean);
    logits_f(mean, dim, w, bias, 0, logits);
}

/// The means `mean[j]` of channels `c0 + j` (one core's share of the pool): the token rows
/// of `x` (`tokens · dim`) added in order, then multiplied by `1 / tokens`. Nothing is
/// written where `x` is shorter or the channels pass `dim`.
///
/// ```
/// use convmixer_edge::kernels::reference::{pool_f, F32Arith};
/// let x = [1.0f32, 2.0, 3.0, 5.0, 6.0, 7.0]; // 2 tokens × 3 channels
/// let mut m = [0f32; 2];
/// pool_f::<F32Arith>(&x, 2, 3, 1, &mut m); // channels 1 and 2
/// assert_eq!(m, [4.0, 5.0]);
/// ```
pub fn pool_f<M: FloatArith>(x: &[M::Act], tokens: usize, dim: usize, c0: usize, mean: &mut [f32]) {
    let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && c0.checked_add(mean.len()).is_some_and(|end| end <= dim);
    if !fits {
        return;
    }
    mean.iter_mut().for_each(|m| *m = 0.0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row.iter().skip(c0)) {
            *m += M::widen(*v);
        }
    }
    let inv = 1.0 / tokens as f32;
    mean.iter_mut().for_each(|m| *m *= inv);
}

/// The logits `logits[j]` of classes `k0 + j` (one core's share of the head) from the
/// pooled `mean` (`dim` values): `acc = bias_c`, then `acc += W_cd · mean_d` for `d` in
/// order (a weight past `w` reads 0). Nothing is written where `mean` is shorter than
/// `dim` or the weight indices overflow.
///
/// ```
/// use convmixer_edge::{kernels::reference::logits_f, le::F32Le};
/// let w: Vec<u8> = [1.0f32, 2.0, -1.0, 0.5].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let b = 0.25f32.to_le_bytes().repeat(2);
/// let mut l = [0f32; 1];
/// logits_f(&[3.0, 4.0], 2, &F32Le(&w), F32Le(&b), 1, &mut l); // class 1
/// assert_eq!(l, [-0.75]);
/// ```
pub fn logits_f<W: FloatWeights>(
    mean: &[f32],
    dim: usize,
    w: &W,
    bias: F32Le<'_>,
    k0: usize,
    logits: &mut [f32],
) {
    let fits = k0
        .checked_add(logits.len())
        .and_then(|e| e.checked_mul(dim))
        .is_some();
    let Some(mean) = mean.get(..dim).filter(|_| fits) else {
        return;
    };
    for (j, out) in logits.iter_mut().enumerate() {
        let c = k0 + j;
        let mut acc = bias.at(c);
        for (d, m) in mean.iter().enumerate() {
            acc += w.at(c * dim + d) * *m;
        }
        *out = acc;
    }
}
