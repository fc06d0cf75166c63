//! The int8 GEMM: the pointwise 1×1 conv (`k = n = dim`), the patch embedding (a GEMM over
//! each patch) and the MLP-Mixer's linear layers, all with weights packed
//! `[o/16][i/4][o%16][i%4]` ([`gemm_index`](super::gemm_index)).
//!
//! * `reference.rs`: [`reference::gemm_i8`] and
//!   [`reference::embed_i8`], the plain scalar definitions;
//! * `neon.rs`: the AArch64 kernels `gemm_i8_neon_smlal_2x16c4` (ARMv8.0) and
//!   `gemm_i8_neon_sdot_4x16c4` (ARMv8.2 dot product);
//! * `x86.rs`: the x86_64 AVX2 kernel `gemm_i8_avx2_4x8c4` (`VPMADDWD`);
//! * `avx512.rs`: the x86_64 AVX-512 VNNI kernel `gemm_i8_avx512vnni_8x32c4` (`VPDPBUSD`);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The drivers below run a layer through the kernel of an [`Isa`], chosen once per layer
//! (`Gemm`): [`pw_i8_inplace`] (the pointwise conv in place on the one activation tensor,
//! [`PW_TILE`] tokens at a time through scratch), [`embed_i8`] (patches gathered into
//! scratch) and [`mlp_i8`] (an MLP-Mixer MLP, added into the residual stream). Each gives
//! exactly the bytes of the reference, whatever [`Isa`] computes the tokens, and checks its
//! buffers' lengths once, in checked arithmetic, doing nothing where they do not fit.

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

// The AVX-512 VNNI kernel runs only where Isa::Avx512Vnni was detected (x86::GemmI8Avx2
// checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod avx512;

#[cfg(test)]
mod tests;

use super::parts::ChannelsMut;
use super::reference::QuantLayer;
use super::res_add::{add_columns, add_rows, ResAdd};
use super::{EmbedGeom, Isa, PW_TILE};
use crate::Activation;

/// Scratch bytes [`embed_i8`] needs: [`PW_TILE`] patches of `taps` bytes (saturating).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::embed_scratch_len, EmbedGeom};
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
/// use convmixer_edge::kernels::{gemm_i8, gemm_packed_len, reference, EmbedGeom, Isa};
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
/// let mut scratch = vec![0i8; gemm_i8::embed_scratch_len(g)];
/// gemm_i8::embed_i8(&px, g, n, &l, Activation::Relu, &mut scratch, &mut fast, Isa::detect());
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
    let Some((ht, wt)) = e.grid(px.len(), dim, out.len()) else {
        return;
    };
    embed_i8_tokens(px, e, dim, l, act, scratch, out, 0..ht * wt, isa);
}

/// [`embed_i8`] for the tokens `tokens` only (one core's part of the layer), into `out`
/// (`tokens.len() · dim` bytes: those tokens' outputs); nothing is written where `tokens`
/// leaves the grid or a buffer is short.
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8, gemm_packed_len, EmbedGeom, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = EmbedGeom { in_h: 6, in_w: 4, in_c: 3, patch: 2 };
/// let w: Vec<i8> = (0..gemm_packed_len(n, g.taps())).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: -128, zp_z: 0, zp_out: 0, table: &[] };
/// let px: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 37 % 256) as u8).collect();
/// let mut scratch = vec![0i8; gemm_i8::embed_scratch_len(g)];
/// let mut whole = vec![0i8; 6 * n];
/// gemm_i8::embed_i8(&px, g, n, &l, Activation::Relu, &mut scratch, &mut whole, Isa::detect());
/// let mut part = vec![0i8; 2 * n]; // tokens 3 and 4
/// gemm_i8::embed_i8_tokens(&px, g, n, &l, Activation::Relu, &mut scratch, &mut part, 3..5, Isa::detect());
/// assert_eq!(part, whole[3 * n..5 * n]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn embed_i8_tokens(
    px: &[u8],
    e: EmbedGeom,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    scratch: &mut [i8],
    out: &mut [i8],
    tokens: core::ops::Range<usize>,
    isa: Isa,
) {
    let (p, c, taps) = (e.patch, e.in_c, e.taps());
    // Below these sizes no index formed here overflows or leaves its slice (the grid's
    // outputs are checked as if `out` held them all; it holds `tokens`, checked next).
    let Some((ht, wt)) = e.grid(px.len(), dim, usize::MAX) else {
        return;
    };
    if tokens.end > ht * wt
        || tokens.start > tokens.end
        || out.len() < tokens.len() * dim
        || PW_TILE.checked_mul(taps).is_none_or(|n| scratch.len() < n)
    {
        return;
    }
    let gemm = Gemm::new(l, taps, dim, act, isa);
    let mut t = tokens.start;
    while t < tokens.end {
        let n = PW_TILE.min(tokens.end - t);
        let o0 = t - tokens.start;
        let (Some(x), Some(o)) = (
            scratch.get_mut(..n * taps),
            out.get_mut(o0 * dim..(o0 + n) * dim),
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
/// (at least `PW_TILE · dim` bytes), with the kernels of `isa`. The AVX2 kernel takes as
/// many tokens at a time as a larger scratch holds as i16 (panels of up to 64 tokens at
/// `dim` = 768, `x86::GemmI8Avx2::pw_inplace`), so that each weight row it loads serves
/// them all: the model passes its whole int8 scratch, which the depthwise ring makes tens of
/// tokens long.
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8, gemm_packed_len, reference, Isa, PW_TILE};
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
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; PW_TILE * n]);
/// gemm_i8::pw_i8_inplace(&mut a, &mut scratch, 5, n, &l, Activation::Relu, Isa::detect());
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
    #[cfg(target_arch = "x86_64")]
    if let Gemm::Avx2(g) = &gemm {
        // Panels where the scratch holds them (else the tiles below).
        if g.pw_inplace(a, scratch, tokens) {
            return;
        }
    }
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

/// Scratch bytes [`mlp_i8`] needs for an MLP with `hidden` hidden and `n` output units.
///
/// ```
/// assert_eq!(convmixer_edge::kernels::gemm_i8::mlp_scratch_len(32, 49), 4 * (32 + 49));
/// ```
pub fn mlp_scratch_len(hidden: usize, n: usize) -> usize {
    PW_TILE.saturating_mul(hidden.saturating_add(n))
}

/// One MLP-Mixer MLP: `fc1` (GELU by table) then `fc2`, added into the residual stream
/// ([`add_residual`](super::res_add::add_residual)), [`PW_TILE`] rows of `x` (`rows × k`
/// int8, the LayerNorm output) at a time, so that only `PW_TILE` rows of the hidden layer
/// ever exist (`scratch`: [`mlp_scratch_len`] bytes). The GEMMs run on the kernels of `isa`
/// (the same ones as the ConvMixer's pointwise convs); every level gives the bytes of
/// [`reference::gemm_i8`] + [`add_residual`](super::res_add::add_residual). Nothing is
/// written where a slice does not fit.
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8, gemm_packed_len, reference::QuantLayer, res_add::ResAdd, Isa};
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
/// let mut scratch = vec![0i8; gemm_i8::mlp_scratch_len(h, n)];
/// let add = ResAdd { zp: 0, m: 1, sh: 0 };
/// gemm_i8::mlp_i8(&x, 2, k, h, n, &fc1, &fc2, add, &mut resid, false, &mut scratch, Isa::detect());
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
    if rows.checked_mul(n).is_none_or(|len| resid.len() < len) {
        return;
    }
    let (layers, shape) = ((fc1, fc2, add), (k, hidden, n));
    if transposed {
        let mut view = ChannelsMut::whole(resid, rows);
        let to = MlpRows::Channels(&mut view);
        mlp_i8_rows(x, 0..rows, shape, layers, to, scratch, isa);
    } else {
        mlp_i8_rows(
            x,
            0..rows,
            shape,
            layers,
            MlpRows::Tokens(resid),
            scratch,
            isa,
        );
    }
}

/// Where [`mlp_i8_rows`] adds its rows of the MLP's output into the residual stream.
#[derive(Debug)]
pub enum MlpRows<'r, 'a> {
    /// The rows are tokens (the channel MLP): the stream's tokens of the row range, their
    /// `n` channels each, first row first.
    Tokens(&'r mut [i16]),
    /// The rows are channels (the token MLP, whose `n` outputs are the stream's tokens):
    /// a view whose channels are the row range ([`add_columns`]).
    Channels(&'r mut ChannelsMut<'a, i16>),
}

/// [`mlp_i8`] for the rows `rows` of `x` only (`x` holds every row, `k` each), with its own
/// `scratch` ([`mlp_scratch_len`] bytes): one core's part of an MLP split by rows, added
/// into the stream through `to`; `(k, hidden, n)` the MLP's shape, `(fc1, fc2, add)` its
/// layers. The same bits as the whole MLP's rows. Nothing is written where a slice does
/// not fit (or a `Channels` view's channels are not `rows`).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::{self, MlpRows}, gemm_packed_len, reference::QuantLayer, res_add::ResAdd, Isa};
/// use convmixer_edge::le::I32Le;
/// let table: Vec<u8> = (0..256).map(|i| ((i - 128) as i16).to_le_bytes()[0])
///     .chain((0..256).map(|i| ((i - 128) as i16).to_le_bytes()[1])).collect();
/// let rq = |n: usize| -> Vec<u8> { [1 << 30, -1, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect() };
/// let (k, h, n) = (4, 8, 4);
/// let (w1, w2) = (vec![1i8; gemm_packed_len(h, k)], vec![1i8; gemm_packed_len(n, h)]);
/// let (rq1, rq2, bias) = (rq(h), rq(n), vec![0u8; 4 * h]);
/// let l = |w, rq| QuantLayer { w, bias: I32Le(&bias), requant: I32Le(rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &table };
/// let (fc1, fc2) = (l(&w1, &rq1), l(&w2, &rq2));
/// let x = [1i8; 3 * 4];
/// let mut part = [5i16; 4]; // row 2 of 3
/// let mut scratch = vec![0i8; gemm_i8::mlp_scratch_len(h, n)];
/// let add = ResAdd { zp: 0, m: 1, sh: 0 };
/// gemm_i8::mlp_i8_rows(&x, 2..3, (k, h, n), (&fc1, &fc2, add), MlpRows::Tokens(&mut part), &mut scratch, Isa::detect());
/// assert_eq!(part, [5 + 32; 4]);
/// ```
pub fn mlp_i8_rows(
    x: &[i8],
    rows: core::ops::Range<usize>,
    (k, hidden, n): (usize, usize, usize),
    (fc1, fc2, add): (&QuantLayer<'_>, &QuantLayer<'_>, ResAdd),
    to: MlpRows<'_, '_>,
    scratch: &mut [i8],
    isa: Isa,
) {
    let fits = k > 0
        && rows.start <= rows.end
        && rows.end.checked_mul(k).is_some_and(|len| x.len() >= len)
        && scratch.len() >= mlp_scratch_len(hidden, n)
        && match &to {
            MlpRows::Tokens(r) => rows.len().checked_mul(n).is_some_and(|len| r.len() >= len),
            MlpRows::Channels(v) => v.channels() == rows,
        };
    if !fits {
        return;
    }
    let (hbuf, obuf) = scratch.split_at_mut(PW_TILE * hidden);
    // Both MLP layers look their activation up in the table (GELU, or the identity).
    let g1 = Gemm::new(fc1, k, hidden, Activation::Gelu, isa);
    let g2 = Gemm::new(fc2, hidden, n, Activation::Gelu, isa);
    let mut to = to;
    let mut r = rows.start;
    while r < rows.end {
        let m = PW_TILE.min(rows.end - r);
        let (Some(xs), Some(hs), Some(os)) = (
            x.get(r * k..(r + m) * k),
            hbuf.get_mut(..m * hidden),
            obuf.get_mut(..m * n),
        ) else {
            return;
        };
        g1.run(xs, m, hs);
        g2.run(hs, m, os);
        match &mut to {
            MlpRows::Tokens(resid) => {
                add_rows(os, m, n, r - rows.start, rows.len(), add, resid, false, isa)
            }
            MlpRows::Channels(view) => add_columns(os, m, n, r, add, view),
        }
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
    Neon(neon::GemmI8<'a>),
    #[cfg(target_arch = "x86_64")]
    Avx2(x86::GemmI8Avx2<'a>),
    Reference {
        l: &'l QuantLayer<'a>,
        k: usize,
        n: usize,
        act: Activation,
    },
}

impl<'l, 'a> Gemm<'l, 'a> {
    /// The kernel of `isa` for the layer, or the reference where `isa` has none that takes
    /// it (the scalar level, or a layer the SIMD kernels' checks refuse).
    fn new(l: &'l QuantLayer<'a>, k: usize, n: usize, act: Activation, isa: Isa) -> Self {
        let simd = match isa {
            #[cfg(all(
                target_arch = "aarch64",
                target_endian = "little",
                target_feature = "neon"
            ))]
            Isa::Neon | Isa::NeonDot => {
                neon::GemmI8::new(l, k, n, act, isa == Isa::NeonDot).map(Gemm::Neon)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => {
                x86::GemmI8Avx2::new(l, k, n, act, isa == Isa::Avx512Vnni).map(Gemm::Avx2)
            }
            _ => None,
        };
        simd.unwrap_or(Gemm::Reference { l, k, n, act })
    }

    /// Whether no SIMD kernel runs the layer.
    #[cfg(test)]
    fn is_reference(&self) -> bool {
        matches!(self, Gemm::Reference { .. })
    }

    /// Whether the AVX-512 VNNI kernel runs the layer.
    #[cfg(test)]
    fn is_vnni(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if let Gemm::Avx2(g) = self {
            return g.uses_vnni();
        }
        false
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
            #[cfg(target_arch = "x86_64")]
            Gemm::Avx2(ref g) => g.run(x, tokens, out),
            Gemm::Reference { l, k, n, act } => reference::gemm_i8(x, tokens, k, n, l, act, out),
        }
    }
}
