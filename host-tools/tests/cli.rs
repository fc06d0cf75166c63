//! The `host-tools` binary as a user runs it: quantize → classify / eval on the shipped
//! MNIST model, and one-line errors with a non-zero exit code for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root")
        .to_path_buf()
}

fn ex(name: &str) -> PathBuf {
    root().join("examples/mnist").join(name)
}

fn ht(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .args(args)
        .output()
        .expect("run host-tools")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// Asserts failure with one `error:` line containing every `needle`.
fn fails_with(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {e}");
    assert!(
        e.starts_with("error: ") && !e.contains('\n'),
        "not one error line: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "'{n}' missing from: {e}");
    }
}

/// A small ImageFolder: the first `per_class` held-out digits of each class.
fn small_folder(dir: &Path, per_class: usize) -> usize {
    let mut n = 0;
    for d in 0..10 {
        let src = ex(&format!("heldout/{d}"));
        let dst = dir.join(d.to_string());
        std::fs::create_dir_all(&dst).expect("mkdir");
        let mut files: Vec<_> = std::fs::read_dir(&src)
            .expect("read")
            .map(|e| e.expect("e").path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, dst.join(f.file_name().expect("name"))).expect("copy");
            n += 1;
        }
    }
    n
}

fn quantize_int8(out: &Path) -> Output {
    ht(&[
        "quantize",
        s(&ex("convmixer-mnist.torchscript.onnx")),
        "--calib",
        s(&ex("calib")),
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
        "--labels",
        s(&ex("labels.txt")),
        "-o",
        s(out),
    ])
}

#[test]
fn quantize_then_classify_and_eval() {
    let tmp = tempfile::tempdir().expect("tmp");
    let blob = tmp.path().join("m.cmx");
    let o = quantize_int8(&blob);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same bytes as the committed example (deterministic, and the README's command).
    assert!(
        std::fs::read(&blob).expect("blob")
            == std::fs::read(ex("convmixer-mnist-int8.cmx")).expect("example")
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temporary files left: {leftovers:?}");

    // classify: one line per image, the true digit first for these clear examples.
    let imgs: Vec<PathBuf> = (0..10)
        .map(|d| ex(&format!("heldout/{d}")))
        .map(|dir| {
            let mut f: Vec<_> = std::fs::read_dir(dir)
                .expect("ls")
                .map(|e| e.expect("e").path())
                .collect();
            f.sort();
            f[0].clone()
        })
        .collect();
    let mut args = vec!["classify", s(&blob), "--top", "3", "--json"];
    args.extend(imgs.iter().map(|p| s(p)));
    let o = ht(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 10);
    let mut right = 0;
    for (d, v) in lines.iter().enumerate() {
        let top = v["top"].as_array().expect("top");
        assert_eq!(top.len(), 3);
        let p: Vec<f64> = top
            .iter()
            .map(|t| t["score"].as_f64().expect("score"))
            .collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]) && p[0] <= 1.0, "{p:?}");
        right += usize::from(top[0]["label"].as_str() == Some(d.to_string().as_str()));
    }
    assert!(right >= 9, "{right}/10 first digits right");

    // eval: blob and ONNX on the same small folder, JSON with top1 and n.
    let data = tmp.path().join("data");
    let n = small_folder(&data, 20);
    let o = ht(&["eval", s(&blob), "--data", s(&data), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["n"].as_u64(), Some(n as u64));
    let int8 = v["top1"].as_f64().expect("top1");
    let o = ht(&[
        "eval",
        s(&ex("convmixer-mnist.dynamo.onnx")),
        "--data",
        s(&data),
        "--json",
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let fp32 = v["top1"].as_f64().expect("top1");
    assert!(
        fp32 >= 0.95 && (fp32 - int8).abs() <= 0.02,
        "fp32 {fp32} int8 {int8}"
    );
    // Text output names the accuracy too.
    let o = ht(&["eval", s(&blob), "--data", s(&data)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("top-1"));
}

/// An MLP-Mixer ONNX (the dynamo export, opset 20) through the same commands: quantize
/// gives the committed example blob (made from the TorchScript export: the exporters agree),
/// classify and eval work on it, and the ConvMixer-only options are refused by name.
#[test]
fn mlp_mixer_quantize_then_classify_and_eval() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mx = |n: &str| root().join("examples/mixer-mnist").join(n);
    let blob = tmp.path().join("mixer.cmx");
    let onnx = mx("mixer-lucid.dynamo.onnx");
    let args = |extra: &[&str], out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "quantize",
            s(&onnx),
            "--calib",
            s(&ex("calib")),
            "--mean",
            "0.1307",
            "--std",
            "0.3081",
            "--labels",
            s(&ex("labels.txt")),
            "-o",
            s(out),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        a.extend(extra.iter().map(|v| v.to_string()));
        a
    };
    let run = |a: Vec<String>| ht(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(args(&[], &blob));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("MLP-Mixer int8"), "{}", stderr(&o));
    assert!(
        std::fs::read(&blob).expect("blob")
            == std::fs::read(mx("mixer-lucid-int8.cmx")).expect("example")
    );
    let mut img = std::fs::read_dir(ex("heldout/7"))
        .expect("ls")
        .map(|e| e.expect("e").path())
        .collect::<Vec<_>>();
    img.sort();
    let o = ht(&["classify", s(&blob), s(&img[0]), "--json", "--top", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["top"][0]["label"].as_str(), Some("7"), "{v}");
    let data = tmp.path().join("data");
    let n = small_folder(&data, 10);
    let o = ht(&["eval", s(&blob), "--data", s(&data), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["n"].as_u64(), Some(n as u64));
    let int8 = v["top1"].as_f64().expect("top1");
    let o = ht(&[
        "eval",
        s(&onnx),
        "--data",
        s(&data),
        "--json",
        "--mean",
        "0.1307",
        "--std",
        "0.3081",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let fp32 = v["top1"].as_f64().expect("top1");
    assert!(
        fp32 >= 0.9 && (fp32 - int8).abs() <= 0.03,
        "fp32 {fp32} int8 {int8}"
    );
    // ConvMixer-only options: one-line errors, nothing written.
    let bad = tmp.path().join("bad.cmx");
    for (extra, needle) in [
        (&["--precision", "fp16"][..], "int8 only"),
        (
            &["--accuracy-budget", "0.5", "--data", s(&data)][..],
            "ConvMixer models only",
        ),
    ] {
        fails_with(
            &run(args(extra, &bad)),
            &[needle, "mixer-lucid.dynamo.onnx"],
        );
        assert!(!bad.exists());
    }
    fails_with(
        &ht(&[
            "report",
            s(&onnx),
            "--calib",
            s(&ex("calib")),
            "--data",
            s(&data),
        ]),
        &["ConvMixer models only"],
    );
}

#[test]
fn bad_input_gives_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let onnx = ex("convmixer-mnist.torchscript.onnx");
    let blob = ex("convmixer-mnist-int8.cmx");
    let digit = ex("heldout/3/0826.png");
    assert!(digit.exists(), "fixture image");

    // int8 without calibration images.
    fails_with(
        &ht(&["quantize", s(&onnx), "-o", s(&tmp.path().join("x.cmx"))]),
        &["--calib"],
    );
    // Missing and non-ONNX model files.
    fails_with(
        &ht(&["quantize", "/nonexistent.onnx", "--precision", "fp16"]),
        &["/nonexistent.onnx"],
    );
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"definitely not protobuf \xff\xff\xff").expect("write");
    fails_with(
        &ht(&["quantize", s(&junk), "--precision", "fp16"]),
        &["junk.onnx", "ONNX"],
    );
    // An empty calibration folder, and one with an image of the wrong size.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    fails_with(
        &ht(&["quantize", s(&onnx), "--calib", s(&empty)]),
        &["no images"],
    );
    let odd = tmp.path().join("odd");
    std::fs::create_dir(&odd).expect("mkdir");
    let small = odd.join("small.png");
    image::GrayImage::new(10, 12).save(&small).expect("png");
    fails_with(
        &ht(&["quantize", s(&onnx), "--calib", s(&odd)]),
        &["small.png", "12x10", "28x28"],
    );
    // Wrong normalisation.
    fails_with(
        &ht(&[
            "quantize",
            s(&onnx),
            "--precision",
            "fp16",
            "--mean",
            "0.1,0.2",
        ]),
        &["--mean"],
    );
    fails_with(
        &ht(&["quantize", s(&onnx), "--precision", "fp16", "--std", "0"]),
        &["--std"],
    );

    // A failed quantize leaves an existing output untouched.
    let out = tmp.path().join("keep.cmx");
    std::fs::write(&out, b"old contents").expect("write");
    fails_with(
        &ht(&["quantize", s(&onnx), "--calib", s(&empty), "-o", s(&out)]),
        &["no images"],
    );
    assert_eq!(std::fs::read(&out).expect("read"), b"old contents");

    // classify: an RGB image for a gray model, a wrong-size image, a corrupted blob.
    let rgb = tmp.path().join("rgb.png");
    image::RgbImage::new(28, 28).save(&rgb).expect("png");
    fails_with(
        &ht(&["classify", s(&blob), s(&rgb)]),
        &["rgb.png", "3 channel", "28x28 with 1"],
    );
    fails_with(
        &ht(&["classify", s(&blob), s(&small)]),
        &["small.png", "28x28"],
    );
    let mut bytes = std::fs::read(&blob).expect("blob");
    bytes[1000] ^= 4;
    let bad = tmp.path().join("bad.cmx");
    std::fs::write(&bad, &bytes).expect("write");
    fails_with(&ht(&["classify", s(&bad), s(&digit)]), &["bad.cmx", "CRC"]);
    fails_with(
        &ht(&["classify", s(&blob), "/nonexistent.png"]),
        &["/nonexistent.png"],
    );

    // eval: not an ImageFolder, unknown class folder, ONNX options given for a blob.
    fails_with(
        &ht(&["eval", s(&blob), "--data", s(&empty)]),
        &["no labelled images"],
    );
    let wrong = tmp.path().join("wrong/cat");
    std::fs::create_dir_all(&wrong).expect("mkdir");
    fails_with(
        &ht(&["eval", s(&blob), "--data", s(&tmp.path().join("wrong"))]),
        &["cat"],
    );
    fails_with(
        &ht(&["eval", s(&blob), "--data", s(&empty), "--mean", "0.5"]),
        &["--mean"],
    );

    // Command-line mistakes are clap's (exit code 2).
    assert_eq!(ht(&["quantize"]).status.code(), Some(2));
    assert_eq!(
        ht(&["classify", s(&blob), s(&digit), "--top", "0"])
            .status
            .code(),
        Some(2)
    );
}

/// A timm ConvMixer (`timm.models.convmixer.ConvMixer`, GELU, kernel 9, patch 14, 112×112
/// RGB) as PyTorch's default export writes it — `dynamo.onnx` + `dynamo.onnx.data` — copied
/// to a fresh folder as a user has it, through quantize → classify → eval (the blob and the
/// ONNX itself) → report, with timm's ImageNet normalisation.
#[test]
fn timm_external_data_export_through_every_command() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fx = root().join("tests/fixtures/timm/gelu-k9-p14");
    let dir = tmp.path().join("export");
    std::fs::create_dir(&dir).expect("mkdir");
    for f in ["dynamo.onnx", "dynamo.onnx.data"] {
        std::fs::copy(fx.join(f), dir.join(f)).expect("copy");
    }
    let onnx = dir.join("dynamo.onnx");
    let images = fx.join("images");
    let norm = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"];
    let blob = tmp.path().join("timm.cmx");
    let mut args = vec!["quantize", s(&onnx), "--calib", s(&images), "-o", s(&blob)];
    args.extend(norm);
    let o = ht(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dim 16, depth 2, kernel 9, patch 14, 10 classes, input 112x112x3"),
        "{}",
        stderr(&o)
    );

    // classify: the recorded images of classes 3 and 8 (trained gratings: clear examples).
    let o = ht(&[
        "classify",
        s(&blob),
        s(&images.join("3/0.png")),
        s(&images.join("8/1.png")),
        "--json",
        "--top",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let classes: Vec<u64> = String::from_utf8(o.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["top"][0]["class"].as_u64().expect("class")
        })
        .collect();
    assert_eq!(classes, [3, 8]);

    // eval: the int8 blob and the external-data ONNX in fp32 (tract) on the 20 images.
    let o = ht(&["eval", s(&blob), "--data", s(&images), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!((v["n"].as_u64(), v["top1"].as_f64()), (Some(20), Some(1.0)));
    let mut args = vec!["eval", s(&onnx), "--data", s(&images), "--json"];
    args.extend(norm);
    let o = ht(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!((v["n"].as_u64(), v["top1"].as_f64()), (Some(20), Some(1.0)));

    // report: per-layer SQNR of every conv layer and the page.
    let page = tmp.path().join("report");
    let mut args = vec![
        "report",
        s(&onnx),
        "--calib",
        s(&images),
        "--data",
        s(&images),
        "--json",
        "-o",
        s(&page),
    ];
    args.extend(norm);
    let o = ht(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["n"].as_u64(), Some(20), "{v}");
    assert_eq!(v["top1_fp32"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["top1_int8"].as_f64(), Some(1.0), "{v}");
    // The stem and 2 blocks × (depthwise, pointwise): 5 conv layers, each measured.
    let sqnr: Vec<f64> = v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["sqnr_db"].as_f64().expect("sqnr"))
        .collect();
    assert_eq!(sqnr.len(), 5, "{v}");
    assert!(sqnr.iter().all(|&d| d > 10.0), "{sqnr:?}");
    assert!(page.join("index.html").is_file());
}
