//! [`random_convmixer`]: a deterministic random ConvMixer of any shape, initialised so that
//! its activations and logits stay in a realistic range. The models of `host-tools bench`
//! and of the tests; not part of the quantiser's path, so behind the crate's `random`
//! feature.
//!
//! ```
//! use convmixer_quantize::onnx;
//! use convmixer_quantize::onnx_export::{write_onnx, GeluForm};
//! use convmixer_quantize::random::{random_convmixer, RandomConfig};
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

use anyhow::{bail, Result};
use convmixer_edge::Activation;

use crate::onnx::{BatchNorm, ConvUnit, Imported};
use crate::onnx_export::GeluForm;

/// Shape, activation and seed of a [`random_convmixer`].
///
/// ```
/// use convmixer_quantize::random::RandomConfig;
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
/// (`/0/Conv`, `/3/3.0/fn/fn.0/Conv`, `/3/3.1/Conv`, …), which
/// [`write_onnx`](crate::onnx_export::write_onnx) keeps.
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
/// use convmixer_quantize::random::{random_convmixer, RandomConfig};
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
