//! Numerical edge cases of real models, each against tract's fp32 run of the same ONNX:
//! constant channels (a zero range), BatchNorm channels with zero variance, all-zero
//! calibration images, activations far past the calibrated range (saturation), a
//! depthwise kernel larger than the token grid, and a model whose int8 accumulator could
//! overflow (refused at quantise time with a clear error; fp16 takes it).

use convmixer_edge::{LayerOutput, Model, Precision};
use convmixer_edge_tests::onnx_edit::{
    edit_f32, mnist_proto, mnist_with_overflowing_bias, set_input_hw,
};
use convmixer_edge_tests::*;
use convmixer_quantize::{data, onnx, reference::TractModel, Options};
use prost::Message;
use tract_onnx::pb;

fn opts() -> Options {
    Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        ..Default::default()
    }
}

/// The edited model on disk (tract reads a path), imported by us, and tract's plan.
struct Edited {
    _dir: tempfile::TempDir,
    imported: onnx::Imported,
    tract: TractModel,
}

fn load(m: &pb::ModelProto, hw: usize) -> Edited {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("edited.onnx");
    std::fs::write(&path, m.encode_to_vec()).expect("write");
    Edited {
        imported: onnx::import(&path).expect("import"),
        tract: TractModel::load(&path, 1, hw, hw).expect("tract"),
        _dir: dir,
    }
}

fn calib() -> Vec<Vec<u8>> {
    data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images")
}

/// Every 5th held-out digit (400).
fn digits() -> Vec<(Vec<u8>, usize)> {
    mnist_heldout().into_iter().step_by(5).collect()
}

/// (top-1 of the blob, top-1 of tract, agreement), in percent.
fn compare(blob: &[u8], tract: &TractModel, set: &[(Vec<u8>, usize)]) -> (f64, f64, f64) {
    let r = par_map(set, |(px, y)| {
        let ours = argmax(&run_blob(blob, px));
        let theirs = argmax(
            &tract
                .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                .expect("tract"),
        );
        (ours == *y, theirs == *y, ours == theirs)
    });
    let pct = |f: fn(&(bool, bool, bool)) -> bool| {
        100.0 * r.iter().filter(|x| f(x)).count() as f64 / r.len() as f64
    };
    (pct(|x| x.0), pct(|x| x.1), pct(|x| x.2))
}

/// Channel `c` of layer `layer`'s int8 output, over all tokens.
fn traced_channel(blob: &[u8], px: &[u8], layer: usize, c: usize) -> Vec<i8> {
    let m = Model::from_bytes(blob).expect("blob");
    let dim = usize::from(m.header().dim);
    let mut arena = vec![0u8; m.arena_len()];
    let mut out = vec![0f32; 10];
    let mut got = Vec::new();
    m.logits_traced(px, &mut arena, &mut out, &mut |l, o| {
        if l == layer {
            if let LayerOutput::Int8(q) = o {
                got = q.iter().skip(c).step_by(dim).copied().collect();
            }
        }
    })
    .expect("inference");
    assert!(!got.is_empty(), "layer {layer} traced");
    got
}

#[test]
fn constant_channels_and_zero_variance_batchnorm() {
    let mut m = mnist_proto();
    // Dead channels, as training leaves them: zero weights and bias, so the channel is 0
    // for every token and every image (a calibrated range of width zero), and its
    // BatchNorm saw variance 0 around mean 0 (valid: ε = 1e-5 > 0; the BN output is β).
    // The embedding's channel 2 (BatchNorm "2") and block 0's pointwise channel 5
    // (BatchNorm "3.3").
    edit_f32(&mut m, "0.weight", |w| w[2 * 4..3 * 4].fill(0.0));
    edit_f32(&mut m, "0.bias", |b| b[2] = 0.0);
    edit_f32(&mut m, "2.running_mean", |v| v[2] = 0.0);
    edit_f32(&mut m, "2.running_var", |v| v[2] = 0.0);
    edit_f32(&mut m, "3.1.weight", |w| w[5 * 48..6 * 48].fill(0.0));
    edit_f32(&mut m, "3.1.bias", |b| b[5] = 0.0);
    edit_f32(&mut m, "3.3.running_mean", |v| v[5] = 0.0);
    edit_f32(&mut m, "3.3.running_var", |v| v[5] = 0.0);
    // A depthwise channel with zero weights (the residual keeps it alive).
    edit_f32(&mut m, "4.0.fn.0.weight", |w| w[7 * 25..8 * 25].fill(0.0));
    let e = load(&m, 28);
    let set = digits();

    // fp32: BN removal is still exact.
    let fp32 = convmixer_quantize::quantize(&e.imported, Precision::F32, &[], &opts(), &|| {})
        .expect("fp32");
    let mut worst = 0f32;
    for (px, _) in set.iter().take(50) {
        let t = e
            .tract
            .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
            .expect("tract");
        worst = worst.max(max_abs(&run_blob(&fp32, px), &t));
    }
    assert!(worst < 1e-3, "fp32 blob vs tract: max |Δlogit| {worst}");

    let int8 =
        convmixer_quantize::quantize(&e.imported, Precision::Int8, &calib(), &opts(), &|| {})
            .expect("int8");
    let (ours, fp, agree) = compare(&int8, &e.tract, &set);
    eprintln!("constant channels: int8 {ours:.2}%, fp32 {fp:.2}%, agreement {agree:.2}%");
    assert!(fp >= 90.0, "the edited model still works in fp32: {fp}%");
    assert!(ours >= fp - 1.0, "int8 {ours}% vs fp32 {fp}%");
    assert!(agree >= 98.0, "agreement {agree}%");
    // The constant channel is one int8 value everywhere.
    let a = traced_channel(&int8, &set[0].0, 0, 2);
    let b = traced_channel(&int8, &set[1].0, 0, 2);
    assert!(
        a.iter().chain(&b).all(|&q| q == a[0]),
        "constant channel varies: {a:?}"
    );
}

#[test]
fn all_zero_calibration_images_give_a_working_blob() {
    let path = mnist("convmixer-mnist.torchscript.onnx");
    let imported = onnx::import(&path).expect("import");
    let tract = TractModel::load(&path, 1, 28, 28).expect("tract");
    let zeros = vec![vec![0u8; 28 * 28]; 8];
    let int8 = convmixer_quantize::quantize(&imported, Precision::Int8, &zeros, &opts(), &|| {})
        .expect("int8 from all-zero calibration images");
    // On what it was calibrated on, the blob is accurate.
    let t = tract
        .run_pixels(&zeros[0], &[MNIST_MEAN], &[MNIST_STD])
        .expect("tract");
    let ours = run_blob(&int8, &zeros[0]);
    let range =
        t.iter().fold(f32::MIN, |a, &b| a.max(b)) - t.iter().fold(f32::MAX, |a, &b| a.min(b));
    let d = max_abs(&ours, &t);
    eprintln!("all-zero calibration: zero image max |Δlogit| {d:.4} (logit range {range:.2})");
    assert!(d <= 0.05 * range, "zero image: |Δ| {d} of range {range}");
    assert_eq!(argmax(&ours), argmax(&t));
    // Real digits lie far outside that range: everything saturates, nothing breaks.
    for (px, _) in digits().iter().take(50) {
        let l = run_blob(&int8, px);
        assert!(l.iter().all(|x| x.is_finite()), "{l:?}");
    }
}

#[test]
fn activations_past_the_calibrated_range_saturate() {
    let path = mnist("convmixer-mnist.torchscript.onnx");
    let imported = onnx::import(&path).expect("import");
    let tract = TractModel::load(&path, 1, 28, 28).expect("tract");
    // Calibrated on faint digits (a quarter of the brightness), run on the real ones: the
    // embedding's outputs exceed the calibrated range and must clip at the int8 limits
    // (a wrap would flip their sign).
    let faint: Vec<Vec<u8>> = calib()
        .iter()
        .map(|im| im.iter().map(|&p| p / 4).collect())
        .collect();
    let int8 = convmixer_quantize::quantize(&imported, Precision::Int8, &faint, &opts(), &|| {})
        .expect("int8");
    let set = digits();
    let saturated: usize = set
        .iter()
        .take(20)
        .map(|(px, _)| {
            (0..48)
                .flat_map(|c| traced_channel(&int8, px, 0, c))
                .filter(|&q| q == 127 || q == -128)
                .count()
        })
        .sum();
    let (ours, fp, agree) = compare(&int8, &tract, &set);
    eprintln!(
        "faint calibration: {saturated} saturated embedding outputs in 20 digits; int8 {ours:.2}%, fp32 {fp:.2}%, agreement {agree:.2}%"
    );
    assert!(saturated > 1000, "only {saturated} outputs saturated");
    // Clipping keeps most digits right (measured 78.75%; fp32 98.5%); wrapped values
    // would scatter the embedding and leave chance (10%).
    assert!(ours >= 60.0, "int8 {ours}% with saturation");
}

#[test]
fn depthwise_kernel_larger_than_the_token_grid() {
    // 6×6 images, patch 2: a 3×3 token grid under the 5×5 depthwise kernel. PyTorch's
    // 'same' padding makes this well defined (the taps past the grid read zeros).
    let mut m = mnist_proto();
    set_input_hw(&mut m, 6, 6);
    let e = load(&m, 6);
    let images: Vec<Vec<u8>> = (0..16u32)
        .map(|s| {
            (0..36u32)
                .map(|i| ((i * 53 + s * 97) % 256) as u8)
                .collect()
        })
        .collect();
    let fp32 = convmixer_quantize::quantize(&e.imported, Precision::F32, &[], &opts(), &|| {})
        .expect("fp32");
    let int8 = convmixer_quantize::quantize(&e.imported, Precision::Int8, &images, &opts(), &|| {})
        .expect("int8");
    let (mut d32, mut d8, mut range) = (0f32, 0f32, 0f32);
    for px in &images {
        let t = e
            .tract
            .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
            .expect("tract");
        d32 = d32.max(max_abs(&run_blob(&fp32, px), &t));
        d8 = d8.max(max_abs(&run_blob(&int8, px), &t));
        range = range.max(t.iter().fold(0f32, |a, &b| a.max(b.abs())));
    }
    eprintln!(
        "kernel 5 on a 3x3 grid: fp32 max |Δ| {d32:.2e}, int8 {d8:.3} (max |logit| {range:.2})"
    );
    assert!(d32 < 1e-3, "fp32 vs tract {d32}");
    assert!(d8 < 0.1 * range, "int8 vs tract {d8} of {range}");
}

#[test]
fn an_accumulator_that_could_overflow_is_refused() {
    let m = mnist_with_overflowing_bias();
    let e = load(&m, 28);
    let err = convmixer_quantize::quantize(&e.imported, Precision::Int8, &calib(), &opts(), &|| {})
        .expect_err("int8 must refuse the model");
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("block 0 pointwise channel 0: the int32 accumulator could overflow")
            && msg.contains("--precision fp16")
            && !msg.contains('\n'),
        "{msg}"
    );
    // The same model in fp16 is fine.
    let fp16 = convmixer_quantize::quantize(&e.imported, Precision::F16, &[], &opts(), &|| {})
        .expect("fp16");
    let set: Vec<_> = digits().into_iter().take(100).collect();
    let (_, _, agree) = compare(&fp16, &e.tract, &set);
    assert!(agree >= 99.0, "fp16 agreement {agree}%");
}
