//! timm's ConvMixer (`timm.models.convmixer.ConvMixer`, the class behind
//! `timm.create_model("convmixer_768_32")` and its siblings), small trained instances in
//! `tests/fixtures/timm/` (tools/fixtures/timm_convmixers.py), each exported three ways:
//! TorchScript (`dynamo=False`), the dynamo default (`dynamo.onnx` + `dynamo.onnx.data`) and
//! one file per weight tensor. Every export imports to the same model, folds exactly (the
//! fp32 blob against tract and against PyTorch's recorded logits), gives byte-identical
//! int8/fp16/fp32 blobs, and the int8 blob's top-1 agrees with fp32 on the recorded images.

use std::path::{Path, PathBuf};

use convmixer_edge::{Activation, Precision};
use convmixer_edge_tests::*;
use convmixer_quantize::{data, fold, onnx, reference::TractModel, Options};
use serde_json::Value;

/// As tests/fold_exact.rs.
const TOL: f32 = 1e-4;

const EXPORTS: [&str; 3] = ["torchscript.onnx", "dynamo.onnx", "per-tensor/model.onnx"];

struct Fixture {
    dir: PathBuf,
    doc: Value,
    /// `(HWC pixels, label, PyTorch's logits)` per recorded image.
    images: Vec<(Vec<u8>, usize, Vec<f32>)>,
    mean: Vec<f32>,
    std: Vec<f32>,
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn fixture(name: &str) -> Fixture {
    let dir = root().join("tests/fixtures/timm").join(name);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).expect("reference.json"))
            .expect("json");
    let size = doc["input"][1].as_u64().expect("size") as usize;
    let images = doc["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|i| {
            let p = dir.join(i["file"].as_str().expect("file"));
            let px = data::load_image(&p, (size, size, 3)).expect("png");
            (
                px,
                i["label"].as_u64().expect("label") as usize,
                floats(&i["logits"]),
            )
        })
        .collect();
    Fixture {
        mean: floats(&doc["mean"]),
        std: floats(&doc["std"]),
        dir,
        doc,
        images,
    }
}

fn path(f: &Fixture, export: &str) -> PathBuf {
    f.dir.join(export)
}

/// The fp32 blob (runtime) and the host forward pass of the folded graph against tract
/// and PyTorch; returns the largest error.
fn folds_exactly(f: &Fixture, p: &Path, m: &onnx::Imported, opts: &Options) -> f32 {
    let blob = convmixer_quantize::quantize(m, Precision::F32, &[], opts, &|| {}).expect("fp32");
    let folded = fold::fold(m, &f.mean, &f.std).expect("fold");
    let tract = TractModel::load(p, 3, m.in_h, m.in_w).expect("tract");
    let mut worst = 0f32;
    for (px, _, torch) in &f.images {
        let want = tract.run_pixels(px, &f.mean, &f.std).expect("tract run");
        assert!(want.iter().any(|v| v.abs() > 1.0), "degenerate {want:?}");
        let runtime = run_blob(&blob, px);
        let host = convmixer_quantize::forward::forward(&folded, px);
        for (what, got, reference) in [
            ("tract vs PyTorch", &want, torch),
            ("runtime fp32 vs tract", &runtime, &want),
            ("runtime fp32 vs PyTorch", &runtime, torch),
            ("host forward vs tract", &host, &want),
        ] {
            let e = max_abs(got, reference);
            assert!(e <= TOL, "{}: {what} max-abs {e} > {TOL}", p.display());
            worst = worst.max(e);
        }
    }
    worst
}

/// `m` with its conv units' (node) names cleared.
fn unnamed(m: &onnx::Imported) -> onnx::Imported {
    let mut m = m.clone();
    m.embed.name.clear();
    for (d, p) in &mut m.blocks {
        d.name.clear();
        p.name.clear();
    }
    m
}

fn check_model(name: &str, act: Activation) {
    let f = fixture(name);
    let cfg = &f.doc["config"];
    let u = |k: &str| cfg[k].as_u64().expect(k) as usize;
    let size = f.doc["input"][1].as_u64().expect("size") as usize;
    assert_eq!(f.images.len(), 20);
    let calib: Vec<Vec<u8>> = f.images.iter().map(|i| i.0.clone()).collect();
    let opts = Options {
        mean: f.mean.clone(),
        std: f.std.clone(),
        ..Default::default()
    };
    let mut first: Option<(onnx::Imported, Vec<Vec<u8>>)> = None;
    for export in EXPORTS {
        let p = path(&f, export);
        let m = onnx::import(&p).unwrap_or_else(|e| panic!("{name}/{export}: {e:#}"));
        assert_eq!(
            (m.dim(), m.blocks.len(), m.kernel(), m.patch(), m.classes()),
            (u("dim"), u("depth"), u("kernel_size"), u("patch_size"), 10),
            "{name}/{export}"
        );
        assert_eq!((m.in_c, m.in_h, m.in_w), (3, size, size));
        assert_eq!(m.embed.act, act, "{name}/{export}");
        // timm's stem, depthwise and pointwise units all end in a BatchNorm after the act.
        assert!(std::iter::once(&m.embed)
            .chain(m.blocks.iter().flat_map(|(d, p)| [d, p]))
            .all(|u| u.bn_post.is_some() && u.bn_pre.is_none()));
        let e = folds_exactly(&f, &p, &m, &opts);
        eprintln!("{name}/{export}: fold max-abs {e:.2e}");
        let blobs: Vec<Vec<u8>> = [Precision::Int8, Precision::F16, Precision::F32]
            .into_iter()
            .map(|pr| convmixer_quantize::quantize(&m, pr, &calib, &opts, &|| {}).expect("blob"))
            .collect();
        match &first {
            None => first = Some((m, blobs)),
            Some((m0, b0)) => {
                // The same model, up to the exporters' node names.
                assert_eq!(
                    unnamed(&m),
                    unnamed(m0),
                    "{name}/{export}: imported model differs from TorchScript's"
                );
                for (pr, (a, b)) in ["int8", "fp16", "fp32"].iter().zip(blobs.iter().zip(b0)) {
                    assert!(
                        a == b,
                        "{name}/{export}: {pr} blob differs from TorchScript's"
                    );
                }
            }
        }
    }
    // int8 vs fp32 top-1 on the recorded images (and both right: the model is trained).
    let (_, blobs) = first.expect("exports");
    for (px, label, torch) in &f.images {
        let q = argmax(&run_blob(&blobs[0], px));
        let h = argmax(&run_blob(&blobs[1], px));
        let fp = argmax(&run_blob(&blobs[2], px));
        assert_eq!(fp, argmax(torch), "{name}: fp32 top-1 vs PyTorch");
        assert_eq!(
            q, fp,
            "{name}: int8 top-1 differs from fp32 (label {label})"
        );
        assert_eq!(
            h, fp,
            "{name}: fp16 top-1 differs from fp32 (label {label})"
        );
        assert_eq!(fp, *label, "{name}: trained model misclassifies");
    }
}

#[test]
fn timm_relu_k7_p7_every_export() {
    check_model("relu-k7-p7", Activation::Relu);
}

#[test]
fn timm_gelu_k9_p14_every_export() {
    check_model("gelu-k9-p14", Activation::Gelu);
}

/// The fixtures are what their README says: PyTorch's default export writes the weights to
/// `dynamo.onnx.data`, and the per-tensor layout has one file per weight.
#[test]
fn fixtures_keep_their_weights_outside() {
    for name in ["relu-k7-p7", "gelu-k9-p14"] {
        let f = fixture(name);
        for (export, files) in [("dynamo.onnx", 1usize), ("per-tensor/model.onnx", 0)] {
            let m = onnx_edit::read_proto(&path(&f, export));
            let ext: Vec<String> = m
                .graph
                .expect("graph")
                .initializer
                .iter()
                .filter(|t| t.data_location == Some(1))
                .map(|t| {
                    t.external_data
                        .iter()
                        .find(|e| e.key == "location")
                        .expect("location")
                        .value
                        .clone()
                })
                .collect();
            let mut distinct = ext.clone();
            distinct.sort();
            distinct.dedup();
            assert!(ext.len() >= 5, "{name}/{export}: {ext:?}");
            let want = if files == 1 { 1 } else { ext.len() };
            assert_eq!(distinct.len(), want, "{name}/{export}: {distinct:?}");
        }
        let versions = &f.doc["versions"];
        assert_eq!(versions["timm"], "1.0.31");
        assert!(versions["torch"]
            .as_str()
            .expect("torch")
            .starts_with("2.15.0"));
    }
}
