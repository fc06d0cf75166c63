//! Calibration: runs the folded fp32 graph on sample images and records, per conv layer,
//! the range of the pre-activation accumulator, of the activation output and of the
//! layer's output (for depthwise layers: the residual sum).
//!
//! The int8 tensors (every layer's output, and the GELU table's input) then get their
//! clipping range by one of the [`Method`]s: min/max keeps everything; percentile, MSE and
//! entropy clip rare outliers so that the common values get finer steps. Those three run a
//! second pass that fills a 2048-bin histogram of each tensor over its min/max range, and
//! pick the range from it; all of it is deterministic (same images, same blob).

use crate::fold::Folded;
use crate::forward::{forward_layers, LayerValues};
use crate::par::map_fold;

mod means;
pub use means::input_means;
pub(crate) use means::{means_of, patch_sums};

/// A closed value range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Smallest value seen.
    pub lo: f32,
    /// Largest value seen.
    pub hi: f32,
}

impl Default for Range {
    fn default() -> Self {
        Range {
            lo: f32::INFINITY,
            hi: f32::NEG_INFINITY,
        }
    }
}

impl Range {
    /// Widens the range to contain `v`.
    pub fn add(&mut self, v: f32) {
        self.lo = self.lo.min(v);
        self.hi = self.hi.max(v);
    }
    /// The range widened to contain 0 (so that 0.0 is exactly representable).
    pub fn with_zero(&self) -> (f32, f32) {
        if self.lo > self.hi {
            return (0.0, 0.0);
        }
        (self.lo.min(0.0), self.hi.max(0.0))
    }
}

/// Ranges seen at one conv layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LayerStats {
    /// Pre-activation accumulator (bias included).
    pub pre: Range,
    /// Activation output.
    pub act: Range,
    /// Layer output (post-BN; depthwise: after the residual add); the clipping range of
    /// the calibration method.
    pub out: Range,
    /// Layer output per channel (min/max; the int8 tensor's per-channel scales are these
    /// ranges within `out`).
    pub out_ch: Vec<Range>,
    /// Pre-activation accumulator per channel (min/max; GELU channels whose range is too
    /// narrow for the tensor's table are mapped onto its linear part, see
    /// [`crate::quant`]).
    pub pre_ch: Vec<Range>,
}

impl Range {
    /// The union of both ranges.
    pub fn merge(&mut self, o: &Range) {
        self.lo = self.lo.min(o.lo);
        self.hi = self.hi.max(o.hi);
    }
}

impl LayerStats {
    /// Widens the ranges by one image's values of this layer (`dim` channels).
    fn see(&mut self, v: &LayerValues<'_>, dim: usize) {
        if dim == 0 {
            return;
        }
        if self.out_ch.len() != dim {
            self.out_ch = vec![Range::default(); dim];
            self.pre_ch = vec![Range::default(); dim];
        }
        // The forward's epilogue took each channel's extremes over the tokens; a channel
        // with no number (lo > hi) adds nothing.
        let e = v.extremes;
        let widen = |r: &mut [Range], lo: &[f32], hi: &[f32]| {
            for ((r, &l), &h) in r.iter_mut().zip(lo).zip(hi).filter(|((_, l), h)| l <= h) {
                r.add(l);
                r.add(h);
            }
        };
        widen(&mut self.pre_ch, &e.pre_lo, &e.pre_hi);
        widen(&mut self.out_ch, &e.out_lo, &e.out_hi);
        // The activation's one range: the same extremes, over the channels.
        for (&l, &h) in e.act_lo.iter().zip(&e.act_hi).filter(|(l, h)| l <= h) {
            self.act.add(l);
            self.act.add(h);
        }
        for r in &self.pre_ch {
            self.pre.merge(r);
        }
        for r in &self.out_ch {
            self.out.merge(r);
        }
    }

    /// The union of both images' (or image sets') ranges.
    fn merge(mut self, o: LayerStats) -> LayerStats {
        self.pre.merge(&o.pre);
        self.act.merge(&o.act);
        self.out.merge(&o.out);
        if self.out_ch.is_empty() {
            self.out_ch = o.out_ch;
            self.pre_ch = o.pre_ch;
        } else {
            for (a, b) in self.out_ch.iter_mut().zip(&o.out_ch) {
                a.merge(b);
            }
            for (a, b) in self.pre_ch.iter_mut().zip(&o.pre_ch) {
                a.merge(b);
            }
        }
        self
    }
}

/// How the clipping range of each int8 tensor is chosen from the calibration set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The smallest and largest value seen (nothing clipped).
    MinMax,
    /// The `p`-th and `(100 − p)`-th percentiles (e.g. 99.99).
    Percentile(f64),
    /// The range that minimises the mean squared error of quantise → dequantise over the
    /// histogram (clipping error plus rounding error), searched over shrunk min/max ends.
    Mse,
    /// TensorRT's entropy calibration: the magnitude threshold whose 128-level quantised
    /// histogram is closest (KL divergence) to the clipped original.
    Entropy,
}

impl Method {
    /// Parses `minmax`, `percentile` (99.99), `percentile:P`, `mse` or `entropy`.
    ///
    /// ```
    /// use convmixer_quantize::calibrate::Method;
    /// assert_eq!(Method::parse("percentile:99.9").unwrap(), Method::Percentile(99.9));
    /// assert!(Method::parse("kl").is_err());
    /// ```
    pub fn parse(s: &str) -> anyhow::Result<Method> {
        let bad = || {
            anyhow::anyhow!(
                "--calibration {s}: expected minmax, percentile[:P] (50 < P ≤ 100), mse or entropy"
            )
        };
        Ok(match s {
            "minmax" => Method::MinMax,
            "percentile" => Method::Percentile(99.99),
            "mse" => Method::Mse,
            "entropy" => Method::Entropy,
            _ => {
                let p: f64 = s
                    .strip_prefix("percentile:")
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(bad)?;
                if !(p > 50.0 && p <= 100.0) {
                    return Err(bad());
                }
                Method::Percentile(p)
            }
        })
    }
}

/// The largest share of a tensor's values that entropy calibration may clip (see
/// `entropy_threshold`).
pub const ENTROPY_MAX_CLIPPED: f64 = 1e-3;

/// Bins of the second-pass histograms.
const BINS: usize = 2048;

/// A histogram of one tensor over its min/max range.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// The range the bins cover (the tensor's min/max).
    pub range: Range,
    /// `BINS` counts, bin `j` covering `lo + j·w .. lo + (j + 1)·w`.
    pub counts: Vec<u64>,
}

impl Histogram {
    fn new(range: Range) -> Self {
        Histogram {
            range,
            counts: vec![0; BINS],
        }
    }

    fn width(&self) -> f64 {
        (f64::from(self.range.hi) - f64::from(self.range.lo)) / BINS as f64
    }

    fn add(&mut self, v: f32) {
        let w = self.width();
        let j = if w > 0.0 {
            ((f64::from(v) - f64::from(self.range.lo)) / w) as usize
        } else {
            0
        };
        self.counts[j.min(BINS - 1)] += 1;
    }

    fn add_all(&mut self, v: &[f32]) {
        for &x in v {
            self.add(x);
        }
    }

    /// Bin `j`'s centre.
    fn centre(&self, j: usize) -> f64 {
        f64::from(self.range.lo) + (j as f64 + 0.5) * self.width()
    }

    /// The smallest bin edge with at least a fraction `q` of the samples below it.
    fn upper_quantile(&self, q: f64) -> f64 {
        let target = q * self.counts.iter().sum::<u64>() as f64;
        let mut seen = 0u64;
        for (j, &c) in self.counts.iter().enumerate() {
            seen += c;
            if c > 0 && seen as f64 >= target {
                return f64::from(self.range.lo) + (j + 1) as f64 * self.width();
            }
        }
        f64::from(self.range.hi)
    }

    /// The largest bin edge with at most a fraction `q` of the samples below it.
    fn lower_quantile(&self, q: f64) -> f64 {
        let target = q * self.counts.iter().sum::<u64>() as f64;
        let mut seen = 0u64;
        for (j, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen as f64 > target {
                return f64::from(self.range.lo) + j as f64 * self.width();
            }
        }
        f64::from(self.range.lo)
    }

    /// Mean squared error of asymmetric uint8-grid quantisation with clip range `lo..hi`
    /// (widened to contain 0, as the quantiser does), over the histogram's bin centres.
    fn mse(&self, lo: f64, hi: f64) -> f64 {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let (scale, zp) = asym(lo as f32, hi as f32);
        let mut err = 0.0;
        for (j, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let v = self.centre(j);
            let q = ((v / scale).round() + f64::from(zp)).clamp(-128.0, 127.0);
            let d = v - (q - f64::from(zp)) * scale;
            err += c as f64 * d * d;
        }
        err
    }
}

/// The clipping range `method` picks from a histogram.
pub fn clip(h: &Histogram, method: Method) -> Range {
    let (lo, hi) = (f64::from(h.range.lo), f64::from(h.range.hi));
    if lo >= hi || method == Method::MinMax {
        return h.range;
    }
    let (a, b) = match method {
        Method::MinMax => (lo, hi),
        Method::Percentile(p) => {
            let tail = 1.0 - p / 100.0;
            (h.lower_quantile(tail), h.upper_quantile(1.0 - tail))
        }
        Method::Mse => {
            // Each end shrunk towards 0 by 1, 0.98, …, 0.02 of its extent: 50 × 50 pairs.
            let mut best = (h.mse(lo, hi), lo, hi);
            for i in 0..50 {
                for k in 0..50 {
                    let (fa, fb) = (1.0 - 0.02 * i as f64, 1.0 - 0.02 * k as f64);
                    let (ca, cb) = (lo.min(0.0) * fa, hi.max(0.0) * fb);
                    let e = h.mse(ca.max(lo), cb.min(hi));
                    if e < best.0 {
                        best = (e, ca.max(lo), cb.min(hi));
                    }
                }
            }
            (best.1, best.2)
        }
        Method::Entropy => {
            let t = entropy_threshold(h);
            (lo.max(-t), hi.min(t))
        }
    };
    Range {
        lo: a.min(0.0).max(lo) as f32,
        hi: b.max(0.0).min(hi) as f32,
    }
}

/// TensorRT's entropy calibration on the histogram of magnitudes `|x|`: among thresholds
/// `T` = the edges of bins 128..=n, the one whose clipped distribution P (outliers added
/// to the last bin) is best matched (least KL(P‖Q)) by Q, P requantised to 128 levels.
///
/// One guard: `T` never clips more than [`ENTROPY_MAX_CLIPPED`] of the values. KL compares
/// shapes only, so when most of the mass sits in spikes — BatchNorm maps every channel's
/// ReLU zeros to its own offset, a spike per channel near 0 — clipping the whole tail costs
/// it almost nothing: on a ReLU ConvMixer (the k9p1-relu peer model) it chose thresholds
/// that clipped a quarter of the embedding's values, and top-1 fell from 98% to 25%.
fn entropy_threshold(h: &Histogram) -> f64 {
    const LEVELS: usize = 128;
    let (lo, hi) = (f64::from(h.range.lo), f64::from(h.range.hi));
    let m = lo.abs().max(hi.abs());
    let w = m / BINS as f64;
    let mut mag = vec![0f64; BINS];
    for (j, &c) in h.counts.iter().enumerate() {
        let k = ((h.centre(j).abs() / w) as usize).min(BINS - 1);
        mag[k] += c as f64;
    }
    // The fewest bins that leave at most ENTROPY_MAX_CLIPPED of the mass above them.
    let total: f64 = mag.iter().sum();
    let mut below = 0.0;
    let floor = mag
        .iter()
        .position(|&c| {
            below += c;
            below >= (1.0 - ENTROPY_MAX_CLIPPED) * total
        })
        .map_or(BINS, |j| j + 1);
    let mut best = (f64::INFINITY, m);
    for n in (LEVELS..=BINS)
        .step_by(16)
        .filter(|&n| n >= floor || n == BINS)
    {
        let mut p: Vec<f64> = mag[..n].to_vec();
        p[n - 1] += mag[n..].iter().sum::<f64>();
        // Q: the first n bins (outliers not added) merged into LEVELS groups, each group's
        // mass spread evenly over the bins where P is non-zero (as TensorRT and MXNet do).
        let mut q = vec![0f64; n];
        for g in 0..LEVELS {
            let (s, e) = (g * n / LEVELS, (g + 1) * n / LEVELS);
            let mass: f64 = mag[s..e].iter().sum();
            let nonzero = p[s..e].iter().filter(|&&v| v > 0.0).count();
            if nonzero > 0 {
                for k in s..e {
                    if p[k] > 0.0 {
                        q[k] = mass / nonzero as f64;
                    }
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if ps <= 0.0 || qs <= 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for k in 0..n {
            if p[k] > 0.0 {
                let (pk, qk) = (p[k] / ps, (q[k] / qs).max(1e-12));
                kl += pk * (pk / qk).ln();
            }
        }
        if kl < best.0 {
            best = (kl, n as f64 * w);
        }
    }
    best.1
}

/// Min/max calibration over `images` (raw HWC pixels), in parallel over the images
/// ([`crate::par`]: the same ranges from any number of threads), calling `progress` after
/// each.
pub fn calibrate<I: AsRef<[u8]> + Sync>(
    f: &Folded,
    images: &[I],
    progress: &(dyn Fn() + Sync),
) -> Vec<LayerStats> {
    let empty = vec![LayerStats::default(); f.conv_layers()];
    map_fold(
        images,
        empty.clone(),
        |img| {
            let mut s = empty.clone();
            forward_layers(f, img.as_ref(), |l, v| s[l].see(v, f.dim));
            s
        },
        |acc, s| acc.into_iter().zip(s).map(|(a, b)| a.merge(b)).collect(),
        progress,
    )
}

/// Calibration over `images` with `method` choosing the clipping ranges of the int8
/// tensors (each layer's `out`, and `pre` where it feeds the GELU table); `act` keeps its
/// min/max (ReLU's output is i16 in the runtime). Methods other than min/max take a second
/// pass over the images; `progress` is called after each image of each pass.
pub fn calibrate_with<I: AsRef<[u8]> + Sync>(
    f: &Folded,
    images: &[I],
    method: Method,
    progress: &(dyn Fn() + Sync),
) -> Vec<LayerStats> {
    let mut stats = calibrate(f, images, progress);
    if method == Method::MinMax {
        return stats;
    }
    let hists = histograms(f, images, &stats, true, progress);
    for (s, h) in stats.iter_mut().zip(hists.chunks_exact(2)) {
        s.pre = clip(&h[0], method);
        s.out = clip(&h[1], method);
    }
    stats
}

/// The histograms of every conv layer's output (and, with `pre`, first its pre-activation:
/// two per layer, `[pre, out]`) over the ranges in `stats`, in parallel over the images.
fn histograms<I: AsRef<[u8]> + Sync>(
    f: &Folded,
    images: &[I],
    stats: &[LayerStats],
    pre: bool,
    progress: &(dyn Fn() + Sync),
) -> Vec<Histogram> {
    let ranges: Vec<Range> = stats
        .iter()
        .flat_map(|s| pre.then_some(s.pre).into_iter().chain([s.out]))
        .collect();
    let per = if pre { 2 } else { 1 };
    tensor_histograms(
        images,
        &ranges,
        |img, add| {
            forward_layers(f, img, |l, v| {
                if pre {
                    add(per * l, v.pre);
                }
                add(per * l + per - 1, v.out);
            });
        },
        progress,
    )
}

/// The second pass of every clipping [`Method`], for either network: a histogram of each
/// tensor `t` over `ranges[t]` (its min/max from the first pass), filled in parallel over
/// the images by `observe(image, add)`, which calls `add(t, values)` with the values tensor
/// `t` takes on that image (an index past `ranges` is ignored). The per-image histograms
/// are added in image order ([`crate::par`]). `clip(&h[t], method)` is then tensor `t`'s
/// clipping range.
///
/// ```
/// use convmixer_quantize::calibrate::{clip, tensor_histograms, Method, Range};
/// let images = [vec![0u8, 1, 2, 200], vec![3, 4, 5, 6]];
/// let ranges = [Range { lo: 0.0, hi: 200.0 }];
/// let h = tensor_histograms(&images, &ranges, |img, add| {
///     let v: Vec<f32> = img.iter().map(|&p| f32::from(p)).collect();
///     add(0, &v);
/// }, &|| {});
/// assert_eq!(h[0].total(), 8);
/// // The one outlier is clipped by the 80th percentile, not by min/max.
/// assert!(clip(&h[0], Method::Percentile(80.0)).hi < 100.0);
/// assert_eq!(clip(&h[0], Method::MinMax).hi, 200.0);
/// ```
pub fn tensor_histograms<I: AsRef<[u8]> + Sync>(
    images: &[I],
    ranges: &[Range],
    observe: impl Fn(&[u8], &mut dyn FnMut(usize, &[f32])) + Sync,
    progress: &(dyn Fn() + Sync),
) -> Vec<Histogram> {
    let empty: Vec<Histogram> = ranges.iter().map(|&r| Histogram::new(r)).collect();
    map_fold(
        images,
        empty.clone(),
        |img| {
            let mut h = empty.clone();
            observe(img.as_ref(), &mut |t, v| {
                if let Some(h) = h.get_mut(t) {
                    h.add_all(v);
                }
            });
            h
        },
        |mut acc, h| {
            for (a, b) in acc.iter_mut().zip(&h) {
                for (x, y) in a.counts.iter_mut().zip(&b.counts) {
                    *x += y;
                }
            }
            acc
        },
        progress,
    )
}

/// Each conv layer output's histogram over `images`, as [`calibrate_with`] builds it before
/// picking the `out` clipping range: a min/max pass, then a pass filling 2048 bins over that
/// range. `clip(&h[layer], method)` is the range `calibrate_with` chooses for the layer's
/// output; diagnostics (`host-tools report`) show both.
/// `progress` is called after each image of each of the two passes.
pub fn output_histograms<I: AsRef<[u8]> + Sync>(
    f: &Folded,
    images: &[I],
    progress: &(dyn Fn() + Sync),
) -> Vec<Histogram> {
    let stats = calibrate(f, images, progress);
    histograms(f, images, &stats, false, progress)
}

impl Histogram {
    /// Samples counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Samples in bins whose centre lies outside `r` (those a clip to `r` changes).
    pub fn outside(&self, r: Range) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .filter(|&(j, _)| {
                let c = self.centre(j);
                c < f64::from(r.lo) || c > f64::from(r.hi)
            })
            .map(|(_, &c)| c)
            .sum()
    }
}

/// Asymmetric int8 `(scale, zero point)` covering `[lo, hi]` (which contains 0): what a
/// calibrated range becomes in the blob.
///
/// ```
/// let (s, zp) = convmixer_quantize::calibrate::asym(-1.0, 3.0);
/// assert!((s - 4.0 / 255.0).abs() < 1e-12 && zp == -64);
/// ```
pub fn asym(lo: f32, hi: f32) -> (f64, i32) {
    let (lo, hi) = (f64::from(lo.min(0.0)), f64::from(hi.max(0.0)));
    let s = ((hi - lo) / 255.0).max(1e-6);
    let zp = (-128.0 - lo / s).round().clamp(-128.0, 127.0) as i32;
    (s, zp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn histogram_of(v: &[f32]) -> Histogram {
        let mut r = Range::default();
        v.iter().for_each(|&x| r.add(x));
        let mut h = Histogram::new(r);
        v.iter().for_each(|&x| h.add(x));
        h
    }

    /// 200,000 roughly normal samples (sum of 12 uniforms − 6) plus 20 far outliers at +40.
    fn outlier_histogram() -> Histogram {
        let mut uni = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut v: Vec<f32> = (0..200_000)
            .map(|_| ((0..12).map(|_| uni()).sum::<f64>() - 6.0) as f32)
            .collect();
        v.extend(std::iter::repeat_n(40.0f32, 20));
        histogram_of(&v)
    }

    /// 200,000 Laplace samples (heavy exponential tails).
    fn laplace_histogram() -> Histogram {
        let mut uni = xorshift(0x2545_f491_4f6c_dd1d);
        let v: Vec<f32> = (0..200_000)
            .map(|_| {
                let m = -(uni().max(1e-300)).ln();
                (if uni() < 0.5 { -m } else { m }) as f32
            })
            .collect();
        histogram_of(&v)
    }

    #[test]
    fn minmax_and_full_percentile_keep_the_whole_range() {
        let h = outlier_histogram();
        assert_eq!(clip(&h, Method::MinMax), h.range);
        let p = clip(&h, Method::Percentile(100.0));
        assert!(
            (p.lo - h.range.lo).abs() < 1e-4 && (p.hi - h.range.hi).abs() < 1e-4,
            "{p:?}"
        );
    }

    #[test]
    fn percentile_and_entropy_drop_rare_outliers_and_keep_the_bulk() {
        let h = outlier_histogram();
        assert_eq!(h.range.hi, 40.0);
        for m in [Method::Percentile(99.99), Method::Entropy] {
            let r = clip(&h, m);
            assert!(r.hi > 2.5 && r.hi < 10.0, "{m:?}: {r:?}");
            assert!(r.lo < -2.5 && r.lo >= h.range.lo, "{m:?}: {r:?}");
        }
        // 20 values at 40 cost more clipped than the whole bulk's rounding: MSE keeps them.
        assert!(clip(&h, Method::Mse).hi > 39.0);
    }

    /// The shape of a ReLU ConvMixer's embedding output (the k9p1-relu peer model's,
    /// measured): BatchNorm maps each channel's ReLU zeros to its own offset, so 90% of the
    /// values are spikes within ±0.4; a thin plateau spans −2.7..3.1, with clumps of
    /// channels that are always on at both ends.
    #[test]
    fn entropy_does_not_clip_the_tails_of_a_spiky_tensor() {
        let mut uni = xorshift(0x853c_49e6_748f_ea9b);
        let mut v = Vec::new();
        for i in 0..200_000 {
            let u = uni();
            let x = match i % 50 {
                0..=44 => -0.35 + 0.4 * f64::from(i % 48) / 47.0, // 48 spikes
                45 => -2.7 + 5.8 * u,                             // the plateau
                46 | 47 => -2.5 + 0.2 * (u - 0.5),                // the clumps
                _ => 2.9 + 0.2 * (u - 0.5),
            };
            v.push(x as f32);
        }
        let h = histogram_of(&v);
        let r = clip(&h, Method::Entropy);
        let clipped = h.outside(r) as f64 / h.total() as f64;
        assert!(clipped <= 1e-3, "{r:?} clips {clipped}");
    }

    #[test]
    fn mse_clips_heavy_tails_and_beats_minmax() {
        let h = laplace_histogram();
        let r = clip(&h, Method::Mse);
        assert!(
            r.hi < 0.9 * h.range.hi && r.lo > 0.9 * h.range.lo,
            "{r:?} of {:?}",
            h.range
        );
        let (e_mse, e_minmax) = (
            h.mse(f64::from(r.lo), f64::from(r.hi)),
            h.mse(f64::from(h.range.lo), f64::from(h.range.hi)),
        );
        assert!(e_mse < 0.8 * e_minmax, "mse {e_mse} vs minmax {e_minmax}");
    }

    #[test]
    fn methods_parse_and_reject_nonsense() {
        assert_eq!(Method::parse("minmax").unwrap(), Method::MinMax);
        assert_eq!(
            Method::parse("percentile").unwrap(),
            Method::Percentile(99.99)
        );
        assert_eq!(Method::parse("entropy").unwrap(), Method::Entropy);
        assert_eq!(Method::parse("mse").unwrap(), Method::Mse);
        for bad in ["percentile:40", "percentile:abc", "percentile:101", "max"] {
            let e = Method::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--calibration {bad}: expected")),
                "{e}"
            );
        }
    }
}
