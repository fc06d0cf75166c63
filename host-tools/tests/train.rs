//! `host-tools train`: a tiny ConvMixer trained for a few epochs on the shipped MNIST
//! digits, on the CPU.
//!
//! - the loss goes down and the model learns (validation accuracy well above chance);
//! - the exported ONNX gives the trained model's logits under tract (within 1e-4), passes
//!   `onnx.checker` where Python's `onnx` is installed, and goes through `host-tools
//!   quantize` → `eval` (int8) close to its fp32 accuracy, with the normalisation and class
//!   names the file records;
//! - a run killed at random moments leaves either no checkpoint or a complete one (never a
//!   torn file), and resuming from it writes exactly (byte for byte) the ONNX file of the
//!   uninterrupted run;
//! - bad input to `train` fails with one line and writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use host_tools::train::checkpoint::Checkpoint;
use host_tools::train::{self, ArchFlags, Device, HyperFlags, TrainOptions};

fn ex(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/mnist")
        .join(name)
}

fn host_tools(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .args(args)
        .output()
        .expect("run host-tools")
}

/// The tiny run: ConvMixer-16/2, kernel 3, patch 4 (7×7 tokens), 3 epochs on the 1996
/// held-out digits (IDX), validated on the same digits as an ImageFolder tree.
const EPOCHS: usize = 3;
fn tiny_args(out: &Path) -> Vec<String> {
    [
        "train",
        "--data",
        ex("heldout-images.idx3-ubyte").to_str().unwrap(),
        "--val",
        ex("heldout").to_str().unwrap(),
        "--dim",
        "16",
        "--depth",
        "2",
        "--kernel",
        "3",
        "--patch",
        "4",
        "--epochs",
        &EPOCHS.to_string(),
        "--batch",
        "32",
        "--lr",
        "0.02",
        "--seed",
        "7",
        "-o",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn tiny_opts(out: &Path) -> TrainOptions {
    TrainOptions {
        data: ex("heldout-images.idx3-ubyte"),
        val: Some(ex("heldout")),
        out: out.to_path_buf(),
        checkpoint: None,
        resume: None,
        device: Device::Cpu,
        gelu: convmixer_quantize::onnx_export::GeluForm::Erf,
        arch: ArchFlags {
            dim: Some(16),
            depth: Some(2),
            kernel: Some(3),
            patch: Some(4),
            act: None,
        },
        hyper: HyperFlags {
            epochs: Some(EPOCHS),
            batch: Some(32),
            lr: Some(0.02),
            seed: Some(7),
            ..Default::default()
        },
        mean: None,
        std: None,
        progress: false,
    }
}

/// `host-tools eval MODEL --data heldout --json`'s top-1.
fn eval_top1(model: &Path) -> f64 {
    let out = host_tools(&[
        "eval",
        model.to_str().unwrap(),
        "--data",
        ex("heldout").to_str().unwrap(),
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval --json output");
    v["top1"].as_f64().expect("top1 field")
}

#[test]
fn trains_exports_quantizes_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.onnx");
    let t0 = Instant::now();
    let s = train::train(&tiny_opts(&a)).expect("train");
    let secs = t0.elapsed().as_secs_f64();
    let h = &s.history;
    println!("tiny run: {secs:.1} s; epochs {h:#?}");
    assert_eq!(h.len(), EPOCHS);
    assert!(
        h[EPOCHS - 1].loss < 0.7 * h[0].loss,
        "loss did not go down: {h:?}"
    );
    let val = h[EPOCHS - 1].val_acc.expect("validation accuracy");
    assert!(val > 0.6, "validation accuracy {val}");
    // The export check compares tract's run of the written bytes with burn's logits.
    assert_eq!(s.export_checked, 16);
    assert!(
        s.export_max_abs_diff <= 1e-4,
        "export error {}",
        s.export_max_abs_diff
    );

    // The checkpoint holds the whole history and the run's settings.
    let ck =
        Checkpoint::from_bytes(&std::fs::read(a.with_extension("ckpt")).unwrap(), "ckpt").unwrap();
    assert_eq!(ck.header.epochs_done, EPOCHS);
    assert_eq!(&ck.header.history, h);

    // Independent check of the file: the importer reads it back as a ConvMixer with BN
    // layers, and the recorded metadata is the training set's normalisation.
    let bytes = std::fs::read(&a).unwrap();
    let m = convmixer_quantize::onnx::import_bytes(&bytes).expect("import");
    assert_eq!(
        (m.dim(), m.blocks.len(), m.kernel(), m.patch(), m.classes()),
        (16, 2, 3, 4, 10)
    );
    assert!(m.embed.bn_post.is_some() && m.blocks.iter().all(|b| b.0.bn_post.is_some()));
    let proto = convmixer_quantize::onnx::parse_model(&bytes).expect("parse");
    let (mean, std) = convmixer_quantize::onnx::normalisation(&proto)
        .unwrap()
        .expect("metadata");
    assert_eq!((mean.clone(), std.clone()), (s.mean.clone(), s.std.clone()));
    assert!(
        (mean[0] - 0.13).abs() < 0.02 && (std[0] - 0.31).abs() < 0.03,
        "{mean:?} {std:?}"
    );
    onnx_checker(&a);

    // fp32 ONNX accuracy (tract) vs the int8 blob, both through the CLI.
    let fp32 = eval_top1(&a);
    assert!(
        (fp32 - val).abs() < 1e-9,
        "tract's accuracy {fp32} vs burn's {val}"
    );
    let cmx = dir.path().join("a.cmx");
    let out = host_tools(&[
        "quantize",
        a.to_str().unwrap(),
        "--calib",
        ex("calib").to_str().unwrap(),
        "-o",
        cmx.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("normalisation from"),
        "quantize did not use the recorded normalisation: {err}"
    );
    let int8 = eval_top1(&cmx);
    println!("fp32 {fp32:.4}, int8 {int8:.4}");
    assert!(int8 > fp32 - 0.03, "int8 {int8} vs fp32 {fp32}");
    // The blob carries the class names the ONNX file recorded (the IDX set's "0".."9").
    let out = host_tools(&[
        "classify",
        cmx.to_str().unwrap(),
        ex("heldout/7/0856.png").to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = &v["top"][0];
    assert_eq!(
        top["label"].as_str().unwrap(),
        top["class"].to_string(),
        "{v}"
    );

    // The checkpoint restores exactly: its model and optimiser state load and record back
    // to the same bytes, and resuming the finished run only exports, byte for byte the same
    // file.
    let ckpt = a.with_extension("ckpt");
    let again = train::reload_checkpoint(&ckpt).unwrap();
    assert!(
        record(&again.model) == record(&ck.model),
        "model state does not reload exactly"
    );
    assert!(
        record(&again.optim) == record(&ck.optim),
        "optimiser state does not reload exactly"
    );
    let mut r = tiny_opts(&dir.path().join("again.onnx"));
    r.resume = Some(ckpt.clone());
    r.checkpoint = Some(dir.path().join("again.ckpt"));
    train::train(&r).unwrap();
    assert!(
        std::fs::read(dir.path().join("again.onnx")).unwrap() == bytes,
        "resuming a finished run changed the model"
    );

    // Kill runs of the same configuration at moments spread over a run; each must leave no
    // checkpoint or a complete one, and resuming must give the uninterrupted run's model.
    // burn 0.21's ndarray backend is not bitwise reproducible from one process to the next
    // (two identical uninterrupted runs differ in the last bits of their weights, ~1e-4
    // relative after 3 epochs, threads or no threads), so the comparison has a tolerance.
    let mut resumed_from = Vec::new();
    for (i, frac) in [0.15, 0.4, 0.65, 0.9].iter().enumerate() {
        let b = dir.path().join(format!("b{i}.onnx"));
        let ckpt = b.with_extension("ckpt");
        let mut child = Command::new(env!("CARGO_BIN_EXE_host-tools"))
            .args(tiny_args(&b))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(secs * frac));
        let _ = child.kill();
        let _ = child.wait();
        let done = if ckpt.exists() {
            let c = Checkpoint::from_bytes(&std::fs::read(&ckpt).unwrap(), "killed run")
                .expect("a killed run left a torn checkpoint");
            c.header.epochs_done
        } else {
            0
        };
        resumed_from.push(done);
        if done == 0 {
            continue;
        }
        let _ = std::fs::remove_file(&b);
        let mut r = tiny_args(&b);
        r.extend(["--resume".to_string(), ckpt.to_str().unwrap().to_string()]);
        let out = Command::new(env!("CARGO_BIN_EXE_host-tools"))
            .args(&r)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "resume: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Checkpoint::from_bytes(&std::fs::read(&ckpt).unwrap(), "resumed").unwrap();
        assert_eq!(c.header.history.len(), EPOCHS);
        // The epochs before the kill are the killed run's (kept from its checkpoint): the
        // same run as `h`, up to timings and the backend's last-bit noise.
        for (x, y) in c.header.history.iter().zip(h) {
            assert_eq!(x.epoch, y.epoch);
            assert!(
                (x.loss - y.loss).abs() < 1e-3 * y.loss,
                "epoch {}: loss {} vs {}",
                x.epoch,
                x.loss,
                y.loss
            );
        }
        let got = convmixer_quantize::onnx::import_bytes(&std::fs::read(&b).unwrap()).unwrap();
        let d = weight_diff(&m, &got);
        println!(
            "killed after epoch {done}: resumed model's largest relative weight difference {d:.2e}"
        );
        assert!(
            d < 1e-3,
            "run resumed after epoch {done} differs from the uninterrupted run by {d}"
        );
    }
    println!("resumed from epochs {resumed_from:?}");
    assert!(
        resumed_from.iter().any(|&d| d > 0 && d < EPOCHS),
        "no kill landed mid-run: {resumed_from:?}"
    );
}

/// A burn record (MessagePack) as a value with every map's entries sorted, so that two
/// recordings of the same state compare equal whatever order a HashMap gave them.
fn record(bytes: &[u8]) -> rmpv::Value {
    fn norm(v: rmpv::Value) -> rmpv::Value {
        match v {
            rmpv::Value::Map(m) => {
                let mut m: Vec<_> = m.into_iter().map(|(k, v)| (norm(k), norm(v))).collect();
                m.sort_by_key(|(k, _)| format!("{k:?}"));
                rmpv::Value::Map(m)
            }
            rmpv::Value::Array(a) => rmpv::Value::Array(a.into_iter().map(norm).collect()),
            v => v,
        }
    }
    norm(rmpv::decode::read_value(&mut &bytes[..]).expect("a MessagePack record"))
}

/// Largest |a − b| / (1 + |a|) over every weight, bias and BN statistic.
fn weight_diff(
    a: &convmixer_quantize::onnx::Imported,
    b: &convmixer_quantize::onnx::Imported,
) -> f32 {
    fn unit(u: &convmixer_quantize::onnx::ConvUnit) -> Vec<f32> {
        let mut v = u.w.clone();
        v.extend(&u.b);
        if let Some(bn) = &u.bn_post {
            for x in [&bn.gamma, &bn.beta, &bn.mean, &bn.var] {
                v.extend(x);
            }
        }
        v
    }
    let all = |m: &convmixer_quantize::onnx::Imported| {
        let mut v = unit(&m.embed);
        for (d, p) in &m.blocks {
            v.extend(unit(d));
            v.extend(unit(p));
        }
        v.extend(&m.head_w);
        v.extend(&m.head_b);
        v
    };
    let (x, y) = (all(a), all(b));
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs() / (1.0 + p.abs()))
        .fold(0.0, f32::max)
}

/// Python's `onnx.checker` on the file, where Python has `onnx`: the venv
/// `scripts/install-toolchain.sh` makes (so always under the test command), the fixtures
/// venv, or the system Python; prints why when none has it.
fn onnx_checker(path: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let py = ["onnx-venv", "fixtures-venv"]
        .iter()
        .map(|v| root.join(v).join("bin/python"))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let has = Command::new(&py).args(["-c", "import onnx"]).output();
    if !matches!(&has, Ok(o) if o.status.success()) {
        println!(
            "onnx.checker not run: {} has no `onnx` module",
            py.display()
        );
        return;
    }
    let out = Command::new(&py)
        .args(["-c", "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); print('ok', m.ir_version, [(o.domain, o.version) for o in m.opset_import])"])
        .arg(path)
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    println!("onnx.checker: {so}");
    assert!(
        out.status.success() && so.starts_with("ok"),
        "onnx.checker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_fails_with_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let o = out.to_str().unwrap();
    let idx = ex("heldout-images.idx3-ubyte");
    let idx = idx.to_str().unwrap();
    let garbage = dir.path().join("garbage.ckpt");
    std::fs::write(&garbage, b"CMXCKPT1 this is not a checkpoint").unwrap();
    let torn = dir.path().join("torn.ckpt");
    let (calib, labels) = (ex("calib"), ex("labels.txt"));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--data", "/nonexistent/set"],
            "/nonexistent/set: cannot read",
        ),
        (
            vec!["--data", calib.to_str().unwrap()],
            "no labelled images",
        ),
        (
            vec!["--data", idx, "--kernel", "4"],
            "--kernel 4: the depthwise kernel must be odd",
        ),
        (
            vec!["--data", idx, "--patch", "40"],
            "--patch 40 does not fit the 28x28 images",
        ),
        (
            vec!["--data", idx, "--batch", "0"],
            "--epochs and --batch must be at least 1",
        ),
        (
            vec!["--data", idx, "--std", "0.3,0.3"],
            "--std has 2 values, the images have 1 channel(s)",
        ),
        (
            vec!["--data", idx, "--resume", garbage.to_str().unwrap()],
            "checkpoint CRC mismatch",
        ),
        (
            vec!["--data", idx, "--resume", torn.to_str().unwrap()],
            "torn.ckpt: cannot read",
        ),
        (
            vec!["--data", idx, "--val", labels.to_str().unwrap()],
            "not a labelled set",
        ),
        (
            vec!["--data", idx, "--device", "cuda"],
            "--device cuda: this host-tools was built without it",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec![
            "train", "-o", o, "--dim", "8", "--depth", "1", "--epochs", "1",
        ];
        a.extend(&args);
        let r = host_tools(&a);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want '{want}', got: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: not one line: {err}"
        );
        assert!(
            !out.exists() && !out.with_extension("ckpt").exists(),
            "{args:?} wrote output"
        );
    }
}

#[test]
fn resume_refuses_other_settings_or_data() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.onnx");
    let mut opts = tiny_opts(&a);
    opts.hyper.epochs = Some(1);
    opts.val = None;
    // This one writes GELU as the opset-20 `Gelu` op (the other test: the Erf pattern).
    opts.gelu = convmixer_quantize::onnx_export::GeluForm::GeluOp;
    train::train(&opts).expect("train");
    onnx_checker(&a);
    assert_eq!(convmixer_quantize::onnx::import(&a).unwrap().opset, 20);
    let ck = a.with_extension("ckpt");
    let c = ck.to_str().unwrap();
    let o = dir.path().join("b.onnx");
    let o = o.to_str().unwrap();
    let idx = ex("heldout-images.idx3-ubyte");
    let idx = idx.to_str().unwrap();
    // The same digits with one pixel changed.
    let other = dir.path().join("other-images-idx3-ubyte");
    let mut b = std::fs::read(idx).unwrap();
    b[16 + 400] ^= 0x80;
    std::fs::write(&other, b).unwrap();
    std::fs::copy(
        ex("heldout-labels.idx1-ubyte"),
        dir.path().join("other-labels-idx1-ubyte"),
    )
    .unwrap();
    for (extra, want) in [
        (
            vec!["--data", idx, "--dim", "32"],
            "--dim 32 differs from the checkpoint's 16",
        ),
        (
            vec!["--data", idx, "--lr", "0.5"],
            "--lr 0.5 differs from the checkpoint's 0.02",
        ),
        (
            vec!["--data", other.to_str().unwrap()],
            "the training data differs from the checkpoint's",
        ),
    ] {
        let mut args = vec!["train", "--resume", c, "-o", o];
        args.extend(&extra);
        let r = host_tools(&args);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "want '{want}', got: {err}");
    }
}
