//! The kernels' shared test helpers: the ISAs to test ([`isas`]), a xorshift generator and
//! random int8 layers within the blob reader's bounds.
#![forbid(unsafe_code)]

use std::vec::Vec;

use super::reference::QuantLayer;
use super::Isa;
use crate::le::I32Le;
use crate::Activation;

/// Every ISA level the running CPU has, for the per-op suites to run against the
/// reference. With `CMX_REQUIRE_DOTPROD=1` (aarch64), `CMX_REQUIRE_AVX2=1` or
/// `CMX_REQUIRE_AVX512VNNI=1` (x86_64) it fails where that level was not detected, so that
/// CI cannot skip its kernels silently.
pub(crate) fn isas() -> Vec<Isa> {
    let required = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    if cfg!(target_arch = "aarch64") && required("CMX_REQUIRE_DOTPROD") {
        assert!(
            Isa::NeonDot.available(),
            "CMX_REQUIRE_DOTPROD is set but the CPU has no dot product"
        );
    }
    if cfg!(target_arch = "x86_64") && required("CMX_REQUIRE_AVX2") {
        assert!(
            Isa::Avx2.available(),
            "CMX_REQUIRE_AVX2 is set but AVX2 (with FMA, F16C) was not detected"
        );
    }
    if cfg!(target_arch = "x86_64") && required("CMX_REQUIRE_AVX512VNNI") {
        assert!(
            Isa::Avx512Vnni.available(),
            "CMX_REQUIRE_AVX512VNNI is set but AVX-512 (F, BW, VL) with VNNI was not detected"
        );
    }
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

pub(crate) struct Layer {
    pub(crate) w: Vec<i8>,
    bias: Vec<u8>,
    rq: Vec<u8>,
    table: Vec<u8>,
    zp: [i32; 3],
}

impl Layer {
    pub(crate) fn random(
        r: &mut Rng,
        wlen: usize,
        dim: usize,
        depthwise: bool,
        gelu: bool,
    ) -> Layer {
        let w: Vec<i8> = (0..wlen).map(|_| r.range(-127, 127) as i8).collect();
        let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bias: Vec<i32> = (0..dim).map(|_| r.range(-50_000, 50_000) as i32).collect();
        // Half the layers shift no channel left (the kernels skip the SQSHLs there).
        let no_left = r.range(0, 1) == 0;
        let rq: Vec<[i32; 6]> = (0..dim)
            .map(|_| {
                let sh_pre = r.range(-3, 12) as i32;
                [
                    r.range(1 << 30, (1 << 31) - 1) as i32,
                    if no_left { sh_pre.max(0) } else { sh_pre },
                    r.range(-(1 << 14), 1 << 14) as i32,
                    r.range(-(1 << 20), 1 << 20) as i32,
                    r.range(0, 20) as i32,
                    if depthwise {
                        r.range(-(1 << 12), 1 << 12) as i32
                    } else {
                        0
                    },
                ]
            })
            .collect();
        let table: Vec<u8> = if gelu {
            (0..256)
                .flat_map(|_| (r.range(-32768, 32767) as i16).to_le_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let zp = [
            r.range(-128, 127) as i32,
            r.range(-128, 127) as i32,
            r.range(-128, 127) as i32,
        ];
        Layer {
            w,
            bias: le(&bias),
            rq: le(&(0..6)
                .flat_map(|k| rq.iter().map(move |v| v[k]))
                .collect::<Vec<_>>()),
            table,
            zp,
        }
    }
    pub(crate) fn view(&self) -> QuantLayer<'_> {
        QuantLayer {
            w: &self.w,
            bias: I32Le(&self.bias),
            requant: I32Le(&self.rq),
            zp_in: self.zp[0],
            zp_z: self.zp[1],
            zp_out: self.zp[2],
            table: &self.table,
        }
    }
}

impl Layer {
    /// A layer at the edges of the blob reader's bounds: requantisation fields drawn from
    /// their limits (`m_pre` 0, 1, 2^30, 2^31 − 1; `sh_pre` −8 … 31; `|m_post|` 2^14,
    /// `|b_post|` 2^29, `sh_post` 0 … 30, `|m_res|` 2^20) or at random within them, zero
    /// points at ±128 or random, and biases as large as the accumulator bound allows for
    /// `taps` inputs per output (`|bias| + 128·127·taps < 2^31`), so that accumulators
    /// span the i32 range and every saturating step (left shift, i16 activation, i8
    /// output) is reached.
    pub(crate) fn extreme(
        r: &mut Rng,
        wlen: usize,
        dim: usize,
        taps: usize,
        depthwise: bool,
        gelu: bool,
    ) -> Layer {
        let mut pick = |edges: &[i64], lo: i64, hi: i64| {
            let i = r.range(0, edges.len() as i64) as usize;
            edges.get(i).copied().unwrap_or_else(|| r.range(lo, hi))
        };
        let max_bias = (1i64 << 31) - 1 - 128 * 127 * taps as i64;
        let bias: Vec<i32> = (0..dim)
            .map(|_| pick(&[max_bias, -max_bias, 0], -max_bias, max_bias) as i32)
            .collect();
        let recs: Vec<[i32; 6]> = (0..dim)
            .map(|_| {
                [
                    pick(&[0, 1, 1 << 30, (1 << 31) - 1], 0, (1 << 31) - 1) as i32,
                    pick(&[-8, -1, 0, 1, 30, 31], -8, 31) as i32,
                    pick(&[-(1 << 14), 1 << 14, 0], -(1 << 14), 1 << 14) as i32,
                    pick(&[-(1 << 29), 1 << 29], -(1 << 29), 1 << 29) as i32,
                    pick(&[0, 30], 0, 30) as i32,
                    if depthwise {
                        pick(&[-(1 << 20), 1 << 20], -(1 << 20), 1 << 20) as i32
                    } else {
                        0
                    },
                ]
            })
            .collect();
        let zp: [i32; 3] = core::array::from_fn(|_| pick(&[-128, 127], -128, 127) as i32);
        let w = (0..wlen).map(|_| r.range(-127, 127) as i8).collect();
        let table = if gelu {
            (0..256)
                .flat_map(|_| (r.range(-32768, 32767) as i16).to_le_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        Layer {
            w,
            bias: le(&bias),
            rq: le(&(0..6)
                .flat_map(|k| recs.iter().map(move |v| v[k]))
                .collect::<Vec<_>>()),
            table,
            zp,
        }
    }
}

pub(crate) fn act(gelu: bool) -> Activation {
    if gelu {
        Activation::Gelu
    } else {
        Activation::Relu
    }
}

/// Bias, field-major requantisation records and a GELU table for `dim` channels (the
/// drivers' suites: a narrower range of shifts than [`Layer::random`]).
pub(crate) fn layer_bytes(s: &mut Rng, dim: usize, depthwise: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let le = |v: Vec<i32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let bias = le((0..dim).map(|_| s.range(-40_000, 40_000) as i32).collect());
    // Half the layers shift no channel left (the NEON kernels skip the SQSHLs there).
    let no_left = s.range(0, 1) == 0;
    let recs: Vec<[i32; 6]> = (0..dim)
        .map(|_| {
            let sh_pre = s.range(-2, 10) as i32;
            [
                s.range(1 << 30, (1 << 31) - 1) as i32,
                if no_left { sh_pre.max(0) } else { sh_pre },
                s.range(-(1 << 14), 1 << 14) as i32,
                s.range(-(1 << 20), 1 << 20) as i32,
                s.range(0, 18) as i32,
                if depthwise {
                    s.range(-(1 << 12), 1 << 12) as i32
                } else {
                    0
                },
            ]
        })
        .collect();
    let rq = le((0..6)
        .flat_map(|k| recs.iter().map(move |v| v[k]))
        .collect());
    let table: Vec<u8> = (0..256)
        .flat_map(|_| (s.range(-32768, 32767) as i16).to_le_bytes())
        .collect();
    (bias, rq, table)
}

/// The never-panic tests' layers: every parameter at an extreme (zero points of ±2^31,
/// requantisation fields from `i32::MIN` to `i32::MAX`, weights −128, a GELU table), one
/// with empty sections, and one that every SIMD level takes for the awkward shapes that are
/// valid (16 channels, up to 16 inputs or a 3×3 kernel), so that their own length checks
/// meet the others.
pub(crate) struct Awkward {
    w: Vec<i8>,
    pub(crate) bias: Vec<u8>,
    rq: Vec<u8>,
    table: [u8; 512],
    valid: Layer,
}

/// The values [`Awkward`]'s fields cycle through.
pub(crate) const EXTREME: [i32; 7] = [i32::MIN, -1, 0, 1, 31, 64, i32::MAX];

impl Awkward {
    pub(crate) fn new() -> Awkward {
        Awkward {
            w: std::vec![-128i8; 64],
            bias: (0..16).flat_map(|i| EXTREME[i % 7].to_le_bytes()).collect(),
            rq: (0..6 * 16)
                .flat_map(|i| EXTREME[i % EXTREME.len()].to_le_bytes())
                .collect(),
            table: [0xff; 512],
            valid: Layer::random(&mut Rng(0xa11_0ca7_ed00_0001), 16 * 16, 16, true, true),
        }
    }

    /// The extreme layer, the empty one and the valid one.
    pub(crate) fn layers(&self) -> [QuantLayer<'_>; 3] {
        [
            QuantLayer {
                w: &self.w,
                bias: I32Le(&self.bias),
                requant: I32Le(&self.rq),
                zp_in: i32::MIN,
                zp_z: i32::MAX,
                zp_out: i32::MIN,
                table: &self.table,
            },
            QuantLayer {
                w: &[],
                bias: I32Le(&[]),
                requant: I32Le(&[]),
                zp_in: 0,
                zp_z: 0,
                zp_out: 0,
                table: &[],
            },
            self.valid.view(),
        ]
    }

    /// The weights (−128, which no blob has), as the head's class weights.
    pub(crate) fn w(&self) -> &[i8] {
        &self.w
    }
}
