//! `host-tools report` on the shipped MNIST model: every conv layer's int8 and fp16 output
//! (traced from the runtime) against the fp32 folded graph, the calibration ranges, and the
//! HTML page (`-o`) rendered in headless Chromium.

use std::path::Path;

use convmixer_quantize::calibrate::{self, Method};
use convmixer_quantize::{data, onnx, Options};
use host_tools::report::{analyse, diagnose, Diagnosis};

#[test]
fn per_layer_sqnr_fp16_and_calibration_ranges_are_measured() {
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
    let opts = |method| Options {
        mean: vec![0.1307],
        std: vec![0.3081],
        calibration: Some(method),
        ..Default::default()
    };
    let minmax = diagnose(&model, &calib, &set, &opts(Method::MinMax)).expect("diagnose");
    // MSE through the whole analysis (what `report` prints and `-o` draws): the same int8
    // evaluation, plus fp16 and the calibration ranges.
    let a = analyse(&model, &calib, &set, &opts(Method::Mse), None, &|| {}).expect("analyse");
    let int8 = a.variant("int8").expect("int8 variant");
    let mse = Diagnosis {
        layers: int8.layers.clone(),
        n: a.eval.n,
        top1_fp32: a.eval.top1_fp32,
        top1_int8: int8.top1,
        agreement: int8.agreement,
        blob_bytes: int8.blob_bytes,
        arena_bytes: int8.arena_bytes,
    };
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
    // fp16 (traced as floats) is far closer to fp32 than int8 on every layer.
    let fp16 = a.variant("fp16").expect("fp16 variant");
    assert_eq!(fp16.precision, convmixer_edge::Precision::F16);
    for (h, q) in fp16.layers.iter().zip(&int8.layers) {
        assert!(h.sqnr_db > q.sqnr_db + 25.0, "fp16 {h:?} vs int8 {q:?}");
    }
    assert!(fp16.agreement >= 0.99, "fp16 agreement {}", fp16.agreement);
    assert!(fp16.blob_bytes > int8.blob_bytes);
    // Confusion matrices count every image once.
    for v in &a.eval.variants {
        let total: u32 = v.confusion.iter().flatten().sum();
        assert_eq!(total as usize, set.len(), "{}", v.name);
        let diag: u32 = (0..10).map(|c| v.confusion[c][c]).sum();
        assert_eq!(diag as usize, v.correct, "{}", v.name);
    }
    // The ranges: the histogram's clip is the blob's, inside what was observed, and MSE
    // clipped something somewhere.
    assert_eq!(a.ranges.len(), 9);
    assert_eq!(a.n_calib, calib.len());
    for r in &a.ranges {
        assert_eq!(
            calibrate::clip(&r.histogram, Method::Mse),
            r.clip,
            "{}",
            r.name
        );
        assert!(
            r.observed.lo <= r.clip.lo && r.clip.hi <= r.observed.hi,
            "{r:?}"
        );
        assert_eq!(r.histogram.total() as usize, calib.len() * 14 * 14 * 48);
    }
    assert!(a.ranges.iter().any(|r| r.clipped > 0.0));
    // The finest channel scale is never coarser than the tensor's, and some channels of
    // this model are narrower than their tensor: per-channel scales are in use.
    assert!(a.ranges.iter().all(|r| r.finest_scale <= r.scale));
    assert!(a.ranges.iter().any(|r| r.finest_scale < 0.9 * r.scale));
    // Min/max keeps the larger mean SQNR now that each channel has its own scale (MSE
    // clips the tensor's range, which only the widest channels use): why it is the default.
    let mean =
        |d: &Diagnosis| d.layers.iter().map(|l| l.sqnr_db).sum::<f64>() / d.layers.len() as f64;
    eprintln!(
        "mean SQNR: minmax {:.2} dB, mse {:.2} dB",
        mean(&minmax),
        mean(&mse)
    );
}

/// The MNIST example's files.
fn mnist() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/mnist")
}

/// Every 10th held-out digit of each class (204), copied into an ImageFolder tree under
/// `dir`; the tree and the number of images.
fn heldout_subset(dir: &Path) -> (std::path::PathBuf, usize) {
    let src = mnist().join("heldout");
    let dst = dir.join("heldout");
    let mut n = 0;
    for class in 0..10 {
        let from = src.join(class.to_string());
        let to = dst.join(class.to_string());
        std::fs::create_dir_all(&to).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().step_by(10) {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    (dst, n)
}

/// `host-tools report` on the MNIST model, MSE calibration, a mixed variant for 22 dB, page
/// to `out`.
fn report(data: &Path, out: &Path) -> std::process::Output {
    let root = mnist();
    std::process::Command::new(env!("CARGO_BIN_EXE_host-tools"))
        .arg("report")
        .arg(root.join("convmixer-mnist.torchscript.onnx"))
        .arg("--calib")
        .arg(root.join("calib"))
        .arg("--data")
        .arg(data)
        .args([
            "--mean",
            "0.1307",
            "--std",
            "0.3081",
            "--calibration",
            "mse",
            "--sqnr-min",
            "22",
            "-o",
        ])
        .arg(out)
        .output()
        .expect("run host-tools")
}

/// Headless Chromium with `args`, then the page `url`; its stdout.
fn chromium(args: &[String], url: &str) -> Vec<u8> {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run chromium ({e}): this test renders the report page in headless \
                 Chromium; install it with scripts/install-toolchain.sh"
            )
        });
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Distinct RGB colours of a decoded image.
fn colours(img: &image::RgbImage) -> usize {
    img.pixels()
        .map(|p| p.0)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn html_report_renders_in_headless_chromium() {
    let t0 = std::time::Instant::now();
    // Fail at once, not after the report, where Chromium is missing.
    chromium(&["--version".into()], "about:blank");
    let tmp = tempfile::tempdir().unwrap();
    let (data, n) = heldout_subset(tmp.path());
    // A previous report, with a file the new one does not have: replaced whole.
    let out = tmp.path().join("report");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(
        out.join("index.html"),
        format!("{}old", host_tools::report::page::GENERATOR),
    )
    .unwrap();
    std::fs::write(out.join("stale.png"), b"old").unwrap();
    let run = report(&data, &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The text report is still printed, now with fp16 too.
    assert!(
        stdout.contains(&format!(": {n} labelled images, calibration mse")),
        "{stdout}"
    );
    assert!(stdout.contains("top-1 fp16"), "{stdout}");
    assert!(
        !out.join("stale.png").exists(),
        "the old report was not replaced"
    );
    let names: std::collections::BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 12, "{names:?}"); // index.html, sqnr, ranges, 9 histograms
                                              // No temporary sibling is left behind.
    let siblings: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(siblings.len(), 2, "{siblings:?}"); // heldout, report

    let url = format!("file://{}", out.join("index.html").display());
    let dom = String::from_utf8(chromium(&["--dump-dom".into()], &url)).unwrap();
    for id in [
        "summary",
        "accuracy",
        "variants",
        "sqnr",
        "sqnr-table",
        "confusion",
        "confusion-table",
        "ranges",
        "ranges-table",
        "histograms",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id} in the DOM");
    }
    for text in [
        "Quantisation report",
        "<dd>48</dd>",       // dim
        "GELU (erf)",        // activation
        "--calibration mse", // method
        "fp32 (reference",   // top-1 rows
        ">int8</td>",
        ">fp16</td>",
        // --sqnr-min: a mixed row, naming its f16 layers.
        "<td class=\"l\">mixed</td><td class=\"l\">int8, f16: ",
    ] {
        assert!(dom.contains(text), "{text:?} not in the DOM");
    }
    // 9 conv layers in the SQNR table and in the ranges table.
    assert_eq!(dom.matches("<tr class=\"layer\">").count(), 18);
    // 10 classes: confusion rows and header cells.
    assert_eq!(dom.matches("<td style=\"background: rgba(").count(), 100);

    // Every image of the page is a PNG there, decodes, and is a plot (not one colour, has
    // dark text or axes).
    let srcs: Vec<&str> = dom
        .split("<img ")
        .skip(1)
        .map(|tag| {
            let s = &tag[tag.find("src=\"").expect("img without src") + 5..];
            &s[..s.find('"').unwrap()]
        })
        .collect();
    assert_eq!(srcs.len(), 11, "{srcs:?}");
    for src in &srcs {
        let path = out.join(src);
        assert_eq!(path.extension().unwrap(), "png", "{src}");
        let img = image::open(&path)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .to_rgb8();
        assert!(img.width() > 0 && img.height() > 0, "{src}");
        assert!(colours(&img) >= 3, "{src}: {} colours", colours(&img));
        let dark = img
            .pixels()
            .filter(|p| p.0.iter().map(|&c| u32::from(c)).sum::<u32>() < 200)
            .count();
        assert!(dark > 500, "{src}: {dark} dark pixels (no text or axes?)");
    }

    // A screenshot of the requested size, not blank.
    let shot = tmp.path().join("shot.png");
    chromium(
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400".into(),
        ],
        &url,
    );
    let img = image::open(&shot).expect("screenshot").to_rgb8();
    assert_eq!((img.width(), img.height()), (1280, 2400));
    assert!(
        colours(&img) > 100,
        "blank screenshot? {} colours",
        colours(&img)
    );

    // A failing run leaves the report as it was.
    let before = std::fs::read(out.join("index.html")).unwrap();
    let run = report(&tmp.path().join("no-such-folder"), &out);
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(std::fs::read(out.join("index.html")).unwrap(), before);
    eprintln!(
        "report + chromium checks: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn report_out_errors_are_one_line_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = mnist().join("heldout");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"keep").unwrap();
    let other = tmp.path().join("photos");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("cat.png"), b"keep").unwrap();
    let cases = [
        (file.clone(), "exists and is not a folder"),
        (other.clone(), "exists and is not a report folder"),
        (tmp.path().join("missing/report"), "does not exist"),
    ];
    for (out, msg) in cases {
        let run = report(&data, &out);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("error: -o {}: ", out.display())) && err.contains(msg),
            "{err}"
        );
        assert!(
            run.stdout.is_empty(),
            "the analysis ran before the -o check"
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    assert_eq!(std::fs::read(other.join("cat.png")).unwrap(), b"keep");
}
