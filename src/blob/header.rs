//! The blob's 64-byte header: [`Header`], its accessors (the shapes and section plans
//! every other part reads), and how [`super::parse`] reads and checks it.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::*;

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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    pub(super) fn mixer_first_section(&self, l: usize) -> usize {
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    pub(super) fn per_conv(&self) -> usize {
        match self.precision {
            // int8 layers: WEIGHTS BIAS REQUANT QPARAMS TABLE; f16 layers of an int8
            // blob: WEIGHTS BIAS AFFINE QPARAMS IO_SCALE.
            Precision::Int8 => 5,
            _ => 3,
        }
    }
    /// Sections of the head.
    pub(super) fn per_head(&self) -> usize {
        match self.precision {
            Precision::Int8 => 4,
            _ => 2,
        }
    }
    /// Number of table-of-contents entries this header implies.
    ///
    /// ```
    /// # fn main() -> Result<(), convmixer_edge::Error> {
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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
    /// let b = convmixer_edge::blob::parse(convmixer_edge::include_blob!("../../examples/mnist/convmixer-mnist-int8.cmx"))?;
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

fn h_depth(b: &[u8; HEADER_LEN]) -> u16 {
    LE::read_u16(&b[18..20])
}

fn h_conv_layers(depth: u16) -> usize {
    1 + 2 * usize::from(depth)
}

/// Reads and checks the header's fields (`parse` has checked the magic, the length and the
/// CRC). An array, so that every field is at a constant offset inside it.
pub(super) fn read_header(b: &[u8; HEADER_LEN]) -> Result<Header, Error> {
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
