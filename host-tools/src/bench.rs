//! `host-tools bench`: deterministic figures for two random-weight ConvMixers (issue 3).
//!
//! For each model: MACs per inference; aarch64 guest instructions per inference under
//! qemu-user (our int8 runtime with the SMLAL, SDOT and scalar kernels; the f16 blob in
//! binary16 (`FMLA .8h`, `-cpu max`) and in f32 (`FMLA .4s`, `-cpu cortex-a72`); tract fp32
//! on the same model) next to the MAC-throughput limit; llvm-mca cycle estimates of the kernels'
//! hot loops; x86_64 host wall time (int8 vs tract fp32); blob and arena sizes.
//!
//! Instruction counts are exact and repeatable (see [`host_tools::qemu_count`]); per
//! inference = (count(2N) − count(N)) / N with the same input, so start-up cancels.

use host_tools::thousands;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::{Activation, Model, Precision};
use convmixer_quantize::onnx_export::{write_onnx, GeluForm};
use convmixer_quantize::random::{random_convmixer, RandomConfig};
use convmixer_quantize::reference::TractModel;
use convmixer_quantize::{data, Options};
use host_tools::qemu_count::{elf_entry, run_counted, run_plugin, Counts, Run};
use serde_json::{json, Value};

use crate::mca;

mod model;
use model::bench_model;
pub(crate) use model::{Ctx, Report};

const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// One benchmark model.
struct Spec {
    key: &'static str,
    title: &'static str,
    cfg: RandomConfig,
}

fn specs() -> [Spec; 2] {
    [
        Spec {
            key: "B1",
            title: "ConvMixer-256/8 p2 k5 GELU, 32x32x3, 10 classes",
            cfg: RandomConfig {
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
            },
        },
        Spec {
            key: "B2",
            title: "ConvMixer-768/32 p7 k7 ReLU, 112x112x3, 1000 classes",
            cfg: RandomConfig {
                dim: 768,
                depth: 32,
                kernel: 7,
                patch: 7,
                in_c: 3,
                in_h: 112,
                in_w: 112,
                classes: 1000,
                act: Activation::Relu,
                seed: 2,
            },
        },
    ]
}

/// Multiply-accumulates per inference, by layer kind.
#[derive(Clone, Copy, Debug)]
struct Macs {
    embed: u64,
    dw: u64,
    pw: u64,
    head: u64,
}

impl Macs {
    fn of(c: &RandomConfig) -> Macs {
        let tokens = ((c.in_h / c.patch) * (c.in_w / c.patch)) as u64;
        let (dim, depth, k) = (c.dim as u64, c.depth as u64, c.kernel as u64);
        Macs {
            embed: tokens * dim * (c.patch * c.patch * c.in_c) as u64,
            dw: depth * tokens * dim * k * k,
            pw: depth * tokens * dim * dim,
            head: dim * c.classes as u64,
        }
    }
    fn total(&self) -> u64 {
        self.embed + self.dw + self.pw + self.head
    }
    /// Fewest instructions the mixer layers can take at one MAC instruction of
    /// `pw_per_insn` MACs for pointwise and 8 (SMLAL) for depthwise.
    fn limit(&self, pw_per_insn: u64) -> u64 {
        self.pw / pw_per_insn + self.dw / 8
    }
    /// The same for float: `lanes` MACs per `FMLA` (8 for `.8h`, 4 for `.4s`) in both.
    fn limit_float(&self, lanes: u64) -> u64 {
        (self.pw + self.dw) / lanes
    }
}

fn millions(v: u64) -> String {
    format!("{:.1}M", v as f64 / 1e6)
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-tools lives inside the workspace")
        .to_path_buf()
}

/// First line of `cmd --version`, or a one-line error naming what to install.
fn tool_version(cmd: &str, args: &[&str], install: &str) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|_| anyhow!("`{cmd}` not found: {install}"))?;
    if !out.status.success() {
        bail!("`{cmd} {}` failed: {install}", args.join(" "));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string())
}

/// Builds convmixer-pi and tract-runner for aarch64 with Debian's cargo; returns the
/// folder holding them.
fn cross_build(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target/debian");
    eprintln!("bench: cross-building convmixer-pi and tract-runner for {AARCH64} (cargo +debian)…");
    let status = Command::new("cargo")
        .args(["+debian", "build", "--release", "--target", AARCH64])
        .args(["-p", "convmixer-pi", "-p", "tract-runner"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO")
        .current_dir(root)
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cross build failed ({status}): see the cargo output above (scripts/install-toolchain.sh installs the toolchain)");
    }
    Ok(target_dir.join(AARCH64).join("release"))
}

/// A deterministic pseudo-random image (xorshift), HWC u8.
fn random_pixels(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8
        })
        .collect()
}

/// Files of one prepared model.
struct Prepared {
    onnx: PathBuf,
    blob: PathBuf,
    /// The f16 blob of the same model.
    blob_fp16: PathBuf,
    raw: PathBuf,
    blob_bytes: Vec<u8>,
    pixels: Vec<u8>,
}

fn prepare(spec: &Spec, dir: &Path) -> Result<Prepared> {
    let t0 = Instant::now();
    let c = &spec.cfg;
    let m = random_convmixer(c).with_context(|| format!("{}: building the model", spec.key))?;
    let onnx_bytes = write_onnx(&m, GeluForm::Erf)
        .with_context(|| format!("{}: writing the ONNX model", spec.key))?;
    let len = c.in_h * c.in_w * c.in_c;
    let calib: Vec<Vec<u8>> = (0..4).map(|i| random_pixels(len, 0x5eed + i)).collect();
    let blob_bytes =
        convmixer_quantize::quantize(&m, Precision::Int8, &calib, &Options::default(), &|| {})
            .with_context(|| format!("{}: quantising", spec.key))?;
    let fp16 = convmixer_quantize::quantize(&m, Precision::F16, &[], &Options::default(), &|| {})
        .with_context(|| format!("{}: writing the fp16 blob", spec.key))?;
    let pixels = random_pixels(len, 0xbe9c);
    let name = spec.key.to_lowercase();
    let p = Prepared {
        onnx: dir.join(format!("{name}.onnx")),
        blob: dir.join(format!("{name}-int8.cmx")),
        blob_fp16: dir.join(format!("{name}-fp16.cmx")),
        raw: dir.join(format!("{name}-input.raw")),
        blob_bytes,
        pixels,
    };
    data::write_atomic(&p.onnx, &onnx_bytes)?;
    data::write_atomic(&p.blob, &p.blob_bytes)?;
    data::write_atomic(&p.blob_fp16, &fp16)?;
    data::write_atomic(&p.raw, &p.pixels)?;
    eprintln!(
        "bench: {}: wrote {}, {} and {} in {:.1}s",
        spec.key,
        p.onnx.display(),
        p.blob.display(),
        p.raw.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(p)
}

/// How guest instructions are counted.
pub(crate) enum Method {
    /// `tools/qemu-insn-plugin` (fast; checked against the log at the start of a run).
    Plugin(PathBuf),
    /// Parsing qemu's `-d in_asm,exec,nochain` log ([`run_counted`]; slow: about 1 µs
    /// per executed block).
    Log,
}

impl Method {
    fn run(&self, cpu: &str, prog: &Path, args: &[String]) -> Result<Run> {
        match self {
            Method::Plugin(so) => run_plugin(so, cpu, prog, args),
            Method::Log => run_counted(cpu, prog, args),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Method::Plugin(_) => "qemu plugin (tools/qemu-insn-plugin)",
            Method::Log => "qemu -d in_asm,exec,nochain log",
        }
    }
}

/// Instructions per inference: (count(2N) − count(N)) / N, both runs at once.
/// Returns the count and the 2N run (its stdout and profile).
pub(crate) fn per_inference(
    m: &Method,
    cpu: &str,
    prog: &Path,
    args: &[String],
    n: usize,
) -> Result<(u64, Run)> {
    let (r1, r2) = runs(m, cpu, prog, args, n)?;
    for c in [r1.counts, r2.counts] {
        check_complete(c)?;
    }
    let diff = r2
        .counts
        .instructions
        .checked_sub(r1.counts.instructions)
        .ok_or_else(|| {
            anyhow!(
                "{}: the 2N run executed fewer instructions than the N run",
                prog.display()
            )
        })?;
    Ok((diff / n as u64, r2))
}

/// Cores of the critical-path counts (a Raspberry Pi's four).
const CORES: usize = 4;

/// Instructions added to the critical path per part handed to another core: the
/// `cores::Team` hand-off as compiled for aarch64 (`Team::join`'s store loop, 5 per
/// helper; its wait's load and compare; the helper's slot load, compare, indirect call and
/// release store), rounded up. The waits themselves are spins on one cache line: time, not
/// work, and not counted.
const HANDOFF: u64 = 12;

/// Instructions added per split layer: `Team::join`'s own prologue, checks, task-0 call
/// and the `Pending` guard (about 45 as compiled for aarch64), rounded up. The `--count-parts`
/// join that the count runs executes its own, similar, bookkeeping, which `split` includes.
const JOIN: u64 = 48;

/// One model's counts on [`CORES`] cores, per inference.
struct Critical {
    /// Every instruction, the parts run in turn on one core.
    split: u64,
    /// What the slowest core executes: `split` less, in each split layer, the parts other
    /// than the busiest, plus [`HANDOFF`] per part handed to a helper and [`JOIN`] per
    /// split layer.
    path: u64,
    /// Split layers per inference.
    joins: u64,
}

/// [`Critical`] from two `--count-parts` runs (N = 1 and 2 repetitions, at once): each
/// figure is the 2N run's less the N run's.
fn critical_path(m: &Method, cpu: &str, prog: &Path, args: &[String]) -> Result<Critical> {
    let (r1, r2) = runs(m, cpu, prog, args, 1)?;
    let (s1, j1, e1) = host_tools::qemu_count::join_savings(&r1.marks)?;
    let (s2, j2, e2) = host_tools::qemu_count::join_savings(&r2.marks)?;
    let diff = |a: u64, b: u64, what: &str| {
        b.checked_sub(a)
            .ok_or_else(|| anyhow!("{}: the 2N run has fewer {what}", prog.display()))
    };
    let split = diff(
        r1.counts.instructions,
        r2.counts.instructions,
        "instructions",
    )?;
    let (saved, joins, extra) = (
        diff(s1, s2, "savings")?,
        diff(j1, j2, "joins")?,
        diff(e1, e2, "parts")?,
    );
    if joins == 0 {
        bail!(
            "{}: no split layers were marked (--count-parts)",
            prog.display()
        );
    }
    Ok(Critical {
        split,
        path: split - saved + HANDOFF * extra + JOIN * joins,
        joins,
    })
}

/// The runs of `prog args --repeat N` and `--repeat 2N`, at once.
fn runs(m: &Method, cpu: &str, prog: &Path, args: &[String], n: usize) -> Result<(Run, Run)> {
    let with = |reps: usize| {
        let mut a = args.to_vec();
        a.extend(["--repeat".to_string(), reps.to_string()]);
        a
    };
    let (a1, a2) = (with(n), with(2 * n));
    let (r1, r2) = std::thread::scope(|s| {
        let h1 = s.spawn(|| m.run(cpu, prog, &a1));
        let h2 = s.spawn(|| m.run(cpu, prog, &a2));
        (h1.join(), h2.join())
    });
    let r1 = r1.map_err(|_| anyhow!("counting thread panicked"))??;
    let r2 = r2.map_err(|_| anyhow!("counting thread panicked"))??;
    Ok((r1, r2))
}

/// Builds the counting plugin (host target, its own target dir); returns the `.so`.
fn build_plugin(root: &Path) -> Result<PathBuf> {
    let target_dir = root.join("target/bench-plugin");
    let status = Command::new("cargo")
        .args(["build", "--release", "-p", "qemu-insn-plugin"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(root)
        .stdout(Stdio::null())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building tools/qemu-insn-plugin failed ({status}): see the cargo output above");
    }
    Ok(target_dir.join("release/libqemu_insn_plugin.so"))
}

/// Both counters on one small run (the MNIST example model, one inference): they must
/// give the same count. Returns it.
fn cross_check(root: &Path, plugin: &Path, pi: &Path) -> Result<u64> {
    let ex = root.join("examples/mnist");
    let blob = ex.join("convmixer-mnist-int8.cmx");
    let idx = std::fs::read(ex.join("heldout-images.idx3-ubyte"))
        .context("examples/mnist/heldout-images.idx3-ubyte")?;
    let img = idx
        .get(16..16 + 28 * 28)
        .ok_or_else(|| anyhow!("examples/mnist/heldout-images.idx3-ubyte is truncated"))?;
    let raw = root.join("target/bench/mnist-0.raw");
    data::write_atomic(&raw, img)?;
    let args: Vec<String> = [&blob, &raw]
        .iter()
        .map(|p| p.display().to_string())
        .chain(["--raw", "--isa", "neon", "--threads", "1"].map(String::from))
        .collect();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| run_plugin(plugin, "cortex-a72", pi, &args));
        let b = s.spawn(|| run_counted("cortex-a72", pi, &args));
        (a.join(), b.join())
    });
    let a = a.map_err(|_| anyhow!("counting thread panicked"))??;
    let b = b.map_err(|_| anyhow!("counting thread panicked"))??;
    check_complete(b.counts)?;
    if a.counts.instructions != b.counts.instructions {
        bail!(
            "instruction counters disagree on the MNIST example: plugin {}, qemu log {}",
            a.counts.instructions,
            b.counts.instructions
        );
    }
    Ok(a.counts.instructions)
}

fn check_complete(c: Counts) -> Result<()> {
    if c.unknown_executions > 0 {
        bail!(
            "qemu log incomplete: {} executions of untranslated blocks",
            c.unknown_executions
        );
    }
    Ok(())
}

/// The first class printed by convmixer-pi (`path: class p, …`).
fn top1(stdout: &str) -> Option<String> {
    let line = stdout.lines().next()?;
    let (_, rest) = line.rsplit_once(": ")?;
    Some(rest.split(' ').next()?.to_string())
}

/// One measured instruction count.
struct Count {
    what: &'static str,
    cpu: &'static str,
    insns: Option<u64>,
    limit: Option<u64>,
    note: String,
}

/// Median of a few timings.
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Host (x86_64) wall times, medians, interleaved run by run so that all see the same
/// machine state.
struct HostTimes {
    /// Our int8 `classify` (auto ISA) on one core.
    ours: Duration,
    /// The same with each layer split over every core (`classify_on`, a scoped `Team`).
    ours_cores: Duration,
    /// The cores `ours_cores` used.
    cores: usize,
    /// tract fp32.
    tract: Duration,
}

/// [`HostTimes`] over `reps` interleaved runs (after one warm-up each); the split run must
/// give the single core's top-5.
fn host_times(p: &Prepared, c: &RandomConfig, reps: usize) -> Result<HostTimes> {
    let model = Model::from_bytes(&p.blob_bytes).map_err(|e| anyhow!("blob: {e}"))?;
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(convmixer_edge::cores::MAX_PARTS);
    convmixer_edge::cores::Team::scoped(cores, |split| host_times_on(p, c, reps, &model, split))
}

fn host_times_on(
    p: &Prepared,
    c: &RandomConfig,
    reps: usize,
    model: &Model,
    split: &convmixer_edge::cores::Team,
) -> Result<HostTimes> {
    use convmixer_edge::cores::Cores;
    let cores = split.count();
    let mut arena = vec![0u8; model.arena_len_for(cores)];
    let tract = TractModel::load(&p.onnx, c.in_c, c.in_h, c.in_w)?;
    let (mut ours, mut ours_cores, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let mut one = |on: &dyn convmixer_edge::cores::Cores| -> Result<(Duration, Vec<u16>)> {
        let t = Instant::now();
        let top = model
            .classify_on::<5>(on, &p.pixels, &mut arena)
            .map_err(|e| anyhow!("{e}"))?;
        Ok((t.elapsed(), top.iter().map(|x| x.0).collect()))
    };
    let (_, want) = one(&convmixer_edge::cores::OneCore)?;
    let (_, got) = one(split)?;
    if got != want {
        bail!("{cores} cores gave top-5 {got:?}, one core {want:?}");
    }
    tract.run_pixels(&p.pixels, &[], &[])?;
    for _ in 0..reps {
        ours.push(one(&convmixer_edge::cores::OneCore)?.0);
        ours_cores.push(one(split)?.0);
        let t = Instant::now();
        let logits = tract.run_pixels(&p.pixels, &[], &[])?;
        theirs.push(t.elapsed());
        std::hint::black_box(logits);
    }
    Ok(HostTimes {
        ours: median(ours),
        ours_cores: median(ours_cores),
        cores,
        tract: median(theirs),
    })
}

/// `host-tools bench [B1|B2|MNIST]... [--json] [--quick] [--log-counter]` (no model: all).
pub fn run(only: &[String], json_out: bool, quick: bool, log_counter: bool) -> Result<()> {
    let wanted = |key: &str| only.is_empty() || only.iter().any(|o| o == key);
    if only.iter().any(|o| o == "T768") {
        bail!("T768 is a model of `bench --host` only");
    }
    if cfg!(debug_assertions) {
        bail!("bench needs a release build of host-tools (host timings): cargo run --release -p host-tools -- bench");
    }
    let t_start = Instant::now();
    let qemu = tool_version(
        "qemu-aarch64",
        &["--version"],
        "install qemu-user (scripts/install-toolchain.sh)",
    )?;
    tool_version(
        "llvm-mca-14",
        &["--version"],
        "install llvm-14 (apt-get install llvm-14)",
    )?;
    tool_version(
        "aarch64-linux-gnu-objdump",
        &["--version"],
        "install binutils-aarch64-linux-gnu (scripts/install-toolchain.sh)",
    )?;
    tool_version(
        "aarch64-linux-gnu-gcc",
        &["--version"],
        "install gcc-aarch64-linux-gnu (scripts/install-toolchain.sh)",
    )?;
    tool_version(
        "cargo",
        &["+debian", "--version"],
        "Debian's Rust is not linked as rustup toolchain `debian` (scripts/install-toolchain.sh)",
    )?;

    let root = root();
    let bin = cross_build(&root)?;
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let pi = bin.join("convmixer-pi");
    let dis = mca::disassemble(&pi)?;
    let (method, checked) = if log_counter {
        (Method::Log, None)
    } else {
        let so = build_plugin(&root)?;
        eprintln!(
            "bench: checking the plugin against qemu's exec log (MNIST example, one inference)…"
        );
        let n = cross_check(&root, &so, &pi)?;
        (Method::Plugin(so), Some(n))
    };
    let ctx = Ctx {
        bin: &bin,
        out_dir: &dir,
        quick,
        method: &method,
        dis: &dis,
        entry: elf_entry(&pi)?,
    };
    if !json_out {
        let flags = [(quick, " --quick"), (log_counter, " --log-counter")]
            .iter()
            .filter(|f| f.0)
            .map(|f| f.1)
            .collect::<String>();
        println!("host-tools bench{flags}: {qemu}; llvm-mca 14; host x86_64");
        match checked {
            Some(n) => println!(
                "instructions counted by {}; it agrees with the exec-log count on the MNIST example ({} instructions)",
                method.name(),
                thousands(n)
            ),
            None => println!("instructions counted by {}", method.name()),
        }
        println!();
    }
    for spec in specs() {
        if !wanted(spec.key) {
            continue;
        }
        let p = prepare(&spec, &dir)?;
        let r = bench_model(&spec, &p, &ctx)?;
        if json_out {
            println!("{}", r.json);
        } else {
            println!("{}", r.text);
        }
    }
    if wanted("MNIST") {
        let r = crate::bench_mnist::run(&ctx, &root)?;
        if json_out {
            println!("{}", r.json);
        } else {
            println!("{}", r.text);
        }
    }
    eprintln!("bench: done in {:.0}s", t_start.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_limits() {
        let [b1, b2] = specs();
        let m = Macs::of(&b1.cfg);
        assert_eq!(m.pw, 8 * 256 * 256 * 256);
        assert_eq!(m.dw, 8 * 256 * 256 * 25);
        assert_eq!(m.embed, 256 * 256 * 12);
        assert_eq!(m.limit(16), m.pw / 16 + m.dw / 8);
        let m = Macs::of(&b2.cfg);
        assert_eq!(m.pw, 32 * 256 * 768 * 768);
        assert_eq!(m.head, 768 * 1000);
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(top1("x.raw: 3 0.5000, 1 0.2"), Some("3".into()));
    }
}
