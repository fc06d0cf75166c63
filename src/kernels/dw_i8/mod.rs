//! The int8 depthwise k×k 'same' conv + residual.
//!
//! * `reference.rs`: [`reference::dw_i8`] and
//!   [`reference::dw_token_i8`], the plain scalar definitions;
//! * `neon.rs`: the AArch64 slice-wise in-place kernels `dw_i8_inplace_smlal` (ARMv8.0) and
//!   `dw_i8_inplace_sdot` (ARMv8.2 dot product);
//! * `x86.rs`: the x86_64 AVX2 slice-wise in-place kernel `dw_i8_inplace_avx2_8x8`;
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The layer runs in place on the one activation tensor ([`dw_i8_inplace`]): output row `y`
//! needs input rows `y − pad_top ..= y + k − 1 − pad_top`. Rows above `y` have already been
//! overwritten, so a ring keeps the originals of the last `pad_top` rows. Within row `y`,
//! output token `x` still needs the original tokens `x − pad_left ..`, so outputs wait in a
//! queue and are written back (after the original moves to the ring) as soon as no later
//! output of the row reads that position: the queue holds `pad_left + 1` tokens. (The
//! slice-wise SIMD drivers do the same per 16-channel slice, with less scratch.)
//!
//! Scratch: `pad_top · wt · dim + max(pad_left + 1, PW_TILE) · dim` bytes ([`scratch_len`],
//! which also covers the pointwise driver's [`PW_TILE`] tokens). The driver gives exactly
//! the bytes of the out-of-place reference, whatever [`Isa`] computes the tokens, checks
//! its buffers' lengths once, in checked arithmetic, and does nothing where they do not
//! fit.

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
use super::reference::QuantLayer;
use super::{Grid, Isa, PW_TILE};
use crate::Activation;

/// Scratch bytes the drivers need for grid `g` (saturating at `usize::MAX`, which no
/// buffer can hold, for a grid whose sizes overflow).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8::scratch_len, Grid};
/// // ConvMixer-256/8 k5 on a 16×16 grid: 2 ring rows + 4 pointwise tokens.
/// let g = Grid { ht: 16, wt: 16, dim: 256, kernel: 5, pad_top: 2, pad_left: 2 };
/// assert_eq!(scratch_len(g), 2 * 16 * 256 + 4 * 256);
/// ```
pub fn scratch_len(g: Grid) -> usize {
    let ring = g.pad_top.saturating_mul(g.wt).saturating_mul(g.dim);
    let per_token = ring.saturating_add(queue_len(g).max(PW_TILE).saturating_mul(g.dim));
    // The same on every target (the arena is sized on the host too), so it covers the
    // slice-wise dot-product driver as well, which needs less except on tiny grids.
    per_token.max(dw_slice_scratch_len(g))
}

/// Scratch bytes of the slice-wise depthwise drivers: for `neon::dw_i8_inplace_sdot` a ring
/// of `pad_top` rows of one 16-channel slice, the slice's packed weights and input cache
/// (64 bytes per tap group and kernel column / input column) and a row buffer; for
/// `neon::dw_i8_inplace_smlal` `k` cached input rows, a padding row and a row buffer
/// (saturating at `usize::MAX`, so that the NEON drivers' length check against it holds
/// exactly when the real sum fits).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8::dw_slice_scratch_len, Grid};
/// let g = Grid { ht: 16, wt: 16, dim: 768, kernel: 7, pad_top: 3, pad_left: 3 };
/// assert_eq!(dw_slice_scratch_len(g), 3 * 16 * 16 + 2 * 7 * 64 + 2 * 22 * 64 + 16 * 16);
/// ```
pub fn dw_slice_scratch_len(g: Grid) -> usize {
    let mul = usize::saturating_mul;
    let groups = g.kernel.div_ceil(4);
    let cols = g.wt.saturating_add(g.kernel).saturating_sub(1);
    let row = mul(g.wt, 16);
    let sdot = [
        mul(mul(g.pad_top, g.wt), 16),
        mul(mul(groups, g.kernel), 64),
        mul(mul(groups, cols), 64),
        row,
    ]
    .into_iter()
    .fold(0, usize::saturating_add);
    // The ARMv8.0 driver: k cached rows and a padding row, then the row buffer.
    let smlal = mul(mul(g.kernel.saturating_add(1), cols), 16).saturating_add(row);
    sdot.max(smlal)
}

/// Tokens in the depthwise output queue: the token computed and the `pad_left` outputs
/// waiting for it.
fn queue_len(g: Grid) -> usize {
    g.pad_left.saturating_add(1)
}

/// Depthwise conv + residual in place on `a` (`tokens · dim` int8): [`dw_i8_channels`] on
/// every channel. With NEON (`dim` a multiple of 16, `k ≤ 9`) or AVX2 (`dim` a multiple of
/// 8, `k ≤ 9`) the slice-wise kernels of `neon` or `x86` run it; otherwise the reference
/// computes it token by token through the ring and the queue described above.
/// `scratch` must hold [`scratch_len`] bytes; shorter buffers make it fall back to nothing
/// (the caller sizes the arena from the same formula).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8, reference, Grid, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) (+ the residual for depthwise layers).
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let rq_no_res: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = Grid { ht: 3, wt: 5, dim: n, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<i8> = (0..9 * n).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 3, zp_z: 0, zp_out: -5, table: &[] };
/// let x: Vec<i8> = (0..15 * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let mut want = vec![0i8; x.len()];
/// reference::dw_i8(&x, g, &l, Activation::Relu, &mut want);
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; dw_i8::scratch_len(g)]);
/// dw_i8::dw_i8_inplace(&mut a, &mut scratch, g, &l, Activation::Relu, Isa::detect());
/// assert_eq!(a, want);
/// ```
pub fn dw_i8_inplace(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) {
    dw_i8_channels(&mut ChannelsMut::whole(a, g.dim), scratch, g, l, act, isa);
}

/// Channels per slice of the slice-wise kernel `isa` runs, the unit a layer split over
/// cores divides `dim` by; 1 where the layer runs on the per-token driver (no SIMD kernel,
/// or `dim` not a multiple of the slice), which takes any channel range.
///
/// ```
/// use convmixer_edge::kernels::{dw_i8, Isa};
/// assert_eq!(dw_i8::channel_unit(Isa::Scalar, 256), 1);
/// ```
pub fn channel_unit(isa: Isa, dim: usize) -> usize {
    let unit = match isa {
        Isa::Neon | Isa::NeonDot => 16,
        Isa::Avx2 | Isa::Avx512Vnni => 8,
        Isa::Scalar => 1,
    };
    if isa.available() && dim.is_multiple_of(unit) {
        unit
    } else {
        1
    }
}

/// [`dw_i8_inplace`] on one core's channels of the layer (a view from
/// [`ChannelsMut::split`], best in units of [`channel_unit`]), with that core's `scratch`
/// ([`scratch_len`] bytes): the slice-wise kernel of `isa` where it takes the view, else
/// the reference token by token through a ring and a queue of the view's channels. The
/// parts of a split, in any order or at the same time, give the bytes of one whole run.
///
/// ```
/// use convmixer_edge::kernels::{dw_i8, parts::ChannelsMut, reference, Grid, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 32;
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = Grid { ht: 3, wt: 5, dim: n, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<i8> = (0..9 * n).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 3, zp_z: 0, zp_out: -5, table: &[] };
/// let x: Vec<i8> = (0..15 * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let mut want = vec![0i8; x.len()];
/// reference::dw_i8(&x, g, &l, Activation::Relu, &mut want);
/// for isa in [Isa::Scalar, Isa::detect()] {
///     let (mut a, mut scratch) = (x.clone(), vec![0i8; dw_i8::scratch_len(g)]);
///     for mut part in ChannelsMut::split(&mut a, n, dw_i8::channel_unit(isa, n), 3) {
///         dw_i8::dw_i8_channels(&mut part, &mut scratch, g, &l, Activation::Relu, isa);
///     }
///     assert_eq!(a, want);
/// }
/// ```
pub fn dw_i8_channels(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) {
    if slice_wise(a, scratch, g, l, act, isa) {
        return;
    }
    let c0 = a.channels().start;
    dw_inplace_by_token(a, scratch, g, |src, y, x, res, out| {
        reference::dw_token_i8(src, y, x, res, g, l, act, out, c0)
    });
}

/// The slice-wise SIMD kernel of `isa` on view `a`: whether it took it (if not, nothing
/// was touched).
fn slice_wise(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) -> bool {
    match isa {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::NeonDot => neon::dw_i8_channels_sdot(a, scratch, g, l, act),
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        Isa::Neon => neon::dw_i8_channels_smlal(a, scratch, g, l, act),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => x86::dw_i8_channels_avx2_8x8(a, scratch, g, l, act),
        _ => {
            let _ = (a, scratch, g, l, act);
            false
        }
    }
}

/// Whether view `a` fits grid `g` for a slice-wise kernel of `unit`-channel slices: the
/// same `dim`, whole slices inside it, and the whole tensor's elements.
#[allow(dead_code)] // Used by the SIMD kernels, which a target may not have.
fn view_fits(a: &ChannelsMut<'_, i8>, g: Grid, unit: usize) -> bool {
    let ch = a.channels();
    a.dim() == g.dim
        && unit > 0
        && ch.start.is_multiple_of(unit)
        && ch.end.is_multiple_of(unit)
        && ch.end <= g.dim
        && g.elements().is_some_and(|n| a.len() >= n)
}

/// A depthwise input gatherer: the original (not yet overwritten) token at `(row, col)`.
pub(crate) type Src<'s, 'x> = &'s dyn Fn(usize, usize) -> Option<&'x [i8]>;

/// The ring-and-queue in-place driver described in the module header, on the channels of
/// view `a` (the whole layer, or one core's channel slice: the ring and the queue then hold
/// only the view's channels), computing each output token with
/// `token(src, y, x, residual, out)` where `src`, `residual` and `out` hold the view's
/// channels ([`reference::dw_token_i8`], or an f16 layer's token in a mixed model).
pub(crate) fn dw_inplace_by_token<F>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    mut token: F,
) where
    F: for<'s, 'x> FnMut(Src<'s, 'x>, usize, usize, &'x [i8], &mut [i8]),
{
    let (d, r, wt) = (a.channels().len(), g.pad_top, g.wt);
    let lq = queue_len(g);
    let ring_len = r.checked_mul(wt).and_then(|n| n.checked_mul(d));
    let queue_bytes = lq.checked_mul(d);
    // d > 0 also bounds the token loops by a.len().
    let fits = d > 0
        && a.dim() == g.dim
        && a.channels().end <= g.dim
        && g.elements().is_some_and(|n| a.len() >= n)
        && ring_len
            .zip(queue_bytes)
            .and_then(|(x, y)| x.checked_add(y))
            .is_some_and(|n| scratch.len() >= n);
    if !fits {
        return;
    }
    // Below the sizes checked above no index formed here overflows or leaves its slice.
    let Some((ring, rest)) = scratch.split_at_mut_checked(r * wt * d) else {
        return;
    };
    let Some(queue) = rest.get_mut(..lq * d) else {
        return;
    };
    for y in 0..g.ht {
        for x in 0..wt {
            {
                let (a_ro, ring_ro): (&ChannelsMut<'_, i8>, &[i8]) = (a, ring);
                let src = |yy: usize, xx: usize| {
                    if yy < y {
                        // Rows above y live in the ring (only the last pad_top are asked for).
                        (r > 0)
                            .then(|| {
                                ring_ro.get(
                                    ((yy % r.max(1)) * wt + xx) * d
                                        ..((yy % r.max(1)) * wt + xx + 1) * d,
                                )
                            })
                            .flatten()
                    } else {
                        a_ro.get(yy * wt + xx)
                    }
                };
                let (Some(res), Some(out)) = (
                    a_ro.get(y * wt + x),
                    queue.get_mut((x % lq) * d..(x % lq + 1) * d),
                ) else {
                    return;
                };
                token(&src, y, x, res, out);
            }
            // Column c may be written once token c + pad_left (its last reader) is done.
            if x >= g.pad_left {
                flush(a, ring, queue, g, y, x - g.pad_left);
            }
        }
        for c in wt.saturating_sub(g.pad_left)..wt {
            flush(a, ring, queue, g, y, c);
        }
    }
}

/// Column `c` of row `y` is no longer read by row `y`: move the view's channels of its
/// original into the ring (for the rows below) and write its output from the queue.
/// (Inside the buffers that `dw_inplace_by_token` checked; every copy is of two ranges as
/// long as the view's channels.)
fn flush(a: &mut ChannelsMut<'_, i8>, ring: &mut [i8], queue: &[i8], g: Grid, y: usize, c: usize) {
    let (d, r, wt) = (a.channels().len(), g.pad_top, g.wt);
    let t = y * wt + c;
    if r > 0 {
        let slot = ((y % r) * wt + c) * d;
        if let (Some(dst), Some(src)) = (ring.get_mut(slot..slot + d), a.get(t)) {
            dst.copy_from_slice(src);
        }
    }
    let q = (c % queue_len(g)) * d;
    if let (Some(dst), Some(src)) = (a.token(t), queue.get(q..q + d)) {
        dst.copy_from_slice(src);
    }
}
