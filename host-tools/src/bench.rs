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

/// Everything measured for one model.
pub(crate) struct Report {
    pub(crate) json: Value,
    pub(crate) text: String,
}

pub(crate) struct Ctx<'a> {
    pub(crate) bin: &'a Path,
    out_dir: &'a Path,
    quick: bool,
    pub(crate) method: &'a Method,
    /// The disassembled aarch64 convmixer-pi and its ELF entry address.
    dis: &'a mca::Disasm,
    entry: u64,
}

fn bench_model(spec: &Spec, p: &Prepared, ctx: &Ctx<'_>) -> Result<Report> {
    let c = &spec.cfg;
    let macs = Macs::of(c);
    let tokens = (c.in_h / c.patch) * (c.in_w / c.patch);
    let model = Model::from_bytes(&p.blob_bytes).map_err(|e| anyhow!("blob: {e}"))?;
    let arena = model.arena_len();
    let act_bytes = tokens * c.dim;
    let big = spec.key == "B2";
    let mut skipped: Vec<String> = Vec::new();

    let pi = ctx.bin.join("convmixer-pi");
    let tr = ctx.bin.join("tract-runner");
    let pi_args_for = |blob: &Path, isa: &str| -> Vec<String> {
        vec![
            blob.display().to_string(),
            p.raw.display().to_string(),
            "--raw".into(),
            "--isa".into(),
            isa.into(),
            // One core: these are per-core instruction counts.
            "--threads".into(),
            "1".into(),
        ]
    };
    let pi_args = |isa: &str| pi_args_for(&p.blob, isa);
    let tr_args = vec![
        p.onnx.display().to_string(),
        "--shape".into(),
        format!("1,{},{},{}", c.in_c, c.in_h, c.in_w),
    ];
    let (lim80, limdot) = (macs.limit(8), macs.limit(16));
    let mut counts: Vec<Count> = Vec::new();
    let mut top: Vec<(String, String)> = Vec::new();
    let mut runs: Vec<(&'static str, Run)> = Vec::new();
    let mut count = |what: &'static str,
                     cpu: &'static str,
                     prog: &Path,
                     args: Vec<String>,
                     limit: Option<u64>,
                     run: bool,
                     why: &str|
     -> Result<()> {
        if !run {
            counts.push(Count {
                what,
                cpu,
                insns: None,
                limit,
                note: why.to_string(),
            });
            return Ok(());
        }
        let t0 = Instant::now();
        eprintln!("bench: {}: counting {what} on {cpu}…", spec.key);
        // Our runtime's counts are exact run to run, so N = 1. tract's start-up is not
        // deterministic (hash-map seeds): a few hundred thousand instructions either way,
        // which N = 4 divides down to about 0.1% of an inference.
        let reps = if prog.ends_with("tract-runner") { 4 } else { 1 };
        let (n, run) = per_inference(ctx.method, cpu, prog, &args, reps)?;
        eprintln!(
            "bench: {}: {what} on {cpu}: {} instructions per inference ({:.0}s)",
            spec.key,
            thousands(n),
            t0.elapsed().as_secs_f64()
        );
        if prog.ends_with("convmixer-pi") {
            // Only the int8 paths must agree (fp16 rounds differently).
            if what.starts_with("int8") {
                top.push((what.to_string(), top1(&run.stdout).unwrap_or_default()));
            }
            runs.push((what, run));
        }
        counts.push(Count {
            what,
            cpu,
            insns: Some(n),
            limit,
            note: String::new(),
        });
        Ok(())
    };
    count(
        "int8 SMLAL (--isa neon)",
        "cortex-a72",
        &pi,
        pi_args("neon"),
        Some(lim80),
        true,
        "",
    )?;
    count(
        "int8 SDOT (--isa dot)",
        "cortex-a76",
        &pi,
        pi_args("dot"),
        Some(limdot),
        true,
        "",
    )?;
    // What --quick leaves out (and the log counter, at about a microsecond per executed
    // block, cannot do for B2 in reasonable time).
    let slow = big && (ctx.quick || matches!(ctx.method, Method::Log));
    let why = if ctx.quick {
        "skipped (--quick)"
    } else {
        "skipped (--log-counter)"
    };
    if slow {
        skipped.push(format!(
            "the scalar and tract counts of {} ({})",
            spec.key,
            if ctx.quick {
                "--quick"
            } else {
                "--log-counter"
            }
        ));
    }
    count(
        "int8 scalar (--isa scalar)",
        "cortex-a72",
        &pi,
        pi_args("scalar"),
        None,
        !slow,
        why,
    )?;
    count(
        "tract fp32",
        "cortex-a72",
        &tr,
        tr_args.clone(),
        None,
        !slow,
        why,
    )?;
    count("tract fp32", "cortex-a76", &tr, tr_args, None, !slow, why)?;
    // The f16 blob: binary16 arithmetic where FEAT_FP16 is (max), f32 elsewhere (A72).
    count(
        "fp16 FMLA .8h (f16 arith)",
        "cortex-a76",
        &pi,
        pi_args_for(&p.blob_fp16, "dot"),
        Some(macs.limit_float(8)),
        !slow,
        why,
    )?;
    count(
        "fp16 FMLA .4s (f32 arith)",
        "cortex-a72",
        &pi,
        pi_args_for(&p.blob_fp16, "neon"),
        Some(macs.limit_float(4)),
        !slow,
        why,
    )?;
    // The kernels are bit-exact: every ISA must pick the same class.
    if let Some((_, first)) = top.first() {
        if let Some((what, other)) = top.iter().find(|(_, t)| t != first) {
            bail!(
                "{}: {what} printed top-1 {other}, the other paths {first}",
                spec.key
            );
        }
    }

    let reps = match (big, ctx.quick) {
        (true, true) => 1,
        (true, false) => 3,
        (false, true) => 3,
        (false, false) => 9,
    };
    eprintln!(
        "bench: {}: timing int8 and tract on the host ({reps} runs each)…",
        spec.key
    );
    let host = host_times(p, c, reps)?;
    let (ours, theirs) = (host.ours, host.tract);

    let insns = |what: &str, cpu: &str| {
        counts
            .iter()
            .find(|x| x.what.starts_with(what) && x.cpu == cpu)
            .and_then(|x| x.insns)
    };
    // Several cores: each split layer's busiest part, counted on one thread between the
    // plugin's markers (convmixer-pi --count-parts), against one core's count.
    let mut critical: Vec<Value> = Vec::new();
    for (what, cpu, isa) in [
        ("int8 SMLAL", "cortex-a72", "neon"),
        ("int8 SDOT", "cortex-a76", "dot"),
    ] {
        let Method::Plugin(_) = ctx.method else {
            break; // the log counter has no markers
        };
        eprintln!(
            "bench: {}: counting the critical path of {what} on {CORES} cores ({cpu})…",
            spec.key
        );
        let mut args = pi_args(isa);
        args.extend(["--count-parts".to_string(), CORES.to_string()]);
        let c = critical_path(ctx.method, cpu, &pi, &args)?;
        let one = insns(what, cpu);
        eprintln!(
            "bench: {}: {what} on {cpu}, {CORES} cores: critical path {} of {} instructions ({} on one core)",
            spec.key,
            thousands(c.path),
            thousands(c.split),
            one.map_or("?".into(), thousands)
        );
        critical.push(json!({
            "path": what,
            "cpu": cpu,
            "cores": CORES,
            "instructions_1core": one,
            "instructions_split_in_turn": c.split,
            "critical_path_instructions": c.path,
            "critical_path_over_1core": one.map(|o| c.path as f64 / o as f64),
            "joins_per_inference": c.joins,
            "handoff_instructions_per_part": HANDOFF,
            "join_instructions_per_layer": JOIN,
        }));
    }
    let mut loops: Vec<mca::LoopReport> = Vec::new();
    for (what, kinds) in [
        (
            "int8 SMLAL",
            &[mca::Kind::PwSmlal, mca::Kind::Depthwise][..],
        ),
        (
            "int8 SDOT",
            &[mca::Kind::PwSdot, mca::Kind::DepthwiseSdot][..],
        ),
    ] {
        let Some((_, run)) = runs.iter().find(|(w, _)| w.starts_with(what)) else {
            continue;
        };
        let base = run
            .entry_pc
            .and_then(|pc| pc.checked_sub(ctx.entry))
            .ok_or_else(|| {
                anyhow!("qemu reported no entry address: cannot place convmixer-pi's code")
            })?;
        let prof = mca::Profile::new(&run.blocks, base);
        let found = mca::hot_loops(ctx.dis, &prof, kinds)?;
        for k in kinds {
            if !found.iter().any(|l| l.kernel == *k) {
                skipped.push(format!(
                    "llvm-mca: no hot {k:?} loop found in the {what} run"
                ));
            }
        }
        loops.extend(found);
    }
    for l in &loops {
        let path = ctx
            .out_dir
            .join(format!("{}-{}.s", spec.key.to_lowercase(), l.key()));
        data::write_atomic(&path, l.asm.as_bytes())?;
    }
    let json = json!({
        "model": spec.key,
        "title": spec.title,
        "macs": macs.total(),
        "macs_embed": macs.embed,
        "macs_dw": macs.dw,
        "macs_pw": macs.pw,
        "macs_head": macs.head,
        "instructions_v80": insns("int8 SMLAL", "cortex-a72"),
        "instructions_dotprod": insns("int8 SDOT", "cortex-a76"),
        "instructions_scalar": insns("int8 scalar", "cortex-a72"),
        "tract_fp32_instructions": insns("tract", "cortex-a72"),
        "tract_fp32_instructions_a76": insns("tract", "cortex-a76"),
        "limit_v80": lim80,
        "limit_dotprod": limdot,
        "instructions_fp16": insns("fp16 FMLA .8h", "cortex-a76"),
        "instructions_fp16_f32_arith": insns("fp16 FMLA .4s", "cortex-a72"),
        "limit_fp16": macs.limit_float(8),
        "limit_f32": macs.limit_float(4),
        "host_int8_ms": ours.as_secs_f64() * 1e3,
        "host_tract_ms": theirs.as_secs_f64() * 1e3,
        "host_int8_over_tract": ours.as_secs_f64() / theirs.as_secs_f64(),
        "host_cores": host.cores,
        "host_int8_cores_ms": host.ours_cores.as_secs_f64() * 1e3,
        "host_cores_over_one_core": host.ours_cores.as_secs_f64() / ours.as_secs_f64(),
        "host_runs": reps,
        "blob_bytes": p.blob_bytes.len(),
        "arena_bytes": arena,
        "activation_bytes": act_bytes,
        "arena_over_activation": arena as f64 / act_bytes as f64,
        "mca": loops.iter().map(|l| l.json()).collect::<Vec<_>>(),
        "critical_path": critical,
        "skipped": skipped,
        "counter": ctx.method.name(),
    });

    let mut t = String::new();
    let _ = writeln!(t, "{}: {} (random weights)", spec.key, spec.title);
    let _ = writeln!(
        t,
        "  MACs per inference: {} = pointwise {} + depthwise {} + embed {} + head {}",
        thousands(macs.total()),
        thousands(macs.pw),
        thousands(macs.dw),
        thousands(macs.embed),
        thousands(macs.head)
    );
    let _ = writeln!(t, "  aarch64 instructions per inference (qemu-user):");
    let _ = writeln!(
        t,
        "    {:<28} {:<11} {:>15} {:>13} {:>9} {:>9}",
        "path", "-cpu", "instructions", "limit", "÷ limit", "MAC/insn"
    );
    for x in &counts {
        let (insns, ratio, per) = match x.insns {
            Some(n) => (
                thousands(n),
                x.limit
                    .map_or(String::new(), |l| format!("{:.2}x", n as f64 / l as f64)),
                format!("{:.2}", macs.total() as f64 / n as f64),
            ),
            None => (x.note.clone(), String::new(), String::new()),
        };
        let _ = writeln!(
            t,
            "    {:<28} {:<11} {:>15} {:>13} {:>9} {:>9}",
            x.what,
            x.cpu,
            insns,
            x.limit.map_or(String::new(), thousands),
            ratio,
            per
        );
    }
    let _ = writeln!(
        t,
        "    limit = int8: pointwise MACs / (8 SMLAL | 16 SDOT) + depthwise MACs / 8; fp16: (pointwise + depthwise MACs) / (8 FMLA .8h | 4 FMLA .4s); embed and head not counted"
    );
    let _ = writeln!(
        t,
        "    per inference = (count(2N) - count(N)) / N; N = 1 for int8 (exact), N = 4 for tract (its start-up varies by ~0.1%)"
    );
    if !loops.is_empty() {
        let _ = writeln!(
            t,
            "  llvm-mca-14 on the hottest innermost MAC loop of each kernel (found in the qemu runs above):"
        );
        let _ = writeln!(
            t,
            "    {:<30} {:>7} {:>7} {:>6} {:>5} {:<11} {:>10} {:>10} {:>5} {:>7}",
            "loop",
            "% MACs",
            "% insns",
            "insns",
            "MACs",
            "-mcpu",
            "cycles/it",
            "MAC/cycle",
            "peak",
            "% peak"
        );
        for l in &loops {
            for (n, e) in l.estimates.iter().enumerate() {
                let head = if n == 0 {
                    format!(
                        "    {:<30} {:>6.1}% {:>6.1}% {:>6} {:>5}",
                        l.name(),
                        100.0 * l.mac_share,
                        100.0 * l.insn_share,
                        l.insns.len(),
                        l.macs
                    )
                } else {
                    format!("    {:<30} {:>7} {:>7} {:>6} {:>5}", "", "", "", "", "")
                };
                let _ = writeln!(
                    t,
                    "{head} {:<11} {:>10.2} {:>10.2} {:>5} {:>6.1}%",
                    e.cpu,
                    e.cycles_per_iter,
                    l.macs as f64 / e.cycles_per_iter,
                    e.peak,
                    100.0 * e.fraction(l.macs)
                );
            }
        }
        let _ = writeln!(
            t,
            "    (% MACs / % insns: the loop's share of the MACs / instructions its qemu run executed; insns, MACs: one",
        );
        let _ = writeln!(
            t,
            "     iteration's hot path, as fed to llvm-mca (target/bench/{}-*.s); peak: MAC/cycle of SMLAL or SDOT.",
            spec.key.to_lowercase()
        );
        let _ = writeln!(
            t,
            "     LLVM 14 has no Cortex-A76 model: -mcpu=cortex-a76 uses its Cortex-A57/A72 model with the dot product.)"
        );
    }
    let _ = writeln!(
        t,
        "  x86_64 host, median of {reps}: int8 classify (best ISA) {:.2} ms on 1 core, {:.2} ms on {} cores ({:.2}x of 1 core), tract fp32 {:.2} ms: int8/tract = {:.2}",
        ours.as_secs_f64() * 1e3,
        host.ours_cores.as_secs_f64() * 1e3,
        host.cores,
        host.ours_cores.as_secs_f64() / ours.as_secs_f64(),
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    for c in &critical {
        let _ = writeln!(
            t,
            "  {} cores, {} on {}: critical path {} instructions = {:.3} of one core's {}",
            CORES,
            c["path"].as_str().unwrap_or(""),
            c["cpu"].as_str().unwrap_or(""),
            c["critical_path_instructions"]
                .as_u64()
                .map_or("?".into(), thousands),
            c["critical_path_over_1core"].as_f64().unwrap_or(f64::NAN),
            c["instructions_1core"]
                .as_u64()
                .map_or("?".into(), thousands),
        );
    }
    let _ = writeln!(
        t,
        "  memory: blob {} bytes ({}), arena {} bytes, one int8 activation tensor {} bytes ({} tokens x {}), arena/activation {:.2}",
        thousands(p.blob_bytes.len() as u64),
        millions(p.blob_bytes.len() as u64),
        thousands(arena as u64),
        thousands(act_bytes as u64),
        tokens,
        c.dim,
        arena as f64 / act_bytes as f64
    );
    for s in &skipped {
        let _ = writeln!(t, "  skipped: {s}");
    }
    Ok(Report { json, text: t })
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
