//! Automatic mixed precision: which layers of an int8 model (conv layers and the head) to
//! keep in float (f16 weights, f32 arithmetic, int8 tensors around them;
//! `docs/blob-format.md`).
//!
//! Two targets, both measured with the runtime itself on the host (the blob that would be
//! written, run by `convmixer_edge::Model`) against the fp32 folded graph:
//!
//! * [`Target::AccuracyBudget`]: top-1 on a labelled set may be at most this many points
//!   below fp32. While it is missed, one more layer is switched to f16: the one that, with
//!   those already switched, leaves the smallest mean squared logit error against fp32 over
//!   the calibration images (greedy forward selection; the layers interact, so the ranking
//!   is measured again every round). Ranking on logit error rather than on top-1 keeps it
//!   meaningful on small sets, where one layer rarely moves top-1 by a whole image.
//! * [`Target::SqnrMin`]: every layer output's SQNR (dB, over the calibration images), and
//!   the logits' (for the head), must reach this. Errors propagate forward, so the first layer below the target is switched
//!   and everything is measured again, until all pass or every failing layer is already
//!   f16 (an f16 layer still writes an int8 tensor, whose rounding bounds its SQNR).
//!
//! The search is deterministic (fixed order, ties broken by layer index): the same inputs
//! give the same blob, byte for byte.

use anyhow::{anyhow, bail, Result};
use convmixer_edge::blob::LayerMask;
use convmixer_edge::{LayerOutput, Model};

use crate::calibrate::LayerStats;
use crate::fold::Folded;
use crate::forward::{forward, forward_layers};
use crate::par::{map, try_map_fold};
use crate::quant;

/// What the search must achieve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Top-1 at most this many percentage points below fp32 on the labelled set.
    AccuracyBudget(f64),
    /// Every conv layer's output SQNR at least this many dB on the calibration set.
    SqnrMin(f64),
}

/// The outcome of [`choose`] (besides the blob). When the target is not met: for an
/// accuracy budget the mix with the best top-1 measured (the fewest layers on ties), for an
/// SQNR target every layer that was below it.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Layers kept in f16.
    pub f16_layers: LayerMask,
    /// Whether the target was reached.
    pub met: bool,
    /// Top-1 (%) of fp32, pure int8 and the chosen mix on the labelled set (accuracy
    /// budget only).
    pub top1: Option<(f64, f64, f64)>,
    /// Per-layer output SQNR (dB) of the chosen mix on the calibration set, then the logits'.
    pub sqnr_db: Vec<f64>,
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}

fn load(blob: &[u8]) -> Result<Model<'_>> {
    Model::from_bytes(blob).map_err(|e| anyhow!("internal: a mixed blob does not load: {e}"))
}

/// Signal and quantisation-noise energy per layer output of one blob against the fp32
/// graph, accumulated over images: what the mixed-precision search and `host-tools report`
/// measure, the same way.
///
/// ```
/// use convmixer_edge::LayerOutput;
/// use convmixer_quantize::mixed::Sqnr;
/// let mut s = Sqnr::new(1);
/// s.add(0, &[1.0, -2.0], LayerOutput::F32(&[1.0, -1.9]), &[]).unwrap();
/// s.add_logits(&[3.0], &[3.0]);
/// let db = s.db();
/// assert!((db[0] - 10.0 * (5.0f64 / 0.01).log10()).abs() < 1e-3);
/// assert!(db[1].is_infinite());
/// ```
///
/// [`Sqnr::run`] does both for one image, running the blob itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Sqnr {
    signal: Vec<f64>,
    noise: Vec<f64>,
}

impl Sqnr {
    /// An accumulator for `layers` conv layers, then the logits (index `layers`).
    pub fn new(layers: usize) -> Self {
        Sqnr {
            signal: vec![0.0; layers + 1],
            noise: vec![0.0; layers + 1],
        }
    }

    fn acc(&mut self, layer: usize, pairs: impl Iterator<Item = (f64, f64)>) {
        if let (Some(s), Some(n)) = (self.signal.get_mut(layer), self.noise.get_mut(layer)) {
            for (x, xh) in pairs {
                *s += x * x;
                *n += (x - xh) * (x - xh);
            }
        }
    }

    /// Adds conv layer `layer`'s traced output `out` against the fp32 values `fp32`. int8
    /// outputs are dequantised with `outq[layer]` ([`quant::output_quant`]); the error is
    /// the layer index when that is missing.
    pub fn add(
        &mut self,
        layer: usize,
        fp32: &[f32],
        out: LayerOutput<'_>,
        outq: &[quant::TensorQuant],
    ) -> std::result::Result<(), usize> {
        let x = fp32.iter().map(|&x| f64::from(x));
        match out {
            LayerOutput::Int8(q) => {
                let t = outq.get(layer).ok_or(layer)?;
                let xh = q.iter().enumerate().map(|(i, &q)| t.dequantize(q, i));
                self.acc(layer, x.zip(xh));
            }
            o => {
                let xh = (0..o.len()).map(|i| f64::from(o.get_f32(i).unwrap_or(f32::NAN)));
                self.acc(layer, x.zip(xh));
            }
        }
        Ok(())
    }

    /// Runs `m` on `px` (`arena` and `logits` sized for it) and adds every conv layer's
    /// traced output against `fp32` (per layer, as [`forward_layers`] gives
    /// them) and the logits against `fp32_logits`. An error if the blob fails or a layer
    /// is int8 without an entry in `outq`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        m: &Model<'_>,
        px: &[u8],
        arena: &mut [u8],
        logits: &mut [f32],
        fp32: &[Vec<f32>],
        fp32_logits: &[f32],
        outq: &[quant::TensorQuant],
    ) -> Result<()> {
        let mut missing = Ok(());
        m.logits_traced(px, arena, logits, &mut |layer, out| {
            if let Some(x) = fp32.get(layer) {
                missing = missing.and(self.add(layer, x, out, outq));
            }
        })
        .map_err(|e| anyhow!("inference: {e}"))?;
        if let Err(l) = missing {
            bail!("layer {l} is int8 but has no output scale");
        }
        self.add_logits(fp32_logits, logits);
        Ok(())
    }

    /// Adds another accumulator's sums (e.g. one image's) to these.
    pub fn merge(mut self, o: Sqnr) -> Sqnr {
        for (a, b) in self.signal.iter_mut().zip(&o.signal) {
            *a += b;
        }
        for (a, b) in self.noise.iter_mut().zip(&o.noise) {
            *a += b;
        }
        self
    }

    /// Adds one image's logits against the fp32 graph's.
    pub fn add_logits(&mut self, fp32: &[f32], logits: &[f32]) {
        let l = self.signal.len() - 1;
        let pairs = fp32.iter().zip(logits);
        self.acc(l, pairs.map(|(&a, &b)| (f64::from(a), f64::from(b))));
    }

    /// `10·log10(Σ x² / Σ (x − x̂)²)` per conv layer, then the logits'; infinite where the
    /// blob reproduced the fp32 values exactly.
    pub fn db(&self) -> Vec<f64> {
        self.signal
            .iter()
            .zip(&self.noise)
            .map(|(&s, &n)| {
                if n == 0.0 {
                    f64::INFINITY
                } else {
                    10.0 * (s / n).log10()
                }
            })
            .collect()
    }
}

/// Per-layer output SQNR (dB, [`Sqnr::db`]) of `blob` against the fp32 graph `f` over
/// `images`: one entry per conv layer, then one for the logits (the head). In parallel
/// over the images, summed in image order ([`crate::par`]).
pub fn layer_sqnr(
    f: &Folded,
    outq: &[quant::TensorQuant],
    blob: &[u8],
    images: &[Vec<u8>],
) -> Result<Vec<f64>> {
    let m = load(blob)?;
    let layers = f.conv_layers();
    let total = try_map_fold(
        images,
        Sqnr::new(layers),
        |px| {
            let mut fp32 = vec![Vec::new(); layers];
            let want = forward_layers(f, px, |l, v| fp32[l] = v.out.to_vec());
            let mut logits = vec![0f32; usize::from(m.header().classes)];
            let mut sqnr = Sqnr::new(layers);
            crate::par::with_scratch(m.arena_len(), |arena| {
                sqnr.run(&m, px, arena, &mut logits, &fp32, &want, outq)
            })
            .map_err(|e| anyhow!("internal: {e}"))?;
            Ok::<_, anyhow::Error>(sqnr)
        },
        Sqnr::merge,
        &|| {},
    )?;
    Ok(total.db())
}

/// `blob`'s logits for each of `images`, in parallel, in image order.
fn logits_of(blob: &[u8], images: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
    let m = load(blob)?;
    map(images, |px| {
        let mut logits = vec![0f32; usize::from(m.header().classes)];
        crate::par::with_scratch(m.arena_len(), |arena| m.logits(px, arena, &mut logits))
            .map_err(|e| anyhow!("inference: {e}"))?;
        Ok(logits)
    })
    .into_iter()
    .collect()
}

/// Top-1 (%) of `blob` on `labelled`.
fn top1(blob: &[u8], labelled: &[(Vec<u8>, usize)]) -> Result<f64> {
    let px: Vec<&[u8]> = labelled.iter().map(|(p, _)| p.as_slice()).collect();
    let right = logits_of(blob, &px)?
        .iter()
        .zip(labelled)
        .filter(|(l, (_, label))| argmax(l) == *label)
        .count();
    Ok(100.0 * right as f64 / labelled.len().max(1) as f64)
}

/// Mean squared logit error of `blob` against `want` (fp32 logits per image).
fn logit_mse(blob: &[u8], images: &[Vec<u8>], want: &[Vec<f32>]) -> Result<f64> {
    let px: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
    let (mut sum, mut n) = (0f64, 0usize);
    for (got, w) in logits_of(blob, &px)?.iter().zip(want) {
        for (a, b) in got.iter().zip(w) {
            sum += (f64::from(*a) - f64::from(*b)).powi(2);
            n += 1;
        }
    }
    Ok(sum / n.max(1) as f64)
}

/// Chooses the f16 layers for `target`. `lower(mask)` writes the int8 blob with those
/// layers in f16 (the quantiser's own lowering, so what is measured is what is written);
/// `f`/`stats` are the folded graph and its calibrated ranges, `calib` the calibration
/// images, `labelled` the labelled set (needed for [`Target::AccuracyBudget`]). `log`
/// receives one line per measurement. Returns the choice and its blob.
pub fn choose(
    lower: &dyn Fn(&LayerMask) -> Result<Vec<u8>>,
    f: &Folded,
    stats: &[LayerStats],
    calib: &[Vec<u8>],
    labelled: &[(Vec<u8>, usize)],
    target: Target,
    log: &mut dyn FnMut(String),
) -> Result<(Choice, Vec<u8>)> {
    let layers = f.conv_layers();
    if layers + 1 > LayerMask::CAPACITY {
        bail!(
            "mixed precision supports at most {} conv layers (depth {}), this model has {layers}",
            LayerMask::CAPACITY - 1,
            (LayerMask::CAPACITY - 2) / 2
        );
    }
    let outq = quant::output_quant(stats);
    let mut mask = LayerMask::default();
    let name = |l: usize| f.layer_name(l);
    match target {
        Target::SqnrMin(min) => loop {
            // Terminates: every round marks one more layer, and with all marked none is left.
            let blob = lower(&mask)?;
            let sq = layer_sqnr(f, &outq, &blob, calib)?;
            let worst = sq.iter().copied().fold(f64::INFINITY, f64::min);
            let dbs: Vec<String> = sq.iter().map(|d| format!("{d:.1}")).collect();
            log(format!(
                "f16 layers {:?}: layer SQNR [{}] dB",
                mask.iter(layers + 1).collect::<Vec<_>>(),
                dbs.join(", ")
            ));
            match (0..=layers).find(|&l| sq[l] < min && !mask.contains(l)) {
                Some(l) => {
                    log(format!("{} ({:.1} dB < {min} dB) → f16", name(l), sq[l]));
                    mask.insert(l);
                }
                None => {
                    let choice = Choice {
                        f16_layers: mask,
                        met: worst >= min,
                        top1: None,
                        sqnr_db: sq,
                    };
                    return Ok((choice, blob));
                }
            }
        },
        Target::AccuracyBudget(budget) => {
            if labelled.is_empty() {
                bail!("--accuracy-budget needs a labelled set (--data DIR)");
            }
            let fp32_right = map(labelled, |(px, label)| argmax(&forward(f, px)) == *label)
                .into_iter()
                .filter(|&right| right)
                .count();
            let fp32 = 100.0 * fp32_right as f64 / labelled.len() as f64;
            let int8 = top1(&lower(&mask)?, labelled)?;
            log(format!(
                "fp32 top-1 {fp32:.2}%, int8 {int8:.2}% (budget {budget} points)"
            ));
            let mut acc = int8;
            // The best mix measured, kept when the budget cannot be met.
            let mut best_mix = (acc, mask);
            if fp32 - acc > budget {
                let want: Vec<Vec<f32>> = map(calib, |px| forward(f, px));
                // Greedy forward selection: each round adds the layer that leaves the
                // smallest logit error together with those already chosen.
                while fp32 - acc > budget {
                    let mut best: Option<(f64, usize)> = None;
                    // The conv layers and the head (layer `layers`).
                    for l in (0..=layers).filter(|&l| !mask.contains(l)) {
                        let mut with = mask;
                        with.insert(l);
                        let e = logit_mse(&lower(&with)?, calib, &want)?;
                        if best.is_none_or(|(b, _)| e < b) {
                            best = Some((e, l));
                        }
                    }
                    let Some((e, l)) = best else { break };
                    mask.insert(l);
                    acc = top1(&lower(&mask)?, labelled)?;
                    log(format!(
                        "+ {} → f16: logit MSE {e:.4}, top-1 {acc:.2}%",
                        name(l)
                    ));
                    if acc > best_mix.0 {
                        best_mix = (acc, mask);
                    }
                }
            }
            let met = fp32 - acc <= budget;
            if !met {
                (acc, mask) = best_mix;
            }
            let blob = lower(&mask)?;
            let sq = layer_sqnr(f, &outq, &blob, calib)?;
            let choice = Choice {
                f16_layers: mask,
                met,
                top1: Some((fp32, int8, acc)),
                sqnr_db: sq,
            };
            Ok((choice, blob))
        }
    }
}
