//! The MLP-Mixer's calibration (min/max of every tensor the int8 blob quantises) and its
//! lowering to the int8 blob (`docs/blob-format.md`, "MLP-Mixer").

use anyhow::{anyhow, bail, Result};
use convmixer_edge::blob::{mixer_limits, Arch, Header, LayerMask, SectionKind};
use convmixer_edge::{Activation, Precision};

use super::forward::{forward_pixels_with, Seen};
use super::{Linear, Ln, Mixer};
use crate::blob::{i32_bytes, Writer};
use crate::calibrate::{asym, clip, means_of, patch_sums, tensor_histograms, Method, Range};
use crate::quant::{
    gap_frac_bits, multiplier, post_params, u16_of, u8_of, GeluTable, OutputWeights,
};

/// The ranges of one folded model over a calibration set, per blob layer.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// The residual stream, over all layers.
    pub stream: Range,
    /// Per layer: LayerNorm output, fc1 pre-activation, fc2/embedding output.
    pub out: Vec<Range>,
    /// Per layer: fc1 activation output.
    pub act: Vec<Range>,
}

impl Stats {
    /// The union of both ranges, tensor by tensor.
    fn merge(mut self, o: Stats) -> Stats {
        self.stream.merge(&o.stream);
        for (a, b) in self.out.iter_mut().zip(&o.out) {
            a.merge(b);
        }
        for (a, b) in self.act.iter_mut().zip(&o.act) {
            a.merge(b);
        }
        self
    }
}

/// Min/max of every tensor the int8 blob quantises, over `images` (raw HWC pixels), in
/// parallel over the images ([`crate::par`]).
pub fn calibrate<I: AsRef<[u8]> + Sync>(
    f: &Mixer,
    images: &[I],
    progress: &(dyn Fn() + Sync),
) -> Stats {
    let layers = f.layers();
    let empty = Stats {
        stream: Range::default(),
        out: vec![Range::default(); layers],
        act: vec![Range::default(); layers],
    };
    let one = |img: &I| {
        let mut s = empty.clone();
        forward_pixels_with(f, img.as_ref(), |l, _, seen| match seen {
            Seen::Stream(v) => s.stream.add(v),
            Seen::Norm(v) | Seen::Branch(v) => s.out[l].add(v),
            Seen::Hidden(pre, a) => {
                s.out[l].add(pre);
                s.act[l].add(a);
            }
        });
        s
    };
    crate::par::map_fold(images, empty.clone(), one, Stats::merge, progress)
}

/// Calibration with `method` choosing the clipping range of every int8 tensor — each
/// LayerNorm's output, each fc1's pre-activation (the GELU table's input) and activation,
/// each fc2's and the embedding's output — from a second pass over the images
/// ([`crate::calibrate::tensor_histograms`], the ConvMixer's), as the ConvMixer's
/// calibration does for its layers. The residual stream keeps its min/max: it is int16 with
/// one scale for the whole network, and a clipped stream would saturate every later layer.
pub fn calibrate_with<I: AsRef<[u8]> + Sync>(
    f: &Mixer,
    images: &[I],
    method: Method,
    progress: &(dyn Fn() + Sync),
) -> Stats {
    let mut s = calibrate(f, images, progress);
    if method == Method::MinMax {
        return s;
    }
    let n = s.out.len();
    let ranges: Vec<Range> = s.out.iter().chain(&s.act).copied().collect();
    let hists = tensor_histograms(
        images,
        &ranges,
        |img, add| {
            forward_pixels_with(f, img, |l, _, seen| match seen {
                Seen::Stream(_) => {}
                Seen::Norm(v) | Seen::Branch(v) => add(l, &[v]),
                Seen::Hidden(pre, a) => {
                    add(l, &[pre]);
                    add(n + l, &[a]);
                }
            });
        },
        progress,
    );
    for (r, h) in s.out.iter_mut().chain(s.act.iter_mut()).zip(&hists) {
        *r = clip(h, method);
    }
    s
}

// ----------------------------------------------------------------------------------------
// Lowering to the int8 blob

/// The mean of each input of every int8 GEMM layer over `images` (bias correction), indexed
/// by blob layer like [`Stats`]: the embedding per patch tap (raw pixels, as the ConvMixer's
/// [`crate::calibrate::input_means`]), an fc1 per input feature (the LayerNorm output's mean
/// over the other axis: per token for the token MLP, per channel for the channel MLP), an
/// fc2 per hidden unit (the activation's mean over its rows); empty for the LayerNorms and
/// the head. The same means from any number of threads.
pub fn input_means<I: AsRef<[u8]> + Sync>(f: &Mixer, images: &[I]) -> Vec<Vec<f64>> {
    let (t, d, p) = (f.tokens(), f.dim, f.patch);
    let (th, ch) = f.hidden();
    let (layers, final_norm) = (f.layers(), f.final_norm());
    // Inputs and rows (per image) of every GEMM layer.
    let mut inputs = vec![0usize; layers];
    let mut rows = vec![0usize; layers];
    (inputs[0], rows[0]) = (p * p * f.in_c, t);
    for l in (1..final_norm).step_by(3) {
        let (r, features, hidden) = if (l - 1) % 6 == 0 {
            (d, t, th)
        } else {
            (t, d, ch)
        };
        (inputs[l + 1], rows[l + 1]) = (features, r);
        (inputs[l + 2], rows[l + 2]) = (hidden, r);
    }
    let one = |img: &I| -> Vec<Vec<f64>> {
        let img = img.as_ref();
        let mut sums: Vec<Vec<f64>> = inputs.iter().map(|&n| vec![0f64; n]).collect();
        sums[0] = patch_sums(img, (f.in_w, f.in_c), p, (f.in_h / p, f.in_w / p));
        forward_pixels_with(f, img, |l, i, seen| match seen {
            // A LayerNorm's output, [token][channel]: the token fc1 reads it per token, the
            // channel fc1 per channel.
            Seen::Norm(v) if l < final_norm => {
                let at = if (l - 1) % 6 == 0 {
                    i / d.max(1)
                } else {
                    i % d.max(1)
                };
                if let Some(s) = sums[l + 1].get_mut(at) {
                    *s += f64::from(v);
                }
            }
            // An fc1's activation, [row][hidden]: what the fc2 reads.
            Seen::Hidden(_, a) => {
                let at = i % inputs[l + 1].max(1);
                if let Some(s) = sums[l + 1].get_mut(at) {
                    *s += f64::from(a);
                }
            }
            _ => {}
        });
        sums
    };
    let counts: Vec<f64> = rows
        .iter()
        .map(|&r| (r * images.len().max(1)) as f64)
        .collect();
    means_of(images, one, &counts)
}

/// The int8 blob of folded model `f` with calibrated ranges `s` (`labels`: empty or one
/// per class). With `means` ([`input_means`]) the GEMM layers' biases are bias-corrected,
/// as the ConvMixer's ([`crate::quant::lower`]): each output's bias moves by minus the
/// mean error its quantised weights make on the calibration inputs.
pub fn lower(
    f: &Mixer,
    s: &Stats,
    means: Option<&[Vec<f64>]>,
    labels: &[String],
) -> Result<Vec<u8>> {
    let (ht, hc) = f.hidden();
    if f.blocks.is_empty() {
        bail!("the MLP-Mixer has no blocks (depth 0)");
    }
    let act = f.blocks[0].token.act;
    if f.blocks
        .iter()
        .any(|b| b.token.act != act || b.channel.act != act)
    {
        bail!("the MLPs use different activations (one activation per model)");
    }
    let h = Header {
        arch: Arch::MlpMixer,
        precision: Precision::Int8,
        activation: act,
        in_c: u8_of(f.in_c, "input channels")?,
        patch: u8_of(f.patch, "patch size")?,
        in_h: u16_of(f.in_h, "input height")?,
        in_w: u16_of(f.in_w, "input width")?,
        dim: u16_of(f.dim, "dim")?,
        depth: u16_of(f.blocks.len(), "depth")?,
        kernel: 0,
        pad_top: 0,
        pad_left: 0,
        gap_frac_bits: gap_frac_bits(f.dim),
        classes: u16_of(f.classes(), "classes")?,
        f16_layers: LayerMask::default(),
        token_hidden: u16_of(ht, "token hidden width")?,
        channel_hidden: u16_of(hc, "channel hidden width")?,
    };
    u16_of(f.tokens(), "tokens")?;
    let mut w = Writer::new(h);
    crate::quant::push_norm_and_labels(&mut w, &f.mean, &f.std, labels, f.classes())?;

    // The residual stream: int16, zero point 0, one scale.
    let (lo, hi) = s.stream.with_zero();
    let s_x = f64::from(lo.abs().max(hi)).max(1e-6) / 32767.0;
    let err = |l: usize| move |e: anyhow::Error| anyhow!("{}: {e}", f.layer_name(l));
    // The embedding reads pixel − 128 (scale 1 in pixel units, zero point −128).
    let mean = |l: usize| means.and_then(|m| m.get(l)).map(Vec::as_slice);
    let embed_out =
        gemm(&mut w, (0, mean(0)), &f.embed, (1.0, -128), &s.out[0], None).map_err(err(0))?;
    res_add(&mut w, 0, embed_out, s_x).map_err(err(0))?;
    let mut l = 1;
    for b in &f.blocks {
        for mlp in [&b.token, &b.channel] {
            let q_ln = norm_layer(&mut w, l, &mlp.norm, s_x, &s.out[l], f.dim).map_err(err(l))?;
            let q_h = gemm(
                &mut w,
                (l + 1, mean(l + 1)),
                &mlp.fc1,
                q_ln,
                &s.out[l + 1],
                Some((mlp.act, &s.act[l + 1])),
            )
            .map_err(err(l + 1))?;
            let q_o = gemm(
                &mut w,
                (l + 2, mean(l + 2)),
                &mlp.fc2,
                q_h,
                &s.out[l + 2],
                None,
            )
            .map_err(err(l + 2))?;
            res_add(&mut w, l + 2, q_o, s_x).map_err(err(l + 2))?;
            l += 3;
        }
    }
    let (s_y, zp_y) = norm_layer(&mut w, l, &f.norm, s_x, &s.out[l], f.dim).map_err(err(l))?;
    // The head as ConvMixer's, its input with one scale for every channel.
    let s_y = vec![s_y; f.dim];
    crate::quant::push_int8_head(
        &mut w,
        l + 1,
        &f.head.w,
        &f.head.b,
        &s_y,
        zp_y,
        h.gap_frac_bits,
    )?;
    w.finish()
}

/// Writes one int8 GEMM layer (WEIGHTS, BIAS, REQUANT, QPARAMS, TABLE) reading an int8
/// tensor quantised as `(scale, zero point)` `q_in`; returns its output's quantisation.
/// With `act` (fc1) the activation is read from a table over the pre-activation range
/// `pre` and the output covers the activation range; without (embedding, fc2) the output
/// covers `pre` through the identity table. With `means` (the layer's [`input_means`]) the
/// bias is corrected.
fn gemm(
    w: &mut Writer,
    (layer, means): (usize, Option<&[f64]>),
    l: &Linear,
    q_in: (f64, i32),
    pre: &Range,
    act: Option<(Activation, &Range)>,
) -> Result<(f64, i32)> {
    let (s_in, zp_in) = q_in;
    let (k, n) = (l.n_in, l.n_out);
    let (lo, hi) = pre.with_zero();
    let table = act.map(|(a, _)| GeluTable::new(a, lo, hi));
    // Output quantisation and the table's input grid.
    let (s_z, zp_z, s_out, zp_out) = match (&table, act) {
        (Some(t), Some((_, r))) => {
            let (alo, ahi) = r.with_zero();
            let (s, zp) = asym(alo, ahi);
            (t.s_z, t.zp_z, s, zp)
        }
        _ => {
            let (s, zp) = asym(lo, hi);
            (s, zp, s, zp)
        }
    };
    let mut wq = vec![0i8; n * k];
    let mut bias = vec![0i32; n];
    let mut rq: Vec<[i32; 6]> = Vec::with_capacity(n);
    for o in 0..n {
        // The output's weights in units of the int8 input's steps, quantised as the
        // ConvMixer's ([`OutputWeights`]), the bias corrected by their mean error.
        let row: Vec<f64> = (0..k).map(|i| f64::from(l.w[o * k + i]) * s_in).collect();
        let ow = OutputWeights::new(&row);
        let correction = means.map_or(0.0, |m| ow.mean_error(&row, |_| s_in, |t| m[t]));
        let bq = ow
            .int32_bias(f64::from(l.b[o]) - correction, ow.step, zp_in, "")
            .map_err(|e| anyhow!("output {o}: {e}"))?;
        wq[o * k..(o + 1) * k].copy_from_slice(&ow.q);
        let s_w = ow.step;
        let (m_pre, sh_pre) = multiplier(s_w / s_z)?;
        let post = match &table {
            Some(t) => {
                let (m_post, b_post, sh_post, _) = post_params(t.s_a / s_out, 0.0, 0.0)?;
                [m_post, b_post, sh_post]
            }
            None => [1, 0, 0],
        };
        bias[o] = bq;
        rq.push([m_pre, sh_pre, post[0], post[1], post[2], 0]);
    }
    let table_bytes = match &table {
        Some(t) => t.bytes(),
        None => identity_table(zp_out),
    };
    let packed = crate::quant::pack_gemm(&wq, n, k);
    crate::quant::push_int8_layer(
        w,
        layer,
        packed,
        &bias,
        &rq,
        [zp_in, zp_z, zp_out, 0],
        table_bytes,
    )?;
    Ok((s_out, zp_out))
}

/// The identity TABLE of a layer whose output zero point is `zp` (and whose table index
/// is its output): `TABLE[z + 128] = z − zp`, so that `zp + TABLE[z + 128] = z`.
fn identity_table(zp: i32) -> Vec<u8> {
    let entries: Vec<i16> = (-128..128).map(|z: i32| (z - zp) as i16).collect();
    crate::quant::table_bytes(&entries)
}

/// The RES_ADD of `layer`, whose int8 output `(scale, zp)` is added into the stream of
/// scale `s_x`: `(q − zp)·m / 2^sh` stream steps with `m / 2^sh ≈ scale / s_x`.
fn res_add(w: &mut Writer, layer: usize, q: (f64, i32), s_x: f64) -> Result<()> {
    let r = q.0 / s_x;
    let Some(sh) = (0..=mixer_limits::RES_SH_MAX)
        .rev()
        .find(|&sh| (r * 2f64.powi(sh)).round() <= f64::from(mixer_limits::RES_M_MAX))
    else {
        bail!("its output step is {r:.3e} residual steps (too coarse for the residual add)");
    };
    let m = (r * 2f64.powi(sh)).round() as i32;
    w.push(SectionKind::ResAdd, layer, i32_bytes(&[m, sh, 0, 0]))
}

/// Writes a LAYER_NORM section: the stream (scale `s_x`) normalised per token, then `ln`'s
/// affine, into int8 covering `out`. Returns the output's `(scale, zero point)`.
fn norm_layer(
    w: &mut Writer,
    layer: usize,
    ln: &Ln,
    s_x: f64,
    out: &Range,
    dim: usize,
) -> Result<(f64, i32)> {
    let (lo, hi) = out.with_zero();
    let (s_y, zp) = asym(lo, hi);
    // `V` is dim²·var in stream steps², so ε enters as ε·dim²/s_x².
    let eps = (f64::from(ln.eps) * (dim * dim) as f64 / (s_x * s_x)).round();
    if eps > mixer_limits::LN_EPS_MAX as f64 {
        bail!(
            "epsilon {} is too large for the residual scale {s_x:.3e}",
            ln.eps
        );
    }
    // y = zp + rshr(z·mul + off, shift) with z = 2^16·n: mul = γ/s_y·2^(shift−16),
    // off = β/s_y·2^shift; the finest shift that keeps |mul| < 2^30, |off| ≤ LN_B_MAX.
    let fits = |sh: i32| {
        (0..dim).all(|c| {
            let m = (f64::from(ln.gamma[c]) / s_y * 2f64.powi(sh - 16))
                .round()
                .abs();
            let o = (f64::from(ln.beta[c]) / s_y * 2f64.powi(sh)).round().abs();
            m < 2f64.powi(30) && o <= mixer_limits::LN_B_MAX as f64
        })
    };
    let Some(shift) = (0..=46).rev().find(|&sh| fits(sh)) else {
        bail!("the LayerNorm affine does not fit the fixed point (γ/β too large for the output range)");
    };
    let mut b = Vec::with_capacity(16 + 12 * dim);
    b.extend_from_slice(&(eps as u64).to_le_bytes());
    b.extend_from_slice(&shift.to_le_bytes());
    b.extend_from_slice(&zp.to_le_bytes());
    for c in 0..dim {
        let m = (f64::from(ln.gamma[c]) / s_y * 2f64.powi(shift - 16)).round() as i32;
        b.extend_from_slice(&m.to_le_bytes());
    }
    for c in 0..dim {
        let o = (f64::from(ln.beta[c]) / s_y * 2f64.powi(shift)).round() as i64;
        b.extend_from_slice(&o.to_le_bytes());
    }
    w.push(SectionKind::LayerNorm, layer, b)?;
    Ok((s_y, zp))
}
