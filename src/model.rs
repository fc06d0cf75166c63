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
    fn run_float<W: FloatWeights, M: FloatArith>(
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
    fn run_int8(
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
    fn run_mixer(
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
struct Work<'c> {
    cores: &'c dyn Cores,
    parts: usize,
    part: usize,
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
