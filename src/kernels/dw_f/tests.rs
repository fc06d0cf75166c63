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
    same_f32, unif, ACTS, SPECIAL,
};
use crate::kernels::parts::ChannelsMut;
use crate::kernels::reference::{self, F16Arith, F32Arith};
use crate::kernels::testutil::isas;
use crate::le::{F16Le, F32Le};
use half::f16;

/// The depthwise driver in f32 arithmetic on `isa`; on AVX2 the kernel itself, which must
/// take every layer of this suite whose `dim` is a multiple of 8.
fn dw_f32<W: FloatWeights>(
    x: &[f32],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        let took = x86::dw::<W, F32Arith>(x, g, l, act, &mut ChannelsMut::whole(out, g.dim), isa);
        assert_eq!(took, g.dim.is_multiple_of(8), "{g:?}");
        if took {
            return;
        }
    }
    dw::<W, F32Arith>(x, g, l, act, out, isa);
}

/// [`dw_channels`] on `parts` channel slices of `unit` channels, run last part first, into
/// `out`: one layer split over cores.
fn by_parts<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    (isa, parts, unit): (Isa, usize, usize),
) {
    let views = ChannelsMut::split(out, g.dim, unit, parts);
    assert_eq!(views.len(), parts.min(g.dim.div_ceil(unit)));
    for mut v in views.into_iter().rev() {
        dw_channels::<W, M>(x, g, l, act, &mut v, isa);
    }
}

/// The depthwise driver on every ISA against the reference, bit for bit: f32 arithmetic
/// with f32 and f16 weights, f16 arithmetic. Kernels 1..9 (odd, and even with any
/// padding below the kernel size), channel counts
/// multiples of 16, of 8 only, and neither; rows long enough for the AVX2 kernel's 8- and
/// 4-token tiles; every fourth case with NaN, ±inf, ±0, subnormal and huge inputs. Also
/// split over 2–4 parts by channel slices of 8 or 16 (SIMD parts next to reference parts
/// where a slice is not a whole SIMD step), the parts run in reverse.
#[test]
fn dw_drivers_match_reference() {
    check_fp16_required();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let isas = isas();
    for case in 0..72 {
        let kernel = [3, 5, 7, 9, 1, 4][case % 6];
        let dim = match case % 3 {
            0 => 16 * (1 + (rng(&mut s) % 4) as usize),
            1 => 8 * (1 + (rng(&mut s) % 9) as usize),
            _ => 1 + (rng(&mut s) % 40) as usize,
        };
        let (ht, wt) = (
            1 + (rng(&mut s) % 10) as usize,
            1 + (rng(&mut s) % 30) as usize,
        );
        // 'Same' padding, or (the even kernel) any padding below the kernel size.
        let pad = (kernel - 1) / 2;
        let (pad_top, pad_left) = if kernel == 4 {
            ((rng(&mut s) % 4) as usize, (rng(&mut s) % 4) as usize)
        } else {
            (pad, pad)
        };
        let g = Grid {
            ht,
            wt,
            dim,
            kernel,
            pad_top,
            pad_left,
        };
        let act = ACTS[case % 3];
        let p = params(&mut s, kernel * kernel * dim, dim, 0.4);
        let (l32, l16) = layers(&p);
        let n = ht * wt * dim;
        let mut x: Vec<f32> = (0..n).map(|_| unif(&mut s, -3.0, 3.0)).collect();
        if case % 4 == 3 {
            for v in SPECIAL {
                let i = (rng(&mut s) % n as u64) as usize;
                x[i] = v;
            }
        }
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        let splits = [(2, 8), (3, 16), (4, 8)];
        reference::dw_f::<_, F32Arith>(&x, g, &l32, act, &mut a);
        for &isa in &isas {
            dw_f32(&x, g, &l32, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w32 {g:?} {act:?}");
            for (parts, unit) in splits {
                b.fill(0.0);
                by_parts::<_, F32Arith>(&x, g, &l32, act, &mut b, (isa, parts, unit));
                assert!(same_f32(&a, &b), "{isa:?} f32 w32 {parts}×{unit} {g:?}");
            }
        }
        reference::dw_f::<_, F32Arith>(&x, g, &l16, act, &mut a);
        for &isa in &isas {
            dw_f32(&x, g, &l16, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w16 {g:?} {act:?}");
            for (parts, unit) in splits {
                b.fill(0.0);
                by_parts::<_, F32Arith>(&x, g, &l16, act, &mut b, (isa, parts, unit));
                assert!(same_f32(&a, &b), "{isa:?} f32 w16 {parts}×{unit} {g:?}");
            }
        }
        let xh: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
        let (mut a, mut b) = (vec![0u16; n], vec![0u16; n]);
        reference::dw_f::<_, F16Arith>(&xh, g, &l16, act, &mut a);
        for &isa in &isas {
            dw::<_, F16Arith>(&xh, g, &l16, act, &mut b, isa);
            assert!(same_f16(&a, &b), "{isa:?} f16 {g:?} {act:?}");
            for (parts, unit) in splits {
                b.fill(0);
                by_parts::<_, F16Arith>(&xh, g, &l16, act, &mut b, (isa, parts, unit));
                assert!(same_f16(&a, &b), "{isa:?} f16 {parts}×{unit} {g:?}");
            }
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

/// The activations and the epilogue through the driver on chosen pre-activations: a 1×1
/// depthwise layer with weight 1, bias 0, unscale 1 (its accumulator is `fma(1, x, 0)`:
/// `x`, but `+0` for `−0`) over both GELU clamps (erf's argument at ±4, its result at ±1)
/// to the last bits around them, ReLU's zero, and NaN, ±inf, subnormal and huge inputs;
/// every ISA against the reference, both weight storages, scale and shift not 1 and 0.
#[test]
fn activations_at_their_edges_through_the_driver() {
    let mut xs: Vec<f32> = SPECIAL.to_vec();
    for edge in [4.0 * core::f32::consts::SQRT_2, 1.0, 0.5, 1e-30, 0.0] {
        for sign in [1.0f32, -1.0] {
            let b = (sign * edge).to_bits();
            xs.extend((0..40u32).map(|d| f32::from_bits((b + d).wrapping_sub(20))));
        }
    }
    xs.extend((-80..=80).map(|i| i as f32 / 10.0));
    let dim = 16;
    let tokens = xs.len().div_ceil(dim);
    xs.resize(tokens * dim, 2.5);
    let g = Grid {
        ht: 1,
        wt: tokens,
        dim,
        kernel: 1,
        pad_top: 0,
        pad_left: 0,
    };
    let w32 = f32_bytes(&[1.0; 16]);
    let w16 = f16_bytes(&[1.0; 16]);
    let zero = f32_bytes(&[0.0; 16]);
    let one = f32_bytes(&[1.0; 16]);
    let scale = f32_bytes(&[0.75; 16]);
    let shift = f32_bytes(&[-0.25; 16]);
    let l32 = FloatLayer {
        w: F32Le(&w32),
        bias: F32Le(&zero),
        scale: F32Le(&scale),
        shift: F32Le(&shift),
        unscale: F32Le(&one),
    };
    let l16 = FloatLayer {
        w: F16Le(&w16),
        bias: l32.bias,
        scale: l32.scale,
        shift: l32.shift,
        unscale: l32.unscale,
    };
    let n = xs.len();
    for act in ACTS {
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        reference::dw_f::<_, F32Arith>(&xs, g, &l32, act, &mut a);
        for isa in isas() {
            dw_f32(&xs, g, &l32, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} w32 {act:?}");
            dw_f32(&xs, g, &l16, act, &mut b, isa);
            assert!(same_f32(&a, &b), "{isa:?} w16 {act:?}");
        }
    }
}
