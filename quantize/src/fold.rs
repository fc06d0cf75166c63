//! Exact BatchNorm removal and input-normalisation folding: [`Imported`] → [`Folded`].
//!
//! In ConvMixer every BatchNorm follows the activation, and its output feeds both a
//! zero-padded depthwise conv and a residual add, so the textbook fold into the *preceding*
//! conv is wrong. What we do instead (all exact; see `docs/batchnorm-folding.md`):
//!
//! * BN directly after a conv (`Conv → BN → act`): folded into the conv's weights and bias.
//! * BN after the activation: becomes a per-channel `scale·a + shift` applied in the conv's
//!   fused epilogue, where it costs nothing extra (int8: it is part of the requantisation).
//!   Because the stream then holds the true post-BN values, zero padding of the next
//!   depthwise conv and the residual add keep their meaning without any correction.
//! * The last BN (before the average pool) too: it stays in the last conv's epilogue and
//!   the classifier keeps its weights. Folding it into the classifier
//!   (`W·mean(s·a + t) + b = (W·diag(s))·mean(a) + (W·t + b)`) is exact in real numbers but
//!   ill-conditioned in practice: a BN with a tiny variance makes `s` huge and `W·t` a large
//!   offset that cancels, so f16 head weights and the int8 tensor before the head lose
//!   exactly the channels that matter (see `docs/batchnorm-folding.md`).
//! * Input normalisation `(pixel/255 − mean)/std`: folded into the patch embedding, which has
//!   no padding, so `classify()` takes raw `u8` pixels.
//!
//! Arithmetic is done in f64 and rounded to f32 once.

use anyhow::{bail, Result};
use convmixer_edge::Activation;
use rayon::prelude::*;

use crate::onnx::{BatchNorm, ConvUnit, Imported};

/// One conv layer after folding, in the runtime's weight layout (`docs/blob-format.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Weights: embedding `[out][ky][kx][c]` in pixel units, depthwise `[ky][kx][c]`,
    /// pointwise `[out][in]`.
    pub w: Vec<f32>,
    /// Bias per output channel.
    pub b: Vec<f32>,
    /// Post-activation scale per output channel.
    pub scale: Vec<f32>,
    /// Post-activation shift per output channel.
    pub shift: Vec<f32>,
}

/// A ConvMixer with no BatchNorm left, taking raw `u8` pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Folded {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Patch size.
    pub patch: usize,
    /// Mixer width.
    pub dim: usize,
    /// Depthwise kernel size (0 when there are no blocks).
    pub kernel: usize,
    /// Activation.
    pub act: Activation,
    /// Input normalisation mean per channel (0..1 scale), already folded into `embed`.
    pub mean: Vec<f32>,
    /// Input normalisation std per channel, already folded into `embed`.
    pub std: Vec<f32>,
    /// Patch embedding.
    pub embed: Layer,
    /// `(depthwise, pointwise)` per block.
    pub blocks: Vec<(Layer, Layer)>,
    /// Classifier `[classes][dim]`, as in the ONNX.
    pub head_w: Vec<f32>,
    /// Classifier bias.
    pub head_b: Vec<f32>,
}

impl Folded {
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.head_b.len()
    }
    /// Conv layers: the embedding, then a depthwise and a pointwise per block. Layer
    /// `conv_layers()` is the head.
    pub fn conv_layers(&self) -> usize {
        1 + 2 * self.blocks.len()
    }
    /// `embed`, `block I depthwise`, `block I pointwise`, or `head` (past the conv layers):
    /// how every report and log names layer `l`.
    pub fn layer_name(&self, l: usize) -> String {
        match l {
            0 => "embed".into(),
            l if l >= self.conv_layers() => "head".into(),
            l => format!(
                "block {} {}",
                (l - 1) / 2,
                if l % 2 == 1 { "depthwise" } else { "pointwise" }
            ),
        }
    }
    /// Token grid after the embedding.
    pub fn grid(&self) -> (usize, usize) {
        (
            (self.in_h - self.patch) / self.patch + 1,
            (self.in_w - self.patch) / self.patch + 1,
        )
    }
}

/// Per-channel `(scale, shift)` of a BN in f64.
fn bn_affine(bn: &BatchNorm) -> (Vec<f64>, Vec<f64>) {
    let s: Vec<f64> = bn
        .gamma
        .iter()
        .zip(&bn.var)
        .map(|(&g, &v)| f64::from(g) / (f64::from(v) + f64::from(bn.eps)).sqrt())
        .collect();
    let t = bn
        .beta
        .iter()
        .zip(&bn.mean)
        .zip(&s)
        .map(|((&b, &m), &s)| f64::from(b) - f64::from(m) * s)
        .collect();
    (s, t)
}

/// Conv weights/bias in f64 with a pre-activation BN folded in; ONNX layout kept.
fn fold_pre(u: &ConvUnit) -> (Vec<f64>, Vec<f64>) {
    let out = u.shape[0];
    let per = u.w.len() / out;
    let mut w: Vec<f64> = u.w.iter().map(|&v| f64::from(v)).collect();
    let mut b: Vec<f64> = u.b.iter().map(|&v| f64::from(v)).collect();
    if let Some(bn) = &u.bn_pre {
        let (s, t) = bn_affine(bn);
        for o in 0..out {
            w[o * per..(o + 1) * per]
                .iter_mut()
                .for_each(|v| *v *= s[o]);
            b[o] = b[o] * s[o] + t[o];
        }
    }
    (w, b)
}

fn post(u: &ConvUnit) -> (Vec<f64>, Vec<f64>) {
    match &u.bn_post {
        Some(bn) => bn_affine(bn),
        None => (vec![1.0; u.shape[0]], vec![0.0; u.shape[0]]),
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// The [`Layer`] of folded f64 weights `w` and bias `b`, with `u`'s post-activation BN as
/// its epilogue, rounded to f32 once.
fn layer(w: Vec<f64>, b: Vec<f64>, u: &ConvUnit) -> Layer {
    let (s, t) = post(u);
    Layer {
        w: f32s(&w),
        b: f32s(&b),
        scale: f32s(&s),
        shift: f32s(&t),
    }
}

/// Removes every BatchNorm and folds the input normalisation (`mean`, `std` per input
/// channel, in the 0..1 pixel scale; empty slices mean none).
pub fn fold(m: &Imported, mean: &[f32], std: &[f32]) -> Result<Folded> {
    let c = m.in_c;
    let (mean, std) = normalisation(mean, std, c)?;
    let dim = m.dim();
    let p = m.patch();

    let (w, mut b) = fold_pre(&m.embed);
    let ew = embed_in_pixels(&w, &mut b, (dim, c, p), &mean, &std);
    let embed = layer(ew, b, &m.embed);
    // Block by block in parallel (the same arithmetic whatever the threads).
    let blocks: Vec<(Layer, Layer)> = m
        .blocks
        .par_iter()
        .map(|(dw, pw)| {
            let k = dw.shape[2];
            let (w, b) = fold_pre(dw);
            // [c][1][ky][kx] → [ky][kx][c]
            let mut dww = vec![0f64; w.len()];
            for ch in 0..dim {
                for tap in 0..k * k {
                    dww[tap * dim + ch] = w[ch * k * k + tap];
                }
            }
            let depthwise = layer(dww, b, dw);
            let (w, b) = fold_pre(pw);
            (depthwise, layer(w, b, pw))
        })
        .collect();
    let f = Folded {
        in_h: m.in_h,
        in_w: m.in_w,
        in_c: c,
        patch: p,
        dim,
        kernel: m.kernel(),
        act: m.embed.act,
        mean,
        std,
        embed,
        blocks,
        // The classifier keeps its own weights: the last BN, like every other one, stays
        // in the epilogue of the conv before it (module docs: why not into the head).
        head_w: m.head_w.clone(),
        head_b: m.head_b.clone(),
    };
    let conv = std::iter::once(&f.embed).chain(f.blocks.iter().flat_map(|(a, b)| [a, b]));
    for (l, layer) in conv.enumerate() {
        let params = [&layer.w, &layer.b, &layer.scale, &layer.shift];
        if params.iter().any(|v| v.iter().any(|x| !x.is_finite())) {
            bail!(
                "{}: folding its BatchNorms gives a non-finite parameter (a scale γ/√(var + ε) times the weights overflows f32)",
                f.layer_name(l)
            );
        }
    }
    Ok(f)
}

/// Patch-embedding weights `w` (`[o][c][ky][kx]`, on the normalised input) in the runtime's
/// layout `[o][ky][kx][c]` on raw pixels: `(pixel/255 − mean)/std` folded in, the mean's part
/// subtracted from the bias `b` (`shape` = `(dim, c, p)`). Exact in f64: the embedding has
/// no padding.
pub(crate) fn embed_in_pixels(
    w: &[f64],
    b: &mut [f64],
    (dim, c, p): (usize, usize, usize),
    mean: &[f32],
    std: &[f32],
) -> Vec<f64> {
    let mut ew = vec![0f64; w.len()];
    for o in 0..dim {
        for ci in 0..c {
            let s = 255.0 * f64::from(std[ci]);
            for ky in 0..p {
                for kx in 0..p {
                    let v = w[((o * c + ci) * p + ky) * p + kx];
                    ew[((o * p + ky) * p + kx) * c + ci] = v / s;
                    b[o] -= v * f64::from(mean[ci]) / f64::from(std[ci]);
                }
            }
        }
    }
    ew
}

/// The input normalisation per channel of a `c`-channel model from `--mean`/`--std` (one
/// value or one per channel; empty: none, i.e. mean 0 and std 1), checked.
pub(crate) fn normalisation(mean: &[f32], std: &[f32], c: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let mean: Vec<f32> = if mean.is_empty() {
        vec![0.0; c]
    } else {
        broadcast(mean, c, "--mean")?
    };
    let std: Vec<f32> = if std.is_empty() {
        vec![1.0; c]
    } else {
        broadcast(std, c, "--std")?
    };
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!("--std {s}: standard deviations must be positive");
    }
    Ok((mean, std))
}

fn broadcast(v: &[f32], c: usize, what: &str) -> Result<Vec<f32>> {
    match v.len() {
        1 => Ok(vec![v[0]; c]),
        n if n == c => Ok(v.to_vec()),
        n => bail!("{what} has {n} values; the model has {c} input channels (give 1 or {c})"),
    }
}
