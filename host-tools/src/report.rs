//! Quantisation diagnosis (`host-tools report`): per-layer SQNR of every quantised variant
//! (int8, fp16, …) against the fp32 folded graph, top-1 / agreement / confusion on a
//! labelled set, and the calibration set's activation ranges with the chosen clipping.
//!
//! The variants' layer outputs come from the runtime itself ([`Model::logits_traced`]), the
//! fp32 ones from the folded graph ([`forward_layers`]); int8 outputs are
//! dequantised with the scale and zero point the blob was quantised with
//! ([`quant::output_quant`]), float ones read as they are ([`LayerOutput::get_f32`](convmixer_edge::LayerOutput::get_f32)).
//! [`page`] writes the HTML page with plots.

mod glyphs;
pub mod page;

use anyhow::{anyhow, bail, Result};
use convmixer_edge::{Activation, Model, Precision};
use convmixer_quantize::calibrate::{self, Histogram, Range};
use convmixer_quantize::fold::Folded;
use convmixer_quantize::forward::forward_layers;
use convmixer_quantize::mixed::{Sqnr, Target};
use convmixer_quantize::{onnx::Imported, par, quant, Options, Prepared};

/// One conv layer's signal-to-quantisation-noise ratio over the labelled set.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSqnr {
    /// Layer index: 0 = patch embedding, then depthwise / pointwise per block.
    pub layer: usize,
    /// `embed`, `block I depthwise` or `block I pointwise`.
    pub name: String,
    /// `10·log10(Σ x² / Σ (x − x̂)²)` in dB over every image and output value (infinite
    /// where the variant reproduces the layer exactly).
    pub sqnr_db: f64,
}

/// What [`diagnose`] measured (the int8 variant only).
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

/// A blob to evaluate against the fp32 folded graph it was lowered from.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Shown in the report (`int8`, `fp16`, `mixed`, …).
    pub name: String,
    /// The model blob.
    pub blob: Vec<u8>,
    /// Zero point and per-channel scales per conv layer ([`quant::output_quant`] of the ranges the blob
    /// was quantised with): dequantises the layers the runtime traces as
    /// [`LayerOutput::Int8`](convmixer_edge::LayerOutput::Int8). Empty for a blob without int8 layers.
    pub output_quant: Vec<quant::TensorQuant>,
}

/// How one [`Variant`] did on the labelled set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluated {
    /// [`Variant::name`].
    pub name: String,
    /// The blob header's precision.
    pub precision: Precision,
    /// The layers the blob keeps in f16 between int8 tensors (mixed precision), by name.
    pub f16_layers: Vec<String>,
    /// Per-layer SQNR against the fp32 folded graph.
    pub layers: Vec<LayerSqnr>,
    /// Share of images classified right.
    pub top1: f64,
    /// Images classified right.
    pub correct: usize,
    /// Share of images where the variant and the fp32 graph predict the same class.
    pub agreement: f64,
    /// `confusion[true class][predicted class]` image counts.
    pub confusion: Vec<Vec<u32>>,
    /// Blob size in bytes.
    pub blob_bytes: usize,
    /// [`Model::arena_len`].
    pub arena_bytes: usize,
}

impl Evaluated {
    /// Mean of the finite per-layer SQNRs (dB).
    pub fn mean_sqnr_db(&self) -> f64 {
        let v: Vec<f64> = self
            .layers
            .iter()
            .map(|l| l.sqnr_db)
            .filter(|s| s.is_finite())
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
}

/// The fp32 folded graph on the labelled set, and every variant against it.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Labelled images used.
    pub n: usize,
    /// Top-1 of the fp32 folded graph.
    pub top1_fp32: f64,
    /// Images the fp32 graph classified right.
    pub correct_fp32: usize,
    /// The variants, in the order given.
    pub variants: Vec<Evaluated>,
}

/// One conv layer output's range on the calibration set.
#[derive(Clone, Debug)]
pub struct LayerRange {
    /// Layer index (as [`LayerSqnr::layer`]).
    pub layer: usize,
    /// As [`LayerSqnr::name`].
    pub name: String,
    /// Smallest and largest value seen.
    pub observed: Range,
    /// The clipping range the calibration method chose (the int8 blob's).
    pub clip: Range,
    /// Share of the values outside `clip` (clipped by the int8 blob).
    pub clipped: f64,
    /// The int8 output tensor's scale derived from `clip` (its coarsest channel scale).
    pub scale: f64,
    /// The finest per-channel scale (channels with a narrower range than the tensor's).
    pub finest_scale: f64,
    /// See `scale`.
    pub zero_point: i32,
    /// 2048 bins over `observed`.
    pub histogram: Histogram,
}

/// The model's shape, as the report's header shows it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Input height, width, channels.
    pub input: (usize, usize, usize),
    /// Mixer channels.
    pub dim: usize,
    /// Mixer blocks.
    pub depth: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Patch size.
    pub patch: usize,
    /// Classes.
    pub classes: usize,
    /// The activation after every conv.
    pub activation: Activation,
}

/// Everything [`analyse`] measured: what the report prints and the page shows.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// The model.
    pub shape: Shape,
    /// The calibration method.
    pub method: calibrate::Method,
    /// Whether the int8 biases were bias-corrected.
    pub bias_correction: bool,
    /// Calibration images.
    pub n_calib: usize,
    /// The labelled set's results.
    pub eval: Evaluation,
    /// Size and arena of the fp32 blob (the reference is the folded graph; its blob is
    /// lowered only to show these).
    pub fp32_blob: (usize, usize),
    /// Per conv layer output: calibration range and clip.
    pub ranges: Vec<LayerRange>,
    /// Class labels (the blob's, else the class index).
    pub labels: Vec<String>,
}

impl Analysis {
    /// The variant named `name`.
    pub fn variant(&self, name: &str) -> Option<&Evaluated> {
        self.eval.variants.iter().find(|v| v.name == name)
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Runs the fp32 folded graph `folded` and every variant on each labelled image of `data`
/// (raw HWC pixels, class), all measured the same way.
pub fn evaluate(
    folded: &Folded,
    variants: &[Variant],
    data: &[(Vec<u8>, usize)],
    progress: &(dyn Fn() + Sync),
) -> Result<Evaluation> {
    let layers = folded.conv_layers();
    let classes = folded.classes();
    struct Run<'a> {
        m: Model<'a>,
        sqnr: Sqnr,
        correct: usize,
        agree: usize,
        confusion: Vec<Vec<u32>>,
    }
    let mut runs = variants
        .iter()
        .map(|v| {
            let m = Model::from_bytes(&v.blob)
                .map_err(|e| anyhow!("the {} blob does not load: {e}", v.name))?;
            if usize::from(m.header().classes) != classes {
                bail!("the {} blob has another number of classes", v.name);
            }
            Ok(Run {
                m,
                sqnr: Sqnr::new(layers),
                correct: 0,
                agree: 0,
                confusion: vec![vec![0; classes]; classes],
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Per image (in parallel): the fp32 prediction, and per variant its SQNR sums and
    // prediction; summed in image order (`par`), so the figures do not depend on threads.
    let models: Vec<Model<'_>> = runs.iter().map(|r| r.m).collect();
    let one = |(px, _): &(Vec<u8>, usize)| -> Result<(usize, Vec<(Sqnr, usize)>)> {
        let mut fp32_out = vec![Vec::new(); layers];
        let l32 = forward_layers(folded, px, |layer, v| fp32_out[layer] = v.out.to_vec());
        let per = variants
            .iter()
            .zip(&models)
            .map(|(v, m)| {
                let mut arena = vec![0u8; m.arena_len()];
                let mut logits = vec![0f32; classes];
                let mut sqnr = Sqnr::new(layers);
                sqnr.run(
                    m,
                    px,
                    &mut arena,
                    &mut logits,
                    &fp32_out,
                    &l32,
                    &v.output_quant,
                )
                .map_err(|e| anyhow!("variant {}: {e}", v.name))?;
                Ok((sqnr, argmax(&logits)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((argmax(&l32), per))
    };
    let mut labels = data.iter().map(|(_, l)| *l);
    let correct32 = par::try_map_fold(
        data,
        0usize,
        one,
        |correct32, (p32, per)| {
            let label = labels.next().unwrap_or(usize::MAX);
            for (r, (sqnr, p)) in runs.iter_mut().zip(per) {
                r.sqnr = std::mem::replace(&mut r.sqnr, Sqnr::new(0)).merge(sqnr);
                r.correct += usize::from(p == label);
                r.agree += usize::from(p == p32);
                if label < classes {
                    r.confusion[label][p] += 1;
                }
            }
            correct32 + usize::from(p32 == label)
        },
        progress,
    )?;
    let n = data.len().max(1) as f64;
    Ok(Evaluation {
        n: data.len(),
        top1_fp32: correct32 as f64 / n,
        correct_fp32: correct32,
        variants: variants
            .iter()
            .zip(runs)
            .map(|(v, r)| {
                let h = r.m.header();
                Evaluated {
                    name: v.name.clone(),
                    precision: h.precision,
                    f16_layers: h
                        .f16_layers
                        .iter(h.head_layer() + 1)
                        .map(|l| folded.layer_name(l))
                        .collect(),
                    layers: r
                        .sqnr
                        .db()
                        .into_iter()
                        .take(layers)
                        .enumerate()
                        .map(|(l, sqnr_db)| LayerSqnr {
                            layer: l,
                            name: folded.layer_name(l),
                            sqnr_db,
                        })
                        .collect(),
                    top1: r.correct as f64 / n,
                    correct: r.correct,
                    agreement: r.agree as f64 / n,
                    confusion: r.confusion,
                    blob_bytes: v.blob.len(),
                    arena_bytes: r.m.arena_len(),
                }
            })
            .collect(),
    })
}

/// The int8 preparation (folded, calibrated once with `opts` and `calib`) and its blob.
fn int8<'o>(
    model: &Imported,
    calib: &[Vec<u8>],
    opts: &'o Options,
    progress: &(dyn Fn() + Sync),
) -> Result<(Prepared<'o>, Variant)> {
    let p = Prepared::new(model, Precision::Int8, calib, opts, progress)?;
    let stats = p
        .stats
        .as_deref()
        .ok_or_else(|| anyhow!("int8 quantisation gave no calibration ranges"))?;
    let v = Variant {
        name: "int8".into(),
        output_quant: quant::output_quant(stats),
        blob: p.lower(&opts.f16_layers)?,
    };
    Ok((p, v))
}

/// A float variant (no calibration involved).
fn float(model: &Imported, name: &str, precision: Precision, opts: &Options) -> Result<Variant> {
    let q = convmixer_quantize::quantize_detailed(model, precision, &[], opts, &|| {})?;
    Ok(Variant {
        name: name.into(),
        blob: q.blob,
        output_quant: Vec::new(),
    })
}

/// Quantises `model` to int8 with `opts` and `calib`, then runs the fp32 folded graph and
/// the int8 blob on every labelled image of `data` (raw HWC pixels, class).
pub fn diagnose(
    model: &Imported,
    calib: &[Vec<u8>],
    data: &[(Vec<u8>, usize)],
    opts: &Options,
) -> Result<Diagnosis> {
    let (p, v) = int8(model, calib, opts, &|| {})?;
    let e = evaluate(&p.folded, std::slice::from_ref(&v), data, &|| {})?;
    let d = &e.variants[0];
    Ok(Diagnosis {
        layers: d.layers.clone(),
        n: e.n,
        top1_fp32: e.top1_fp32,
        top1_int8: d.top1,
        agreement: d.agreement,
        blob_bytes: d.blob_bytes,
        arena_bytes: d.arena_bytes,
    })
}

/// The whole report: the int8 and fp16 variants (quantised with `opts`), and with `mixed`
/// a mixed-precision one ([`Prepared::choose`] on the int8 variant's calibration, its
/// accuracy budget measured on `data` itself), evaluated on `data`; and the
/// calibration set's per-layer output histograms with the clip the int8 blob uses.
pub fn analyse(
    model: &Imported,
    calib: &[Vec<u8>],
    data: &[(Vec<u8>, usize)],
    opts: &Options,
    mixed: Option<Target>,
    progress: &(dyn Fn() + Sync),
) -> Result<Analysis> {
    let (p, int8) = int8(model, calib, opts, progress)?;
    let fp16 = float(model, "fp16", Precision::F16, opts)?;
    let fp32 = float(model, "fp32", Precision::F32, opts)?;
    let fp32_blob = (
        fp32.blob.len(),
        Model::from_bytes(&fp32.blob)
            .map_err(|e| anyhow!("the fp32 blob does not load: {e}"))?
            .arena_len(),
    );
    let mut variants = vec![int8, fp16];
    if let Some(target) = mixed {
        let (_, blob) = p.choose(calib, data, target, &mut |_| {})?;
        variants.push(Variant {
            name: "mixed".into(),
            blob,
            output_quant: variants[0].output_quant.clone(),
        });
    }
    let (folded, stats) = (&p.folded, p.stats.as_deref().unwrap_or_default());
    let eval = evaluate(folded, &variants, data, progress)?;
    let ranges = calibrate::output_histograms(folded, calib, progress)
        .into_iter()
        .zip(stats)
        .zip(&variants[0].output_quant)
        .enumerate()
        .map(|(layer, ((h, s), t))| LayerRange {
            layer,
            name: folded.layer_name(layer),
            observed: h.range,
            clip: s.out,
            clipped: h.outside(s.out) as f64 / h.total().max(1) as f64,
            scale: t.scale.iter().copied().fold(0.0, f64::max),
            finest_scale: t.scale.iter().copied().fold(f64::INFINITY, f64::min),
            zero_point: t.zp,
            histogram: h,
        })
        .collect();
    let m = Model::from_bytes(&variants[0].blob)
        .map_err(|e| anyhow!("the int8 blob does not load: {e}"))?;
    let labels = (0..folded.classes())
        .map(|c| {
            u16::try_from(c)
                .ok()
                .and_then(|c| m.label(c))
                .filter(|l| !l.is_empty())
                .map_or_else(|| c.to_string(), String::from)
        })
        .collect();
    Ok(Analysis {
        shape: Shape {
            input: (folded.in_h, folded.in_w, folded.in_c),
            dim: folded.dim,
            depth: folded.blocks.len(),
            kernel: folded.kernel,
            patch: folded.patch,
            classes: folded.classes(),
            activation: folded.act,
        },
        method: opts.calibration.unwrap_or(calibrate::Method::MinMax),
        bias_correction: opts.bias_correction,
        n_calib: calib.len(),
        eval,
        fp32_blob,
        ranges,
        labels,
    })
}
