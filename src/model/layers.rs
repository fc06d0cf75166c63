//! The layer runners of [`Model`]: the float, int8 (with f16 layers) and MLP-Mixer passes
//! over the arena, each layer split over the cores ([`Work`]).

use super::*;

impl<'a> Model<'a> {
    fn float_layer<W>(
        &self,
        layer: usize,
        wrap: fn(&'a [u8]) -> W,
    ) -> Result<k::FloatLayer<'a, W>, Error> {
        let aff = self.blob.section(SectionKind::Affine, layer)?;
        // Thirds of the section (split_at at len / 3 and at the rest's half cannot fail).
        let (scale, rest) = aff.split_at(aff.len() / 3);
        let (shift, unscale) = rest.split_at(rest.len() / 2);
        Ok(k::FloatLayer {
            w: wrap(self.blob.section(SectionKind::Weights, layer)?),
            bias: F32Le(self.blob.section(SectionKind::Bias, layer)?),
            scale: F32Le(scale),
            shift: F32Le(shift),
            unscale: F32Le(unscale),
        })
    }

    /// The float network over the two activation buffers `a`, `b` (bytes, 16-aligned,
    /// `4 · tokens · dim` each: f32, or f16 in the first half).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_float<W: FloatWeights, M: FloatArith>(
        &self,
        px: &[u8],
        a: &mut [u8],
        b: &mut [u8],
        mean: &mut [f32],
        logits: &mut [f32],
        wrap: fn(&'a [u8]) -> W,
        trace: &mut Trace<'_>,
        work: Work<'_>,
    ) -> Result<(), Error> {
        let h = self.header();
        let act = h.activation;
        let (eg, g) = self.geometry();
        let n = g.tokens() * g.dim;
        let esz = core::mem::size_of::<M::Act>();
        let align = |_| Error::Malformed("arena alignment");
        // Both buffers hold 4·tokens·dim bytes (the plan); esz ≤ 4.
        let short = Error::Malformed("arena plan");
        {
            // The embedding, split by token ranges, gathers patches into `b` (as f32, a
            // share of it per part) while writing `a`.
            let scratch: &mut [f32] = bytemuck::try_cast_slice_mut(&mut *b).map_err(align)?;
            let a: &mut [M::Act] =
                bytemuck::try_cast_slice_mut(a.get_mut(..n * esz).ok_or(short)?).map_err(align)?;
            let (l, isa) = (self.float_layer(0, wrap)?, self.isa);
            let share = (scratch.len() / work.parts).max(1);
            let items = by_tokens(a, g.tokens(), g.dim, work.parts).zip(scratch.chunks_mut(share));
            fork(work.cores, items, |((t, out), sc)| {
                embed_f::embed_tokens::<W, M>(px, eg, g.dim, &l, act, out, sc, isa, t)
            });
        }
        let a: &mut [M::Act] =
            bytemuck::try_cast_slice_mut(a.get_mut(..n * esz).ok_or(short)?).map_err(align)?;
        let b: &mut [M::Act] =
            bytemuck::try_cast_slice_mut(b.get_mut(..n * esz).ok_or(short)?).map_err(align)?;
        trace(0, M::trace(a));
        // The depthwise convs split by channel slices (16-channel SIMD steps at least),
        // the pointwise by tokens.
        let unit = work.channel_unit(g.dim, esz, 16);
        for i in 0..usize::from(h.depth) {
            let dw = self.float_layer(1 + 2 * i, wrap)?;
            let (isa, x) = (self.isa, &*a);
            let views = ChannelsMut::split(b, g.dim, unit, work.parts);
            fork(work.cores, views.into_iter(), |mut v| {
                dw_f::dw_channels::<W, M>(x, g, &dw, act, &mut v, isa)
            });
            trace(1 + 2 * i, M::trace(b));
            let pw = self.float_layer(2 + 2 * i, wrap)?;
            let (isa, dim, b) = (self.isa, g.dim, &*b);
            let items = by_tokens(a, g.tokens(), dim, work.parts);
            fork(work.cores, items, |(t, out)| {
                if let Some(x) = b.get(t.start * dim..t.end * dim) {
                    pw_f::pw::<W, M>(x, t.len(), dim, &pw, act, out, isa)
                }
            });
            trace(2 + 2 * i, M::trace(a));
        }
        let hl = h.head_layer();
        let w = wrap(self.blob.section(SectionKind::Weights, hl)?);
        let bias = F32Le(self.blob.section(SectionKind::Bias, hl)?);
        // The pool by channel ranges, the head by class ranges (8-wide SIMD steps).
        let (isa, tokens, dim, a) = (self.isa, g.tokens(), g.dim, &*a);
        let fits = tokens.checked_mul(dim).is_some_and(|n| a.len() >= n);
        let mean = mean.get_mut(..dim).filter(|_| fits).ok_or(short)?;
        work.pool_then_head(
            mean,
            logits,
            (8, 8),
            |c0, m| head_f::pool_f::<M>(a, tokens, dim, c0, m, isa),
            |mean, k0, l| head_f::logits_f::<W, M>(mean, dim, &w, bias, k0, l, isa),
        );
        Ok(())
    }

    fn quant_layer(&self, layer: usize) -> Result<k::QuantLayer<'a>, Error> {
        let q = I32Le(self.blob.section(SectionKind::QParams, layer)?);
        Ok(k::QuantLayer {
            w: bytemuck::cast_slice(self.blob.section(SectionKind::Weights, layer)?),
            bias: I32Le(self.blob.section(SectionKind::Bias, layer)?),
            requant: I32Le(self.blob.section(SectionKind::Requant, layer)?),
            zp_in: q.at(0),
            zp_z: q.at(1),
            zp_out: q.at(2),
            table: self.blob.section(SectionKind::Table, layer)?,
        })
    }

    fn mixed_layer(&self, layer: usize) -> Result<MixedLayer<'a>, Error> {
        let q = I32Le(self.blob.section(SectionKind::QParams, layer)?);
        let s = self.blob.section(SectionKind::IoScale, layer)?;
        let (s_in, s_out) = s.split_at(s.len() / 2);
        Ok(MixedLayer {
            f: self.float_layer(layer, F16Le)?,
            s_in: F32Le(s_in),
            zp_in: q.at(0),
            s_out: F32Le(s_out),
            zp_out: q.at(2),
        })
    }

    /// The int8 ConvMixer: `a` the activations, `scratch` one buffer of `work.part` bytes
    /// per part. With several parts the layers split: the embedding and the pointwise
    /// convs by token ranges, the depthwise convs by channel slices, int8 or (a mixed
    /// blob's) f16 alike, the pool by channel ranges and the head by class ranges; each part
    /// writes only its own tokens, channels or classes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_int8(
        &self,
        px: &[u8],
        a: &mut [i8],
        scratch: &mut [i8],
        mean: &mut [i32],
        logits: &mut [f32],
        trace: &mut Trace<'_>,
        work: Work<'_>,
    ) -> Result<(), Error> {
        let h = self.header();
        let act = h.activation;
        let (eg, g) = self.geometry();
        let (isa, dim, tokens) = (self.isa, g.dim, g.tokens());
        let parts = work.parts;
        // One scratch buffer per part; the first is the single-core scratch.
        let mut sc = work.scratch(scratch);
        // Layers marked in the header's f16 mask run in float between the int8 tensors.
        let f16 = |l| h.f16_layers.contains(l);
        if f16(0) {
            let l = self.mixed_layer(0)?;
            fork(work.cores, by_tokens(a, tokens, dim, parts), |(t, out)| {
                mixed::embed_tokens(px, eg, dim, &l, act, out, t)
            });
        } else {
            let l = self.quant_layer(0)?;
            let items = by_tokens(a, tokens, dim, parts).zip(sc.iter_mut());
            fork(work.cores, items, |((t, out), sc)| {
                gemm_i8::embed_i8_tokens(px, eg, dim, &l, act, sc, out, t, isa)
            });
        }
        trace(0, LayerOutput::Int8(a));
        for i in 0..usize::from(h.depth) {
            let (dw, pw) = (1 + 2 * i, 2 + 2 * i);
            // Split by channel slices: whole 64-byte lines per part where there are
            // enough channels, else the SIMD kernel's slice (8 or 16 channels, dividing a
            // line), or single channels on the per-token driver.
            let views = ChannelsMut::split(
                a,
                dim,
                work.channel_unit(dim, 1, dw_i8::channel_unit(isa, dim)),
                parts,
            );
            let items = views.into_iter().zip(sc.iter_mut());
            if f16(dw) {
                let l = self.mixed_layer(dw)?;
                fork(work.cores, items, |(mut v, sc)| {
                    mixed::dw_channels(&mut v, sc, g, &l, act)
                });
            } else {
                let l = self.quant_layer(dw)?;
                fork(work.cores, items, |(mut v, sc)| {
                    dw_i8::dw_i8_channels(&mut v, sc, g, &l, act, isa)
                });
            }
            trace(dw, LayerOutput::Int8(a));
            if f16(pw) {
                let l = self.mixed_layer(pw)?;
                let items = by_tokens(a, tokens, dim, parts).zip(sc.iter_mut());
                fork(work.cores, items, |((t, x), sc)| {
                    mixed::pw_inplace(x, sc, t.len(), dim, &l, act)
                });
            } else {
                let l = self.quant_layer(pw)?;
                let items = by_tokens(a, tokens, dim, parts).zip(sc.iter_mut());
                fork(work.cores, items, |((t, x), sc)| {
                    gemm_i8::pw_i8_inplace(x, sc, t.len(), dim, &l, act, isa)
                });
            }
            trace(pw, LayerOutput::Int8(a));
        }
        let hl = h.head_layer();
        let section = |kind| self.blob.section(kind, hl);
        let zp_in = I32Le(section(SectionKind::QParams)?).at(0);
        if f16(hl) {
            // The pool by channel ranges, the head by class ranges.
            let (s_in, w) = (
                F32Le(section(SectionKind::IoScale)?),
                F16Le(section(SectionKind::Weights)?),
            );
            let bias = F32Le(section(SectionKind::Bias)?);
            let mean = mean.get_mut(..dim).ok_or(Error::Malformed("arena plan"))?;
            let x = &*a;
            work.pool_then_head(
                mean,
                logits,
                (16, 1),
                |c0, m| mixed::head_pool(x, tokens, dim, zp_in, c0, m),
                |sums, k0, l| mixed::head_logits(sums, tokens, dim, s_in, w, bias, k0, l),
            );
            return Ok(());
        }
        let head = I8Head {
            zp_in,
            frac_bits: u32::from(h.gap_frac_bits),
            w: bytemuck::cast_slice(section(SectionKind::Weights)?),
            scale: F32Le(section(SectionKind::HeadScale)?),
            bias: F32Le(section(SectionKind::Bias)?),
        };
        head.run(a, g.tokens(), g.dim, mean, logits, work, isa);
        Ok(())
    }
}

/// An int8 pool + head's parameters (a ConvMixer's or an MLP-Mixer's).
struct I8Head<'a> {
    zp_in: i32,
    frac_bits: u32,
    w: &'a [i8],
    scale: F32Le<'a>,
    bias: F32Le<'a>,
}

impl I8Head<'_> {
    /// The pool by channel ranges (whole 16-channel units, the widest SIMD step), then the
    /// head by class ranges ([`Work::pool_then_head`]).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[i8],
        tokens: usize,
        dim: usize,
        mean: &mut [i32],
        logits: &mut [f32],
        work: Work<'_>,
        isa: Isa,
    ) {
        let fits = tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
            && logits
                .len()
                .checked_mul(dim)
                .is_some_and(|n| self.w.len() >= n);
        let Some(mean) = mean.get_mut(..dim).filter(|_| fits) else {
            return;
        };
        let (w, scale, bias) = (self.w, self.scale, self.bias);
        work.pool_then_head(
            mean,
            logits,
            (16, 1),
            |c0, m| head_i8::pool_i8(x, tokens, dim, self.zp_in, self.frac_bits, c0, m, isa),
            |mean, k0, l| head_i8::logits_i8(mean, dim, w, scale, bias, k0, l, isa),
        );
    }
}

/// `a` in `parts` consecutive ranges of whole `unit`s (the last takes the remainder below
/// a unit), as even as the units allow, each with its first index; empty ones left out.
fn by_units<T>(a: &mut [T], unit: usize, parts: usize) -> impl Iterator<Item = (usize, &mut [T])> {
    let (n, unit) = (a.len(), unit.max(1));
    let mut rest = a;
    bounds(n.div_ceil(unit), parts)
        .map(move |r| ((r.start * unit).min(n), (r.end * unit).min(n)))
        .filter(|(lo, hi)| lo < hi)
        .map(move |(lo, hi)| {
            let len = (hi - lo).min(rest.len());
            let (part, tail) = core::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            (lo, part)
        })
}

impl<'a> Model<'a> {
    /// The residual-add parameters of MLP-Mixer GEMM layer `layer`.
    fn res_add(&self, layer: usize, l: &k::QuantLayer<'_>) -> Result<ResAdd, Error> {
        let r = I32Le(self.blob.section(SectionKind::ResAdd, layer)?);
        Ok(ResAdd {
            zp: l.zp_out,
            m: r.at(0),
            sh: r.at(1),
        })
    }

    /// The int8 MLP-Mixer: `x16` is the residual stream (`tokens · dim`), `ln` one int8
    /// tensor, `scratch` the MLP row tiles (one buffer of `work.part` bytes per part, the
    /// plan's sizes). With several parts the embedding, the LayerNorms and the channel MLPs
    /// split by token ranges (the LayerNorm before a token MLP writes its tokens' columns
    /// of its transposed output), the token MLPs by channel ranges (the rows of their
    /// GEMMs), the pool by channel ranges and the head by class ranges.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_mixer(
        &self,
        px: &[u8],
        x16: &mut [i16],
        ln: &mut [i8],
        scratch: &mut [i8],
        mean: &mut [i32],
        logits: &mut [f32],
        trace: &mut Trace<'_>,
        work: Work<'_>,
    ) -> Result<(), Error> {
        let h = self.header();
        let (eg, _) = self.geometry();
        let (t, d, isa, parts) = (h.tokens(), usize::from(h.dim), self.isa, work.parts);
        let plan = Error::Malformed("layer plan");
        let mut sc = work.scratch(scratch);
        // The embedding: a GEMM into `ln`, added into the zeroed residual stream.
        let embed = self.quant_layer(0)?;
        let add0 = self.res_add(0, &embed)?;
        let items = by_tokens(ln, t, d, parts)
            .zip(by_tokens(x16, t, d, parts))
            .zip(sc.iter_mut());
        fork(work.cores, items, |(((tk, q), (_, x)), sc)| {
            let gelu = crate::Activation::Gelu;
            gemm_i8::embed_i8_tokens(px, eg, d, &embed, gelu, sc, q, tk.clone(), isa);
            x.iter_mut().for_each(|v| *v = 0);
            res_add::add_residual(q, tk.len(), d, add0, x, false, isa);
        });
        trace(0, LayerOutput::Int16(x16));
        let mut layer = 1;
        while layer < h.head_layer() {
            let norm =
                k::LayerNormI16::from_section(self.blob.section(SectionKind::LayerNorm, layer)?, d);
            // LayerNorm, fc1, fc2: the token MLP works on the transposed LayerNorm output.
            let last = layer + 1 == h.head_layer();
            let token = !last && h.mixer_layer(layer + 1) == Some(MixerLayer::TokenFc1);
            if token {
                // Split by tokens: columns of the transposed output.
                let (x, unit) = (&*x16, work.channel_unit(t, 1, 1));
                let views = ChannelsMut::split(ln, t, unit, parts);
                fork(
                    work.cores,
                    views.into_iter().zip(sc.iter_mut()),
                    |(mut v, sc)| {
                        layer_norm::layer_norm_i16_columns(x, t, d, &norm, &mut v, sc, isa)
                    },
                );
            } else {
                let x = &*x16;
                fork(work.cores, by_tokens(ln, t, d, parts), |(tk, out)| {
                    if let Some(rows) = x.get(tk.start * d..tk.end * d) {
                        layer_norm::layer_norm_i16(rows, tk.len(), d, &norm, out, false, isa)
                    }
                });
            }
            if last {
                break;
            }
            let (rows, kin, hidden) = h.mixer_gemm(layer + 1).ok_or(plan)?;
            let (_, _, n) = h.mixer_gemm(layer + 2).ok_or(plan)?;
            let (fc1, fc2) = (self.quant_layer(layer + 1)?, self.quant_layer(layer + 2)?);
            let add = self.res_add(layer + 2, &fc2)?;
            let (x, shape, layers) = (&*ln, (kin, hidden, n), (&fc1, &fc2, add));
            if token {
                // Rows are channels of the i16 stream.
                let unit = work.channel_unit(d, 2, 1);
                let views = ChannelsMut::split(x16, d, unit, parts);
                fork(
                    work.cores,
                    views.into_iter().zip(sc.iter_mut()),
                    |(mut v, sc)| {
                        let r = v.channels();
                        let to = gemm_i8::MlpRows::Channels(&mut v);
                        gemm_i8::mlp_i8_rows(x, r, shape, layers, to, sc, isa)
                    },
                );
            } else {
                let items = by_tokens(x16, rows, n, parts).zip(sc.iter_mut());
                fork(work.cores, items, |((r, resid), sc)| {
                    let to = gemm_i8::MlpRows::Tokens(resid);
                    gemm_i8::mlp_i8_rows(x, r, shape, layers, to, sc, isa)
                });
            }
            trace(layer + 2, LayerOutput::Int16(x16));
            layer += 3;
        }
        let hl = h.head_layer();
        let section = |kind| self.blob.section(kind, hl);
        let head = I8Head {
            zp_in: I32Le(section(SectionKind::QParams)?).at(0),
            frac_bits: u32::from(h.gap_frac_bits),
            w: bytemuck::cast_slice(section(SectionKind::Weights)?),
            scale: F32Le(section(SectionKind::HeadScale)?),
            bias: F32Le(section(SectionKind::Bias)?),
        };
        head.run(ln, t, d, mean, logits, work, isa);
        Ok(())
    }
}

/// How a forward pass may split its layers: `parts` tasks per layer on `cores`, each with
/// a scratch buffer of `part` bytes.
#[derive(Clone, Copy)]
pub(super) struct Work<'c> {
    pub(super) cores: &'c dyn Cores,
    pub(super) parts: usize,
    pub(super) part: usize,
}

impl Work<'_> {
    /// `scratch` as one buffer of `part` bytes per part (in the plan's order).
    fn scratch<'s>(&self, scratch: &'s mut [i8]) -> heapless::Vec<&'s mut [i8], MAX_PARTS> {
        let mut sc = heapless::Vec::new();
        for chunk in scratch.chunks_mut(self.part.max(1)).take(self.parts) {
            // Cannot fail: parts ≤ MAX_PARTS.
            let _ = sc.push(chunk);
        }
        sc
    }

    /// A pool and head split over the parts: `pool(c0, part)` on channel ranges of whole
    /// `units.0` of `mean`, then (after the join) `head(mean, k0, part)` on class ranges of
    /// whole `units.1` of `logits`; each part writes only its channels or classes. Two
    /// joins on several parts.
    fn pool_then_head<T: Send + Sync>(
        &self,
        mean: &mut [T],
        logits: &mut [f32],
        (pool_unit, class_unit): (usize, usize),
        pool: impl Fn(usize, &mut [T]) + Sync,
        head: impl Fn(&[T], usize, &mut [f32]) + Sync,
    ) {
        fork(
            self.cores,
            by_units(mean, pool_unit, self.parts),
            |(c0, m)| pool(c0, m),
        );
        let mean = &*mean;
        fork(
            self.cores,
            by_units(logits, class_unit, self.parts),
            |(k0, l)| head(mean, k0, l),
        );
    }

    /// Channels per part of a layer split by channel slices of a tensor with
    /// `bytes`-byte elements: whole 64-byte lines of each token where there are enough
    /// channels for every part (so that no cache line is written by two cores), else
    /// `otherwise` (the kernel's own step).
    fn channel_unit(&self, dim: usize, bytes: usize, otherwise: usize) -> usize {
        let line = 64 / bytes.clamp(1, 64);
        if dim >= line * self.parts {
            line
        } else {
            otherwise
        }
    }
}

/// `a`'s tokens in `parts` consecutive ranges (sizes differing by at most one): each
/// range with its `dim`-wide values.
fn by_tokens<T>(
    a: &mut [T],
    tokens: usize,
    dim: usize,
    parts: usize,
) -> impl Iterator<Item = (Range<usize>, &mut [T])> {
    let mut rest = a;
    bounds(tokens, parts).map(move |t| {
        let n = (t.len() * dim).min(rest.len());
        let (part, tail) = core::mem::take(&mut rest).split_at_mut(n);
        rest = tail;
        (t, part)
    })
}
