//! `host-tools report`'s diagnosis on the shipped MNIST model: every conv layer's int8
//! output (traced from the runtime) against the fp32 folded graph.

use std::path::Path;

use convmixer_quantize::calibrate::Method;
use convmixer_quantize::{data, onnx, Options};
use host_tools::report::diagnose;

#[test]
fn per_layer_sqnr_is_measured_and_mse_calibration_raises_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mnist");
    let model = onnx::import(&root.join("convmixer-mnist.torchscript.onnx")).expect("import");
    let calib = data::calibration_set(&root.join("calib"), (28, 28, 1)).expect("calib");
    // Every 10th held-out digit: 200 labelled images.
    let set: Vec<(Vec<u8>, usize)> = data::image_folder(&root.join("heldout"), &[], 10)
        .expect("held-out")
        .iter()
        .step_by(10)
        .map(|(p, c)| (data::load_image(p, (28, 28, 1)).expect("png"), *c))
        .collect();
    let run = |method| {
        let opts = Options {
            mean: vec![0.1307],
            std: vec![0.3081],
            calibration: Some(method),
            ..Default::default()
        };
        diagnose(&model, &calib, &set, &opts).expect("diagnose")
    };
    let (minmax, mse) = (run(Method::MinMax), run(Method::Mse));
    for d in [&minmax, &mse] {
        // Embedding + 4 blocks × (depthwise, pointwise), each traced from the runtime.
        assert_eq!(d.layers.len(), 9);
        for l in &d.layers {
            assert!(l.sqnr_db > 15.0 && l.sqnr_db < 60.0, "{l:?}");
        }
        assert!(d.agreement >= 0.98, "agreement {}", d.agreement);
        assert!((d.top1_int8 - d.top1_fp32).abs() <= 0.02, "{d:?}");
        assert_eq!(d.n, set.len());
    }
    // MSE clipping minimises exactly this error: it must not lose on average.
    let mean = |d: &host_tools::report::Diagnosis| {
        d.layers.iter().map(|l| l.sqnr_db).sum::<f64>() / d.layers.len() as f64
    };
    assert!(
        mean(&mse) > mean(&minmax),
        "mse {} dB vs minmax {} dB",
        mean(&mse),
        mean(&minmax)
    );
}
