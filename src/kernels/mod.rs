//! Compute kernels. [`reference`] holds one plain scalar implementation per op; SIMD
//! variants live beside it, are named by ISA and tile shape, and are tested bit-for-bit
//! against it.

pub mod reference;

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
