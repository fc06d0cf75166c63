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

mod check;
mod header;
pub use check::mixer_limits;
use check::validate_contents;
use header::read_header;
pub use header::Header;

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
