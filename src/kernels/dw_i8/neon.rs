//! AArch64 NEON int8 depthwise 'same' conv + residual, in place, slice by slice (16
//! channels at a time, each output row from a small cache), tested bit for bit against
//! [`reference::dw_i8`](crate::kernels::reference::dw_i8): [`dw_i8_inplace_sdot`] (ARMv8.2
//! `SDOT`, 4 kernel rows per instruction) and [`dw_i8_inplace_smlal`] (ARMv8.0
//! `SMULL`/`SMLAL`). Both end in the shared vector epilogue (`quant::neon`), with the
//! residual fused.
//!
//! Safety: the entry points check the grid, the layer (`Epi::new`), the activations and
//! the scratch once per call, in checked arithmetic, and return `false` without touching
//! anything where they do not fit; the `unsafe fn`s below rely on those checks, as their
//! `# Safety` sections say, and each `unsafe` block says which check bounds it.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::parts::ChannelsMut;
use crate::kernels::quant::neon::{epilogue_c16, ld1x4, Epi};
use crate::kernels::reference::QuantLayer;
use crate::kernels::Grid;
use crate::Activation;

/// Largest depthwise kernel the NEON path takes (`k ≤ 9`, so at most 81 taps); larger
/// kernels use the reference.
const DW_MAX_K: usize = 9;

/// `SDOT acc.4s, a.16b, b.16b`: each i32 lane adds the dot product of its 4 byte pairs.
macro_rules! sdot_vec {
    ($acc:expr, $a:expr, $b:expr) => {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) $acc,
            a = in(vreg) $a,
            b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// One (tap group, kx) of the slice-wise depthwise for consecutive outputs `$a…`: each
/// loads its cache column at `$cp` (advancing it by 64) and adds 4 `SDOT`s.
macro_rules! sdot_cols {
    ($wv:ident, $cp:ident; $($a:ident),+) => {
        $(
            let u = ld1x4!($cp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
            sdot_vec!($a[0], $wv.0, u.0);
            sdot_vec!($a[1], $wv.1, u.1);
            sdot_vec!($a[2], $wv.2, u.2);
            sdot_vec!($a[3], $wv.3, u.3);
        )+
    };
}

/// One (tap group, kx) of the slice-wise depthwise for several outputs: `$wv` the packed
/// weights (4 channels × 4 rows per register), `$c` the cache column of the first output;
/// output `$a` reads the cache 64 bytes × its offset further.
macro_rules! dw_sdot_taps {
    ($wv:ident, $c:ident; $($a:ident @ $off:expr),+) => {
        $(
            let u = vld1q_s8_x4($c.add($off));
            sdot_vec!($a[0], $wv.0, u.0);
            sdot_vec!($a[1], $wv.1, u.1);
            sdot_vec!($a[2], $wv.2, u.2);
            sdot_vec!($a[3], $wv.3, u.3);
        )+
    };
}

/// Depthwise 'same' conv + residual in place on `a`, with the ARMv8.2 dot product.
///
/// The taps are grouped by 4 kernel rows, so one `SDOT` (by vector) adds 4 taps of 4
/// channels: each 16-channel slice of the layer is processed on its own (depthwise channels
/// are independent), row by row. For each output row, `ST4` interleaves the 4 input rows of
/// each tap group column by column into a small cache (`[column][channel][4 rows]`, 64
/// bytes per column and group, padding = `zp_in`); the weights of the slice are packed the
/// same way once (`[group][kx][channel][4 rows]`, rows past `k` zero). An output then costs
/// per (group, kx) one 64-byte load of cached inputs and four `SDOT`s; four outputs share
/// each weight load and one vector epilogue. The outputs of a row wait in a row buffer
/// while the row's originals move to a ring of `pad_top` rows (of this slice) that the
/// next rows read.
///
/// Returns false, touching nothing, where it does not apply (no dot product, `dim` not a
/// multiple of 16, `k > 9`, short buffers); the caller then uses the per-token drivers.
/// Gives exactly the bytes of [`reference::dw_i8`](crate::kernels::reference::dw_i8)
/// (tested in the op's suite).
///
/// ```
/// use convmixer_edge::kernels::{dw_i8::{self, neon}, reference, Grid, Isa};
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
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; dw_i8::dw_slice_scratch_len(g)]);
/// let ran = neon::dw_i8_inplace_sdot(&mut a, &mut scratch, g, &l, Activation::Relu);
/// assert_eq!(ran, Isa::NeonDot.available());
/// if ran {
///     assert_eq!(a, want);
/// }
/// ```
pub fn dw_i8_inplace_sdot(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    dw_i8_channels_sdot(&mut ChannelsMut::whole(a, g.dim), scratch, g, l, act)
}

/// [`dw_i8_inplace_sdot`] on the channels of one view (a core's part of a layer split by
/// channels, in whole 16-channel slices): touches only the view's channels and `scratch`.
pub fn dw_i8_channels_sdot(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    let k = g.kernel;
    let ok = crate::kernels::Isa::NeonDot.available()
        && g.dim.is_multiple_of(16)
        && (1..=DW_MAX_K).contains(&k)
        && g.pad_top < k
        && g.pad_left < k
        && dw_fits(g, l)
        && super::view_fits(a, g, 16)
        && scratch.len() >= super::dw_slice_scratch_len(g);
    let e = Epi::new(l, act, g.dim).filter(|_| ok);
    if let Some(e) = &e {
        // SAFETY: dotprod is available; the lengths are checked above and by Epi::new, which
        // built e from l; GELU = e.gelu.
        unsafe {
            if e.gelu {
                dw_sdot_rows::<true>(a, scratch, g, l, e)
            } else {
                dw_sdot_rows::<false>(a, scratch, g, l, e)
            }
        };
    }
    e.is_some()
}

/// # Safety
/// The conditions `dw_i8_inplace_sdot` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`; the CPU implements FEAT_DotProd.
#[target_feature(enable = "dotprod")]
unsafe fn dw_sdot_rows<const GELU: bool>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let (d, k, ht, wt, pt, pl) = (g.dim, g.kernel, g.ht, g.wt, g.pad_top, g.pad_left);
    let groups = k.div_ceil(4);
    let cols = wt + k - 1;
    // SAFETY: the four buffers ring (pt·wt·16 bytes), wpack (groups·k·64), cache
    // (groups·cols·64) and rowbuf (wt·16) lie one after the other inside scratch, whose
    // length is at least their sum (dw_slice_scratch_len, checked by the caller).
    let (ring, wpack, cache, rowbuf) = unsafe {
        let ring = scratch.as_mut_ptr();
        let wpack = ring.add(pt * wt * 16);
        let cache = wpack.add(groups * k * 64);
        (ring, wpack, cache, cache.add(groups * cols * 64))
    };
    let ap = a.as_mut_ptr();
    let w = l.w.as_ptr();
    let zp = vdupq_n_s8(e.zp_in);
    let zero = vdupq_n_s8(0);
    // The cache's padding columns (left of 0 and right of wt) are zp_in in every group, row
    // and slice: write them once.
    for gi in 0..groups {
        for col in (0..pl).chain(pl + wt..cols) {
            // SAFETY: (gi·cols + col)·64 + 64 ≤ groups·cols·64.
            unsafe {
                vst1q_s8_x4(
                    cache.add((gi * cols + col) * 64),
                    int8x16x4_t(zp, zp, zp, zp),
                )
            };
        }
    }
    for c0 in a.channels().step_by(16) {
        // SAFETY: for the whole slice c0, every offset below is inside its buffer: weights
        // (ky·k + kx)·d + c0 + 16 ≤ k²·d (dw_fits); activations (t·d + c0 + 16 ≤
        // tokens·d; c0..c0 + 16 inside the view's channels, which no other core touches);
        // ring (slot·wt + x)·16 + 16 ≤ pt·wt·16; wpack (gi·k + kx)·64 + 64 ≤ groups·k·64;
        // cache (gi·cols + col)·64 + 64 ≤ groups·cols·64; rowbuf x·16 + 16 ≤ wt·16.
        unsafe {
            for gi in 0..groups {
                for kx in 0..k {
                    let row = |j: usize| {
                        let ky = 4 * gi + j;
                        if ky < k {
                            vld1q_s8(w.add((ky * k + kx) * d + c0))
                        } else {
                            zero
                        }
                    };
                    let v = int8x16x4_t(row(0), row(1), row(2), row(3));
                    vst4q_s8(wpack.add((gi * k + kx) * 64), v);
                }
            }
            for y in 0..ht {
                for gi in 0..groups {
                    // Input row j of group gi: (base, stride) or None (padding → zp_in).
                    let src = |j: usize| -> Option<(*const i8, usize)> {
                        let ky = 4 * gi + j;
                        let yy = (y + ky).wrapping_sub(pt);
                        if ky >= k || yy >= ht {
                            None
                        } else if yy < y {
                            Some((ring.add((yy % pt) * wt * 16).cast_const(), 16))
                        } else {
                            Some((ap.add(yy * wt * d + c0).cast_const(), d))
                        }
                    };
                    let rows = [src(0), src(1), src(2), src(3)];
                    // Interior columns only: the padding columns hold zp_in for good.
                    for xx in 0..wt {
                        let ld = |r: Option<(*const i8, usize)>| match r {
                            Some((b, stride)) => vld1q_s8(b.add(xx * stride)),
                            None => zp,
                        };
                        let v = int8x16x4_t(ld(rows[0]), ld(rows[1]), ld(rows[2]), ld(rows[3]));
                        vst4q_s8(cache.add((gi * cols + pl + xx) * 64), v);
                    }
                }
                let mut x = 0;
                let bias = e.bias16(c0);
                while x + 4 <= wt {
                    let (mut a0, mut a1, mut a2, mut a3) = (bias, bias, bias, bias);
                    for gi in 0..groups {
                        // Weights of (gi, kx) and the cache columns x + kx .. x + kx + 4 of
                        // the 4 outputs, by LD1 {4 regs} with post-increment: after the 4
                        // column loads the pointer is 3 columns past the next kx's first.
                        let mut wp = wpack.add(gi * k * 64);
                        let mut cp = cache.add((gi * cols + x) * 64);
                        for _ in 0..k {
                            let wv = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
                            sdot_cols!(wv, cp; a0, a1, a2, a3);
                            cp = cp.sub(3 * 64);
                        }
                    }
                    let t = y * wt + x;
                    let r: [*const i8; 4] =
                        core::array::from_fn(|m| ap.add((t + m) * d + c0).cast_const());
                    let o: [*mut i8; 4] = core::array::from_fn(|m| rowbuf.add((x + m) * 16));
                    epilogue_c16::<4, GELU>(e, c0, [a0, a1, a2, a3], Some(r), o);
                    x += 4;
                }
                while x < wt {
                    let mut a0 = bias;
                    for gi in 0..groups {
                        for kx in 0..k {
                            let wv = vld1q_s8_x4(wpack.add((gi * k + kx) * 64));
                            let c = cache.add((gi * cols + x + kx) * 64);
                            dw_sdot_taps!(wv, c; a0 @ 0);
                        }
                    }
                    let t = y * wt + x;
                    let r = [ap.add(t * d + c0).cast_const()];
                    epilogue_c16::<1, GELU>(e, c0, [a0], Some(r), [rowbuf.add(x * 16)]);
                    x += 1;
                }
                // Row y of this slice is done: its originals go to the ring (rows below
                // read them), its outputs into the activations.
                for xx in 0..wt {
                    let at = ap.add((y * wt + xx) * d + c0);
                    if pt > 0 {
                        vst1q_s8(ring.add(((y % pt) * wt + xx) * 16), vld1q_s8(at));
                    }
                    vst1q_s8(at, vld1q_s8(rowbuf.add(xx * 16)));
                }
            }
        }
    }
}

/// Depthwise 'same' conv + residual in place on `a`, ARMv8.0 (`SMULL`/`SMLAL`), slice by
/// slice like [`dw_i8_inplace_sdot`]: each 16-channel slice is processed row by row from a
/// cache of the `k` input rows the output row needs (`[slot][column][16 channels]`, rows in
/// slots `row % k`, padding columns `zp_in`; rows outside the grid read a row of `zp_in`).
/// Each output row loads one new input row into the cache, so the cache replaces the ring
/// of the per-token drivers; the outputs of a row wait in a row buffer and are written back
/// once the row is done. Two outputs share each weight load and one vector epilogue.
///
/// Returns false, touching nothing, where it does not apply (`dim` not a multiple of 16,
/// `k > 9`, short buffers); the caller then uses the per-token drivers. Gives exactly the
/// bytes of [`reference::dw_i8`](crate::kernels::reference::dw_i8) (tested in the op's
/// suite).
pub fn dw_i8_inplace_smlal(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    dw_i8_channels_smlal(&mut ChannelsMut::whole(a, g.dim), scratch, g, l, act)
}

/// [`dw_i8_inplace_smlal`] on the channels of one view (a core's part of a layer split by
/// channels, in whole 16-channel slices): touches only the view's channels and `scratch`.
pub fn dw_i8_channels_smlal(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    let k = g.kernel;
    let ok = g.dim.is_multiple_of(16)
        && (1..=DW_MAX_K).contains(&k)
        && g.pad_top < k
        && g.pad_left < k
        && dw_fits(g, l)
        && super::view_fits(a, g, 16)
        && scratch.len() >= super::dw_slice_scratch_len(g);
    let e = Epi::new(l, act, g.dim).filter(|_| ok);
    if let Some(e) = &e {
        // SAFETY: the lengths are checked above and by Epi::new, which built e from l;
        // GELU = e.gelu.
        unsafe {
            if e.gelu {
                dw_smlal_by_k::<true>(a, scratch, g, l, e)
            } else {
                dw_smlal_by_k::<false>(a, scratch, g, l, e)
            }
        }
    }
    e.is_some()
}

/// [`dw_smlal_rows`] specialised for k = 3, 5, 7, 9 (and generic otherwise).
///
/// # Safety
/// The conditions `dw_i8_inplace_smlal` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`.
unsafe fn dw_smlal_by_k<const GELU: bool>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    // SAFETY: the caller's conditions; K is g.kernel or 0.
    unsafe {
        match g.kernel {
            3 => dw_smlal_rows::<3, GELU>(a, scratch, g, l, e),
            5 => dw_smlal_rows::<5, GELU>(a, scratch, g, l, e),
            7 => dw_smlal_rows::<7, GELU>(a, scratch, g, l, e),
            9 => dw_smlal_rows::<9, GELU>(a, scratch, g, l, e),
            _ => dw_smlal_rows::<0, GELU>(a, scratch, g, l, e),
        }
    }
}

/// # Safety
/// The conditions `dw_i8_inplace_smlal` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`; `K` is 0 or `g.kernel`.
#[inline(always)]
unsafe fn dw_smlal_rows<const K: usize, const GELU: bool>(
    a: &mut ChannelsMut<'_, i8>,
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let k = if K > 0 { K } else { g.kernel };
    let (d, ht, wt, pt, pl) = (g.dim, g.ht, g.wt, g.pad_top, g.pad_left);
    let below = k - 1 - pt; // input rows below the output row
    let cols = wt + k - 1;
    // SAFETY: cache (k·cols·16 bytes), zrow (cols·16) and rowbuf (wt·16) lie one after the
    // other inside scratch: (k + 1)·cols·16 + wt·16 ≤ dw_slice_scratch_len ≤ scratch.len()
    // (checked by the caller).
    let (cache, zrow, rowbuf) = unsafe {
        let cache = scratch.as_mut_ptr();
        let zrow = cache.add(k * cols * 16);
        (cache, zrow, zrow.add(cols * 16))
    };
    let ap = a.as_mut_ptr();
    let w = l.w.as_ptr();
    // SAFETY: in the whole function, offsets stay inside their buffers: cache (slot·cols + col)·16
    // + 16 ≤ k·cols·16 (slot < k, col < cols); zrow col·16 + 16 ≤ cols·16; rowbuf x·16 + 16
    // ≤ wt·16; activations (row·wt + x)·d + c0 + 16 ≤ tokens·d (row < ht, x < wt, c0 + 16 ≤
    // d; c0..c0 + 16 inside the view's channels, which no other core touches); weights (ky·k + kx)·d + c0 + 16 ≤ k²·d (dw_fits). Cache columns read: x + kx ≤
    // cols − 1 for every output x < wt and tap kx < k (the second tap of a pair past k is
    // never loaded).
    unsafe {
        let zp = vdupq_n_s8(e.zp_in);
        let zero = vdupq_n_s8(0);
        for col in 0..cols {
            vst1q_s8(zrow.add(col * 16), zp);
            for slot in 0..k {
                if col < pl || col >= pl + wt {
                    vst1q_s8(cache.add((slot * cols + col) * 16), zp);
                }
            }
        }
        for c0 in a.channels().step_by(16) {
            let load_row = |r: usize| {
                for xx in 0..wt {
                    let v = vld1q_s8(ap.add((r * wt + xx) * d + c0));
                    vst1q_s8(cache.add(((r % k) * cols + pl + xx) * 16), v);
                }
            };
            for r in 0..below.min(ht) {
                load_row(r);
            }
            for y in 0..ht {
                if y + below < ht {
                    load_row(y + below);
                }
                // Input row of kernel row ky: a cache slot, or the zp row outside the grid.
                let mut rows = [zrow.cast_const(); DW_MAX_K];
                for (ky, r) in rows.iter_mut().enumerate().take(k) {
                    let yy = (y + ky).wrapping_sub(pt);
                    if yy < ht {
                        *r = cache.add((yy % k) * cols * 16).cast_const();
                    }
                }
                let bias = e.bias16(c0);
                let mut x = 0;
                while x < wt {
                    let two = x + 1 < wt;
                    let (mut a0, mut a1) = (bias, bias);
                    for (ky, &row) in rows.iter().enumerate().take(k) {
                        let rp = row.add(x * 16);
                        let wr = w.add(ky * k * d + c0);
                        let mut kx = 0;
                        while kx < k {
                            let pair = kx + 1 < k;
                            let w0 = vld1q_s8(wr.add(kx * d));
                            let w1 = if pair {
                                vld1q_s8(wr.add((kx + 1) * d))
                            } else {
                                zero
                            };
                            let x0 = vld1q_s8(rp.add(kx * 16));
                            let x1 = if pair || two {
                                vld1q_s8(rp.add((kx + 1) * 16))
                            } else {
                                zp
                            };
                            a0 = mac_pair(a0, w0, x0, w1, if pair { x1 } else { zp });
                            if two {
                                let x2 = if pair {
                                    vld1q_s8(rp.add((kx + 2) * 16))
                                } else {
                                    zp
                                };
                                a1 = mac_pair(a1, w0, x1, w1, x2);
                            }
                            kx += 2;
                        }
                    }
                    let t = y * wt + x;
                    if two {
                        let r = [
                            ap.add(t * d + c0).cast_const(),
                            ap.add((t + 1) * d + c0).cast_const(),
                        ];
                        let o = [rowbuf.add(x * 16), rowbuf.add((x + 1) * 16)];
                        epilogue_c16::<2, GELU>(e, c0, [a0, a1], Some(r), o);
                        x += 2;
                    } else {
                        let r = [ap.add(t * d + c0).cast_const()];
                        epilogue_c16::<1, GELU>(e, c0, [a0], Some(r), [rowbuf.add(x * 16)]);
                        x += 1;
                    }
                }
                for xx in 0..wt {
                    vst1q_s8(
                        ap.add((y * wt + xx) * d + c0),
                        vld1q_s8(rowbuf.add(xx * 16)),
                    );
                }
            }
        }
    }
}

/// `acc += w0·x0 + w1·x1` on 16 channels: `SMULL`+`SMLAL` (low and high halves) into i16,
/// exact because each lane holds two products of |w| ≤ 127 and |x| ≤ 128, then widened.
#[inline(always)]
fn mac_pair(
    acc: [int32x4_t; 4],
    w0: int8x16_t,
    x0: int8x16_t,
    w1: int8x16_t,
    x1: int8x16_t,
) -> [int32x4_t; 4] {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let lo = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(x0)),
            vget_low_s8(w1),
            vget_low_s8(x1),
        );
        let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
        widen_add(acc, lo, hi)
    }
}

#[inline(always)]
fn widen_add(acc: [int32x4_t; 4], lo: int16x8_t, hi: int16x8_t) -> [int32x4_t; 4] {
    // SAFETY: register-only NEON arithmetic (NEON is a compile-time target feature here).
    unsafe {
        [
            vaddw_s16(acc[0], vget_low_s16(lo)),
            vaddw_high_s16(acc[1], lo),
            vaddw_s16(acc[2], vget_low_s16(hi)),
            vaddw_high_s16(acc[3], hi),
        ]
    }
}

/// Whether a depthwise layer's weights are long enough for the NEON kernels (`Epi::new`
/// checks the other sections).
fn dw_fits(g: Grid, l: &QuantLayer<'_>) -> bool {
    g.kernel
        .checked_mul(g.kernel)
        .and_then(|kk| kk.checked_mul(g.dim))
        .is_some_and(|n| l.w.len() >= n)
}
