//! The trained MNIST-digit ConvMixer: top-1 on the held-out digits of fp32 (tract running
//! the ONNX), int8 and fp16 (our runtime on our blobs). int8 must stay within 1 point of
//! fp32, fp16 within 0.2 points (in both f32 and binary16 arithmetic); both exporters must give the same blobs.

use convmixer_edge::{Model, Precision};
use convmixer_edge_tests::*;
use convmixer_quantize::{data, onnx, Options};

#[test]
fn int8_and_fp16_keep_fp32_accuracy() {
    let set = mnist_heldout();
    assert_eq!(set.len(), 1996);
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images");
    assert_eq!(calib.len(), 200);
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        labels: vec![],
        ..Default::default()
    };

    let mut blobs = Vec::new();
    for exporter in ["torchscript", "dynamo"] {
        let path = mnist(&format!("convmixer-mnist.{exporter}.onnx"));
        let m = onnx::import(&path).expect("import");
        let fp32 = tract_mnist_top1(&path, &set);
        let int8 =
            convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, &|| {}).expect("int8");
        let fp16 =
            convmixer_quantize::quantize(&m, Precision::F16, &[], &opts, &|| {}).expect("fp16");
        blobs.push((exporter, fp32, int8, fp16));
    }
    let (_, fp32, int8, fp16) = &blobs[0];
    let (_, fp32_dyn, int8_dyn, fp16_dyn) = &blobs[1];
    assert_eq!(
        fp32, fp32_dyn,
        "tract gives the same accuracy on both exports"
    );
    assert!(
        int8 == int8_dyn,
        "the two exporters' graphs give different int8 blobs"
    );
    assert!(
        fp16 == fp16_dyn,
        "the two exporters' graphs give different fp16 blobs"
    );

    let acc8 = blob_top1(int8, &set);
    // The fp16 blob in both arithmetics: f32 (CPUs without FEAT_FP16) and binary16
    // (FEAT_FP16 CPUs; emulated exactly here).
    let run16 = |px: &[u8], f16_arith: bool| {
        let m = Model::from_bytes(fp16)
            .expect("blob")
            .with_f16_arithmetic(f16_arith);
        let mut arena = vec![0u8; m.arena_len()];
        let mut out = vec![0f32; 10];
        m.logits(px, &mut arena, &mut out).expect("inference");
        out
    };
    let acc16 = percent(&par_map(&set, |(px, y)| argmax(&run16(px, false)) == *y));
    let acc16h = percent(&par_map(&set, |(px, y)| argmax(&run16(px, true)) == *y));
    eprintln!(
        "MNIST held-out ({} digits): fp32 {fp32:.2}%  int8 {acc8:.2}%  fp16 {acc16:.2}%  fp16 (f16 arithmetic) {acc16h:.2}%",
        set.len()
    );
    eprintln!("blob bytes: int8 {}  fp16 {}", int8.len(), fp16.len());
    assert!(*fp32 > 97.0, "fp32 reference accuracy {fp32}");
    assert!(
        (acc8 - fp32).abs() <= 1.0,
        "int8 {acc8:.2}% vs fp32 {fp32:.2}%"
    );
    assert!(
        (acc16 - fp32).abs() <= 0.2,
        "fp16 {acc16:.2}% vs fp32 {fp32:.2}%"
    );
    assert!(
        (acc16h - fp32).abs() <= 0.2,
        "fp16 (f16 arithmetic) {acc16h:.2}% vs fp32 {fp32:.2}%"
    );
}
