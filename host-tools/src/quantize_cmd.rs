//! `host-tools quantize` and `host-tools report`: an ONNX model to a blob (either network),
//! and the quantisation diagnosis.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::{Model, Precision};
use convmixer_quantize::onnx::{self, ModelProto};
use convmixer_quantize::{data, mixed::Target, mixer};

use crate::{bar, PrecisionArg, Prep};
/// The mixed-precision target of `--accuracy-budget` / `--sqnr-min` (clap makes them
/// exclusive).
pub(crate) fn target(accuracy_budget: Option<f64>, sqnr_min: Option<f64>) -> Option<Target> {
    match (accuracy_budget, sqnr_min) {
        (Some(b), _) => Some(Target::AccuracyBudget(b)),
        (_, Some(db)) => Some(Target::SqnrMin(db)),
        _ => None,
    }
}

/// Refuses targets that are not numbers of points ≥ 0 or finite dB.
pub(crate) fn check_target(target: Option<Target>) -> Result<()> {
    match target {
        Some(Target::AccuracyBudget(b)) if !(b.is_finite() && b >= 0.0) => {
            bail!("--accuracy-budget must be a number of points ≥ 0, got {b}")
        }
        Some(Target::SqnrMin(db)) if !db.is_finite() => {
            bail!("--sqnr-min must be a finite number of dB, got {db}")
        }
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn report(
    model: &Path,
    calib: &Path,
    dir: &Path,
    (calibration, bias_correction): (&str, bool),
    mixed: Option<Target>,
    prep: &Prep,
    json: bool,
    out: Option<&Path>,
) -> Result<()> {
    use host_tools::report::{self, page};
    let method = convmixer_quantize::calibrate::Method::parse(calibration)?;
    check_target(mixed)?;
    // Before the slow part: a bad -o fails at once.
    if let Some(out) = out {
        page::check_out(out)?;
    }
    let proto = read_onnx(model)?;
    if mixer::is_mixer(&proto) {
        bail!("{}: `report` analyses ConvMixer models only (for an MLP-Mixer: `quantize`, then `eval` on the blob and the ONNX)", model.display());
    }
    let imported = import_convmixer(model, &proto)?;
    let opts = prep
        .for_onnx(model, &proto)?
        .options(method, bias_correction)?;
    let labels = &opts.labels;
    let shape = (imported.in_h, imported.in_w, imported.in_c);
    let calib = data::calibration_set(calib, shape)?;
    let set = labelled_set(dir, labels, &imported)?;
    // Calibration (one or two passes), the labelled set, then the two passes of the output
    // histograms.
    let passes = if method == convmixer_quantize::calibrate::Method::MinMax {
        1
    } else {
        2
    };
    let pb = bar((passes + 2) * calib.len() + set.len(), "analysing");
    let a = report::analyse(&imported, &calib, &set, &opts, mixed, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let e = &a.eval;
    let int8 = a
        .variant("int8")
        .ok_or_else(|| anyhow!("internal error: no int8 variant"))?;
    if json {
        let layers: Vec<serde_json::Value> = int8
            .layers
            .iter()
            .map(|l| serde_json::json!({"layer": l.layer, "name": l.name, "sqnr_db": l.sqnr_db}))
            .collect();
        let variants: Vec<serde_json::Value> = e
            .variants
            .iter()
            .map(|v| {
                serde_json::json!({
                    "name": v.name,
                    "precision": format!("{:?}", v.precision).to_lowercase(),
                    "top1": v.top1,
                    "agreement": v.agreement,
                    "blob_bytes": v.blob_bytes,
                    "arena_bytes": v.arena_bytes,
                    "sqnr_db": v.layers.iter().map(|l| l.sqnr_db).collect::<Vec<_>>(),
                    "confusion": v.confusion,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model.display().to_string(),
                "n": e.n,
                "top1_fp32": e.top1_fp32,
                "top1_int8": int8.top1,
                "agreement": int8.agreement,
                "blob_bytes": int8.blob_bytes,
                "arena_bytes": int8.arena_bytes,
                "layers": layers,
                "variants": variants,
            })
        );
    } else {
        println!(
            "{}: {} labelled images, calibration {calibration}{}",
            model.display(),
            e.n,
            if bias_correction {
                " + bias correction"
            } else {
                ""
            }
        );
        println!(
            "top-1 fp32 {:.2}%, int8 {:.2}%, agreement {:.2}%; int8 blob {} bytes, arena {} bytes",
            100.0 * e.top1_fp32,
            100.0 * int8.top1,
            100.0 * int8.agreement,
            int8.blob_bytes,
            int8.arena_bytes
        );
        for v in e.variants.iter().filter(|v| v.name != "int8") {
            println!(
                "top-1 {} {:.2}%, agreement {:.2}%; {} blob {} bytes, arena {} bytes",
                v.name,
                100.0 * v.top1,
                100.0 * v.agreement,
                v.name,
                v.blob_bytes,
                v.arena_bytes
            );
        }
        print!("{:<22}", "layer");
        for v in &e.variants {
            print!(" {:>11}", format!("{} dB", v.name));
        }
        println!();
        for (i, l) in int8.layers.iter().enumerate() {
            print!("{:<22}", l.name);
            for v in &e.variants {
                print!(" {:>11.2}", v.layers.get(i).map_or(f64::NAN, |l| l.sqnr_db));
            }
            println!();
        }
    }
    if let Some(out) = out {
        let info = page::Info {
            model: model.display().to_string(),
            calibration: calibration.to_string(),
        };
        page::write(out, &a, &info)?;
        eprintln!("wrote {}", out.join("index.html").display());
    }
    Ok(())
}

pub(crate) fn quantize(
    model: &Path,
    calib: Option<&Path>,
    precision: PrecisionArg,
    (calibration, bias_correction): (&str, bool),
    (target, data_dir): (Option<Target>, Option<&Path>),
    prep: &Prep,
    output: Option<PathBuf>,
) -> Result<()> {
    let method = convmixer_quantize::calibrate::Method::parse(calibration)?;
    check_target(target)?;
    if target.is_some() && precision.precision() != Precision::Int8 {
        bail!("--accuracy-budget and --sqnr-min apply to --precision int8 only");
    }
    let proto = read_onnx(model)?;
    if mixer::is_mixer(&proto) {
        let bytes = mixer_blob(
            (model, &proto),
            calib,
            precision,
            (method, bias_correction),
            target,
            prep,
        )?;
        return write_blob(model, precision, output, &bytes);
    }
    let imported = import_convmixer(model, &proto)?;
    let opts = prep
        .for_onnx(model, &proto)?
        .options(method, bias_correction)?;
    drop(proto);
    let labels = &opts.labels;
    let shape = (imported.in_h, imported.in_w, imported.in_c);
    let images = match (calib, precision) {
        (Some(dir), _) => data::calibration_set(dir, shape)?,
        (None, PrecisionArg::Int8) => {
            bail!("int8 quantisation needs calibration images: pass --calib DIR")
        }
        (None, _) => Vec::new(),
    };
    let passes = match method {
        convmixer_quantize::calibrate::Method::MinMax => 1,
        _ => 2,
    };
    let pb = bar(
        if precision.precision() == Precision::Int8 {
            passes * images.len()
        } else {
            0
        },
        "calibrating",
    );
    let bytes = match target {
        None => {
            let p = precision.precision();
            let b = convmixer_quantize::quantize(&imported, p, &images, &opts, &|| pb.inc(1))
                .with_context(|| model.display().to_string())?;
            pb.finish_and_clear();
            b
        }
        Some(target) => {
            let set = match data_dir {
                Some(dir) => labelled_set(dir, labels, &imported)?,
                None => Vec::new(),
            };
            let (q, choice) = convmixer_quantize::quantize_mixed(
                &imported,
                &images,
                &set,
                &opts,
                target,
                &|| pb.inc(1),
                &mut |line| pb.suspend(|| eprintln!("{line}")),
            )
            .with_context(|| model.display().to_string())?;
            pb.finish_and_clear();
            let layers = 2 + 2 * q.folded.blocks.len();
            let f16: Vec<usize> = choice.f16_layers.iter(layers).collect();
            eprintln!(
                "mixed precision: {} of {layers} layers (conv layers, then the head) in f16 {f16:?}{}",
                f16.len(),
                match choice.top1 {
                    Some((fp32, int8, mixed)) =>
                        format!("; top-1 fp32 {fp32:.2}%, int8 {int8:.2}%, mixed {mixed:.2}%"),
                    None => format!(
                        "; lowest layer SQNR {:.1} dB",
                        choice.sqnr_db.iter().copied().fold(f64::INFINITY, f64::min)
                    ),
                }
            );
            if !choice.met {
                eprintln!(
                    "warning: the target is not reached even with these layers in f16 (each f16 layer still writes an int8 tensor); writing the best mix found"
                );
            }
            q.blob
        }
    };
    write_blob(model, precision, output, &bytes)
}

/// The ONNX file `model`, read once (with its external data) for every step of a command:
/// which importer it is for ([`mixer::is_mixer`]), the import and the metadata.
pub(crate) fn read_onnx(model: &Path) -> Result<ModelProto> {
    onnx::load(model)
}

/// The ConvMixer in `proto` (the file `model`), errors naming the file.
pub(crate) fn import_convmixer(model: &Path, proto: &ModelProto) -> Result<onnx::Imported> {
    onnx::import_proto(proto).with_context(|| model.display().to_string())
}

/// The MLP-Mixer in `proto` (the file `model`), errors naming the file.
pub(crate) fn import_mixer(model: &Path, proto: &ModelProto) -> Result<mixer::Mixer> {
    mixer::import_proto(proto).with_context(|| model.display().to_string())
}

/// `quantize`'s blob for an MLP-Mixer: int8 only, min/max calibration, no mixed precision
/// (the options that are ConvMixer-only are refused with their name).
fn mixer_blob(
    (model, proto): (&Path, &ModelProto),
    calib: Option<&Path>,
    precision: PrecisionArg,
    (method, bias_correction): (convmixer_quantize::calibrate::Method, bool),
    target: Option<Target>,
    prep: &Prep,
) -> Result<Vec<u8>> {
    let m = import_mixer(model, proto)?;
    let name = model.display();
    if precision.precision() != Precision::Int8 {
        bail!("{name}: MLP-Mixer models quantise to int8 only (--precision fp16/fp32 are for ConvMixer)");
    }
    if target.is_some() {
        bail!("{name}: --accuracy-budget and --sqnr-min (mixed precision) are for ConvMixer models only");
    }
    let opts = prep
        .for_onnx(model, proto)?
        .options(method, bias_correction)?;
    let Some(dir) = calib else {
        bail!("int8 quantisation needs calibration images: pass --calib DIR")
    };
    let images = data::calibration_set(dir, (m.in_h, m.in_w, m.in_c))?;
    let passes = match method {
        convmixer_quantize::calibrate::Method::MinMax => 1,
        _ => 2,
    };
    let pb = bar(passes * images.len(), "calibrating");
    let bytes = convmixer_quantize::mixer::quantize(&m, &images, &opts, &|| pb.inc(1))
        .with_context(|| name.to_string())?;
    pb.finish_and_clear();
    Ok(bytes)
}

/// Loads `bytes` with the runtime itself, then writes them to `output` (default: the
/// model's name with the precision, `.cmx`) and reports what was written, so that a blob we
/// cannot run is never written nor reported as a success.
fn write_blob(
    model: &Path,
    precision: PrecisionArg,
    output: Option<PathBuf>,
    bytes: &[u8],
) -> Result<()> {
    let out = output.unwrap_or_else(|| {
        let suffix = match precision {
            PrecisionArg::Int8 => "int8",
            PrecisionArg::Fp16 => "fp16",
            PrecisionArg::Fp32 => "fp32",
        };
        let stem = model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model");
        model.with_file_name(format!("{stem}-{suffix}.cmx"))
    });
    let load = || {
        Model::from_bytes(bytes)
            .map(|m| (*m.header(), m.arena_len()))
            .map_err(|e| anyhow!("internal error: the blob does not load: {e}"))
    };
    let mut header = None;
    data::write_checked(&out, bytes, || {
        header = Some(load()?);
        Ok(())
    })?;
    let (h, arena) = header.ok_or_else(|| anyhow!("internal error: the blob was not checked"))?;
    let net = match h.arch {
        convmixer_edge::blob::Arch::ConvMixer => format!(
            "{:?}, dim {}, depth {}, kernel {}",
            h.precision, h.dim, h.depth, h.kernel
        ),
        convmixer_edge::blob::Arch::MlpMixer => format!(
            "MLP-Mixer int8, dim {}, depth {}, token/channel hidden {}/{}",
            h.dim, h.depth, h.token_hidden, h.channel_hidden
        ),
    };
    eprintln!(
        "wrote {} ({} bytes): {net}, patch {}, {} classes, input {}x{}x{}, arena {} bytes",
        out.display(),
        bytes.len(),
        h.patch,
        h.classes,
        h.in_h,
        h.in_w,
        h.in_c,
        arena
    );
    Ok(())
}

/// An ImageFolder tree, loaded at the model's input shape.
fn labelled_set(
    dir: &Path,
    labels: &[String],
    model: &onnx::Imported,
) -> Result<Vec<(Vec<u8>, usize)>> {
    let shape = (model.in_h, model.in_w, model.in_c);
    data::image_folder(dir, labels, model.classes())?
        .iter()
        .map(|(p, c)| Ok((data::load_image(p, shape)?, *c)))
        .collect()
}
