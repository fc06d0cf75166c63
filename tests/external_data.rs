//! ONNX external data (`model.onnx` + `model.onnx.data`, PyTorch's default export; or one
//! file per tensor): the shipped models rewritten to both layouts by the test itself — every
//! initializer and every `Constant` node's value moved out — import to the same model, give
//! byte-identical blobs, and run in tract to the same logits as the inline files; and the
//! bytes-only entry points say that such a model needs its folder.

use convmixer_edge::Precision;
use convmixer_edge_tests::onnx_edit::{read_proto, write_external, Layout};
use convmixer_edge_tests::*;
use convmixer_quantize::{data, mixer, onnx, reference::TractModel, Options};
use tract_onnx::prelude::*;

const LAYOUTS: [Layout; 2] = [Layout::OneFile, Layout::PerTensor];

fn mixer_file(name: &str) -> std::path::PathBuf {
    root().join("examples/mixer-mnist").join(name)
}

#[test]
fn convmixer_blobs_are_byte_identical_from_external_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let calib = data::calibration_set(&mnist("calib"), (28, 28, 1)).expect("calib");
    let calib = &calib[..40];
    let opts = Options {
        mean: vec![MNIST_MEAN],
        std: vec![MNIST_STD],
        ..Default::default()
    };
    for export in ["torchscript", "dynamo"] {
        let inline = mnist(&format!("convmixer-mnist.{export}.onnx"));
        let want = onnx::import(&inline).expect("inline import");
        let blobs: Vec<Vec<u8>> = [Precision::Int8, Precision::F16, Precision::F32]
            .into_iter()
            .map(|p| convmixer_quantize::quantize(&want, p, calib, &opts, &|| {}).expect("blob"))
            .collect();
        for layout in LAYOUTS {
            let dir = tmp.path().join(format!("{export}-{layout:?}"));
            let (path, moved) = write_external(&read_proto(&inline), &dir, "model.onnx", layout);
            // Every tensor left the .onnx: the TorchScript export's GELU constants are
            // Constant nodes, 27 of them.
            let consts = if export == "torchscript" { 27 } else { 0 };
            let inits = read_proto(&inline).graph.expect("graph").initializer.len();
            assert_eq!(moved, inits + consts, "{export} {layout:?}");
            let got = onnx::import(&path).unwrap_or_else(|e| panic!("{export} {layout:?}: {e:#}"));
            assert_eq!(got, want, "{export} {layout:?}: imported model");
            for (p, blob) in [Precision::Int8, Precision::F16, Precision::F32]
                .into_iter()
                .zip(&blobs)
            {
                let b = convmixer_quantize::quantize(&got, p, calib, &opts, &|| {}).expect("blob");
                assert!(b == *blob, "{export} {layout:?}: {p:?} blob differs");
            }
        }
    }
}

#[test]
fn tract_reference_runs_external_data_to_the_inline_logits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let set = mnist_heldout();
    let images: Vec<&Vec<u8>> = set.iter().step_by(200).map(|(px, _)| px).collect();
    for export in ["torchscript", "dynamo"] {
        let inline = mnist(&format!("convmixer-mnist.{export}.onnx"));
        let want = TractModel::load(&inline, 1, 28, 28).expect("inline");
        for layout in LAYOUTS {
            let dir = tmp.path().join(format!("{export}-{layout:?}"));
            let (path, _) = write_external(&read_proto(&inline), &dir, "model.onnx", layout);
            let got = TractModel::load(&path, 1, 28, 28).expect("external");
            // tract's own external-data reader (independent of ours) on the TorchScript
            // export (the dynamo one needs the batch annotations dropped first).
            let own = (export == "torchscript").then(|| {
                tract_onnx::onnx()
                    .model_for_path(&path)
                    .and_then(|m| m.with_input_fact(0, f32::fact([1, 1, 28, 28]).into()))
                    .and_then(|m| m.into_optimized())
                    .and_then(|m| m.into_runnable())
                    .expect("tract's own loader")
            });
            for px in &images {
                let w = want
                    .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                    .expect("run");
                let g = got
                    .run_pixels(px, &[MNIST_MEAN], &[MNIST_STD])
                    .expect("run");
                assert_eq!(g, w, "{export} {layout:?}: logits");
                if let Some(plan) = &own {
                    let x = convmixer_quantize::reference::normalise(
                        px,
                        1,
                        &[MNIST_MEAN],
                        &[MNIST_STD],
                    );
                    let x = Tensor::from_shape(&[1, 1, 28, 28], &x).expect("tensor");
                    let out = plan.run(tvec!(x.into())).expect("tract's own run");
                    let o: Vec<f32> = out[0]
                        .to_plain_array_view::<f32>()
                        .expect("f32")
                        .iter()
                        .copied()
                        .collect();
                    assert_eq!(
                        o, w,
                        "{export} {layout:?}: tract's own external-data loader"
                    );
                }
            }
        }
    }
}

#[test]
fn mlp_mixer_imports_from_external_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    for name in ["mixer-timm.dynamo.onnx", "mixer-lucid.torchscript.onnx"] {
        let inline = mixer_file(name);
        let want = mixer::import(&inline).expect("inline import");
        let tract = TractModel::load(&inline, 1, 28, 28).expect("inline tract");
        let px = &mnist_heldout()[0].0;
        let logits = tract.run_pixels(px, &[], &[]).expect("run");
        for layout in LAYOUTS {
            let dir = tmp.path().join(format!("{name}-{layout:?}"));
            let (path, moved) = write_external(&read_proto(&inline), &dir, name, layout);
            assert!(moved > 50, "{name}: {moved} tensors moved");
            let got = mixer::import(&path).unwrap_or_else(|e| panic!("{name} {layout:?}: {e:#}"));
            assert_eq!(got, want, "{name} {layout:?}");
            let t = TractModel::load(&path, 1, 28, 28).expect("external tract");
            assert_eq!(t.run_pixels(px, &[], &[]).expect("run"), logits);
        }
    }
}

/// The bytes alone cannot hold external tensors: the bytes-only entry points (the fuzz
/// target's) name the first one and say what is needed.
#[test]
fn bytes_only_imports_need_the_models_folder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (path, _) = write_external(
        &read_proto(&mnist("convmixer-mnist.torchscript.onnx")),
        tmp.path(),
        "m.onnx",
        Layout::OneFile,
    );
    let bytes = std::fs::read(&path).expect("read");
    let e = format!("{:#}", onnx::import_bytes(&bytes).expect_err("external"));
    assert_eq!(
        e,
        "tensor '0.weight' is stored in the external data file 'm.onnx.data', which needs the model's folder: read the model from its path"
    );
    let (path, _) = write_external(
        &read_proto(&mixer_file("mixer-lucid.torchscript.onnx")),
        tmp.path(),
        "x.onnx",
        Layout::PerTensor,
    );
    let e = format!(
        "{:#}",
        mixer::import_bytes(&std::fs::read(&path).expect("read")).expect_err("external")
    );
    assert!(
        e.ends_with("is stored in the external data file 't000.bin', which needs the model's folder: read the model from its path"),
        "{e}"
    );
    assert!(TractModel::from_bytes(&bytes, 1, 28, 28).is_err());
    // Only the Constant nodes outside: the error names the node.
    let mut m = read_proto(&mnist("convmixer-mnist.torchscript.onnx"));
    let inits = std::mem::take(&mut m.graph.as_mut().expect("graph").initializer);
    let (path, moved) = write_external(&m, &tmp.path().join("c"), "c.onnx", Layout::PerTensor);
    assert_eq!(moved, 27);
    let mut m = read_proto(&path);
    m.graph.as_mut().expect("graph").initializer = inits;
    let e = format!(
        "{:#}",
        onnx::import_bytes(&prost::Message::encode_to_vec(&m)).expect_err("external")
    );
    assert_eq!(
        e,
        "node '/1/Constant' (Constant): its value is stored in the external data file 't000.bin', which needs the model's folder: read the model from its path"
    );
}
