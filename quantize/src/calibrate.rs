//! Calibration: runs the folded fp32 graph on sample images and records, per conv layer,
//! the range of the pre-activation accumulator, of the activation output and of the
//! layer's output (for depthwise layers: the residual sum). Min/max for now.

use convmixer_edge::Activation;

use crate::fold::{Folded, Layer};

/// The activation with libm's `erff` / `tanhf`: calibration (and the fixture exporter's
/// probe statistics) use the true function, independent of the runtime's SIMD-friendly
/// float GELU (`erf_f32`).
///
/// ```
/// use convmixer_edge::Activation;
/// use convmixer_quantize::calibrate::act_f32;
/// assert_eq!(act_f32(Activation::Relu, -2.0), 0.0);
/// assert!((act_f32(Activation::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
/// ```
pub fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/pi)
            0.5 * x * (1.0 + libm::tanhf(C * (x + 0.044_715 * x * x * x)))
        }
    }
}

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
    fn add(&mut self, v: f32) {
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
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerStats {
    /// Pre-activation accumulator (bias included).
    pub pre: Range,
    /// Activation output.
    pub act: Range,
    /// Layer output (post-BN; depthwise: after the residual add).
    pub out: Range,
}

/// Runs `f` on raw HWC pixels; returns the logits. With `stats` (one entry per conv layer:
/// embedding, then dw/pw per block) the ranges are widened by what this image produces.
pub fn forward(f: &Folded, px: &[u8], mut stats: Option<&mut [LayerStats]>) -> Vec<f32> {
    let (ht, wt) = f.grid();
    let (dim, p, c, k) = (f.dim, f.patch, f.in_c, f.kernel);
    let tokens = ht * wt;
    let mut x = vec![0f32; tokens * dim];
    let mut st = |layer: usize, pre: f32, a: f32, out: f32| {
        if let Some(s) = stats.as_deref_mut() {
            let s = &mut s[layer];
            s.pre.add(pre);
            s.act.add(a);
            s.out.add(out);
        }
    };
    let finish = |l: &Layer, o: usize, acc: f32| {
        let a = act_f32(f.act, acc);
        (a, l.scale[o] * a + l.shift[o])
    };
    for ty in 0..ht {
        for tx in 0..wt {
            for o in 0..dim {
                let mut acc = f.embed.b[o];
                for ky in 0..p {
                    for kx in 0..p {
                        for ci in 0..c {
                            let pix = px[((ty * p + ky) * f.in_w + tx * p + kx) * c + ci];
                            acc += f.embed.w[((o * p + ky) * p + kx) * c + ci] * f32::from(pix);
                        }
                    }
                }
                let (a, y) = finish(&f.embed, o, acc);
                st(0, acc, a, y);
                x[(ty * wt + tx) * dim + o] = y;
            }
        }
    }
    let mut r = vec![0f32; tokens * dim];
    for (i, (dw, pw)) in f.blocks.iter().enumerate() {
        let pad = (k - 1) / 2;
        for ty in 0..ht {
            for tx in 0..wt {
                for ch in 0..dim {
                    let mut acc = dw.b[ch];
                    for ky in 0..k {
                        for kx in 0..k {
                            let (y, xx) =
                                ((ty + ky).wrapping_sub(pad), (tx + kx).wrapping_sub(pad));
                            if y < ht && xx < wt {
                                acc += dw.w[(ky * k + kx) * dim + ch] * x[(y * wt + xx) * dim + ch];
                            }
                        }
                    }
                    let t = ty * wt + tx;
                    let (a, y) = finish(dw, ch, acc);
                    let out = y + x[t * dim + ch];
                    st(1 + 2 * i, acc, a, out);
                    r[t * dim + ch] = out;
                }
            }
        }
        for t in 0..tokens {
            for o in 0..dim {
                let acc = pw.b[o]
                    + (0..dim)
                        .map(|d| pw.w[o * dim + d] * r[t * dim + d])
                        .sum::<f32>();
                let (a, y) = finish(pw, o, acc);
                st(2 + 2 * i, acc, a, y);
                x[t * dim + o] = y;
            }
        }
    }
    let mean: Vec<f32> = (0..dim)
        .map(|d| (0..tokens).map(|t| x[t * dim + d]).sum::<f32>() / tokens as f32)
        .collect();
    (0..f.classes())
        .map(|cl| {
            f.head_b[cl]
                + (0..dim)
                    .map(|d| f.head_w[cl * dim + d] * mean[d])
                    .sum::<f32>()
        })
        .collect()
}

/// Min/max calibration over `images` (raw HWC pixels), calling `progress` after each.
pub fn calibrate<'a>(
    f: &Folded,
    images: impl IntoIterator<Item = &'a [u8]>,
    mut progress: impl FnMut(),
) -> Vec<LayerStats> {
    let mut stats = vec![LayerStats::default(); 1 + 2 * f.blocks.len()];
    for img in images {
        forward(f, img, Some(&mut stats));
        progress();
    }
    stats
}
