//! The float pointwise conv's reference, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::fgemm_packed_len_checked;
use crate::kernels::float::reference::{FloatArith, FloatLayer};
use crate::le::FloatWeights;
use crate::Activation;

/// Pointwise 1×1 conv + activation + affine: `out[t] = narrow(affine(act(W · x[t] + b)))`,
/// inputs accumulated in order. Weights are packed
/// ([`fgemm_index`](crate::kernels::fgemm_index)).
pub fn pw_f<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
) {
    // dim > 0 also bounds the token loop by x.len().
    let fits = dim > 0
        && tokens
            .checked_mul(dim)
            .is_some_and(|n| x.len() >= n && out.len() >= n)
        && fgemm_packed_len_checked(dim, dim).is_some();
    if !fits {
        return;
    }
    for t in 0..tokens {
        let range = t * dim..(t + 1) * dim;
        let (Some(row), Some(orow)) = (x.get(range.clone()), out.get_mut(range)) else {
            return;
        };
        for (o, y) in orow.iter_mut().enumerate() {
            let mut acc = M::init(l.bias.at(o));
            for (i, v) in row.iter().enumerate() {
                acc = M::mac(
                    acc,
                    l.w.at(crate::kernels::fgemm_index(o, i, dim)),
                    M::widen(*v),
                );
            }
            *y = M::narrow(l.finish(o, act, acc));
        }
    }
}
