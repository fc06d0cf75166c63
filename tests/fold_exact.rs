//! BatchNorm removal is exact: the folded fp32 graph, run by our own fp32 paths (the
//! runtime on an fp32 blob, and the quantiser's host forward pass), matches tract's fp32
//! run of the original ONNX within 1e-4 max-abs on the logits — on models with random BN
//! statistics, from both exporters, with and without a folded input normalisation.

use convmixer_edge::Precision;
use convmixer_edge_tests::*;
use convmixer_quantize::{fold, onnx, reference::TractModel, Options};

const TOL: f32 = 1e-4;

/// Checks one model on `images`; returns the largest error of the runtime vs tract.
fn check(path: &std::path::Path, images: &[Vec<u8>], mean: &[f32], std: &[f32]) -> f32 {
    let m = onnx::import(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let opts = Options {
        mean: mean.to_vec(),
        std: std.to_vec(),
        labels: vec![],
        ..Default::default()
    };
    let blob =
        convmixer_quantize::quantize(&m, Precision::F32, &[], &opts, &|| {}).expect("fp32 blob");
    let folded = fold::fold(&m, mean, std).expect("fold");
    let tract = TractModel::load(path, m.in_c, m.in_h, m.in_w).expect("tract");
    let mut worst = 0f32;
    for px in images {
        let want = tract.run_pixels(px, mean, std).expect("tract run");
        let got = run_blob(&blob, px);
        let host = convmixer_quantize::forward::forward(&folded, px);
        let e = max_abs(&got, &want);
        assert!(
            e <= TOL,
            "{}: runtime fp32 vs tract max-abs {e} > {TOL}",
            path.display()
        );
        let e2 = max_abs(&host, &want);
        assert!(
            e2 <= TOL,
            "{}: host fp32 forward vs tract max-abs {e2} > {TOL}",
            path.display()
        );
        // The logits must not be trivially small, or 1e-4 would mean nothing.
        assert!(
            want.iter().any(|v| v.abs() > 0.05),
            "{}: degenerate logits {want:?}",
            path.display()
        );
        worst = worst.max(e);
    }
    worst
}

#[test]
fn random_bn_fixtures_fold_exactly() {
    let fixtures = fold_fixtures();
    assert!(fixtures.len() >= 9, "fold fixtures missing");
    let mut worst = std::collections::BTreeMap::<String, f32>::new();
    for fx in &fixtures {
        let m = onnx::import(&fx.onnx).unwrap_or_else(|e| panic!("{}: {e:#}", fx.name));
        // Every conv unit has a post-activation BN that the fold has to remove.
        let bns = std::iter::once(&m.embed)
            .chain(m.blocks.iter().flat_map(|(d, p)| [d, p]))
            .filter(|u| u.bn_post.is_some())
            .count();
        assert_eq!(bns, 1 + 2 * m.blocks.len(), "{}: BatchNorms found", fx.name);
        assert_eq!((m.in_c, m.in_h, m.in_w), fx.chw, "{}", fx.name);
        assert_eq!(m.classes(), fx.classes, "{}", fx.name);

        // Tract agrees with PyTorch on the raw fixture (sanity of the reference itself).
        let tract = TractModel::load(&fx.onnx, fx.chw.0, fx.chw.1, fx.chw.2).expect("tract");
        for (px, torch) in fx.images.iter().zip(&fx.torch_logits) {
            let t = tract.run_pixels(px, &[], &[]).expect("tract");
            assert!(
                max_abs(&t, torch) <= TOL,
                "{}: tract vs torch {}",
                fx.name,
                max_abs(&t, torch)
            );
        }

        let e0 = check(&fx.onnx, &fx.images, &[], &[]);
        // A non-trivial per-channel input normalisation folded into the patch embedding.
        let (mean, std): (Vec<f32>, Vec<f32>) = match fx.chw.0 {
            1 => (vec![0.4], vec![0.27]),
            _ => (vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]),
        };
        let e1 = check(&fx.onnx, &fx.images, &mean, &std);
        let w = worst.entry(fx.exporter.clone()).or_default();
        *w = w.max(e0).max(e1);
        eprintln!("{:<70} max-abs {e0:.2e} (no norm) {e1:.2e} (norm)", fx.name);
    }
    assert_eq!(worst.len(), 2, "both exporters covered: {worst:?}");
    for (exporter, e) in &worst {
        eprintln!("fold fixtures, {exporter}: max-abs {e:.2e}");
    }
}

#[test]
fn trained_mnist_model_folds_exactly_with_both_exporters() {
    let set = mnist_heldout();
    let images: Vec<Vec<u8>> = set.iter().step_by(50).map(|(px, _)| px.clone()).collect();
    for exporter in ["torchscript", "dynamo"] {
        let path = mnist(&format!("convmixer-mnist.{exporter}.onnx"));
        let e = check(&path, &images, &[MNIST_MEAN], &[MNIST_STD]);
        eprintln!(
            "MNIST {exporter}: fp32 blob vs tract max-abs {e:.2e} over {} images",
            images.len()
        );
    }
}

#[test]
fn mnist_fp32_blob_matches_pytorch() {
    // An independent second reference: PyTorch's own logits, recorded by the training script.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnist("torch_reference.json")).expect("reference"))
            .expect("json");
    let set = mnist_heldout();
    let m = onnx::import(&mnist("convmixer-mnist.dynamo.onnx")).expect("import");
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        labels: vec![],
        ..Default::default()
    };
    let blob = convmixer_quantize::quantize(&m, Precision::F32, &[], &opts, &|| {}).expect("blob");
    let samples = doc["samples"].as_array().expect("samples");
    assert!(samples.len() >= 30);
    for s in samples {
        let i = s["idx_position"].as_u64().expect("idx") as usize;
        let want: Vec<f32> = s["logits"]
            .as_array()
            .expect("logits")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect();
        let got = run_blob(&blob, &set[i].0);
        assert!(
            max_abs(&got, &want) <= TOL,
            "sample {i}: {} vs PyTorch",
            max_abs(&got, &want)
        );
    }
}
