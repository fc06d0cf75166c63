//! Compute kernels. [`reference`] holds one plain scalar implementation per op; SIMD
//! variants live beside it, are named by ISA and tile shape, and are tested bit-for-bit
//! against it.

pub mod reference;

/// Output channels per packed block of int8 pointwise weights.
pub const PW_NR: usize = 16;
/// Input channels per packed group of int8 pointwise weights (one `SDOT` lane).
pub const PW_KR: usize = 4;

/// Bytes of packed int8 pointwise weights for `dim` channels: both dimensions are padded
/// (outputs to [`PW_NR`], inputs to [`PW_KR`]) with zero weights.
///
/// ```
/// assert_eq!(convmixer_edge::kernels::pw_packed_len(48), 48 * 48);
/// assert_eq!(convmixer_edge::kernels::pw_packed_len(10), 16 * 12);
/// ```
pub const fn pw_packed_len(dim: usize) -> usize {
    dim.div_ceil(PW_NR) * PW_NR * (dim.div_ceil(PW_KR) * PW_KR)
}

/// Byte index of weight `(out o, in i)` in packed int8 pointwise weights: layout
/// `[o / 16][i / 4][o % 16][i % 4]` — each 16-byte row holds 4 outputs × 4 inputs, what an
/// `SDOT` by element consumes (and `SMULL`/`SMLAL` pairs, two outputs per 8 bytes).
///
/// ```
/// use convmixer_edge::kernels::pw_index;
/// assert_eq!((pw_index(0, 0, 48), pw_index(0, 3, 48), pw_index(1, 0, 48)), (0, 3, 4));
/// assert_eq!(pw_index(0, 4, 48), 64);
/// assert_eq!(pw_index(16, 0, 48), 16 * 48);
/// ```
#[inline]
pub const fn pw_index(o: usize, i: usize, dim: usize) -> usize {
    let kp = dim.div_ceil(PW_KR) * PW_KR;
    (o / PW_NR) * PW_NR * kp + (i / PW_KR) * PW_NR * PW_KR + (o % PW_NR) * PW_KR + i % PW_KR
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
    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.ht * self.wt
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
    /// Taps per output channel: `p · p · in_c`.
    pub fn taps(&self) -> usize {
        self.patch * self.patch * self.in_c
    }
}
