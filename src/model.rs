//! [`Model`]: a validated blob plus the inference driver.
//!
//! Every buffer is carved out of the arena with checked `get`s and every section looked up
//! through the blob reader's checked accessors, so that a failure is an [`Error`], never a
//! panic (after `Blob` validation none of them can fail).
#![forbid(unsafe_code)]

use core::ops::Range;

use crate::blob::{self, Arch, Blob, Header, MixerLayer, SectionKind};
use crate::cores::{bounds, fork, Cores, OneCore, MAX_PARTS};
use crate::kernels::mixed::{self, MixedLayer};
use crate::kernels::parts::ChannelsMut;
use crate::kernels::reference::{F16Arith, F32Arith, FloatArith};
use crate::kernels::res_add::{self, ResAdd};
use crate::kernels::{dw_f, dw_i8, embed_f, gemm_i8, head_f, head_i8, layer_norm, pw_f};
use crate::kernels::{reference as k, EmbedGeom, Grid, Isa};
use crate::le::{F16Le, F32Le, FloatWeights, I32Le};
use crate::{Error, Precision};

mod layers;
use layers::Work;

/// A model read in place from a blob. Cheap to copy; borrows the blob.
///
/// ```
/// # fn demo(blob: &[u8]) -> Result<(), convmixer_edge::Error> {
/// let model = convmixer_edge::Model::from_bytes(blob)?;
/// println!("{}x{}x{} input, {} classes, needs {} arena bytes",
///     model.header().in_h, model.header().in_w, model.header().in_c,
///     model.header().classes, model.arena_len());
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    blob: Blob<'a>,
    isa: Isa,
    f16_arith: bool,
}

/// A layer-output observer ([`Model::logits_traced`]).
type Trace<'t> = dyn FnMut(usize, LayerOutput<'_>) + 't;

/// One conv layer's output as [`Model::logits_traced`] shows it: `tokens · dim` values,
/// token-major, in the arena's storage type.
///
/// ```
/// use convmixer_edge::LayerOutput;
/// let q = [1i8, -2, 3];
/// let out = LayerOutput::Int8(&q);
/// assert_eq!(out.len(), 3);
/// assert_eq!(LayerOutput::F16(&[0x3C00]).get_f32(0), Some(1.0));
/// ```
#[derive(Clone, Copy, Debug)]
pub enum LayerOutput<'x> {
    /// int8 blobs: quantised values (dequantise with the tensor's scale and zero point).
    Int8(&'x [i8]),
    /// f32 blobs, and f16 blobs computed in f32 arithmetic.
    F32(&'x [f32]),
    /// f16 blobs computed in binary16 arithmetic: IEEE binary16 bit patterns.
    F16(&'x [u16]),
    /// MLP-Mixer blobs: the int16 residual stream (zero point 0, one scale per tensor).
    Int16(&'x [i16]),
}

impl LayerOutput<'_> {
    /// Number of values (`tokens · dim`).
    ///
    /// ```
    /// assert_eq!(convmixer_edge::LayerOutput::F32(&[0.5; 6]).len(), 6);
    /// ```
    pub fn len(&self) -> usize {
        match self {
            LayerOutput::Int8(v) => v.len(),
            LayerOutput::F32(v) => v.len(),
            LayerOutput::F16(v) => v.len(),
            LayerOutput::Int16(v) => v.len(),
        }
    }

    /// Whether there are no values.
    ///
    /// ```
    /// assert!(convmixer_edge::LayerOutput::Int8(&[]).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` of a float output as f32 (exact); `None` for int8 outputs or past the end.
    ///
    /// ```
    /// use convmixer_edge::LayerOutput;
    /// assert_eq!(LayerOutput::F32(&[2.5]).get_f32(0), Some(2.5));
    /// assert_eq!(LayerOutput::Int8(&[7]).get_f32(0), None);
    /// ```
    pub fn get_f32(&self, i: usize) -> Option<f32> {
        match self {
            LayerOutput::Int8(_) | LayerOutput::Int16(_) => None,
            LayerOutput::F32(v) => v.get(i).copied(),
            LayerOutput::F16(v) => v.get(i).map(|&b| half::f16::from_bits(b).to_f32()),
        }
    }
}

/// Where each buffer lives inside the arena (byte offsets from the aligned start): the
/// activations, then one scratch buffer of `part` bytes per core (`line`-aligned), the
/// pooled features and the logits.
struct Plan {
    /// The alignment of the arena's start, the activations and each core's scratch: 16
    /// bytes on one core, a 64-byte cache line on several (no line is written by two
    /// cores: the parts of a split layer start at multiples of 64 bytes).
    line: usize,
    b: usize,
    part: usize,
    mean: usize,
    logits: usize,
    end: usize,
}

impl Plan {
    /// Arena bytes for this plan: up to `line − 1` bytes to align the start, then `end`.
    fn arena_len(&self) -> usize {
        self.end + self.line - 1
    }
}

fn align16(x: usize) -> usize {
    (x + 15) & !15
}

impl<'a> Model<'a> {
    /// Reads and validates a blob (magic, version, CRC-32, section table, every parameter
    /// range). Never panics, whatever the bytes.
    ///
    /// ```
    /// use convmixer_edge::{Error, Model};
    /// let mut junk = [0u8; 64];
    /// junk[..4].copy_from_slice(b"CMXB");
    /// assert_eq!(Model::from_bytes(&junk).unwrap_err(), Error::BadCrc); // checked before any field
    /// ```
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, Error> {
        Ok(Model {
            blob: blob::parse(bytes)?,
            isa: Isa::detect(),
            f16_arith: crate::kernels::fp16_available(),
        })
    }

    /// The same model running the int8 layers with the kernels of `isa` instead of the
    /// detected best ([`Isa::detect`]); every level gives bit-identical results.
    ///
    /// ```
    /// use convmixer_edge::{kernels::Isa, Error, Model};
    /// # fn demo(m: Model) -> Result<(), Error> {
    /// let scalar = m.with_isa(Isa::Scalar)?;
    /// assert_eq!(scalar.isa(), Isa::Scalar);
    /// # Ok(()) }
    /// ```
    pub fn with_isa(self, isa: Isa) -> Result<Self, Error> {
        if !isa.available() {
            return Err(Error::IsaUnavailable);
        }
        Ok(Model { isa, ..self })
    }

    /// The same model computing f16 blobs in binary16 (`true`, [`F16Arith`]: `FMLA .8h` on
    /// FEAT_FP16 CPUs, exact scalar emulation elsewhere) or in f32 (`false`, [`F32Arith`]).
    /// The default is `true` exactly when the CPU has FEAT_FP16
    /// ([`fp16_available`](crate::kernels::fp16_available)). No effect on other blobs.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-fp16.cmx"))?;
    /// assert!(!m.with_f16_arithmetic(false).f16_arithmetic());
    /// # Ok(()) }
    /// ```
    pub fn with_f16_arithmetic(self, on: bool) -> Self {
        Model {
            f16_arith: on,
            ..self
        }
    }

    /// Whether an f16 blob computes in binary16 (see [`Model::with_f16_arithmetic`]).
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-fp16.cmx"))?;
    /// assert_eq!(m.f16_arithmetic(), convmixer_edge::kernels::fp16_available());
    /// # Ok(()) }
    /// ```
    pub fn f16_arithmetic(&self) -> bool {
        self.f16_arith
    }

    /// The kernel family in use.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// assert_eq!(m.isa(), convmixer_edge::kernels::Isa::detect());
    /// # Ok(()) }
    /// ```
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The header: shapes, precision, activation.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// assert_eq!((m.header().dim, m.header().depth, m.header().classes), (48, 4, 10));
    /// # Ok(()) }
    /// ```
    pub fn header(&self) -> &Header {
        self.blob.header()
    }

    /// The validated blob.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// assert_eq!(m.blob().label(7), Some("7"));
    /// # Ok(()) }
    /// ```
    pub fn blob(&self) -> &Blob<'a> {
        &self.blob
    }

    /// Label of `class`, if the blob carries labels.
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model) {
    /// let name = m.label(3).unwrap_or("?");
    /// # }
    /// ```
    pub fn label(&self, class: u16) -> Option<&'a str> {
        self.blob.label(usize::from(class))
    }

    /// Arena layout. int8: one activation tensor, then the in-place drivers' scratch
    /// ([`dw_i8::scratch_len`]: a ring of `pad_top` token rows and a few tokens). Float
    /// blobs: two f32 activation tensors.
    fn plan(&self, parts: usize) -> Plan {
        let h = self.header();
        let (eg, g) = self.geometry();
        let (act, second) = if h.arch == Arch::MlpMixer {
            // The int16 residual stream, then one int8 tensor (the LayerNorm output, and
            // the embedding's before it is added in); scratch for one MLP's row tiles.
            let (t, d) = (h.tokens(), usize::from(h.dim));
            let (ht, hc) = (usize::from(h.token_hidden), usize::from(h.channel_hidden));
            let scratch = gemm_i8::mlp_scratch_len(ht, t)
                .max(gemm_i8::mlp_scratch_len(hc, d))
                .max(gemm_i8::embed_scratch_len(eg));
            (align16(2 * t * d) + t * d, scratch)
        } else if h.precision == Precision::Int8 {
            let scratch = dw_i8::scratch_len(g).max(gemm_i8::embed_scratch_len(eg));
            (h.tokens() * usize::from(h.dim), scratch)
        } else {
            let act = 4 * h.tokens() * usize::from(h.dim);
            (act, act)
        };
        let line = if parts > 1 { 64 } else { 16 };
        let up = |x: usize| x.div_ceil(line) * line;
        let b = up(act);
        let part = up(second);
        let mean = b + part * parts.clamp(1, MAX_PARTS);
        let logits = align16(mean + 4 * usize::from(h.dim));
        let end = logits + 4 * usize::from(h.classes);
        Plan {
            line,
            b,
            part,
            mean,
            logits,
            end,
        }
    }

    /// Scratch bytes [`Model::classify`] and [`Model::logits`] need, including up to 15
    /// bytes to align the arena's start. Known as soon as the blob is read, so a board can
    /// size a static buffer before flashing.
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model) {
    /// let mut arena = vec![0u8; m.arena_len()];
    /// # }
    /// ```
    pub fn arena_len(&self) -> usize {
        self.arena_len_for(1)
    }

    /// Scratch bytes [`Model::logits_on`] and [`Model::classify_on`] need on `parts` cores
    /// (`Cores::count`, at most [`MAX_PARTS`]): the one activation tensor, and
    /// one scratch buffer per core. `arena_len_for(1)` is [`Model::arena_len`].
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model) {
    /// assert!(m.arena_len_for(4) >= m.arena_len_for(1));
    /// assert_eq!(m.arena_len_for(1), m.arena_len());
    /// # }
    /// ```
    pub fn arena_len_for(&self, parts: usize) -> usize {
        self.plan(parts).arena_len()
    }

    /// Bytes of one input image: `in_h · in_w · in_c`.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let m = convmixer_edge::Model::from_bytes(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// assert_eq!(m.input_len(), 28 * 28);
    /// # Ok(()) }
    /// ```
    pub fn input_len(&self) -> usize {
        self.header().input_len()
    }

    /// Runs the model on raw HWC `u8` pixels and writes one logit per class into `out`.
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model, px: &[u8]) -> Result<(), convmixer_edge::Error> {
    /// let mut arena = vec![0u8; m.arena_len()];
    /// let mut logits = vec![0.0f32; m.header().classes as usize];
    /// m.logits(px, &mut arena, &mut logits)?;
    /// # Ok(()) }
    /// ```
    pub fn logits(&self, pixels: &[u8], arena: &mut [u8], out: &mut [f32]) -> Result<(), Error> {
        let classes = usize::from(self.header().classes);
        if out.len() != classes {
            return Err(Error::OutputSize {
                expected: classes,
                got: out.len(),
            });
        }
        self.logits_on(&OneCore, pixels, arena, out)
    }

    /// [`Model::logits`] on the cores `cores` lends: each layer is split into
    /// `cores.count()` parts that run at once (see [`cores`](crate::cores)). The logits are
    /// bit-identical to one core's. `arena` must hold
    /// [`Model::arena_len_for`]`(cores.count())` bytes.
    ///
    /// ```
    /// use convmixer_edge::cores::OneCore;
    /// # fn demo(m: &convmixer_edge::Model, px: &[u8]) -> Result<(), convmixer_edge::Error> {
    /// let mut arena = vec![0u8; m.arena_len_for(1)];
    /// let mut logits = vec![0.0f32; m.header().classes as usize];
    /// m.logits_on(&OneCore, px, &mut arena, &mut logits)?;
    /// # Ok(()) }
    /// ```
    pub fn logits_on(
        &self,
        cores: &dyn Cores,
        pixels: &[u8],
        arena: &mut [u8],
        out: &mut [f32],
    ) -> Result<(), Error> {
        self.logits_into(pixels, arena, out, None, cores)
    }

    /// The logits into `out`, checked to have one slot per class.
    fn logits_into(
        &self,
        pixels: &[u8],
        arena: &mut [u8],
        out: &mut [f32],
        trace: Option<&mut Trace<'_>>,
        cores: &dyn Cores,
    ) -> Result<(), Error> {
        let classes = usize::from(self.header().classes);
        if out.len() != classes {
            return Err(Error::OutputSize {
                expected: classes,
                got: out.len(),
            });
        }
        let logits = self.run(pixels, arena, trace, cores)?;
        out.copy_from_slice(logits);
        Ok(())
    }

    /// [`Model::logits`], calling `trace(layer, output)` after every conv layer (layer 0 =
    /// the patch embedding, then each block's depthwise and pointwise layer) with that
    /// layer's output (`tokens · dim`, token-major, [`LayerOutput`]). Quantisation
    /// diagnostics (`host-tools report`) compare these with the fp32 graph's layer outputs.
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model, px: &[u8]) -> Result<(), convmixer_edge::Error> {
    /// let mut arena = vec![0u8; m.arena_len()];
    /// let mut logits = vec![0.0f32; m.header().classes as usize];
    /// let mut layers = 0;
    /// m.logits_traced(px, &mut arena, &mut logits, &mut |_layer, out| {
    ///     layers += 1;
    ///     assert_eq!(out.len(), m.header().tokens() * usize::from(m.header().dim));
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn logits_traced(
        &self,
        pixels: &[u8],
        arena: &mut [u8],
        out: &mut [f32],
        trace: &mut Trace<'_>,
    ) -> Result<(), Error> {
        self.logits_into(pixels, arena, out, Some(trace), &OneCore)
    }

    /// Classifies one image (raw HWC `u8` pixels, gray or RGB as the model expects) and
    /// returns the `K` most likely classes with their softmax probabilities, best first.
    ///
    /// ```
    /// # fn demo(m: &convmixer_edge::Model, px: &[u8]) -> Result<(), convmixer_edge::Error> {
    /// let mut arena = vec![0u8; m.arena_len()];
    /// let top = m.classify::<5>(px, &mut arena)?;
    /// assert!(top.windows(2).all(|w| w[0].1 >= w[1].1));
    /// # Ok(()) }
    /// ```
    pub fn classify<const K: usize>(
        &self,
        pixels: &[u8],
        arena: &mut [u8],
    ) -> Result<heapless::Vec<(u16, f32), K>, Error> {
        self.classify_on(&OneCore, pixels, arena)
    }

    /// [`Model::classify`] on the cores `cores` lends (as [`Model::logits_on`]); `arena`
    /// must hold [`Model::arena_len_for`]`(cores.count())` bytes.
    ///
    /// ```
    /// use convmixer_edge::cores::OneCore;
    /// # fn demo(m: &convmixer_edge::Model, px: &[u8]) -> Result<(), convmixer_edge::Error> {
    /// let mut arena = vec![0u8; m.arena_len_for(1)];
    /// let top = m.classify_on::<5>(&OneCore, px, &mut arena)?;
    /// # Ok(()) }
    /// ```
    pub fn classify_on<const K: usize>(
        &self,
        cores: &dyn Cores,
        pixels: &[u8],
        arena: &mut [u8],
    ) -> Result<heapless::Vec<(u16, f32), K>, Error> {
        let logits = self.run(pixels, arena, None, cores)?;
        Ok(top_k(logits))
    }

    /// Runs the network; returns the logits, which live in the arena.
    fn run<'b>(
        &self,
        pixels: &[u8],
        arena: &'b mut [u8],
        trace: Option<&mut Trace<'_>>,
        cores: &dyn Cores,
    ) -> Result<&'b [f32], Error> {
        let h = *self.header();
        if pixels.len() != h.input_len() {
            return Err(Error::InputSize {
                expected: h.input_len(),
                got: pixels.len(),
            });
        }
        let parts = cores.count().clamp(1, MAX_PARTS);
        let plan = self.plan(parts);
        let needed = plan.arena_len();
        if arena.len() < needed {
            return Err(Error::ArenaTooSmall {
                needed,
                got: arena.len(),
            });
        }
        let start = arena.as_ptr().align_offset(plan.line).min(plan.line - 1);
        // The plan's offsets ascend (b ≤ mean ≤ logits ≤ end) and start + end ≤ needed ≤
        // arena.len(): none of these fails.
        let short = Error::ArenaTooSmall {
            needed,
            got: arena.len(),
        };
        let arena = arena.get_mut(start..start + plan.end).ok_or(short)?;
        let (acts, rest) = arena.split_at_mut_checked(plan.mean).ok_or(short)?;
        let (mean, logits) = rest
            .split_at_mut_checked(plan.logits - plan.mean)
            .ok_or(short)?;
        let (a, b) = acts.split_at_mut_checked(plan.b).ok_or(short)?;
        let act_len = h.tokens() * usize::from(h.dim);
        let dim = usize::from(h.dim);
        let logits: &mut [f32] = bytemuck::try_cast_slice_mut(logits)
            .map_err(|_| Error::Malformed("arena alignment"))?;
        let work = Work {
            cores,
            parts,
            part: plan.part,
        };
        let mut none = |_: usize, _: LayerOutput<'_>| {};
        let trace = trace.unwrap_or(&mut none);
        match h.precision {
            Precision::Int8 if h.arch == Arch::MlpMixer => {
                let (x16, ln) = a.split_at_mut_checked(align16(2 * act_len)).ok_or(short)?;
                let x16: &mut [i16] =
                    bytemuck::try_cast_slice_mut(x16.get_mut(..2 * act_len).ok_or(short)?)
                        .map_err(|_| Error::Malformed("arena alignment"))?;
                let ln: &mut [i8] = bytemuck::cast_slice_mut(ln.get_mut(..act_len).ok_or(short)?);
                let b: &mut [i8] = bytemuck::cast_slice_mut(b);
                let mean: &mut [i32] = bytemuck::try_cast_slice_mut(mean)
                    .map_err(|_| Error::Malformed("arena alignment"))?;
                let mean = mean.get_mut(..dim).ok_or(short)?;
                self.run_mixer(pixels, x16, ln, b, mean, logits, trace, work)?;
            }
            Precision::Int8 => {
                let a: &mut [i8] = bytemuck::cast_slice_mut(a.get_mut(..act_len).ok_or(short)?);
                let b: &mut [i8] = bytemuck::cast_slice_mut(b);
                let mean: &mut [i32] = bytemuck::try_cast_slice_mut(mean)
                    .map_err(|_| Error::Malformed("arena alignment"))?;
                let mean = mean.get_mut(..dim).ok_or(short)?;
                self.run_int8(pixels, a, b, mean, logits, trace, work)?;
            }
            p => {
                let (a, b) = (
                    a.get_mut(..4 * act_len).ok_or(short)?,
                    b.get_mut(..4 * act_len).ok_or(short)?,
                );
                let mean: &mut [f32] = bytemuck::try_cast_slice_mut(mean)
                    .map_err(|_| Error::Malformed("arena alignment"))?;
                let mean = mean.get_mut(..dim).ok_or(short)?;
                let w = work;
                match (p, self.f16_arith) {
                    (Precision::F16, true) => {
                        self.run_float::<_, F16Arith>(pixels, a, b, mean, logits, F16Le, trace, w)?
                    }
                    (Precision::F16, false) => {
                        self.run_float::<_, F32Arith>(pixels, a, b, mean, logits, F16Le, trace, w)?
                    }
                    _ => {
                        self.run_float::<_, F32Arith>(pixels, a, b, mean, logits, F32Le, trace, w)?
                    }
                }
            }
        }
        Ok(logits)
    }

    fn geometry(&self) -> (EmbedGeom, Grid) {
        let h = self.header();
        let (ht, wt) = h.grid();
        (
            EmbedGeom {
                in_h: usize::from(h.in_h),
                in_w: usize::from(h.in_w),
                in_c: usize::from(h.in_c),
                patch: usize::from(h.patch),
            },
            Grid {
                ht,
                wt,
                dim: usize::from(h.dim),
                kernel: usize::from(h.kernel),
                pad_top: usize::from(h.pad_top),
                pad_left: usize::from(h.pad_left),
            },
        )
    }
}

/// The `K` largest logits, best first, with softmax probabilities over all classes.
/// NaN logits sort last; ties keep the lower class first.
fn top_k<const K: usize>(logits: &[f32]) -> heapless::Vec<(u16, f32), K> {
    let mut top: heapless::Vec<(u16, f32), K> = heapless::Vec::new();
    let key = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    for (c, &v) in logits.iter().enumerate() {
        let pos = top
            .iter()
            .position(|&(_, t)| key(v) > key(t))
            .unwrap_or(top.len());
        if pos < K {
            if top.is_full() {
                top.pop();
            }
            // Cannot fail: there is room after the pop above.
            let _ = top.insert(pos, (c as u16, v));
        }
    }
    let max = logits
        .iter()
        .copied()
        .map(key)
        .fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&v| libm::expf(key(v) - max)).sum();
    for e in top.iter_mut() {
        e.1 = libm::expf(key(e.1) - max) / sum;
    }
    top
}

#[cfg(test)]
mod tests {
    use super::top_k;

    #[test]
    fn top_k_orders_and_normalises() {
        let t = top_k::<2>(&[0.0, 3.0, 1.0, f32::NAN]);
        assert_eq!(t.iter().map(|e| e.0).collect::<std::vec::Vec<_>>(), [1, 2]);
        assert!(t[0].1 > t[1].1);
        let all = top_k::<4>(&[0.0, 3.0, 1.0, 2.0]);
        let s: f32 = all.iter().map(|e| e.1).sum();
        assert!((s - 1.0).abs() < 1e-6, "{s}");
    }
}
