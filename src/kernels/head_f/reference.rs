//! The float global average pool + linear head, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::float::reference::FloatArith;
use crate::le::{F32Le, FloatWeights};

/// Global average pool + linear head in f32: `logits = b + W · mean_t(x)`.
/// `mean` is a `dim`-long scratch buffer.
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
    mean.iter_mut().for_each(|m| *m = 0.0);
    // Token rows in order (none where dim = 0: the pool is empty).
    for row in x
        .chunks_exact(dim.max(1))
        .take(if dim > 0 { tokens } else { 0 })
    {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += M::widen(*v);
        }
    }
    let inv = 1.0 / tokens as f32;
    mean.iter_mut().for_each(|m| *m *= inv);
    for (c, out) in logits.iter_mut().enumerate() {
        let mut acc = bias.at(c);
        for (d, m) in mean.iter().enumerate() {
            acc += w.at(c * dim + d) * *m;
        }
        *out = acc;
    }
}
