//! `host-tools classify`, `eval` and `flash`: running blobs (and, for `eval`, ONNX models
//! through tract) on images, on the host or on a board's firmware.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::cores::{Cores, Team, MAX_PARTS};
use convmixer_edge::Model;
use convmixer_quantize::{data, mixer, par, reference::TractModel};

use crate::quantize_cmd::{import_convmixer, import_mixer, read_onnx};
use crate::{bar, read_labels, Prep};
pub(crate) fn flash(
    model: &Path,
    (board, cores): (&str, u8),
    out: Option<PathBuf>,
    images: Option<&Path>,
    qemu: bool,
    cpu: &str,
    timeout: u64,
) -> Result<()> {
    use host_tools::flash::{self, Board};
    let board = Board::parse(board)?;
    let blob = std::fs::read(model).with_context(|| format!("{}: cannot read", model.display()))?;
    // Images as one raw file of whole inputs (IDX files are converted).
    let raw = match images {
        Some(p) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let model = convmixer_edge::Model::from_bytes(&blob).ok();
            let bytes = match (&model, bytes.starts_with(&[0, 0, 8, 3])) {
                (Some(m), true) => {
                    let h = m.header();
                    let shape = (
                        usize::from(h.in_h),
                        usize::from(h.in_w),
                        usize::from(h.in_c),
                    );
                    convmixer_quantize::data::read_idx_images(p, shape)?.concat()
                }
                _ => bytes,
            };
            if let Some(m) = &model {
                if bytes.len() % m.input_len() != 0 {
                    bail!(
                        "{}: {} bytes is not a whole number of {}-byte images",
                        p.display(),
                        bytes.len(),
                        m.input_len()
                    );
                }
            }
            let tmp =
                std::env::temp_dir().join(format!("cmx-flash-images-{}.raw", std::process::id()));
            std::fs::write(&tmp, &bytes)
                .with_context(|| format!("{}: cannot write", tmp.display()))?;
            Some(tmp)
        }
        None => None,
    };
    let elf = flash::build(model, raw.as_deref(), (board, usize::from(cores)), qemu);
    if let Some(tmp) = &raw {
        let _ = std::fs::remove_file(tmp);
    }
    let elf = elf?;
    if qemu {
        let boot = flash::run_qemu(
            &elf,
            board,
            Some(cpu),
            std::time::Duration::from_secs(timeout),
        )?;
        for line in &boot.log {
            println!("{line}");
        }
        if !boot.ok {
            bail!("the firmware reported failure on {board} (see its log above)");
        }
        return Ok(());
    }
    let out = out.unwrap_or_else(|| PathBuf::from(format!("firmware-{board}")));
    for p in flash::write_outputs(&elf, board, &out)? {
        println!("{}", p.display());
    }
    Ok(())
}

/// A progress bar over `len` images: done/total, images per second and the time left.

fn load_blob(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn parse_model<'a>(path: &Path, bytes: &'a [u8]) -> Result<Model<'a>> {
    Model::from_bytes(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

pub(crate) fn classify(model: &Path, images: &[PathBuf], top: usize, json: bool) -> Result<()> {
    let bytes = load_blob(model)?;
    let m = parse_model(model, &bytes)?;
    let h = *m.header();
    let shape = (
        usize::from(h.in_h),
        usize::from(h.in_w),
        usize::from(h.in_c),
    );
    let name = |c: u16| m.label(c).map_or_else(|| c.to_string(), String::from);
    // Images in parallel, printed in the order given; one image alone is split over every
    // core (its layers in parts on a scoped Team).
    if let [path] = images {
        let threads = rayon::current_num_threads().min(MAX_PARTS);
        let px = data::load_image(path, shape)?;
        let best = Team::scoped(threads, |team| {
            let mut arena = vec![0u8; m.arena_len_for(team.count())];
            m.classify_on::<32>(team, &px, &mut arena)
        })
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        print_top(
            &path.display().to_string(),
            &best[..top.min(best.len())],
            json,
            &name,
        );
        return Ok(());
    }
    let one = |path: &PathBuf| -> Result<Vec<(u16, f32)>> {
        let px = data::load_image(path, shape)?;
        let best = par::with_scratch(m.arena_len(), |arena| m.classify::<32>(&px, arena))
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(best.iter().take(top).copied().collect())
    };
    let mut paths = images.iter();
    par::try_map_fold(
        images,
        (),
        one,
        |(), best| {
            let path = paths
                .next()
                .map_or_else(String::new, |p| p.display().to_string());
            print_top(&path, &best, json, &name);
        },
        &|| {},
    )
}

/// One `classify` result line (or JSON object): the image and its best classes.
fn print_top(path: &str, best: &[(u16, f32)], json: bool, name: &dyn Fn(u16) -> String) {
    if json {
        let top: Vec<_> = best
            .iter()
            .map(|&(c, p)| serde_json::json!({"class": c, "label": name(c), "score": p}))
            .collect();
        println!("{}", serde_json::json!({"image": path, "top": top}));
    } else {
        let list: Vec<String> = best
            .iter()
            .map(|&(c, p)| format!("{} {:.4}", name(c), p))
            .collect();
        println!("{path}: {}", list.join(", "));
    }
}

fn argmax(v: &[f32]) -> usize {
    // First maximum, as the runtime's top-k breaks ties.
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Top-1 class of one HWC `u8` image (called from several threads at once).
type Predictor<'a> = Box<dyn Fn(&[u8]) -> Result<usize> + Sync + 'a>;

pub(crate) fn eval(model: &Path, dir: &Path, json: bool, prep: &Prep) -> Result<()> {
    let bytes = load_blob(model)?;
    let is_blob = bytes.starts_with(b"CMXB");
    let blob_model;
    // One predictor closure per model kind; both take HWC u8 pixels.
    let (shape, classes, labels, kind, predict): (_, usize, Vec<String>, String, Predictor<'_>);
    if is_blob {
        if !prep.mean.is_empty() || !prep.std.is_empty() || prep.labels.is_some() {
            bail!(
                "--mean/--std/--labels are for ONNX models; {} is a blob that carries its own",
                model.display()
            );
        }
        blob_model = parse_model(model, &bytes)?;
        let m = &blob_model;
        let h = *m.header();
        shape = (
            usize::from(h.in_h),
            usize::from(h.in_w),
            usize::from(h.in_c),
        );
        classes = usize::from(h.classes);
        labels = (0..h.classes)
            .map(|c| m.label(c).unwrap_or_default().to_string())
            .collect();
        kind = format!("{:?}", h.precision).to_lowercase();
        predict = Box::new(move |px| {
            let top = par::with_scratch(m.arena_len(), |arena| m.classify::<1>(px, arena))
                .map_err(|e| anyhow!("{e}"))?;
            Ok(top.first().map_or(0, |t| usize::from(t.0)))
        });
    } else {
        let proto = read_onnx(model)?;
        // Either network: import it, then fold it once, which checks --mean/--std against
        // its channels; tract runs the ONNX file itself.
        let prep = if mixer::is_mixer(&proto) {
            let m = import_mixer(model, &proto)?;
            let prep = prep.for_onnx(model, &proto)?;
            convmixer_quantize::mixer::fold(&m, &prep.mean, &prep.std)?;
            (shape, classes) = ((m.in_h, m.in_w, m.in_c), m.classes());
            prep
        } else {
            let imported = import_convmixer(model, &proto)?;
            let prep = prep.for_onnx(model, &proto)?;
            convmixer_quantize::fold::fold(&imported, &prep.mean, &prep.std)?;
            (shape, classes) = (
                (imported.in_h, imported.in_w, imported.in_c),
                imported.classes(),
            );
            prep
        };
        labels = match prep.labels {
            Some(_) => read_labels(prep.labels.as_deref())?,
            None => prep.names.clone(),
        };
        kind = "fp32-onnx".into();
        let tract = TractModel::load(model, shape.2, shape.0, shape.1)?;
        let (mean, std) = (prep.mean, prep.std);
        predict = Box::new(move |px| Ok(argmax(&tract.run_pixels(px, &mean, &std)?)));
    }
    let set = data::image_folder(dir, &labels, classes)?;
    let pb = bar(set.len(), "evaluating");
    // Images in parallel (`--threads`); a count, so the order does not matter. Timed from
    // here: `s_per_image` is the steady cost of an image (decoding included), without
    // loading the model.
    let t0 = std::time::Instant::now();
    let correct = par::try_map_fold(
        &set,
        0usize,
        |(path, class)| -> Result<bool> {
            let px = data::load_image(path, shape)?;
            let pred = predict(&px).with_context(|| format!("{}", path.display()))?;
            Ok(pred == *class)
        },
        |n, right| n + usize::from(right),
        &|| pb.inc(1),
    )?;
    let per_image = t0.elapsed().as_secs_f64() / set.len().max(1) as f64;
    pb.finish_and_clear();
    let n = set.len();
    let top1 = correct as f64 / n as f64;
    if json {
        println!(
            "{}",
            serde_json::json!({"model": model.display().to_string(), "kind": kind, "n": n, "correct": correct, "top1": top1, "s_per_image": per_image})
        );
    } else {
        println!(
            "{}: {kind}, top-1 {:.2}% ({correct}/{n})",
            model.display(),
            100.0 * top1
        );
    }
    Ok(())
}
