//! Memory-planned int8 layer drivers: the arena holds ONE activation tensor plus a little
//! scratch, and every mixer layer overwrites it in place.
//!
//! * Depthwise 'same' conv + residual: output row `y` needs input rows
//!   `y − pad_top ..= y + k − 1 − pad_top`. Rows above `y` have already been overwritten,
//!   so a ring keeps the originals of the last `pad_top` rows. Within row `y`, output token
//!   `x` still needs the original tokens `x − pad_left ..`, so outputs wait in a queue and
//!   are written back (after the original moves to the ring) as soon as no later output of
//!   the row reads that position. Tokens are computed in pairs (`x`, `x + 1`: the SIMD
//!   kernels share one epilogue), so the queue holds `pad_left + 2` tokens: the pair plus
//!   the `pad_left` outputs that wait for it.
//! * Pointwise 1×1 conv: every output token depends only on the same input token, so
//!   [`PW_TILE`] tokens at a time are copied to scratch and their outputs written back.
//!
//! Scratch: `pad_top · wt · dim + max(pad_left + 2, PW_TILE) · dim` bytes ([`scratch_len`]).
//! Each driver gives exactly the bytes the out-of-place [`super::reference`] kernels give,
//! whatever [`Isa`] computes the tokens (tested below).

use super::reference::{self, QuantLayer};
use super::{Grid, Isa};
use crate::Activation;

/// Tokens per pointwise step (the tallest micro-tile, SDOT's 4×16).
pub const PW_TILE: usize = 4;

/// Scratch bytes the drivers need for grid `g`.
///
/// ```
/// use convmixer_edge::kernels::{inplace::scratch_len, Grid};
/// // ConvMixer-256/8 k5 on a 16×16 grid: 2 ring rows + 4 pointwise tokens.
/// let g = Grid { ht: 16, wt: 16, dim: 256, kernel: 5, pad_top: 2, pad_left: 2 };
/// assert_eq!(scratch_len(g), 2 * 16 * 256 + 4 * 256);
/// ```
pub fn scratch_len(g: Grid) -> usize {
    let per_token = g.pad_top * g.wt * g.dim + queue_len(g).max(PW_TILE) * g.dim;
    // The same on every target (the arena is sized on the host too), so it covers the
    // slice-wise dot-product driver as well, which needs less except on tiny grids.
    per_token.max(dw_slice_scratch_len(g))
}

/// Scratch bytes of the slice-wise depthwise driver (`neon::dw_i8_inplace_sdot`): a ring of
/// `pad_top` rows of one 16-channel slice, the slice's packed weights and input cache (64
/// bytes per tap group and kernel column / input column) and a row buffer.
///
/// ```
/// use convmixer_edge::kernels::{inplace::dw_slice_scratch_len, Grid};
/// let g = Grid { ht: 16, wt: 16, dim: 768, kernel: 7, pad_top: 3, pad_left: 3 };
/// assert_eq!(dw_slice_scratch_len(g), 3 * 16 * 16 + 2 * 7 * 64 + 2 * 22 * 64 + 16 * 16);
/// ```
pub fn dw_slice_scratch_len(g: Grid) -> usize {
    let groups = g.kernel.div_ceil(4);
    g.pad_top * g.wt * 16
        + groups * g.kernel * 64
        + groups * (g.wt + g.kernel).saturating_sub(1) * 64
        + g.wt * 16
}

/// Tokens in the depthwise output queue: a pair plus the `pad_left` outputs waiting for it.
fn queue_len(g: Grid) -> usize {
    g.pad_left + 2
}

/// Depthwise conv + residual in place on `a` (`tokens · dim` int8), computing tokens with
/// the kernels of `isa`. `scratch` must hold [`scratch_len`] bytes; shorter buffers make it
/// fall back to nothing (the caller sizes the arena from the same formula).
pub fn dw_i8_inplace(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) {
    #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
    if isa == Isa::NeonDot && super::neon::dw_i8_inplace_sdot(a, scratch, g, l, act) {
        return;
    }
    let (d, r, wt) = (g.dim, g.pad_top, g.wt);
    let lq = queue_len(g);
    if a.len() < g.tokens() * d || scratch.len() < r * wt * d + lq * d {
        return;
    }
    let (ring, rest) = scratch.split_at_mut(r * wt * d);
    let queue = &mut rest[..lq * d];
    for y in 0..g.ht {
        let mut x = 0;
        while x < wt {
            let n = if x + 1 < wt { 2 } else { 1 };
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
                let res = |i: usize| &a_ro[(t + i) * d..(t + i + 1) * d];
                // Queue slots of x and x + 1: distinct, since lq ≥ 2.
                let (s0, s1) = (x % lq, (x + 1) % lq);
                if n == 2 {
                    let (lo, hi) = queue.split_at_mut(s0.max(s1) * d);
                    let (o_lo, o_hi) = (&mut lo[s0.min(s1) * d..][..d], &mut hi[..d]);
                    let out = if s0 < s1 { [o_lo, o_hi] } else { [o_hi, o_lo] };
                    match isa {
                        #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
                        Isa::Neon | Isa::NeonDot => super::neon::dw_pair_i8_neon_c16(
                            &src,
                            y,
                            x,
                            [res(0), res(1)],
                            g,
                            l,
                            act,
                            out,
                        ),
                        _ => {
                            let [o0, o1] = out;
                            reference::dw_token_i8(&src, y, x, res(0), g, l, act, o0);
                            reference::dw_token_i8(&src, y, x + 1, res(1), g, l, act, o1);
                        }
                    }
                } else {
                    let out = &mut queue[s0 * d..(s0 + 1) * d];
                    match isa {
                        #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
                        Isa::Neon | Isa::NeonDot => {
                            super::neon::dw_token_i8_neon_c16(&src, y, x, res(0), g, l, act, out)
                        }
                        _ => reference::dw_token_i8(&src, y, x, res(0), g, l, act, out),
                    }
                }
            }
            // Column c may be written once token c + pad_left (its last reader) is done.
            for c in x.saturating_sub(g.pad_left)..(x + n).saturating_sub(g.pad_left) {
                flush(a, ring, queue, g, y, c);
            }
            x += n;
        }
        for c in wt.saturating_sub(g.pad_left)..wt {
            flush(a, ring, queue, g, y, c);
        }
    }
}

/// Column `c` of row `y` is no longer read by row `y`: move its original into the ring
/// (for the rows below) and write its output from the queue.
fn flush(a: &mut [i8], ring: &mut [i8], queue: &[i8], g: Grid, y: usize, c: usize) {
    let (d, r, wt) = (g.dim, g.pad_top, g.wt);
    let t = y * wt + c;
    if r > 0 {
        let slot = ((y % r) * wt + c) * d;
        ring[slot..slot + d].copy_from_slice(&a[t * d..(t + 1) * d]);
    }
    let q = (c % queue_len(g)) * d;
    a[t * d..(t + 1) * d].copy_from_slice(&queue[q..q + d]);
}

/// Pointwise conv in place on `a`, [`PW_TILE`] tokens at a time through `scratch`
/// (at least `PW_TILE · dim` bytes), with the kernels of `isa`.
pub fn pw_i8_inplace(
    a: &mut [i8],
    scratch: &mut [i8],
    tokens: usize,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
) {
    if a.len() < tokens * dim || scratch.len() < PW_TILE * dim {
        return;
    }
    let mut t = 0;
    while t < tokens {
        let n = PW_TILE.min(tokens - t);
        let x = &mut scratch[..n * dim];
        x.copy_from_slice(&a[t * dim..(t + n) * dim]);
        let out = &mut a[t * dim..(t + n) * dim];
        match isa {
            #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
            Isa::Neon => super::neon::pw_i8_neon_smlal_2x16c4(x, n, dim, l, act, out),
            #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
            Isa::NeonDot => super::neon::pw_i8_neon_sdot_4x16c4(x, n, dim, l, act, out),
            _ => reference::pw_i8(x, n, dim, l, act, out),
        }
        t += n;
    }
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::kernels::{pw_index, pw_packed_len};
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
        let recs: Vec<[i32; 6]> = (0..dim)
            .map(|_| {
                [
                    rng(s, 1 << 30, (1 << 31) - 1) as i32,
                    rng(s, -2, 10) as i32,
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
    fn inplace_pointwise_equals_the_reference() {
        let mut s = 0x0bad_cafe_f00d_1234u64;
        for case in 0..80 {
            let dim = [1, 4, 13, 16, 31, 48][case % 6];
            let tokens = rng(&mut s, 1, 13) as usize;
            let mut w = vec![0i8; pw_packed_len(dim)];
            for o in 0..dim {
                for i in 0..dim {
                    w[pw_index(o, i, dim)] = rng(&mut s, -127, 127) as i8;
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
            reference::pw_i8(&x, tokens, dim, &l, Activation::Gelu, &mut want);
            for isa in isas() {
                let mut a = x.clone();
                let mut scratch = vec![0i8; PW_TILE * dim];
                pw_i8_inplace(&mut a, &mut scratch, tokens, dim, &l, Activation::Gelu, isa);
                assert_eq!(a, want, "{isa:?} dim {dim} tokens {tokens}");
            }
        }
    }
}
