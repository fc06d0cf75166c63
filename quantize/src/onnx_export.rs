//! ONNX export: [`Imported`] → ONNX bytes shaped like `torch.onnx.export` output, and
//! [`random_convmixer`], a deterministic random ConvMixer of any shape.
//!
//! The writer is the inverse of [`onnx::import_bytes`](crate::onnx::import_bytes): for
//! every model the importer can return, `import_bytes(&write_onnx(&m, form)?)` gives `m`
//! back, with `opset` set to [`GeluForm::opset`] (and Conv names made unique and
//! non-empty where they were not). The graph follows the PyTorch module
//! layout of the reference ConvMixer (`nn.Sequential` of the patch embedding, `depth`
//! blocks `Sequential(Residual(Sequential(conv, act, BN)), conv, act, BN)`, then pool,
//! flatten and linear), so tensors and initialisers carry the names PyTorch would give
//! them (`0.weight`, `3.0.fn.2.running_var`, `/3/3.1/Conv_output_0`, …):
//!
//! ```text
//! input [batch, C, H, W]
//!   → Conv(k=p, s=p) → [BatchNormalization] → act → [BatchNormalization]
//!   → depth × ( x + (Conv(group=dim, pads 'same') → [BN] → act → [BN]) → Conv 1×1 → [BN] → act → [BN] )
//!   → GlobalAveragePool → Flatten(axis=1) → Gemm(transB=1) → logits [batch, classes]
//! ```
//!
//! ```
//! use convmixer_quantize::onnx;
//! use convmixer_quantize::onnx_export::{random_convmixer, write_onnx, GeluForm, RandomConfig};
//! use convmixer_quantize::Activation;
//!
//! let cfg = RandomConfig {
//!     dim: 16, depth: 2, kernel: 5, patch: 2, in_c: 3, in_h: 16, in_w: 16,
//!     classes: 10, act: Activation::Gelu, seed: 7,
//! };
//! let m = random_convmixer(&cfg)?;
//! let bytes = write_onnx(&m, GeluForm::Erf)?;
//! let back = onnx::import_bytes(&bytes)?;
//! assert_eq!(back, onnx::Imported { opset: GeluForm::Erf.opset(), ..m });
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::HashSet;

use anyhow::{anyhow, bail, Result};
use convmixer_edge::Activation;
use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::onnx::{BatchNorm, ConvUnit, Imported, LABELS_KEY, MEAN_KEY, STD_KEY};

/// How GELU is spelled in the written graph (and, with it, the opset).
///
/// ReLU models are written as `Relu` either way; the form then only picks the opset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluForm {
    /// Element-wise ops as the TorchScript exporter writes them (opset 17, IR version 8):
    /// `Div(x, √2) → Erf → Add(1) → Mul(x, ·) → Mul(·, 0.5)` for GELU, and
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as `Mul`/`Add`/`Tanh` nodes for
    /// the tanh approximation. Scalars are `Constant` nodes.
    Erf,
    /// The `Gelu` op as the dynamo exporter writes it (opset 20, IR version 9), with
    /// `approximate="none"` or `"tanh"`.
    GeluOp,
}

impl GeluForm {
    /// The default-domain opset the form is written with (17 or 20).
    ///
    /// ```
    /// use convmixer_quantize::onnx_export::GeluForm;
    /// assert_eq!(GeluForm::Erf.opset(), 17);
    /// assert_eq!(GeluForm::GeluOp.opset(), 20);
    /// ```
    pub fn opset(self) -> i64 {
        match self {
            GeluForm::Erf => 17,
            GeluForm::GeluOp => 20,
        }
    }

    /// The ONNX IR version written with the form (8 or 9).
    pub fn ir_version(self) -> i64 {
        match self {
            GeluForm::Erf => 8,
            GeluForm::GeluOp => 9,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Random models

/// Shape, activation and seed of a [`random_convmixer`].
///
/// ```
/// use convmixer_quantize::onnx_export::RandomConfig;
/// use convmixer_quantize::Activation;
///
/// // ConvMixer-256/8, patch 2, kernel 5, on CIFAR-sized images.
/// let cfg = RandomConfig {
///     dim: 256, depth: 8, kernel: 5, patch: 2, in_c: 3, in_h: 32, in_w: 32,
///     classes: 10, act: Activation::Gelu, seed: 1,
/// };
/// # let _ = cfg;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RandomConfig {
    /// Mixer width (channels), at least 1.
    pub dim: usize,
    /// Number of mixer blocks (0 allowed).
    pub depth: usize,
    /// Depthwise kernel size, at least 1 (even sizes pad one more row/column after).
    pub kernel: usize,
    /// Patch size (embedding kernel and stride), at least 1 and at most `in_h`, `in_w`.
    pub patch: usize,
    /// Input channels: 1 or 3.
    pub in_c: usize,
    /// Input height in pixels.
    pub in_h: usize,
    /// Input width in pixels.
    pub in_w: usize,
    /// Number of classes, at least 1.
    pub classes: usize,
    /// Activation after every conv.
    pub act: Activation,
    /// Seed of the generator; equal configs give bit-identical models.
    pub seed: u64,
}

/// Largest parameter count [`random_convmixer`] builds (the ONNX protobuf limit is 2 GiB).
pub const MAX_RANDOM_PARAMS: usize = 400_000_000;

/// A deterministic random ConvMixer with the shape of `cfg`, as the importer would return it.
///
/// Every conv unit is `Conv → act → BatchNorm` (`bn_pre: None`, `bn_post` set) with
/// non-trivial BatchNorm statistics: γ = ±U(0.5, 2), β ~ N(0, 1) (clipped at ±3),
/// running mean U(−0.5, 0.5), running variance U(0.2, 3), ε = 1e-5. Depthwise padding is
/// PyTorch's `'same'` (`[(k−1)/2, (k−1)/2, k/2, k/2]`); the patch conv has stride `patch`
/// and no padding. Conv units are named as the TorchScript exporter names the Conv nodes
/// (`/0/Conv`, `/3/3.0/fn/fn.0/Conv`, `/3/3.1/Conv`, …), which [`write_onnx`] keeps.
///
/// Weights are normal with a Kaiming-style fan-in scale that is *measured* rather than
/// predicted: four random probe images (pixels `u8/255`) are run through each layer as it
/// is made, the weights are rescaled so that the pre-activation has unit variance on them
/// (one factor per layer; per channel for the depthwise conv) and the conv bias centres
/// the pre-activation at +1 (the job a trained BatchNorm would do; a random BatchNorm's
/// offsets would otherwise swamp the signal). So activations neither explode nor vanish
/// through any depth, and still depend on the image: the classifier is scaled so that the
/// logits of different random images differ with an RMS of about 3. Generating
/// ConvMixer-768/32 on 112×112 images takes a few seconds (the probes' forward passes).
///
/// The generator is a SplitMix64 stream seeded with `cfg.seed` (no external RNG, `libm`
/// for the transcendental functions), so equal configs give bit-identical models on every
/// platform.
///
/// Errors (one line) on a config the importer could not return: `in_c` other than 1 or 3,
/// zero `dim`, `kernel`, `patch` or `classes`, a patch larger than the image, more than
/// [`MAX_RANDOM_PARAMS`] parameters or an activation over [`MAX_RANDOM_ACTIVATION`] values.
///
/// ```
/// use convmixer_quantize::onnx_export::{random_convmixer, RandomConfig};
/// use convmixer_quantize::Activation;
///
/// let cfg = RandomConfig {
///     dim: 8, depth: 1, kernel: 3, patch: 2, in_c: 1, in_h: 8, in_w: 8,
///     classes: 3, act: Activation::Relu, seed: 42,
/// };
/// let m = random_convmixer(&cfg)?;
/// assert_eq!((m.dim(), m.blocks.len(), m.kernel(), m.patch(), m.classes()), (8, 1, 3, 2, 3));
/// assert_eq!(m.blocks[0].0.pads, [1, 1, 1, 1]);
/// assert!(m.embed.bn_post.is_some() && m.embed.bn_pre.is_none());
/// assert!(random_convmixer(&RandomConfig { in_c: 2, ..cfg }).is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn random_convmixer(cfg: &RandomConfig) -> Result<Imported> {
    let RandomConfig {
        dim,
        depth,
        kernel: k,
        patch: p,
        in_c,
        in_h,
        in_w,
        classes,
        act,
        seed,
    } = *cfg;
    if in_c != 1 && in_c != 3 {
        bail!("random ConvMixer: in_c is {in_c} (expected 1 or 3)");
    }
    if dim == 0 || k == 0 || p == 0 || classes == 0 {
        bail!("random ConvMixer: dim, kernel, patch and classes must be at least 1 (got dim {dim}, kernel {k}, patch {p}, classes {classes})");
    }
    if p > in_h || p > in_w {
        bail!("random ConvMixer: patch {p} is larger than the {in_h}x{in_w} input");
    }
    // Parameter count, overflow-checked: embed, blocks, head (+ BNs and biases).
    let count = || -> Option<usize> {
        let embed = dim.checked_mul(in_c)?.checked_mul(p)?.checked_mul(p)?;
        let block = dim
            .checked_mul(k)?
            .checked_mul(k)?
            .checked_add(dim.checked_mul(dim)?)?
            .checked_add(dim.checked_mul(10)?)?;
        let head = classes.checked_mul(dim)?.checked_add(classes)?;
        embed
            .checked_add(dim.checked_mul(5)?)?
            .checked_add(block.checked_mul(depth)?)?
            .checked_add(head)
    };
    match count() {
        Some(n) if n <= MAX_RANDOM_PARAMS => {}
        _ => bail!("random ConvMixer: more than {MAX_RANDOM_PARAMS} parameters"),
    }

    let pixel_count = in_h.checked_mul(in_w).and_then(|n| n.checked_mul(in_c));
    if pixel_count.is_none_or(|n| n > MAX_RANDOM_ACTIVATION) {
        bail!(
            "random ConvMixer: a {in_h}x{in_w}x{in_c} input exceeds {MAX_RANDOM_ACTIVATION} values"
        );
    }
    let (ht, wt) = ((in_h - p) / p + 1, (in_w - p) / p + 1);
    let tokens = ht * wt;
    if tokens
        .checked_mul(dim)
        .is_none_or(|n| n > MAX_RANDOM_ACTIVATION)
    {
        bail!("random ConvMixer: a {dim}-channel activation over {ht}x{wt} tokens exceeds {MAX_RANDOM_ACTIVATION} values");
    }

    let mut rng = Rng::new(seed);
    // The probe: PROBES random images, run through each layer as it is made.
    let pixels: Vec<Vec<u8>> = (0..PROBES)
        .map(|_| {
            (0..in_h * in_w * in_c)
                .map(|_| (rng.next_u64() >> 56) as u8)
                .collect()
        })
        .collect();
    let geo = Geometry { ht, wt, dim };

    let w = rng.normals(dim * in_c * p * p);
    let raw: Vec<Vec<f32>> = pixels
        .iter()
        .map(|px| embed_raw(px, (in_w, in_c), p, &w, geo))
        .collect();
    let (embed, mut x) = finish_unit(
        &mut rng,
        "/0/Conv",
        [dim, in_c, p, p],
        [0; 4],
        p,
        act,
        w,
        raw,
        false,
        None,
    );
    let same = [(k - 1) / 2, (k - 1) / 2, k / 2, k / 2];
    let mut blocks = Vec::with_capacity(depth);
    for i in 0..depth {
        let b = 3 + i;
        let w = rng.normals(dim * k * k);
        let raw = x.iter().map(|xi| dw_raw(xi, &w, k, same, geo)).collect();
        let name = format!("/{b}/{b}.0/fn/fn.0/Conv");
        let (dw, sum) = finish_unit(
            &mut rng,
            &name,
            [dim, 1, k, k],
            same,
            1,
            act,
            w,
            raw,
            true,
            Some(&x),
        );
        let w = rng.normals(dim * dim);
        let raw = sum.iter().map(|xi| pw_raw(xi, &w, geo)).collect();
        let name = format!("/{b}/{b}.1/Conv");
        let (pw, out) = finish_unit(
            &mut rng,
            &name,
            [dim, dim, 1, 1],
            [0; 4],
            1,
            act,
            w,
            raw,
            false,
            None,
        );
        x = out;
        blocks.push((dw, pw));
    }
    // The classifier: centred on the probes' mean pooled features, scaled for logits that
    // vary between the probe images with RMS LOGIT_RMS.
    let pooled: Vec<Vec<f64>> = x
        .iter()
        .map(|xi| {
            let mut g = vec![0f64; dim];
            for t in xi.chunks_exact(dim) {
                for (a, &v) in g.iter_mut().zip(t) {
                    *a += f64::from(v);
                }
            }
            g.iter().map(|a| a / tokens as f64).collect()
        })
        .collect();
    let n = pooled.len() as f64;
    let centre: Vec<f64> = (0..dim)
        .map(|c| pooled.iter().map(|g| g[c]).sum::<f64>() / n)
        .collect();
    let spread = (0..dim)
        .map(|c| {
            pooled
                .iter()
                .map(|g| (g[c] - centre[c]).powi(2))
                .sum::<f64>()
                / (n - 1.0).max(1.0)
        })
        .sum::<f64>()
        / dim as f64;
    let sigma = if spread > 1e-20 {
        LOGIT_RMS / (dim as f64 * spread).sqrt()
    } else {
        1.0 / (dim as f64).sqrt()
    };
    let mut head_w = Vec::with_capacity(classes * dim);
    let mut head_b = Vec::with_capacity(classes);
    for _ in 0..classes {
        let row: Vec<f64> = (0..dim).map(|_| rng.normal() * sigma).collect();
        let offset: f64 = row.iter().zip(&centre).map(|(w, m)| w * m).sum();
        head_b.push((rng.uniform(-1.0, 1.0) - offset) as f32);
        head_w.extend(row.iter().map(|&w| w as f32));
    }
    Ok(Imported {
        in_c,
        in_h,
        in_w,
        embed,
        blocks,
        head_w,
        head_b,
        opset: GeluForm::Erf.opset(),
    })
}

/// Largest input image (H × W × C) and activation tensor (tokens × dim)
/// [`random_convmixer`] runs its probe images through.
pub const MAX_RANDOM_ACTIVATION: usize = 1 << 25;

/// Target RMS of the random classifier's logits (their variation between probe images).
const LOGIT_RMS: f64 = 3.0;

/// Number of random probe images the initialisation is measured on.
const PROBES: usize = 4;

/// Mean of every pre-activation on the probes (its standard deviation is 1). Centred at
/// 0, ReLU and GELU layers amplify the differences between images (a gain of about 1.5
/// per layer for ReLU), so that over 64 layers any image but the probes drifts far from
/// the scale measured on them; at +1 the gain is close to 1 and the layers still clip.
const PRE_MEAN: f64 = 1.0;

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state, one add and a mix per draw.
/// Floating-point draws use the `libm` crate, so they are the same on every platform.
struct Rng {
    state: u64,
    spare: Option<f64>,
}

impl Rng {
    fn new(seed: u64) -> Self {
        Rng {
            state: seed,
            spare: None,
        }
    }
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)` with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Standard normal (Box–Muller, both of the pair).
    fn normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        let r = (-2.0 * libm::log(1.0 - self.unit())).sqrt();
        let a = std::f64::consts::TAU * self.unit();
        self.spare = Some(r * libm::sin(a));
        r * libm::cos(a)
    }
    fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
    fn sign(&mut self) -> f64 {
        if self.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }
}

/// The token grid and width of the probe activations (token-major `[tokens][dim]`).
#[derive(Clone, Copy)]
struct Geometry {
    ht: usize,
    wt: usize,
    dim: usize,
}

/// Fills `out` in rows of `row` values (the last one may be shorter) by `f(index, row)`,
/// the rows split over the cores.
fn par_tokens(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let row = row.max(1);
    let rows = out.len().div_ceil(row);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per * row).enumerate() {
            let f = &f;
            s.spawn(move || {
                for (j, r) in chunk.chunks_mut(row).enumerate() {
                    f(i * per + j, r);
                }
            });
        }
    });
}

/// Patch embedding without bias: HWC `u8` pixels (as `/255`) → `[tokens][dim]`.
fn embed_raw(px: &[u8], (w, c): (usize, usize), p: usize, wt: &[f32], g: Geometry) -> Vec<f32> {
    // Weights as [ky][kx][c][dim] for a vectorisable inner loop over the outputs.
    let mut t = vec![0f32; wt.len()];
    for o in 0..g.dim {
        for ci in 0..c {
            for ky in 0..p {
                for kx in 0..p {
                    t[((ky * p + kx) * c + ci) * g.dim + o] = wt[((o * c + ci) * p + ky) * p + kx];
                }
            }
        }
    }
    let mut out = vec![0f32; g.ht * g.wt * g.dim];
    par_tokens(&mut out, g.dim, |tok, row| {
        let (ty, tx) = (tok / g.wt, tok % g.wt);
        for ky in 0..p {
            for kx in 0..p {
                for ci in 0..c {
                    let v = f32::from(px[((ty * p + ky) * w + tx * p + kx) * c + ci]) / 255.0;
                    let col = &t[((ky * p + kx) * c + ci) * g.dim..][..g.dim];
                    for (a, &wv) in row.iter_mut().zip(col) {
                        *a += wv * v;
                    }
                }
            }
        }
    });
    out
}

/// Depthwise conv without bias (`w` is `[dim][k][k]`, zero padding `pads`).
fn dw_raw(x: &[f32], w: &[f32], k: usize, pads: [usize; 4], g: Geometry) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for c in 0..g.dim {
        for tap in 0..k * k {
            t[tap * g.dim + c] = w[c * k * k + tap];
        }
    }
    let mut out = vec![0f32; x.len()];
    par_tokens(&mut out, g.dim, |tok, row| {
        let (ty, tx) = (tok / g.wt, tok % g.wt);
        for ky in 0..k {
            let y = (ty + ky).wrapping_sub(pads[0]);
            for kx in 0..k {
                let xx = (tx + kx).wrapping_sub(pads[1]);
                if y >= g.ht || xx >= g.wt {
                    continue;
                }
                let src = &x[(y * g.wt + xx) * g.dim..][..g.dim];
                let col = &t[(ky * k + kx) * g.dim..][..g.dim];
                for ((a, &wv), &v) in row.iter_mut().zip(col).zip(src) {
                    *a += wv * v;
                }
            }
        }
    });
    out
}

/// Pointwise conv without bias (`w` is `[out][in]`), four tokens per pass over the weights.
fn pw_raw(x: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
    const TILE: usize = 4;
    let d = g.dim;
    let mut t = vec![0f32; w.len()];
    for o in 0..d {
        for i in 0..d {
            t[i * d + o] = w[o * d + i];
        }
    }
    let mut out = vec![0f32; x.len()];
    par_tokens(&mut out, d * TILE, |tile, rows| {
        let first = tile * TILE;
        let n = rows.len() / d;
        let mut outs: Vec<&mut [f32]> = rows.chunks_exact_mut(d).collect();
        for i in 0..d {
            let col = &t[i * d..][..d];
            for (j, row) in outs.iter_mut().enumerate().take(n) {
                let v = x[(first + j) * d + i];
                for (a, &wv) in row.iter_mut().zip(col) {
                    *a += wv * v;
                }
            }
        }
    });
    out
}

/// Turns raw N(0, 1) weights `w` and their bias-free outputs on the probes `raw` into a
/// `Conv → act → BN` unit, and returns the probes' outputs of the unit (plus `residual`).
///
/// The weights are rescaled so that the pre-activation has unit variance on the probes
/// (one factor per layer — a data-measured Kaiming fan-in scale — or per channel for the
/// depthwise conv, whose channels see one input channel each), and the bias moves the
/// pre-activation's mean there to [`PRE_MEAN`] ± 0.1: the job a trained BatchNorm does.
/// Without that centring the random BatchNorms' offsets would swamp the input-dependent
/// part of the signal a little more at every layer; without the measurement, errors of
/// any predicted scale would compound over the depth.
#[allow(clippy::too_many_arguments)]
fn finish_unit(
    rng: &mut Rng,
    name: &str,
    shape: [usize; 4],
    pads: [usize; 4],
    stride: usize,
    act: Activation,
    mut w: Vec<f32>,
    mut raw: Vec<Vec<f32>>,
    per_channel: bool,
    residual: Option<&Vec<Vec<f32>>>,
) -> (ConvUnit, Vec<Vec<f32>>) {
    let o = shape[0];
    let mut sum = vec![0f64; o];
    let mut sq = vec![0f64; o];
    let mut n = 0f64;
    for r in &raw {
        for t in r.chunks_exact(o) {
            for ((s, q), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(t) {
                *s += f64::from(v);
                *q += f64::from(v) * f64::from(v);
            }
            n += 1.0;
        }
    }
    let n = n.max(1.0);
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let var: Vec<f64> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0))
        .collect();
    let layer_var = var.iter().sum::<f64>() / o as f64;
    let scale = |v: f64| if v > 1e-20 { 1.0 / v.sqrt() } else { 1.0 };
    let alpha: Vec<f64> = (0..o)
        .map(|c| scale(if per_channel { var[c] } else { layer_var }))
        .collect();
    let per_out = w.len() / o.max(1);
    for (c, wc) in w.chunks_exact_mut(per_out.max(1)).enumerate() {
        for v in wc {
            *v = (f64::from(*v) * alpha[c]) as f32;
        }
    }
    let b: Vec<f32> = (0..o)
        .map(|c| (rng.uniform(-0.1, 0.1) + PRE_MEAN - alpha[c] * mean[c]) as f32)
        .collect();
    let bn = BatchNorm {
        gamma: (0..o)
            .map(|_| (rng.sign() * rng.uniform(0.5, 2.0)) as f32)
            .collect(),
        beta: (0..o)
            .map(|_| rng.normal().clamp(-3.0, 3.0) as f32)
            .collect(),
        mean: (0..o).map(|_| rng.uniform(-0.5, 0.5) as f32).collect(),
        var: (0..o).map(|_| rng.uniform(0.2, 3.0) as f32).collect(),
        eps: 1e-5,
    };
    let s: Vec<f32> = (0..o)
        .map(|c| bn.gamma[c] / (bn.var[c] + bn.eps).sqrt())
        .collect();
    for (img, r) in raw.iter_mut().enumerate() {
        for (t, row) in r.chunks_exact_mut(o).enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                let z = (f64::from(*v) * alpha[c]) as f32 + b[c];
                let mut y = s[c] * (crate::forward::act_f32(act, z) - bn.mean[c]) + bn.beta[c];
                if let Some(res) = residual {
                    y += res[img][t * o + c];
                }
                *v = y;
            }
        }
    }
    let unit = ConvUnit {
        name: name.to_string(),
        w,
        shape,
        b,
        pads,
        stride,
        bn_pre: None,
        act,
        bn_post: Some(bn),
    };
    (unit, raw)
}

// ----------------------------------------------------------------------------------------
// The writer

/// Serialises `m` as an ONNX `ModelProto` shaped like `torch.onnx.export` output.
///
/// The graph has one input `input` of type float and shape `[batch, C, H, W]` (`batch` a
/// `dim_param`) and one output `logits` `[batch, classes]`; Conv nodes carry explicit
/// `dilations`, `group`, `kernel_shape`, `pads` and `strides`; BatchNormalization nodes
/// carry `epsilon` (and `momentum`) with scale, bias, mean and variance as initialisers;
/// the head is `GlobalAveragePool → Flatten(axis=1) → Gemm(transB=1)`. All weights are
/// float initialisers in little-endian `raw_data`. GELU is spelled as `gelu` says (which
/// also fixes the opset: [`GeluForm::opset`]). Conv node names are the units' `name`s
/// (unless empty or already taken, then the TorchScript-style `/0/Conv`, …), so the
/// importer returns them unchanged.
///
/// It accepts exactly what [`onnx::import_bytes`](crate::onnx::import_bytes) can return
/// and errors (one line) on anything else: inconsistent weight, bias or BatchNorm sizes,
/// input channels other than 1 or 3, a padded or overlapping patch embedding, a patch
/// larger than the input, a depthwise conv that is not stride 1 with PyTorch's `'same'`
/// padding, mixed activations or kernels, a head whose size is not `classes × dim`,
/// non-finite parameters or negative variances, and more weights than one protobuf can
/// hold (2 GiB).
///
/// ```
/// use convmixer_quantize::onnx;
/// use convmixer_quantize::onnx_export::{random_convmixer, write_onnx, GeluForm, RandomConfig};
/// use convmixer_quantize::Activation;
///
/// let cfg = RandomConfig {
///     dim: 8, depth: 1, kernel: 3, patch: 2, in_c: 1, in_h: 8, in_w: 8,
///     classes: 3, act: Activation::Gelu, seed: 1,
/// };
/// let mut m = random_convmixer(&cfg)?;
/// let bytes = write_onnx(&m, GeluForm::GeluOp)?; // e.g. std::fs::write("model.onnx", &bytes)
/// assert_eq!(onnx::import_bytes(&bytes)?.blocks, m.blocks);
///
/// m.head_b.pop(); // one bias short of the head's 3 × 8 weights
/// assert!(write_onnx(&m, GeluForm::GeluOp).is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn write_onnx(m: &Imported, gelu: GeluForm) -> Result<Vec<u8>> {
    validate(m)?;
    let dim = m.dim();
    let mut g = Builder {
        form: gelu,
        nodes: Vec::new(),
        inits: Vec::new(),
        names: HashSet::new(),
    };
    let embed_scope = Scope {
        node: "/".to_string(),
        init: String::new(),
    };
    let (mut x, mut next) = g.unit(&m.embed, "input", &embed_scope, 0, 1)?;
    for (dw, pw) in &m.blocks {
        let b = next;
        let res = Scope {
            node: format!("/{b}/{b}.0/fn/fn."),
            init: format!("{b}.0.fn."),
        };
        let (branch, _) = g.unit(dw, &x, &res, 0, dim)?;
        let sum = g.node(
            "Add",
            &format!("/{b}/{b}.0/Add"),
            vec![branch, x.clone()],
            vec![],
        );
        let outer = Scope {
            node: format!("/{b}/{b}."),
            init: format!("{b}."),
        };
        let (out, _) = g.unit(pw, &sum, &outer, 1, 1)?;
        x = out;
        next += 1;
    }
    let pool = g.node(
        "GlobalAveragePool",
        &format!("/{next}/GlobalAveragePool"),
        vec![x],
        vec![],
    );
    let flat = g.node(
        "Flatten",
        &format!("/{}/Flatten", next + 1),
        vec![pool],
        vec![attr_int("axis", 1)],
    );
    let lin = next + 2;
    let classes = m.classes();
    let w = g.init(&format!("{lin}.weight"), &[classes, dim], &m.head_w)?;
    let b = g.init(&format!("{lin}.bias"), &[classes], &m.head_b)?;
    let name = g.unique(&format!("/{lin}/Gemm"));
    g.nodes.push(NodeProto {
        input: vec![flat, w, b],
        output: vec!["logits".to_string()],
        name,
        op_type: "Gemm".to_string(),
        attribute: vec![
            attr_float("alpha", 1.0),
            attr_float("beta", 1.0),
            attr_int("transB", 1),
        ],
        ..Default::default()
    });

    let batch = || dimension::Value::DimParam("batch".to_string());
    let input = value_info(
        "input",
        [
            batch(),
            dim_value(m.in_c)?,
            dim_value(m.in_h)?,
            dim_value(m.in_w)?,
        ],
    );
    let output = value_info("logits", [batch(), dim_value(classes)?]);
    let model = ModelProto {
        ir_version: gelu.ir_version(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: gelu.opset(),
        }],
        producer_name: "convmixer-quantize".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "main_graph".to_string(),
            initializer: g.inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    };
    let len = model.encoded_len();
    if len > i32::MAX as usize {
        bail!("cannot export: the model needs {len} bytes, more than one ONNX protobuf can hold (2 GiB)");
    }
    Ok(model.encode_to_vec())
}

/// Where a unit's nodes and initialisers are named: module `j` is node path
/// `{node}{j}/Op` and initialiser `{init}{j}.weight`.
struct Scope {
    node: String,
    init: String,
}

struct Builder {
    form: GeluForm,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Node names in use.
    names: HashSet<String>,
}

impl Builder {
    /// Adds a node named `name` with one output `{name}_output_0`; returns the output.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        input: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        let out = format!("{name}_output_0");
        let name = self.unique(name);
        self.nodes.push(NodeProto {
            input,
            output: vec![out.clone()],
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// `name`, or `name_1`, `name_2`, … if taken; marks it taken.
    fn unique(&mut self, name: &str) -> String {
        let mut n = name.to_string();
        let mut i = 0;
        while self.names.contains(&n) {
            i += 1;
            n = format!("{name}_{i}");
        }
        self.names.insert(n.clone());
        n
    }

    /// A float initialiser; returns its name.
    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> Result<String> {
        self.inits.push(float_tensor(name, dims, data)?);
        Ok(name.to_string())
    }

    /// A scalar float `Constant` node; returns its output.
    fn constant(&mut self, name: &str, v: f32) -> Result<String> {
        let t = float_tensor("", &[], &[v])?;
        Ok(self.node(
            "Constant",
            name,
            vec![],
            vec![AttributeProto {
                name: "value".to_string(),
                r#type: AttributeType::Tensor as i32,
                t: Some(t),
                ..Default::default()
            }],
        ))
    }

    /// Writes `Conv → [BN] → act → [BN]` reading `x`, as modules `first, first+1, …` of
    /// `scope`. Returns the output and the next free module index.
    fn unit(
        &mut self,
        u: &ConvUnit,
        x: &str,
        scope: &Scope,
        first: usize,
        group: usize,
    ) -> Result<(String, usize)> {
        let mut j = first;
        let path = |j: usize, op: &str| format!("{}{j}/{op}", scope.node);
        let init = |j: usize, what: &str| format!("{}{j}.{what}", scope.init);
        let [o, _, kh, kw] = u.shape;
        let w = self.init(&init(j, "weight"), &u.shape, &u.w)?;
        let b = self.init(&init(j, "bias"), &[o], &u.b)?;
        let [t, l, bo, r] = u.pads;
        let conv_path = path(j, "Conv");
        let out = format!("{conv_path}_output_0");
        let name = if u.name.is_empty() {
            self.unique(&conv_path)
        } else {
            self.unique(&u.name)
        };
        self.nodes.push(NodeProto {
            input: vec![x.to_string(), w, b],
            output: vec![out.clone()],
            name,
            op_type: "Conv".to_string(),
            attribute: vec![
                attr_ints("dilations", &[1, 1])?,
                attr_int("group", group as i64),
                attr_ints("kernel_shape", &[kh, kw])?,
                attr_ints("pads", &[t, l, bo, r])?,
                attr_ints("strides", &[u.stride, u.stride])?,
            ],
            ..Default::default()
        });
        let mut x = out;
        j += 1;
        if let Some(bn) = &u.bn_pre {
            x = self.batchnorm(bn, &x, &path(j, "BatchNormalization"), &init(j, ""))?;
            j += 1;
        }
        x = self.activation(u.act, &x, &format!("{}{j}/", scope.node))?;
        j += 1;
        if let Some(bn) = &u.bn_post {
            x = self.batchnorm(bn, &x, &path(j, "BatchNormalization"), &init(j, ""))?;
            j += 1;
        }
        Ok((x, j))
    }

    /// `prefix` is the initialiser prefix ending in `.` (`2.` → `2.weight`, …).
    fn batchnorm(&mut self, bn: &BatchNorm, x: &str, name: &str, prefix: &str) -> Result<String> {
        let c = bn.gamma.len();
        let mut input = vec![x.to_string()];
        for (what, v) in [
            ("weight", &bn.gamma),
            ("bias", &bn.beta),
            ("running_mean", &bn.mean),
            ("running_var", &bn.var),
        ] {
            input.push(self.init(&format!("{prefix}{what}"), &[c], v)?);
        }
        let mut attribute = vec![attr_float("epsilon", bn.eps), attr_float("momentum", 0.9)];
        if self.form == GeluForm::Erf {
            attribute.push(attr_int("training_mode", 0));
        }
        Ok(self.node("BatchNormalization", name, input, attribute))
    }

    /// The activation of `x`, its nodes named under `path` (`/2/`, `/3/3.0/fn/fn.1/`).
    fn activation(&mut self, act: Activation, x: &str, path: &str) -> Result<String> {
        let x = x.to_string();
        match (act, self.form) {
            (Activation::Relu, _) => Ok(self.node("Relu", &format!("{path}Relu"), vec![x], vec![])),
            (Activation::Gelu | Activation::GeluTanh, GeluForm::GeluOp) => {
                let approx = if act == Activation::Gelu {
                    "none"
                } else {
                    "tanh"
                };
                Ok(self.node(
                    "Gelu",
                    &format!("{path}Gelu"),
                    vec![x],
                    vec![AttributeProto {
                        name: "approximate".to_string(),
                        r#type: AttributeType::String as i32,
                        s: approx.as_bytes().to_vec(),
                        ..Default::default()
                    }],
                ))
            }
            (Activation::Gelu, GeluForm::Erf) => {
                let mut ops = Ops::new(path);
                let sqrt2 = ops.constant(self, std::f32::consts::SQRT_2)?;
                let d = ops.op(self, "Div", x.clone(), sqrt2);
                let e = ops.unary(self, "Erf", d);
                let one = ops.constant(self, 1.0)?;
                let a = ops.op(self, "Add", e, one);
                let m = ops.op(self, "Mul", x, a);
                let half = ops.constant(self, 0.5)?;
                Ok(ops.op(self, "Mul", m, half))
            }
            (Activation::GeluTanh, GeluForm::Erf) => {
                // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x·x·x)))
                let mut ops = Ops::new(path);
                let x2 = ops.op(self, "Mul", x.clone(), x.clone());
                let x3 = ops.op(self, "Mul", x2, x.clone());
                let kappa = ops.constant(self, 0.044715)?;
                let kx3 = ops.op(self, "Mul", x3, kappa);
                let inner = ops.op(self, "Add", x.clone(), kx3);
                let beta = ops.constant(self, (2.0 / std::f64::consts::PI).sqrt() as f32)?;
                let scaled = ops.op(self, "Mul", inner, beta);
                let t = ops.unary(self, "Tanh", scaled);
                let one = ops.constant(self, 1.0)?;
                let a = ops.op(self, "Add", t, one);
                let m = ops.op(self, "Mul", x, a);
                let half = ops.constant(self, 0.5)?;
                Ok(ops.op(self, "Mul", m, half))
            }
        }
    }
}

/// Names element-wise nodes as the TorchScript exporter does: `/2/Mul`, `/2/Mul_1`, ….
struct Ops<'p> {
    path: &'p str,
    used: Vec<(String, usize)>,
}

impl<'p> Ops<'p> {
    fn new(path: &'p str) -> Self {
        Ops { path, used: vec![] }
    }
    fn name(&mut self, op: &str) -> String {
        let n = match self.used.iter_mut().find(|(o, _)| o == op) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.used.push((op.to_string(), 0));
                0
            }
        };
        if n == 0 {
            format!("{}{op}", self.path)
        } else {
            format!("{}{op}_{n}", self.path)
        }
    }
    fn op(&mut self, b: &mut Builder, op: &str, x: String, y: String) -> String {
        let name = self.name(op);
        b.node(op, &name, vec![x, y], vec![])
    }
    fn unary(&mut self, b: &mut Builder, op: &str, x: String) -> String {
        let name = self.name(op);
        b.node(op, &name, vec![x], vec![])
    }
    fn constant(&mut self, b: &mut Builder, v: f32) -> Result<String> {
        let name = self.name("Constant");
        b.constant(&name, v)
    }
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> Result<TensorProto> {
    let dims: Vec<i64> = dims.iter().map(|&d| to_i64(d)).collect::<Result<_>>()?;
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorProto {
        dims,
        data_type: DataType::Float as i32,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    })
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| anyhow!("size {v} does not fit an ONNX dimension"))
}

fn dim_value(v: usize) -> Result<dimension::Value> {
    Ok(dimension::Value::DimValue(to_i64(v)?))
}

fn value_info<const N: usize>(name: &str, dims: [dimension::Value; N]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| pb::tensor_shape_proto::Dimension {
                            value: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> Result<AttributeProto> {
    Ok(AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: v.iter().map(|&x| to_i64(x)).collect::<Result<_>>()?,
        ..Default::default()
    })
}

// ----------------------------------------------------------------------------------------
// Validation: what the importer could have returned

fn validate(m: &Imported) -> Result<()> {
    if m.in_c != 1 && m.in_c != 3 {
        bail!("cannot export: {} input channels (expected 1 or 3)", m.in_c);
    }
    let e = &m.embed;
    let [dim, c, ph, pw] = e.shape;
    if dim == 0 {
        bail!(
            "cannot export: the patch embedding '{}' has no output channels",
            e.name
        );
    }
    if c != m.in_c || ph != pw || ph == 0 || e.pads != [0; 4] || e.stride != ph {
        bail!(
            "cannot export: the patch embedding '{}' must be a square unpadded Conv over {} channels with stride = kernel (found weights {:?}, pads {:?}, stride {})",
            e.name, m.in_c, e.shape, e.pads, e.stride
        );
    }
    if ph > m.in_h || ph > m.in_w {
        bail!(
            "cannot export: patch {ph} is larger than the {}x{} input",
            m.in_h,
            m.in_w
        );
    }
    to_i64(m.in_h)?;
    to_i64(m.in_w)?;
    check_unit(e, m.embed.act)?;
    let k = m.kernel();
    for (i, (dw, pwu)) in m.blocks.iter().enumerate() {
        check_unit(dw, m.embed.act)?;
        check_unit(pwu, m.embed.act)?;
        if dw.shape != [dim, 1, k, k] || k == 0 {
            bail!(
                "cannot export: block {i} depthwise Conv '{}' has weights {:?} (expected [{dim}, 1, {k}, {k}])",
                dw.name, dw.shape
            );
        }
        let same = [(k - 1) / 2, (k - 1) / 2, k / 2, k / 2];
        if dw.pads != same || dw.stride != 1 {
            bail!(
                "cannot export: block {i} depthwise Conv '{}' has pads {:?} stride {} (expected PyTorch 'same' {same:?}, stride 1)",
                dw.name, dw.pads, dw.stride
            );
        }
        if pwu.shape != [dim, dim, 1, 1] || pwu.pads != [0; 4] || pwu.stride != 1 {
            bail!(
                "cannot export: block {i} pointwise Conv '{}' has weights {:?}, pads {:?}, stride {} (expected [{dim}, {dim}, 1, 1], no padding, stride 1)",
                pwu.name, pwu.shape, pwu.pads, pwu.stride
            );
        }
    }
    let classes = m.classes();
    if classes == 0 || Some(m.head_w.len()) != classes.checked_mul(dim) {
        bail!(
            "cannot export: the classifier has {} weights and {classes} biases (expected classes x {dim} weights, at least one class)",
            m.head_w.len()
        );
    }
    finite("the classifier weights", &m.head_w)?;
    finite("the classifier bias", &m.head_b)?;
    Ok(())
}

fn check_unit(u: &ConvUnit, act: Activation) -> Result<()> {
    let n = u.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(u.w.len()) {
        bail!(
            "cannot export: Conv '{}' has {} weights for shape {:?}",
            u.name,
            u.w.len(),
            u.shape
        );
    }
    let o = u.shape[0];
    if u.b.len() != o {
        bail!(
            "cannot export: Conv '{}' has {} biases for {o} output channels",
            u.name,
            u.b.len()
        );
    }
    if u.stride == 0 {
        bail!("cannot export: Conv '{}' has stride 0", u.name);
    }
    if u.act != act {
        bail!(
            "cannot export: Conv '{}' uses {:?} but the embedding {:?} (one activation per model)",
            u.name,
            u.act,
            act
        );
    }
    finite(&u.name, &u.w)?;
    finite(&u.name, &u.b)?;
    for bn in [&u.bn_pre, &u.bn_post].into_iter().flatten() {
        for (what, v) in [
            ("scale", &bn.gamma),
            ("bias", &bn.beta),
            ("running mean", &bn.mean),
            ("running variance", &bn.var),
        ] {
            if v.len() != o {
                bail!(
                    "cannot export: the BatchNorm of Conv '{}' has {} {what} values for {o} channels",
                    u.name,
                    v.len()
                );
            }
            finite(&u.name, v)?;
        }
        if let Some(v) = bn.var.iter().find(|&&v| v < 0.0) {
            bail!(
                "cannot export: the BatchNorm of Conv '{}' has running variance {v}",
                u.name
            );
        }
        if !bn.eps.is_finite() {
            bail!(
                "cannot export: the BatchNorm of Conv '{}' has epsilon {}",
                u.name,
                bn.eps
            );
        }
    }
    Ok(())
}

fn finite(what: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => bail!("cannot export: {what}: parameter {i} is {}", v[i]),
        None => Ok(()),
    }
}

/// Adds the input normalisation `(p/255 − mean_c)/std_c` and the class names to an ONNX
/// file's `metadata_props` (what `host-tools train` writes: `quantize` and `eval` use them
/// when no `--mean`/`--std`/`--labels` is given; [`crate::onnx::normalisation`] and
/// [`crate::onnx::labels`] read them).
///
/// ```
/// use convmixer_quantize::onnx::{self, normalisation};
/// use convmixer_quantize::onnx_export::{random_convmixer, with_normalisation, write_onnx, GeluForm, RandomConfig};
/// use convmixer_quantize::Activation;
///
/// let cfg = RandomConfig {
///     dim: 8, depth: 1, kernel: 3, patch: 2, in_c: 1, in_h: 8, in_w: 8,
///     classes: 3, act: Activation::Relu, seed: 1,
/// };
/// let bytes = write_onnx(&random_convmixer(&cfg)?, GeluForm::Erf)?;
/// assert_eq!(normalisation(&onnx::parse_model(&bytes)?)?, None);
/// let names = ["a".to_string(), "b".into(), "c".into()];
/// let bytes = with_normalisation(&bytes, &[0.1307], &[0.3081], &names)?;
/// let proto = onnx::parse_model(&bytes)?;
/// assert_eq!(normalisation(&proto)?, Some((vec![0.1307], vec![0.3081])));
/// assert_eq!(onnx::labels(&proto), names.to_vec());
/// assert!(onnx::import_bytes(&bytes).is_ok());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn with_normalisation(
    onnx: &[u8],
    mean: &[f32],
    std: &[f32],
    labels: &[String],
) -> Result<Vec<u8>> {
    let mut m = ModelProto::decode(onnx).map_err(|e| anyhow!("not a valid ONNX protobuf ({e})"))?;
    let join = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    m.metadata_props
        .retain(|p| ![MEAN_KEY, STD_KEY, LABELS_KEY].contains(&p.key.as_str()));
    for (key, value) in [
        (MEAN_KEY, join(mean)),
        (STD_KEY, join(std)),
        (LABELS_KEY, labels.join("\n")),
    ] {
        m.metadata_props.push(pb::StringStringEntryProto {
            key: key.to_string(),
            value,
        });
    }
    Ok(m.encode_to_vec())
}
