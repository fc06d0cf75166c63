//! `host-tools bench --host`: the host side next to ONNX Runtime, in one run, on the same
//! machine, the same model file and the same images.
//!
//! Per model and thread count, one JSON object (`--json`) or one table row:
//! - `quantize_s`: wall time of `host-tools quantize MODEL --calib CALIB` (int8, min/max;
//!   the whole command: import, fold, calibration, lowering, writing) with `--threads T`;
//! - `ort_quantize_static_s`: ONNX Runtime's `quantize_static` on the same calibration
//!   images (`tools/peers/host_bench.py`), its process pinned to T cores (its calibrator has
//!   no thread setting); `ort_quantize_static_all_cores_s`: the same on every core;
//! - `eval_int8_s_per_image`, `eval_fp16_s_per_image`: `host-tools eval BLOB --data IMAGES
//!   --threads T --json`'s own `s_per_image`: the wall time of its image loop (decoding,
//!   preprocessing and classifying every image) divided by the images — the steady cost of
//!   an image, as ONNX Runtime's figures below are; `eval_*_command_s_per_image`: the whole
//!   command (process start, reading and checking the blob included) divided by the images;
//! - `ort_int8_s_per_image`, `ort_fp32_s_per_image`: ONNX Runtime's QDQ int8 model and the
//!   original fp32 model, one image per run, `intra_op_num_threads = T`: the mean of
//!   decoding + normalising an image and the `run`, after one warm-up run (the session's
//!   creation is not counted).
//!
//! Each figure, ours and ONNX Runtime's alike, is the best of [`ROUNDS`] runs (a whole
//! command, or a pass over the images), except where one run takes [`LONG_S`] or more
//! (T768's quantisations): the machines this runs on are shared, and the best run is the
//! one least disturbed by the rest of the machine, on both sides. Our `quantize` runs
//! alternate between the thread counts, round by round, and a quantisation under
//! [`SHORT_S`] (B1's, 0.1–0.2 s) gets [`SHORT_ROUNDS`]: its thread-count ratio is then
//! taken from minima over the same stretch of time, not from three runs each at different
//! moments of a shared machine.
//!
//! Models: B1 (the random ConvMixer-256/8 at 32×32 of `bench`) and timm's
//! `convmixer_768_32` at 224×224 (`T768`: the TorchScript export that
//! `bash tools/fixtures/run.sh timm_convmixers --full` writes; random weights). The images
//! are deterministic synthetic pictures (smooth colour fields with noise) at the model's
//! input size: the timings do not depend on what the pictures show.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::Activation;
use convmixer_quantize::data;
use convmixer_quantize::onnx_export::{write_onnx, GeluForm};
use convmixer_quantize::random::{random_convmixer, RandomConfig};
use serde_json::{json, Value};

/// One model of the host benchmark.
struct HostSpec {
    key: &'static str,
    title: &'static str,
    /// `(in_h, in_w, in_c)`.
    shape: (usize, usize, usize),
    mean: &'static str,
    std: &'static str,
    calib: usize,
    eval: usize,
}

/// Runs per figure (the best is kept).
const ROUNDS: usize = 3;

/// A run this long (seconds) is not repeated.
const LONG_S: f64 = 5.0;

/// Rounds of a quantisation that takes less than [`SHORT_S`] seconds.
const SHORT_ROUNDS: usize = 12;

/// See [`SHORT_ROUNDS`].
const SHORT_S: f64 = 1.0;

/// The best (smallest) time of `run(t)` for each of `threads`, the thread counts taking
/// turns round by round: [`ROUNDS`] rounds, [`SHORT_ROUNDS`] where the first round took
/// under [`SHORT_S`] per run, one where it took [`LONG_S`] or more.
fn best_interleaved(threads: &[usize], run: impl Fn(usize) -> Result<f64>) -> Result<Vec<f64>> {
    let mut best = threads
        .iter()
        .map(|&t| run(t))
        .collect::<Result<Vec<f64>>>()?;
    let slowest = best.iter().copied().fold(0.0, f64::max);
    let rounds = if slowest >= LONG_S {
        1
    } else if slowest < SHORT_S {
        SHORT_ROUNDS
    } else {
        ROUNDS
    };
    for _ in 1..rounds {
        for (b, &t) in best.iter_mut().zip(threads) {
            *b = b.min(run(t)?);
        }
    }
    Ok(best)
}

const IMAGENET_MEAN: &str = "0.485,0.456,0.406";
const IMAGENET_STD: &str = "0.229,0.224,0.225";

fn specs() -> [HostSpec; 2] {
    [
        HostSpec {
            key: "B1",
            title: "ConvMixer-256/8 p2 k5 GELU, 32x32x3, 10 classes (random weights)",
            shape: (32, 32, 3),
            mean: "0.5",
            std: "0.25",
            calib: 32,
            eval: 256,
        },
        HostSpec {
            key: "T768",
            title: "timm convmixer_768_32 (p7 k7 ReLU), 224x224x3, 1000 classes (random weights)",
            shape: (224, 224, 3),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            calib: 32,
            eval: 16,
        },
    ]
}

/// The B1 model of `bench` (same configuration and seed).
fn b1_config() -> RandomConfig {
    RandomConfig {
        dim: 256,
        depth: 8,
        kernel: 5,
        patch: 2,
        in_c: 3,
        in_h: 32,
        in_w: 32,
        classes: 10,
        act: Activation::Gelu,
        seed: 1,
    }
}

/// A deterministic synthetic picture: a smooth colour field (a few low-frequency waves
/// per channel) plus xorshift noise, HWC u8.
fn picture(shape: (usize, usize, usize), seed: u64) -> Vec<u8> {
    let (h, w, c) = shape;
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let waves: Vec<[f64; 3]> = (0..3 * c)
        .map(|_| {
            let r = |v: u64| (v >> 11) as f64 / (1u64 << 53) as f64;
            [r(next()) * 6.0, r(next()) * 6.0, r(next()) * 6.28]
        })
        .collect();
    let mut px = vec![0u8; h * w * c];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let (fy, fx) = (y as f64 / h as f64, x as f64 / w as f64);
                let v: f64 = waves[3 * ch..3 * ch + 3]
                    .iter()
                    .map(|[a, b, p]| (a * fy + b * fx + p).sin())
                    .sum::<f64>()
                    / 3.0;
                let noise = (next() >> 58) as f64 - 32.0;
                px[(y * w + x) * c + ch] = (128.0 + 100.0 * v + noise).clamp(0.0, 255.0) as u8;
            }
        }
    }
    px
}

fn write_png(path: &Path, px: &[u8], (h, w, c): (usize, usize, usize)) -> Result<()> {
    let color = if c == 1 {
        image::ExtendedColorType::L8
    } else {
        image::ExtendedColorType::Rgb8
    };
    image::save_buffer(path, px, w as u32, h as u32, color)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `n` pictures into `dir` (made afresh).
fn pictures(dir: &Path, n: usize, shape: (usize, usize, usize), seed: u64) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for i in 0..n {
        write_png(
            &dir.join(format!("{i:04}.png")),
            &picture(shape, seed + i as u64),
            shape,
        )?;
    }
    Ok(())
}

/// Runs `host-tools ARGS`, returning the wall time in seconds and stdout.
fn timed(exe: &Path, args: &[String]) -> Result<(f64, String)> {
    let t = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "host-tools {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((s, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The Python of `target/peers-venv` (tools/peers/requirements.txt), made if needed.
fn peers_python(root: &Path) -> Result<PathBuf> {
    let status = Command::new("bash")
        .arg(root.join("tools/peers/venv.sh"))
        .status()
        .context("cannot run tools/peers/venv.sh")?;
    if !status.success() {
        bail!("tools/peers/venv.sh failed ({status}): the ONNX Runtime venv could not be made");
    }
    Ok(root.join("target/peers-venv/bin/python"))
}

/// Everything for one model: JSON objects (one per thread count) and table rows.
fn bench_one(
    spec: &HostSpec,
    onnx: &Path,
    dir: &Path,
    threads: &[usize],
    python: &Path,
    root: &Path,
) -> Result<Vec<Value>> {
    let exe = std::env::current_exe().context("cannot find the host-tools executable")?;
    let (calib, images) = (dir.join("calib"), dir.join("images"));
    pictures(&calib, spec.calib, spec.shape, 0xca1b)?;
    // One class folder: `eval` needs labels; every image counts as class 0.
    pictures(&images.join("0"), spec.eval, spec.shape, 0xe7a1)?;
    let s = |p: &Path| p.display().to_string();
    let int8 = dir.join("model-int8.cmx");
    let fp16 = dir.join("model-fp16.cmx");
    let quantize = |t: usize, precision: &str, out: &Path| -> Result<f64> {
        let mut a: Vec<String> = ["quantize", &s(onnx), "--calib", &s(&calib)]
            .map(String::from)
            .to_vec();
        a.extend(
            [
                "--mean",
                spec.mean,
                "--std",
                spec.std,
                "--precision",
                precision,
            ]
            .map(String::from),
        );
        a.extend(["--threads".into(), t.to_string(), "-o".into(), s(out)]);
        Ok(timed(&exe, &a)?.0)
    };
    // (eval's own `s_per_image`: the image loop, decoding included; the whole command,
    // model loading included, divided by the images)
    let eval = |t: usize, blob: &Path| -> Result<(f64, f64)> {
        let a: Vec<String> = vec![
            "eval".into(),
            s(blob),
            "--data".into(),
            s(&images),
            "--threads".into(),
            t.to_string(),
            "--json".into(),
        ];
        // Every run is short enough to repeat (LONG_S is for the quantisations).
        let mut best = (f64::INFINITY, f64::INFINITY);
        for _ in 0..ROUNDS {
            let (wall, stdout) = timed(&exe, &a)?;
            let v: Value = serde_json::from_str(stdout.trim())
                .map_err(|e| anyhow!("host-tools eval --json printed no JSON ({e})"))?;
            let steady = v["s_per_image"]
                .as_f64()
                .ok_or_else(|| anyhow!("host-tools eval --json printed no s_per_image"))?;
            best = (best.0.min(steady), best.1.min(wall / spec.eval as f64));
        }
        Ok(best)
    };
    eprintln!("bench --host: {}: ONNX Runtime…", spec.key);
    let list = threads
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new(python)
        .arg(root.join("tools/peers/host_bench.py"))
        .args([
            "--model",
            &s(onnx),
            "--calib",
            &s(&calib),
            "--images",
            &s(&images),
        ])
        .args(["--mean", spec.mean, "--std", spec.std, "--threads", &list])
        .args([
            "--rounds",
            &ROUNDS.to_string(),
            "--long",
            &LONG_S.to_string(),
        ])
        .output()
        .context("cannot run tools/peers/host_bench.py")?;
    if !out.status.success() {
        bail!(
            "tools/peers/host_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let ort: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow!("tools/peers/host_bench.py printed no JSON ({e})"))?;
    eprintln!("bench --host: {}: ours, quantize…", spec.key);
    // Every thread count writes the same blob (tests/threads.rs): the last one is kept.
    let quantize_s = best_interleaved(threads, |t| quantize(t, "int8", &int8))?;
    quantize(threads.iter().copied().max().unwrap_or(1), "fp16", &fp16)?;
    let mut rows = Vec::new();
    for (&t, &quantize_s) in threads.iter().zip(&quantize_s) {
        eprintln!("bench --host: {}: ours, {t} thread(s)…", spec.key);
        let r = &ort["threads"][t.to_string()];
        let (int8_s, int8_command_s) = eval(t, &int8)?;
        let (fp16_s, fp16_command_s) = eval(t, &fp16)?;
        rows.push(json!({
            "model": spec.key,
            "title": spec.title,
            "threads": t,
            "calib_images": spec.calib,
            "eval_images": spec.eval,
            "quantize_s": quantize_s,
            "ort_quantize_static_s": r["ort_quantize_static_s"],
            "ort_quantize_static_all_cores_s": ort["ort_quantize_static_all_cores_s"],
            "eval_int8_s_per_image": int8_s,
            "ort_int8_s_per_image": r["ort_int8_s_per_image"],
            "eval_fp16_s_per_image": fp16_s,
            "ort_fp32_s_per_image": r["ort_fp32_s_per_image"],
            "eval_int8_command_s_per_image": int8_command_s,
            "eval_fp16_command_s_per_image": fp16_command_s,
            "onnxruntime": ort["onnxruntime"],
        }));
    }
    Ok(rows)
}

/// `host-tools bench --host [B1|T768]... [--json]`.
pub fn run(only: &[String], json_out: bool, root: &Path) -> Result<()> {
    if cfg!(debug_assertions) {
        bail!("bench --host needs a release build of host-tools: cargo run --release -p host-tools -- bench --host");
    }
    if let Some(o) = only.iter().find(|o| !["B1", "T768"].contains(&o.as_str())) {
        bail!("bench --host measures B1 and T768, not {o}");
    }
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let python = peers_python(root)?;
    let mut rows = Vec::new();
    for spec in specs() {
        if !(only.is_empty() || only.iter().any(|o| o == spec.key)) {
            continue;
        }
        let dir = root.join("target/bench-host").join(spec.key.to_lowercase());
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let onnx = match spec.key {
            "B1" => {
                let p = dir.join("b1.onnx");
                let m = random_convmixer(&b1_config())?;
                data::write_atomic(&p, &write_onnx(&m, GeluForm::Erf)?)?;
                p
            }
            _ => {
                let p = root.join("target/timm/convmixer_768_32/torchscript.onnx");
                if !p.exists() {
                    bail!(
                        "{}: missing; make it with `bash tools/fixtures/run.sh timm_convmixers --full`",
                        p.display()
                    );
                }
                p
            }
        };
        rows.extend(bench_one(&spec, &onnx, &dir, &threads, &python, root)?);
    }
    if json_out {
        for r in &rows {
            println!("{r}");
        }
        return Ok(());
    }
    println!(
        "host side vs ONNX Runtime {} (same machine, model file and images; wall seconds)",
        rows.first()
            .map_or("?".into(), |r| r["onnxruntime"].to_string())
    );
    println!(
        "{:<6} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "model",
        "threads",
        "quantize",
        "ORT quant",
        "int8 /img",
        "ORT int8",
        "fp16 /img",
        "ORT fp32"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
        println!(
            "{:<6} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            r["model"].as_str().unwrap_or("?"),
            r["threads"],
            f("quantize_s"),
            f("ort_quantize_static_s"),
            f("eval_int8_s_per_image"),
            f("ort_int8_s_per_image"),
            f("eval_fp16_s_per_image"),
            f("ort_fp32_s_per_image"),
        );
    }
    Ok(())
}
