//! x86_64 AVX2 float depthwise conv + residual, bit-exact with [`reference::dw_f`] in f32
//! arithmetic (`F32Arith`; f32 weights or f16 widened by `VCVTPH2PS`; `F16Arith` runs the
//! reference), `dim % 8 == 0`, kernels up to 9, rows up to `CACHE / (8·k)` tokens, 8
//! channels per `ymm`.
//!
//! The layer runs in slices of 16 channels (the last of 8 where `dim % 16 == 8`; all of 8
//! where a 16-channel slice's rows do not fit the ring). Per slice the weights are widened
//! to f32 once into a stack buffer, and the `k` input rows an output row needs are kept in
//! a stack ring ([`CACHE`] f32) of contiguous tokens of the slice's channels, each input
//! row copied in once per slice and the next one prefetched while a row computes: at `dim`
//! = 768 the tensor's tokens are 3 KiB apart, so the same channels of a kernel window's
//! tokens fall into 4 of L1's 64 sets and evict each other, where the ring's rows are
//! contiguous and stay in L1. Each output row then runs in tiles from its first token on
//! (the last one shorter where the tile does not divide the row):
//!
//! * `dw_avx2_f32_8x8` (k = 3, 5, 7): 8 tokens × 8 channels, 8 accumulators (the 8 chains
//!   the two FMA pipes' 4-cycle latency needs); per kernel row the `k` weights stay in
//!   registers (8 + 7 + 1 `ymm` at k = 7) and each of the `8 + k − 1` input columns is
//!   loaded once and multiplied into the up to `k` outputs that need it (output `j` takes
//!   tap `kx` from column `j + kx`, so as the columns advance each output's taps still come
//!   in `kx` order): `8 + k − 1` loads per `8·k` `VFMADD231PS`. The columns are spelled
//!   out one by one (`column`): as a loop, LLVM leaves the border tiles' version rolled,
//!   with the accumulators in memory;
//! * `dw_avx2_f32_6x16` (other k): 6 tokens × 16 channels, 12 accumulators, per tap 2
//!   weight loads and 12 `VFMADD231PS` with the inputs as memory operands.
//!
//! Tiles whose tokens are all interior (every kernel column inside the row) run without
//! checks; the others (at the left and right borders, whole tiles too: fewer chains would
//! leave the FMA pipes waiting) skip the input columns outside the row, which skips exactly
//! the padding taps, as the reference does (a zero-padded input would not do: `−0 + 0·w` is
//! `+0`, and `0·inf` NaN). Kernel rows outside the grid are never visited. So each output
//! adds its taps in `(ky, kx)` order, one rounding each, from the bias, then the
//! reference's epilogue and residual add.
//!
//! [`reference::dw_f`]: crate::kernels::reference::dw_f
//!
//! Speed (`cargo run --release -p kernel-bench`, one core of a Zen 4 KVM guest at 2.8
//! GHz, see `pw_f::x86`): the depthwise layer of ConvMixer-768/32 (32×32 tokens, 768
//! channels, k = 7, ReLU, residual included) takes 1.25 ms, 31 GMAC/s (counting the
//! padding taps), with f32 or f16 weights (the reference: 0.3 and 0.2 GMAC/s); with tiles
//! of 6 tokens that stopped at the borders it took 1.44 ms. About a sixth of it is the
//! copying into the ring (the tensor's lines come from L3).
//!
//! The depthwise kernels' contract (what [`dw`] and [`Params::new`] check): `x` and `out`
//! point at the grid's `ht·wt·dim` f32 (readable; writable in the channel range `ch`,
//! multiples of 8, the only channels written), `dim` is a multiple of 8 and
//! the channel count the `Params` were built for, their weights hold `kernel²·dim`
//! elements (f16 where `HALF`), `kernel ≤ 9`, and `pad_top`, `pad_left < kernel`. Every
//! offset the kernels form is then inside a buffer: an input row `ty + ky − pad_top` is
//! formed only for kernel rows inside the grid ([`taps`]), an input column `tx + j + kx −
//! pad_left` is read only inside the row (interior tiles: all of them; border tiles check),
//! weights `(ky·k + kx)·dim + c < k²·dim`, outputs and residuals `t·dim + c` with `t <
//! ht·wt`, channels `c0 + 8 ≤ dim`; the ring and the weight buffer hold `k·wt` tokens and
//! `k²` taps of a slice (`k·wt·8 ≤ CACHE`).

use core::arch::x86_64::*;

use crate::kernels::float::x86::{finish8, load_w8, Params};
use crate::kernels::parts::ChannelsMut;
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// f32 elements of the stack ring of input rows (32 KiB): a 16-channel slice's `k` rows fit
/// where `kernel · wt · 16 ≤ CACHE` (wt ≤ 73 for k = 7).
const CACHE: usize = 8192;

/// Largest kernel the AVX2 path takes (a slice's `k² · 16` weights live on the stack);
/// larger kernels run the reference.
const MAX_K: usize = 9;

/// Output tokens per tile of [`dw_avx2_f32_8x8`] (8 accumulators, the `k` ≤ 7 weights of a
/// kernel row and the input column: 16 `ymm`).
const TC_8X8: usize = 8;

/// Output tokens per tile of [`dw_avx2_f32_6x16`] (12 accumulators, 2 weights).
const TC_6X16: usize = 6;

/// Depthwise conv + residual with the AVX2 kernels; `false`, touching nothing, where they
/// do not take it (`F16Arith`, [`Params::new`], `dim` not a multiple of 8, a kernel over 9,
/// rows too long for the ring (`kernel · wt · 8 > CACHE`), a padding not below the kernel
/// size, or `x` or `out` shorter than the grid).
pub(crate) fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut ChannelsMut<'_, M::Act>,
    isa: Isa,
) -> bool {
    // The sealed FloatArith pairs !HALF with Act = f32: identity casts.
    if M::HALF || core::mem::size_of::<M::Act>() != 4 {
        return false;
    }
    let Ok(x) = bytemuck::try_cast_slice::<M::Act, f32>(x) else {
        return false;
    };
    let ch = out.channels();
    if !(g.elements().is_some_and(|n| x.len() >= n && out.len() >= n)
        && out.dim() == g.dim
        && ch.start.is_multiple_of(8)
        && ch.end.is_multiple_of(8)
        && g.dim.is_multiple_of(8)
        && g.kernel <= MAX_K
        && g.kernel * g.wt.min(CACHE) * 8 <= CACHE
        && g.pad_top < g.kernel
        && g.pad_left < g.kernel)
    {
        return false;
    }
    let w_elems = g
        .kernel
        .checked_mul(g.kernel)
        .and_then(|t| t.checked_mul(g.dim));
    let Some(p) = Params::new::<W>(isa, g.dim, l, w_elems) else {
        return false;
    };
    let (x, o, ch) = (
        x.as_ptr(),
        out.as_mut_ptr().cast::<f32>(),
        (ch.start, ch.end),
    );
    // SAFETY: x and out (the view's tensor, of which the kernel writes only the view's
    // channels: parts.rs) hold the grid's ht·wt·dim f32, dim % 8 == 0, the view's channels
    // are multiples of 8, kernel ≤ 9, k·wt·8 ≤ CACHE and both paddings are below the
    // kernel size (checked above); Params::new checked the CPU's features, dim > 0, k·k·dim
    // weight elements of W (read as HALF = W::HALF) and dim channels of every vector: the
    // depthwise contract.
    unsafe {
        if W::HALF {
            dw_avx2_f32::<true>(x, o, g, &p, act, ch)
        } else {
            dw_avx2_f32::<false>(x, o, g, &p, act, ch)
        }
    }
    true
}

/// The valid tap range `[lo, hi)` of a 'same' depthwise window along one axis: kernel
/// offsets `i` with `0 ≤ pos + i − pad < len` (for `pos < len`, `pad < k`); never empty.
#[inline(always)]
fn taps(pos: usize, pad: usize, k: usize, len: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(pos);
    let hi = (len + pad - pos).min(k);
    (lo, hi)
}

/// Whether the `T` tokens from column `tx` on are interior: every kernel column of each is
/// inside the row (`tx ≥ pad_left`, `tx + T − 1 + k − 1 − pad_left < wt`).
#[inline(always)]
fn interior<const T: usize>(g: &Grid, tx: usize) -> bool {
    tx >= g.pad_left && tx + T + g.kernel <= g.wt + g.pad_left + 1
}

/// One run of `n` tokens from `(ty, tx)` with [`dw_avx2_f32_8x8`] (kernel size `K` = 3, 5
/// or 7; `n` ≤ [`TC_8X8`]): unchecked where `n` is a whole tile of interior tokens, else
/// the tile of `T = n` that skips the input columns outside the row.
///
/// # Safety
/// As [`dw_avx2_f32_8x8`] with `T = n`, `CHECK` as chosen here.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_8x8<const C: usize, const K: usize>(
    x: *const f32,
    o: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    at: (usize, usize),
    ky: (usize, usize),
    c0: usize,
    ring: *const f32,
    wb: *const f32,
    n: usize,
) {
    macro_rules! t {
        ($t:literal, $check:literal) => {
            dw_avx2_f32_8x8::<$t, C, K, $check>(x, o, g, p, act, at, ky, c0, ring, wb)
        };
    }
    // SAFETY: the caller's, with T = n, and the tokens interior where CHECK is false.
    unsafe {
        match n {
            8 if interior::<8>(&g, at.1) => t!(8, false),
            8 => t!(8, true),
            7 => t!(7, true),
            6 => t!(6, true),
            5 => t!(5, true),
            4 => t!(4, true),
            3 => t!(3, true),
            2 => t!(2, true),
            _ => t!(1, true),
        }
    }
}

/// One run of `n` tokens from `(ty, tx)` with [`dw_avx2_f32_6x16`] (any kernel size; `n` ≤
/// [`TC_6X16`]), as [`run_8x8`].
///
/// # Safety
/// As [`dw_avx2_f32_6x16`] with `T = n`, `CHECK` as chosen here.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn run_6x16<const C: usize>(
    x: *const f32,
    o: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    at: (usize, usize),
    ky: (usize, usize),
    c0: usize,
    ring: *const f32,
    wb: *const f32,
    n: usize,
) {
    macro_rules! t {
        ($t:literal, $check:literal) => {
            dw_avx2_f32_6x16::<$t, C, $check>(x, o, g, p, act, at, ky, c0, ring, wb)
        };
    }
    // SAFETY: the caller's, with T = n, and the tokens interior where CHECK is false.
    unsafe {
        match n {
            6 if interior::<6>(&g, at.1) => t!(6, false),
            6 => t!(6, true),
            5 => t!(5, true),
            4 => t!(4, true),
            3 => t!(3, true),
            2 => t!(2, true),
            _ => t!(1, true),
        }
    }
}

/// Depthwise 'same' conv + residual in f32 arithmetic: `out = fma(scale, act(acc), shift)
/// + x`, slice by slice (module docs).
///
/// # Safety
/// The depthwise contract (module docs); `p` holds (so the CPU has AVX2, FMA and F16C).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dw_avx2_f32<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    ch: (usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe { dw_slices::<HALF>(x, out, g, p, act, ch, CACHE) }
}

/// [`dw_avx2_f32`] with a ring of `cache` f32 ([`CACHE`]; the tests force 8-channel slices
/// with less): slices of 16 channels where their `k` rows fit it, else of 8.
///
/// # Safety
/// As [`dw_avx2_f32`], and `kernel · wt · 8 ≤ cache ≤ CACHE`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_slices<const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    (c_lo, c_hi): (usize, usize),
    cache: usize,
) {
    let mut ring = [0f32; CACHE];
    let mut wb = [0f32; MAX_K * MAX_K * 16];
    let (ring, wb) = (ring.as_mut_ptr(), wb.as_mut_ptr());
    // k·wt·8 ≤ cache (the caller's): no overflow below twice that.
    let wide = g.kernel * g.wt * 16 <= cache;
    let mut c0 = c_lo;
    // SAFETY: slices c0 + 16 ≤ c_hi (wide), then c0 + 8 ≤ c_hi (c_lo, c_hi multiples of 8,
    // c_hi ≤ dim); the ring holds k·wt·16 (wide) or k·wt·8 ≤ cache ≤ CACHE f32, the weight
    // buffer k²·16 ≤ MAX_K²·16 (k ≤ 9); the rest is the caller's.
    unsafe {
        while wide && c0 + 16 <= c_hi {
            dw_slice::<2, HALF>(x, out, g, p, act, c0, ring, wb);
            c0 += 16;
        }
        while c0 < c_hi {
            dw_slice::<1, HALF>(x, out, g, p, act, c0, ring, wb);
            c0 += 8;
        }
    }
}

/// Channels `c0..c0 + 8·C` of the whole layer: `wb` receives the slice's `k²` taps × `8·C`
/// weights as f32; `ring` the ring of `k` input rows (`wt` tokens × `8·C` channels each;
/// input row `iy` in slot `iy % k`), filled as the output rows advance.
///
/// # Safety
/// The depthwise contract (module docs); `p` holds; `c0 + 8·C ≤ dim`; `ring` points at
/// `k·wt·8·C` and `wb` at `k²·8·C` writable f32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_slice<const C: usize, const HALF: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    c0: usize,
    ring: *mut f32,
    wb: *mut f32,
) {
    let (k, d, wt) = (g.kernel, g.dim, g.wt);
    let w = 8 * C;
    // SAFETY: weights tap·dim + c0 + 8·C ≤ k²·dim; wb + tap·w + w ≤ k²·w; the features
    // are the caller's.
    unsafe {
        for tap in 0..k * k {
            for r in 0..C {
                let v = load_w8::<HALF>(p.w(), tap * d + c0 + 8 * r);
                _mm256_storeu_ps(wb.add(tap * w + 8 * r), v);
            }
        }
    }
    let mut next = 0;
    for ty in 0..g.ht {
        let ky = taps(ty, g.pad_top, k, g.ht);
        // Input rows up to the last this output row needs (ty + ky.1 − 1 − pad_top < ht:
        // taps), each into slot iy % k, whose row iy − k no output row from ty on needs.
        let last = ty + ky.1 - 1 - g.pad_top;
        while next <= last {
            // SAFETY: input row next ≤ last < ht, tokens ix < wt, channels c0 + 8·C ≤ dim;
            // slot next % k < k of the ring, wt·w f32 each.
            unsafe {
                let from = x.add(next * wt * d + c0);
                let to = ring.add((next % k) * wt * w);
                for ix in 0..wt {
                    for r in 0..C {
                        let v = _mm256_loadu_ps(from.add(ix * d + 8 * r));
                        _mm256_storeu_ps(to.add(ix * w + 8 * r), v);
                    }
                }
            }
            next += 1;
        }
        // The next input row (if any), on its way to the cache while this row computes: its
        // tokens are dim/8C ymm apart, which the hardware prefetchers do not follow.
        if next < g.ht {
            for ix in 0..wt {
                let at = x.wrapping_add((next * wt + ix) * d + c0);
                // SAFETY: a prefetch is a hint (it neither faults nor changes memory), here
                // of token ix < wt of row next < ht, channels c0 and c0 + w − 1.
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(at.cast());
                    _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(w - 1).cast());
                }
            }
        }
        // Runs of a whole tile from the row's start (the last one shorter where the tile
        // does not divide wt); the tiles at the borders skip the columns outside the row.
        let tc = if matches!(k, 3 | 5 | 7) {
            TC_8X8
        } else {
            TC_6X16
        };
        let mut tx = 0;
        while tx < wt {
            let (at, n) = ((ty, tx), (wt - tx).min(tc));
            // SAFETY: the caller's contract; ty < ht with its kernel rows ky, whose input
            // rows ty + ky − pad_top are in the ring (≤ last < next, and > next − 1 − k as
            // ky ≥ 0: last − (k − 1) ≤ ty − pad_top); tokens tx..tx + n ≤ wt, n ≥ 1 (tx <
            // wt), the run functions check interior tokens before running unchecked.
            unsafe {
                let (o, r) = (out, ring.cast_const());
                match k {
                    3 => run_8x8::<C, 3>(x, o, g, p, act, at, ky, c0, r, wb, n),
                    5 => run_8x8::<C, 5>(x, o, g, p, act, at, ky, c0, r, wb, n),
                    7 => run_8x8::<C, 7>(x, o, g, p, act, at, ky, c0, r, wb, n),
                    _ => run_6x16::<C>(x, o, g, p, act, at, ky, c0, r, wb, n),
                }
            }
            tx += n;
        }
    }
}

/// The epilogue of `T` tokens from `(ty, tx)`, channels `c`..`c + 8`: the reference's
/// `fma(scale, act(unscale·acc), shift)`, plus the residual, stored.
///
/// # Safety
/// The depthwise contract (module docs); `p` holds; `ty < ht`, `tx + T ≤ wt`, `c + 8 ≤
/// dim`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_tokens<const T: usize>(
    x: *const f32,
    out: *mut f32,
    g: &Grid,
    p: &Params,
    act: Activation,
    (ty, tx): (usize, usize),
    c: usize,
    acc: [__m256; T],
) {
    for (j, a) in acc.into_iter().enumerate() {
        let t = (ty * g.wt + tx + j) * g.dim + c;
        // SAFETY: token ty·wt + tx + j < ht·wt, channels c + 8 ≤ dim of x and out; the
        // features are the caller's.
        unsafe {
            let y = _mm256_add_ps(finish8(p, c, act, a), _mm256_loadu_ps(x.add(t)));
            _mm256_storeu_ps(out.add(t), y);
        }
    }
}

/// Column 0 of a tile's window in kernel row `ky` (input row `ty + ky − pad_top`, in slot
/// `% k` of the ring; column `tx − pad_left`, before the row at the left border), channel
/// offset `8r`: a pointer the tiles offset by whole tokens, and read only inside the row.
/// `K`: the kernel size where a constant (a cheaper remainder), else 0.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window<const K: usize>(
    ring: *const f32,
    g: &Grid,
    w: usize,
    ty: usize,
    ky: usize,
    tx: usize,
    r: usize,
) -> *const f32 {
    let iy = ty + ky - g.pad_top;
    let slot = if K > 0 { iy % K } else { iy % g.kernel };
    ring.wrapping_add(slot * g.wt * w + 8 * r + tx * w)
        .wrapping_sub(g.pad_left * w)
}

/// Column `COL` of a [`dw_avx2_f32_8x8`] tile's window in one kernel row (from `row`,
/// tokens `w` f32 apart): loaded once (nothing where `COL ≥ T + K − 1`, or, `CHECK`, outside
/// the row's columns `clo..chi`: padding, whose taps are skipped) and multiplied into the
/// outputs `j = COL − kx` that take it as tap `kx`.
///
/// # Safety
/// `row + COL·w` is 8 readable f32 where `COL < T + K − 1` and, if `CHECK`, `clo ≤ COL <
/// chi`; the CPU has AVX2 and FMA.
#[inline(always)]
// Indices: kx < K over `wv` (const length K), j = COL − kx < T (kx ≤ COL < T + kx) over
// `acc` (const length T). (Indexed, not iterated: LLVM then keeps `wv` in registers.)
#[allow(clippy::indexing_slicing, clippy::needless_range_loop)]
unsafe fn column<const COL: usize, const T: usize, const K: usize, const CHECK: bool>(
    acc: &mut [__m256; T],
    wv: &[__m256; K],
    row: *const f32,
    w: usize,
    (clo, chi): (usize, usize),
) {
    if COL >= T + K - 1 || (CHECK && (COL < clo || COL >= chi)) {
        return;
    }
    // SAFETY: the caller's.
    unsafe {
        let xv = _mm256_loadu_ps(row.wrapping_add(COL * w));
        for kx in 0..K {
            if kx <= COL && COL < T + kx {
                let j = COL - kx;
                acc[j] = _mm256_fmadd_ps(wv[kx], xv, acc[j]);
            }
        }
    }
}

/// `dw_avx2_f32_8x8`: `T` (≤ 8) output tokens from `(ty, tx)` of the slice `c0..c0 + 8·C`,
/// for a kernel of size `K`, 8 channels at a time (module docs): `T` accumulators, the `K`
/// weights of a kernel row in registers, each input column of the row loaded once.
/// `CHECK`: a border tile, whose input columns outside the row are skipped (the padding).
///
/// # Safety
/// As [`dw_slice`] (whose ring and weights these are); `K == kernel`; `ty < ht` with its
/// kernel rows `ky`, whose input rows the ring holds; `tx + T ≤ wt`, and where `CHECK` is
/// false the tokens are interior ([`interior`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_avx2_f32_8x8<const T: usize, const C: usize, const K: usize, const CHECK: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    (ty, tx): (usize, usize),
    (ky0, ky1): (usize, usize),
    c0: usize,
    ring: *const f32,
    wb: *const f32,
) {
    // The columns spelled out below: 0..=14.
    const { assert!(T + K - 1 <= 15) };
    let w = 8 * C;
    for r in 0..C {
        let c = c0 + 8 * r;
        // SAFETY: the ring's input rows of kernel rows ky0..ky1, columns tx + col − pad_left
        // read only inside 0..wt (interior tiles: all T + K − 1; CHECK: tested), channel
        // offset 8r < w; weights (ky·K + kx)·w + 8r + 8 ≤ K²·w; the features are the
        // caller's.
        unsafe {
            let mut acc = [p.bias8(c); T];
            // The tile's columns inside the row (CHECK; else all of them).
            let clo = g.pad_left.saturating_sub(tx);
            let chi = (g.wt + g.pad_left).saturating_sub(tx);
            for ky in ky0..ky1 {
                let row = window::<K>(ring, &g, w, ty, ky, tx, r);
                let wr = wb.add(ky * K * w + 8 * r);
                let wv: [__m256; K] = core::array::from_fn(|kx| _mm256_loadu_ps(wr.add(kx * w)));
                // Each column spelled out (a loop LLVM would not always unroll, and then
                // keeps the accumulators in memory).
                macro_rules! cols {
                    ($($col:literal)*) => {$(
                        column::<$col, T, K, CHECK>(&mut acc, &wv, row, w, (clo, chi));
                    )*};
                }
                cols!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
            }
            finish_tokens::<T>(x, out, &g, p, act, (ty, tx), c, acc);
        }
    }
}

/// `dw_avx2_f32_6x16`: `T` (≤ 6) output tokens from `(ty, tx)` of the slice `c0..c0 + 8·C`
/// for any kernel size: `T·C` accumulators; per tap `C` weight loads and `T·C`
/// `VFMADD231PS` with the cached inputs as memory operands, each output's taps in `(ky,
/// kx)` order. `CHECK`: a border tile, whose taps are added only where their input column
/// is inside the row.
///
/// # Safety
/// As [`dw_slice`] (whose ring and weights these are); `ty < ht` with its kernel rows `ky`,
/// whose input rows the ring holds; `tx + T ≤ wt`, and where `CHECK` is false the tokens
/// are interior ([`interior`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// Indices: j < T and r < C are loop counters over the const lengths of `acc` (T × C) and
// `wv` (C).
#[allow(clippy::indexing_slicing)]
unsafe fn dw_avx2_f32_6x16<const T: usize, const C: usize, const CHECK: bool>(
    x: *const f32,
    out: *mut f32,
    g: Grid,
    p: &Params,
    act: Activation,
    (ty, tx): (usize, usize),
    (ky0, ky1): (usize, usize),
    c0: usize,
    ring: *const f32,
    wb: *const f32,
) {
    let (k, wt) = (g.kernel, g.wt);
    let w = 8 * C;
    // SAFETY: the ring's input rows of kernel rows ky0..ky1, columns tx + j + kx − pad_left
    // in 0..wt (interior tokens: all; CHECK: only jlo ≤ j < jhi), channels c0 + 8·C;
    // weights (ky·k + kx)·w + w ≤ k²·w; the features are the caller's.
    unsafe {
        let b: [__m256; C] = core::array::from_fn(|r| p.bias8(c0 + 8 * r));
        let mut acc = [b; T];
        for ky in ky0..ky1 {
            let row = window::<0>(ring, &g, w, ty, ky, tx, 0);
            for kx in 0..k {
                let wv: [__m256; C] =
                    core::array::from_fn(|r| _mm256_loadu_ps(wb.add((ky * k + kx) * w + 8 * r)));
                // Tokens j whose column tx + j + kx − pad_left is in 0..wt.
                let (jlo, jhi) = if CHECK {
                    let at = tx + kx;
                    (
                        g.pad_left.saturating_sub(at),
                        (wt + g.pad_left).saturating_sub(at).min(T),
                    )
                } else {
                    (0, T)
                };
                for (j, a) in acc.iter_mut().enumerate() {
                    if CHECK && (j < jlo || j >= jhi) {
                        continue;
                    }
                    let xp = row.wrapping_add((j + kx) * w);
                    for r in 0..C {
                        a[r] = _mm256_fmadd_ps(wv[r], _mm256_loadu_ps(xp.add(8 * r)), a[r]);
                    }
                }
            }
        }
        for r in 0..C {
            let v: [__m256; T] = acc.map(|a| a[r]);
            finish_tokens::<T>(x, out, &g, p, act, (ty, tx), c0 + 8 * r, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::float::tests::{layers, params, rng, same_f32, unif, ACTS};
    use crate::kernels::reference::{self, F32Arith};
    use std::vec;
    use std::vec::Vec;

    /// Both slice widths (16 channels, then 8; and 8 only, which a ring too small for 16
    /// forces) against the reference on every row length 1..=24 for kernels 1..=9 (each
    /// kernel's interior and border tiles meet at every offset), any padding below the
    /// kernel, 24 channels, f32 and f16 weights; and the rows too long for the ring left to
    /// the reference.
    #[test]
    fn both_slice_widths_match_the_reference_on_every_row_length() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut s = 0x7f4a_7c15_9e37_79b9u64;
        for kernel in 1..=MAX_K {
            for wt in 1..=24 {
                let pad_left = if wt % 3 == 0 {
                    (rng(&mut s) % kernel as u64) as usize
                } else {
                    (kernel - 1) / 2
                };
                let g = Grid {
                    ht: 1 + wt % 4,
                    wt,
                    dim: 24,
                    kernel,
                    pad_top: (kernel - 1) / 2,
                    pad_left,
                };
                let act = ACTS[wt % 3];
                let prm = params(&mut s, kernel * kernel * g.dim, g.dim, 0.4);
                let (l32, l16) = layers(&prm);
                let n = g.ht * wt * g.dim;
                let x: Vec<f32> = (0..n).map(|_| unif(&mut s, -3.0, 3.0)).collect();
                let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
                for cache in [CACHE, kernel * wt * 8] {
                    reference::dw_f::<_, F32Arith>(&x, g, &l32, act, &mut a);
                    let p = Params::new(Isa::Avx2, g.dim, &l32, Some(kernel * kernel * g.dim));
                    let p = p.unwrap();
                    // SAFETY: x and b hold the grid, dim % 8 == 0, the paddings are below the
                    // kernel ≤ 9, k·wt·8 ≤ cache ≤ CACHE, p holds k²·dim f32 weights: the
                    // depthwise contract.
                    unsafe {
                        dw_slices::<false>(
                            x.as_ptr(),
                            b.as_mut_ptr(),
                            g,
                            &p,
                            act,
                            (0, g.dim),
                            cache,
                        );
                    }
                    assert!(same_f32(&a, &b), "f32 w32 cache {cache} {g:?}");
                    reference::dw_f::<_, F32Arith>(&x, g, &l16, act, &mut a);
                    let p = Params::new(Isa::Avx2, g.dim, &l16, Some(kernel * kernel * g.dim));
                    let p = p.unwrap();
                    // SAFETY: as above, with k²·dim f16 weights.
                    unsafe {
                        dw_slices::<true>(
                            x.as_ptr(),
                            b.as_mut_ptr(),
                            g,
                            &p,
                            act,
                            (0, g.dim),
                            cache,
                        );
                    }
                    assert!(same_f32(&a, &b), "f32 w16 cache {cache} {g:?}");
                }
            }
        }
    }

    /// A row too long for the ring (`k · wt · 8 > CACHE`): the kernel declines, the driver
    /// runs the reference.
    #[test]
    fn rows_too_long_for_the_ring_run_the_reference() {
        let g = Grid {
            ht: 2,
            wt: CACHE / 24 + 1,
            dim: 8,
            kernel: 3,
            pad_top: 1,
            pad_left: 1,
        };
        let mut s = 0x1234_5678u64;
        let prm = params(&mut s, 9 * 8, 8, 0.4);
        let (l32, _) = layers(&prm);
        let n = g.ht * g.wt * g.dim;
        let x: Vec<f32> = (0..n).map(|_| unif(&mut s, -3.0, 3.0)).collect();
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        assert!(!dw::<_, F32Arith>(
            &x,
            g,
            &l32,
            Activation::Gelu,
            &mut ChannelsMut::whole(&mut b, g.dim),
            Isa::Avx2
        ));
        reference::dw_f::<_, F32Arith>(&x, g, &l32, Activation::Gelu, &mut a);
        crate::kernels::dw_f::dw::<_, F32Arith>(&x, g, &l32, Activation::Gelu, &mut b, Isa::Avx2);
        assert!(same_f32(&a, &b));
    }
}
