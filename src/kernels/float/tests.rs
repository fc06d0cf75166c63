//! The float arithmetic's own tests (binary16 fused multiply-add, erf and GELU against
//! f64), and the helpers the float ops' suites share: random parameters in both weight
//! storages, bit comparisons that treat every NaN alike.
#![forbid(unsafe_code)]

use std::vec::Vec;

use super::reference::*;
use crate::le::{F16Le, F32Le};
use crate::Activation;
use half::f16;

pub(crate) fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A uniform value in `[lo, hi)`.
pub(crate) fn unif(s: &mut u64, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * (rng(s) >> 40) as f32 / (1u64 << 24) as f32
}

/// A finite f16 as `k · 2^−24` (every finite f16 is one).
pub(crate) fn units(h: f16) -> i128 {
    (f64::from(h.to_f32()) * 16_777_216.0) as i128
}

/// `fma_f16` against exact integer arithmetic: the result is the nearest f16 (ties to
/// even), or ±inf beyond the overflow threshold.
#[test]
fn fma_f16_is_correctly_rounded() {
    let mut s = 0x1234_5678_9abc_def1u64;
    let finite = |s: &mut u64| loop {
        let h = f16::from_bits(rng(s) as u16);
        if h.is_finite() {
            return h;
        }
    };
    let mut checked = 0;
    for n in 0..300_000 {
        let (a, b, c) = (finite(&mut s), finite(&mut s), finite(&mut s));
        // Mix in cases where the product and the addend are of similar size (the
        // cancelling, tie-prone ones).
        let c = if n % 2 == 0 {
            f16::from_f32(-(a.to_f32() * b.to_f32()) * unif(&mut s, 0.5, 2.0))
        } else {
            c
        };
        if !c.is_finite() {
            continue;
        }
        let r = f16::from_f32(fma_f16(a.to_f32(), b.to_f32(), c.to_f32()));
        // Exact value in units of 2^−48.
        let exact = units(a) * units(b) + (units(c) << 24);
        if r.is_infinite() {
            // Overflow: |exact| ≥ 65520 = 65504 + half an ulp (ties go to inf, odd).
            assert!(exact.abs() >= (65520i128 << 48), "{a} {b} {c}");
            assert_eq!(r.is_sign_negative(), exact < 0);
            continue;
        }
        let d = |h: f16| (exact - (units(h) << 24)).abs();
        let (up, down) = (
            f16::from_bits(if r.to_f32() >= 0.0 {
                r.to_bits() + 1
            } else {
                r.to_bits() - 1
            }),
            f16::from_bits(if r.to_f32() > 0.0 {
                r.to_bits() - 1
            } else {
                r.to_bits() + 1
            }),
        );
        for nb in [up, down] {
            if nb.is_finite() && !(nb.to_f32() == 0.0 && r.to_f32() == 0.0) {
                assert!(
                    d(r) < d(nb) || (d(r) == d(nb) && r.to_bits() & 1 == 0),
                    "{a}*{b}+{c}: got {r}, {nb} is nearer"
                );
            }
        }
        checked += 1;
    }
    assert!(checked > 250_000);
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

/// Weights in both storages (the f16 copy rounded), bias and affine.
pub(crate) struct Params {
    pub(crate) w32: Vec<u8>,
    pub(crate) w16: Vec<u8>,
    pub(crate) bias: Vec<u8>,
    pub(crate) scale: Vec<u8>,
    pub(crate) shift: Vec<u8>,
    pub(crate) unscale: Vec<u8>,
}

pub(crate) fn params(s: &mut u64, elems: usize, dim: usize, amp: f32) -> Params {
    let w: Vec<f32> = (0..elems).map(|_| unif(s, -amp, amp)).collect();
    let vec = |s: &mut u64, lo, hi| (0..dim).map(|_| unif(s, lo, hi)).collect::<Vec<f32>>();
    Params {
        w32: f32_bytes(&w),
        w16: f16_bytes(&w),
        bias: f32_bytes(&vec(s, -1.0, 1.0)),
        scale: f32_bytes(&vec(s, -2.0, 2.0)),
        shift: f32_bytes(&vec(s, -1.0, 1.0)),
        // Powers of two 1 .. 2^-7, as the quantiser writes them.
        unscale: f32_bytes(
            &(0..dim)
                .map(|_| 0.5f32.powi((rng(s) % 8) as i32))
                .collect::<Vec<f32>>(),
        ),
    }
}

pub(crate) fn layers(p: &Params) -> (FloatLayer<'_, F32Le<'_>>, FloatLayer<'_, F16Le<'_>>) {
    let (b, sc, sh) = (F32Le(&p.bias), F32Le(&p.scale), F32Le(&p.shift));
    let u = F32Le(&p.unscale);
    (
        FloatLayer {
            w: F32Le(&p.w32),
            bias: b,
            scale: sc,
            shift: sh,
            unscale: u,
        },
        FloatLayer {
            w: F16Le(&p.w16),
            bias: b,
            scale: sc,
            shift: sh,
            unscale: u,
        },
    )
}

/// Special inputs: NaN, ±inf, ±0, subnormals, huge values.
pub(crate) const SPECIAL: [f32; 9] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -0.0,
    0.0,
    1e-40,
    -3e-39,
    3e38,
    -1e30,
];

pub(crate) const ACTS: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::GeluTanh];

/// f32 bits equal, or both NaN.
pub(crate) fn same_f32(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

pub(crate) fn same_f16(a: &[u16], b: &[u16]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x == y || (f16::from_bits(*x).is_nan() && f16::from_bits(*y).is_nan()))
}

pub(crate) fn check_fp16_required() {
    if std::env::var("CMX_REQUIRE_DOTPROD").is_ok_and(|v| v == "1") {
        assert!(
            crate::kernels::fp16_available(),
            "CMX_REQUIRE_DOTPROD is set (a v8.2 CPU) but FEAT_FP16 is missing"
        );
    }
}

/// `erf_f32` and `gelu_f32` against libm's f64 `erf`, every 2⁻¹² on [−8, 8] plus both
/// clamps and the saturated tails.
#[test]
fn erf_and_gelu_are_accurate() {
    let (mut we, mut wg) = (0f64, 0f64);
    for i in -(8 << 12)..=(8 << 12) {
        let x = i as f32 / 4096.0;
        we = we.max((f64::from(erf_f32(x)) - libm::erf(f64::from(x))).abs());
        let exact = 0.5 * f64::from(x) * (1.0 + libm::erf(f64::from(x) / 2f64.sqrt()));
        let e = (f64::from(gelu_f32(x)) - exact).abs() / exact.abs().max(1.0);
        wg = wg.max(e);
    }
    assert!(we <= 3.0e-7, "erf max abs error {we}");
    assert!(wg <= 7.5e-7, "gelu max error {wg}");
    assert_eq!((erf_f32(ERF_ZMAX), erf_f32(-100.0)), (1.0, -1.0));
    assert_eq!(erf_f32(f32::NAN).abs(), 1.0);
    assert_eq!(gelu_f32(-20.0), -0.0);
    assert_eq!(gelu_f32(20.0), 20.0);
}

/// The drivers' never-panic layer: weights `w`, every channel vector `ones`.
pub(crate) fn awkward_layer<'a, W>(w: W, ones: &'a [u8]) -> FloatLayer<'a, W> {
    FloatLayer {
        w,
        bias: F32Le(ones),
        scale: F32Le(ones),
        shift: F32Le(ones),
        unscale: F32Le(ones),
    }
}
