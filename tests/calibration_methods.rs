//! Calibration methods and bias correction on the shipped MNIST model, against the fp32
//! folded graph: every method keeps the int8 model's top-1 within 0.3 points of fp32 on the
//! held-out digits, the same options give the same blob byte for byte, and bias correction
//! moves each int8 bias by the mean error of the layer's quantised weights.

use convmixer_edge::blob::SectionKind;
use convmixer_edge::Precision;
use convmixer_edge_tests::{
    bias_at, expected_bias_move, mnist, mnist_heldout, par_map, run_blob, section_range,
    MNIST_MEAN, MNIST_STD,
};
use convmixer_quantize::calibrate::{self, Method};
use convmixer_quantize::{data, fold, onnx, quant, Options};

fn blob(method: Method, bias_correction: bool) -> Vec<u8> {
    let m = onnx::import(&mnist("convmixer-mnist.torchscript.onnx")).expect("import");
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib");
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        calibration: Some(method),
        bias_correction,
        ..Default::default()
    };
    convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, &|| {}).expect("quantize")
}

#[test]
fn every_method_keeps_top1_and_is_deterministic() {
    let set = mnist_heldout();
    let m = onnx::import(&mnist("convmixer-mnist.torchscript.onnx")).expect("import");
    let folded = fold::fold(&m, &[MNIST_MEAN], &[MNIST_STD]).expect("fold");
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .expect("classes")
    };
    let fp32: Vec<usize> = par_map(&set, |(px, _)| {
        argmax(&convmixer_quantize::forward::forward(&folded, px))
    });
    let top1 = |pred: &[usize]| {
        pred.iter().zip(&set).filter(|(p, (_, l))| *p == l).count() as f64 / set.len() as f64
    };
    let fp32_top1 = top1(&fp32);
    for method in [
        Method::MinMax,
        Method::Percentile(99.99),
        Method::Mse,
        Method::Entropy,
    ] {
        let b = blob(method, false);
        assert_eq!(b, blob(method, false), "{method:?}: not deterministic");
        let pred: Vec<usize> = par_map(&set, |(px, _)| argmax(&run_blob(&b, px)));
        let t = top1(&pred);
        println!(
            "{method:?}: int8 top-1 {:.2}% (fp32 {:.2}%)",
            100.0 * t,
            100.0 * fp32_top1
        );
        assert!(
            t >= fp32_top1 - 0.003,
            "{method:?}: int8 top-1 {t} vs fp32 {fp32_top1}"
        );
    }
}

/// Bias correction, checked against an independent computation on block 0's pointwise
/// layer: its int8 bias moves by minus the mean error of its quantised weights,
/// `Σ_t (ŵ_t − w_t)·E[x_t]`, in accumulator units (within the rounding of both biases).
#[test]
fn bias_correction_moves_each_bias_by_the_weights_mean_error() {
    let m = onnx::import(&mnist("convmixer-mnist.torchscript.onnx")).expect("import");
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib");
    let q = |bias_correction| {
        let opts = Options {
            mean: vec![MNIST_MEAN],
            std: vec![MNIST_STD],
            bias_correction,
            ..Default::default()
        };
        convmixer_quantize::quantize_detailed(&m, Precision::Int8, &calib, &opts, &|| {})
            .expect("quantize")
    };
    let (plain, corrected) = (q(false), q(true));
    let f = &plain.folded;
    let dim = f.dim;
    let means = calibrate::input_means(f, &calib);
    // Layer 2's input is layer 1's int8 output, with a scale per channel folded into the
    // weights, which are then quantised symmetrically per output channel.
    let s_in = &quant::output_quant(plain.stats.as_deref().unwrap())[1].scale;
    let w = &f.blocks[0].1.w;
    let (b0, b1) = (
        &plain.blob[section_range(&plain.blob, SectionKind::Bias, 2)],
        &corrected.blob[section_range(&corrected.blob, SectionKind::Bias, 2)],
    );
    let mut moved = 0;
    for o in 0..dim {
        let folded: Vec<f64> = (0..dim)
            .map(|t| f64::from(w[o * dim + t]) * s_in[t])
            .collect();
        let want = expected_bias_move(&folded, |t| s_in[t], &means[2]);
        let got = f64::from(bias_at(b1, o) - bias_at(b0, o));
        assert!(
            (got - want).abs() <= 1.0,
            "channel {o}: moved {got}, expected {want:.2}"
        );
        moved += usize::from(got != 0.0);
    }
    assert!(moved > dim / 4, "only {moved} of {dim} biases moved");
}
