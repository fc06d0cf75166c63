//! The runtime on the committed MNIST example blobs (`examples/mnist/`), checked against
//! PyTorch's logits and the digits' labels. These run on every target the runtime is tested
//! on — x86_64 and aarch64 under qemu — so they show that the portable kernels give the
//! same answers everywhere: int8 bit for bit, floats within 1e-4 of PyTorch.
#![forbid(unsafe_code)]

use std::vec;
use std::vec::Vec;

use crate::kernels::Isa;
use crate::{Error, Model, Precision};

static INT8: &[u8] = include_bytes!("../examples/mnist/convmixer-mnist-int8.cmx");
static FP16: &[u8] = include_bytes!("../examples/mnist/convmixer-mnist-fp16.cmx");
static FP32: &[u8] = include_bytes!("../examples/mnist/convmixer-mnist-fp32.cmx");
static IMAGES: &[u8] = include_bytes!("../examples/mnist/heldout-images.idx3-ubyte");
static LABELS: &[u8] = include_bytes!("../examples/mnist/heldout-labels.idx1-ubyte");
static EXPECTED: &str = include_str!("../examples/mnist/expected.json");

const PIXELS: usize = 28 * 28;

fn image(i: usize) -> &'static [u8] {
    &IMAGES[16 + i * PIXELS..16 + (i + 1) * PIXELS]
}

fn logits(m: &Model, px: &[u8]) -> Vec<f32> {
    let mut arena = vec![0u8; m.arena_len()];
    let mut out = vec![0f32; usize::from(m.header().classes)];
    m.logits(px, &mut arena, &mut out).expect("inference");
    out
}

struct Sample {
    index: usize,
    torch: Vec<f32>,
    int8_bits: Vec<u32>,
}

fn expected() -> (f64, Vec<Sample>) {
    let doc: serde_json::Value = serde_json::from_str(EXPECTED).expect("expected.json");
    let nums = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect()
    };
    let samples = doc["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            index: s["idx_position"].as_u64().expect("index") as usize,
            torch: nums(&s["torch_logits_bits"])
                .into_iter()
                .map(|v| f32::from_bits(v as u32))
                .collect(),
            int8_bits: nums(&s["int8_logits_bits"])
                .into_iter()
                .map(|v| v as u32)
                .collect(),
        })
        .collect();
    (
        doc["torch_fp32_heldout_top1"].as_f64().expect("top1"),
        samples,
    )
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn blobs_describe_the_mnist_model() {
    for (blob, p) in [
        (INT8, Precision::Int8),
        (FP16, Precision::F16),
        (FP32, Precision::F32),
    ] {
        let m = Model::from_bytes(blob).expect("valid blob");
        let h = m.header();
        assert_eq!(
            (h.precision, h.in_c, h.in_h, h.in_w, h.classes),
            (p, 1, 28, 28, 10)
        );
        assert_eq!((h.dim, h.depth, h.kernel, h.patch), (48, 4, 5, 2));
        assert_eq!(m.label(7), Some("7"));
        assert_eq!(m.input_len(), PIXELS);
    }
}

#[test]
fn fp32_blob_matches_pytorch() {
    let m = Model::from_bytes(FP32).expect("blob");
    let (_, samples) = expected();
    for s in &samples {
        let got = logits(&m, image(s.index));
        let e = max_abs(&got, &s.torch);
        assert!(e <= 1e-4, "sample {}: fp32 max-abs {e} vs PyTorch", s.index);
    }
}

#[test]
fn fp16_blob_is_close_to_pytorch() {
    let m = Model::from_bytes(FP16).expect("blob");
    let (_, samples) = expected();
    // f16 storage with f32 arithmetic, then binary16 arithmetic (emulated exactly where the
    // CPU lacks FEAT_FP16): the latter rounds every step to 11 bits (max-abs 0.0143 vs
    // 0.0043 on these samples).
    for f16_arith in [false, true] {
        let m = m.with_f16_arithmetic(f16_arith);
        let mut worst = 0f32;
        for s in &samples {
            let got = logits(&m, image(s.index));
            let e = max_abs(&got, &s.torch);
            worst = worst.max(e);
            assert!(
                e <= 0.05,
                "sample {}: fp16 (f16 arithmetic: {f16_arith}) max-abs {e} vs PyTorch",
                s.index
            );
        }
        std::println!("fp16 blob, f16 arithmetic {f16_arith}: max-abs {worst} vs PyTorch");
    }
}

/// Float blobs give the same bits whatever the ISA, for each arithmetic.
#[test]
fn float_blobs_are_bit_exact_across_isas() {
    let (_, samples) = expected();
    for (blob, arith) in [(FP32, false), (FP16, false), (FP16, true)] {
        let m = Model::from_bytes(blob)
            .expect("blob")
            .with_f16_arithmetic(arith);
        let scalar = m.with_isa(Isa::Scalar).expect("scalar");
        for s in samples.iter().take(8) {
            let (a, b) = (logits(&m, image(s.index)), logits(&scalar, image(s.index)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(
                bits(&a),
                bits(&b),
                "sample {} ({:?}, f16 arithmetic {arith})",
                s.index,
                m.isa()
            );
        }
    }
}

#[test]
fn int8_logits_are_bit_exact_and_classify_agrees() {
    let m = Model::from_bytes(INT8).expect("blob");
    let (_, samples) = expected();
    let mut arena = vec![0u8; m.arena_len()];
    for s in &samples {
        let got: Vec<u32> = logits(&m, image(s.index))
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(got, s.int8_bits, "sample {}", s.index);
        let top = m
            .classify::<3>(image(s.index), &mut arena)
            .expect("classify");
        assert_eq!(top.len(), 3);
        let best = top[0].0 as usize;
        let want = s
            .torch
            .iter()
            .enumerate()
            .fold(0, |b, (i, &v)| if v > s.torch[b] { i } else { b });
        assert_eq!(
            best, want,
            "sample {}: int8 top-1 differs from PyTorch",
            s.index
        );
        assert!(top[0].1 > 0.0 && top[0].1 <= 1.0);
    }
}

#[test]
fn every_available_isa_gives_the_same_int8_logits() {
    use crate::kernels::Isa;
    let (_, samples) = expected();
    let mut levels = 0;
    for isa in Isa::ALL {
        let Ok(m) = Model::from_bytes(INT8).expect("blob").with_isa(isa) else {
            continue;
        };
        levels += 1;
        for s in &samples {
            let got: Vec<u32> = logits(&m, image(s.index))
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(got, s.int8_bits, "{isa:?}, sample {}", s.index);
        }
    }
    // Every level the CPU has (CMX_REQUIRE_* enforced), and a SIMD one at least on aarch64.
    let want = (crate::kernels::testutil::isas().len()).max(if cfg!(target_arch = "aarch64") {
        2
    } else {
        1
    });
    assert!(levels >= want, "{levels} kernel levels ran");
}

#[test]
fn int8_accuracy_on_held_out_digits() {
    // Every 4th held-out digit (499 of 1,996) keeps the qemu run short; the full set is
    // measured on the host by tests/mnist_accuracy.rs.
    let m = Model::from_bytes(INT8).expect("blob");
    let (torch_top1, _) = expected();
    let n = (IMAGES.len() - 16) / PIXELS;
    assert_eq!(n, LABELS.len() - 8);
    let mut arena = vec![0u8; m.arena_len()];
    let (mut seen, mut correct) = (0usize, 0usize);
    for i in (0..n).step_by(4) {
        let top = m.classify::<1>(image(i), &mut arena).expect("classify");
        correct += usize::from(usize::from(top[0].0) == usize::from(LABELS[8 + i]));
        seen += 1;
    }
    let top1 = correct as f64 / seen as f64;
    assert!(
        top1 >= torch_top1 - 0.015,
        "int8 top-1 {top1:.4} on {seen} digits vs PyTorch {torch_top1:.4}"
    );
}

#[test]
fn arena_is_sized_before_running() {
    let m = Model::from_bytes(INT8).expect("blob");
    let need = m.arena_len();
    let mut small = vec![0u8; need - 1];
    // Even a misaligned start must fit: arena_len includes the alignment slack.
    let mut big = vec![0u8; need + 1];
    assert!(matches!(
        m.classify::<1>(image(0), &mut small),
        Err(Error::ArenaTooSmall { .. })
    ));
    let a = m
        .classify::<1>(image(0), &mut big[1..])
        .expect("misaligned arena");
    let b = m.classify::<1>(image(0), &mut big[..need]).expect("arena");
    assert_eq!(a, b);
}

// ----------------------------------------------------------------------------------------
// The MLP-Mixer blobs (`examples/mixer-mnist/`): the same API, the same kernels.

static MIXERS: [(&str, &[u8]); 2] = [
    (
        "lucid",
        include_bytes!("../examples/mixer-mnist/mixer-lucid-int8.cmx"),
    ),
    (
        "timm",
        include_bytes!("../examples/mixer-mnist/mixer-timm-int8.cmx"),
    ),
];
static MIXER_EXPECTED: &str = include_str!("../examples/mixer-mnist/expected.json");

/// `(PyTorch top-1, samples)` of MLP-Mixer `layout` from its expected.json.
fn mixer_expected(layout: &str) -> (f64, Vec<Sample>) {
    let doc: serde_json::Value = serde_json::from_str(MIXER_EXPECTED).expect("expected.json");
    let m = &doc["models"][layout];
    let bits = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_u64().expect("bits") as u32)
            .collect()
    };
    let samples = m["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| Sample {
            index: s["idx_position"].as_u64().expect("index") as usize,
            torch: bits(&s["torch_logits_bits"])
                .into_iter()
                .map(f32::from_bits)
                .collect(),
            int8_bits: bits(&s["int8_logits_bits"]),
        })
        .collect();
    let correct = m["torch_fp32_heldout_correct"].as_u64().expect("correct");
    let n = m["heldout"].as_u64().expect("heldout");
    (correct as f64 / n as f64, samples)
}

#[test]
fn mixer_blobs_describe_the_models() {
    use crate::blob::Arch;
    for (layout, blob) in MIXERS {
        let m = Model::from_bytes(blob).expect("blob");
        let h = m.header();
        assert_eq!(h.arch, Arch::MlpMixer, "{layout}");
        assert_eq!(
            (h.dim, h.depth, h.patch, h.tokens(), h.classes),
            (64, 4, 4, 49, 10)
        );
        let hidden = if layout == "lucid" {
            (256, 32)
        } else {
            (32, 256)
        };
        assert_eq!((h.token_hidden, h.channel_hidden), hidden, "{layout}");
        assert_eq!(h.precision, Precision::Int8);
        assert_eq!(m.label(3), Some("3"));
    }
}

/// NEON (and dot-product NEON where the CPU has it) against the scalar reference: the
/// logits and every residual-stream trace bit for bit, and the logits expected.json holds
/// (computed on x86_64 by tests/examples_current.rs).
#[test]
fn mixer_int8_is_bit_exact_on_every_isa() {
    use crate::LayerOutput;
    for (layout, blob) in MIXERS {
        let (_, samples) = mixer_expected(layout);
        let trace_of = |m: &Model, px: &[u8]| -> (Vec<u32>, Vec<(usize, Vec<i16>)>) {
            let mut arena = vec![0u8; m.arena_len()];
            let mut out = vec![0f32; 10];
            let mut layers = Vec::new();
            m.logits_traced(px, &mut arena, &mut out, &mut |l, o| {
                if let LayerOutput::Int16(v) = o {
                    layers.push((l, v.to_vec()));
                }
            })
            .expect("inference");
            (out.iter().map(|v| v.to_bits()).collect(), layers)
        };
        let scalar = Model::from_bytes(blob)
            .expect("blob")
            .with_isa(Isa::Scalar)
            .expect("scalar");
        let mut levels = 0;
        for isa in Isa::ALL {
            let Ok(m) = Model::from_bytes(blob).expect("blob").with_isa(isa) else {
                continue;
            };
            levels += 1;
            for s in &samples {
                let (bits, layers) = trace_of(&m, image(s.index));
                assert_eq!(bits, s.int8_bits, "{layout} {isa:?}, sample {}", s.index);
                let (_, want) = trace_of(&scalar, image(s.index));
                assert_eq!(
                    layers.len(),
                    1 + 2 * 4,
                    "{layout}: embedding + two MLPs per block"
                );
                assert!(
                    layers == want,
                    "{layout} {isa:?}, sample {}: a residual stream differs from scalar",
                    s.index
                );
            }
        }
        // Every level the CPU has (CMX_REQUIRE_* enforced), and a SIMD one at least on
        // aarch64.
        let want = (crate::kernels::testutil::isas().len()).max(if cfg!(target_arch = "aarch64") {
            2
        } else {
            1
        });
        assert!(levels >= want, "{levels} kernel levels ran");
    }
}

#[test]
fn mixer_classifies_held_out_digits() {
    for (layout, blob) in MIXERS {
        let m = Model::from_bytes(blob).expect("blob");
        let (torch_top1, samples) = mixer_expected(layout);
        let mut arena = vec![0u8; m.arena_len()];
        // PyTorch's top-1 on the reference samples (int8 may differ on a close call).
        let agree = samples
            .iter()
            .filter(|s| {
                let top = m
                    .classify::<3>(image(s.index), &mut arena)
                    .expect("classify");
                let want = s
                    .torch
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, &v)| if v > s.torch[b] { i } else { b });
                usize::from(top[0].0) == want
            })
            .count();
        assert!(
            agree + 1 >= samples.len(),
            "{layout}: int8 agrees with PyTorch on {agree}/{}",
            samples.len()
        );
        // Every 4th held-out digit, as for the ConvMixer (the full set: tests/mixer_mnist.rs).
        let n = (IMAGES.len() - 16) / PIXELS;
        let (mut seen, mut correct) = (0usize, 0usize);
        for i in (0..n).step_by(4) {
            let top = m.classify::<1>(image(i), &mut arena).expect("classify");
            correct += usize::from(usize::from(top[0].0) == usize::from(LABELS[8 + i]));
            seen += 1;
        }
        let top1 = correct as f64 / seen as f64;
        assert!(
            top1 >= torch_top1 - 0.015,
            "{layout}: int8 top-1 {top1:.4} on {seen} digits vs PyTorch {torch_top1:.4}"
        );
        let mut small = vec![0u8; m.arena_len() - 1];
        assert!(matches!(
            m.classify::<1>(image(0), &mut small),
            Err(Error::ArenaTooSmall { .. })
        ));
    }
}
