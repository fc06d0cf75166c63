//! Quantisation diagnosis (`host-tools report`): per-layer SQNR of the int8 model against
//! the fp32 folded graph, and top-1 / agreement on a labelled set.
//!
//! The int8 layer outputs come from the runtime itself ([`Model::logits_traced`]), the
//! fp32 ones from the folded graph ([`calibrate::forward_with`]); each int8 output is
//! dequantised with the scale and zero point the blob was quantised with
//! ([`quant::output_quant`]).

use anyhow::{anyhow, Result};
use convmixer_edge::{LayerOutput, Model, Precision};
use convmixer_quantize::{calibrate, onnx::Imported, quant, Options};

/// One conv layer's signal-to-quantisation-noise ratio over the labelled set.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSqnr {
    /// Layer index: 0 = patch embedding, then depthwise / pointwise per block.
    pub layer: usize,
    /// `embed`, `block I depthwise` or `block I pointwise`.
    pub name: String,
    /// `10·log10(Σ x² / Σ (x − x̂)²)` in dB over every image and output value.
    pub sqnr_db: f64,
}

/// What [`diagnose`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnosis {
    /// Per-layer SQNR of int8 against fp32.
    pub layers: Vec<LayerSqnr>,
    /// Labelled images used.
    pub n: usize,
    /// Top-1 of the fp32 folded graph.
    pub top1_fp32: f64,
    /// Top-1 of the int8 blob.
    pub top1_int8: f64,
    /// Share of images where int8 and fp32 predict the same class.
    pub agreement: f64,
    /// Size of the int8 blob.
    pub blob_bytes: usize,
    /// `Model::arena_len` of the int8 blob.
    pub arena_bytes: usize,
}

fn name(layer: usize) -> String {
    match layer {
        0 => "embed".into(),
        l => format!(
            "block {} {}",
            (l - 1) / 2,
            if l % 2 == 1 { "depthwise" } else { "pointwise" }
        ),
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Quantises `model` to int8 with `opts` and `calib`, then runs the fp32 folded graph and
/// the int8 blob on every labelled image of `data` (raw HWC pixels, class).
pub fn diagnose(
    model: &Imported,
    calib: &[Vec<u8>],
    data: &[(Vec<u8>, usize)],
    opts: &Options,
) -> Result<Diagnosis> {
    let q = convmixer_quantize::quantize_detailed(model, Precision::Int8, calib, opts, || {})?;
    let (folded, blob) = (&q.folded, &q.blob);
    let stats = q
        .stats
        .as_deref()
        .ok_or_else(|| anyhow!("int8 quantisation gave no calibration ranges"))?;
    let outq = quant::output_quant(stats);
    let m = Model::from_bytes(blob).map_err(|e| anyhow!("the int8 blob does not load: {e}"))?;
    let layers = outq.len();
    let (ht, wt) = folded.grid();
    let size = ht * wt * folded.dim;
    let mut arena = vec![0u8; m.arena_len()];
    let mut logits = vec![0f32; usize::from(m.header().classes)];
    let (mut signal, mut noise) = (vec![0f64; layers], vec![0f64; layers]);
    let mut fp32_out = vec![vec![0f32; size]; layers];
    let (mut right32, mut right8, mut agree) = (0usize, 0usize, 0usize);
    for (px, label) in data {
        let l32 = calibrate::forward_with(folded, px, |layer, idx, _, _, out| {
            fp32_out[layer][idx] = out;
        });
        m.logits_traced(px, &mut arena, &mut logits, &mut |layer, q| {
            let LayerOutput::Int8(q) = q else { return };
            let (s, zp) = outq[layer];
            for (x, &v) in fp32_out[layer].iter().zip(q) {
                let xh = (f64::from(v) - f64::from(zp)) * s;
                signal[layer] += f64::from(*x) * f64::from(*x);
                noise[layer] += (f64::from(*x) - xh) * (f64::from(*x) - xh);
            }
        })
        .map_err(|e| anyhow!("int8 inference: {e}"))?;
        let (p32, p8) = (argmax(&l32), argmax(&logits));
        right32 += usize::from(p32 == *label);
        right8 += usize::from(p8 == *label);
        agree += usize::from(p32 == p8);
    }
    let n = data.len().max(1) as f64;
    Ok(Diagnosis {
        layers: (0..layers)
            .map(|l| LayerSqnr {
                layer: l,
                name: name(l),
                sqnr_db: 10.0 * (signal[l] / noise[l].max(f64::MIN_POSITIVE)).log10(),
            })
            .collect(),
        n: data.len(),
        top1_fp32: right32 as f64 / n,
        top1_int8: right8 as f64 / n,
        agreement: agree as f64 / n,
        blob_bytes: blob.len(),
        arena_bytes: m.arena_len(),
    })
}
