//! Calibration methods and bias correction on the shipped MNIST model, against the fp32
//! folded graph: every method keeps the int8 model's top-1 within 0.3 points of fp32 on the
//! held-out digits, the same options give the same blob byte for byte, and bias correction
//! shrinks the mean logit error that weight quantisation leaves on the held-out set.

use convmixer_edge::Precision;
use convmixer_edge_tests::{mnist, mnist_heldout, par_map, run_blob, MNIST_MEAN, MNIST_STD};
use convmixer_quantize::calibrate::{self, Method};
use convmixer_quantize::{data, fold, onnx, Options};

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
    convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, || {}).expect("quantize")
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
        argmax(&calibrate::forward(&folded, px, None))
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
        assert!(
            t >= fp32_top1 - 0.003,
            "{method:?}: int8 top-1 {t} vs fp32 {fp32_top1}"
        );
    }
}

#[test]
fn bias_correction_shrinks_the_mean_logit_error() {
    let set = mnist_heldout();
    let m = onnx::import(&mnist("convmixer-mnist.torchscript.onnx")).expect("import");
    let folded = fold::fold(&m, &[MNIST_MEAN], &[MNIST_STD]).expect("fold");
    let fp32: Vec<Vec<f32>> = par_map(&set, |(px, _)| calibrate::forward(&folded, px, None));
    // ‖mean over images of (int8 logits − fp32 logits)‖: the systematic part of the error.
    let mean_error = |b: &[u8]| {
        let int8: Vec<Vec<f32>> = par_map(&set, |(px, _)| run_blob(b, px));
        let mut e = [0f64; 10];
        for (q, f) in int8.iter().zip(&fp32) {
            for c in 0..10 {
                e[c] += f64::from(q[c] - f[c]) / set.len() as f64;
            }
        }
        e.iter().map(|v| v * v).sum::<f64>().sqrt()
    };
    let (plain, corrected) = (
        mean_error(&blob(Method::MinMax, false)),
        mean_error(&blob(Method::MinMax, true)),
    );
    eprintln!("mean logit error: {plain:.5} without, {corrected:.5} with bias correction");
    assert!(corrected < plain, "{corrected} vs {plain}");
}
