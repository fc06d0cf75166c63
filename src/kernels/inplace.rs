//! Memory-planned int8 layer drivers: the arena holds ONE activation tensor plus a little
//! scratch, and every mixer layer overwrites it in place.
//!
//! * Depthwise 'same' conv + residual: output row `y` needs input rows
//!   `y − pad_top ..= y + k − 1 − pad_top`. Rows above `y` have already been overwritten,
//!   so a ring keeps the originals of the last `pad_top` rows. Within row `y`, output token
//!   `x` still needs the original tokens `x − pad_left ..`, so outputs wait in a queue and
//!   are written back (after the original moves to the ring) as soon as no later output of
//!   the row reads that position: the queue holds `pad_left + 1` tokens. (With NEON the
//!   slice-wise drivers of `neon` do the same per 16-channel slice, with less scratch.)
//! * Pointwise 1×1 conv: every output token depends only on the same input token, so
//!   [`PW_TILE`] tokens at a time are copied to scratch and their outputs written back.
//!
//! Scratch: `pad_top · wt · dim + max(pad_left + 1, PW_TILE) · dim` bytes ([`scratch_len`]).
//! Each driver gives exactly the bytes the out-of-place [`super::reference`] kernels give,
//! whatever [`Isa`] computes the tokens (tested below). Each checks its buffers' lengths
//! once, in checked arithmetic, and does nothing where they do not fit.
#![forbid(unsafe_code)]

use super::reference::{self, QuantLayer};
use super::{EmbedGeom, Grid, Isa};
use crate::Activation;

/// Tokens per pointwise step (the tallest micro-tile, SDOT's 4×16).
pub const PW_TILE: usize = 4;

/// Scratch bytes the drivers need for grid `g` (saturating at `usize::MAX`, which no
/// buffer can hold, for a grid whose sizes overflow).
///
/// ```
/// use convmixer_edge::kernels::{inplace::scratch_len, Grid};
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
/// of `pad_top` rows of one 16-channel slice, the slice's packed weights and input cache (64
/// bytes per tap group and kernel column / input column) and a row buffer; for
/// `neon::dw_i8_inplace_smlal` `k` cached input rows, a padding row and a row buffer
/// (saturating at `usize::MAX`, so that the NEON drivers' length check against it holds
/// exactly when the real sum fits).
///
/// ```
/// use convmixer_edge::kernels::{inplace::dw_slice_scratch_len, Grid};
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

/// Depthwise conv + residual in place on `a` (`tokens · dim` int8). With NEON (and `dim` a
/// multiple of 16, `k ≤ 9`) the slice-wise drivers of `neon` run it; otherwise the reference
/// computes it token by token through the ring and the queue described above. `scratch`
/// must hold [`scratch_len`] bytes; shorter buffers make it fall back to nothing (the caller
/// sizes the arena from the same formula).
///
/// ```
/// use convmixer_edge::kernels::{inplace, reference, Grid, Isa};
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
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; inplace::scratch_len(g)]);
/// inplace::dw_i8_inplace(&mut a, &mut scratch, g, &l, Activation::Relu, Isa::detect());
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
    let _ = isa; // only the NEON levels have slice-wise drivers
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    match isa {
        Isa::NeonDot if super::neon::dw_i8_inplace_sdot(a, scratch, g, l, act) => return,
        Isa::Neon if super::neon::dw_i8_inplace_smlal(a, scratch, g, l, act) => return,
        _ => {}
    }
    dw_inplace_by_token(a, scratch, g, |src, y, x, res, out| {
        reference::dw_token_i8(src, y, x, res, g, l, act, out)
    });
}

/// A depthwise input gatherer: the original (not yet overwritten) token at `(row, col)`.
pub(crate) type Src<'s, 'x> = &'s dyn Fn(usize, usize) -> Option<&'x [i8]>;

/// The ring-and-queue in-place driver described in the module header, computing each
/// output token with `token(src, y, x, residual, out)` ([`reference::dw_token_i8`], or an
/// f16 layer's token in a mixed model).
pub(crate) fn dw_inplace_by_token<F>(a: &mut [i8], scratch: &mut [i8], g: Grid, mut token: F)
where
    F: for<'s, 'x> FnMut(Src<'s, 'x>, usize, usize, &'x [i8], &mut [i8]),
{
    let (d, r, wt) = (g.dim, g.pad_top, g.wt);
    let lq = queue_len(g);
    let ring_len = r.checked_mul(wt).and_then(|n| n.checked_mul(d));
    let queue_bytes = lq.checked_mul(d);
    // d > 0 also bounds the token loops by a.len().
    let fits = d > 0
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
                let (a_ro, ring_ro): (&[i8], &[i8]) = (a, ring);
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
                        a_ro.get((yy * wt + xx) * d..(yy * wt + xx + 1) * d)
                    }
                };
                let t = y * wt + x;
                let (Some(res), Some(out)) = (
                    a_ro.get(t * d..(t + 1) * d),
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

/// Column `c` of row `y` is no longer read by row `y`: move its original into the ring
/// (for the rows below) and write its output from the queue. (Inside the buffers that
/// `dw_inplace_by_token` checked; every copy is of two `d`-long ranges.)
fn flush(a: &mut [i8], ring: &mut [i8], queue: &[i8], g: Grid, y: usize, c: usize) {
    let (d, r, wt) = (g.dim, g.pad_top, g.wt);
    let t = y * wt + c;
    let tok = t * d..(t + 1) * d;
    if r > 0 {
        let slot = ((y % r) * wt + c) * d;
        if let (Some(dst), Some(src)) = (ring.get_mut(slot..slot + d), a.get(tok.clone())) {
            dst.copy_from_slice(src);
        }
    }
    let q = (c % queue_len(g)) * d;
    if let (Some(dst), Some(src)) = (a.get_mut(tok), queue.get(q..q + d)) {
        dst.copy_from_slice(src);
    }
}

/// Scratch bytes [`embed_i8`] needs: [`PW_TILE`] patches of `taps` bytes (saturating).
///
/// ```
/// use convmixer_edge::kernels::{inplace::embed_scratch_len, EmbedGeom};
/// assert_eq!(embed_scratch_len(EmbedGeom { in_h: 28, in_w: 28, in_c: 1, patch: 2 }), 4 * 4);
/// ```
pub fn embed_scratch_len(e: EmbedGeom) -> usize {
    PW_TILE.saturating_mul(e.taps())
}

/// The patch embedding into `out` (`tokens · dim` int8) as a GEMM with the kernels of
/// `isa`: [`PW_TILE`] patches at a time are gathered into `scratch` as int8 `pixel − 128`
/// (the layer's input zero point is −128, see `docs/blob-format.md`) and multiplied by the
/// packed weights. Gives exactly the bytes of [`reference::embed_i8`]. `scratch` must hold
/// [`embed_scratch_len`] bytes and `px` the whole image; otherwise nothing is written (the
/// model checks both).
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, inplace, reference, EmbedGeom, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) (+ the residual for depthwise layers).
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let rq_no_res: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = EmbedGeom { in_h: 6, in_w: 4, in_c: 3, patch: 2 };
/// let w: Vec<i8> = (0..gemm_packed_len(n, g.taps())).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq_no_res), zp_in: -128, zp_z: 0, zp_out: 0, table: &[] };
/// let px: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
/// let (mut fast, mut slow) = (vec![0i8; 6 * n], vec![0i8; 6 * n]);
/// let mut scratch = vec![0i8; inplace::embed_scratch_len(g)];
/// inplace::embed_i8(&px, g, n, &l, Activation::Relu, &mut scratch, &mut fast, Isa::detect());
/// reference::embed_i8(&px, g, n, &l, Activation::Relu, &mut slow);
/// assert_eq!(fast, slow);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn embed_i8(
    px: &[u8],
    e: EmbedGeom,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    scratch: &mut [i8],
    out: &mut [i8],
    isa: Isa,
) {
    let (p, c, taps) = (e.patch, e.in_c, e.taps());
    // Below these sizes no index formed here overflows or leaves its slice.
    let Some((ht, wt)) = reference::embed_grid(e, px.len(), dim, out.len()) else {
        return;
    };
    if PW_TILE.checked_mul(taps).is_none_or(|n| scratch.len() < n) {
        return;
    }
    let tokens = ht * wt;
    let gemm = Gemm::new(l, taps, dim, act, isa);
    let mut t = 0;
    while t < tokens {
        let n = PW_TILE.min(tokens - t);
        let (Some(x), Some(o)) = (
            scratch.get_mut(..n * taps),
            out.get_mut(t * dim..(t + n) * dim),
        ) else {
            return;
        };
        // taps = p·p·c: where it is 0 there is nothing to gather (and no chunk size 0).
        if taps > 0 {
            for (i, patch) in x.chunks_exact_mut(taps).enumerate() {
                let (ty, tx) = ((t + i) / wt, (t + i) % wt);
                for (ky, dst) in patch.chunks_exact_mut(p * c).enumerate() {
                    let row = ((ty * p + ky) * e.in_w + tx * p) * c;
                    for (d, s) in dst
                        .iter_mut()
                        .zip(px.get(row..row + p * c).unwrap_or_default())
                    {
                        *d = (*s ^ 0x80) as i8; // pixel − 128
                    }
                }
            }
        }
        gemm.run(x, n, o);
        t += n;
    }
}

/// Pointwise conv in place on `a`, [`PW_TILE`] tokens at a time through `scratch`
/// (at least `PW_TILE · dim` bytes), with the kernels of `isa`.
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, inplace, reference, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) (+ the residual for depthwise layers).
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let rq_no_res: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let w: Vec<i8> = (0..gemm_packed_len(n, n)).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq_no_res), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let x: Vec<i8> = (0..5 * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let mut want = vec![0i8; x.len()];
/// reference::gemm_i8(&x, 5, n, n, &l, Activation::Relu, &mut want);
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; inplace::PW_TILE * n]);
/// inplace::pw_i8_inplace(&mut a, &mut scratch, 5, n, &l, Activation::Relu, Isa::detect());
/// assert_eq!(a, want);
/// ```
pub fn pw_i8_inplace(
    a: &mut [i8],
    scratch: &mut [i8],
    tokens: usize,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) {
    // dim > 0 also bounds the token loop by a.len() (a zero-width layer has nothing to do).
    if dim == 0
        || tokens.checked_mul(dim).is_none_or(|n| a.len() < n)
        || PW_TILE.checked_mul(dim).is_none_or(|n| scratch.len() < n)
    {
        return;
    }
    let gemm = Gemm::new(l, dim, dim, act, isa);
    let mut t = 0;
    while t < tokens {
        let n = PW_TILE.min(tokens - t);
        // Inside both (checked above); equal lengths, so the copy cannot fail.
        let (Some(x), Some(at)) = (
            scratch.get_mut(..n * dim),
            a.get_mut(t * dim..(t + n) * dim),
        ) else {
            return;
        };
        x.copy_from_slice(at);
        gemm.run(x, n, at);
        t += n;
    }
}

/// How an int8 GEMM output is added into the MLP-Mixer's int16 residual stream (a
/// RES_ADD section plus the GEMM's output zero point): [`reference::res_add_i16`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResAdd {
    /// Zero point of the int8 GEMM output.
    pub zp: i32,
    /// Multiplier (`0 ..= 2^22`).
    pub m: i32,
    /// Rounding right shift (`0 ..= 31`).
    pub sh: i32,
}

/// Adds `rows × n` int8 values `q` (row-major) into the residual stream `resid`
/// (`tokens · dim` i16, token-major): element `(r, j)` goes to `resid[r·n + j]`, or, where
/// `transposed` (the token MLP: rows are channels, `j` tokens), to `resid[j·rows + r]`.
///
/// ```
/// use convmixer_edge::kernels::inplace::{add_residual, ResAdd};
/// let mut x = [0i16; 4];
/// add_residual(&[1, 2, 3, 4], 2, 2, ResAdd { zp: 0, m: 1, sh: 0 }, &mut x, true);
/// assert_eq!(x, [1, 3, 2, 4]);
/// ```
pub fn add_residual(
    q: &[i8],
    rows: usize,
    n: usize,
    add: ResAdd,
    resid: &mut [i16],
    transposed: bool,
) {
    if n == 0
        || rows
            .checked_mul(n)
            .is_none_or(|len| q.len() < len || resid.len() < len)
    {
        return;
    }
    add_rows(q, rows, n, 0, rows, add, resid, transposed);
}

/// Adds the `m × n` int8 tile `q` (rows `r .. r + m` of a `rows × n` output) into the
/// residual stream as [`add_residual`] places it: [`reference::res_add_i16`] per element.
#[allow(clippy::too_many_arguments)]
#[inline]
fn add_rows(
    q: &[i8],
    m: usize,
    n: usize,
    r: usize,
    rows: usize,
    add: ResAdd,
    resid: &mut [i16],
    transposed: bool,
) {
    let one = |x: &mut i16, v: i8| *x = reference::res_add_i16(*x, v, add.zp, add.m, add.sh);
    if transposed {
        // Element (r + i, j) goes to resid[j·rows + r + i]: m contiguous values per j.
        for j in 0..n {
            let Some(dst) = resid.get_mut(j * rows + r..j * rows + r + m) else {
                return;
            };
            for (i, x) in dst.iter_mut().enumerate() {
                one(x, q.get(i * n + j).copied().unwrap_or(0));
            }
        }
    } else {
        let Some(dst) = resid.get_mut(r * n..(r + m) * n) else {
            return;
        };
        for (x, &v) in dst.iter_mut().zip(q) {
            one(x, v);
        }
    }
}

/// The MLP-Mixer's fixed-point LayerNorm of the residual stream ([`reference::layer_norm_i16`];
/// `neon::layer_norm_token_i16_neon` per token where `isa` has NEON): the same bits.
///
/// ```
/// use convmixer_edge::kernels::{inplace, reference::LayerNormI16, Isa};
/// let mut s = vec![0u8; 16 + 24];
/// s[8..12].copy_from_slice(&16i32.to_le_bytes());
/// for c in 0..2 { s[16 + 4 * c..20 + 4 * c].copy_from_slice(&1i32.to_le_bytes()); }
/// let p = LayerNormI16::from_section(&s, 2);
/// let mut out = [0i8; 4];
/// inplace::layer_norm_i16(&[100, 300, 5, -5], 2, 2, &p, &mut out, false, Isa::detect());
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
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if isa != Isa::Scalar {
        return reference::layer_norm_rows(
            x,
            tokens,
            dim,
            p,
            out,
            transposed,
            super::neon::layer_norm_token_i16_neon,
        );
    }
    let _ = isa;
    reference::layer_norm_i16(x, tokens, dim, p, out, transposed);
}

/// Scratch bytes [`mlp_i8`] needs for an MLP with `hidden` hidden and `n` output units.
///
/// ```
/// assert_eq!(convmixer_edge::kernels::inplace::mlp_scratch_len(32, 49), 4 * (32 + 49));
/// ```
pub fn mlp_scratch_len(hidden: usize, n: usize) -> usize {
    PW_TILE.saturating_mul(hidden.saturating_add(n))
}

/// One MLP-Mixer MLP: `fc1` (GELU by table) then `fc2`, added into the residual stream
/// ([`add_residual`]), [`PW_TILE`] rows of `x` (`rows × k` int8, the LayerNorm output) at a
/// time, so that only `PW_TILE` rows of the hidden layer ever exist (`scratch`:
/// [`mlp_scratch_len`] bytes). The GEMMs run on the kernels of `isa` (the same ones as the
/// ConvMixer's pointwise convs); every level gives the bytes of
/// [`reference::gemm_i8`] + [`add_residual`]. Nothing is written where a slice does not fit.
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, inplace, reference::QuantLayer, Isa};
/// use convmixer_edge::le::I32Le;
/// // Identity tables: TABLE[i] = i − 128, so z passes through.
/// let table: Vec<u8> = (0..256).map(|i| ((i - 128) as i16).to_le_bytes()[0])
///     .chain((0..256).map(|i| ((i - 128) as i16).to_le_bytes()[1])).collect();
/// let rq = |n: usize| -> Vec<u8> { [1 << 30, -1, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect() };
/// let (k, h, n) = (4, 8, 4);
/// let (w1, w2) = (vec![1i8; gemm_packed_len(h, k)], vec![1i8; gemm_packed_len(n, h)]);
/// let (rq1, rq2, bias) = (rq(h), rq(n), vec![0u8; 4 * h]);
/// let l = |w, rq| QuantLayer { w, bias: I32Le(&bias), requant: I32Le(rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &table };
/// let (fc1, fc2) = (l(&w1, &rq1), l(&w2, &rq2));
/// let x = [1i8; 2 * 4];
/// let mut resid = [5i16; 2 * 4];
/// let mut scratch = vec![0i8; inplace::mlp_scratch_len(h, n)];
/// let add = inplace::ResAdd { zp: 0, m: 1, sh: 0 };
/// inplace::mlp_i8(&x, 2, k, h, n, &fc1, &fc2, add, &mut resid, false, &mut scratch, Isa::detect());
/// assert_eq!(resid, [5 + 32; 8]); // fc1: 4 · 1 = 4 per hidden unit; fc2: 8 · 4
/// ```
#[allow(clippy::too_many_arguments)]
pub fn mlp_i8(
    x: &[i8],
    rows: usize,
    k: usize,
    hidden: usize,
    n: usize,
    fc1: &QuantLayer<'_>,
    fc2: &QuantLayer<'_>,
    add: ResAdd,
    resid: &mut [i16],
    transposed: bool,
    scratch: &mut [i8],
    isa: Isa,
) {
    let fits = k > 0
        && rows.checked_mul(k).is_some_and(|len| x.len() >= len)
        && rows.checked_mul(n).is_some_and(|len| resid.len() >= len)
        && scratch.len() >= mlp_scratch_len(hidden, n);
    if !fits {
        return;
    }
    let (hbuf, obuf) = scratch.split_at_mut(PW_TILE * hidden);
    // Both MLP layers look their activation up in the table (GELU, or the identity).
    let g1 = Gemm::new(fc1, k, hidden, Activation::Gelu, isa);
    let g2 = Gemm::new(fc2, hidden, n, Activation::Gelu, isa);
    let mut r = 0;
    while r < rows {
        let m = PW_TILE.min(rows - r);
        let (Some(xs), Some(hs), Some(os)) = (
            x.get(r * k..(r + m) * k),
            hbuf.get_mut(..m * hidden),
            obuf.get_mut(..m * n),
        ) else {
            return;
        };
        g1.run(xs, m, hs);
        g2.run(hs, m, os);
        add_rows(os, m, n, r, rows, add, resid, transposed);
        r += m;
    }
}

/// The GEMM kernel of one layer, chosen (and, for NEON, prepared) once for all the token
/// chunks a driver runs through it.
enum Gemm<'l, 'a> {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    Neon(super::neon::GemmI8<'a>),
    Reference {
        l: &'l QuantLayer<'a>,
        k: usize,
        n: usize,
        act: Activation,
    },
}

impl<'l, 'a> Gemm<'l, 'a> {
    fn new(l: &'l QuantLayer<'a>, k: usize, n: usize, act: Activation, isa: Isa) -> Self {
        #[cfg(all(
            target_arch = "aarch64",
            target_endian = "little",
            target_feature = "neon"
        ))]
        if isa != Isa::Scalar {
            if let Some(g) = super::neon::GemmI8::new(l, k, n, act, isa == Isa::NeonDot) {
                return Gemm::Neon(g);
            }
        }
        let _ = isa;
        Gemm::Reference { l, k, n, act }
    }

    /// `out = ` the layer applied to `tokens` rows of `x` ([`reference::gemm_i8`]'s bytes).
    fn run(&self, x: &[i8], tokens: usize, out: &mut [i8]) {
        match *self {
            #[cfg(all(
                target_arch = "aarch64",
                target_endian = "little",
                target_feature = "neon"
            ))]
            Gemm::Neon(ref g) => g.run(x, tokens, out),
            Gemm::Reference { l, k, n, act } => reference::gemm_i8(x, tokens, k, n, l, act, out),
        }
    }
}

/// int8 global average pool + head ([`reference::head_i8`]; `neon::head_i8_neon` when
/// `isa` is a NEON level): the same bits either way.
#[allow(clippy::too_many_arguments)]
pub fn head_i8(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    w: &[i8],
    scale: crate::le::F32Le<'_>,
    bias: crate::le::F32Le<'_>,
    mean: &mut [i32],
    logits: &mut [f32],
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if isa != Isa::Scalar {
        return super::neon::head_i8_neon(
            x, tokens, dim, zp_in, frac_bits, w, scale, bias, mean, logits,
        );
    }
    let _ = isa;
    reference::head_i8(
        x, tokens, dim, zp_in, frac_bits, w, scale, bias, mean, logits,
    );
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::kernels::{awkward, gemm_index, gemm_packed_len};
    use crate::le::I32Le;

    fn rng(state: &mut u64, lo: i64, hi: i64) -> i64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        lo + (*state % (hi - lo + 1) as u64) as i64
    }

    fn layer_bytes(s: &mut u64, dim: usize, depthwise: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let le = |v: Vec<i32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bias = le((0..dim).map(|_| rng(s, -40_000, 40_000) as i32).collect());
        // Half the layers shift no channel left (the NEON kernels skip the SQSHLs there).
        let no_left = rng(s, 0, 1) == 0;
        let recs: Vec<[i32; 6]> = (0..dim)
            .map(|_| {
                let sh_pre = rng(s, -2, 10) as i32;
                [
                    rng(s, 1 << 30, (1 << 31) - 1) as i32,
                    if no_left { sh_pre.max(0) } else { sh_pre },
                    rng(s, -(1 << 14), 1 << 14) as i32,
                    rng(s, -(1 << 20), 1 << 20) as i32,
                    rng(s, 0, 18) as i32,
                    if depthwise {
                        rng(s, -(1 << 12), 1 << 12) as i32
                    } else {
                        0
                    },
                ]
            })
            .collect();
        let rq = le((0..6)
            .flat_map(|k| recs.iter().map(move |v| v[k]))
            .collect());
        let table: Vec<u8> = (0..256)
            .flat_map(|_| (rng(s, -32768, 32767) as i16).to_le_bytes())
            .collect();
        (bias, rq, table)
    }

    fn isas() -> Vec<Isa> {
        [Isa::Scalar, Isa::Neon, Isa::NeonDot]
            .into_iter()
            .filter(|i| i.available())
            .collect()
    }

    #[test]
    fn inplace_depthwise_equals_the_reference() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for case in 0..150 {
            let kernel = 1 + case % 9;
            let dim = [1, 3, 16, 17, 32, 40][case % 6];
            let (ht, wt) = (rng(&mut s, 1, 9) as usize, rng(&mut s, 1, 9) as usize);
            let g = Grid {
                ht,
                wt,
                dim,
                kernel,
                pad_top: (kernel - 1) / 2,
                pad_left: (kernel - 1) / 2,
            };
            let w: Vec<i8> = (0..kernel * kernel * dim)
                .map(|_| rng(&mut s, -127, 127) as i8)
                .collect();
            let (bias, rq, table) = layer_bytes(&mut s, dim, true);
            let gelu = case % 2 == 0;
            let act = if gelu {
                Activation::Gelu
            } else {
                Activation::Relu
            };
            let l = QuantLayer {
                w: &w,
                bias: I32Le(&bias),
                requant: I32Le(&rq),
                zp_in: rng(&mut s, -128, 127) as i32,
                zp_z: rng(&mut s, -128, 127) as i32,
                zp_out: rng(&mut s, -128, 127) as i32,
                table: if gelu { &table } else { &[] },
            };
            let x: Vec<i8> = (0..g.tokens() * dim)
                .map(|_| rng(&mut s, -128, 127) as i8)
                .collect();
            let mut want = vec![0i8; x.len()];
            reference::dw_i8(&x, g, &l, act, &mut want);
            for isa in isas() {
                let mut a = x.clone();
                let mut scratch = vec![0i8; scratch_len(g)];
                dw_i8_inplace(&mut a, &mut scratch, g, &l, act, isa);
                assert_eq!(a, want, "{isa:?} {g:?}");
            }
        }
    }

    #[test]
    fn embedding_driver_equals_the_reference() {
        let mut s = 0x5151_7e57_0bad_f00du64;
        for case in 0..80 {
            let dim = [1, 5, 16, 32, 40][case % 5];
            let patch = rng(&mut s, 1, 7) as usize;
            let in_c = rng(&mut s, 1, 4) as usize;
            let side =
                |s: &mut u64| patch * rng(s, 1, 5) as usize + rng(s, 0, patch as i64 - 1) as usize;
            let (in_h, in_w) = (side(&mut s), side(&mut s));
            let e = EmbedGeom {
                in_h,
                in_w,
                in_c,
                patch,
            };
            let taps = e.taps();
            let mut w = vec![0i8; gemm_packed_len(dim, taps)];
            for o in 0..dim {
                for i in 0..taps {
                    w[gemm_index(o, i, taps)] = rng(&mut s, -127, 127) as i8;
                }
            }
            let (bias, rq, table) = layer_bytes(&mut s, dim, false);
            let gelu = case % 2 == 1;
            let act = if gelu {
                Activation::Gelu
            } else {
                Activation::Relu
            };
            let l = QuantLayer {
                w: &w,
                bias: I32Le(&bias),
                requant: I32Le(&rq),
                zp_in: -128,
                zp_z: rng(&mut s, -128, 127) as i32,
                zp_out: rng(&mut s, -128, 127) as i32,
                table: if gelu { &table } else { &[] },
            };
            let px: Vec<u8> = (0..in_h * in_w * in_c)
                .map(|_| rng(&mut s, 0, 255) as u8)
                .collect();
            let n = (in_h / patch) * (in_w / patch) * dim;
            let mut want = vec![0i8; n];
            reference::embed_i8(&px, e, dim, &l, act, &mut want);
            for isa in isas() {
                let mut got = vec![0i8; n];
                let mut scratch = vec![0i8; embed_scratch_len(e)];
                embed_i8(&px, e, dim, &l, act, &mut scratch, &mut got, isa);
                assert_eq!(got, want, "{isa:?} {e:?} dim {dim}");
            }
        }
    }

    #[test]
    fn inplace_pointwise_equals_the_reference() {
        let mut s = 0x0bad_cafe_f00d_1234u64;
        for case in 0..80 {
            let dim = [1, 4, 13, 16, 31, 48][case % 6];
            let tokens = rng(&mut s, 1, 13) as usize;
            let mut w = vec![0i8; gemm_packed_len(dim, dim)];
            for o in 0..dim {
                for i in 0..dim {
                    w[gemm_index(o, i, dim)] = rng(&mut s, -127, 127) as i8;
                }
            }
            let (bias, rq, table) = layer_bytes(&mut s, dim, false);
            let l = QuantLayer {
                w: &w,
                bias: I32Le(&bias),
                requant: I32Le(&rq),
                zp_in: 0,
                zp_z: rng(&mut s, -128, 127) as i32,
                zp_out: rng(&mut s, -128, 127) as i32,
                table: &table,
            };
            let x: Vec<i8> = (0..tokens * dim)
                .map(|_| rng(&mut s, -128, 127) as i8)
                .collect();
            let mut want = vec![0i8; x.len()];
            reference::gemm_i8(&x, tokens, dim, dim, &l, Activation::Gelu, &mut want);
            for isa in isas() {
                let mut a = x.clone();
                let mut scratch = vec![0i8; PW_TILE * dim];
                pw_i8_inplace(&mut a, &mut scratch, tokens, dim, &l, Activation::Gelu, isa);
                assert_eq!(a, want, "{isa:?} dim {dim} tokens {tokens}");
            }
        }
    }

    /// No driver (and no reference kernel below one) panics or overflows, whatever the
    /// shapes and parameters: short or empty buffers, zero and huge sizes, paddings past the
    /// kernel, extreme zero points and requantisation fields (run in debug builds too, where
    /// an overflow would panic).
    #[test]
    fn drivers_never_panic_on_any_shape() {
        use crate::kernels::reference::{epilogue_i8, Requant};
        let extreme = [i32::MIN, -1, 0, 1, 31, 64, i32::MAX];
        let rq: Vec<u8> = (0..6 * 16)
            .flat_map(|i| extreme[i % extreme.len()].to_le_bytes())
            .collect();
        let bias: Vec<u8> = (0..16).flat_map(|i| extreme[i % 7].to_le_bytes()).collect();
        let w = vec![-128i8; 64];
        let table = [0xffu8; 512];
        let layers = [
            QuantLayer {
                w: &w,
                bias: I32Le(&bias),
                requant: I32Le(&rq),
                zp_in: i32::MIN,
                zp_z: i32::MAX,
                zp_out: i32::MIN,
                table: &table,
            },
            QuantLayer {
                w: &[],
                bias: I32Le(&[]),
                requant: I32Le(&[]),
                zp_in: 0,
                zp_z: 0,
                zp_out: 0,
                table: &[],
            },
        ];
        let huge = awkward::HUGE;
        let grids = awkward::grids();
        let embeds = awkward::embeds();
        for isa in isas() {
            for l in &layers {
                for act in [Activation::Relu, Activation::Gelu] {
                    for g in grids {
                        for (n, m) in [(0, 0), (8, 8), (96, 64), (96, 4096)] {
                            let (mut a, mut scratch) = (vec![5i8; n], vec![0i8; m]);
                            dw_i8_inplace(&mut a, &mut scratch, g, l, act, isa);
                            let tokens = [0, 1, 6, huge];
                            for t in tokens {
                                pw_i8_inplace(&mut a, &mut scratch, t, g.dim, l, act, isa);
                                let mut o = vec![0i8; n];
                                reference::gemm_i8(&a, t, g.dim, g.dim, l, act, &mut o);
                                let (mut mean, mut logits) = (vec![0i32; 16], vec![0f32; 3]);
                                let s = crate::le::F32Le(&bias);
                                for (zp, frac) in [(0, 0), (i32::MIN, 100), (127, u32::MAX)] {
                                    head_i8(
                                        &a,
                                        t,
                                        g.dim,
                                        zp,
                                        frac,
                                        &w,
                                        s,
                                        s,
                                        &mut mean,
                                        &mut logits,
                                        isa,
                                    );
                                }
                            }
                            let mut o = vec![0i8; n];
                            reference::dw_i8(&a, g, l, act, &mut o);
                        }
                    }
                    for e in embeds {
                        for (n, m) in [(0, 0), (16, 64), (64, 4096)] {
                            let px = vec![200u8; n];
                            let (mut out, mut scratch) = (vec![0i8; m], vec![0i8; m]);
                            embed_i8(&px, e, 16, l, act, &mut scratch, &mut out, isa);
                            reference::embed_i8(&px, e, 16, l, act, &mut out);
                        }
                    }
                }
            }
        }
        for &m_pre in &extreme {
            for &sh in &extreme {
                let r = Requant {
                    m_pre,
                    sh_pre: sh,
                    m_post: m_pre,
                    b_post: sh,
                    sh_post: sh,
                    m_res: m_pre,
                };
                for act in [Activation::Relu, Activation::Gelu] {
                    let _ = epilogue_i8(m_pre, sh, &r, &layers[0], act);
                    let _ = epilogue_i8(sh, m_pre, &r, &layers[1], act);
                }
            }
        }
    }
}
