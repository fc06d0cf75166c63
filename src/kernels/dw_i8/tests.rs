//! The int8 depthwise's shared suite: every ISA the running CPU has ([`isas`]) against the
//! reference, byte for byte: the in-place driver on any channel count (1..=40, the
//! per-token fallback included), each ISA's slice-wise kernel on every kernel size 1..=9
//! (even ones too), and no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::awkward;
use crate::kernels::reference::{self, QuantLayer};
use crate::kernels::testutil::{act, isas, layer_bytes, Awkward, Layer, Rng};
use crate::le::I32Le;

#[test]
fn inplace_depthwise_equals_the_reference() {
    let mut s = Rng(0x1234_5678_9abc_def1);
    for case in 0..150 {
        let kernel = 1 + case % 9;
        let dim = [1, 3, 16, 17, 32, 40][case % 6];
        let (ht, wt) = (s.range(1, 9) as usize, s.range(1, 9) as usize);
        let g = Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top: (kernel - 1) / 2,
            pad_left: (kernel - 1) / 2,
        };
        let w: Vec<i8> = (0..kernel * kernel * dim)
            .map(|_| s.range(-127, 127) as i8)
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
            zp_in: s.range(-128, 127) as i32,
            zp_z: s.range(-128, 127) as i32,
            zp_out: s.range(-128, 127) as i32,
            table: if gelu { &table } else { &[] },
        };
        let x: Vec<i8> = (0..g.tokens() * dim)
            .map(|_| s.range(-128, 127) as i8)
            .collect();
        let mut want = vec![0i8; x.len()];
        reference::dw_i8(&x, g, &l, act, &mut want);
        for isa in isas() {
            let mut a = x.clone();
            let mut scratch = vec![0i8; scratch_len(g)];
            dw_i8_inplace(&mut a, &mut scratch, g, &l, act, isa);
            assert_eq!(a, want, "{isa:?} {g:?}");
            // Split by channels into 2..=4 cores' parts (last first, one scratch for
            // all): slice-wise kernels where they take the parts, the per-token driver on
            // the others (any channel count, any unit).
            for (parts, unit) in [(2, channel_unit(isa, dim)), (3, 1), (4, 3)] {
                let mut a = x.clone();
                let mut views = ChannelsMut::split(&mut a, dim, unit, parts);
                for v in views.iter_mut().rev() {
                    dw_i8_channels(v, &mut scratch, g, &l, act, isa);
                }
                drop(views);
                assert_eq!(a, want, "{isa:?} {g:?}: {parts} parts of {unit}");
            }
        }
    }
}

/// The slice-wise kernel of `isa` on `parts` channel parts of `a` (in slices of
/// `channel_unit`), last part first, one scratch for all: whether every part ran it (none
/// fell back to the per-token driver).
fn by_parts(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
    isa: Isa,
    parts: usize,
) -> bool {
    let unit = channel_unit(isa, g.dim);
    if unit == 1 {
        return false;
    }
    let mut views = ChannelsMut::split(a, g.dim, unit, parts);
    assert_eq!(views.len(), parts.min(g.dim / unit));
    views
        .iter_mut()
        .rev()
        .all(|v| slice_wise(v, scratch, g, l, act, isa))
}

/// Each SIMD level's slice-wise kernel (asserted to run, not to fall back) on random grids,
/// kernels 1..=9, 16..=48 channels, GELU and ReLU, full-range residuals.
#[test]
fn slice_wise_depthwise_matches_the_reference() {
    let isas = isas();
    let mut r = Rng(0x0bad_cafe_1234_5678);
    for case in 0..120 {
        let kernel = 1 + case % 9;
        let dim = 16 * r.range(1, 3) as usize;
        let (ht, wt) = (r.range(1, 9) as usize, r.range(1, 9) as usize);
        let pad = (kernel - 1) / 2;
        let g = Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top: pad,
            pad_left: pad,
        };
        let gelu = case % 2 == 1;
        let l = Layer::random(&mut r, kernel * kernel * dim, dim, true, gelu);
        let x: Vec<i8> = (0..g.tokens() * dim)
            .map(|_| r.range(-128, 127) as i8)
            .collect();
        let mut want = vec![0i8; x.len()];
        reference::dw_i8(&x, g, &l.view(), act(gelu), &mut want);
        for &isa in isas.iter().filter(|&&i| i != Isa::Scalar) {
            // The least scratch the drivers get, and plenty (the AVX2 kernel then caches
            // its columns widened to i16).
            // Whole, and split by channels into 2 or 3 cores' parts (run in reverse).
            for len in [dw_slice_scratch_len(g), 4 * dw_slice_scratch_len(g)] {
                for parts in 1..=3 {
                    let (mut a, mut scratch) = (x.clone(), vec![0i8; len]);
                    let ran = by_parts(&mut a, &mut scratch, g, &l.view(), act(gelu), isa, parts);
                    // Every SIMD level has a slice-wise kernel for these layers.
                    assert!(ran, "{isa:?} {g:?}");
                    assert_eq!(a, want, "{isa:?}: {g:?} scratch {len}, {parts} parts");
                }
            }
        }
    }
}

/// Each SIMD level's slice-wise kernel at the edges of the reader's bounds
/// (`Layer::extreme`: residual multipliers of ±2^20, accumulators over the i32 range,
/// every saturation), on every kernel size 1..=9, full-range and constant inputs, and the
/// in-place driver with a channel count the slice-wise kernels do not take.
#[test]
fn depthwise_matches_the_reference_at_the_limits() {
    let isas = isas();
    let mut r = Rng(0xd3e9_7b1a_55aa_0f0f);
    for case in 0..90 {
        let kernel = 1 + case % 9;
        let dim = [8, 16, 24, 32, 12][case % 5];
        let (ht, wt) = (r.range(1, 10) as usize, r.range(1, 12) as usize);
        let pad = if case % 7 == 0 {
            kernel - 1
        } else {
            (kernel - 1) / 2
        };
        let g = Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top: pad,
            pad_left: (kernel - 1) - pad,
        };
        let gelu = case % 2 == 0;
        let l = Layer::extreme(
            &mut r,
            kernel * kernel * dim,
            dim,
            kernel * kernel,
            true,
            gelu,
        );
        let x: Vec<i8> = (0..g.tokens() * dim)
            .map(|_| match case % 3 {
                0 => [-128, 127][r.range(0, 1) as usize],
                _ => r.range(-128, 127) as i8,
            })
            .collect();
        let mut want = vec![0i8; x.len()];
        reference::dw_i8(&x, g, &l.view(), act(gelu), &mut want);
        for &isa in &isas {
            let (mut a, mut scratch) = (x.clone(), vec![0i8; scratch_len(g)]);
            dw_i8_inplace(&mut a, &mut scratch, g, &l.view(), act(gelu), isa);
            assert_eq!(a, want, "{isa:?}: {g:?} case {case}");
            // The NEON kernels take multiples of 16 channels, the AVX2 one of 8.
            let simd = match isa {
                Isa::Scalar => false,
                Isa::Avx2 | Isa::Avx512Vnni => dim % 8 == 0,
                _ => dim % 16 == 0,
            };
            if simd {
                for len in [dw_slice_scratch_len(g), 4 * dw_slice_scratch_len(g)] {
                    let (mut a, mut scratch) = (x.clone(), vec![0i8; len]);
                    let ran = by_parts(&mut a, &mut scratch, g, &l.view(), act(gelu), isa, 2);
                    assert!(ran, "{isa:?} {g:?}");
                    assert_eq!(a, want, "{isa:?} slice-wise: {g:?} {len} case {case}");
                }
            }
        }
    }
}

/// No depthwise driver (nor the reference) panics or overflows, whatever the shapes and
/// parameters: short or empty buffers, zero and huge sizes, paddings past the kernel,
/// extreme zero points and requantisation fields (run in debug builds too, where an
/// overflow would panic).
#[test]
fn drivers_never_panic_on_any_shape() {
    let awk = Awkward::new();
    for isa in isas() {
        for l in &awk.layers() {
            for act in [Activation::Relu, Activation::Gelu] {
                for g in awkward::grids() {
                    for (n, m) in [(0, 0), (8, 8), (96, 64), (96, 4096)] {
                        let (mut a, mut scratch) = (vec![5i8; n], vec![0i8; m]);
                        dw_i8_inplace(&mut a, &mut scratch, g, l, act, isa);
                        let mut o = vec![0i8; n];
                        reference::dw_i8(&a, g, l, act, &mut o);
                    }
                }
            }
        }
    }
}
