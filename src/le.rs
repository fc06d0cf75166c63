//! Zero-copy little-endian views of blob sections.
//!
//! The blob stays where it is (flash, `include_bytes!`, a file buffer); values are decoded on
//! access with `byteorder`, so no alignment is required and big-endian hosts read the same
//! numbers. Lengths are validated by [`crate::blob::parse`] before any view is made; an
//! element past the end of a view (which the runtime never asks for) reads as 0, so that a
//! view never panics.
#![forbid(unsafe_code)]

/// The `N` bytes of element `i` of an array of `N`-byte elements, or `None` past its end.
/// (The same range check as `b[N·i..N·i + N]`, without the panic. `N·i` wraps only for an
/// `i` no array of `N`-byte elements reaches; then some element or `None` comes back,
/// never a read outside `b`.)
#[inline(always)]
fn element<const N: usize>(b: &[u8], i: usize) -> Option<[u8; N]> {
    let at = i.wrapping_mul(N);
    b.get(at..at.wrapping_add(N))?.try_into().ok()
}

/// A source of float weights: f32 or f16 storage, read as f32. Sealed: the NEON kernels
/// trust `HALF` and `bytes`.
///
/// ```
/// use convmixer_edge::le::{F32Le, FloatWeights};
/// let bytes = 1.5f32.to_le_bytes();
/// assert_eq!(F32Le(&bytes).at(0), 1.5);
/// ```
pub trait FloatWeights: Copy + Sync + crate::sealed::Sealed {
    /// Whether elements are f16 (else f32).
    const HALF: bool;
    /// Element `i` as f32 (0 past the end).
    fn at(&self, i: usize) -> f32;
    /// The raw little-endian bytes.
    fn bytes(&self) -> &[u8];
}

/// Little-endian f32 array.
///
/// ```
/// use convmixer_edge::le::{F32Le, FloatWeights};
/// let b = [0u8, 0, 128, 63, 0, 0, 0, 64];
/// assert_eq!((F32Le(&b).at(0), F32Le(&b).at(1)), (1.0, 2.0));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct F32Le<'a>(pub &'a [u8]);

impl crate::sealed::Sealed for F32Le<'_> {}
impl FloatWeights for F32Le<'_> {
    const HALF: bool = false;
    fn bytes(&self) -> &[u8] {
        self.0
    }
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        element(self.0, i).map_or(0.0, f32::from_le_bytes)
    }
}

/// Little-endian IEEE binary16 array, widened to f32 on read.
///
/// ```
/// use convmixer_edge::le::{F16Le, FloatWeights};
/// let b = half::f16::from_f32(0.5).to_bits().to_le_bytes();
/// assert_eq!(F16Le(&b).at(0), 0.5);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct F16Le<'a>(pub &'a [u8]);

impl crate::sealed::Sealed for F16Le<'_> {}
impl FloatWeights for F16Le<'_> {
    const HALF: bool = true;
    fn bytes(&self) -> &[u8] {
        self.0
    }
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        half::f16::from_bits(element(self.0, i).map_or(0, u16::from_le_bytes)).to_f32()
    }
}

/// Little-endian i32 array.
///
/// ```
/// use convmixer_edge::le::I32Le;
/// assert_eq!(I32Le(&(-7i32).to_le_bytes()).at(0), -7);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct I32Le<'a>(pub &'a [u8]);

impl I32Le<'_> {
    /// Element `i` (0 past the end).
    #[inline(always)]
    pub fn at(&self, i: usize) -> i32 {
        element(self.0, i).map_or(0, i32::from_le_bytes)
    }
}
