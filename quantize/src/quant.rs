//! Lowering a [`Folded`] model to a blob: f32, f16 storage, or int8 with fixed-point
//! requantisation (semantics in `docs/blob-format.md`, which the runtime implements).
//!
//! int8 choices: weights symmetric per output channel (`max|w|/127`); activations
//! asymmetric per tensor from the calibrated range (widened to contain 0, so zero padding
//! is exact); biases i32 in accumulator units; GELU by a 256-entry table with i16 outputs
//! (one rounding less than an int8 table), one per layer, which a channel far narrower
//! than the layer's range reads on its linear part, stretched over it (`TableMap`: e.g.
//! a channel on a large offset with a tiny BatchNorm variance); the BatchNorm affine and
//! the residual add fused into one requantisation per output. Every accumulator is checked here, per output
//! channel, never to overflow i32 for any input, and the reader checks it again.

use anyhow::{bail, Result};
use convmixer_edge::blob::{limits, Arch, Header, LayerMask, SectionKind};
use convmixer_edge::kernels::{fgemm_index, fgemm_packed_len, gemm_index, gemm_packed_len};
use convmixer_edge::{Activation, Precision};
use half::f16;

use crate::blob::{f32_bytes, i32_bytes, Sections, Sink, Writer};
use crate::calibrate::{asym, LayerStats};
use crate::fold::{Folded, Layer};

mod table;
pub(crate) use table::GeluTable;
use table::TableMap;

/// Writes `f` as a blob. `stats` (one per conv layer) is required for int8; the int8
/// layers in `f16_layers` are written as f16 layers between int8 tensors (mixed
/// precision; `docs/blob-format.md`). With
/// `input_means` ([`crate::calibrate::input_means`]) the int8 biases are bias-corrected:
/// each channel's bias is shifted by minus the mean error its quantised weights make on the
/// calibration inputs, `Σ_i (w_q,i − w_i) · E[x_i]`. `labels` is empty or one per class.
pub fn lower(
    f: &Folded,
    precision: Precision,
    stats: Option<&[LayerStats]>,
    input_means: Option<&[Vec<f64>]>,
    labels: &[String],
    f16_layers: &LayerMask,
) -> Result<Vec<u8>> {
    let mut h = header(f, precision)?;
    if !f16_layers.is_empty() {
        if precision != Precision::Int8 {
            bail!("per-layer precision applies to int8 models only");
        }
        if let Some(l) = f16_layers
            .iter(LayerMask::CAPACITY)
            .find(|&l| l > h.head_layer())
        {
            bail!(
                "layer {l} marked f16, but the model has {} conv layers and the head ({})",
                h.conv_layers(),
                h.head_layer()
            );
        }
        h.f16_layers = *f16_layers;
    }
    let mut w = Writer::new(h);
    push_norm_and_labels(&mut w, &f.mean, &f.std, labels, f.classes())?;
    // Each conv layer with its index (they are lowered in parallel, pushed in order).
    let layers: Vec<(usize, &Layer)> = std::iter::once(&f.embed)
        .chain(f.blocks.iter().flat_map(|(a, b)| [a, b]))
        .enumerate()
        .collect();
    match precision {
        Precision::F32 | Precision::F16 => {
            // Each layer on a thread of its own, pushed in layer order.
            let per_layer = crate::par::map(&layers, |&(i, l)| {
                let mut s = Sections::new();
                push_float_layer(&mut s, i, l, precision).map(|()| s)
            });
            for s in per_layer {
                w.extend(s?)?;
            }
            let hl = layers.len();
            w.push(SectionKind::Weights, hl, float_bytes(&f.head_w, precision))?;
            w.push(SectionKind::Bias, hl, f32_bytes(&f.head_b))?;
        }
        Precision::Int8 => {
            let Some(stats) = stats else {
                bail!("int8 needs calibration data (--calib)")
            };
            lower_int8(f, &h, &layers, stats, input_means, &mut w)?;
        }
    }
    w.finish()
}

/// The two global sections every blob starts with: NORM (the input normalisation folded
/// into the embedding, kept for reference) and LABELS (empty, or one per class).
pub(crate) fn push_norm_and_labels(
    w: &mut Writer,
    mean: &[f32],
    std: &[f32],
    labels: &[String],
    classes: usize,
) -> Result<()> {
    let norm: Vec<f32> = mean.iter().chain(std).copied().collect();
    w.push(SectionKind::Norm, 0, f32_bytes(&norm))?;
    if !labels.is_empty() && labels.len() != classes {
        bail!(
            "{} labels given for a model with {classes} classes",
            labels.len()
        );
    }
    if let Some(l) = labels.iter().find(|l| l.contains('\n') || l.is_empty()) {
        bail!("label {l:?} is empty or contains a newline");
    }
    w.push(SectionKind::Labels, 0, labels.join("\n").into_bytes())
}

/// f32 or f16 little-endian bytes of `v`.
fn float_bytes(v: &[f32], precision: Precision) -> Vec<u8> {
    if precision == Precision::F16 {
        v.iter()
            .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    } else {
        f32_bytes(v)
    }
}

/// Per output channel of a float layer, the power of two `2^e` its weights and bias are
/// stored multiplied by (AFFINE's `unscale` is `2^−e`): f16 weights are brought up to
/// `max |w| ∈ [0.5, 1)`, so a channel of small weights (a BatchNorm with a tiny variance
/// folded before the activation, a quarter of the ill-conditioned fixture's) keeps them in
/// binary16's normal range instead of its subnormals, whose relative error reaches 10⁻².
/// `e ≤ 24`, and small enough that the bias stays below 2^14 (binary16 arithmetic starts
/// the accumulator at `f16(bias)`). f32 weights are stored as they are (`e = 0`).
fn weight_exponents(l: &Layer, precision: Precision, depthwise: bool) -> Vec<i32> {
    let out = l.b.len();
    if precision != Precision::F16 {
        return vec![0; out];
    }
    let taps = l.w.len() / out.max(1);
    (0..out)
        .map(|o| {
            let at = |t: usize| {
                if depthwise {
                    l.w[t * out + o]
                } else {
                    l.w[o * taps + t]
                }
            };
            let max = (0..taps)
                .map(|t| f64::from(at(t)).abs())
                .fold(0.0, f64::max);
            if max.is_nan() || max <= 0.0 {
                return 0;
            }
            let mut e = (-(max.log2().floor()) - 1.0).clamp(0.0, 24.0) as i32;
            while e > 0 && f64::from(l.b[o]).abs() * 2f64.powi(e) >= 16384.0 {
                e -= 1;
            }
            e
        })
        .collect()
}

/// WEIGHTS, BIAS and AFFINE (scale, shift, unscale) of float conv layer `i` (f32 or f16
/// weights; see [`weight_exponents`]).
fn push_float_layer(w: &mut impl Sink, i: usize, l: &Layer, precision: Precision) -> Result<()> {
    let depthwise = i % 2 == 1;
    let e = weight_exponents(l, precision, depthwise);
    let up = |o: usize| 2f32.powi(e[o]);
    let n = l.b.len();
    // Embedding and pointwise are GEMMs, packed for the SIMD kernels.
    let wv = if !depthwise {
        let k = l.w.len() / n;
        let mut packed = vec![0.0f32; fgemm_packed_len(n, k)];
        for o in 0..n {
            for t in 0..k {
                packed[fgemm_index(o, t, k)] = l.w[o * k + t] * up(o);
            }
        }
        packed
    } else {
        // Tap-major: channel `j % n`.
        l.w.iter()
            .enumerate()
            .map(|(j, &v)| v * up(j % n))
            .collect()
    };
    let bias: Vec<f32> = l.b.iter().enumerate().map(|(o, &b)| b * up(o)).collect();
    let unscale: Vec<f32> = e.iter().map(|&e| 2f32.powi(-e)).collect();
    w.push(SectionKind::Weights, i, float_bytes(&wv, precision))?;
    w.push(SectionKind::Bias, i, f32_bytes(&bias))?;
    w.push(
        SectionKind::Affine,
        i,
        f32_bytes(&[l.scale.clone(), l.shift.clone(), unscale].concat()),
    )
}

fn header(f: &Folded, precision: Precision) -> Result<Header> {
    let k = f.kernel.max(1);
    let dim = u16_of(f.dim, "dim")?;
    let gap_frac_bits = if precision == Precision::Int8 {
        gap_frac_bits(f.dim)
    } else {
        0
    };
    Ok(Header {
        arch: Arch::ConvMixer,
        precision,
        activation: f.act,
        in_c: u8_of(f.in_c, "input channels")?,
        patch: u8_of(f.patch, "patch size")?,
        in_h: u16_of(f.in_h, "input height")?,
        in_w: u16_of(f.in_w, "input width")?,
        dim,
        depth: u16_of(f.blocks.len(), "depth")?,
        kernel: u8_of(k, "kernel")?,
        pad_top: u8_of((k - 1) / 2, "padding")?,
        pad_left: u8_of((k - 1) / 2, "padding")?,
        gap_frac_bits,
        classes: u16_of(f.classes(), "classes")?,
        f16_layers: LayerMask::default(),
        token_hidden: 0,
        channel_hidden: 0,
    })
}

/// A TABLE section from its 256 i16 entries: two byte planes, low bytes then high bytes.
pub(crate) fn table_bytes(entries: &[i16]) -> Vec<u8> {
    let q: Vec<[u8; 2]> = entries.iter().map(|v| v.to_le_bytes()).collect();
    (0..2).flat_map(|b| q.iter().map(move |v| v[b])).collect()
}

/// `v` as a u16 header field, or an error naming `what` is too large.
pub(crate) fn u16_of(v: usize, what: &str) -> Result<u16> {
    u16::try_from(v).map_err(|_| anyhow::anyhow!("{what} {v} is too large for the blob format"))
}

/// `v` as a u8 header field, or an error naming `what` is too large.
pub(crate) fn u8_of(v: usize, what: &str) -> Result<u8> {
    u8::try_from(v).map_err(|_| anyhow::anyhow!("{what} {v} is too large for the blob format"))
}

/// Largest fraction-bit count (≤ 8) for the average pool such that the head's i32
/// accumulator cannot overflow: `127 · 255 · 2^f · dim < 2^31`.
pub fn gap_frac_bits(dim: usize) -> u8 {
    (0..=8u8)
        .rev()
        .find(|&f| 127u64 * 255 * (1u64 << f) * (dim as u64) < 1u64 << 31)
        .unwrap_or(0)
}

/// How much finer than the tensor's scale a channel's may be (2^8): enough for channels
/// whose range is hundreds of times smaller than the tensor's (ill-conditioned BatchNorm),
/// while the requantisation multipliers stay far inside their limits.
pub const CHANNEL_SCALE_RATIO: f64 = 256.0;

/// The int8 quantisation of one activation tensor: one zero point (so that the depthwise
/// padding, the quantised 0.0, is the same for every channel, as the kernels need) and one
/// scale per channel: `x ≈ (q − zp) · scale[c]`.
///
/// Per-channel scales cost nothing at run time: the consumers fold them into what they
/// already have per channel (the depthwise accumulator scale and residual multiplier, the
/// pointwise and head weights, which are quantised after the fold), and the producer's
/// output requantisation is per channel anyway.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorQuant {
    /// Zero point, shared by all channels.
    pub zp: i32,
    /// Scale per channel.
    pub scale: Vec<f64>,
}

impl TensorQuant {
    /// The real value of `q` at flat index `i` (token-major, `i % channels` = channel).
    pub fn dequantize(&self, q: i8, i: usize) -> f64 {
        (f64::from(q) - f64::from(self.zp)) * self.scale[i % self.scale.len()]
    }
}

/// The int8 quantisation of every conv layer's output, as the blob quantises it. The zero
/// point and the coarsest scale come from the tensor's clipping range (`out`); each
/// channel's scale is the finest that still covers the channel's own range (within the
/// clip) with that zero point, at most [`CHANNEL_SCALE_RATIO`] times finer.
pub fn output_quant(stats: &[LayerStats]) -> Vec<TensorQuant> {
    stats
        .iter()
        .map(|s| {
            let (lo, hi) = s.out.with_zero();
            let (st, zp) = asym(lo, hi);
            let (up, down) = (f64::from(127 - zp), f64::from(-128 - zp));
            let scale = s
                .out_ch
                .iter()
                .map(|r| {
                    if r.lo > r.hi {
                        return st;
                    }
                    let hi = f64::from(r.hi.min(s.out.hi).max(0.0));
                    let lo = f64::from(r.lo.max(s.out.lo).min(0.0));
                    let mut sc = 0f64;
                    if up > 0.0 {
                        sc = sc.max(hi / up);
                    }
                    if down < 0.0 {
                        sc = sc.max(lo / down);
                    }
                    sc.clamp(st / CHANNEL_SCALE_RATIO, st)
                })
                .collect();
            TensorQuant { zp, scale }
        })
        .collect()
}

/// `(m, sh)` with `r ≈ m · 2^−31 · 2^−sh` for the runtime's `rq` (`m` in [2^30, 2^31)
/// unless `r` is tiny).
pub fn multiplier(r: f64) -> Result<(i32, i32)> {
    if !(r.is_finite() && r > 0.0) {
        return Ok((0, 0));
    }
    let mut e = r.log2().floor() as i32 + 1;
    let mut m = (r / 2f64.powi(e) * 2f64.powi(31)).round() as i64;
    if m == 1i64 << 31 {
        m /= 2;
        e += 1;
    }
    let sh = -e;
    if sh > limits::SH_PRE_MAX {
        let m = (r * 2f64.powi(31 + limits::SH_PRE_MAX)).round() as i32;
        return Ok((m, limits::SH_PRE_MAX));
    }
    if sh < limits::SH_PRE_MIN {
        bail!("requantisation multiplier {r} is too large (activation ranges are degenerate)");
    }
    Ok((m as i32, sh))
}

/// The post-activation fixed point `(m_post, b_post, sh_post, m_res)` for real factors
/// `ms` (per activation LSB), `bs` (offset) and `rs` (per residual LSB), all in output LSBs.
/// An error if they do not fit even without a shift.
pub(crate) fn post_params(ms: f64, bs: f64, rs: f64) -> Result<(i32, i32, i32, i32)> {
    let fits = |sh: i32| {
        let p = 2f64.powi(sh);
        (ms * p).abs().round() <= f64::from(limits::M_POST_MAX)
            && (bs * p).abs().round() <= f64::from(limits::B_POST_MAX)
            && (rs * p).abs().round() <= f64::from(limits::M_RES_MAX)
    };
    let Some(sh) = (0..=limits::SH_POST_MAX).rev().find(|&s| fits(s)) else {
        bail!("output requantisation out of range (scale {ms}, offset {bs}, residual {rs} output steps): the activation ranges are degenerate");
    };
    let p = 2f64.powi(sh);
    let c = |v: f64| (v * p).round() as i32;
    Ok((c(ms), c(bs), sh, c(rs)))
}

fn lower_int8(
    f: &Folded,
    h: &Header,
    layers: &[(usize, &Layer)],
    stats: &[LayerStats],
    input_means: Option<&[Vec<f64>]>,
    w: &mut Writer,
) -> Result<()> {
    if stats.len() != layers.len() {
        bail!(
            "internal: {} calibration records for {} layers",
            stats.len(),
            layers.len()
        );
    }
    let outq = output_quant(stats);
    // Each layer on a thread of its own ([`lower_int8_layer`]), pushed in layer order; the
    // first error in layer order is the one reported.
    let per_layer = crate::par::map(layers, |&(li, l)| {
        lower_int8_layer(f, h, li, l, stats, &outq, input_means)
    });
    for s in per_layer {
        w.extend(s?)?;
    }
    // Head: average pool to `f` fraction bits, per-class symmetric weights with the input's
    // per-channel scales folded in.
    let (s_x, zp_x) = (&outq[layers.len() - 1].scale, outq[layers.len() - 1].zp);
    let hl = layers.len();
    if h.f16_layers.contains(hl) {
        // The head in float: f16 weights, the input's per-channel scales.
        w.push(
            SectionKind::Weights,
            hl,
            float_bytes(&f.head_w, Precision::F16),
        )?;
        let s: Vec<f32> = s_x.iter().map(|&v| v as f32).collect();
        w.push(SectionKind::IoScale, hl, f32_bytes(&s))?;
        w.push(SectionKind::Bias, hl, f32_bytes(&f.head_b))?;
        w.push(SectionKind::QParams, hl, i32_bytes(&[zp_x, 0, 0, 0]))?;
        return Ok(());
    }
    push_int8_head(w, hl, &f.head_w, &f.head_b, s_x, zp_x, h.gap_frac_bits)
}

/// The sections of int8 conv layer `li` (`l`; or, where the header marks it f16, its float
/// parameters and both int8 boundaries): the weights quantised per output channel, the
/// bias (bias-corrected with `input_means`) and the requantisation records from the
/// calibrated `stats` and the tensors' quantisation `outq`.
fn lower_int8_layer(
    f: &Folded,
    h: &Header,
    li: usize,
    l: &Layer,
    stats: &[LayerStats],
    outq: &[TensorQuant],
    input_means: Option<&[Vec<f64>]>,
) -> Result<Sections> {
    let dim = f.dim;
    let mut sections = Sections::new();
    let w = &mut sections;
    let taps = h.taps(li);
    // Input quantisation: the embedding's int8 input is pixel − 128 (scale 1 in pixel
    // units, zero point −128), else the previous layer's output (a scale per channel).
    let pixels = TensorQuant {
        zp: -128,
        scale: vec![1.0; dim],
    };
    let tin = if li == 0 { &pixels } else { &outq[li - 1] };
    let (s_in, zp_in) = (&tin.scale, tin.zp);
    let (s_out, zp_out) = (&outq[li].scale, outq[li].zp);
    if h.f16_layers.contains(li) {
        // An f16 layer between int8 tensors: float parameters plus both boundaries.
        push_float_layer(w, li, l, Precision::F16)?;
        Sink::push(
            w,
            SectionKind::QParams,
            li,
            i32_bytes(&[zp_in, 0, zp_out, 0]),
        )?;
        let io: Vec<f32> = s_in.iter().chain(s_out).map(|&v| v as f32).collect();
        Sink::push(w, SectionKind::IoScale, li, f32_bytes(&io))?;
        return Ok(sections);
    }
    let depthwise = li % 2 == 1;
    // Per-output-channel symmetric weights, in units of the int8 input: a pointwise
    // layer folds its input's per-channel scales into the weights (then quantised per
    // output channel); a depthwise channel has one input channel, whose scale goes into
    // the accumulator scale below.
    let w_at = |o: usize, t: usize| {
        if depthwise {
            l.w[t * dim + o]
        } else if li == 0 {
            l.w[o * taps + t]
        } else {
            (f64::from(l.w[o * taps + t]) * s_in[t]) as f32
        }
    };
    // What `w_at` folded into tap t (the pointwise input scales), for the bias correction.
    let folded_in = |t: usize| if depthwise || li == 0 { 1.0 } else { s_in[t] };
    let row = |o: usize| -> Vec<f64> { (0..taps).map(|t| f64::from(w_at(o, t))).collect() };
    let outs: Vec<OutputWeights> = (0..dim).map(|o| OutputWeights::new(&row(o))).collect();
    // Activation domain: ReLU's i16 step, or the GELU table over the pre-activation.
    let table = match f.act {
        Activation::Relu => None,
        act => {
            let (lo, hi) = stats[li].pre.with_zero();
            Some(GeluTable::new(act, lo, hi))
        }
    };
    let (target, s_a) = match &table {
        None => {
            let hi = f64::from(stats[li].act.hi.max(0.0)).max(1e-6);
            (hi / 32767.0, hi / 32767.0)
        }
        Some(t) => (t.s_z, t.s_a),
    };
    let mut bias = vec![0i32; dim];
    let mut rq: Vec<[i32; 6]> = Vec::with_capacity(dim);
    for (o, ow) in outs.iter().enumerate() {
        // Accumulator units: weight step × input step (pointwise: folded, 1).
        let acc_scale = if depthwise {
            s_in[o] * ow.step
        } else {
            ow.step
        };
        // Bias correction: minus the mean error of the quantised weights.
        let correction: f64 = input_means.map_or(0.0, |m| {
            let mean = |t: usize| {
                if depthwise {
                    m[li][t * dim + o]
                } else {
                    m[li][t]
                }
            };
            ow.mean_error(&row(o), folded_in, mean)
        });
        let ms = f64::from(l.scale[o]) * s_a / s_out[o];
        let bs = f64::from(l.shift[o]) / s_out[o];
        let rs = if depthwise { s_in[o] / s_out[o] } else { 0.0 };
        // The channel's way into the GELU table (the identity for ReLU and for most
        // GELU channels), then the fixed point; a map that does not fit falls back to
        // the identity, which must fit.
        let map = match (&table, stats[li].pre_ch.get(o)) {
            (Some(t), Some(r)) => TableMap::choose(t, r),
            _ => TableMap::IDENTITY,
        };
        let fixed = |map: &TableMap| -> Result<(i32, [i32; 6])> {
            // The stored bias also takes the map's offset.
            let bq = ow.int32_bias(
                f64::from(l.b[o]) - correction + map.off,
                acc_scale,
                zp_in,
                "; quantise this model with --precision fp16",
            )?;
            let (m_pre, sh_pre) = multiplier(acc_scale * map.k / target)?;
            let (m_post, b_post, sh_post, m_res) = post_params(
                ms * map.p,
                bs + f64::from(l.scale[o]) * map.q / s_out[o],
                rs,
            )?;
            Ok((bq, [m_pre, sh_pre, m_post, b_post, sh_post, m_res]))
        };
        let (b, r) = fixed(&map)
            .or_else(|_| fixed(&TableMap::IDENTITY))
            .map_err(|e| anyhow::anyhow!("{} channel {o}: {e}", f.layer_name(li)))?;
        bias[o] = b;
        rq.push(r);
    }
    // Depthwise weights are stored tap-major (`[tap][out]`), so the kernels load 16
    // channels of one tap at once; the GEMM layers' go in packed for the SIMD kernels.
    let bytes = if depthwise {
        (0..taps * dim)
            .map(|i| outs[i % dim].q[i / dim] as u8)
            .collect()
    } else {
        let wq: Vec<i8> = outs.iter().flat_map(|ow| ow.q.iter().copied()).collect();
        pack_gemm(&wq, dim, taps)
    };
    let zp_z = table.as_ref().map_or(0, |t| t.zp_z);
    let table = table.as_ref().map_or_else(Vec::new, GeluTable::bytes);
    push_int8_layer(w, li, bytes, &bias, &rq, [zp_in, zp_z, zp_out, 0], table)?;
    Ok(sections)
}

/// One output of an int8 layer of either network with its weights quantised symmetrically
/// (per output): the weight step and the int8 weights.
pub(crate) struct OutputWeights {
    /// Real units (of the weights as given) per weight step: `max |w| / 127`, or 1 for an
    /// all-zero output.
    pub(crate) step: f64,
    /// The int8 weights, in the given order.
    pub(crate) q: Vec<i8>,
}

impl OutputWeights {
    /// Quantises `w`, one output's weights (in units of its int8 input's steps).
    pub(crate) fn new(w: &[f64]) -> Self {
        let max = w.iter().fold(0f64, |m, v| m.max(v.abs()));
        let step = if max > 0.0 { max / 127.0 } else { 1.0 };
        let q = w
            .iter()
            .map(|v| (v / step).round().clamp(-127.0, 127.0) as i8)
            .collect();
        OutputWeights { step, q }
    }

    /// The mean error the quantised weights make on the calibration inputs, in real units:
    /// `Σ_t (step·q_t − w_t)/s_in(t)·mean(t)` (`w` as given to [`OutputWeights::new`],
    /// `s_in(t)` what input t's real value was divided by to get `w_t`'s units). Bias
    /// correction subtracts it from the bias.
    pub(crate) fn mean_error(
        &self,
        w: &[f64],
        s_in: impl Fn(usize) -> f64,
        mean: impl Fn(usize) -> f64,
    ) -> f64 {
        w.iter()
            .zip(&self.q)
            .enumerate()
            .map(|(t, (&v, &q))| (self.step * f64::from(q) - v) / s_in(t) * mean(t))
            .sum()
    }

    /// The stored int32 bias of real bias `b` in accumulator units `acc_scale` (weight step
    /// × input step), absorbing the input zero point `zp_in` (`b′ = b − zp_in·Σq`, so that
    /// the kernels multiply raw int8 inputs: docs/blob-format.md); an error (ending in
    /// `hint`) where some int8 input could overflow the accumulator.
    pub(crate) fn int32_bias(&self, b: f64, acc_scale: f64, zp_in: i32, hint: &str) -> Result<i32> {
        let sum: i64 = self.q.iter().map(|&q| i64::from(q)).sum();
        let sum_abs: i64 = self.q.iter().map(|&q| i64::from(q).abs()).sum();
        let bq = (b / acc_scale).round() - f64::from(zp_in) * sum as f64;
        // Every layer's input is int8 (the embedding's: pixel − 128): |x| ≤ 128.
        if bq.abs() + 128.0 * sum_abs as f64 >= 2f64.powi(31) {
            bail!(
                "the int32 accumulator could overflow: |bias| {:.3e} + 128·Σ|w| {} ≥ 2^31 (the bias is huge next to the channel's weights{hint})",
                bq.abs(),
                128 * sum_abs
            );
        }
        Ok(bq as i32)
    }
}

/// `n × k` int8 weights (`[out][in]`) packed for the GEMM kernels ([`gemm_index`]).
pub(crate) fn pack_gemm(wq: &[i8], n: usize, k: usize) -> Vec<u8> {
    let mut packed = vec![0u8; gemm_packed_len(n, k)];
    for o in 0..n {
        for i in 0..k {
            packed[gemm_index(o, i, k)] = wq[o * k + i] as u8;
        }
    }
    packed
}

/// The five sections of one int8 layer of either network: WEIGHTS, BIAS, REQUANT (written
/// field-major: all `m_pre`, then all `sh_pre`, …, docs/blob-format.md), QPARAMS, TABLE.
pub(crate) fn push_int8_layer(
    w: &mut impl Sink,
    layer: usize,
    weights: Vec<u8>,
    bias: &[i32],
    rq: &[[i32; 6]],
    qparams: [i32; 4],
    table: Vec<u8>,
) -> Result<()> {
    w.push(SectionKind::Weights, layer, weights)?;
    w.push(SectionKind::Bias, layer, i32_bytes(bias))?;
    let planar: Vec<i32> = (0..6).flat_map(|f| rq.iter().map(move |r| r[f])).collect();
    w.push(SectionKind::Requant, layer, i32_bytes(&planar))?;
    w.push(SectionKind::QParams, layer, i32_bytes(&qparams))?;
    w.push(SectionKind::Table, layer, table)
}

/// The int8 head (layer `hl`) of both networks: the mean over tokens to `fb` fraction bits
/// (the runtime's pool), per-class symmetric weights with the input's per-channel scales
/// `s_x` folded in (`head_w` is `[classes][dim]`, `dim = s_x.len()`), the f32 bias, and the
/// input's zero point `zp_x`.
pub(crate) fn push_int8_head(
    w: &mut Writer,
    hl: usize,
    head_w: &[f32],
    head_b: &[f32],
    s_x: &[f64],
    zp_x: i32,
    fb: u8,
) -> Result<()> {
    let (classes, dim) = (head_b.len(), s_x.len());
    let mut hw = vec![0u8; classes * dim];
    let mut hs = vec![0f32; classes];
    for c in 0..classes {
        let row: Vec<f64> = (0..dim)
            .map(|d| f64::from(head_w[c * dim + d]) * s_x[d])
            .collect();
        let max = row.iter().fold(0f64, |m, v| m.max(v.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        for (d, v) in row.iter().enumerate() {
            hw[c * dim + d] = ((v / s).round().clamp(-127.0, 127.0) as i8) as u8;
        }
        hs[c] = (s / 2f64.powi(i32::from(fb))) as f32;
    }
    w.push(SectionKind::Weights, hl, hw)?;
    w.push(SectionKind::HeadScale, hl, f32_bytes(&hs))?;
    w.push(SectionKind::Bias, hl, f32_bytes(head_b))?;
    w.push(SectionKind::QParams, hl, i32_bytes(&[zp_x, 0, 0, 0]))
}
