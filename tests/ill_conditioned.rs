//! The ill-conditioned fixture (`tests/fixtures/illcond/README.md`) end to end, against
//! tract's fp32 run of the original ONNX. In every layer a quarter of the channels carry
//! their signal 1000× smaller on a +6 offset before the GELU, and the BatchNorm after it
//! (running variances below its epsilon) amplifies them back. Three quantiser choices make
//! this model work (`docs/batchnorm-folding.md`, `quantize/src/quant.rs`):
//!
//! * the last BatchNorm stays in the last conv's epilogue instead of being folded into the
//!   head, where its huge scale and offset cancel (fp16 head weights and the int8 tensor
//!   before the head lost those channels);
//! * a GELU channel whose pre-activation range is a few steps of its layer's table is read
//!   on the table's linear part, stretched over it (per-channel `m_pre`, bias, `m_post`,
//!   `b_post`: no runtime change).
//!
//! * f16 weights are stored per output channel times a power of two (undone by the
//!   layer's `unscale` before the activation), so the narrow channels' small weights stay
//!   out of binary16's subnormals.
//!
//! Before them: int8 10% top-1 (chance), fp16 97.8% with logits 1.26 off.

use convmixer_edge::Precision;
use convmixer_edge_tests::*;
use convmixer_quantize::reference::TractModel;
use convmixer_quantize::{data, mixed, onnx, quant, Options};

fn opts() -> Options {
    Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        ..Default::default()
    }
}

/// The fixture, the calibration images, the held-out digits and tract's plan of the ONNX.
struct Setup {
    model: onnx::Imported,
    calib: Vec<Vec<u8>>,
    set: Vec<(Vec<u8>, usize)>,
    tract: TractModel,
}

fn setup() -> Setup {
    let path = root().join("tests/fixtures/illcond/model.onnx");
    Setup {
        model: onnx::import(&path).expect("import"),
        calib: data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib"),
        set: mnist_heldout(),
        tract: TractModel::load(&path, 1, 28, 28).expect("tract"),
    }
}

#[test]
fn int8_and_fp16_keep_the_fp32_accuracy_of_the_ill_conditioned_model() {
    let Setup {
        model,
        calib,
        set,
        tract,
    } = setup();
    let q = convmixer_quantize::quantize_detailed(&model, Precision::Int8, &calib, &opts(), &|| {})
        .expect("int8");
    let fp16 =
        convmixer_quantize::quantize(&model, Precision::F16, &[], &opts(), &|| {}).expect("fp16");
    let fp32_blob =
        convmixer_quantize::quantize(&model, Precision::F32, &[], &opts(), &|| {}).expect("fp32");
    // (tract fp32, int8, fp16, our fp32) logits per held-out image.
    let runs = par_map(&set, |(px, _)| {
        (
            tract
                .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                .expect("tract run"),
            run_blob(&q.blob, px),
            run_blob(&fp16, px),
            run_blob(&fp32_blob, px),
        )
    });
    let n = set.len() as f64;
    type Run = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
    let top1 = |pick: &dyn Fn(&Run) -> &Vec<f32>| {
        let right = runs
            .iter()
            .zip(&set)
            .filter(|(r, (_, label))| argmax(pick(r)) == *label)
            .count();
        100.0 * right as f64 / n
    };
    let fp32 = top1(&|r| &r.0);
    let int8 = top1(&|r| &r.1);
    let half = top1(&|r| &r.2);
    let agree = 100.0 * runs.iter().filter(|r| argmax(&r.0) == argmax(&r.1)).count() as f64 / n;
    let delta = |a: &dyn Fn(&Run) -> &Vec<f32>, b: &dyn Fn(&Run) -> &Vec<f32>| {
        runs.iter().map(|r| max_abs(a(r), b(r))).fold(0.0, f32::max)
    };
    let fp16_delta = delta(&|r| &r.0, &|r| &r.2);
    let fp32_delta = delta(&|r| &r.0, &|r| &r.3);
    let storage_delta = delta(&|r| &r.3, &|r| &r.2);
    println!(
        "illcond, {} held-out digits: fp32 (tract) {fp32:.2}%, int8 {int8:.2}% (agreement {agree:.2}%), fp16 {half:.2}%; max |Δ logit|: fp16 vs tract {fp16_delta:.4}, our fp32 vs tract {fp32_delta:.4}, fp16 vs our fp32 {storage_delta:.4}",
        set.len()
    );
    assert!(fp32 >= 97.0, "fp32 {fp32}");
    assert!(int8 >= fp32 - 0.3, "int8 {int8} vs fp32 {fp32}");
    assert!(agree >= 99.0, "agreement {agree}");
    assert!(half >= fp32 - 0.1, "fp16 {half} vs fp32 {fp32}");
    // This model's fp32 is itself reproducible only to ~5e-3 (ONNX Runtime vs PyTorch, the
    // fixture's README); ours is within 1e-2 of tract's.
    assert!(fp32_delta <= 1e-2, "fp32 blob max |Δ logit| {fp32_delta}");
    // fp16: 1.26 with the last BatchNorm folded into the head, 0.025 while 5–9% of every
    // layer's weights (the narrow channels', scaled by 1e-3) sat in binary16's subnormals;
    // per-channel weight exponents (AFFINE's unscale) keep them normal.
    assert!(fp16_delta <= 1e-2, "fp16 max |Δ logit| {fp16_delta}");

    // Every layer output keeps a usable SQNR (all were below 2 dB, most negative, when the
    // narrow channels went through the table as they are).
    let stats = q.stats.as_deref().expect("stats");
    let images: Vec<Vec<u8>> = set.iter().step_by(20).map(|(px, _)| px.clone()).collect();
    let sq =
        mixed::layer_sqnr(&q.folded, &quant::output_quant(stats), &q.blob, &images).expect("sqnr");
    println!("illcond int8 layer SQNR (dB), then the logits: {sq:.1?}");
    assert!(sq.iter().all(|&d| d > 15.0), "{sq:?}");
}

/// Every calibration method keeps the ill-conditioned model within 0.3 points of fp32 in
/// int8. (Percentile used to clip the narrow channels off entirely: their +6 offset is the
/// tensor's top quarter, above its 99.99th percentile for some of them.)
#[test]
fn every_calibration_method_keeps_the_ill_conditioned_model() {
    use convmixer_quantize::calibrate::Method;
    let Setup {
        model,
        calib,
        set,
        tract,
    } = setup();
    let want: Vec<usize> = par_map(&set, |(px, _)| {
        argmax(
            &tract
                .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                .expect("tract"),
        )
    });
    let top1 = |pred: &[usize]| {
        let right = pred.iter().zip(&set).filter(|(p, (_, l))| *p == l).count();
        100.0 * right as f64 / set.len() as f64
    };
    let fp32 = top1(&want);
    for method in [Method::Percentile(99.99), Method::Mse, Method::Entropy] {
        let o = Options {
            calibration: Some(method),
            ..opts()
        };
        let blob = convmixer_quantize::quantize(&model, Precision::Int8, &calib, &o, &|| {})
            .expect("int8");
        let pred: Vec<usize> = par_map(&set, |(px, _)| argmax(&run_blob(&blob, px)));
        let t = top1(&pred);
        println!("illcond {method:?}: int8 top-1 {t:.2}% (fp32 {fp32:.2}%)");
        assert!(t >= fp32 - 0.3, "{method:?}: int8 {t} vs fp32 {fp32}");
    }
}
