//! The int8 GEMM's shared suite: every ISA the running CPU has ([`isas`]) against the
//! reference, byte for byte: the kernels on random shapes (ragged `k`, `n` and token
//! counts), the in-place pointwise and embedding drivers, and no panic on any shape.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use super::*;
use crate::kernels::parts::ChannelsMut;
use crate::kernels::reference::{self, QuantLayer};
use crate::kernels::testutil::{act, isas, layer_bytes, Awkward, Layer, Rng};
use crate::kernels::{awkward, gemm_index, gemm_packed_len};
use crate::le::I32Le;

/// The kernel of every ISA on random layers: square (pointwise) and rectangular
/// (embedding-like) shapes, multiples of 16 and 4 and ragged sizes, 1..=10 tokens, GELU
/// and ReLU, extreme requantisation records.
#[test]
fn gemm_kernels_match_the_reference() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let isas = isas();
    for case in 0..300 {
        let mut size = || match case % 6 {
            0 => 16 * r.range(1, 4) as usize,
            1 => 4 * r.range(1, 20) as usize,
            _ => r.range(1, 70) as usize,
        };
        // Square (pointwise) in half the cases, rectangular (embedding-like) otherwise.
        let n = size();
        let k = if case % 4 < 2 { n } else { size() };
        let tokens = r.range(1, 11) as usize;
        let gelu = case % 2 == 0;
        let mut l = Layer::random(&mut r, gemm_packed_len(n, k), n, false, gelu);
        // Zero the packing padding, as the blob reader guarantees.
        let mut w = vec![0i8; gemm_packed_len(n, k)];
        for o in 0..n {
            for i in 0..k {
                let at = gemm_index(o, i, k);
                w[at] = l.w[at];
            }
        }
        l.w = w;
        let x: Vec<i8> = (0..tokens * k).map(|_| r.range(-128, 127) as i8).collect();
        let mut want = vec![0i8; tokens * n];
        reference::gemm_i8(&x, tokens, k, n, &l.view(), act(gelu), &mut want);
        for &isa in &isas {
            let view = l.view();
            let g = Gemm::new(&view, k, n, act(gelu), isa);
            // Every SIMD level has a kernel for every layer the reader accepts.
            assert!(isa == Isa::Scalar || !g.is_reference(), "{isa:?}");
            assert_eq!(g.is_vnni(), isa == Isa::Avx512Vnni, "{isa:?}");
            let mut got = vec![0i8; tokens * n];
            g.run(&x, tokens, &mut got);
            assert_eq!(got, want, "{isa:?}: k {k} n {n} tokens {tokens}");
        }
    }
}

/// The kernel of every ISA at the edges of the reader's bounds (`Layer::extreme`:
/// accumulators over the whole i32 range, every saturation reached, extreme zero points
/// and requantisation fields), with input counts across the x86 kernels' tile limits
/// (AVX2: `k` up to 8192 runs fewer tokens per tile, past it the reference runs; AVX-512
/// VNNI: the same up to 16384, past it the AVX2 kernel's reference).
#[test]
fn gemm_kernels_match_the_reference_at_the_limits() {
    let mut r = Rng(0x1ce_b00c_5eed_f00d);
    let isas = isas();
    for case in 0..160 {
        let n = match case % 4 {
            0 => 16 * r.range(1, 3) as usize,
            _ => r.range(1, 40) as usize,
        };
        let k = match case % 10 {
            0 => r.range(2040, 2060) as usize,
            1 => r.range(4090, 4100) as usize,
            2 => r.range(8185, 8200) as usize,
            3 => r.range(16380, 16392) as usize,
            _ => r.range(1, 100) as usize,
        };
        let tokens = r.range(1, 9) as usize;
        let gelu = case % 2 == 1;
        let mut l = Layer::extreme(&mut r, gemm_packed_len(n, k), n, k, false, gelu);
        let mut w = vec![0i8; gemm_packed_len(n, k)];
        for o in 0..n {
            for i in 0..k {
                let at = gemm_index(o, i, k);
                w[at] = l.w[at];
            }
        }
        l.w = w;
        let x: Vec<i8> = (0..tokens * k)
            .map(|_| match case % 3 {
                0 => [-128, 127][r.range(0, 1) as usize],
                _ => r.range(-128, 127) as i8,
            })
            .collect();
        let mut want = vec![0i8; tokens * n];
        reference::gemm_i8(&x, tokens, k, n, &l.view(), act(gelu), &mut want);
        for &isa in &isas {
            let view = l.view();
            let g = Gemm::new(&view, k, n, act(gelu), isa);
            // Past 8192 inputs the AVX2 kernel leaves the layer to the reference; the VNNI
            // kernel takes up to 16384.
            let limit = match isa {
                Isa::Avx2 => 8192,
                Isa::Avx512Vnni => 16384,
                _ => usize::MAX,
            };
            if k <= limit {
                assert!(isa == Isa::Scalar || !g.is_reference(), "{isa:?} k {k}");
            }
            assert_eq!(
                g.is_vnni(),
                isa == Isa::Avx512Vnni && k <= 16384,
                "{isa:?} k {k}"
            );
            let mut got = vec![0i8; tokens * n];
            g.run(&x, tokens, &mut got);
            assert_eq!(
                got, want,
                "{isa:?}: k {k} n {n} tokens {tokens} case {case}"
            );
        }
    }
}

#[test]
fn embedding_driver_equals_the_reference() {
    let mut s = Rng(0x5151_7e57_0bad_f00d);
    for case in 0..80 {
        let dim = [1, 5, 16, 32, 40][case % 5];
        let patch = s.range(1, 7) as usize;
        let in_c = s.range(1, 4) as usize;
        let side =
            |s: &mut Rng| patch * s.range(1, 5) as usize + s.range(0, patch as i64 - 1) as usize;
        let (in_h, in_w) = (side(&mut s), side(&mut s));
        let e = EmbedGeom {
            in_h,
            in_w,
            in_c,
            patch,
        };
        let taps = e.taps();
        let mut w = vec![0i8; gemm_packed_len(dim, taps)];
        for o in 0..dim {
            for i in 0..taps {
                w[gemm_index(o, i, taps)] = s.range(-127, 127) as i8;
            }
        }
        let (bias, rq, table) = layer_bytes(&mut s, dim, false);
        let gelu = case % 2 == 1;
        let act = if gelu {
            Activation::Gelu
        } else {
            Activation::Relu
        };
        let l = QuantLayer {
            w: &w,
            bias: I32Le(&bias),
            requant: I32Le(&rq),
            zp_in: -128,
            zp_z: s.range(-128, 127) as i32,
            zp_out: s.range(-128, 127) as i32,
            table: if gelu { &table } else { &[] },
        };
        let px: Vec<u8> = (0..in_h * in_w * in_c)
            .map(|_| s.range(0, 255) as u8)
            .collect();
        let n = (in_h / patch) * (in_w / patch) * dim;
        let mut want = vec![0i8; n];
        reference::embed_i8(&px, e, dim, &l, act, &mut want);
        for isa in isas() {
            let mut got = vec![0i8; n];
            let mut scratch = vec![0i8; embed_scratch_len(e)];
            embed_i8(&px, e, dim, &l, act, &mut scratch, &mut got, isa);
            assert_eq!(got, want, "{isa:?} {e:?} dim {dim}");
        }
    }
}

#[test]
fn inplace_pointwise_equals_the_reference() {
    let mut s = Rng(0x0bad_cafe_f00d_1234);
    for case in 0..80 {
        let dim = [1, 4, 13, 16, 31, 48][case % 6];
        let tokens = s.range(1, 13) as usize;
        let mut w = vec![0i8; gemm_packed_len(dim, dim)];
        for o in 0..dim {
            for i in 0..dim {
                w[gemm_index(o, i, dim)] = s.range(-127, 127) as i8;
            }
        }
        let (bias, rq, table) = layer_bytes(&mut s, dim, false);
        let l = QuantLayer {
            w: &w,
            bias: I32Le(&bias),
            requant: I32Le(&rq),
            zp_in: 0,
            zp_z: s.range(-128, 127) as i32,
            zp_out: s.range(-128, 127) as i32,
            table: &table,
        };
        let x: Vec<i8> = (0..tokens * dim)
            .map(|_| s.range(-128, 127) as i8)
            .collect();
        let mut want = vec![0i8; x.len()];
        reference::gemm_i8(&x, tokens, dim, dim, &l, Activation::Gelu, &mut want);
        for isa in isas() {
            let mut a = x.clone();
            let mut scratch = vec![0i8; PW_TILE * dim];
            pw_i8_inplace(&mut a, &mut scratch, tokens, dim, &l, Activation::Gelu, isa);
            assert_eq!(a, want, "{isa:?} dim {dim} tokens {tokens}");
        }
    }
}

/// The in-place pointwise driver with more scratch than `PW_TILE` tokens (the AVX2 panels:
/// one micro-tile, several, a partial last panel and micro-tile, the panel cap, a scratch
/// not aligned; weights widened once per panel up to 1024 inputs, and 1028 above that),
/// both activations, against the reference.
#[test]
fn inplace_pointwise_panels_equal_the_reference() {
    let mut s = Rng(0x7a11_e15e_c0de_0042);
    for case in 0..63 {
        let dim = [1, 4, 13, 16, 31, 48, 100, 768, 1028][case % 9];
        let tokens = match case % 3 {
            0 => s.range(1, 13) as usize,
            1 => s.range(40, 80) as usize,
            _ => s.range(1, 160) as usize,
        };
        let gelu = case % 2 == 1;
        let act = if gelu {
            Activation::Gelu
        } else {
            Activation::Relu
        };
        let mut w = vec![0i8; gemm_packed_len(dim, dim)];
        for o in 0..dim {
            for i in 0..dim {
                w[gemm_index(o, i, dim)] = s.range(-127, 127) as i8;
            }
        }
        let (bias, rq, table) = layer_bytes(&mut s, dim, false);
        let l = QuantLayer {
            w: &w,
            bias: I32Le(&bias),
            requant: I32Le(&rq),
            zp_in: 0,
            zp_z: s.range(-128, 127) as i32,
            zp_out: s.range(-128, 127) as i32,
            table: if gelu { &table } else { &[] },
        };
        let x: Vec<i8> = (0..tokens * dim)
            .map(|_| s.range(-128, 127) as i8)
            .collect();
        let mut want = vec![0i8; x.len()];
        reference::gemm_i8(&x, tokens, dim, dim, &l, act, &mut want);
        let kp = dim.div_ceil(4) * 4;
        // Bytes past the panel's 32-byte alignment: PW_TILE tokens, 6 i16 tokens, a random
        // count, more than the panel cap.
        let sizes = [
            PW_TILE * dim,
            12 * kp + 31,
            s.range(12, 200) as usize * kp + 31,
            300 * 1024,
        ];
        for isa in isas() {
            for (i, &len) in sizes.iter().enumerate() {
                let mut a = x.clone();
                let mut scratch = vec![0i8; len + 1];
                let off = i % 2; // an odd start too
                pw_i8_inplace(&mut a, &mut scratch[off..], tokens, dim, &l, act, isa);
                assert_eq!(a, want, "{isa:?} dim {dim} tokens {tokens} scratch {len}");
            }
        }
    }
}

/// No GEMM driver (nor the reference kernels) panics or overflows, whatever the shapes and
/// parameters: short or empty buffers, zero and huge sizes, extreme zero points and
/// requantisation fields (run in debug builds too, where an overflow would panic).
#[test]
fn drivers_never_panic_on_any_shape() {
    let awk = Awkward::new();
    let huge = awkward::HUGE;
    for isa in isas() {
        for l in &awk.layers() {
            for act in [Activation::Relu, Activation::Gelu] {
                for g in awkward::grids() {
                    for (n, m) in [(0, 0), (8, 8), (96, 64), (96, 4096)] {
                        let (mut a, mut scratch) = (vec![5i8; n], vec![0i8; m]);
                        for t in [0, 1, 6, huge] {
                            pw_i8_inplace(&mut a, &mut scratch, t, g.dim, l, act, isa);
                            let mut o = vec![0i8; n];
                            reference::gemm_i8(&a, t, g.dim, g.dim, l, act, &mut o);
                            let (k, h) = (g.dim, g.dim.saturating_add(3));
                            let mut resid = vec![0i16; n];
                            let add = ResAdd { zp: 0, m: 1, sh: 0 };
                            for transposed in [false, true] {
                                mlp_i8(
                                    &a,
                                    t,
                                    k,
                                    h,
                                    k,
                                    l,
                                    l,
                                    add,
                                    &mut resid,
                                    transposed,
                                    &mut scratch,
                                    isa,
                                );
                            }
                        }
                    }
                }
                for e in awkward::embeds() {
                    for (n, m) in [(0, 0), (16, 64), (64, 4096)] {
                        let px = vec![200u8; n];
                        let (mut out, mut scratch) = (vec![0i8; m], vec![0i8; m]);
                        embed_i8(&px, e, 16, l, act, &mut scratch, &mut out, isa);
                        reference::embed_i8(&px, e, 16, l, act, &mut out);
                    }
                }
            }
        }
    }
}

/// One random int8 MLP layer of `n` outputs over `k` inputs (GELU by table), packed with
/// zero padding as the blob reader guarantees: `(w, bias, requant, table)`.
fn mlp_layer(r: &mut Rng, n: usize, k: usize) -> (Vec<i8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut w = vec![0i8; gemm_packed_len(n, k)];
    for o in 0..n {
        for i in 0..k {
            w[gemm_index(o, i, k)] = r.range(-127, 127) as i8;
        }
    }
    let (bias, rq, table) = layer_bytes(r, n, false);
    (w, bias, rq, table)
}

/// An MLP split by rows over 2–4 parts, last part first, each with its own scratch, gives
/// the whole MLP's residual stream on every ISA: the channel MLP (rows are tokens, each part
/// adds into its tokens) and the token MLP (rows are channels of the transposed output,
/// each part adds into its channels of every token through a `ChannelsMut` view).
#[test]
fn an_mlp_split_by_rows_matches_the_whole() {
    let mut r = Rng(0x51ed_270b_a3c4_1e77);
    for case in 0..24 {
        let rows = r.range(1, 40) as usize;
        let (k, hidden, n) = (
            r.range(1, 40) as usize,
            r.range(1, 50) as usize,
            r.range(1, 40) as usize,
        );
        let (w1, b1, rq1, t1) = mlp_layer(&mut r, hidden, k);
        let (w2, b2, rq2, t2) = mlp_layer(&mut r, n, hidden);
        let layer = |w, b, rq, t| QuantLayer {
            w,
            bias: I32Le(b),
            requant: I32Le(rq),
            zp_in: 0,
            zp_z: 3,
            zp_out: -5,
            table: t,
        };
        let fc1 = layer(&w1, &b1, &rq1, &t1);
        let fc2 = layer(&w2, &b2, &rq2, &t2);
        let add = ResAdd {
            zp: -5,
            m: r.range(1, 1 << 20) as i32,
            sh: r.range(0, 24) as i32,
        };
        let x: Vec<i8> = (0..rows * k).map(|_| r.range(-128, 127) as i8).collect();
        let resid0: Vec<i16> = (0..rows * n)
            .map(|_| r.range(-30_000, 30_000) as i16)
            .collect();
        let transposed = case % 2 == 1;
        for isa in isas() {
            let mut want = resid0.clone();
            let mut sc = vec![0i8; mlp_scratch_len(hidden, n)];
            mlp_i8(
                &x, rows, k, hidden, n, &fc1, &fc2, add, &mut want, transposed, &mut sc, isa,
            );
            for parts in 2..=4 {
                let mut got = resid0.clone();
                let (shape, layers) = ((k, hidden, n), (&fc1, &fc2, add));
                if transposed {
                    // The stream is n tokens × rows channels; parts take channel ranges.
                    let views = ChannelsMut::split(&mut got, rows, 3, parts);
                    for mut v in views.into_iter().rev() {
                        let rr = v.channels();
                        let to = MlpRows::Channels(&mut v);
                        mlp_i8_rows(&x, rr, shape, layers, to, &mut sc, isa);
                    }
                } else {
                    let ranges: Vec<_> = crate::cores::bounds(rows, parts).collect();
                    for rr in ranges.into_iter().rev() {
                        let to = MlpRows::Tokens(&mut got[rr.start * n..rr.end * n]);
                        mlp_i8_rows(&x, rr, shape, layers, to, &mut sc, isa);
                    }
                }
                assert_eq!(got, want, "{isa:?} {parts} parts, transposed {transposed}");
            }
            assert_ne!(want, resid0, "the MLP added nothing ({isa:?})");
        }
    }
}
