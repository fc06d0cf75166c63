//! Float layer drivers: each runs the NEON kernel (`kernels/neon_float.rs`) when
//! the ISA, the arithmetic and the shapes allow it, else the [`reference`](mod@super::reference) kernel. Both give
//! the same bits (tested below and under qemu for both arithmetics).
//!
//! The NEON kernels need `dim % 16 == 0`; `F16Arith` kernels need FEAT_FP16 and f16
//! weights (an f16 blob); everything else runs the reference. The NEON side checks every
//! length itself, so this module has no `unsafe` code.
#![forbid(unsafe_code)]

use super::reference::{self, FloatArith, FloatLayer};
use super::{EmbedGeom, Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Scratch f32 elements the embedding driver uses for its NEON path (4 gathered patches).
///
/// ```
/// use convmixer_edge::kernels::{float::embed_scratch_len, EmbedGeom};
/// assert_eq!(embed_scratch_len(EmbedGeom { in_h: 32, in_w: 32, in_c: 3, patch: 2 }), 48);
/// ```
pub fn embed_scratch_len(g: EmbedGeom) -> usize {
    4 * g.taps()
}

/// Patch embedding: [`reference::embed_f`] (f32 arithmetic, outputs narrowed to `M`), with
/// NEON when possible. `scratch` should hold [`embed_scratch_len`] f32 (else the reference
/// runs).
///
/// ```
/// use convmixer_edge::kernels::{float, reference::*, EmbedGeom, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = EmbedGeom { in_h: 4, in_w: 4, in_c: 1, patch: 2 };
/// let w: Vec<u8> = (0..16 * 4).flat_map(|i| (i as f32 / 64.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let zeros = vec![0u8; 64];
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&zeros), scale: F32Le(&ones), shift: F32Le(&zeros), unscale: F32Le(&ones) };
/// let px: Vec<u8> = (0..16).collect();
/// let (mut a, mut b) = ([0f32; 64], [0f32; 64]);
/// embed_f::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut a);
/// float::embed::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, &mut b, &mut [0.0; 16], Isa::detect());
/// assert_eq!(a, b);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn embed<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if super::neon_float::embed::<W, M>(px, g, dim, l, act, out, scratch, isa) {
        return;
    }
    let _ = (scratch, isa);
    reference::embed_f::<W, M>(px, g, dim, l, act, out);
}

/// Depthwise conv + residual: [`reference::dw_f`], with NEON when possible.
///
/// ```
/// use convmixer_edge::kernels::{float, reference::*, Grid, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = Grid { ht: 3, wt: 3, dim: 16, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<u8> = (0..9 * 16).flat_map(|i| (i as f32 / 100.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&ones), scale: F32Le(&ones), shift: F32Le(&ones), unscale: F32Le(&ones) };
/// let x: Vec<f32> = (0..9 * 16).map(|i| i as f32 / 7.0 - 5.0).collect();
/// let (mut a, mut b) = (vec![0f32; 144], vec![0f32; 144]);
/// dw_f::<_, F32Arith>(&x, g, &l, Activation::Gelu, &mut a);
/// float::dw::<_, F32Arith>(&x, g, &l, Activation::Gelu, &mut b, Isa::detect());
/// assert_eq!(a, b);
/// ```
pub fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if super::neon_float::dw::<W, M>(x, g, l, act, out, isa) {
        return;
    }
    let _ = isa;
    reference::dw_f::<W, M>(x, g, l, act, out);
}

/// Pointwise conv: [`reference::pw_f`], with NEON when possible.
///
/// ```
/// use convmixer_edge::kernels::{float, reference::*, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let w: Vec<u8> = (0..16 * 16).flat_map(|i| ((i % 7) as f32 / 9.0 - 0.3).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&ones), scale: F32Le(&ones), shift: F32Le(&ones), unscale: F32Le(&ones) };
/// let x: Vec<f32> = (0..5 * 16).map(|i| i as f32 / 3.0 - 9.0).collect();
/// let (mut a, mut b) = (vec![0f32; 80], vec![0f32; 80]);
/// pw_f::<_, F32Arith>(&x, 5, 16, &l, Activation::Relu, &mut a);
/// float::pw::<_, F32Arith>(&x, 5, 16, &l, Activation::Relu, &mut b, Isa::detect());
/// assert_eq!(a, b);
/// ```
pub fn pw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    tokens: usize,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if super::neon_float::pw::<W, M>(x, tokens, dim, l, act, out, isa) {
        return;
    }
    let _ = isa;
    reference::pw_f::<W, M>(x, tokens, dim, l, act, out);
}

#[cfg(test)]
mod tests {
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::kernels::awkward;
    use crate::kernels::reference::{fma_f16, F16Arith, F32Arith};
    use crate::le::{F16Le, F32Le};
    use half::f16;

    fn rng(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// A uniform value in `[lo, hi)`.
    fn unif(s: &mut u64, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (rng(s) >> 40) as f32 / (1u64 << 24) as f32
    }

    /// A finite f16 as `k · 2^−24` (every finite f16 is one).
    fn units(h: f16) -> i128 {
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

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes())
            .collect()
    }

    /// Weights in both storages (the f16 copy rounded), bias and affine.
    struct Params {
        w32: Vec<u8>,
        w16: Vec<u8>,
        bias: Vec<u8>,
        scale: Vec<u8>,
        shift: Vec<u8>,
        unscale: Vec<u8>,
    }

    fn params(s: &mut u64, elems: usize, dim: usize, amp: f32) -> Params {
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

    fn layers(p: &Params) -> (FloatLayer<'_, F32Le<'_>>, FloatLayer<'_, F16Le<'_>>) {
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

    const ACTS: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::GeluTanh];

    /// f32 bits equal, or both NaN.
    fn same_f32(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    fn same_f16(a: &[u16], b: &[u16]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| x == y || (f16::from_bits(*x).is_nan() && f16::from_bits(*y).is_nan()))
    }

    fn check_fp16_required() {
        if std::env::var("CMX_REQUIRE_DOTPROD").is_ok_and(|v| v == "1") {
            assert!(
                crate::kernels::fp16_available(),
                "CMX_REQUIRE_DOTPROD is set (a v8.2 CPU) but FEAT_FP16 is missing"
            );
        }
    }

    /// Pointwise drivers (NEON where present) against the reference, bit for bit: f32
    /// arithmetic with f32 and f16 weights, f16 arithmetic.
    #[test]
    fn pw_drivers_match_reference() {
        check_fp16_required();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let isa = Isa::detect();
        for case in 0..60 {
            let dim = 16 * (1 + (rng(&mut s) % 6) as usize);
            let tokens = 1 + (rng(&mut s) % 11) as usize;
            let act = ACTS[case % 3];
            let amp = 2.0 / (dim as f32).sqrt();
            let p = params(&mut s, dim * dim, dim, amp);
            let (l32, l16) = layers(&p);
            let x: Vec<f32> = (0..tokens * dim).map(|_| unif(&mut s, -3.0, 3.0)).collect();
            let (mut a, mut b) = (vec![0f32; tokens * dim], vec![0f32; tokens * dim]);
            reference::pw_f::<_, F32Arith>(&x, tokens, dim, &l32, act, &mut a);
            pw::<_, F32Arith>(&x, tokens, dim, &l32, act, &mut b, isa);
            assert!(
                same_f32(&a, &b),
                "f32 w32 dim {dim} tokens {tokens} {act:?}"
            );
            reference::pw_f::<_, F32Arith>(&x, tokens, dim, &l16, act, &mut a);
            pw::<_, F32Arith>(&x, tokens, dim, &l16, act, &mut b, isa);
            assert!(
                same_f32(&a, &b),
                "f32 w16 dim {dim} tokens {tokens} {act:?}"
            );
            let xh: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
            let (mut a, mut b) = (vec![0u16; tokens * dim], vec![0u16; tokens * dim]);
            reference::pw_f::<_, F16Arith>(&xh, tokens, dim, &l16, act, &mut a);
            pw::<_, F16Arith>(&xh, tokens, dim, &l16, act, &mut b, isa);
            assert!(same_f16(&a, &b), "f16 dim {dim} tokens {tokens} {act:?}");
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

    #[test]
    fn dw_drivers_match_reference() {
        check_fp16_required();
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let isa = Isa::detect();
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
            dw::<_, F32Arith>(&x, g, &l32, act, &mut b, isa);
            assert!(same_f32(&a, &b), "f32 w32 {g:?} {act:?}");
            reference::dw_f::<_, F32Arith>(&x, g, &l16, act, &mut a);
            dw::<_, F32Arith>(&x, g, &l16, act, &mut b, isa);
            assert!(same_f32(&a, &b), "f32 w16 {g:?} {act:?}");
            let xh: Vec<u16> = x.iter().map(|v| f16::from_f32(*v).to_bits()).collect();
            let (mut a, mut b) = (vec![0u16; n], vec![0u16; n]);
            reference::dw_f::<_, F16Arith>(&xh, g, &l16, act, &mut a);
            dw::<_, F16Arith>(&xh, g, &l16, act, &mut b, isa);
            assert!(same_f16(&a, &b), "f16 {g:?} {act:?}");
        }
    }

    #[test]
    fn embed_drivers_match_reference() {
        let mut s = 0x5851_f42d_4c95_7f2du64;
        let isa = Isa::detect();
        for case in 0..40 {
            let patch = 1 + (rng(&mut s) % 7) as usize;
            let in_c = 1 + (rng(&mut s) % 3) as usize;
            let (th, tw) = (
                1 + (rng(&mut s) % 5) as usize,
                1 + (rng(&mut s) % 6) as usize,
            );
            let g = EmbedGeom {
                in_h: th * patch,
                in_w: tw * patch,
                in_c,
                patch,
            };
            let dim = 16 * (1 + (rng(&mut s) % 3) as usize);
            let act = ACTS[case % 3];
            let taps = g.taps();
            let p = params(
                &mut s,
                crate::kernels::fgemm_packed_len(dim, taps),
                dim,
                0.01,
            );
            let (l32, l16) = layers(&p);
            let px: Vec<u8> = (0..g.in_h * g.in_w * in_c)
                .map(|_| rng(&mut s) as u8)
                .collect();
            let n = th * tw * dim;
            let mut scratch = vec![0f32; embed_scratch_len(g)];
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            reference::embed_f::<_, F32Arith>(&px, g, dim, &l32, act, &mut a);
            embed::<_, F32Arith>(&px, g, dim, &l32, act, &mut b, &mut scratch, isa);
            assert!(same_f32(&a, &b), "f32 w32 {g:?} dim {dim} {act:?}");
            let (mut a, mut b) = (vec![0u16; n], vec![0u16; n]);
            reference::embed_f::<_, F16Arith>(&px, g, dim, &l16, act, &mut a);
            embed::<_, F16Arith>(&px, g, dim, &l16, act, &mut b, &mut scratch, isa);
            assert!(same_f16(&a, &b), "f16 {g:?} dim {dim} {act:?}");
        }
    }

    /// Geometry whose sizes wrap in usize must not pass the NEON path's length checks, nor
    /// the reference's: the driver neither panics nor writes past `out` (it writes nothing).
    #[test]
    fn wrapping_embed_geometry_never_writes_out_of_bounds() {
        let g = EmbedGeom {
            in_h: 1,
            in_w: (1 << 60) + 1,
            in_c: 16,
            patch: 1,
        };
        let w = f32_bytes(&[0.5; 16 * 16]);
        let ones = f32_bytes(&[1.0; 16]);
        let l = FloatLayer {
            w: F32Le(&w),
            bias: F32Le(&ones),
            scale: F32Le(&ones),
            shift: F32Le(&ones),
            unscale: F32Le(&ones),
        };
        let px = [1u8; 64];
        let mut buf = vec![7.0f32; 16 + 64];
        let mut scratch = vec![0f32; 64];
        let (out, guard) = buf.split_at_mut(16);
        embed::<_, F32Arith>(
            &px,
            g,
            16,
            &l,
            Activation::Relu,
            out,
            &mut scratch,
            Isa::detect(),
        );
        assert!(out.iter().chain(guard.iter()).all(|&v| v == 7.0));
    }

    /// The float drivers (NEON and reference) neither panic nor loop without end on any
    /// shape: short, empty or mismatched buffers, zero and huge sizes, paddings past the
    /// kernel.
    #[test]
    fn float_drivers_never_panic_on_any_shape() {
        let w = f32_bytes(&[0.5; 16 * 9]);
        let w16 = f16_bytes(&[0.5; 16 * 9]);
        let ones = f32_bytes(&[1.0; 16]);
        let l32 = FloatLayer {
            w: F32Le(&w),
            bias: F32Le(&ones),
            scale: F32Le(&ones),
            shift: F32Le(&ones),
            unscale: F32Le(&ones),
        };
        let l16 = FloatLayer {
            w: F16Le(&w16),
            bias: F32Le(&ones),
            scale: F32Le(&ones),
            shift: F32Le(&ones),
            unscale: F32Le(&ones),
        };
        let huge = awkward::HUGE;
        let grids = awkward::grids();
        let isa = Isa::detect();
        for n in [0, 5, 96, 200] {
            let x = vec![1.0f32; n];
            let xh = vec![0x3c00u16; n];
            for g in grids {
                let (mut o, mut oh) = (vec![0f32; n], vec![0u16; n]);
                dw::<_, F32Arith>(&x, g, &l32, Activation::Gelu, &mut o, isa);
                dw::<_, F32Arith>(&x, g, &l16, Activation::Gelu, &mut o, isa);
                dw::<_, F16Arith>(&xh, g, &l16, Activation::Relu, &mut oh, isa);
                for tokens in [0, 1, 6, huge] {
                    pw::<_, F32Arith>(&x, tokens, g.dim, &l32, Activation::Relu, &mut o, isa);
                    pw::<_, F16Arith>(&xh, tokens, g.dim, &l16, Activation::Gelu, &mut oh, isa);
                }
            }
            for e in awkward::embeds() {
                let px = vec![9u8; n];
                let (mut o, mut scratch) = (vec![0f32; n], vec![0f32; n]);
                embed::<_, F32Arith>(
                    &px,
                    e,
                    16,
                    &l32,
                    Activation::Relu,
                    &mut o,
                    &mut scratch,
                    isa,
                );
                let mut oh = vec![0u16; n];
                embed::<_, F16Arith>(
                    &px,
                    e,
                    16,
                    &l16,
                    Activation::Relu,
                    &mut oh,
                    &mut scratch,
                    isa,
                );
            }
        }
    }
}
