//! Compute kernels, arranged by op (as in XNNPACK and tract-linalg): each op's folder holds
//! one plain scalar reference implementation (`reference.rs`), its SIMD variants beside it,
//! one file per ISA family and named by ISA and tile shape (`neon.rs`, `x86.rs`), its
//! drivers (`mod.rs`: the memory-planned in-place layer and the choice of kernel by
//! [`Isa`]), and one shared test suite (`tests.rs`) that runs every ISA the running CPU has
//! against the reference, bit for bit, on random and edge-case inputs: a new ISA is tested
//! by adding it to [`Isa::ALL`] and to the op's dispatch.
//!
//! * int8 (`docs/blob-format.md`): `quant` (the requantisation and epilogue every int8 op
//!   ends in, and each ISA's vector epilogue), [`gemm_i8`] (pointwise conv, patch
//!   embedding, MLP-Mixer MLPs), [`dw_i8`] (depthwise conv + residual), [`head_i8`] (pool +
//!   head); the MLP-Mixer's int16 residual stream: [`layer_norm`], [`res_add`];
//! * float: `float` (the f32/f16 arithmetic, activations and epilogue every float op
//!   shares, and what each ISA's float kernels share), [`pw_f`], [`dw_f`], [`embed_f`],
//!   `head_f`; [`mixed`]: f16 layers between int8 tensors;
//! * [`reference`](mod@reference) gathers every op's reference under one path.
//!
//! SIMD levels ([`Isa`]): AArch64 NEON (`SMLAL`, ARMv8.0) and NEON with the dot product
//! (`SDOT`, ARMv8.2) for the int8 GEMM, depthwise, pool + head and LayerNorm and for the
//! float ops; x86_64 AVX2 (`VPMADDWD`) for the int8 ops (GEMM, depthwise, epilogue, pool +
//! head, LayerNorm, residual add), and AVX2 + FMA (+ F16C for f16 weights) for the float
//! ops in f32 arithmetic (pointwise, depthwise, embedding; x86 has no binary16 arithmetic,
//! so f16 blobs compute in f32 there); x86_64 AVX-512 with VNNI (`VPDPBUSD`) for the int8
//! GEMM (`gemm_i8::avx512`) and 512-bit FMAs for the float pointwise conv (`pw_f::avx512`),
//! every other op running its AVX2 kernel at that level. On one core of a Zen 4 the AVX2
//! kernels run a ConvMixer-768/32 at 224×224 in about 0.36 s (int8), 74× faster than the
//! scalar kernels' 27 s (`cargo run --release -p kernel-bench`; figures in `gemm_i8::x86`
//! and `pw_f::x86`).
//!
//! `unsafe` code lives only in the SIMD modules (each op's `neon`/`x86`, the `avx512`s,
//! and the shared `quant::neon`, `quant::x86`, `float::neon`, `float::x86`) and in `cpu`
//! (feature detection): the op modules allow it there and nowhere else (the crate denies
//! it, the reference and test modules forbid it).
//! The SIMD modules' safe entry points check every slice length (and the CPU features)
//! once per call and fall back to the reference, or do nothing, where they do not fit; each
//! `unsafe` block below them says which of those checks bounds its pointer accesses.

#[allow(unsafe_code)]
mod cpu;
pub mod dw_f;
pub mod dw_i8;
pub mod embed_f;
mod float;
pub mod gemm_i8;
pub mod head_f;
pub mod head_i8;
pub mod layer_norm;
pub mod mixed;
#[allow(unsafe_code)]
pub mod parts;
pub mod pw_f;
mod quant;
pub mod reference;
pub mod res_add;

/// Which family of kernels runs the layers.
///
/// [`Isa::detect`] picks the best the CPU offers; every level gives bit-identical results
/// (for float blobs, for a given [`FloatArith`](reference::FloatArith)).
///
/// ```
/// use convmixer_edge::kernels::Isa;
/// let isa = Isa::detect();
/// assert!(isa.available() && Isa::Scalar.available());
/// assert!(Isa::ALL.contains(&isa));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Isa {
    /// Portable scalar Rust ([`reference`](mod@reference)), on every target.
    Scalar,
    /// AArch64 ARMv8.0 NEON (`SMULL`/`SMLAL`): Cortex-A53, A72 (Raspberry Pi 3, 4).
    Neon,
    /// AArch64 NEON with the ARMv8.2 dot product (`SDOT`): Cortex-A76 (Raspberry Pi 5).
    NeonDot,
    /// x86_64 with AVX2, FMA and F16C (Intel Haswell, AMD Zen and later): 256-bit integer
    /// kernels (`VPMADDWD`).
    Avx2,
    /// x86_64 with AVX2 and AVX-512 (F, BW, VL) with VNNI (Intel Cascade Lake, Ice Lake and
    /// later; AMD Zen 4 and later): the int8 GEMMs with 512-bit `VPDPBUSD`, every other op
    /// with its AVX2 kernel.
    Avx512Vnni,
}

impl Isa {
    /// Every level, the portable one first (those a CPU has: [`Isa::available`]).
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Neon,
        Isa::NeonDot,
        Isa::Avx2,
        Isa::Avx512Vnni,
    ];

    /// The best level this CPU supports: on aarch64 Linux from the kernel's `AT_HWCAP`,
    /// on bare metal from `ID_AA64ISAR0_EL1`, on x86_64 from `CPUID` and `XGETBV`, and from
    /// the compile-time target features.
    pub fn detect() -> Isa {
        [Isa::NeonDot, Isa::Neon, Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }

    /// Whether this CPU can run the level.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Neon => cfg!(all(
                target_arch = "aarch64",
                target_endian = "little",
                target_feature = "neon"
            )),
            Isa::NeonDot => {
                Isa::Neon.available() && (cfg!(target_feature = "dotprod") || cpu::dotprod())
            }
            Isa::Avx2 => {
                cfg!(target_arch = "x86_64")
                    && (cfg!(all(
                        target_feature = "avx2",
                        target_feature = "fma",
                        target_feature = "f16c"
                    )) || cpu::avx2())
            }
            Isa::Avx512Vnni => {
                Isa::Avx2.available()
                    && (cfg!(all(
                        target_feature = "avx512f",
                        target_feature = "avx512bw",
                        target_feature = "avx512vl",
                        target_feature = "avx512vnni"
                    )) || cpu::avx512vnni())
            }
        }
    }
}

/// Whether this CPU has FEAT_FP16 half-precision arithmetic (`FMLA .8h`; Cortex-A55/A76,
/// Raspberry Pi 5): f16 blobs then compute in f16 ([`reference::F16Arith`]) by default.
///
/// ```
/// // Never on targets other than aarch64.
/// if !cfg!(target_arch = "aarch64") {
///     assert!(!convmixer_edge::kernels::fp16_available());
/// }
/// ```
pub fn fp16_available() -> bool {
    Isa::Neon.available() && (cfg!(target_feature = "fp16") || cpu::fp16())
}

/// Output channels per packed block of int8 pointwise weights.
pub const PW_NR: usize = 16;
/// Input channels per packed group of int8 pointwise weights (one `SDOT` lane).
pub const PW_KR: usize = 4;
/// Tokens per step of the int8 GEMM drivers' scratch (the tallest NEON micro-tile, SDOT's
/// 4×16): the pointwise driver copies this many tokens at a time, the embedding gathers
/// this many patches, the MLP holds this many rows of its hidden layer.
pub const PW_TILE: usize = 4;

/// Bytes of packed int8 GEMM weights for `n` outputs × `k` inputs (the pointwise convs:
/// `n = k = dim`; the patch embedding: `n = dim`, `k = p·p·in_c`). Both dimensions are padded
/// (outputs to [`PW_NR`], inputs to [`PW_KR`]) with zero weights.
///
/// ```
/// use convmixer_edge::kernels::gemm_packed_len;
/// assert_eq!(gemm_packed_len(48, 48), 48 * 48);
/// assert_eq!(gemm_packed_len(10, 10), 16 * 12);
/// assert_eq!(gemm_packed_len(256, 12), 256 * 12);
/// ```
pub const fn gemm_packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(PW_NR) * PW_NR * (k.div_ceil(PW_KR) * PW_KR)
}

/// Byte index of weight `(out o, in i)` in packed int8 GEMM weights with `k` inputs: layout
/// `[o / 16][i / 4][o % 16][i % 4]` — each 16-byte row holds 4 outputs × 4 inputs, what an
/// `SDOT` by element consumes (and `SMULL`/`SMLAL` pairs, two outputs per 8 bytes).
///
/// ```
/// use convmixer_edge::kernels::gemm_index;
/// assert_eq!((gemm_index(0, 0, 48), gemm_index(0, 3, 48), gemm_index(1, 0, 48)), (0, 3, 4));
/// assert_eq!(gemm_index(0, 4, 48), 64);
/// assert_eq!(gemm_index(16, 0, 48), 16 * 48);
/// ```
#[inline]
pub const fn gemm_index(o: usize, i: usize, k: usize) -> usize {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    (o / PW_NR) * PW_NR * kp + (i / PW_KR) * PW_NR * PW_KR + (o % PW_NR) * PW_KR + i % PW_KR
}

/// [`gemm_packed_len`] in checked arithmetic: `None` where it overflows (the kernels'
/// length checks use this, so that a wrapped product never passes one).
pub(crate) fn gemm_packed_len_checked(n: usize, k: usize) -> Option<usize> {
    let rows = n.div_ceil(PW_NR).checked_mul(PW_NR)?;
    rows.checked_mul(k.div_ceil(PW_KR).checked_mul(PW_KR)?)
}

/// Output channels per packed block of float GEMM weights (4 `f32x4` or 2 `f16x8`
/// registers).
pub const FGEMM_NR: usize = 16;

/// Elements of packed float GEMM weights for `n` outputs × `k` inputs (outputs padded to
/// [`FGEMM_NR`] with zeros).
///
/// ```
/// use convmixer_edge::kernels::fgemm_packed_len;
/// assert_eq!(fgemm_packed_len(32, 12), 32 * 12);
/// assert_eq!(fgemm_packed_len(10, 10), 16 * 10);
/// ```
pub const fn fgemm_packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(FGEMM_NR) * FGEMM_NR * k
}

/// [`fgemm_packed_len`] in checked arithmetic: `None` where it overflows.
pub(crate) fn fgemm_packed_len_checked(n: usize, k: usize) -> Option<usize> {
    n.div_ceil(FGEMM_NR).checked_mul(FGEMM_NR)?.checked_mul(k)
}

/// Element index of weight `(out o, in i)` in packed float GEMM weights with `k` inputs:
/// layout `[o / 16][i][o % 16]`, so one input's 16 outputs are contiguous (what a
/// multiply-accumulate by element over output lanes consumes).
///
/// ```
/// use convmixer_edge::kernels::fgemm_index;
/// assert_eq!((fgemm_index(0, 0, 12), fgemm_index(1, 0, 12), fgemm_index(0, 1, 12)), (0, 1, 16));
/// assert_eq!(fgemm_index(16, 0, 12), 16 * 12);
/// ```
#[inline]
pub const fn fgemm_index(o: usize, i: usize, k: usize) -> usize {
    (o / FGEMM_NR) * FGEMM_NR * k + i * FGEMM_NR + o % FGEMM_NR
}

/// The kernels' test helpers: every ISA the running CPU has (enforcing `CMX_REQUIRE_*`),
/// random number generation and random int8 layers.
#[cfg(test)]
pub(crate) mod testutil;

/// Shapes no blob can carry, for the drivers' never-panic tests (every op's suite): a
/// padding past the kernel, grids and kernels of huge size, zero channels, zero input
/// channels, a zero patch, a patch larger than the image.
#[cfg(test)]
pub(crate) mod awkward {
    use super::{EmbedGeom, Grid};

    /// Large enough that every product of two overflows.
    pub const HUGE: usize = usize::MAX / 3;

    /// Grids: the first is valid, the others are not.
    pub fn grids() -> [Grid; 7] {
        let g = |ht, wt, dim, kernel, pad_top, pad_left| Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top,
            pad_left,
        };
        [
            g(2, 3, 16, 3, 1, 1),
            g(2, 3, 16, 3, 5, HUGE),
            g(2, 3, 16, 3, 7, HUGE),
            g(HUGE, HUGE, 16, 3, 1, 1),
            g(1, 1, 16, HUGE, 0, 0),
            g(1, 1, HUGE, HUGE, 0, 0),
            g(3, 3, 0, 0, 0, 0),
        ]
    }

    /// Embedding geometries: the first is valid, the others are not.
    pub fn embeds() -> [EmbedGeom; 5] {
        let e = |in_h, in_w, in_c, patch| EmbedGeom {
            in_h,
            in_w,
            in_c,
            patch,
        };
        [
            e(4, 4, 1, 2),
            e(4, 4, 0, 2),
            e(4, 4, 1, 0),
            e(2, 2, 1, 5),
            e(1, HUGE, HUGE, 1),
        ]
    }
}

/// Geometry of the token grid a mixer layer works on.
///
/// ```
/// let g = convmixer_edge::kernels::Grid { ht: 14, wt: 14, dim: 32, kernel: 5, pad_top: 2, pad_left: 2 };
/// assert_eq!(g.tokens(), 196);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Token rows.
    pub ht: usize,
    /// Token columns.
    pub wt: usize,
    /// Channels.
    pub dim: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise padding above.
    pub pad_top: usize,
    /// Depthwise padding on the left.
    pub pad_left: usize,
}

impl Grid {
    /// Number of tokens (saturating at `usize::MAX`, which no buffer can hold).
    pub fn tokens(&self) -> usize {
        self.ht.saturating_mul(self.wt)
    }

    /// Bytes of one int8 activation tensor, `ht · wt · dim`, or `None` if that overflows
    /// (the kernels' length checks use this, never a wrapped product).
    ///
    /// ```
    /// let g = convmixer_edge::kernels::Grid { ht: 14, wt: 14, dim: 32, kernel: 5, pad_top: 2, pad_left: 2 };
    /// assert_eq!(g.elements(), Some(196 * 32));
    /// ```
    pub fn elements(&self) -> Option<usize> {
        self.ht.checked_mul(self.wt)?.checked_mul(self.dim)
    }
}

/// Geometry of the patch embedding.
///
/// ```
/// let e = convmixer_edge::kernels::EmbedGeom { in_h: 28, in_w: 28, in_c: 1, patch: 2 };
/// assert_eq!(e.taps(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbedGeom {
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Input channels.
    pub in_c: usize,
    /// Patch size.
    pub patch: usize,
}

impl EmbedGeom {
    /// Taps per output channel: `p · p · in_c` (saturating at `usize::MAX`, which no
    /// buffer can hold, so a length check against it fails).
    pub fn taps(&self) -> usize {
        self.patch
            .saturating_mul(self.patch)
            .saturating_mul(self.in_c)
    }

    /// The token grid `(ht, wt)` of the embedding, where the patch fits the image (`0 < p ≤
    /// in_h, in_w`), `px_len` covers the image (`in_h · in_w · in_c`) and `out_len` the `ht
    /// · wt · dim` outputs, all in checked arithmetic: below these sizes no index an
    /// embedding forms (pixel `((ty·p + ky)·in_w + tx·p)·in_c + …`, output `t·dim + o`) can
    /// overflow or leave its slice, and with `dim > 0` the embedding's loops run at most
    /// `out_len` times. `None` otherwise.
    pub(crate) fn grid(&self, px_len: usize, dim: usize, out_len: usize) -> Option<(usize, usize)> {
        let p = self.patch;
        // dim > 0 also bounds the token loops by out_len (no outputs: nothing to do).
        if p == 0 || self.in_h < p || self.in_w < p || dim == 0 {
            return None;
        }
        // (in − p) / p + 1 = in / p for in ≥ p ≥ 1.
        let (ht, wt) = (self.in_h / p, self.in_w / p);
        let image = self.in_h.checked_mul(self.in_w)?.checked_mul(self.in_c)?;
        let outputs = ht.checked_mul(wt)?.checked_mul(dim)?;
        (px_len >= image && out_len >= outputs).then_some((ht, wt))
    }
}
