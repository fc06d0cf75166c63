//! The MLP-Mixer's fp32 forward pass, observed value by value (calibration): its GEMMs on
//! [`crate::forward::gemm_bt`] (the `gemm` crate, the ConvMixer forward's), its activations
//! those of the ConvMixer forward ([`crate::forward::gelu`], [`crate::forward::act_f32`]),
//! the LayerNorm's mean and variance summed in f64.

use convmixer_edge::Activation;

use super::{Linear, Ln, Mixer};

fn layer_norm(x: &[f32], ln: &Ln, out: &mut [f32]) {
    let d = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / d;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean))
        .sum::<f64>()
        / d;
    let r = 1.0 / (var + f64::from(ln.eps)).sqrt();
    for (c, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = ((f64::from(v) - mean) * r * f64::from(ln.gamma[c]) + f64::from(ln.beta[c])) as f32;
    }
}

/// `out (rows × n_out) = x (rows × n_in) · Wᵀ + b`.
fn apply(l: &Linear, x: &[f32], rows: usize, out: &mut [f32]) {
    crate::forward::gemm_bt(x, &l.w, rows, l.n_in, l.n_out, out);
    for row in out.chunks_exact_mut(l.n_out).take(rows) {
        for (o, b) in row.iter_mut().zip(&l.b) {
            *o += *b;
        }
    }
}

/// The activation of the forward passes: ReLU, GELU by the vectorisable rational erf.
fn act(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Gelu => crate::forward::gelu(x),
        a => crate::forward::act_f32(a, x),
    }
}

/// What [`forward_with`] shows its observer: a value of blob layer `layer` (see
/// [`Mixer::layer_name`]).
#[derive(Clone, Copy, Debug)]
pub enum Seen {
    /// The residual stream after layer `layer` (the embedding or an fc2) added into it.
    Stream(f32),
    /// A LayerNorm's output.
    Norm(f32),
    /// An fc1's pre-activation and activation.
    Hidden(f32, f32),
    /// An fc2's or the embedding's output (before it is added into the stream).
    Branch(f32),
}

/// The logits of `m` for `x`, observing every intermediate value: `see(layer, index, value)`,
/// `index` the value's place in its tensor, row-major — `token·dim + channel` for the
/// stream, a LayerNorm's output and the embedding's; `row·hidden + j` for an fc1's, where a
/// row is a channel (token MLP) or a token (channel MLP); `row·n + i` for an fc2's, `n` its
/// outputs (tokens or channels). `x` is the embedding's
/// input: the normalised NCHW float image for an imported model, raw HWC pixels (as f32)
/// for a folded one (one with its normalisation folded in, [`super::fold`]).
pub fn forward_with(m: &Mixer, x: &[f32], mut see: impl FnMut(usize, usize, Seen)) -> Vec<f32> {
    let folded = !m.mean.is_empty();
    let (t, d, p, c) = (m.tokens(), m.dim, m.patch, m.in_c);
    let gw = m.in_w / p;
    let k = c * p * p;
    let mut patches = vec![0f32; t * k];
    for (tok, patch) in patches.chunks_exact_mut(k.max(1)).enumerate() {
        let (ty, tx) = (tok / gw, tok % gw);
        for ci in 0..c {
            for ky in 0..p {
                for kx in 0..p {
                    let (yy, xx) = (ty * p + ky, tx * p + kx);
                    if folded {
                        patch[(ky * p + kx) * c + ci] = x[(yy * m.in_w + xx) * c + ci];
                    } else {
                        patch[(ci * p + ky) * p + kx] = x[(ci * m.in_h + yy) * m.in_w + xx];
                    }
                }
            }
        }
    }
    let mut s = vec![0f32; t * d];
    apply(&m.embed, &patches, t, &mut s);
    for (i, v) in s.iter().enumerate() {
        see(0, i, Seen::Branch(*v));
        see(0, i, Seen::Stream(*v));
    }
    let mut y = vec![0f32; t * d];
    for (bi, b) in m.blocks.iter().enumerate() {
        for (j, mlp) in [&b.token, &b.channel].into_iter().enumerate() {
            let base = 1 + 6 * bi + 3 * j;
            for (row, out) in s.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                layer_norm(row, &mlp.norm, out);
            }
            for (i, v) in y.iter().enumerate() {
                see(base, i, Seen::Norm(*v));
            }
            // Rows: channels for the token MLP (the transposed LayerNorm output), tokens
            // for the channel MLP.
            let (rows, n) = if j == 0 { (d, t) } else { (t, d) };
            let transposed: Vec<f32>;
            let xin: &[f32] = if j == 0 {
                transposed = (0..d)
                    .flat_map(|r| (0..t).map(move |i| (r, i)))
                    .map(|(r, i)| y[i * d + r])
                    .collect();
                &transposed
            } else {
                &y
            };
            let hidden = mlp.fc1.n_out;
            let mut h = vec![0f32; rows * hidden];
            apply(&mlp.fc1, &xin, rows, &mut h);
            for (i, v) in h.iter_mut().enumerate() {
                let a = act(mlp.act, *v);
                see(base + 1, i, Seen::Hidden(*v, a));
                *v = a;
            }
            let mut o = vec![0f32; rows * n];
            apply(&mlp.fc2, &h, rows, &mut o);
            for (r, orow) in o.chunks_exact(n).enumerate() {
                for (i, v) in orow.iter().enumerate() {
                    see(base + 2, r * n + i, Seen::Branch(*v));
                    s[if j == 0 { i * d + r } else { r * d + i }] += v;
                }
            }
            for (i, v) in s.iter().enumerate() {
                see(base + 2, i, Seen::Stream(*v));
            }
        }
    }
    let fl = m.final_norm();
    for (row, out) in s.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        layer_norm(row, &m.norm, out);
    }
    for (i, v) in y.iter().enumerate() {
        see(fl, i, Seen::Norm(*v));
    }
    let mean: Vec<f32> = (0..d)
        .map(|ch| ((0..t).map(|tok| f64::from(y[tok * d + ch])).sum::<f64>() / t as f64) as f32)
        .collect();
    let mut logits = vec![0f32; m.classes()];
    apply(&m.head, &mean, 1, &mut logits);
    logits
}

/// The logits of an imported (unfolded) model for a normalised NCHW image.
pub fn forward(m: &Mixer, nchw: &[f32]) -> Vec<f32> {
    forward_with(m, nchw, |_, _, _| {})
}

/// The logits of a folded model for raw HWC pixels.
pub fn forward_pixels(m: &Mixer, px: &[u8]) -> Vec<f32> {
    forward_pixels_with(m, px, |_, _, _| {})
}

/// [`forward_with`] of a folded model on raw HWC pixels (calibration, bias correction).
pub fn forward_pixels_with(m: &Mixer, px: &[u8], see: impl FnMut(usize, usize, Seen)) -> Vec<f32> {
    let x: Vec<f32> = px.iter().map(|&v| f32::from(v)).collect();
    forward_with(m, &x, see)
}
