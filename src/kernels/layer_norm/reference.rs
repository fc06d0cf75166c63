//! The MLP-Mixer's fixed-point LayerNorm of the int16 residual stream (a LAYER_NORM
//! section of `docs/blob-format.md`), in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::le::I32Le;

/// `⌊√v⌋` of a u64, bit by bit (exact; no float).
///
/// ```
/// use convmixer_edge::kernels::reference::isqrt_u64;
/// assert_eq!((isqrt_u64(0), isqrt_u64(15), isqrt_u64(16), isqrt_u64(u64::MAX)), (0, 3, 4, u32::MAX as u64));
/// ```
pub fn isqrt_u64(v: u64) -> u64 {
    let (mut rem, mut root) = (v, 0u64);
    let mut bit = 1u64 << 62;
    while bit > v {
        bit >>= 2;
    }
    // Invariant: root < 2^32 and bit ≤ 2^62, so root + bit cannot overflow.
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// The parameters of one fixed-point LayerNorm (a LAYER_NORM section, see
/// `docs/blob-format.md`): `y_c = zp_out + rshr(z_c · mul_c + offset_c, shift)` with
/// `z_c = round(2^16 · (x_c − mean) / √(var + eps))` in residual units.
///
/// ```
/// use convmixer_edge::kernels::reference::LayerNormI16;
/// let mut s = vec![0u8; 16 + 12];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes()); // shift 16
/// let p = LayerNormI16::from_section(&s, 1);
/// assert_eq!((p.eps, p.shift, p.zp_out), (0, 16, 0));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct LayerNormI16<'a> {
    /// `eps · dim² / s_x²`, the variance floor in the units of `dim² · var`.
    pub eps: u64,
    /// Rounding right shift of the affine result.
    pub shift: i32,
    /// Zero point of the int8 output.
    pub zp_out: i32,
    /// `dim` i32 multipliers (the LayerNorm's γ over the output scale, `2^(shift−16)` units).
    pub mul: I32Le<'a>,
    /// `dim` little-endian i64 offsets (β over the output scale, `2^shift` units).
    pub offset: &'a [u8],
}

impl<'a> LayerNormI16<'a> {
    /// Reads a LAYER_NORM section of a `dim`-channel model (a missing `eps`, shift or zero
    /// point reads as zero; with fewer than `dim` multipliers or offsets the LayerNorm
    /// writes nothing).
    pub fn from_section(s: &'a [u8], dim: usize) -> Self {
        let word = |i: usize| I32Le(s).at(i);
        let eps = s.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
        let mul_end = dim.saturating_mul(4).saturating_add(16);
        LayerNormI16 {
            eps,
            shift: word(2),
            zp_out: word(3),
            mul: I32Le(s.get(16..mul_end).unwrap_or_default()),
            offset: s.get(mul_end..).unwrap_or_default(),
        }
    }
}

/// LayerNorm of one token's `dim` residual values `x` into `out` (int8, `out[c]` at
/// `c · stride`, so that the token MLP's transposed input is written directly).
///
/// Exact integer arithmetic: `S1 = Σx`, `S2 = Σx²`, `V = dim·S2 − S1² + eps`,
/// `r = ⌊√V⌋`, `inv = ⌊2^62 / r⌋` (0 where `r = 0`), and per channel
/// `z = (d · inv + 2^45) >> 46` with `d = dim·x_c − S1` (in i128), clamped to ±2^30,
/// then `zp_out + rshr(z · mul_c + offset_c, shift)` clamped to int8.
///
/// ```
/// use convmixer_edge::kernels::reference::{layer_norm_token_i16, LayerNormI16};
/// // dim 2, mul = 1 with shift 16 (z / 2^16 = the normalised value), no offset.
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 2];
/// layer_norm_token_i16(&[100, 300], 2, &p, &mut out, 1);
/// assert_eq!(out, [-1, 1]); // (x − mean) / std
/// ```
pub fn layer_norm_token_i16(
    x: &[i16],
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    stride: usize,
) {
    if let Some(t) = LnToken::new(x, dim, p) {
        t.scalar_from(0, out, stride.max(1));
    }
}

/// One token's LayerNorm terms, shared by [`layer_norm_token_i16`] and its NEON variant:
/// the row, `dim`, `S1`, `inv` and the affine's parameters.
#[derive(Clone, Copy)]
pub(crate) struct LnToken<'a> {
    pub(crate) row: &'a [i16],
    pub(crate) n: i64,
    pub(crate) s1: i64,
    pub(crate) inv: i64,
    pub(crate) muls: &'a [u8],
    pub(crate) offsets: &'a [u8],
    pub(crate) shift: i32,
    pub(crate) half: i64,
    pub(crate) zp: i64,
}

impl<'a> LnToken<'a> {
    /// The terms of the token `x[..dim]`; `None` (nothing to write) where `x` or the
    /// parameters are shorter than `dim` or `dim > 2^16`.
    pub(crate) fn new(x: &'a [i16], dim: usize, p: &LayerNormI16<'a>) -> Option<Self> {
        // dim ≤ 2^16 keeps every sum below in range (|x| ≤ 2^15): |S1| ≤ 2^31, S2 ≤ 2^46,
        // dim·S2 ≤ 2^62, |d| ≤ 2^32.
        let row = x.get(..dim).filter(|_| dim <= 1 << 16)?;
        let (muls, offsets) = (p.mul.0.get(..4 * dim)?, p.offset.get(..8 * dim)?);
        let (s1, s2) = row.iter().fold((0i64, 0i64), |(a, b), &v| {
            let v = i64::from(v);
            (a + v, b + v * v)
        });
        let n = dim as i64;
        // Cauchy–Schwarz: dim·S2 ≥ S1²; both are below 2^63.
        let var = (n * s2 - s1 * s1).max(0) as u64;
        let r = isqrt_u64(var.saturating_add(p.eps));
        // inv ≤ 2^62 fits i64, so d·inv is a 64×64 → 128-bit product (`MUL` + `SMULH`).
        let inv = (1u64 << 62).checked_div(r).unwrap_or(0) as i64;
        let shift = p.shift.clamp(0, 62);
        Some(LnToken {
            row,
            n,
            s1,
            inv,
            muls,
            offsets,
            shift,
            half: if shift > 0 { 1i64 << (shift - 1) } else { 0 },
            zp: i64::from(p.zp_out),
        })
    }

    /// Channels `c0..dim` into `out[c · step]` (where it is long enough).
    #[inline]
    pub(crate) fn scalar_from(&self, c0: usize, out: &mut [i8], step: usize) {
        let params = self
            .muls
            .chunks_exact(4)
            .zip(self.offsets.chunks_exact(8))
            .skip(c0);
        for ((c, &v), (m, off)) in self.row.iter().enumerate().skip(c0).zip(params) {
            let m = m
                .first_chunk::<4>()
                .map_or(0, |b| i64::from(i32::from_le_bytes(*b)));
            let off = off.first_chunk::<8>().map_or(0, |b| i64::from_le_bytes(*b));
            let d = self.n * i64::from(v) - self.s1;
            // |d·inv| < 2^33·2^62, so the shifted product is below 2^49: exact in i64.
            let z = ((i128::from(d) * i128::from(self.inv) + (1i128 << 45)) >> 46) as i64;
            let z = z.clamp(-(1i64 << 30), 1i64 << 30);
            // |z·mul| ≤ 2^61 and |offset| ≤ 2^55 (the reader's bound): nothing below
            // overflows (the wrapping forms only keep other parameters from panicking).
            let y = z.wrapping_mul(m).wrapping_add(off).wrapping_add(self.half) >> self.shift;
            if let Some(o) = out.get_mut(c * step) {
                *o = y.wrapping_add(self.zp).clamp(-128, 127) as i8;
            }
        }
    }
}

/// LayerNorm of all `tokens` rows of the residual stream `x` (`tokens · dim` i16,
/// token-major) into `out` (`tokens · dim` int8): token-major, or channel-major where
/// `transposed` (`out[c · tokens + t]`, the token MLP's input). Nothing is written where a
/// slice is shorter than that.
///
/// ```
/// use convmixer_edge::kernels::reference::{layer_norm_i16, LayerNormI16};
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 4];
/// layer_norm_i16(&[100, 300, 5, -5], 2, 2, &p, &mut out, true);
/// assert_eq!(out, [-1, 1, 1, -1]); // channel 0 of both tokens, then channel 1
/// ```
pub fn layer_norm_i16(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    transposed: bool,
) {
    layer_norm_rows(x, tokens, dim, p, out, transposed, layer_norm_token_i16);
}

/// [`layer_norm_i16`] with `token` for each token (the reference's, or a SIMD variant).
pub(crate) fn layer_norm_rows(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &LayerNormI16<'_>,
    out: &mut [i8],
    transposed: bool,
    token: impl Fn(&[i16], usize, &LayerNormI16<'_>, &mut [i8], usize),
) {
    let fits = dim > 0
        && tokens
            .checked_mul(dim)
            .is_some_and(|n| x.len() >= n && out.len() >= n);
    if !fits {
        return;
    }
    for (t, row) in x.chunks_exact(dim).take(tokens).enumerate() {
        let (o, stride) = if transposed {
            (out.get_mut(t..).unwrap_or_default(), tokens)
        } else {
            (out.get_mut(t * dim..).unwrap_or_default(), 1)
        };
        token(row, dim, p, o, stride);
    }
}
