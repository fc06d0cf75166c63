//! The one reader of the model blob specified in `docs/blob-format.md`.
//!
//! [`parse`] validates everything up front (magic, version, CRC, the table of contents
//! against [`section_at`], every range rule of the int8 semantics), so that the kernels can
//! index the sections without any further check and without any possibility of overflow.
//! The blob writer in the `convmixer-quantize` crate lays out sections with the same
//! [`section_at`] plan.
//!
//! The reader never panics on any bytes: the header is read as a fixed-size array
//! (constant offsets), the table of contents and every section through checked `get`s, and
//! a read that could fail is an [`Error`] (clippy's `indexing_slicing` is denied here as in
//! the whole runtime).
#![forbid(unsafe_code)]

use byteorder::{ByteOrder, LittleEndian as LE};

use crate::kernels::{fgemm_index, fgemm_packed_len, gemm_index, gemm_packed_len, FGEMM_NR};
use crate::{Activation, Error, Precision};

/// `CMXB`: the first four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"CMXB";
/// The format version this reader understands.
pub const VERSION: u16 = 7;
/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 64;
/// Length of one table-of-contents entry in bytes.
pub const TOC_ENTRY_LEN: usize = 16;
/// Every section starts at a multiple of this many bytes from the blob start.
pub const SECTION_ALIGN: usize = 16;
/// Layer number used by global (non-layer) sections.
pub const GLOBAL_LAYER: u16 = 0xFFFF;
/// Byte range of the CRC field inside the header.
pub const CRC_RANGE: core::ops::Range<usize> = 28..32;

/// The CRC used by the blob: CRC-32/ISO-HDLC (zlib, PNG), computed slice-by-16 (a 16 KiB
/// table in read-only data; byte-at-a-time took ~10 % of `host-tools quantize` on a small
/// model and is several times slower on a board's boot check of a 20 MB blob).
pub static CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISO_HDLC);

/// Largest token count the int8 average pool accepts (keeps `Σ_t` far from i32 limits).
pub const MAX_TOKENS: usize = 1 << 22;

/// Bounds of the int8 requantisation parameters (see the format document).
pub mod limits {
    /// `|m_post| ≤ M_POST_MAX`.
    pub const M_POST_MAX: i32 = 1 << 14;
    /// `|b_post| ≤ B_POST_MAX`.
    pub const B_POST_MAX: i32 = 1 << 29;
    /// `|m_res| ≤ M_RES_MAX`.
    pub const M_RES_MAX: i32 = 1 << 20;
    /// `SH_PRE_MIN ≤ sh_pre ≤ SH_PRE_MAX`.
    pub const SH_PRE_MIN: i32 = -8;
    /// See [`SH_PRE_MIN`].
    pub const SH_PRE_MAX: i32 = 31;
    /// `0 ≤ sh_post ≤ SH_POST_MAX`.
    pub const SH_POST_MAX: i32 = 30;
}

/// What a section holds. The numeric values are the on-disk codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum SectionKind {
    /// Input normalisation: `in_c` means then `in_c` stds (f32).
    Norm = 1,
    /// Class labels, UTF-8, `\n`-separated.
    Labels = 2,
    /// Layer weights (f32, f16 or i8 by precision).
    Weights = 3,
    /// Per-output-channel bias (f32, or i32 for int8 conv layers).
    Bias = 4,
    /// Post-activation BatchNorm as scale and shift (f32; float blobs).
    Affine = 5,
    /// Requantisation records (6 i32 fields per output channel, field-major; int8).
    Requant = 6,
    /// Per-layer zero points (4 × i32; int8).
    QParams = 7,
    /// GELU table, 256 i16 as a low-byte plane and a high-byte plane (int8; empty for ReLU).
    Table = 8,
    /// Per-class dequantisation scale of the int8 head (f32).
    HeadScale = 9,
    /// Per-channel input and output scales of an f16 layer in an int8 blob (`dim` f32 `s_in`,
    /// then `dim` f32 `s_out`).
    IoScale = 10,
    /// MLP-Mixer: the fixed-point LayerNorm of one norm layer (`eps` term, shift, zero point,
    /// `dim` i32 multipliers, `dim` i64 offsets).
    LayerNorm = 11,
    /// MLP-Mixer: how a GEMM layer's int8 output is added into the int16 residual stream
    /// (4 i32: `m_add, sh_add, 0, 0`).
    ResAdd = 12,
}

/// Which network a blob holds (header byte 36).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Arch {
    /// ConvMixer ("Patches Are All You Need?"): depthwise and pointwise convs with
    /// BatchNorm folded away.
    ConvMixer = 0,
    /// MLP-Mixer ("An all-MLP Architecture for Vision"): pre-LayerNorm token- and
    /// channel-mixing MLPs around an int16 residual stream (int8 blobs only).
    MlpMixer = 1,
}

/// The role of layer `l` of an MLP-Mixer blob ([`Header::mixer_layer`]).
///
/// ```
/// use convmixer_edge::blob::MixerLayer;
/// assert_ne!(MixerLayer::TokenFc1, MixerLayer::ChannelFc1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MixerLayer {
    /// Layer 0: the patch embedding, a GEMM whose output is added into the (zero) residual.
    Embed,
    /// A LayerNorm of the residual stream (before each MLP, and the final one).
    Norm,
    /// The token-mixing MLP's first linear layer (`tokens → token_hidden`, GELU).
    TokenFc1,
    /// The token-mixing MLP's second linear layer (`token_hidden → tokens`), added into the
    /// residual.
    TokenFc2,
    /// The channel-mixing MLP's first linear layer (`dim → channel_hidden`, GELU).
    ChannelFc1,
    /// The channel-mixing MLP's second linear layer (`channel_hidden → dim`), added into the
    /// residual.
    ChannelFc2,
    /// The classifier head (average pool over tokens, then linear).
    Head,
}

impl MixerLayer {
    /// Whether the layer is a GEMM with the int8 epilogue (embedding and the four linear
    /// layers of a block).
    ///
    /// ```
    /// use convmixer_edge::blob::MixerLayer;
    /// assert!(MixerLayer::TokenFc2.is_gemm() && !MixerLayer::Norm.is_gemm());
    /// ```
    pub fn is_gemm(self) -> bool {
        !matches!(self, MixerLayer::Norm | MixerLayer::Head)
    }
    /// Whether the layer's output is added into the residual stream (it has a RES_ADD).
    ///
    /// ```
    /// use convmixer_edge::blob::MixerLayer;
    /// assert!(MixerLayer::Embed.adds_residual() && !MixerLayer::ChannelFc1.adds_residual());
    /// ```
    pub fn adds_residual(self) -> bool {
        matches!(
            self,
            MixerLayer::Embed | MixerLayer::TokenFc2 | MixerLayer::ChannelFc2
        )
    }
}

/// Sections of one MLP-Mixer block (LN, fc1, fc2 twice).
const MIXER_BLOCK_SECTIONS: usize = 24;
/// Layer `i` (0..6) of an MLP-Mixer block and the plan offset of its first section,
/// relative to the block's first section.
fn mixer_block_layer(i: usize) -> (MixerLayer, usize) {
    match i {
        0 => (MixerLayer::Norm, 0),
        1 => (MixerLayer::TokenFc1, 1),
        2 => (MixerLayer::TokenFc2, 6),
        3 => (MixerLayer::Norm, 12),
        4 => (MixerLayer::ChannelFc1, 13),
        _ => (MixerLayer::ChannelFc2, 18),
    }
}

/// Which conv layers of an int8 blob run in float with f16 weights ("mixed precision"),
/// one bit per layer (bit `l % 8` of byte `l / 8`), stored in header bytes 44..64. At most
/// [`LayerMask::CAPACITY`] layers can be marked, enough for depth 79.
///
/// ```
/// use convmixer_edge::blob::LayerMask;
/// let mut m = LayerMask::default();
/// assert!(m.insert(3) && !m.insert(LayerMask::CAPACITY));
/// assert!(m.contains(3) && !m.contains(2));
/// assert_eq!(m.iter(9).collect::<Vec<_>>(), [3]);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct LayerMask(pub [u8; 20]);

impl LayerMask {
    /// Number of layers the mask can describe.
    pub const CAPACITY: usize = 8 * 20;

    /// Whether layer `l` is marked.
    ///
    /// ```
    /// assert!(!convmixer_edge::blob::LayerMask::default().contains(0));
    /// ```
    pub fn contains(&self, l: usize) -> bool {
        self.0.get(l / 8).is_some_and(|b| b >> (l % 8) & 1 == 1)
    }

    /// Marks layer `l`; `false` if `l` is past [`LayerMask::CAPACITY`].
    ///
    /// ```
    /// let mut m = convmixer_edge::blob::LayerMask::default();
    /// assert!(m.insert(0) && m.contains(0));
    /// ```
    pub fn insert(&mut self, l: usize) -> bool {
        match self.0.get_mut(l / 8) {
            Some(b) => {
                *b |= 1 << (l % 8);
                true
            }
            None => false,
        }
    }

    /// Whether no layer is marked.
    ///
    /// ```
    /// assert!(convmixer_edge::blob::LayerMask::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// The marked layers below `layers`, ascending.
    ///
    /// ```
    /// let mut m = convmixer_edge::blob::LayerMask::default();
    /// m.insert(5);
    /// assert_eq!(m.iter(4).count(), 0);
    /// ```
    pub fn iter(&self, layers: usize) -> impl Iterator<Item = usize> + '_ {
        (0..layers.min(Self::CAPACITY)).filter(|&l| self.contains(l))
    }
}

/// The model's shape and encoding, as read from the header.
///
/// ```
/// # use convmixer_edge::blob::Header;
/// # fn show(h: &Header) {
/// let tokens = h.tokens();           // Ht · Wt
/// let (ht, wt) = h.grid();
/// assert_eq!(tokens, ht * wt);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// The network: ConvMixer or MLP-Mixer.
    pub arch: Arch,
    /// Weight storage and arithmetic.
    pub precision: Precision,
    /// Activation used after every conv.
    pub activation: Activation,
    /// Input channels (1 or 3).
    pub in_c: u8,
    /// Patch size.
    pub patch: u8,
    /// Input height in pixels.
    pub in_h: u16,
    /// Input width in pixels.
    pub in_w: u16,
    /// Mixer channels.
    pub dim: u16,
    /// Mixer blocks.
    pub depth: u16,
    /// Depthwise kernel size (0 for an MLP-Mixer).
    pub kernel: u8,
    /// Depthwise padding above.
    pub pad_top: u8,
    /// Depthwise padding on the left.
    pub pad_left: u8,
    /// Fraction bits of the int8 average pool.
    pub gap_frac_bits: u8,
    /// Number of classes.
    pub classes: u16,
    /// int8 blobs: the layers (conv layers, and the head as layer `1 + 2·depth`) that run
    /// in float with f16 weights (empty otherwise).
    pub f16_layers: LayerMask,
    /// MLP-Mixer: hidden width of the token-mixing MLP (0 for a ConvMixer).
    pub token_hidden: u16,
    /// MLP-Mixer: hidden width of the channel-mixing MLP (0 for a ConvMixer).
    pub channel_hidden: u16,
}

impl Header {
    /// Token grid `(Ht, Wt)` after the patch embedding.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.grid(), (14, 14)); // 28×28, patch 2
    /// # Ok(()) }
    /// ```
    pub fn grid(&self) -> (usize, usize) {
        // ⌊in / p⌋ = (in − p) / p + 1 for in ≥ p ≥ 1 (a parsed header); no patches at all for
        // a header that is not one (p = 0 or larger than the image), rather than a panic.
        let p = usize::from(self.patch);
        let n = |side: u16| usize::from(side).checked_div(p).unwrap_or(0);
        (n(self.in_h), n(self.in_w))
    }
    /// Number of tokens `Ht · Wt`.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.tokens(), 196);
    /// # Ok(()) }
    /// ```
    pub fn tokens(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }
    /// Input length in bytes: `in_h · in_w · in_c`.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.input_len(), 784);
    /// # Ok(()) }
    /// ```
    pub fn input_len(&self) -> usize {
        usize::from(self.in_h) * usize::from(self.in_w) * usize::from(self.in_c)
    }
    /// Number of conv layers (embedding + 2 per block).
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.conv_layers(), 1 + 2 * 4);
    /// # Ok(()) }
    /// ```
    pub fn conv_layers(&self) -> usize {
        1 + 2 * usize::from(self.depth)
    }
    /// Layer number of the head.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.head_layer(), 9);
    /// # Ok(()) }
    /// ```
    pub fn head_layer(&self) -> usize {
        match self.arch {
            Arch::ConvMixer => self.conv_layers(),
            Arch::MlpMixer => 2 + 6 * usize::from(self.depth),
        }
    }
    /// The role of layer `l` of an MLP-Mixer: 0 = embedding; block `i` is layers
    /// `1 + 6i ..= 6 + 6i` (token LayerNorm, token fc1, token fc2, channel LayerNorm,
    /// channel fc1, channel fc2); then the final LayerNorm (`1 + 6·depth`) and the head
    /// (`2 + 6·depth`). `None` for a ConvMixer or past the head.
    ///
    /// ```
    /// use convmixer_edge::blob::{Arch, MixerLayer};
    /// # fn show(h: &convmixer_edge::blob::Header) {
    /// if h.arch == Arch::MlpMixer {
    ///     assert_eq!(h.mixer_layer(0), Some(MixerLayer::Embed));
    ///     assert_eq!(h.mixer_layer(3), Some(MixerLayer::TokenFc2));
    ///     assert_eq!(h.mixer_layer(h.head_layer()), Some(MixerLayer::Head));
    /// }
    /// # }
    /// ```
    pub fn mixer_layer(&self, l: usize) -> Option<MixerLayer> {
        let depth = usize::from(self.depth);
        if self.arch != Arch::MlpMixer || l > 2 + 6 * depth {
            return None;
        }
        Some(match l {
            0 => MixerLayer::Embed,
            l if l == 1 + 6 * depth => MixerLayer::Norm,
            l if l == 2 + 6 * depth => MixerLayer::Head,
            l => mixer_block_layer((l - 1) % 6).0,
        })
    }
    /// MLP-Mixer GEMM layer `l` as `(rows, k inputs, n outputs)`: the embedding and the
    /// channel MLP run over the `T` tokens, the token MLP over the `dim` channels (its
    /// input is the transposed LayerNorm output). `None` for other layers.
    ///
    /// ```
    /// # fn show(h: &convmixer_edge::blob::Header) {
    /// if let Some((rows, k, n)) = h.mixer_gemm(2) {
    ///     assert_eq!((rows, k, n), (usize::from(h.dim), h.tokens(), usize::from(h.token_hidden)));
    /// }
    /// # }
    /// ```
    pub fn mixer_gemm(&self, l: usize) -> Option<(usize, usize, usize)> {
        let (t, d) = (self.tokens(), usize::from(self.dim));
        let (ht, hc) = (
            usize::from(self.token_hidden),
            usize::from(self.channel_hidden),
        );
        Some(match self.mixer_layer(l)? {
            MixerLayer::Embed => (t, self.taps(0), d),
            MixerLayer::TokenFc1 => (d, t, ht),
            MixerLayer::TokenFc2 => (d, ht, t),
            MixerLayer::ChannelFc1 => (t, d, hc),
            MixerLayer::ChannelFc2 => (t, hc, d),
            MixerLayer::Norm | MixerLayer::Head => return None,
        })
    }
    /// Plan index of the first section of MLP-Mixer layer `l` (≤ the head).
    fn mixer_first_section(&self, l: usize) -> usize {
        let depth = usize::from(self.depth);
        match l {
            0 => 2,
            l if l <= 6 * depth => {
                8 + MIXER_BLOCK_SECTIONS * ((l - 1) / 6) + mixer_block_layer((l - 1) % 6).1
            }
            l => 8 + MIXER_BLOCK_SECTIONS * depth + (l - 1 - 6 * depth),
        }
    }
    /// Taps per output channel of conv layer `layer`.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!((h.taps(0), h.taps(1), h.taps(2)), (4, 25, 48));
    /// # Ok(()) }
    /// ```
    pub fn taps(&self, layer: usize) -> usize {
        let p = usize::from(self.patch);
        let k = usize::from(self.kernel);
        match layer {
            0 => p * p * usize::from(self.in_c),
            l if l % 2 == 1 => k * k,
            _ => usize::from(self.dim),
        }
    }
    /// Whether conv layer `layer` runs in float with f16 weights: every layer of an f16
    /// blob, the [`Header::f16_layers`] of an int8 blob.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// assert!(!b.header().is_f16_layer(0));
    /// # Ok(()) }
    /// ```
    pub fn is_f16_layer(&self, layer: usize) -> bool {
        match self.precision {
            Precision::F16 => true,
            Precision::F32 => false,
            Precision::Int8 => self.f16_layers.contains(layer),
        }
    }
    /// Sections per conv layer.
    fn per_conv(&self) -> usize {
        match self.precision {
            // int8 layers: WEIGHTS BIAS REQUANT QPARAMS TABLE; f16 layers of an int8
            // blob: WEIGHTS BIAS AFFINE QPARAMS IO_SCALE.
            Precision::Int8 => 5,
            _ => 3,
        }
    }
    /// Sections of the head.
    fn per_head(&self) -> usize {
        match self.precision {
            Precision::Int8 => 4,
            _ => 2,
        }
    }
    /// Number of table-of-contents entries this header implies.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.section_count(), 2 + 9 * 5 + 4); // int8: 5 per conv layer, 4 for the head
    /// # Ok(()) }
    /// ```
    pub fn section_count(&self) -> usize {
        match self.arch {
            Arch::ConvMixer => 2 + self.conv_layers() * self.per_conv() + self.per_head(),
            // NORM, LABELS, embedding (6), the blocks, final LayerNorm (1), head (4).
            Arch::MlpMixer => 2 + 6 + MIXER_BLOCK_SECTIONS * usize::from(self.depth) + 1 + 4,
        }
    }
    /// Encodes the header (with a zero CRC and blob length) into 64 bytes.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// let bytes = h.encode(h.section_count() as u16, 1234);
    /// assert_eq!(&bytes[0..4], b"CMXB");
    /// # Ok(()) }
    /// ```
    pub fn encode(&self, n_sections: u16, blob_len: u32) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        LE::write_u16(&mut b[4..6], VERSION);
        LE::write_u16(&mut b[6..8], HEADER_LEN as u16);
        b[8] = self.precision as u8;
        b[9] = self.activation as u8;
        b[10] = self.in_c;
        b[11] = self.patch;
        LE::write_u16(&mut b[12..14], self.in_h);
        LE::write_u16(&mut b[14..16], self.in_w);
        LE::write_u16(&mut b[16..18], self.dim);
        LE::write_u16(&mut b[18..20], self.depth);
        b[20] = self.kernel;
        b[21] = self.pad_top;
        b[22] = self.pad_left;
        b[23] = self.gap_frac_bits;
        LE::write_u16(&mut b[24..26], self.classes);
        LE::write_u16(&mut b[26..28], n_sections);
        LE::write_u32(&mut b[32..36], blob_len);
        b[36] = self.arch as u8;
        LE::write_u16(&mut b[38..40], self.token_hidden);
        LE::write_u16(&mut b[40..42], self.channel_hidden);
        b[44..HEADER_LEN].copy_from_slice(&self.f16_layers.0);
        b
    }
}

/// The `index`-th section of the canonical plan for `h`: `(kind, layer, byte length)`.
/// `None` past the end. The writer and the reader both follow this plan.
///
/// ```
/// use convmixer_edge::blob::{section_at, SectionKind, GLOBAL_LAYER};
/// # fn show(h: &convmixer_edge::blob::Header) {
/// assert_eq!(section_at(h, 0).map(|s| s.0), Some(SectionKind::Norm));
/// assert_eq!(section_at(h, 1).map(|s| (s.0, s.1)), Some((SectionKind::Labels, GLOBAL_LAYER)));
/// assert!(section_at(h, h.section_count()).is_none());
/// # }
/// ```
pub fn section_at(h: &Header, index: usize) -> Option<(SectionKind, u16, Option<usize>)> {
    use SectionKind::*;
    let dim = usize::from(h.dim);
    let classes = usize::from(h.classes);
    let int8 = h.precision == Precision::Int8;
    let wbytes = match h.precision {
        Precision::F32 => 4,
        Precision::F16 => 2,
        Precision::Int8 => 1,
    };
    if index == 0 {
        return Some((Norm, GLOBAL_LAYER, Some(8 * usize::from(h.in_c))));
    }
    if index == 1 {
        // Labels have a data-dependent length.
        return Some((Labels, GLOBAL_LAYER, None));
    }
    if h.arch == Arch::MlpMixer {
        return mixer_section_at(h, index);
    }
    let i = index - 2;
    let conv_sections = h.conv_layers() * h.per_conv();
    if i < conv_sections {
        let layer = i / h.per_conv();
        let slot = i % h.per_conv();
        let l16 = layer as u16;
        let taps = h.taps(layer);
        // An f16 layer of an int8 blob: float sections, then its int8 boundary.
        let island = int8 && h.f16_layers.contains(layer);
        let wbytes = if island { 2 } else { wbytes };
        let s = match (int8 && !island, slot) {
            (true, 0) if layer.is_multiple_of(2) => {
                (Weights, l16, Some(gemm_packed_len(dim, taps)))
            }
            (false, 0) if layer.is_multiple_of(2) => {
                (Weights, l16, Some(fgemm_packed_len(dim, taps) * wbytes))
            }
            (_, 0) => (Weights, l16, Some(dim * taps * wbytes)),
            (_, 1) => (Bias, l16, Some(dim * 4)),
            (false, 2) => (Affine, l16, Some(dim * 12)),
            (true, 2) => (Requant, l16, Some(dim * 24)),
            (_, 3) => (QParams, l16, Some(16)),
            (false, _) => (IoScale, l16, Some(dim * 8)),
            _ => {
                let n = if h.activation == Activation::Relu {
                    0
                } else {
                    512
                };
                (Table, l16, Some(n))
            }
        };
        return Some(s);
    }
    let slot = i - conv_sections;
    let l16 = h.head_layer() as u16;
    let f16_head = int8 && h.f16_layers.contains(h.head_layer());
    let s = match (int8, slot) {
        (true, 0) if f16_head => (Weights, l16, Some(classes * dim * 2)),
        (_, 0) => (Weights, l16, Some(classes * dim * wbytes)),
        (false, 1) => (Bias, l16, Some(classes * 4)),
        (true, 1) if f16_head => (IoScale, l16, Some(dim * 4)),
        (true, 1) => (HeadScale, l16, Some(classes * 4)),
        (true, 2) => (Bias, l16, Some(classes * 4)),
        (true, 3) => (QParams, l16, Some(16)),
        _ => return None,
    };
    Some(s)
}

/// Slot of section `kind` in an MLP-Mixer GEMM layer (and the head, whose kinds differ).
fn mixer_slot(kind: SectionKind, head: bool) -> usize {
    use SectionKind::*;
    match (head, kind) {
        (true, Weights) => 0,
        (true, HeadScale) => 1,
        (true, Bias) => 2,
        (true, _) => 3,
        (false, Weights | LayerNorm) => 0,
        (false, Bias) => 1,
        (false, Requant) => 2,
        (false, QParams) => 3,
        (false, Table) => 4,
        (false, _) => 5, // ResAdd
    }
}

/// `section_at` for an MLP-Mixer (`index ≥ 2`). Every GEMM layer has the int8 conv
/// layer's five sections (its TABLE is always 512 bytes: GELU, or the identity for the
/// layers that feed the residual), then RES_ADD where it adds into the residual.
fn mixer_section_at(h: &Header, index: usize) -> Option<(SectionKind, u16, Option<usize>)> {
    use SectionKind::*;
    let head = h.head_layer();
    if index >= h.section_count() {
        return None;
    }
    // The layer whose sections hold `index`: the last one starting at or before it.
    let layer = (0..=head)
        .rev()
        .find(|&l| h.mixer_first_section(l) <= index)?;
    let slot = index - h.mixer_first_section(layer);
    let l16 = layer as u16;
    let dim = usize::from(h.dim);
    let role = h.mixer_layer(layer)?;
    if role == MixerLayer::Norm {
        return Some((LayerNorm, l16, Some(16 + 12 * dim)));
    }
    if role == MixerLayer::Head {
        let classes = usize::from(h.classes);
        return Some(match slot {
            0 => (Weights, l16, Some(classes * dim)),
            1 => (HeadScale, l16, Some(classes * 4)),
            2 => (Bias, l16, Some(classes * 4)),
            _ => (QParams, l16, Some(16)),
        });
    }
    let (_, k, n) = h.mixer_gemm(layer)?;
    Some(match slot {
        0 => (Weights, l16, Some(gemm_packed_len(n, k))),
        1 => (Bias, l16, Some(4 * n)),
        2 => (Requant, l16, Some(24 * n)),
        3 => (QParams, l16, Some(16)),
        4 => (Table, l16, Some(512)),
        _ => (ResAdd, l16, Some(16)),
    })
}

/// Index in the plan of section `kind` of conv layer `layer` (or the head).
pub(crate) fn section_index(h: &Header, kind: SectionKind, layer: usize) -> usize {
    use SectionKind::*;
    if h.arch == Arch::MlpMixer {
        return h.mixer_first_section(layer) + mixer_slot(kind, layer == h.head_layer());
    }
    if layer < h.conv_layers() {
        let slot = match kind {
            Weights => 0,
            Bias => 1,
            Affine | Requant => 2,
            QParams => 3,
            _ => 4, // Table, IoScale
        };
        2 + layer * h.per_conv() + slot
    } else {
        let slot = match (h.precision, kind) {
            (_, Weights) => 0,
            (Precision::Int8, HeadScale | IoScale) => 1,
            (Precision::Int8, Bias) => 2,
            (Precision::Int8, _) => 3,
            _ => 1,
        };
        2 + h.conv_layers() * h.per_conv() + slot
    }
}

/// A validated blob: the header plus accessors for its sections.
#[derive(Clone, Copy, Debug)]
pub struct Blob<'a> {
    bytes: &'a [u8],
    header: Header,
}

impl<'a> Blob<'a> {
    /// The header.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!(h.patch, 2);
    /// # Ok(()) }
    /// ```
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The raw bytes of plan entry `index`. `parse` validated every entry of the plan, so
    /// this fails only for an index past it (`Malformed`).
    pub(crate) fn section_by_index(&self, index: usize) -> Result<&'a [u8], Error> {
        TocEntry::read(self.bytes, index)
            .filter(|_| index < self.header.section_count())
            .and_then(|e| e.section(self.bytes))
            .ok_or(Error::Malformed("section table"))
    }
    /// The bytes of section `kind` of `layer` (head = `header().head_layer()`); fails only
    /// for a layer or kind the header has no section for.
    pub(crate) fn section(&self, kind: SectionKind, layer: usize) -> Result<&'a [u8], Error> {
        self.section_by_index(section_index(&self.header, kind, layer))
    }
    /// Labels section, validated UTF-8.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert!(b.labels().starts_with("0\n1\n"));
    /// # Ok(()) }
    /// ```
    pub fn labels(&self) -> &'a str {
        // Validated in `parse`.
        self.section_by_index(1)
            .ok()
            .and_then(|s| core::str::from_utf8(s).ok())
            .unwrap_or("")
    }
    /// Label of class `class`, if the blob has labels.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert_eq!((b.label(0), b.label(10)), (Some("0"), None));
    /// # Ok(()) }
    /// ```
    pub fn label(&self, class: usize) -> Option<&'a str> {
        let l = self.labels();
        if l.is_empty() {
            return None;
        }
        l.split('\n').nth(class)
    }
    /// Input normalisation `(mean, std)` of channel `c` in the 0..1 pixel scale.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx"))?;
    /// let h = b.header();
    /// assert!(b.normalisation(0).is_some() && b.normalisation(1).is_none());
    /// # Ok(()) }
    /// ```
    pub fn normalisation(&self, c: usize) -> Option<(f32, f32)> {
        let n = usize::from(self.header.in_c);
        if c >= n {
            return None;
        }
        // NORM holds 2·in_c f32 (validated): means, then stds.
        let s = crate::le::F32Le(self.section_by_index(0).ok()?);
        use crate::le::FloatWeights;
        Some((s.at(c), s.at(n + c)))
    }
}

/// One table-of-contents entry, as stored.
struct TocEntry {
    kind: u16,
    layer: u16,
    off: usize,
    len: usize,
    reserved: u32,
}

impl TocEntry {
    /// Entry `index` of the table in `bytes`, or `None` where it is past their end.
    fn read(bytes: &[u8], index: usize) -> Option<TocEntry> {
        let at = index.checked_mul(TOC_ENTRY_LEN)?.checked_add(HEADER_LEN)?;
        let e: &[u8; TOC_ENTRY_LEN] = bytes.get(at..)?.first_chunk()?;
        let [k0, k1, l0, l1, o0, o1, o2, o3, n0, n1, n2, n3, r0, r1, r2, r3] = *e;
        Some(TocEntry {
            kind: u16::from_le_bytes([k0, k1]),
            layer: u16::from_le_bytes([l0, l1]),
            off: u32::from_le_bytes([o0, o1, o2, o3]) as usize,
            len: u32::from_le_bytes([n0, n1, n2, n3]) as usize,
            reserved: u32::from_le_bytes([r0, r1, r2, r3]),
        })
    }

    /// The entry's section inside `bytes`, or `None` where it is not inside them.
    fn section<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        bytes.get(self.off..self.off.checked_add(self.len)?)
    }
}

fn h_depth(b: &[u8; HEADER_LEN]) -> u16 {
    LE::read_u16(&b[18..20])
}

fn h_conv_layers(depth: u16) -> usize {
    1 + 2 * usize::from(depth)
}

/// Reads and checks the header's fields (`parse` has checked the magic, the length and the
/// CRC). An array, so that every field is at a constant offset inside it.
fn read_header(b: &[u8; HEADER_LEN]) -> Result<Header, Error> {
    let version = LE::read_u16(&b[4..6]);
    if version != VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    if usize::from(LE::read_u16(&b[6..8])) != HEADER_LEN {
        return Err(Error::Malformed("header length"));
    }
    let precision = match b[8] {
        0 => Precision::F32,
        1 => Precision::F16,
        2 => Precision::Int8,
        x => return Err(Error::UnsupportedPrecision(x)),
    };
    let activation = match b[9] {
        0 => Activation::Gelu,
        1 => Activation::Relu,
        2 => Activation::GeluTanh,
        _ => return Err(Error::Malformed("activation code")),
    };
    let arch = match b[36] {
        0 => Arch::ConvMixer,
        1 => Arch::MlpMixer,
        _ => return Err(Error::Malformed("architecture code")),
    };
    if b[37] != 0 || b[42] != 0 || b[43] != 0 {
        return Err(Error::Malformed("reserved header bytes are not zero"));
    }
    let mut f16_layers = LayerMask::default();
    f16_layers.0.copy_from_slice(&b[44..HEADER_LEN]);
    let h = Header {
        arch,
        precision,
        activation,
        in_c: b[10],
        patch: b[11],
        in_h: LE::read_u16(&b[12..14]),
        in_w: LE::read_u16(&b[14..16]),
        dim: LE::read_u16(&b[16..18]),
        depth: LE::read_u16(&b[18..20]),
        kernel: b[20],
        pad_top: b[21],
        pad_left: b[22],
        gap_frac_bits: b[23],
        classes: LE::read_u16(&b[24..26]),
        f16_layers,
        token_hidden: LE::read_u16(&b[38..40]),
        channel_hidden: LE::read_u16(&b[40..42]),
    };
    if arch == Arch::MlpMixer {
        return read_mixer_header(h);
    }
    if h.token_hidden != 0 || h.channel_hidden != 0 {
        return Err(Error::Malformed("MLP hidden widths in a ConvMixer blob"));
    }
    let marked = f16_layers.iter(LayerMask::CAPACITY).count();
    if (precision != Precision::Int8 && marked != 0)
        || f16_layers.iter(h_conv_layers(h_depth(b)) + 1).count() != marked
    {
        return Err(Error::Malformed("f16 layer mask"));
    }
    if h.in_c != 1 && h.in_c != 3 {
        return Err(Error::Malformed("input channels must be 1 or 3"));
    }
    if h.patch == 0 || u16::from(h.patch) > h.in_h || u16::from(h.patch) > h.in_w {
        return Err(Error::Malformed("patch size"));
    }
    if h.dim == 0 || h.classes == 0 || h.kernel == 0 {
        return Err(Error::Malformed("zero dim, classes or kernel"));
    }
    if h.pad_top != (h.kernel - 1) / 2 || h.pad_left != (h.kernel - 1) / 2 {
        return Err(Error::Malformed("padding is not 'same'"));
    }
    if h.tokens() > MAX_TOKENS {
        return Err(Error::Malformed("too many tokens"));
    }
    match precision {
        Precision::Int8 => {
            let bound = 127i64 * 255 * (1i64 << h.gap_frac_bits.min(40)) * i64::from(h.dim);
            if h.gap_frac_bits > 16 || bound >= 1i64 << 31 {
                return Err(Error::Malformed("gap_frac_bits could overflow the head"));
            }
        }
        _ => {
            if h.gap_frac_bits != 0 {
                return Err(Error::Malformed("gap_frac_bits in a float blob"));
            }
        }
    }
    Ok(h)
}

/// The checks of an MLP-Mixer header (int8 only, no depthwise kernel, no f16 layers).
fn read_mixer_header(h: Header) -> Result<Header, Error> {
    if h.precision != Precision::Int8 {
        return Err(Error::Malformed("MLP-Mixer blobs are int8 only"));
    }
    if h.kernel != 0 || h.pad_top != 0 || h.pad_left != 0 || !h.f16_layers.is_empty() {
        return Err(Error::Malformed("conv fields in an MLP-Mixer blob"));
    }
    if h.in_c != 1 && h.in_c != 3 {
        return Err(Error::Malformed("input channels must be 1 or 3"));
    }
    if h.patch == 0 || u16::from(h.patch) > h.in_h || u16::from(h.patch) > h.in_w {
        return Err(Error::Malformed("patch size"));
    }
    if h.dim == 0 || h.classes == 0 || h.token_hidden == 0 || h.channel_hidden == 0 {
        return Err(Error::Malformed("zero dim, classes or hidden width"));
    }
    // The token MLP's GEMMs have T outputs and inputs; keep T in u16 like the widths.
    if h.tokens() > usize::from(u16::MAX) {
        return Err(Error::Malformed("too many tokens"));
    }
    let bound = 127i64 * 255 * (1i64 << h.gap_frac_bits.min(40)) * i64::from(h.dim);
    if h.gap_frac_bits > 16 || bound >= 1i64 << 31 {
        return Err(Error::Malformed("gap_frac_bits could overflow the head"));
    }
    Ok(h)
}

/// Parses and validates a blob. See [`crate::Model::from_bytes`].
///
/// ```
/// let blob = convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx");
/// assert!(convmixer_edge::blob::parse(blob).is_ok());
/// assert!(convmixer_edge::blob::parse(&blob[..100]).is_err());
/// ```
pub fn parse(bytes: &[u8]) -> Result<Blob<'_>, Error> {
    // In this order: is it a blob at all (magic), is it whole (length), is it intact (the
    // CRC, before any field is believed: a flipped bit anywhere past the magic and the
    // length is reported as corruption, not as an odd version or shape), then what the
    // header says.
    if bytes.get(0..4).is_some_and(|m| m != MAGIC) {
        return Err(Error::BadMagic);
    }
    // The header as an array: its fields are read at constant offsets, which cannot fail.
    let Some(head) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err(Error::Truncated);
    };
    let blob_len = LE::read_u32(&head[32..36]) as usize;
    if blob_len > bytes.len() {
        return Err(Error::Truncated);
    }
    if blob_len < HEADER_LEN {
        return Err(Error::BadCrc); // the CRC covers blob_len: it cannot be this small
    }
    let stored = LE::read_u32(&head[CRC_RANGE]);
    let mut d = CRC.digest();
    d.update(&head[..CRC_RANGE.start]);
    // CRC_RANGE.end < HEADER_LEN ≤ blob_len ≤ bytes.len(), checked above.
    d.update(bytes.get(CRC_RANGE.end..blob_len).ok_or(Error::Truncated)?);
    if d.finalize() != stored {
        return Err(Error::BadCrc);
    }
    if blob_len < bytes.len() {
        return Err(Error::Malformed("trailing bytes after the blob"));
    }
    let h = read_header(head)?;
    let n = usize::from(LE::read_u16(&head[26..28]));
    if n != h.section_count() {
        return Err(Error::Malformed("section count does not match the header"));
    }
    let toc_end = HEADER_LEN + n * TOC_ENTRY_LEN;
    if toc_end > bytes.len() {
        return Err(Error::Truncated);
    }
    let mut prev_end = toc_end;
    for i in 0..n {
        let TocEntry {
            kind,
            layer,
            off,
            len,
            reserved,
        } = TocEntry::read(bytes, i).ok_or(Error::Truncated)?;
        let (want_kind, want_layer, want_len) =
            section_at(&h, i).ok_or(Error::Malformed("section table"))?;
        if kind != want_kind as u16 || layer != want_layer {
            return Err(Error::Malformed("section table order"));
        }
        if want_len.is_some_and(|w| w != len) {
            return Err(Error::Malformed("section length does not match the shapes"));
        }
        if reserved != 0 {
            return Err(Error::Malformed("reserved section bytes are not zero"));
        }
        if off % SECTION_ALIGN != 0 || off < prev_end {
            return Err(Error::Malformed("section offset"));
        }
        let end = off.checked_add(len).ok_or(Error::Truncated)?;
        if end > bytes.len() {
            return Err(Error::Truncated);
        }
        prev_end = end;
    }
    let blob = Blob { bytes, header: h };
    validate_contents(&blob)?;
    Ok(blob)
}

/// What a read past the end of a section gives. `parse` checks every section's length
/// against its shape before reading any, so this never happens; it stands in for the
/// panic an index would have.
const SHORT: Error = Error::Malformed("section shorter than its shape");

/// Little-endian 4-byte element `i` of `b` (`SHORT` past its end).
fn word(b: &[u8], i: usize) -> Result<[u8; 4], Error> {
    let at = i.checked_mul(4).ok_or(SHORT)?;
    b.get(at..)
        .and_then(|s| s.first_chunk::<4>())
        .copied()
        .ok_or(SHORT)
}

/// Little-endian i32 element `i` of `b` (`SHORT` past its end).
fn i32_at(b: &[u8], i: usize) -> Result<i32, Error> {
    word(b, i).map(i32::from_le_bytes)
}

/// Float GEMM layers (embedding, pointwise): the packing padding must be zero.
fn check_float_padding(b: &Blob<'_>, layer: usize, wbytes: usize) -> Result<(), Error> {
    let h = b.header;
    let dim = usize::from(h.dim);
    let (w, taps) = (b.section(SectionKind::Weights, layer)?, h.taps(layer));
    let padded = dim.div_ceil(FGEMM_NR) * FGEMM_NR;
    for o in dim..padded {
        for i in 0..taps {
            let at = fgemm_index(o, i, taps) * wbytes;
            if w.get(at..at + wbytes).ok_or(SHORT)?.iter().any(|&v| v != 0) {
                return Err(Error::Malformed("non-zero padding in packed GEMM weights"));
            }
        }
    }
    Ok(())
}

/// The third vector of a float layer's AFFINE, the accumulator's `unscale`: a power of two
/// in `2^-24 ..= 1` (its weights and bias are stored multiplied by the inverse).
fn check_unscale(b: &Blob<'_>, layer: usize) -> Result<(), Error> {
    let aff = b.section(SectionKind::Affine, layer)?;
    let third = aff.len() / 3;
    let ok = |c: &[u8]| {
        let bits = LE::read_u32(c);
        // Sign 0, mantissa 0, biased exponent 127 − 24 ..= 127.
        bits & 0x807f_ffff == 0 && ((127 - 24)..=127).contains(&(bits >> 23))
    };
    if aff.get(2 * third..).ok_or(SHORT)?.chunks_exact(4).all(ok) {
        Ok(())
    } else {
        Err(Error::Malformed("float layer unscale"))
    }
}

/// Bounds of the MLP-Mixer's fixed-point LayerNorm and residual add (see the format
/// document): `E ≤ LN_EPS_MAX`, `0 ≤ sh ≤ LN_SH_MAX`, `|B_c| ≤ LN_B_MAX`,
/// `0 ≤ m_add ≤ RES_M_MAX`, `0 ≤ sh_add ≤ RES_SH_MAX`.
pub mod mixer_limits {
    /// Largest `eps` term of a LayerNorm.
    pub const LN_EPS_MAX: u64 = 1 << 62;
    /// Largest output shift of a LayerNorm.
    pub const LN_SH_MAX: i32 = 62;
    /// Largest `|B_c|` of a LayerNorm.
    pub const LN_B_MAX: i64 = 1 << 55;
    /// Largest residual-add multiplier.
    pub const RES_M_MAX: i32 = 1 << 22;
    /// Largest residual-add shift.
    pub const RES_SH_MAX: i32 = 31;
}

/// The requantisation record of output `o` of an `n`-output int8 layer (REQUANT, field-major)
/// within the format's bounds; `m_res` may be non-zero only where `residual` (a depthwise
/// layer).
fn check_requant(rq: &[u8], n: usize, o: usize, residual: bool) -> Result<(), Error> {
    let r = |f: usize| i32_at(rq, f * n + o);
    let (m_pre, sh_pre, m_post, b_post, sh_post, m_res) =
        (r(0)?, r(1)?, r(2)?, r(3)?, r(4)?, r(5)?);
    use limits::*;
    let ok = m_pre >= 0
        && (SH_PRE_MIN..=SH_PRE_MAX).contains(&sh_pre)
        && m_post.unsigned_abs() <= M_POST_MAX as u32
        && b_post.unsigned_abs() <= B_POST_MAX as u32
        && (0..=SH_POST_MAX).contains(&sh_post)
        && m_res.unsigned_abs() <= M_RES_MAX as u32
        && (residual || m_res == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed("requantisation parameter out of range"))
    }
}

/// The int8 GEMM rules of one layer with `k` inputs and `n` outputs (packed weights; the
/// ConvMixer's embedding and pointwise convs, every MLP-Mixer linear layer): no weight
/// −128 (the SIMD kernels sum two products in i16, safe only for |w| ≤ 127), zero packing
/// padding, requantisation fields in range with `m_res = 0`, and the accumulator bound
/// `|bias′| + 128·Σ|w| < 2^31` per output (inputs are int8 everywhere, the embedding's
/// pixel − 128: every partial sum stays below it, whatever the summation order).
fn check_int8_gemm(b: &Blob<'_>, layer: usize, k: usize, n: usize) -> Result<(), Error> {
    let w = b.section(SectionKind::Weights, layer)?;
    let bias = b.section(SectionKind::Bias, layer)?;
    let rq = b.section(SectionKind::Requant, layer)?;
    if w.contains(&0x80) {
        return Err(Error::Malformed("int8 weight −128"));
    }
    let real: usize = (0..n)
        .map(|o| {
            (0..k)
                .filter(|&i| w.get(gemm_index(o, i, k)).is_some_and(|&v| v != 0))
                .count()
        })
        .sum();
    if w.iter().filter(|&&v| v != 0).count() != real {
        return Err(Error::Malformed("non-zero padding in packed GEMM weights"));
    }
    for o in 0..n {
        check_requant(rq, n, o, false)?;
        let mut sum_abs = 0i64;
        for i in 0..k {
            let v = *w.get(gemm_index(o, i, k)).ok_or(SHORT)? as i8;
            sum_abs += i64::from(v.unsigned_abs());
        }
        if i64::from(i32_at(bias, o)?.unsigned_abs()) + 128 * sum_abs >= 1i64 << 31 {
            return Err(Error::Malformed("accumulator could overflow i32"));
        }
    }
    Ok(())
}

/// The MLP-Mixer's sections: every GEMM layer's int8 rules, the zero points chained from
/// each tensor's producer to its consumer, the LayerNorm and residual-add bounds.
fn validate_mixer(b: &Blob<'_>) -> Result<(), Error> {
    use mixer_limits::*;
    let h = b.header;
    let zp_ok = |z: i32| (-128..=127).contains(&z);
    // The zero point of the int8 tensor the next layer reads (the pixels: −128).
    let mut zp_prev = -128;
    for layer in 0..=h.head_layer() {
        let role = h.mixer_layer(layer).ok_or(Error::Malformed("layer plan"))?;
        match role {
            MixerLayer::Norm => {
                let s = b.section(SectionKind::LayerNorm, layer)?;
                let eps = u64::from_le_bytes(*s.first_chunk::<8>().ok_or(SHORT)?);
                let (sh, zp) = (i32_at(s, 2)?, i32_at(s, 3)?);
                let dim = usize::from(h.dim);
                let offsets = s.get(16 + 4 * dim..).ok_or(SHORT)?;
                let b_ok = offsets.chunks_exact(8).all(|c| {
                    let v = i64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                    v.unsigned_abs() <= LN_B_MAX as u64
                });
                if eps > LN_EPS_MAX || !(0..=LN_SH_MAX).contains(&sh) || !zp_ok(zp) || !b_ok {
                    return Err(Error::Malformed("LayerNorm parameter out of range"));
                }
                zp_prev = zp;
            }
            MixerLayer::Head => {
                let q = b.section(SectionKind::QParams, layer)?;
                if i32_at(q, 0)? != zp_prev {
                    return Err(Error::Malformed("zero point differs from its producer's"));
                }
            }
            _ => {
                let (_, k, n) = h.mixer_gemm(layer).ok_or(Error::Malformed("layer plan"))?;
                let q = b.section(SectionKind::QParams, layer)?;
                let (zp_in, zp_z, zp_out) = (i32_at(q, 0)?, i32_at(q, 1)?, i32_at(q, 2)?);
                if !(zp_ok(zp_z) && zp_ok(zp_out)) || i32_at(q, 3)? != 0 {
                    return Err(Error::Malformed("zero point out of range"));
                }
                if zp_in != zp_prev {
                    return Err(Error::Malformed("zero point differs from its producer's"));
                }
                check_int8_gemm(b, layer, k, n)?;
                if role.adds_residual() {
                    let r = b.section(SectionKind::ResAdd, layer)?;
                    let (m, sh) = (i32_at(r, 0)?, i32_at(r, 1)?);
                    if !(0..=RES_M_MAX).contains(&m)
                        || !(0..=RES_SH_MAX).contains(&sh)
                        || i32_at(r, 2)? != 0
                        || i32_at(r, 3)? != 0
                    {
                        return Err(Error::Malformed("residual-add parameter out of range"));
                    }
                    // The residual stream (int16, zero point 0) is what the next LayerNorm
                    // reads; its int8 producer is the LayerNorm itself.
                } else {
                    zp_prev = zp_out;
                }
            }
        }
    }
    Ok(())
}

fn validate_contents(b: &Blob<'_>) -> Result<(), Error> {
    let h = b.header;
    let labels =
        core::str::from_utf8(b.section_by_index(1)?).map_err(|_| Error::Malformed("labels"))?;
    if !labels.is_empty() && labels.split('\n').count() != usize::from(h.classes) {
        return Err(Error::Malformed("label count does not match classes"));
    }
    if h.arch == Arch::MlpMixer {
        return validate_mixer(b);
    }
    if h.precision != Precision::Int8 {
        let wbytes = if h.precision == Precision::F16 { 2 } else { 4 };
        for layer in 0..h.conv_layers() {
            if layer % 2 == 0 {
                check_float_padding(b, layer, wbytes)?;
            }
            check_unscale(b, layer)?;
        }
        return Ok(());
    }
    let zp_ok = |z: i32| (-128..=127).contains(&z);
    for layer in 0..h.conv_layers() {
        let q = b.section(SectionKind::QParams, layer)?;
        let zp_in = i32_at(q, 0)?;
        if !(zp_ok(zp_in) && zp_ok(i32_at(q, 1)?) && zp_ok(i32_at(q, 2)?)) {
            return Err(Error::Malformed("zero point out of range"));
        }
        if layer == 0 && zp_in != -128 {
            return Err(Error::Malformed("embedding input zero point must be -128"));
        }
        if h.f16_layers.contains(layer) {
            // An f16 layer between int8 tensors: finite positive scales, float padding.
            let s = b.section(SectionKind::IoScale, layer)?;
            let ok = |v: f32| v.is_finite() && v > 0.0;
            if !s.chunks_exact(4).all(|c| ok(LE::read_f32(c))) {
                return Err(Error::Malformed("f16 layer scales"));
            }
            if layer % 2 == 0 {
                check_float_padding(b, layer, 2)?;
            }
            check_unscale(b, layer)?;
            continue;
        }
        let taps = h.taps(layer);
        let dim = usize::from(h.dim);
        // The embedding and the pointwise convs are GEMMs with packed weights.
        if layer % 2 == 0 {
            check_int8_gemm(b, layer, taps, dim)?;
            continue;
        }
        // Depthwise: the same rules on tap-major weights (channel o at every `dim`-th
        // byte), with the residual multiplier.
        let w = b.section(SectionKind::Weights, layer)?;
        let bias = b.section(SectionKind::Bias, layer)?;
        let rq = b.section(SectionKind::Requant, layer)?;
        if w.contains(&0x80) {
            return Err(Error::Malformed("int8 weight −128"));
        }
        for o in 0..dim {
            check_requant(rq, dim, o, true)?;
            let sum_abs: i64 = (0..taps)
                .map(|t| {
                    w.get(t * dim + o)
                        .map(|&v| i64::from((v as i8).unsigned_abs()))
                        .ok_or(SHORT)
                })
                .sum::<Result<i64, Error>>()?;
            if i64::from(i32_at(bias, o)?.unsigned_abs()) + 128 * sum_abs >= 1i64 << 31 {
                return Err(Error::Malformed("accumulator could overflow i32"));
            }
        }
    }
    let hq = b.section(SectionKind::QParams, h.head_layer())?;
    if !zp_ok(i32_at(hq, 0)?) {
        return Err(Error::Malformed("zero point out of range"));
    }
    if h.f16_layers.contains(h.head_layer()) {
        let s = b.section(SectionKind::IoScale, h.head_layer())?;
        if !s
            .chunks_exact(4)
            .all(|c| LE::read_f32(c).is_finite() && LE::read_f32(c) > 0.0)
        {
            return Err(Error::Malformed("f16 layer scales"));
        }
    }
    Ok(())
}
