//! The int8 pool + head's shared suite: every ISA the running CPU has ([`isas`]) against
//! the reference, bit for bit (the pooled means and the f32 logits), and no panic on any
//! shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::awkward;
use crate::kernels::reference;
use crate::kernels::testutil::{isas, Awkward, Rng};
use crate::le::F32Le;

/// The pool + head of every ISA against the reference: token counts across the 256-token
/// i16 flush, dims with and without a 16-channel tail, full-range activations.
#[test]
fn head_matches_the_reference() {
    let mut r = Rng(0x0123_4567_89ab_cdef);
    let isas = isas();
    let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for case in 0..120 {
        let tokens = if case % 4 == 0 {
            r.range(250, 800)
        } else {
            r.range(1, 70)
        } as usize;
        let dim = r.range(1, 70) as usize;
        let classes = r.range(1, 12) as usize;
        let zp = r.range(-128, 127) as i32;
        let frac = r.range(0, 8) as u32;
        // Long, one-signed runs reach the i16 limits (−128 · 256 = −2^15).
        let (lo, hi) = match case % 3 {
            0 => (-128, -100),
            1 => (100, 127),
            _ => (-128, 127),
        };
        let x: Vec<i8> = (0..tokens * dim).map(|_| r.range(lo, hi) as i8).collect();
        let w: Vec<i8> = (0..classes * dim)
            .map(|_| r.range(-127, 127) as i8)
            .collect();
        let sc = f32s(
            (0..classes)
                .map(|_| r.range(1, 1000) as f32 / 7e4)
                .collect(),
        );
        let bi = f32s(
            (0..classes)
                .map(|_| r.range(-1000, 1000) as f32 / 300.0)
                .collect(),
        );
        let (mut m1, mut m2) = (vec![0i32; dim], vec![0i32; dim]);
        let (mut a, mut b) = (vec![0f32; classes], vec![0f32; classes]);
        let (s1, b1) = (crate::le::F32Le(&sc), crate::le::F32Le(&bi));
        reference::head_i8(&x, tokens, dim, zp, frac, &w, s1, b1, &mut m2, &mut b);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        for &isa in &isas {
            head_i8(&x, tokens, dim, zp, frac, &w, s1, b1, &mut m1, &mut a, isa);
            assert_eq!(m1, m2, "{isa:?} case {case}: tokens {tokens} dim {dim}");
            assert_eq!(
                bits(&a),
                bits(&b),
                "{isa:?} case {case}: tokens {tokens} dim {dim}"
            );
            // Split over 2..=4 cores, last part first: the pool by channel ranges (whole
            // 16-channel units, or any), the head by class ranges.
            for (parts, unit) in [(2, 16), (3, 1), (4, 5)] {
                let (mut m3, mut c) = (vec![0i32; dim], vec![0f32; classes]);
                let ranges = |n: usize, unit: usize| -> Vec<core::ops::Range<usize>> {
                    crate::cores::bounds(n.div_ceil(unit), parts)
                        .map(|r| (r.start * unit).min(n)..(r.end * unit).min(n))
                        .collect()
                };
                for r in ranges(dim, unit).into_iter().rev() {
                    let (c0, m) = (r.start, &mut m3[r]);
                    pool_i8(&x, tokens, dim, zp, frac, c0, m, isa);
                }
                assert_eq!(m3, m2, "{isa:?} case {case}: pool in {parts} parts");
                for r in ranges(classes, 1).into_iter().rev() {
                    let (k0, l) = (r.start, &mut c[r]);
                    logits_i8(&m3, dim, &w, s1, b1, k0, l, isa);
                }
                assert_eq!(
                    bits(&c),
                    bits(&b),
                    "{isa:?} case {case}: head in {parts} parts"
                );
            }
        }
    }
}

/// The head never panics, whatever the token count, dim, zero point and fraction bits,
/// with short or empty buffers.
#[test]
fn head_never_panics_on_any_shape() {
    let awk = Awkward::new();
    let huge = awkward::HUGE;
    for isa in isas() {
        for g in awkward::grids() {
            for n in [0, 8, 96] {
                let a = vec![5i8; n];
                for t in [0, 1, 6, huge] {
                    let (mut mean, mut logits) = (vec![0i32; 16], vec![0f32; 3]);
                    let s = F32Le(&awk.bias);
                    for (zp, frac) in [(0, 0), (i32::MIN, 100), (127, u32::MAX)] {
                        head_i8(
                            &a,
                            t,
                            g.dim,
                            zp,
                            frac,
                            awk.w(),
                            s,
                            s,
                            &mut mean,
                            &mut logits,
                            isa,
                        );
                        for at in [0, 7, huge] {
                            pool_i8(&a, t, g.dim, zp, frac, at, &mut mean[..5], isa);
                            logits_i8(&mean, g.dim, awk.w(), s, s, at, &mut logits, isa);
                        }
                    }
                }
            }
        }
    }
}
