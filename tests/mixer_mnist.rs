//! The MNIST MLP-Mixers of `examples/mixer-mnist` (two layouts, three exports each):
//! the import against tract's fp32 run of the ONNX, the fold, and the int8 blob's top-1
//! on the held-out digits within 1 point of fp32; every export of one model gives the same
//! blob.

use convmixer_edge::blob::{self, Arch};
use convmixer_edge::Precision;
use convmixer_edge_tests::*;
use convmixer_quantize::{data, mixer, onnx, reference::TractModel, Options};

fn mixer_file(name: &str) -> std::path::PathBuf {
    root().join("examples/mixer-mnist").join(name)
}

const EXPORTS: [&str; 3] = ["torchscript", "dynamo", "torchscript16"];

#[test]
fn float_import_and_fold_match_tract() {
    let set = mnist_heldout();
    for layout in ["lucid", "timm"] {
        for export in EXPORTS {
            let path = mixer_file(&format!("mixer-{layout}.{export}.onnx"));
            let m = mixer::import(&path).expect("import");
            assert_eq!(
                (m.dim, m.blocks.len(), m.patch, m.tokens()),
                (64, 4, 4, 49),
                "{layout}/{export}"
            );
            let hidden = if layout == "lucid" {
                (256, 32)
            } else {
                (32, 256)
            };
            assert_eq!(m.hidden(), hidden, "{layout}/{export}");
            let f = mixer::fold(&m, &[MNIST_MEAN], &[MNIST_STD]).expect("fold");
            let tract = TractModel::load(&path, 1, 28, 28).expect("tract");
            let (mut worst_import, mut worst_fold) = (0f32, 0f32);
            for (px, _) in set.iter().take(24) {
                let nchw =
                    convmixer_quantize::reference::normalise(px, 1, &[MNIST_MEAN], &[MNIST_STD]);
                let want = tract.run(&nchw).expect("tract");
                worst_import = worst_import.max(max_abs(&mixer::forward(&m, &nchw), &want));
                worst_fold = worst_fold.max(max_abs(&mixer::forward_pixels(&f, px), &want));
            }
            eprintln!("{layout}/{export}: max |logit − tract| import {worst_import:.2e}, folded {worst_fold:.2e}");
            assert!(
                worst_import < 1e-3,
                "{layout}/{export}: import differs from tract by {worst_import}"
            );
            assert!(
                worst_fold < 1e-3,
                "{layout}/{export}: folded model differs from tract by {worst_fold}"
            );
        }
    }
}

#[test]
fn int8_keeps_fp32_accuracy_and_exports_agree() {
    let set = mnist_heldout();
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images");
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        ..Default::default()
    };
    for layout in ["lucid", "timm"] {
        let mut blobs = Vec::new();
        for export in EXPORTS {
            let path = mixer_file(&format!("mixer-{layout}.{export}.onnx"));
            let m = mixer::import(&path).expect("import");
            blobs.push(mixer::quantize(&m, &calib, &opts, &|| {}).expect("int8"));
        }
        for (b, export) in blobs.iter().zip(EXPORTS).skip(1) {
            assert!(
                b == &blobs[0],
                "{layout}: the {export} export gives a different blob"
            );
        }
        let int8 = &blobs[0];
        assert_eq!(
            blob::parse(int8).expect("blob").header().arch,
            Arch::MlpMixer
        );
        let tract = TractModel::load(
            &mixer_file(&format!("mixer-{layout}.torchscript.onnx")),
            1,
            28,
            28,
        )
        .expect("tract");
        // (fp32 class, int8 class, largest |logit difference|) per image.
        let runs = par_map(&set, |(px, _)| {
            let f = tract
                .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                .expect("tract");
            let q = run_blob(int8, px);
            (argmax(&f), argmax(&q), max_abs(&f, &q))
        });
        let fp32 = percent(
            &runs
                .iter()
                .zip(&set)
                .map(|(r, (_, y))| r.0 == *y)
                .collect::<Vec<_>>(),
        );
        let acc8 = percent(
            &runs
                .iter()
                .zip(&set)
                .map(|(r, (_, y))| r.1 == *y)
                .collect::<Vec<_>>(),
        );
        let agree = percent(&runs.iter().map(|r| r.0 == r.1).collect::<Vec<_>>());
        let worst = runs.iter().map(|r| r.2).fold(0f32, f32::max);
        eprintln!(
            "{layout}: MNIST held-out ({} digits) fp32 {fp32:.2}%  int8 {acc8:.2}%  int8 = fp32 class on {agree:.2}%, max |logit diff| {worst:.3}  ({} blob bytes)",
            set.len(),
            int8.len()
        );
        assert!(
            agree >= 98.0,
            "{layout}: int8 agrees with fp32 on only {agree:.2}% of the digits"
        );
        assert!(fp32 > 95.0, "{layout}: fp32 reference accuracy {fp32}");
        assert!(
            (acc8 - fp32).abs() <= 1.0,
            "{layout}: int8 {acc8}% vs fp32 {fp32}%"
        );
    }
}

/// Every `--calibration` method on both layouts (the histogram pass the ConvMixer's
/// calibration uses, `calibrate::tensor_histograms`): int8 top-1 on the held-out digits
/// within 0.3 points of tract's fp32 run of the ONNX, and each clipping method a different
/// blob from min/max (the method is applied, not ignored).
#[test]
fn every_calibration_method_keeps_fp32_accuracy() {
    use convmixer_quantize::calibrate::Method;
    let set = mnist_heldout();
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images");
    for layout in ["lucid", "timm"] {
        let path = mixer_file(&format!("mixer-{layout}.torchscript.onnx"));
        let m = mixer::import(&path).expect("import");
        let fp32 = tract_mnist_top1(&path, &set);
        let mut minmax = Vec::new();
        for method in [
            Method::MinMax,
            Method::Percentile(99.99),
            Method::Mse,
            Method::Entropy,
        ] {
            let opts = Options {
                mean: vec![MNIST_MEAN],
                std: vec![MNIST_STD],
                calibration: Some(method),
                ..Default::default()
            };
            let int8 = mixer::quantize(&m, &calib, &opts, &|| {}).expect("int8");
            let acc8 = blob_top1(&int8, &set);
            eprintln!("{layout}: {method:?}: int8 {acc8:.2}% (fp32 {fp32:.2}%)");
            assert!(
                (acc8 - fp32).abs() <= 0.3,
                "{layout}: {method:?}: int8 {acc8}% vs fp32 {fp32}%"
            );
            if method == Method::MinMax {
                minmax = int8;
            } else {
                assert!(
                    int8 != minmax,
                    "{layout}: {method:?} gives the min/max blob"
                );
            }
        }
    }
}

/// Bias correction on both layouts: int8 top-1 within 0.3 points of tract's fp32, and,
/// checked against means taken here from the float forward pass itself, block 0's
/// token-mixing fc1 bias moves by minus the mean error of its quantised weights,
/// `Σ_t (ŵ_t − w_t)·E[x_t]` (`E[x_t]`: the token LayerNorm's output at token t, over the
/// channels and the images), in accumulator steps, within the rounding of both biases.
#[test]
fn bias_correction_keeps_accuracy_and_moves_each_bias_by_the_mean_error() {
    use convmixer_edge::blob::SectionKind;
    let set = mnist_heldout();
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images");
    for layout in ["lucid", "timm"] {
        let path = mixer_file(&format!("mixer-{layout}.torchscript.onnx"));
        let m = mixer::import(&path).expect("import");
        let q = |bias_correction| {
            let opts = Options {
                mean: vec![MNIST_MEAN],
                std: vec![MNIST_STD],
                bias_correction,
                ..Default::default()
            };
            mixer::quantize(&m, &calib, &opts, &|| {}).expect("int8")
        };
        let (plain, corrected) = (q(false), q(true));
        let fp32 = tract_mnist_top1(&path, &set);
        let acc8 = blob_top1(&corrected, &set);
        eprintln!("{layout}: bias-corrected int8 {acc8:.2}% (fp32 {fp32:.2}%)");
        assert!(
            (acc8 - fp32).abs() <= 0.3,
            "{layout}: {acc8}% vs fp32 {fp32}%"
        );

        // Block 0's token fc1 (blob layer 2) reads the token LayerNorm (layer 1), int8 with
        // one scale s_in: its weights are quantised per output over w·s_in.
        let f = mixer::fold(&m, &[MNIST_MEAN], &[MNIST_STD]).expect("fold");
        let stats = mixer::calibrate(&f, &calib, &|| {});
        let (t, d) = (f.tokens(), f.dim);
        let mut e = vec![0f64; t];
        for img in &calib {
            mixer::forward_pixels_with(&f, img, |l, i, seen| {
                if let (1, mixer::Seen::Norm(v)) = (l, seen) {
                    e[i / d] += f64::from(v);
                }
            });
        }
        e.iter_mut().for_each(|v| *v /= (d * calib.len()) as f64);
        let (lo, hi) = stats.out[1].with_zero();
        let (s_in, _) = convmixer_quantize::calibrate::asym(lo, hi);
        let fc1 = &f.blocks[0].token.fc1;
        let (b0, b1) = (
            &plain[section_range(&plain, SectionKind::Bias, 2)],
            &corrected[section_range(&corrected, SectionKind::Bias, 2)],
        );
        let mut moved = 0;
        for o in 0..fc1.n_out {
            let row: Vec<f64> = (0..t).map(|i| f64::from(fc1.w[o * t + i]) * s_in).collect();
            let want = expected_bias_move(&row, |_| s_in, &e);
            let got = f64::from(bias_at(b1, o) - bias_at(b0, o));
            assert!(
                (got - want).abs() <= 1.0,
                "{layout}: output {o}: moved {got}, expected {want:.2}"
            );
            moved += usize::from(got != 0.0);
        }
        // (Most corrections here are below half an accumulator step: the layer's weights
        // are small next to its bias. Some eighth of them is not.)
        assert!(
            moved > fc1.n_out / 8,
            "{layout}: only {moved} of {} biases moved",
            fc1.n_out
        );
    }
}

/// The ConvMixer trained beside the mixers with about their parameter count and the same 49
/// tokens (`convmixer-baseline`, what `host-tools bench MNIST` compares them with): int8
/// within 1 point of fp32 too.
#[test]
fn the_convmixer_baseline_keeps_fp32_accuracy() {
    let set = mnist_heldout();
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calibration images");
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        ..Default::default()
    };
    let path = mixer_file("convmixer-baseline.torchscript.onnx");
    let m = onnx::import(&path).expect("import");
    assert_eq!(
        (m.dim(), m.blocks.len(), m.kernel(), m.patch()),
        (160, 4, 5, 4)
    );
    let int8 =
        convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, &|| {}).expect("int8");
    let fp32 = tract_mnist_top1(&path, &set);
    let acc8 = blob_top1(&int8, &set);
    eprintln!(
        "baseline ConvMixer-160/4: fp32 {fp32:.2}%  int8 {acc8:.2}%  ({} blob bytes)",
        int8.len()
    );
    assert!(fp32 > 97.0, "fp32 reference accuracy {fp32}");
    assert!((acc8 - fp32).abs() <= 1.0, "int8 {acc8}% vs fp32 {fp32}%");
}

/// The tiny random MLP-Mixers seeding the ONNX fuzzer (`tools/fixtures/tiny_mixers.py`):
/// 3 input channels, so the patch-vector order of lucidrains' `Rearrange` (`p1 p2 c`) and
/// the Conv stem's (`c kh kw`) both meet the runtime's pixel order; the import and the fold
/// against tract, and the int8 blob's logits close to them.
#[test]
fn tiny_rgb_mixers_match_tract() {
    let dir = root().join("fuzz/corpus/onnx");
    let mut seen = 0;
    for layout in ["lucid", "timm"] {
        for export in EXPORTS {
            let path = dir.join(format!("mixer-{layout}-tiny.{export}.onnx"));
            let m = mixer::import(&path).expect("import");
            assert_eq!(
                (m.in_c, m.in_h, m.patch, m.dim, m.blocks.len()),
                (3, 8, 4, 8, 1)
            );
            let f = mixer::fold(&m, &[], &[]).expect("fold");
            let tract = TractModel::load(&path, 3, 8, 8).expect("tract");
            let images: Vec<Vec<u8>> = (0..16u32)
                .map(|s| {
                    (0..192u32)
                        .map(|i| ((i * 73 + s * 151 + i * i * s) % 256) as u8)
                        .collect()
                })
                .collect();
            let blob = mixer::quantize(&m, &images, &Options::default(), &|| {}).expect("int8");
            let (mut worst_fold, mut worst_int8, mut span) = (0f32, 0f32, 0f32);
            for px in &images {
                let want = tract.run_pixels(px, &[], &[]).expect("tract");
                worst_fold = worst_fold.max(max_abs(&mixer::forward_pixels(&f, px), &want));
                worst_int8 = worst_int8.max(max_abs(&run_blob(&blob, px), &want));
                span = span.max(want.iter().fold(0f32, |a, v| a.max(v.abs())));
            }
            eprintln!("{layout}/{export}: max |logit − tract| folded {worst_fold:.2e}, int8 {worst_int8:.3} (logits up to {span:.2})");
            assert!(
                worst_fold < 1e-4,
                "{layout}/{export}: folded model differs from tract by {worst_fold}"
            );
            assert!(
                worst_int8 < 0.1 * span.max(0.1),
                "{layout}/{export}: int8 logits {worst_int8} off (span {span})"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
}
