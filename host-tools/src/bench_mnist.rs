//! The MNIST part of `host-tools bench`: the trained MLP-Mixers of `examples/mixer-mnist`
//! (M1: lucidrains' layout, M2: timm's) next to the ConvMixer trained beside them with about
//! the same parameter count and the same 49 tokens (C1, `convmixer-baseline`), each
//! quantised here from its ONNX as `host-tools quantize` does: held-out top-1 (fp32 by
//! tract, int8 by our runtime), aarch64 instructions per inference under qemu-user (int8
//! `SMLAL`, `SDOT`, scalar; tract fp32), blob and arena bytes.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::{Model, Precision};
use convmixer_quantize::reference::TractModel;
use convmixer_quantize::{data, mixer, onnx, Options};
use host_tools::thousands;
use serde_json::{json, Value};

use crate::bench::{per_inference, Ctx, Report};

const MEAN: f32 = 0.1307;
const STD: f32 = 0.3081;

/// One model of the comparison.
struct Entry {
    key: &'static str,
    title: String,
    onnx: std::path::PathBuf,
    blob: Vec<u8>,
    params: u64,
    macs: u64,
}

/// MACs of one MLP-Mixer inference: embedding, both MLPs of every block, head.
fn mixer_macs(m: &mixer::Mixer) -> u64 {
    let (t, d) = (m.tokens() as u64, m.dim as u64);
    let (ht, hc) = m.hidden();
    let (ht, hc) = (ht as u64, hc as u64);
    let k = (m.patch * m.patch * m.in_c) as u64;
    t * k * d + m.blocks.len() as u64 * (d * 2 * t * ht + t * 2 * d * hc) + d * m.classes() as u64
}

/// MACs of one ConvMixer inference.
fn convmixer_macs(m: &onnx::Imported) -> u64 {
    let p = m.patch();
    let t = ((m.in_h / p) * (m.in_w / p)) as u64;
    let (d, k) = (m.dim() as u64, m.kernel() as u64);
    t * d * (p * p * m.in_c) as u64
        + m.blocks.len() as u64 * t * d * (k * k + d)
        + d * m.classes() as u64
}

fn entries(root: &Path) -> Result<Vec<Entry>> {
    let dir = root.join("examples/mixer-mnist");
    let calib = data::calibration_set(&root.join("examples/mnist/calib"), (28, 28, 1))?;
    let opts = Options {
        mean: vec![MEAN],
        std: vec![STD],
        ..Default::default()
    };
    let doc: Value = serde_json::from_slice(
        &std::fs::read(dir.join("torch_reference.json"))
            .context("examples/mixer-mnist/torch_reference.json")?,
    )?;
    let n_params = |v: &Value| {
        v["n_params"]
            .as_u64()
            .ok_or_else(|| anyhow!("torch_reference.json: no n_params"))
    };
    let mut out = Vec::new();
    for (key, layout, what) in [("M1", "lucid", "lucidrains"), ("M2", "timm", "timm")] {
        let path = dir.join(format!("mixer-{layout}.torchscript.onnx"));
        let m = mixer::import(&path)?;
        let (ht, hc) = m.hidden();
        out.push(Entry {
            key,
            title: format!(
                "MLP-Mixer-{}/{} ({what}; hidden {ht}/{hc})",
                m.dim,
                m.blocks.len()
            ),
            blob: mixer::quantize(&m, &calib, &opts, &|| {})?,
            params: n_params(&doc["models"][layout])?,
            macs: mixer_macs(&m),
            onnx: path,
        });
    }
    let path = dir.join("convmixer-baseline.torchscript.onnx");
    let m = onnx::import(&path)?;
    out.push(Entry {
        key: "C1",
        title: format!(
            "ConvMixer-{}/{} (k{}, p{})",
            m.dim(),
            m.blocks.len(),
            m.kernel(),
            m.patch()
        ),
        blob: convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, &|| {})?,
        params: n_params(&doc["baseline"])?,
        macs: convmixer_macs(&m),
        onnx: path,
    });
    Ok(out)
}

/// Counted paths: (label, -cpu, program, isa or None for tract).
const PATHS: [(&str, &str, Option<&str>); 5] = [
    ("int8 SMLAL (--isa neon)", "cortex-a72", Some("neon")),
    ("int8 SDOT (--isa dot)", "max", Some("dot")),
    ("int8 scalar (--isa scalar)", "cortex-a72", Some("scalar")),
    ("tract fp32", "cortex-a72", None),
    ("tract fp32", "max", None),
];

pub(crate) fn run(ctx: &Ctx<'_>, root: &Path) -> Result<Report> {
    let set: Vec<(Vec<u8>, usize)> = {
        let ex = root.join("examples/mnist");
        let imgs = data::read_idx_images(&ex.join("heldout-images.idx3-ubyte"), (28, 28, 1))?;
        let labels = data::read_idx_labels(&ex.join("heldout-labels.idx1-ubyte"))?;
        imgs.into_iter()
            .zip(labels.into_iter().map(usize::from))
            .collect()
    };
    let dir = root.join("target/bench");
    let raw = dir.join("mnist-0.raw");
    data::write_atomic(&raw, &set[0].0)?;
    let pi = ctx.bin.join("convmixer-pi");
    let tr = ctx.bin.join("tract-runner");
    let mut rows: Vec<Value> = Vec::new();
    let mut cols: Vec<(String, Vec<String>)> = Vec::new();
    for e in entries(root)? {
        let blob_path = dir.join(format!("{}-int8.cmx", e.key.to_lowercase()));
        data::write_atomic(&blob_path, &e.blob)?;
        let model = Model::from_bytes(&e.blob).map_err(|err| anyhow!("{}: blob: {err}", e.key))?;
        let tract = TractModel::load(&e.onnx, 1, 28, 28)?;
        let mut arena = vec![0u8; model.arena_len()];
        let (mut ok8, mut ok32) = (0usize, 0usize);
        for (px, y) in &set {
            let top = model
                .classify::<1>(px, &mut arena)
                .map_err(|err| anyhow!("{err}"))?;
            ok8 += usize::from(usize::from(top[0].0) == *y);
            let l = tract.run_pixels(px, &[MEAN], &[STD])?;
            let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
            ok32 += usize::from(best == *y);
        }
        let pct = |n: usize| 100.0 * n as f64 / set.len() as f64;
        let mut counts: Vec<Option<u64>> = Vec::new();
        let mut tops: Vec<String> = Vec::new();
        for (what, cpu, isa) in PATHS {
            eprintln!("bench: {}: counting {what} on {cpu}…", e.key);
            let (prog, args, reps) = match isa {
                Some(isa) => (
                    &pi,
                    vec![
                        blob_path.display().to_string(),
                        raw.display().to_string(),
                        "--raw".into(),
                        "--isa".into(),
                        isa.into(),
                        "--threads".into(),
                        "1".into(),
                    ],
                    1,
                ),
                None => (
                    &tr,
                    vec![
                        e.onnx.display().to_string(),
                        "--shape".into(),
                        "1,1,28,28".into(),
                    ],
                    4,
                ),
            };
            let (n, run) = per_inference(ctx.method, cpu, prog, &args, reps)?;
            if isa.is_some() {
                tops.push(run.stdout.lines().next().unwrap_or_default().to_string());
            }
            counts.push(Some(n));
        }
        // The int8 paths are bit-exact: they must print the same classification.
        if tops.iter().any(|t| t != &tops[0]) {
            bail!(
                "{}: the int8 kernels printed different results: {tops:?}",
                e.key
            );
        }
        let c = |i: usize| counts[i].unwrap_or(0);
        let per = |i: usize| e.macs as f64 / c(i) as f64;
        rows.push(json!({
            "model": e.key,
            "title": e.title,
            "params": e.params,
            "macs": e.macs,
            "heldout": set.len(),
            "top1_fp32_tract": pct(ok32),
            "top1_int8": pct(ok8),
            "instructions_v80": c(0),
            "instructions_dotprod": c(1),
            "instructions_scalar": c(2),
            "tract_fp32_instructions": c(3),
            "tract_fp32_instructions_max": c(4),
            "blob_bytes": e.blob.len(),
            "arena_bytes": model.arena_len(),
        }));
        cols.push((
            format!("{} {}", e.key, e.title),
            vec![
                thousands(e.params),
                thousands(e.macs),
                format!("{:.2}% / {:.2}%", pct(ok32), pct(ok8)),
                format!("{} ({:.2} MAC/insn)", thousands(c(0)), per(0)),
                format!("{} ({:.2} MAC/insn)", thousands(c(1)), per(1)),
                thousands(c(2)),
                format!("{} / {}", thousands(c(3)), thousands(c(4))),
                format!(
                    "{:.2}x / {:.2}x",
                    c(3) as f64 / c(0) as f64,
                    c(4) as f64 / c(1) as f64
                ),
                thousands(e.blob.len() as u64),
                thousands(model.arena_len() as u64),
            ],
        ));
    }
    let labels = [
        "parameters",
        "MACs per inference",
        "held-out top-1: fp32 (tract) / int8 (ours)",
        "int8 SMLAL, -cpu cortex-a72 (Pi 4)",
        "int8 SDOT, -cpu max (Pi 5)",
        "int8 portable scalar, cortex-a72",
        "tract 0.23 fp32, cortex-a72 / max",
        "tract / ours: SMLAL (a72) / SDOT (max)",
        "blob bytes (int8)",
        "arena bytes (Model::arena_len)",
    ];
    let mut t = String::new();
    let _ = writeln!(
        t,
        "MNIST: the trained MLP-Mixers (examples/mixer-mnist) next to a ConvMixer of their size; {} held-out digits; aarch64 instructions per inference under qemu-user",
        set.len()
    );
    for (title, _) in &cols {
        let _ = writeln!(t, "  {title}");
    }
    let w = 44;
    let _ = write!(t, "  {:<w$}", "");
    for (title, _) in &cols {
        let _ = write!(t, " {:>26}", title.split(' ').next().unwrap_or(""));
    }
    let _ = writeln!(t);
    for (i, label) in labels.iter().enumerate() {
        let _ = write!(t, "  {label:<w$}");
        for (_, v) in &cols {
            let _ = write!(t, " {:>26}", v[i]);
        }
        let _ = writeln!(t);
    }
    Ok(Report {
        json: json!({ "model": "MNIST", "models": rows }),
        text: t,
    })
}
