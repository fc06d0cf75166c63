//! `convmixer-pi`: classify images with a convmixer-edge model blob on a Raspberry Pi
//! (64-bit Raspberry Pi OS) or any other Linux.
//!
//! ```text
//! convmixer-pi MODEL.cmx IMAGE... [--repeat N] [--isa auto|scalar|neon|dot]
//!              [--threads T | --count-parts P] [--raw]
//! ```
//!
//! Each image (PNG or PGM/PPM of the model's input size, or with `--raw` a file of exactly
//! `in_h · in_w · in_c` raw HWC `u8` pixels) is classified `N` times (default 1) with the
//! chosen kernels on `T` cores (default: every core; each layer is split into `T` parts,
//! run by this thread and `T − 1` `std::thread::scope` threads serving a
//! `convmixer_edge::cores::Team`; the result is bit-identical to one core's) and its top-5
//! classes are printed once. `--repeat` exists for
//! benchmarks: `host-tools bench` counts this program's instructions under qemu-aarch64
//! with `N` and `2N` runs. `--count-parts P` is for the benchmark too: each layer is split
//! into `P` parts that run one after another on this thread, between the marker hints of
//! `tools/qemu-insn-plugin`, so that each part's instructions can be counted under qemu
//! (the busiest part of each layer is what `P` cores would wait for). Every failure prints
//! one line `error: …` and exits with status 1 (2 for command-line mistakes).

use std::process::ExitCode;

use convmixer_edge::cores::{Cores, Team};
use convmixer_edge::kernels::Isa;
use convmixer_edge::Model;

const USAGE: &str = "usage: convmixer-pi MODEL.cmx IMAGE... [--repeat N] \
                     [--isa auto|scalar|neon|dot] [--threads T | --count-parts P] [--raw]";

/// Which kernels to run (`Fixed` keeps the spelling the user gave, for messages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaArg {
    Auto,
    Fixed(Isa, &'static str),
}

/// Command-line arguments.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    model: String,
    images: Vec<String>,
    repeat: usize,
    isa: IsaArg,
    /// Cores per image (`None`: every core).
    threads: Option<usize>,
    /// Parts per layer, run in turn between marker hints (`--count-parts`).
    count_parts: Option<usize>,
    raw: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut positional = Vec::new();
    let (mut repeat, mut isa, mut raw, mut threads) = (1, IsaArg::Auto, false, None);
    let mut count_parts = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--repeat" => {
                let v = it.next().ok_or("--repeat needs a value")?;
                repeat = v
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| format!("--repeat {v}: expected a positive integer"))?;
            }
            "--isa" => {
                let v = it.next().ok_or("--isa needs a value")?;
                isa = match v.as_str() {
                    "auto" => IsaArg::Auto,
                    "scalar" => IsaArg::Fixed(Isa::Scalar, "scalar"),
                    "neon" => IsaArg::Fixed(Isa::Neon, "neon"),
                    "dot" => IsaArg::Fixed(Isa::NeonDot, "dot"),
                    _ => return Err(format!("--isa {v}: expected auto, scalar, neon or dot")),
                };
            }
            "--threads" => {
                let v = it.next().ok_or("--threads needs a value")?;
                threads = Some(
                    v.parse()
                        .ok()
                        .filter(|&n: &usize| n > 0)
                        .ok_or_else(|| format!("--threads {v}: expected a positive integer"))?,
                );
            }
            "--count-parts" => {
                let v = it.next().ok_or("--count-parts needs a value")?;
                count_parts =
                    Some(v.parse().ok().filter(|&n: &usize| n > 0).ok_or_else(|| {
                        format!("--count-parts {v}: expected a positive integer")
                    })?);
            }
            "--raw" => raw = true,
            "-h" | "--help" => return Err(USAGE.into()),
            "--" => positional.extend(it.by_ref().cloned()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => positional.push(s.to_string()),
        }
    }
    if positional.len() < 2 {
        return Err("expected a model blob and at least one image".into());
    }
    let model = positional.remove(0);
    Ok(Args {
        model,
        images: positional,
        repeat,
        isa,
        threads,
        count_parts,
        raw,
    })
}

/// Raw HWC `u8` pixels of one image, checked against the model's input shape.
fn load_pixels(path: &str, model: &Model<'_>, raw: bool) -> Result<Vec<u8>, String> {
    let h = model.header();
    let (ih, iw, ic) = (u32::from(h.in_h), u32::from(h.in_w), usize::from(h.in_c));
    if raw {
        let px = std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
        if px.len() != model.input_len() {
            return Err(format!(
                "{path}: {} bytes, the model takes {} ({ih}x{iw}x{ic} HWC u8)",
                px.len(),
                model.input_len()
            ));
        }
        return Ok(px);
    }
    let img = image::open(path).map_err(|e| format!("{path}: cannot decode image: {e}"))?;
    if (img.height(), img.width()) != (ih, iw) {
        return Err(format!(
            "{path}: image is {}x{}, the model expects {ih}x{iw}",
            img.height(),
            img.width()
        ));
    }
    Ok(if ic == 1 {
        img.into_luma8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    })
}

fn run(args: &Args) -> Result<(), String> {
    let bytes =
        std::fs::read(&args.model).map_err(|e| format!("{}: cannot read: {e}", args.model))?;
    let model = Model::from_bytes(&bytes).map_err(|e| format!("{}: {e}", args.model))?;
    let model = match args.isa {
        IsaArg::Auto => model,
        IsaArg::Fixed(isa, name) => model
            .with_isa(isa)
            .map_err(|e| format!("--isa {name}: {e}"))?,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if let Some(parts) = args.count_parts {
        return classify_all(args, &model, &Marked(parts));
    }
    Team::scoped(threads, |team| classify_all(args, &model, team))
}

/// `--count-parts`: `.0` parts per layer, run in turn on this thread between the marker
/// hints of `tools/qemu-insn-plugin`: `HINT #96` before a layer's parts, `#97` before each
/// part, `#98` after the last.
struct Marked(usize);

/// Executes the marker hint `#N` (a NOP to the CPU; the counting plugin logs it).
fn mark<const N: u32>() {
    #[cfg(target_arch = "aarch64")]
    // SAFETY: HINT #96..#98 are hint encodings that execute as NOPs: no effect on
    // registers, memory or flags.
    unsafe {
        core::arch::asm!("hint #{n}", n = const N, options(nomem, nostack, preserves_flags))
    };
}

impl Cores for Marked {
    fn count(&self) -> usize {
        self.0
    }

    fn join(&self, tasks: &mut [&mut (dyn FnMut() + Send)]) {
        mark::<96>();
        for t in tasks {
            mark::<97>();
            t();
        }
        mark::<98>();
    }
}

/// Every image of `args` on `team`'s cores, printed as it is done.
fn classify_all(args: &Args, model: &Model<'_>, team: &dyn Cores) -> Result<(), String> {
    let mut arena = vec![0u8; model.arena_len_for(team.count())];
    for path in &args.images {
        let px = load_pixels(path, model, args.raw)?;
        let mut top = classify_once(model, team, &px, &mut arena, path)?;
        for _ in 1..args.repeat {
            top = classify_once(model, team, &px, &mut arena, path)?;
        }
        let list: Vec<String> = top
            .iter()
            .map(|&(c, p)| match model.label(c) {
                Some(l) => format!("{l} {p:.4}"),
                None => format!("{c} {p:.4}"),
            })
            .collect();
        println!("{path}: {}", list.join(", "));
    }
    Ok(())
}

/// One classification: the top 5 (class, probability) pairs, best first.
fn classify_once(
    model: &Model<'_>,
    cores: &dyn Cores,
    px: &[u8],
    arena: &mut [u8],
    path: &str,
) -> Result<Vec<(u16, f32)>, String> {
    model
        .classify_on::<5>(cores, px, arena)
        .map(|t| t.to_vec())
        .map_err(|e| format!("{path}: {e}"))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_arguments() {
        let a = parse_args(&v(&[
            "m.cmx", "a.png", "--repeat", "3", "--isa", "dot", "b.png",
        ]))
        .unwrap();
        assert_eq!(
            a,
            Args {
                model: "m.cmx".into(),
                images: v(&["a.png", "b.png"]),
                repeat: 3,
                isa: IsaArg::Fixed(Isa::NeonDot, "dot"),
                threads: None,
                count_parts: None,
                raw: false
            }
        );
        assert!(parse_args(&v(&["m.cmx", "a", "--raw"])).unwrap().raw);
        let t = parse_args(&v(&["m.cmx", "a", "--threads", "4"])).unwrap();
        assert_eq!(t.threads, Some(4));
        assert!(parse_args(&v(&["m.cmx", "a", "--threads", "0"])).is_err());
        assert!(parse_args(&v(&["m.cmx"])).is_err());
        assert!(parse_args(&v(&["m.cmx", "a", "--isa", "sse"])).is_err());
        assert!(parse_args(&v(&["m.cmx", "a", "--repeat", "-1"])).is_err());
        assert!(parse_args(&v(&["m.cmx", "a", "--repeat", "0"])).is_err());
    }
}
