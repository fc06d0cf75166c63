//! The float depthwise conv's shared suite: every ISA the running CPU has ([`isas`])
//! against the reference, bit for bit, in both arithmetics and both weight storages, and
//! no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::awkward;
use crate::kernels::float::tests::{
    awkward_layer, check_fp16_required, f16_bytes, f32_bytes, layers, params, rng, same_f16,
    same_f32, unif, ACTS,
};
use crate::kernels::reference::{self, F16Arith, F32Arith};
use crate::kernels::testutil::isas;
use crate::le::{F16Le, F32Le};
use half::f16;

#[test]
fn dw_drivers_match_reference() {
    check_fp16_required();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let isas = isas();
    for case in 0..60 {
        let kernel = [3, 5, 7, 9, 1, 4][case % 6];
        let dim = 16 * (1 + (rng(&mut s) % 4) as usize);
        let (ht, wt) = (
            1 + (rng(&mut s) % 10) as usize,
            1 + (rng(&mut s) % 16) as usize,
        );
        let pad = (kernel - 1) / 2;
        let g = Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top: pad,
            pad_left: pad,
        };
        let act = ACTS[case % 3];
        let p = params(&mut s, kernel * kernel * dim, dim, 0.4);
        let (l32, l16) = layers(&p);
        let n = ht * wt * dim;
        let x: Vec<f32> = (0..n).map(|_| unif(&mut s, -3.0, 3.0)).collect();
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        reference::dw_f::<_, F32Arith>(&x, g, &l32, act, &mut a);
        for &isa in &isas {
            dw::<_, F32Arith>(&x, g, &l32, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w32 {g:?} {act:?}");
        }
        reference::dw_f::<_, F32Arith>(&x, g, &l16, act, &mut a);
        for &isa in &isas {
            dw::<_, F32Arith>(&x, g, &l16, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w16 {g:?} {act:?}");
        }
        let xh: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
        let (mut a, mut b) = (vec![0u16; n], vec![0u16; n]);
        reference::dw_f::<_, F16Arith>(&xh, g, &l16, act, &mut a);
        for &isa in &isas {
            dw::<_, F16Arith>(&xh, g, &l16, act, &mut b, isa);
            assert!(same_f16(&a, &b), "{isa:?} f16 {g:?} {act:?}");
        }
    }
}

/// The depthwise driver (every ISA, and the reference) neither panics nor loops without
/// end on any shape: short, empty or mismatched buffers, zero and huge sizes, paddings past
/// the kernel.
#[test]
fn dw_driver_never_panics_on_any_shape() {
    let w = f32_bytes(&[0.5; 16 * 9]);
    let w16 = f16_bytes(&[0.5; 16 * 9]);
    let ones = f32_bytes(&[1.0; 16]);
    let (l32, l16) = (
        awkward_layer(F32Le(&w), &ones),
        awkward_layer(F16Le(&w16), &ones),
    );
    for isa in isas() {
        for n in [0, 5, 96, 200] {
            let x = vec![1.0f32; n];
            let xh = vec![0x3c00u16; n];
            for g in awkward::grids() {
                let (mut o, mut oh) = (vec![0f32; n], vec![0u16; n]);
                dw::<_, F32Arith>(&x, g, &l32, Activation::Gelu, &mut o, isa);
                dw::<_, F32Arith>(&x, g, &l16, Activation::Gelu, &mut o, isa);
                dw::<_, F16Arith>(&xh, g, &l16, Activation::Relu, &mut oh, isa);
            }
        }
    }
}
