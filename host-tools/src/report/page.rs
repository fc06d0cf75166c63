//! The HTML page of `host-tools report -o DIR`: `DIR/index.html` and its PNG plots, drawn
//! with plotters into an RGB buffer and encoded with `image`.
//!
//! Text in the plots is drawn with a font compiled into the binary (module `glyphs`): no
//! fontconfig and no system font needed, so the plots have their labels on any machine.
//!
//! The folder is written atomically: built in a hidden sibling, then renamed over `DIR`; a
//! failure leaves a previous report as it was. An existing `DIR` is replaced only if it is
//! empty or a page this module wrote.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;

use super::glyphs::{self, Backend, FAMILY as FONT};
use super::{Analysis, Evaluated, LayerRange};

/// Marks `index.html` as ours: only such a folder (or an empty one) is replaced.
pub const GENERATOR: &str = r#"<meta name="generator" content="convmixer-edge host-tools report">"#;

/// Variants the page has a row for even before they are evaluated (name, what it is).
const PLANNED: &[(&str, &str)] = &[(
    "mixed",
    "mixed precision (int8 / fp16 per layer): pass --accuracy-budget or --sqnr-min",
)];

/// What the page says besides the [`Analysis`].
#[derive(Clone, Debug)]
pub struct Info {
    /// The ONNX file, as given.
    pub model: String,
    /// The `--calibration` argument, as given.
    pub calibration: String,
}

/// Checks that `out` can take the report (run before the slow analysis): it does not exist
/// and its parent folder does, or it is an empty folder or a previous report.
pub fn check_out(out: &Path) -> Result<()> {
    let d = out.display();
    if out.file_name().is_none() {
        bail!("-o {d}: name the report folder itself (e.g. -o report)");
    }
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("-o {d}: is a symbolic link; give the folder itself")
        }
        Ok(m) if !m.is_dir() => bail!("-o {d}: exists and is not a folder"),
        Ok(_) => {
            let ours = std::fs::read_to_string(out.join("index.html"))
                .is_ok_and(|s| s.contains(GENERATOR));
            let empty = std::fs::read_dir(out)
                .with_context(|| format!("-o {d}: cannot read the folder"))?
                .next()
                .is_none();
            if !ours && !empty {
                bail!("-o {d}: exists and is not a report folder (not empty, no index.html written by host-tools report); choose another -o")
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = parent(out);
            if !parent.is_dir() {
                bail!("-o {d}: the folder {} does not exist", parent.display());
            }
            Ok(())
        }
        Err(e) => bail!("-o {d}: {e}"),
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Writes the page for `a` to `out` (see the module doc): `index.html`, `sqnr.png`,
/// `ranges.png` and one `hist-LL.png` per conv layer.
pub fn write(out: &Path, a: &Analysis, info: &Info) -> Result<()> {
    check_out(out)?;
    let dir = parent(out);
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("report");
    let pid = std::process::id();
    let tmp = dir.join(format!(".{name}.tmp{pid}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    if let Err(e) = render(&tmp, a, info) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = replace_dir(&tmp, out, &dir.join(format!(".{name}.old{pid}"))) {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("-o {}: cannot write it: {e}", out.display());
    }
    Ok(())
}

/// Puts the finished folder `tmp` in place of `out`, so that at every moment `out` is the
/// old report or the new one, complete. On Linux an existing `out` is swapped with `tmp`
/// in one step (`renameat2(RENAME_EXCHANGE)`) and the old one, now at `tmp`, removed.
/// Where the exchange is not available (another OS, or a file system without it) the old
/// folder is first renamed to `old`: a crash between the two renames leaves the old report
/// there, under the hidden name, and no `out`.
fn replace_dir(tmp: &Path, out: &Path, old: &Path) -> std::io::Result<()> {
    if !out.exists() {
        return std::fs::rename(tmp, out);
    }
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{renameat_with, RenameFlags, CWD};
        if renameat_with(CWD, tmp, CWD, out, RenameFlags::EXCHANGE).is_ok() {
            let _ = std::fs::remove_dir_all(tmp);
            return Ok(());
        }
    }
    std::fs::rename(out, old)?;
    if let Err(e) = std::fs::rename(tmp, out) {
        let _ = std::fs::rename(old, out);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(old);
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))
}

fn render(dir: &Path, a: &Analysis, info: &Info) -> Result<()> {
    write_file(&dir.join("sqnr.png"), &sqnr_plot(a)?)?;
    write_file(&dir.join("ranges.png"), &ranges_plot(a)?)?;
    for r in &a.ranges {
        write_file(
            &dir.join(format!("hist-{:02}.png", r.layer)),
            &histogram_plot(r, &a.method_name())?,
        )?;
    }
    write_file(&dir.join("index.html"), html(a, info).as_bytes())
}

impl Analysis {
    fn method_name(&self) -> String {
        use convmixer_quantize::calibrate::Method;
        let m = match self.method {
            Method::MinMax => "minmax".to_string(),
            Method::Percentile(p) => format!("percentile {p}"),
            Method::Mse => "mse".into(),
            Method::Entropy => "entropy".into(),
        };
        if self.bias_correction {
            m + " + bias correction"
        } else {
            m
        }
    }
}

// ---------------------------------------------------------------- plots

/// Colour of variant `i` (int8, fp16, then the others).
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

/// Draws into a `w`×`h` RGB buffer and returns it as PNG bytes.
fn plot(
    w: u32,
    h: u32,
    draw: impl FnOnce(&DrawingArea<Backend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    let font =
        glyphs::font().ok_or_else(|| anyhow!("internal error: the plot font does not load"))?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = Backend::new(&mut buf, (w, h), font).into_drawing_area();
        root.fill(&WHITE).map_err(pe)?;
        draw(&root)?;
        root.present().map_err(pe)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| anyhow!("internal error: plot buffer size"))?;
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)?;
    Ok(png.into_inner())
}

fn pe<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Short layer label for x axes: `embed`, `0 dw`, `0 pw`, …
fn short(layer: usize) -> String {
    match layer {
        0 => "embed".into(),
        l => format!("{} {}", (l - 1) / 2, if l % 2 == 1 { "dw" } else { "pw" }),
    }
}

/// The x-axis label of layer position `x` (keys of a `-0.5 .. n − 0.5` axis).
fn layer_tick(x: f64, n: usize) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
        short(i as usize)
    } else {
        String::new()
    }
}

type LayerChart<'a, 'b> = ChartContext<
    'a,
    Backend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart with one x position per layer (`0 .. n`, labelled by [`layer_tick`]) and the
/// value range `y`, its mesh drawn; `desc` is the (y, x) axis descriptions.
fn layer_chart<'a, 'b>(
    root: &'a DrawingArea<Backend<'b>, plotters::coord::Shift>,
    caption: &str,
    n: usize,
    y: std::ops::Range<f64>,
    desc: (&str, &str),
) -> Result<LayerChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(caption, (FONT, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y)
        .map_err(pe)?;
    chart
        .configure_mesh()
        .x_labels(n.min(24))
        .x_label_formatter(&|x| layer_tick(*x, n))
        .disable_x_mesh()
        .y_desc(desc.0)
        .x_desc(desc.1)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .draw()
        .map_err(pe)?;
    Ok(chart)
}

/// The series legend in the upper right corner.
fn legend<'a, 'b: 'a>(chart: &mut LayerChart<'a, 'b>) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(pe)
}

fn sqnr_plot(a: &Analysis) -> Result<Vec<u8>> {
    let n = a.ranges.len().max(1);
    let finite = |v: &Evaluated| -> Vec<(f64, f64)> {
        v.layers
            .iter()
            .filter(|l| l.sqnr_db.is_finite())
            .map(|l| (l.layer as f64, l.sqnr_db))
            .collect()
    };
    let all: Vec<f64> = a
        .eval
        .variants
        .iter()
        .flat_map(|v| finite(v).into_iter().map(|p| p.1))
        .collect();
    let hi = all.iter().copied().fold(10.0f64, f64::max);
    let lo = all.iter().copied().fold(hi, f64::min);
    // Headroom above the highest curve for the legend (upper right).
    let (lo, hi) = ((lo - 5.0).min(0.0), hi + 10.0f64.max(0.5 * (hi - lo)));
    plot(1100, 440, |root| {
        let mut chart = layer_chart(
            root,
            "Per-layer SQNR against the fp32 folded graph",
            n,
            lo..hi,
            ("SQNR (dB)", "layer (block, depthwise / pointwise)"),
        )?;
        for (i, v) in a.eval.variants.iter().enumerate() {
            let c = colour(i);
            let pts = finite(v);
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(pe)?
                .label(format!("{} (mean {:.1} dB)", v.name, v.mean_sqnr_db()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 22, y)], c.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(pe)?;
        }
        legend(&mut chart)
    })
}

fn ranges_plot(a: &Analysis) -> Result<Vec<u8>> {
    let n = a.ranges.len().max(1);
    let lo = a
        .ranges
        .iter()
        .map(|r| r.observed.lo)
        .fold(0.0f32, f32::min);
    let hi = a
        .ranges
        .iter()
        .map(|r| r.observed.hi)
        .fold(0.0f32, f32::max);
    let pad = f64::from(hi - lo).max(1e-3) * 0.06;
    // More room at the top: the legend (upper right) stays clear of the bars.
    let (lo, hi) = (f64::from(lo) - pad, f64::from(hi) + 4.0 * pad);
    let method = a.method_name();
    plot(1100, 440, |root| {
        let mut chart = layer_chart(
            root,
            "Layer output ranges on the calibration set",
            n,
            lo..hi,
            ("value", "layer output (block, depthwise / pointwise)"),
        )?;
        let grey = RGBColor(190, 190, 190);
        let blue = colour(0);
        chart
            .draw_series(a.ranges.iter().map(|r| {
                let x = r.layer as f64;
                Rectangle::new(
                    [
                        (x - 0.32, f64::from(r.observed.lo)),
                        (x + 0.32, f64::from(r.observed.hi)),
                    ],
                    grey.filled(),
                )
            }))
            .map_err(pe)?
            .label("observed min .. max")
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 22, y + 6)], grey.filled()));
        chart
            .draw_series(a.ranges.iter().map(|r| {
                let x = r.layer as f64;
                Rectangle::new(
                    [
                        (x - 0.14, f64::from(r.clip.lo)),
                        (x + 0.14, f64::from(r.clip.hi)),
                    ],
                    blue.filled(),
                )
            }))
            .map_err(pe)?
            .label(format!("int8 clip ({method})"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 22, y + 6)], blue.filled()));
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(-0.5, 0.0), (n as f64 - 0.5, 0.0)],
                BLACK.mix(0.4),
            )))
            .map_err(pe)?;
        legend(&mut chart)
    })
}

/// Bins of the histogram plots (the 2048 calibration bins summed in groups).
const PLOT_BINS: usize = 128;

fn histogram_plot(r: &LayerRange, method: &str) -> Result<Vec<u8>> {
    let h = &r.histogram;
    let (lo, hi) = (f64::from(r.observed.lo), f64::from(r.observed.hi));
    let width = (hi - lo).max(1e-6);
    let group = h.counts.len().div_ceil(PLOT_BINS).max(1);
    let bins: Vec<(f64, f64, u64)> = h
        .counts
        .chunks(group)
        .enumerate()
        .map(|(k, c)| {
            let x0 = lo + width * (k * group) as f64 / h.counts.len() as f64;
            let x1 = lo + width * ((k + 1) * group) as f64 / h.counts.len() as f64;
            (x0, x1, c.iter().sum())
        })
        .collect();
    let top = bins.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64;
    let pad = width * 0.04;
    // The y axis reaches 300× the tallest bar and the min / max / clip lines stop at 2×:
    // the legend (upper right) sits in between, over no data.
    let caption = format!("{}: {:.3}% clipped", r.name, 100.0 * r.clipped);
    plot(520, 300, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 18))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(52)
            .build_cartesian_2d((lo - pad)..(hi + pad), (0.8f64..top * 300.0).log_scale())
            .map_err(pe)?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| {
                if *y >= 1e4 {
                    format!("{y:.0e}")
                } else {
                    format!("{y:.0}")
                }
            })
            .label_style((FONT, 13))
            .y_desc("count")
            .axis_desc_style((FONT, 14))
            .disable_x_mesh()
            .draw()
            .map_err(pe)?;
        chart
            .draw_series(bins.iter().filter(|b| b.2 > 0).map(|&(x0, x1, c)| {
                Rectangle::new(
                    [(x0, 0.8), (x1, c as f64)],
                    RGBColor(120, 150, 190).filled(),
                )
            }))
            .map_err(pe)?;
        let vline =
            |x: f64, style: ShapeStyle| PathElement::new(vec![(x, 0.8), (x, top * 2.0)], style);
        let grey = BLACK.mix(0.55).stroke_width(2);
        let red = RGBColor(214, 39, 40).stroke_width(2);
        chart
            .draw_series([vline(lo, grey), vline(hi, grey)])
            .map_err(pe)?
            .label("min / max")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey));
        chart
            .draw_series([
                vline(f64::from(r.clip.lo), red),
                vline(f64::from(r.clip.hi), red),
            ])
            .map_err(pe)?
            .label(format!("clip ({method})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red));
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.4))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(pe)?;
        Ok(())
    })
}

// ---------------------------------------------------------------- HTML

fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn db(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else if x > 0.0 {
        "exact".into()
    } else {
        "–".into()
    }
}

fn precision(p: convmixer_edge::Precision) -> &'static str {
    match p {
        convmixer_edge::Precision::Int8 => "int8",
        convmixer_edge::Precision::F16 => "fp16",
        convmixer_edge::Precision::F32 => "fp32",
    }
}

/// `int8`, `fp16`, …, or for mixed precision `int8, f16: embed, block 0 depthwise, …`.
fn variant_precision(v: &Evaluated) -> String {
    if v.f16_layers.is_empty() {
        precision(v.precision).into()
    } else {
        format!(
            "{}, f16: {}",
            precision(v.precision),
            v.f16_layers.join(", ")
        )
    }
}

fn activation(a: convmixer_edge::Activation) -> &'static str {
    match a {
        convmixer_edge::Activation::Relu => "ReLU",
        convmixer_edge::Activation::Gelu => "GELU (erf)",
        convmixer_edge::Activation::GeluTanh => "GELU (tanh approximation)",
    }
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// `12345` as `12,345`.
fn thousands(n: usize) -> String {
    crate::thousands(n as u64)
}

const STYLE: &str = r#"
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 24px auto; max-width: 1140px; color: #222; padding: 0 16px; }
h1 { font-size: 24px; margin-bottom: 4px; }
h2 { font-size: 19px; margin-top: 32px; border-bottom: 1px solid #ccc; padding-bottom: 4px; }
p.note { color: #555; font-size: 14px; margin: 6px 0 10px; }
table { border-collapse: collapse; font-size: 14px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 9px; text-align: right; }
th { background: #f0f0f0; }
td.l, th.l { text-align: left; }
tr.planned td { color: #888; font-style: italic; }
dl.shape { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 15px; }
dl.shape dt { font-weight: bold; }
dl.shape dd { margin: 0; }
img.plot { display: block; max-width: 100%; border: 1px solid #ddd; margin: 8px 0; }
div.hists { display: grid; grid-template-columns: repeat(auto-fill, 522px); gap: 12px; }
div.hists img { border: 1px solid #ddd; }
table.confusion td { min-width: 34px; }
"#;

fn html(a: &Analysis, info: &Info) -> String {
    let mut s = String::new();
    let s_ = &mut s;
    let sh = &a.shape;
    let e = &a.eval;
    let _ = write!(
        s_,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n{GENERATOR}\n<title>Quantisation report: {m}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        m = esc(&info.model)
    );
    // 1. Header.
    let _ = write!(
        s_,
        "<header id=\"summary\">\n<h1>Quantisation report</h1>\n<p class=\"note\">{m}</p>\n<dl class=\"shape\">\n\
         <dt>input</dt><dd>{h}×{w}×{c}</dd>\n<dt>dim</dt><dd>{dim}</dd>\n<dt>depth</dt><dd>{depth}</dd>\n\
         <dt>kernel</dt><dd>{k}</dd>\n<dt>patch</dt><dd>{p}</dd>\n<dt>activation</dt><dd>{act}</dd>\n\
         <dt>classes</dt><dd>{cl}</dd>\n<dt>calibration</dt><dd>{method} (<code>--calibration {arg}</code>)</dd>\n\
         <dt>calibration images</dt><dd>{nc}</dd>\n<dt>labelled images</dt><dd>{n}</dd>\n</dl>\n</header>\n",
        m = esc(&info.model),
        h = sh.input.0,
        w = sh.input.1,
        c = sh.input.2,
        dim = sh.dim,
        depth = sh.depth,
        k = sh.kernel,
        p = sh.patch,
        act = activation(sh.activation),
        cl = sh.classes,
        method = esc(&a.method_name()),
        arg = esc(&info.calibration),
        nc = a.n_calib,
        n = e.n,
    );
    // 2. Accuracy and sizes.
    let _ = write!(
        s_,
        "<section id=\"accuracy\">\n<h2>Top-1, agreement and sizes</h2>\n\
         <p class=\"note\">Top-1 on the {n} labelled images; agreement: share of images where the variant predicts the same class as the fp32 folded graph. Arena: <code>Model::arena_len</code>, the working memory the runtime needs.</p>\n\
         <table id=\"variants\">\n<tr><th class=\"l\">variant</th><th class=\"l\">precision</th><th>top-1</th><th>correct</th><th>agreement with fp32</th><th>mean SQNR (dB)</th><th>blob bytes</th><th>arena bytes</th></tr>\n\
         <tr class=\"variant\"><td class=\"l\">fp32 (reference: folded graph)</td><td class=\"l\">fp32</td><td>{t}</td><td>{c}/{n}</td><td>–</td><td>–</td><td>{b}</td><td>{ar}</td></tr>\n",
        n = e.n,
        t = pct(e.top1_fp32),
        c = e.correct_fp32,
        b = thousands(a.fp32_blob.0),
        ar = thousands(a.fp32_blob.1),
    );
    for v in &e.variants {
        let _ = writeln!(
            s_,
            "<tr class=\"variant\"><td class=\"l\">{name}</td><td class=\"l\">{p}</td><td>{t}</td><td>{c}/{n}</td><td>{ag}</td><td>{sq}</td><td>{b}</td><td>{ar}</td></tr>",
            name = esc(&v.name),
            p = esc(&variant_precision(v)),
            t = pct(v.top1),
            c = v.correct,
            n = e.n,
            ag = pct(v.agreement),
            sq = db(v.mean_sqnr_db()),
            b = thousands(v.blob_bytes),
            ar = thousands(v.arena_bytes),
        );
    }
    for (name, what) in PLANNED {
        if a.variant(name).is_none() {
            let _ = writeln!(
                s_,
                "<tr class=\"planned\"><td class=\"l\">{name}</td><td class=\"l\" colspan=\"7\">{what}</td></tr>"
            );
        }
    }
    s_.push_str("</table>\n</section>\n");
    // 3. SQNR.
    let _ = write!(
        s_,
        "<section id=\"sqnr\">\n<h2>Per-layer SQNR</h2>\n\
         <p class=\"note\">Signal-to-quantisation-noise ratio of each conv layer's output in the runtime (<code>Model::logits_traced</code>) against the fp32 folded graph, 10·log10(Σx² / Σ(x − x̂)²) over every labelled image; int8 outputs dequantised with the blob's scale and zero point. Higher is better; each 6 dB is one bit.</p>\n\
         <img class=\"plot\" src=\"sqnr.png\" alt=\"per-layer SQNR plot\" width=\"1100\" height=\"440\">\n\
         <table id=\"sqnr-table\">\n<tr><th>layer</th><th class=\"l\">name</th>"
    );
    for v in &e.variants {
        let _ = write!(s_, "<th>{} (dB)</th>", esc(&v.name));
    }
    s_.push_str("</tr>\n");
    for (l, r) in a.ranges.iter().enumerate() {
        let _ = write!(
            s_,
            "<tr class=\"layer\"><td>{l}</td><td class=\"l\">{}</td>",
            esc(&r.name)
        );
        for v in &e.variants {
            let _ = write!(
                s_,
                "<td>{}</td>",
                v.layers.get(l).map_or("–".into(), |x| db(x.sqnr_db))
            );
        }
        s_.push_str("</tr>\n");
    }
    s_.push_str("</table>\n</section>\n");
    // 4. Confusion matrix of int8.
    s_.push_str("<section id=\"confusion\">\n<h2>Confusion matrix (int8)</h2>\n");
    match a.variant("int8") {
        Some(v) => confusion(s_, v, &a.labels),
        None => s_.push_str("<p class=\"note\">No int8 variant was evaluated.</p>\n"),
    }
    s_.push_str("</section>\n");
    // 5. Ranges.
    let _ = write!(
        s_,
        "<section id=\"ranges\">\n<h2>Activation ranges and clipping</h2>\n\
         <p class=\"note\">Each conv layer's output (after the activation and the folded BatchNorm; depthwise layers after the residual add) over the {nc} calibration images: the smallest and largest value seen, and the range the <b>{m}</b> calibration clips it to for int8 (widened to contain 0). Clipped: share of the values outside the clip; farthest clipped: how far the most extreme value lies beyond it, in int8 steps (scale).</p>\n\
         <img class=\"plot\" src=\"ranges.png\" alt=\"activation ranges plot\" width=\"1100\" height=\"440\">\n\
         <table id=\"ranges-table\">\n<tr><th>layer</th><th class=\"l\">name</th><th>observed min</th><th>observed max</th><th>clip min</th><th>clip max</th><th>clipped</th><th>farthest clipped (steps)</th><th>int8 scale</th><th>finest channel scale</th><th>zero point</th></tr>\n",
        nc = a.n_calib,
        m = esc(&a.method_name()),
    );
    for r in &a.ranges {
        let _ = writeln!(
            s_,
            "<tr class=\"layer\"><td>{}</td><td class=\"l\">{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.3}%</td><td>{:.1}</td><td>{:.5}</td><td>{:.3e}</td><td>{}</td></tr>",
            r.layer,
            esc(&r.name),
            r.observed.lo,
            r.observed.hi,
            r.clip.lo,
            r.clip.hi,
            100.0 * r.clipped,
            f64::from((r.clip.lo - r.observed.lo).max(r.observed.hi - r.clip.hi)) / r.scale,
            r.scale,
            r.finest_scale,
            r.zero_point
        );
    }
    s_.push_str("</table>\n</section>\n");
    // 6. Histograms.
    s_.push_str(
        "<section id=\"histograms\">\n<h2>Activation histograms</h2>\n\
         <p class=\"note\">Calibration-set histogram of each layer output (log scale), observed min / max in grey, int8 clip in red.</p>\n<div class=\"hists\">\n",
    );
    for r in &a.ranges {
        let _ = writeln!(
            s_,
            "<img src=\"hist-{:02}.png\" alt=\"histogram of {}\" width=\"520\" height=\"300\">",
            r.layer,
            esc(&r.name)
        );
    }
    s_.push_str("</div>\n</section>\n</body>\n</html>\n");
    s
}

/// `v`'s confusion matrix as a table, cells shaded by their share of the row (the true
/// class): the diagonal blue, mistakes red.
fn confusion(s: &mut String, v: &Evaluated, labels: &[String]) {
    let _ = write!(
        s,
        "<p class=\"note\">Rows: true class; columns: the int8 blob's prediction. Shading: share of the row.</p>\n\
         <table class=\"confusion\" id=\"confusion-table\">\n<tr><th class=\"l\">true \\ predicted</th>"
    );
    for l in labels {
        let _ = write!(s, "<th>{}</th>", esc(l));
    }
    s.push_str("<th>n</th><th>recall</th></tr>\n");
    for (t, row) in v.confusion.iter().enumerate() {
        let total: u32 = row.iter().sum();
        let _ = write!(
            s,
            "<tr><th class=\"l\">{}</th>",
            esc(labels.get(t).map_or("?", String::as_str))
        );
        for (p, &c) in row.iter().enumerate() {
            let share = f64::from(c) / f64::from(total.max(1));
            // Mistakes are rare: a stronger ramp so that a single one shows.
            let (rgb, alpha) = if p == t {
                ("31,119,180", 0.12 + 0.6 * share)
            } else if c > 0 {
                ("214,39,40", 0.15 + 0.85 * share.sqrt())
            } else {
                ("255,255,255", 0.0)
            };
            let _ = write!(
                s,
                "<td style=\"background: rgba({rgb},{alpha:.3})\">{}</td>",
                if c > 0 { c.to_string() } else { String::new() }
            );
        }
        let recall = row
            .get(t)
            .map_or(0.0, |&c| f64::from(c) / f64::from(total.max(1)));
        let _ = writeln!(s, "<td>{total}</td><td>{}</td></tr>", pct(recall));
    }
    s.push_str("</table>\n");
}
