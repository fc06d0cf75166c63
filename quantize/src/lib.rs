//! # convmixer-quantize
//!
//! The host half of convmixer-edge, a straight line:
//!
//! ```text
//! onnx::import  →  fold::fold  →  calibrate::calibrate  →  quant::lower  →  blob bytes
//! (ONNX file)      (no BN left)    (ranges, int8 only)      (int8/f16/f32)   (runtime reads)
//! ```
//!
//! [`mixed::choose`] (`Prepared::choose`, `quantize_mixed`) sits between the last two: it
//! lowers and measures candidate blobs to decide which int8 layers stay in f16.
//!
//! An MLP-Mixer takes the same line through one module, [`mixer`]: `import → fold →
//! calibrate → lower` ([`mixer::quantize`]), int8 only, into the same blob format and the
//! same runtime ([`mixer::is_mixer`] tells which line an ONNX file is for).
//!
//! [`reference::TractModel`] runs the original ONNX in fp32 with tract: the independent
//! reference every test compares against.

pub mod blob;
pub mod calibrate;
pub mod data;
pub mod fold;
pub mod forward;
pub mod mixed;
pub mod mixer;
pub mod onnx;
pub mod onnx_export;
pub mod par;
pub mod quant;
#[cfg(feature = "random")]
pub mod random;
pub mod reference;

pub use convmixer_edge::{Activation, Precision};

/// Everything `quantize` needs besides the model and the calibration images.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Input normalisation mean per channel (0..1 pixel scale); empty for none.
    pub mean: Vec<f32>,
    /// Input normalisation std per channel; empty for none.
    pub std: Vec<f32>,
    /// Class labels, empty or one per class.
    pub labels: Vec<String>,
    /// How int8 activation ranges are chosen (default min/max).
    pub calibration: Option<calibrate::Method>,
    /// Bias correction of the int8 weights' mean error on the calibration set (one more
    /// pass over the images).
    pub bias_correction: bool,
    /// int8 only: conv layers kept in float with f16 weights (mixed precision; chosen by
    /// [`mixed::choose`] or given).
    pub f16_layers: convmixer_edge::blob::LayerMask,
}

/// What [`quantize_detailed`] produced: the blob and what it was made from.
#[derive(Clone, Debug)]
pub struct Quantised {
    /// The folded graph (no BatchNorm left).
    pub folded: fold::Folded,
    /// The calibrated ranges, one per conv layer (int8 only).
    pub stats: Option<Vec<calibrate::LayerStats>>,
    /// The model blob.
    pub blob: Vec<u8>,
}

/// The whole path for an already imported model: fold, calibrate (int8), lower.
pub fn quantize(
    model: &onnx::Imported,
    precision: Precision,
    calib: &[Vec<u8>],
    opts: &Options,
    progress: &(dyn Fn() + Sync),
) -> anyhow::Result<Vec<u8>> {
    Ok(quantize_detailed(model, precision, calib, opts, progress)?.blob)
}

/// [`quantize`], also returning the folded graph and the calibrated ranges (for
/// diagnostics, which compare the blob with the graph it came from).
pub fn quantize_detailed(
    model: &onnx::Imported,
    precision: Precision,
    calib: &[Vec<u8>],
    opts: &Options,
    progress: &(dyn Fn() + Sync),
) -> anyhow::Result<Quantised> {
    let p = Prepared::new(model, precision, calib, opts, progress)?;
    let blob = p.lower(&opts.f16_layers)?;
    Ok(p.done(blob))
}

/// int8 with the layers that int8 hurts most kept in f16 until `target` is met
/// ([`Prepared::choose`]; `labelled` is the labelled set an accuracy budget is measured
/// on). `log` gets one line per measurement.
pub fn quantize_mixed(
    model: &onnx::Imported,
    calib: &[Vec<u8>],
    labelled: &[(Vec<u8>, usize)],
    opts: &Options,
    target: mixed::Target,
    progress: &(dyn Fn() + Sync),
    log: &mut dyn FnMut(String),
) -> anyhow::Result<(Quantised, mixed::Choice)> {
    let p = Prepared::new(model, Precision::Int8, calib, opts, progress)?;
    let (choice, blob) = p.choose(calib, labelled, target, log)?;
    Ok((p.done(blob), choice))
}

/// Everything before the lowering: the folded graph, int8 ranges and bias-correction
/// means, computed once and lowered as often as needed (the int8 blob, mixed-precision
/// candidates).
pub struct Prepared<'o> {
    /// The folded graph.
    pub folded: fold::Folded,
    precision: Precision,
    /// The calibrated ranges, one per conv layer (int8 only).
    pub stats: Option<Vec<calibrate::LayerStats>>,
    means: Option<Vec<Vec<f64>>>,
    opts: &'o Options,
}

impl<'o> Prepared<'o> {
    /// Folds `model` and, for int8, calibrates it on `calib` (and takes the
    /// bias-correction means when `opts` asks for them).
    pub fn new(
        model: &onnx::Imported,
        precision: Precision,
        calib: &[Vec<u8>],
        opts: &'o Options,
        progress: &(dyn Fn() + Sync),
    ) -> anyhow::Result<Self> {
        let folded = fold::fold(model, &opts.mean, &opts.std)?;
        let stats = match precision {
            Precision::Int8 => {
                if calib.is_empty() {
                    anyhow::bail!("int8 quantisation needs calibration images (--calib DIR)");
                }
                Some(calibrate::calibrate_with(
                    &folded,
                    calib,
                    opts.calibration.unwrap_or(calibrate::Method::MinMax),
                    progress,
                ))
            }
            _ => None,
        };
        let means = (precision == Precision::Int8 && opts.bias_correction)
            .then(|| calibrate::input_means(&folded, calib));
        Ok(Prepared {
            folded,
            precision,
            stats,
            means,
            opts,
        })
    }

    /// The blob, with the int8 layers in `f16_layers` kept in f16.
    pub fn lower(&self, f16_layers: &convmixer_edge::blob::LayerMask) -> anyhow::Result<Vec<u8>> {
        quant::lower(
            &self.folded,
            self.precision,
            self.stats.as_deref(),
            self.means.as_deref(),
            &self.opts.labels,
            f16_layers,
        )
    }

    /// The mixed-precision choice for `target` and its blob ([`mixed::choose`] on this
    /// preparation's lowering; int8 only).
    pub fn choose(
        &self,
        calib: &[Vec<u8>],
        labelled: &[(Vec<u8>, usize)],
        target: mixed::Target,
        log: &mut dyn FnMut(String),
    ) -> anyhow::Result<(mixed::Choice, Vec<u8>)> {
        let stats = self
            .stats
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("mixed precision applies to int8 models only"))?;
        mixed::choose(
            &|mask| self.lower(mask),
            &self.folded,
            stats,
            calib,
            labelled,
            target,
            log,
        )
    }

    /// The [`Quantised`] result with `blob`.
    pub fn done(self, blob: Vec<u8>) -> Quantised {
        Quantised {
            folded: self.folded,
            stats: self.stats,
            blob,
        }
    }
}
