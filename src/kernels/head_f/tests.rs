//! The float pool + head's shared suite: every ISA the running CPU has ([`isas`]) against
//! the reference, bit for bit, with f32 and f16 weights, and no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::float::tests::{f16_bytes, f32_bytes, rng, same_f32, unif, SPECIAL};
use crate::kernels::reference::{self, F16Arith, F32Arith};
use crate::kernels::testutil::isas;
use crate::le::{F16Le, F32Le};

/// The driver on every ISA against the reference: channel counts around the x86 kernel's
/// 8-input blocks (1..40), class counts around its 8-class blocks (1..30, and 1000), token
/// counts 1..20, f32 and f16 weights, every third case with NaN, ±inf, ±0, subnormal and
/// huge inputs; and f16 activations (`F16Arith`, the reference everywhere but FEAT_FP16).
#[test]
fn head_drivers_match_reference() {
    let mut s = 0x51ed_2701_9e37_79b9u64;
    let isas = isas();
    for case in 0..60 {
        let dim = 1 + (rng(&mut s) % 40) as usize;
        let classes = if case == 7 {
            1000
        } else {
            1 + (rng(&mut s) % 30) as usize
        };
        let tokens = 1 + (rng(&mut s) % 20) as usize;
        let amp = 1.0 / (dim as f32).sqrt();
        let wv: Vec<f32> = (0..classes * dim)
            .map(|_| unif(&mut s, -amp, amp))
            .collect();
        let bv: Vec<f32> = (0..classes).map(|_| unif(&mut s, -0.5, 0.5)).collect();
        let (w32, w16, b) = (f32_bytes(&wv), f16_bytes(&wv), f32_bytes(&bv));
        let mut x: Vec<f32> = (0..tokens * dim).map(|_| unif(&mut s, -3.0, 3.0)).collect();
        if case % 3 == 2 {
            for v in SPECIAL {
                let i = (rng(&mut s) % x.len() as u64) as usize;
                x[i] = v;
            }
        }
        let mut mean = vec![0f32; dim];
        let (mut a, mut c) = (vec![0f32; classes], vec![0f32; classes]);
        let bias = F32Le(&b);
        reference::head_f::<_, F32Arith>(&x, tokens, dim, &F32Le(&w32), bias, &mut mean, &mut a);
        for &isa in &isas {
            head::<_, F32Arith>(&x, tokens, dim, &F32Le(&w32), bias, &mut mean, &mut c, isa);
            assert!(
                same_f32(&a, &c),
                "{isa:?} w32 dim {dim} classes {classes} tokens {tokens}"
            );
        }
        reference::head_f::<_, F32Arith>(&x, tokens, dim, &F16Le(&w16), bias, &mut mean, &mut a);
        for &isa in &isas {
            head::<_, F32Arith>(&x, tokens, dim, &F16Le(&w16), bias, &mut mean, &mut c, isa);
            assert!(
                same_f32(&a, &c),
                "{isa:?} w16 dim {dim} classes {classes} tokens {tokens}"
            );
            // Split over 2..=4 cores, last part first: the pool by channel ranges (whole
            // 8-channel units, or any), the head by class ranges (8-class units, or any).
            for (parts, unit) in [(2, 8), (3, 1), (4, 3)] {
                let ranges = |n: usize| -> Vec<core::ops::Range<usize>> {
                    crate::cores::bounds(n.div_ceil(unit), parts)
                        .map(|r| (r.start * unit).min(n)..(r.end * unit).min(n))
                        .collect()
                };
                let (mut m, mut l) = (vec![0f32; dim], vec![0f32; classes]);
                for r in ranges(dim).into_iter().rev() {
                    pool_f::<F32Arith>(&x, tokens, dim, r.start, &mut m[r], isa);
                }
                assert!(same_f32(&m, &mean), "{isa:?} pool in {parts} parts");
                for r in ranges(classes).into_iter().rev() {
                    let (k0, part) = (r.start, &mut l[r]);
                    logits_f::<_, F32Arith>(&m, dim, &F16Le(&w16), bias, k0, part, isa);
                }
                assert!(same_f32(&a, &l), "{isa:?} head in {parts} parts");
            }
        }
        let xh: Vec<u16> = x.iter().map(|v| F16Arith::narrow(*v)).collect();
        reference::head_f::<_, F16Arith>(&xh, tokens, dim, &F16Le(&w16), bias, &mut mean, &mut a);
        for &isa in &isas {
            head::<_, F16Arith>(&xh, tokens, dim, &F16Le(&w16), bias, &mut mean, &mut c, isa);
            assert!(
                same_f32(&a, &c),
                "{isa:?} f16 dim {dim} classes {classes} tokens {tokens}"
            );
        }
    }
}

/// Short buffers (inputs, weights, biases, the mean scratch) and zero sizes: no panic on any
/// ISA, and the same logits as the reference (which skips what does not fit).
#[test]
fn head_driver_never_panics_on_any_shape() {
    let w = f32_bytes(&[0.5; 64]);
    let b = f32_bytes(&[0.25; 8]);
    for &isa in &isas() {
        for (tokens, dim, classes, xl, ml) in [
            (0, 8, 8, 0, 8),
            (2, 0, 8, 0, 0),
            (2, 8, 8, 15, 8),
            (2, 8, 9, 16, 8),
            (2, 8, 8, 16, 7),
            (1, 9, 8, 9, 9),
            (usize::MAX, 2, 8, 16, 8),
            (2, usize::MAX, 8, 16, 8),
        ] {
            let x = vec![1f32; xl];
            let (mut m1, mut m2) = (vec![0f32; ml], vec![0f32; ml]);
            let (mut a, mut c) = (vec![-1f32; classes], vec![-1f32; classes]);
            let (wl, bl) = (F32Le(&w), F32Le(&b));
            reference::head_f::<_, F32Arith>(&x, tokens, dim, &wl, bl, &mut m1, &mut a);
            head::<_, F32Arith>(&x, tokens, dim, &wl, bl, &mut m2, &mut c, isa);
            assert!(
                same_f32(&a, &c),
                "{isa:?} {tokens} {dim} {classes} {xl} {ml}"
            );
        }
    }
}
