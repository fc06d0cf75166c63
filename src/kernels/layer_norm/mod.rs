//! The MLP-Mixer's fixed-point LayerNorm of the int16 residual stream into int8.
//!
//! * `reference.rs`: [`reference::layer_norm_i16`] and
//!   [`reference::layer_norm_token_i16`], exact
//!   integer arithmetic;
//! * `neon.rs`: `layer_norm_token_i16_neon`, `x86.rs`: `layer_norm_token_i16_avx2`, 4
//!   channels per step;
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.

pub(super) mod reference;

// The NEON kernels read little-endian blob fields as native integers, and exist only where
// NEON is a compile-time target feature (so no run-time check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub mod neon;

// The AVX2 kernels run only where Isa::Avx2 was detected (their entry points check).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86;

#[cfg(test)]
mod tests;

use super::parts::ChannelsMut;
use super::Isa;

/// The MLP-Mixer's fixed-point LayerNorm of the residual stream
/// ([`reference::layer_norm_i16`]; per token `neon::layer_norm_token_i16_neon` where `isa`
/// has NEON, `x86::layer_norm_token_i16_avx2` for AVX2): the same bits.
///
/// ```
/// use convmixer_edge::kernels::{layer_norm, reference::LayerNormI16, Isa};
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 4];
/// layer_norm::layer_norm_i16(&[100, 300, 5, -5], 2, 2, &p, &mut out, false, Isa::detect());
/// assert_eq!(out, [-1, 1, 1, -1]);
/// ```
pub fn layer_norm_i16(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &reference::LayerNormI16<'_>,
    out: &mut [i8],
    transposed: bool,
    isa: Isa,
) {
    let token = match isa {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::Neon | Isa::NeonDot => neon::layer_norm_token_i16_neon,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::layer_norm_token_i16_avx2,
        _ => reference::layer_norm_token_i16,
    };
    reference::layer_norm_rows(x, tokens, dim, p, out, transposed, token);
}

/// The LayerNorm before a token MLP, on one core's tokens: tokens `out.channels()` of the
/// residual stream `x` (`tokens · dim` i16), written transposed into `out`, that core's
/// columns of the channel-major int8 output (`dim` rows of `tokens`: a [`ChannelsMut`]
/// whose "channels" are tokens). Computed token-major by [`layer_norm_i16`],
/// `tile.len() / dim` tokens at a time through `tile` (at least `dim` bytes), then copied
/// into the columns; nothing is written where a buffer does not fit. The parts of a split,
/// in any order or at the same time, give the bytes of [`layer_norm_i16`] with
/// `transposed`.
///
/// ```
/// use convmixer_edge::kernels::{layer_norm, parts::ChannelsMut, reference::LayerNormI16, Isa};
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let (x, mut out, mut tile) = ([100i16, 300, 5, -5], [0i8; 4], [0i8; 2]);
/// for mut part in ChannelsMut::split(&mut out, 2, 1, 2) {
///     layer_norm::layer_norm_i16_columns(&x, 2, 2, &p, &mut part, &mut tile, Isa::detect());
/// }
/// assert_eq!(out, [-1, 1, 1, -1]); // channel 0 of both tokens, then channel 1
/// ```
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_i16_columns(
    x: &[i16],
    tokens: usize,
    dim: usize,
    p: &reference::LayerNormI16<'_>,
    out: &mut ChannelsMut<'_, i8>,
    tile: &mut [i8],
    isa: Isa,
) {
    let cols = out.channels();
    let per = tile.len().checked_div(dim).unwrap_or(0).min(cols.len());
    let fits = out.dim() == tokens
        && cols.end <= tokens
        && tokens.checked_mul(dim).is_some_and(|n| out.len() >= n);
    if per == 0 || !fits {
        return;
    }
    let mut t0 = cols.start;
    while t0 < cols.end {
        let n = per.min(cols.end - t0);
        // Inside x where x holds the stream (t0 + n ≤ tokens, tokens · dim checked above).
        let (Some(rows), Some(tl)) = (x.get(t0 * dim..(t0 + n) * dim), tile.get_mut(..n * dim))
        else {
            return;
        };
        layer_norm_i16(rows, n, dim, p, tl, false, isa);
        let at = t0 - cols.start;
        for c in 0..dim {
            let Some(dst) = out.token(c).and_then(|r| r.get_mut(at..at + n)) else {
                return;
            };
            for (d, v) in dst.iter_mut().zip(tl.iter().skip(c).step_by(dim)) {
                *d = *v;
            }
        }
        t0 += n;
    }
}
