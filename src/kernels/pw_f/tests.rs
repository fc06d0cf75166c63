//! The float pointwise conv's shared suite: every ISA the running CPU has ([`isas`])
//! against the reference, bit for bit, in both arithmetics and both weight storages, and
//! no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::awkward;
use crate::kernels::fgemm_packed_len;
use crate::kernels::float::tests::{
    awkward_layer, check_fp16_required, f16_bytes, f32_bytes, layers, params, rng, same_f16,
    same_f32, unif, ACTS, SPECIAL,
};
use crate::kernels::reference::{self, F16Arith, F32Arith};
use crate::kernels::testutil::isas;
use crate::le::{F16Le, F32Le};
use half::f16;

/// The pointwise driver in f32 arithmetic on `isa`; on AVX2 the kernel itself, which must
/// take every layer of this suite (F32Arith, weights long enough).
#[allow(clippy::too_many_arguments)]
fn pw_f32<W: FloatWeights>(
    x: &[f32],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        // Under the AVX-512 level (detected: isas() lists only those), its tiles, whether
        // or not `pw` picks them on this CPU (`cpu::split_512_fma`).
        assert_eq!(avx512::takes(isa), isa == Isa::Avx512Vnni);
        let wide = isa == Isa::Avx512Vnni;
        assert!(x86::pw_tiles::<W, F32Arith>(
            x,
            tokens,
            dim,
            l,
            act,
            out,
            (isa, wide)
        ));
        return;
    }
    pw::<W, F32Arith>(x, tokens, dim, l, act, out, isa);
}

/// The pointwise driver on every ISA against the reference, bit for bit: f32
/// arithmetic with f32 and f16 weights, f16 arithmetic. Channel counts multiples of 16
/// and not (1..90: the x86 kernels' partial output block; odd and even counts of full
/// blocks: the AVX-512 tiles' pairs), token counts across the AVX2 kernel's 6-token and the
/// AVX-512 kernel's 12-token tiles and their 48-token macro-tiles, and every fourth case with NaN, ±inf,
/// ±0, subnormal and huge inputs.
#[test]
fn pw_drivers_match_reference() {
    check_fp16_required();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let isas = isas();
    for case in 0..80 {
        let dim = if case % 2 == 0 {
            16 * (1 + (rng(&mut s) % 6) as usize)
        } else {
            1 + (rng(&mut s) % 90) as usize
        };
        let tokens = 1 + (rng(&mut s) % if case % 5 == 0 { 110 } else { 13 }) as usize;
        let act = ACTS[case % 3];
        let amp = 2.0 / (dim as f32).sqrt();
        let p = params(&mut s, fgemm_packed_len(dim, dim), dim, amp);
        let (l32, l16) = layers(&p);
        let mut x: Vec<f32> = (0..tokens * dim).map(|_| unif(&mut s, -3.0, 3.0)).collect();
        if case % 4 == 3 {
            for v in SPECIAL {
                let i = (rng(&mut s) % x.len() as u64) as usize;
                x[i] = v;
            }
        }
        let (mut a, mut b) = (vec![0f32; tokens * dim], vec![0f32; tokens * dim]);
        reference::pw_f::<_, F32Arith>(&x, tokens, dim, &l32, act, &mut a);
        for &isa in &isas {
            pw_f32(&x, tokens, dim, &l32, act, &mut b, isa);
            let what = "f32 w32";
            assert!(
                same_f32(&a, &b),
                "{isa:?} {what} dim {dim} tokens {tokens} {act:?}"
            );
        }
        reference::pw_f::<_, F32Arith>(&x, tokens, dim, &l16, act, &mut a);
        for &isa in &isas {
            pw_f32(&x, tokens, dim, &l16, act, &mut b, isa);
            let what = "f32 w16";
            assert!(
                same_f32(&a, &b),
                "{isa:?} {what} dim {dim} tokens {tokens} {act:?}"
            );
        }
        let xh: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
        let (mut a, mut b) = (vec![0u16; tokens * dim], vec![0u16; tokens * dim]);
        reference::pw_f::<_, F16Arith>(&xh, tokens, dim, &l16, act, &mut a);
        for &isa in &isas {
            pw::<_, F16Arith>(&xh, tokens, dim, &l16, act, &mut b, isa);
            assert!(
                same_f16(&a, &b),
                "{isa:?} f16 dim {dim} tokens {tokens} {act:?}"
            );
        }
        // f16 arithmetic really is f16: it differs from f32 computing somewhere.
        if case == 0 {
            let mut c = vec![0f32; tokens * dim];
            reference::pw_f::<_, F32Arith>(&x, tokens, dim, &l16, act, &mut c);
            assert!(a
                .iter()
                .zip(&c)
                .any(|(h, f)| f16::from_f32(*f).to_bits() != *h));
        }
    }
}

/// The pointwise driver (every ISA, and the reference) neither panics nor loops without
/// end on any shape: short, empty or mismatched buffers, zero and huge sizes.
#[test]
fn pw_driver_never_panics_on_any_shape() {
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
                for tokens in [0, 1, 6, awkward::HUGE] {
                    pw::<_, F32Arith>(&x, tokens, g.dim, &l32, Activation::Relu, &mut o, isa);
                    pw::<_, F16Arith>(&xh, tokens, g.dim, &l16, Activation::Gelu, &mut oh, isa);
                }
            }
        }
    }
}
