//! The float patch embedding's shared suite: every ISA the running CPU has ([`isas`])
//! against the reference, bit for bit, for f32 and f16 storage, a geometry whose sizes
//! wrap, and no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::awkward;
use crate::kernels::float::tests::{
    awkward_layer, f16_bytes, f32_bytes, layers, params, rng, same_f16, same_f32, ACTS,
};
use crate::kernels::reference::{self, F16Arith, F32Arith, FloatArith};
use crate::kernels::testutil::isas;
use crate::le::{F16Le, F32Le};

/// The embedding driver on `isa`; on AVX2 the kernel itself, which must take every layer
/// of this suite.
#[allow(clippy::too_many_arguments)]
fn embed_on<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 | Isa::Avx512Vnni) {
        let tokens = g.grid(px.len(), dim, out.len()).map_or(0, |(h, w)| h * w);
        assert!(x86::embed::<W, M>(
            px,
            g,
            dim,
            l,
            act,
            out,
            scratch,
            (isa, 0..tokens)
        ));
        return;
    }
    embed::<W, M>(px, g, dim, l, act, out, scratch, isa);
}

/// [`embed_tokens`] over `parts` token ranges, last first, each into its rows of `out`
/// with a scratch of its own: one embedding split over cores.
#[allow(clippy::too_many_arguments)]
fn by_parts<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &[f32],
    (isa, parts): (Isa, usize),
) {
    let tokens = out.len() / dim;
    let ranges: Vec<_> = crate::cores::bounds(tokens, parts).collect();
    for r in ranges.into_iter().rev() {
        let mut sc = scratch.to_vec();
        let part = &mut out[r.start * dim..r.end * dim];
        embed_tokens::<W, M>(px, g, dim, l, act, part, &mut sc, isa, r);
    }
}

/// The embedding driver on every ISA against the reference, bit for bit: f32 outputs with
/// f32 and f16 weights, f16 outputs. Images that are and are not a multiple of the patch,
/// channel counts multiples of 16 and not, token counts across the AVX2 kernel's 6-patch
/// tiles, and a scratch of one patch only (AVX2: one patch at a time). Also split by
/// token ranges over 2–4 parts, run last part first.
#[test]
fn embed_drivers_match_reference() {
    let mut s = 0x5851_f42d_4c95_7f2du64;
    let isas = isas();
    for case in 0..60 {
        let patch = 1 + (rng(&mut s) % 7) as usize;
        let in_c = 1 + (rng(&mut s) % 3) as usize;
        let (th, tw) = (
            1 + (rng(&mut s) % 5) as usize,
            1 + (rng(&mut s) % 6) as usize,
        );
        let g = EmbedGeom {
            in_h: th * patch + (rng(&mut s) % patch as u64) as usize,
            in_w: tw * patch + (rng(&mut s) % patch as u64) as usize,
            in_c,
            patch,
        };
        let dim = if case % 2 == 0 {
            16 * (1 + (rng(&mut s) % 3) as usize)
        } else {
            1 + (rng(&mut s) % 50) as usize
        };
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
        let mut scratch = vec![
            0f32;
            if case % 5 == 4 {
                taps
            } else {
                embed_scratch_len(g)
            }
        ];
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        reference::embed_f::<_, F32Arith>(&px, g, dim, &l32, act, &mut a);
        for &isa in &isas {
            embed_on::<_, F32Arith>(&px, g, dim, &l32, act, &mut b, &mut scratch, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w32 {g:?} dim {dim} {act:?}");
            for parts in 2..=4 {
                b.fill(0.0);
                by_parts::<_, F32Arith>(&px, g, dim, &l32, act, &mut b, &scratch, (isa, parts));
                assert!(same_f32(&a, &b), "{isa:?} f32 w32 {parts} parts {g:?}");
            }
        }
        reference::embed_f::<_, F32Arith>(&px, g, dim, &l16, act, &mut a);
        for &isa in &isas {
            embed_on::<_, F32Arith>(&px, g, dim, &l16, act, &mut b, &mut scratch, isa);
            assert!(same_f32(&a, &b), "{isa:?} f32 w16 {g:?} dim {dim} {act:?}");
        }
        let (mut a, mut b) = (vec![0u16; n], vec![0u16; n]);
        reference::embed_f::<_, F16Arith>(&px, g, dim, &l16, act, &mut a);
        for &isa in &isas {
            embed_on::<_, F16Arith>(&px, g, dim, &l16, act, &mut b, &mut scratch, isa);
            assert!(same_f16(&a, &b), "{isa:?} f16 {g:?} dim {dim} {act:?}");
            for parts in 2..=4 {
                b.fill(0);
                by_parts::<_, F16Arith>(&px, g, dim, &l16, act, &mut b, &scratch, (isa, parts));
                assert!(same_f16(&a, &b), "{isa:?} f16 {parts} parts {g:?}");
            }
        }
    }
}

/// Geometry whose sizes wrap in usize must not pass the SIMD paths' length checks, nor
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
    for isa in isas() {
        let (out, guard) = buf.split_at_mut(16);
        embed::<_, F32Arith>(&px, g, 16, &l, Activation::Relu, out, &mut scratch, isa);
        assert!(out.iter().chain(guard.iter()).all(|&v| v == 7.0), "{isa:?}");
    }
}

/// The embedding driver (every ISA, and the reference) neither panics nor loops without
/// end on any geometry: zero channels or patch, a patch larger than the image, huge sizes,
/// short or empty buffers.
#[test]
fn embed_driver_never_panics_on_any_shape() {
    let w = f32_bytes(&[0.5; 16 * 9]);
    let w16 = f16_bytes(&[0.5; 16 * 9]);
    let ones = f32_bytes(&[1.0; 16]);
    let (l32, l16) = (
        awkward_layer(F32Le(&w), &ones),
        awkward_layer(F16Le(&w16), &ones),
    );
    for isa in isas() {
        for n in [0, 5, 96, 200] {
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
