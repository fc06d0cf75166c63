//! x86_64 AVX2 int8 depthwise 'same' conv + residual, in place, slice by slice (8 channels
//! at a time, each output row from a small cache), tested bit for bit against
//! [`reference::dw_i8`](crate::kernels::reference::dw_i8): [`dw_i8_inplace_avx2_8x8`].
//!
//! The multiply is `VPMADDWD` over pairs of horizontally adjacent taps: for 8 channels, the
//! cache holds each input row with the columns' bytes interleaved in pairs
//! (`[x(c, ch0), x(c + 1, ch0), x(c, ch1), …]`, 16 bytes per column `c`, padding columns
//! `zp_in`), and the weights of taps `kx`, `kx + 1` of a kernel row are interleaved the same
//! way (the tap past an odd `k` is zero). One `VPMOVSXBW` of a cached column and one
//! `VPMADDWD` then add two taps of 8 channels to an output's i32 sums (exact: two products
//! of `|w| ≤ 127`, `|x| ≤ 128` per lane); 8 outputs of a row share each weight pair. The
//! outputs of a row wait in a row buffer while the cache keeps the originals of the `k`
//! input rows they need (each row is cached when the first output row needing it starts,
//! before any output overwrites it), and are written back when the row is done. Where the
//! scratch allows (the large layers, whose in-place ring is large), the cache holds the
//! pairs already widened to i16 (32 bytes per column) and the inner loop loads them as
//! they are. The shared vector epilogue (`quant::x86`) adds the residual.
//!
//! Speed (`cargo run --release -p kernel-bench`, one core of a Zen 4 KVM guest, see
//! `gemm_i8::x86`): the depthwise layer of ConvMixer-768/32 (32×32 tokens, 768 channels,
//! k = 7, epilogue and residual included) takes 1.25 ms, 31 GMAC/s (88× the scalar
//! kernel's 0.35), 11% of the image's time (for 6% of its MACs).
//!
//! Safety: the entry point checks the grid, the layer (`Epi::new`), the CPU's AVX2, the
//! activations and the scratch once per call, in checked arithmetic, and returns `false`
//! without touching anything where they do not fit; the `unsafe fn`s below rely on those
//! checks, as their `# Safety` sections say, and each `unsafe` block says which check bounds
//! it.

use core::arch::x86_64::*;

use crate::kernels::parts::ChannelsMut;
use crate::kernels::quant::x86::{epilogue_c8, Epi};
use crate::kernels::reference::QuantLayer;
use crate::kernels::{Grid, Isa};
use crate::Activation;

/// Largest depthwise kernel the AVX2 path takes (`k ≤ 9`); larger kernels use the
/// reference.
const DW_MAX_K: usize = 9;

/// Output tokens per micro-tile.
const TILE: usize = 8;

/// Scratch bytes of [`dw_i8_inplace_avx2_8x8`] with cached columns of `col_bytes` bytes:
/// `k` cached input rows and a padding row of `wt + k − 1` interleaved columns, and a row
/// buffer of `wt` outputs (8 bytes each). With 16-byte columns (the bytes) it is at most
/// [`dw_slice_scratch_len`](super::dw_slice_scratch_len) (its ARMv8.0 part has the same
/// rows of 16 bytes per column and a row buffer of 16 bytes per output); 32-byte columns
/// (the pairs already widened to i16, which saves the widening in the inner loop) fit the
/// larger scratch of layers whose in-place ring dominates
/// [`scratch_len`](super::scratch_len). `None` where it overflows.
fn scratch_need(g: Grid, col_bytes: usize) -> Option<usize> {
    let cols = g.wt.checked_add(g.kernel)?.checked_sub(1)?;
    let rows = g
        .kernel
        .checked_add(1)?
        .checked_mul(cols)?
        .checked_mul(col_bytes)?;
    rows.checked_add(g.wt.checked_mul(8)?)
}

/// Depthwise 'same' conv + residual in place on `a` (`tokens · dim` int8) with AVX2, 8
/// channels × 8 outputs per micro-tile (see the module docs). Returns false, touching
/// nothing, where it does not apply (no AVX2, `dim` not a multiple of 8, `k > 9`, a padding
/// not below `k`, a layer outside the reader's bounds, short buffers); the caller then uses
/// the per-token driver. Gives exactly the bytes of
/// [`reference::dw_i8`](crate::kernels::reference::dw_i8) (tested in the op's suite).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8::{self, x86}, reference, Grid, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) + the residual.
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = Grid { ht: 3, wt: 5, dim: n, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<i8> = (0..9 * n).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 3, zp_z: 0, zp_out: -5, table: &[] };
/// let x: Vec<i8> = (0..15 * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let mut want = vec![0i8; x.len()];
/// reference::dw_i8(&x, g, &l, Activation::Relu, &mut want);
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; dw_i8::dw_slice_scratch_len(g)]);
/// let ran = x86::dw_i8_inplace_avx2_8x8(&mut a, &mut scratch, g, &l, Activation::Relu);
/// assert_eq!(ran, Isa::Avx2.available());
/// if ran {
///     assert_eq!(a, want);
/// }
/// ```
pub fn dw_i8_inplace_avx2_8x8(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    dw_i8_channels_avx2_8x8(&mut ChannelsMut::whole(a, g.dim), scratch, g, l, act)
}

/// [`dw_i8_inplace_avx2_8x8`] on the channels of one view (a core's part of a layer split
/// by channels): the same conditions, and the view's channel range in whole 8-channel
/// slices of the grid's `dim`. Touches only the view's channels (and `scratch`).
pub fn dw_i8_channels_avx2_8x8(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    let k = g.kernel;
    let ok = Isa::Avx2.available()
        && g.dim.is_multiple_of(8)
        && super::view_fits(a, g, 8)
        && (1..=DW_MAX_K).contains(&k)
        && g.pad_top < k
        && g.pad_left < k
        && k.checked_mul(k)
            .and_then(|kk| kk.checked_mul(g.dim))
            .is_some_and(|n| l.w.len() >= n)
        && scratch_need(g, 16).is_some_and(|n| scratch.len() >= n);
    let wide = scratch_need(g, 32).is_some_and(|n| scratch.len() >= n);
    let e = Epi::new(l, act, g.dim).filter(|_| ok);
    if let Some(e) = &e {
        // SAFETY: AVX2 is available; the lengths are checked above (for 32-byte columns
        // where `wide`) and by Epi::new, which built e from l; GELU = e.gelu.
        unsafe {
            match (e.gelu, wide) {
                (false, false) => dw_by_k::<false, false>(a, scratch, g, l, e),
                (false, true) => dw_by_k::<false, true>(a, scratch, g, l, e),
                (true, false) => dw_by_k::<true, false>(a, scratch, g, l, e),
                (true, true) => dw_by_k::<true, true>(a, scratch, g, l, e),
            }
        }
    }
    e.is_some()
}

/// [`dw_rows`] specialised for k = 3, 5, 7, 9 (and generic otherwise).
///
/// # Safety
/// The conditions of `dw_rows` with `K` = 0.
#[inline(always)]
unsafe fn dw_by_k<const GELU: bool, const WIDE: bool>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    // SAFETY: the caller's conditions; K is g.kernel or 0.
    unsafe {
        match g.kernel {
            3 => dw_rows::<3, GELU, WIDE>(a, scratch, g, l, e),
            5 => dw_rows::<5, GELU, WIDE>(a, scratch, g, l, e),
            7 => dw_rows::<7, GELU, WIDE>(a, scratch, g, l, e),
            9 => dw_rows::<9, GELU, WIDE>(a, scratch, g, l, e),
            _ => dw_rows::<0, GELU, WIDE>(a, scratch, g, l, e),
        }
    }
}

/// The slice-wise driver for kernel size `K` (0: `g.kernel`, any size up to 9), the cached
/// columns as interleaved bytes (16 per column) or, where `WIDE`, already widened to i16
/// (32 per column).
///
/// # Safety
/// The CPU has AVX2; the conditions `dw_i8_inplace_avx2_8x8` checks hold (with
/// `scratch_need(g, 32)` where `WIDE`); `e` was built from `l` (`Epi::new`) with
/// `GELU = e.gelu`; `K` is 0 or `g.kernel`.
#[target_feature(enable = "avx2,fma,f16c")]
// Indices: into `rows` (DW_MAX_K entries) by ky < k ≤ 9 and `wp` (DW_MAX_K · 5 entries) by
// ky·5 + p with p < (k + 1) / 2 ≤ 5.
#[allow(clippy::indexing_slicing)]
unsafe fn dw_rows<const K: usize, const GELU: bool, const WIDE: bool>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let k = if K > 0 { K } else { g.kernel };
    let pairs = k.div_ceil(2);
    let (d, ht, wt, pt, pl) = (g.dim, g.ht, g.wt, g.pad_top, g.pad_left);
    let below = k - 1 - pt; // input rows below the output row
    let cols = wt + k - 1;
    let cs = if WIDE { 32 } else { 16 }; // bytes per cached column
                                         // SAFETY: cache (k·cols·cs bytes), zrow (cols·cs) and rowbuf (wt·8) lie one after the
                                         // other inside scratch (scratch_need(g, cs), checked by the caller).
    let (cache, zrow, rowbuf) = unsafe {
        let cache = scratch.as_mut_ptr();
        let zrow = cache.add(k * cols * cs);
        (cache, zrow, zrow.add(cols * cs))
    };
    let ap = a.as_mut_ptr();
    let w = l.w.as_ptr();
    // SAFETY: in the whole function, offsets stay inside their buffers: cache (slot·cols +
    // col)·cs + cs ≤ k·cols·cs (slot < k, col < cols); zrow col·cs + cs ≤ cols·cs; rowbuf
    // x·8 + 8 ≤ wt·8; activations (row·wt + x)·d + c0 + 8 ≤ tokens·d (row < ht, x < wt,
    // c0 + 8 ≤ d), and c0..c0 + 8 inside the view's channels (its contract: no other core
    // touches them); weights (ky·k + kx)·d + c0 + 8 ≤ k²·d (kx < k; the tap k of an odd k is
    // never loaded). Cache columns read by output x < wt and pair p: x + 2p ≤ wt − 1 + k − 1
    // = cols − 1. Every intrinsic is AVX2 (the caller's).
    unsafe {
        let zp = _mm_set1_epi8(e.zp_in);
        // One cached column: 16 interleaved bytes, or the same widened to 16 i16.
        let put = |dst: *mut i8, v: __m128i| {
            if WIDE {
                _mm256_storeu_si256(dst.cast(), _mm256_cvtepi8_epi16(v));
            } else {
                _mm_storeu_si128(dst.cast(), v);
            }
        };
        for col in 0..cols {
            put(zrow.add(col * cs), zp);
        }
        for c0 in a.channels().step_by(8) {
            // Input row r of this slice into cache slot r % k: column col holds the bytes
            // of padded columns col and col + 1 interleaved (zp_in outside the row).
            let load_row = |r: usize| {
                let at = |col: usize| -> __m128i {
                    match col.checked_sub(pl) {
                        Some(xx) if xx < wt => {
                            _mm_loadl_epi64(ap.add((r * wt + xx) * d + c0).cast())
                        }
                        _ => zp,
                    }
                };
                let dst = cache.add((r % k) * cols * cs);
                let mut cur = at(0);
                for col in 0..cols {
                    let next = at(col + 1);
                    put(dst.add(col * cs), _mm_unpacklo_epi8(cur, next));
                    cur = next;
                }
            };
            // The weight pairs of this slice: taps (2p, 2p + 1) of row ky, i16, interleaved.
            let mut wp = [_mm256_setzero_si256(); DW_MAX_K * 5];
            for ky in 0..k {
                for p in 0..pairs {
                    let tap = |kx: usize| {
                        if kx < k {
                            _mm_loadl_epi64(w.add((ky * k + kx) * d + c0).cast())
                        } else {
                            _mm_setzero_si128()
                        }
                    };
                    let v = _mm_unpacklo_epi8(tap(2 * p), tap(2 * p + 1));
                    wp[ky * 5 + p] = _mm256_cvtepi8_epi16(v);
                }
            }
            for r in 0..below.min(ht) {
                load_row(r);
            }
            let bias = e.bias8(c0);
            for y in 0..ht {
                if y + below < ht {
                    load_row(y + below);
                }
                // Input row of kernel row ky: a cache slot, or the padding row.
                let mut rows = [zrow.cast_const(); DW_MAX_K];
                for (ky, row) in rows.iter_mut().enumerate().take(k) {
                    let yy = (y + ky).wrapping_sub(pt);
                    if yy < ht {
                        *row = cache.add((yy % k) * cols * cs).cast_const();
                    }
                }
                let mut x = 0;
                while x + TILE <= wt {
                    dw_tile::<TILE, K, GELU, WIDE>(e, &rows, &wp, bias, k, x, y, g, c0, ap, rowbuf);
                    x += TILE;
                }
                if x + 4 <= wt {
                    dw_tile::<4, K, GELU, WIDE>(e, &rows, &wp, bias, k, x, y, g, c0, ap, rowbuf);
                    x += 4;
                }
                if x + 2 <= wt {
                    dw_tile::<2, K, GELU, WIDE>(e, &rows, &wp, bias, k, x, y, g, c0, ap, rowbuf);
                    x += 2;
                }
                if x < wt {
                    dw_tile::<1, K, GELU, WIDE>(e, &rows, &wp, bias, k, x, y, g, c0, ap, rowbuf);
                }
                // Row y of this slice is done: its outputs go back into the activations.
                for xx in 0..wt {
                    let v = rowbuf.add(xx * 8).cast::<i64>().read_unaligned();
                    ap.add((y * wt + xx) * d + c0)
                        .cast::<i64>()
                        .write_unaligned(v);
                }
            }
        }
    }
}

/// `T` consecutive outputs `x..x + T` of row `y`, 8 channels from `c0`: the taps of every
/// kernel row `rows[ky]` two at a time (`wp[ky·5 + p]`; the cached pair widened by
/// `VPMOVSXBW`, or loaded as i16 where `WIDE`), then the epilogue with the residual into
/// the row buffer.
///
/// # Safety
/// As for `dw_rows` (whose bounds argument covers every access), with `x + T ≤ wt`, each
/// `rows[ky]` (ky < k) a cache row or the padding row of `cols` columns, `wp` the slice's
/// weight pairs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
// Indices: j < T over the const length of `acc`; ky < k ≤ 9 into `rows`; ky·5 + p < 45
// into `wp`.
#[allow(clippy::indexing_slicing)]
unsafe fn dw_tile<const T: usize, const K: usize, const GELU: bool, const WIDE: bool>(
    e: &Epi,
    rows: &[*const i8; DW_MAX_K],
    wp: &[__m256i; DW_MAX_K * 5],
    bias: __m256i,
    k: usize,
    x: usize,
    y: usize,
    g: Grid,
    c0: usize,
    ap: *mut i8,
    rowbuf: *mut i8,
) {
    let k = if K > 0 { K } else { k };
    let pairs = k.div_ceil(2);
    let (d, wt) = (g.dim, g.wt);
    let cs = if WIDE { 32 } else { 16 };
    // SAFETY: the caller's bounds (see dw_rows): cache columns x + j + 2p ≤ cols − 1,
    // residuals and outputs of tokens y·wt + x + j < tokens, row buffer (x + j)·8 + 8 ≤
    // wt·8; AVX2.
    unsafe {
        let mut acc = [bias; T];
        for (ky, &row) in rows.iter().enumerate().take(k) {
            let rp = row.add(x * cs);
            for p in 0..pairs {
                let wv = wp[ky * 5 + p];
                for (j, aj) in acc.iter_mut().enumerate() {
                    let at = rp.add((j + 2 * p) * cs);
                    let xv = if WIDE {
                        _mm256_loadu_si256(at.cast())
                    } else {
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(at.cast()))
                    };
                    *aj = _mm256_add_epi32(*aj, _mm256_madd_epi16(xv, wv));
                }
            }
        }
        let t = y * wt + x;
        let res: [*const i8; T] = core::array::from_fn(|j| ap.add((t + j) * d + c0).cast_const());
        let out: [*mut i8; T] = core::array::from_fn(|j| rowbuf.add((x + j) * 8));
        epilogue_c8::<T, GELU>(e, c0, acc, Some(res), out);
    }
}

#[cfg(test)]
mod tests {
    //! The AVX2 kernel's two column layouts (bytes, and i16 where the scratch allows), each
    //! forced by the scratch length, against the reference (the op's suite runs the kernel
    //! with the scratch the drivers get).
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::{act, Layer, Rng};

    #[test]
    fn both_column_layouts_match_the_reference() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut r = Rng(0x0c01_5a7e_8888_1111);
        for case in 0..72 {
            let kernel = 1 + case % 9;
            let dim = 8 * r.range(1, 4) as usize;
            let (ht, wt) = (r.range(1, 9) as usize, r.range(1, 19) as usize);
            let g = Grid {
                ht,
                wt,
                dim,
                kernel,
                pad_top: (kernel - 1) / 2,
                pad_left: kernel / 2,
            };
            let gelu = case % 2 == 0;
            let l = Layer::random(&mut r, kernel * kernel * dim, dim, true, gelu);
            let x: Vec<i8> = (0..g.tokens() * dim)
                .map(|_| r.range(-128, 127) as i8)
                .collect();
            let mut want = vec![0i8; x.len()];
            reference::dw_i8(&x, g, &l.view(), act(gelu), &mut want);
            for bytes in [16, 32] {
                let len = scratch_need(g, bytes).unwrap_or(0);
                let (mut a, mut scratch) = (x.clone(), vec![0i8; len]);
                assert!(dw_i8_inplace_avx2_8x8(
                    &mut a,
                    &mut scratch,
                    g,
                    &l.view(),
                    act(gelu)
                ));
                assert_eq!(a, want, "{g:?} {bytes}-byte columns");
            }
        }
    }
}
