//! `host-tools`: the convmixer-edge command line.
//!
//! ```text
//! host-tools train --data PATH [--val PATH] [--dim 256 --depth 8 --kernel 5 --patch 2 --act gelu|relu] [--epochs N] [--batch B] [--lr LR] [--device cpu|cuda|wgpu] [--resume CKPT] -o MODEL.onnx
//! host-tools quantize MODEL.onnx [--calib PATH] [--precision int8|fp16|fp32] [--accuracy-budget P --data DIR | --sqnr-min DB] [--mean M..] [--std S..] [--labels FILE] [-o OUT]
//! host-tools classify MODEL.cmx IMAGE... [--top K] [--json]
//! host-tools eval MODEL --data DIR [--json] [--mean M..] [--std S..] [--labels FILE]
//! host-tools bench [B1|B2|MNIST]... [--json] [--quick] [--log-counter]
//! host-tools report MODEL.onnx --calib PATH --data DIR [--calibration M] [--json] [-o DIR]
//! ```
//!
//! Every failure prints one line `error: …` naming what is wrong and exits with status 1
//! (2 for command-line mistakes, as clap does). Output files are written atomically.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use convmixer_edge::cores::{Cores, Team, MAX_PARTS};
use convmixer_edge::{Model, Precision};
use convmixer_quantize::onnx::{self, ModelProto};
use convmixer_quantize::{data, mixed::Target, mixer, par, reference::TractModel, Options};
use indicatif::{ProgressBar, ProgressStyle};

mod bench;
mod bench_host;
mod bench_mnist;
mod mca;

#[derive(Parser)]
#[command(
    name = "host-tools",
    version,
    about = "Quantize ConvMixer ONNX models to convmixer-edge blobs, and run them"
)]
struct Cli {
    /// Threads for the work spread over images (calibration, eval, classify, report, the
    /// mixed-precision search) [default: every core]. Results do not depend on it.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    Int8,
    Fp16,
    Fp32,
}

impl PrecisionArg {
    fn precision(self) -> Precision {
        match self {
            PrecisionArg::Int8 => Precision::Int8,
            PrecisionArg::Fp16 => Precision::F16,
            PrecisionArg::Fp32 => Precision::F32,
        }
    }
}

/// Input normalisation and labels for a model file that does not carry them (ONNX).
#[derive(clap::Args)]
struct Prep {
    /// Per-channel mean of torchvision's `Normalize`, in the 0..1 pixel scale (one value,
    /// or one per input channel; comma- or space-separated).
    #[arg(long, num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
    mean: Vec<f32>,
    /// Per-channel standard deviation of `Normalize` (one value, or one per channel).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    std: Vec<f32>,
    /// Class labels, one per line, in class order.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Class names from the ONNX file's metadata (used when there is no --labels).
    #[arg(skip)]
    names: Vec<String>,
}

impl Prep {
    /// This preparation with what an ONNX file written by `host-tools train` records in its
    /// metadata (normalisation, class names) filled in where no flag gave it. Flags win.
    /// `proto`: the file `model`, read ([`read_onnx`]).
    fn for_onnx(&self, model: &Path, proto: &ModelProto) -> Result<Prep> {
        let mut p = Prep {
            mean: self.mean.clone(),
            std: self.std.clone(),
            labels: self.labels.clone(),
            names: self.names.clone(),
        };
        if p.mean.is_empty() && p.std.is_empty() {
            if let Ok(Some((m, s))) = onnx::normalisation(proto) {
                eprintln!(
                    "normalisation from {}: mean {m:?}, std {s:?}",
                    model.display()
                );
                (p.mean, p.std) = (m, s);
            }
        }
        if p.labels.is_none() && p.names.is_empty() {
            p.names = onnx::labels(proto);
        }
        Ok(p)
    }

    /// The quantiser's options: this normalisation and these labels, int8 calibration by
    /// `method`, with or without bias correction.
    fn options(
        &self,
        method: convmixer_quantize::calibrate::Method,
        bias_correction: bool,
    ) -> Result<Options> {
        Ok(Options {
            mean: self.mean.clone(),
            std: self.std.clone(),
            labels: match self.labels {
                Some(_) => read_labels(self.labels.as_deref())?,
                None => self.names.clone(),
            },
            calibration: Some(method),
            bias_correction,
            ..Default::default()
        })
    }
}

/// Training activations (the runtime has these three).
#[derive(Clone, Copy, ValueEnum)]
enum ActArg {
    Gelu,
    GeluTanh,
    Relu,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a full-precision ConvMixer (burn; CPU, or a GPU when built with the cuda/wgpu
    /// feature) and write the ONNX file `quantize` takes. A checkpoint is written after
    /// every epoch (atomically); --resume continues its run exactly. Unset flags take the
    /// defaults shown, or the checkpoint's values when resuming.
    Train {
        /// Training set: an ImageFolder tree (one sub-folder per class), an IDX image file
        /// (labels beside it: images→labels, idx3→idx1) or CIFAR-10 binary batches (a
        /// .bin file, or a folder of data_batch_*.bin).
        #[arg(long)]
        data: PathBuf,
        /// Validation set (same formats; accuracy reported every epoch).
        #[arg(long)]
        val: Option<PathBuf>,
        /// Mixer width [256].
        #[arg(long)]
        dim: Option<usize>,
        /// Number of blocks [8].
        #[arg(long)]
        depth: Option<usize>,
        /// Depthwise kernel size, odd [5].
        #[arg(long)]
        kernel: Option<usize>,
        /// Patch size [2].
        #[arg(long)]
        patch: Option<usize>,
        /// Activation [gelu].
        #[arg(long, value_enum)]
        act: Option<ActArg>,
        /// Epochs [25].
        #[arg(long)]
        epochs: Option<usize>,
        /// Batch size [128].
        #[arg(long)]
        batch: Option<usize>,
        /// Peak learning rate of the one-cycle schedule [0.01].
        #[arg(long)]
        lr: Option<f64>,
        /// AdamW weight decay [0.01].
        #[arg(long)]
        weight_decay: Option<f64>,
        /// Label smoothing α [0].
        #[arg(long)]
        label_smoothing: Option<f64>,
        /// Augmentation [auto: crop-flip for colour images, shift for grayscale].
        #[arg(long, value_enum)]
        augment: Option<host_tools::train::Augment>,
        /// Seed of initialisation, shuffling and augmentation [0].
        #[arg(long)]
        seed: Option<u64>,
        /// Normalisation mean per channel, 0..1 scale [the training set's].
        #[arg(long, num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
        mean: Option<Vec<f32>>,
        /// Normalisation std per channel [the training set's].
        #[arg(long, num_args = 1.., value_delimiter = ',')]
        std: Option<Vec<f32>>,
        /// Where to compute.
        #[arg(long, value_enum, default_value = "cpu")]
        device: host_tools::train::Device,
        /// ONNX opset: 17 writes GELU as the Erf pattern (TorchScript exporter), 20 as the
        /// Gelu op (dynamo exporter).
        #[arg(long, default_value = "17", value_parser = ["17", "20"])]
        opset: String,
        /// Checkpoint file [OUT with extension .ckpt].
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// Continue the run saved in this checkpoint.
        #[arg(long)]
        resume: Option<PathBuf>,
        /// The ONNX file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Read a PyTorch-exported ConvMixer ONNX, remove every BatchNorm, calibrate and write
    /// a model blob (.cmx).
    Quantize {
        /// The ONNX file (`torch.onnx.export`, either exporter).
        model: PathBuf,
        /// Calibration images: a folder of images (searched recursively) or an IDX file.
        /// Required for int8.
        #[arg(long)]
        calib: Option<PathBuf>,
        /// Weight and arithmetic precision of the blob.
        #[arg(long, value_enum, default_value = "int8")]
        precision: PrecisionArg,
        /// How int8 activation ranges are chosen: minmax, percentile[:P] (default P =
        /// 99.99), mse or entropy (docs: README, "Calibration").
        #[arg(long, default_value = "minmax")]
        calibration: String,
        /// Shift each int8 channel's bias by minus the mean error its quantised weights
        /// make on the calibration images (one more pass over them).
        #[arg(long)]
        bias_correction: bool,
        /// Mixed precision: keep the layers int8 hurts most in f16 until int8 top-1 on
        /// `--data` is at most this many points below fp32 (int8 only).
        #[arg(
            long,
            value_name = "POINTS",
            requires = "data",
            conflicts_with = "sqnr_min"
        )]
        accuracy_budget: Option<f64>,
        /// Mixed precision: keep layers in f16 until every layer output's SQNR against fp32
        /// on the calibration images is at least this many dB (int8 only).
        #[arg(long, value_name = "DB")]
        sqnr_min: Option<f64>,
        /// Labelled images for `--accuracy-budget` (ImageFolder: one sub-folder per class).
        #[arg(long)]
        data: Option<PathBuf>,
        #[command(flatten)]
        prep: Prep,
        /// Output blob (default: MODEL with the extension replaced by `-PRECISION.cmx`).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Classify images with a model blob and print the top-k classes.
    Classify {
        /// The model blob (.cmx).
        model: PathBuf,
        /// Images (PNG, JPEG, BMP, PNM) of the size the model takes.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// How many classes to print per image (at most 32).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=32))]
        top: u8,
        /// One JSON object per image instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Top-1 accuracy of a blob, or of an ONNX file run in fp32 by tract, on an
    /// ImageFolder tree (one sub-folder per class, named by class index or label).
    Eval {
        /// A model blob (.cmx) or an ONNX file.
        model: PathBuf,
        /// The labelled images.
        #[arg(long)]
        data: PathBuf,
        /// Print one JSON object (`model`, `n`, `correct`, `top1`) instead of text.
        #[arg(long)]
        json: bool,
        /// For ONNX only: the normalisation and labels the blob would carry.
        #[command(flatten)]
        prep: Prep,
    },
    /// Benchmark figures for two random-weight ConvMixers (B1: 256/8 on 32x32, B2: 768/32
    /// on 112x112): MACs, aarch64 instructions per inference under qemu-user (int8 SMLAL,
    /// SDOT, scalar; fp16 in binary16 and in f32; tract fp32) against the MAC limit, llvm-mca estimates of the kernels'
    /// hot loops, host wall time against tract, blob and arena bytes; then the trained MNIST
    /// MLP-Mixers (M1 lucidrains layout, M2 timm layout) next to a ConvMixer of their size
    /// (C1): top-1, instructions (int8 and tract fp32), blob and arena. Needs the aarch64
    /// toolchain, qemu-user and llvm-14; builds what it runs; takes tens of minutes.
    Bench {
        /// Only these models (B1, B2, MNIST: the M1/M2/C1 comparison; with --host: B1,
        /// T768 = timm convmixer_768_32 at 224); all by default.
        #[arg(value_parser = ["B1", "B2", "MNIST", "T768"])]
        models: Vec<String>,
        /// The host side instead: quantize and eval times (1 thread and every core) next to
        /// ONNX Runtime's quantize_static and its int8 and fp32 models, on the same machine,
        /// model and images (module `bench_host`).
        #[arg(long)]
        host: bool,
        /// One JSON object per model instead of the table.
        #[arg(long)]
        json: bool,
        /// Skip the slowest counts (B2's scalar and tract runs) and time fewer runs.
        #[arg(long)]
        quick: bool,
        /// Count instructions by parsing qemu's exec log instead of with the counting
        /// plugin (tools/qemu-insn-plugin): the reference method, far slower; B2's scalar
        /// and tract counts are skipped.
        #[arg(long)]
        log_counter: bool,
    },
    /// Quantisation diagnosis of an ONNX ConvMixer: per-layer SQNR of the int8 and fp16
    /// models against the fp32 folded graph, and top-1 of each on a labelled set (an
    /// ImageFolder tree); with -o also an HTML page with plots.
    Report {
        /// The ONNX file.
        model: PathBuf,
        /// Calibration images (folder or IDX file).
        #[arg(long)]
        calib: PathBuf,
        /// The labelled images (one sub-folder per class, named by class index or label).
        #[arg(long)]
        data: PathBuf,
        /// Calibration method, as for `quantize`.
        #[arg(long, default_value = "minmax")]
        calibration: String,
        /// Bias correction, as for `quantize`.
        #[arg(long)]
        bias_correction: bool,
        #[command(flatten)]
        prep: Prep,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Add a mixed-precision variant, chosen for this budget (points of top-1 below fp32
        /// on `--data`), as `quantize --accuracy-budget` does.
        #[arg(long, value_name = "POINTS", conflicts_with = "sqnr_min")]
        accuracy_budget: Option<f64>,
        /// Add a mixed-precision variant chosen for this per-layer SQNR (dB).
        #[arg(long, value_name = "DB")]
        sqnr_min: Option<f64>,
        /// Also write an HTML page with plots to this folder (DIR/index.html and PNGs),
        /// atomically; an existing DIR must be empty or a previous report.
        #[arg(short, long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Build the bare-metal firmware (firmware/baremetal) around a model blob and write
    /// the files for the board's boot medium (kernel8.img + config.txt for a Raspberry Pi),
    /// or boot it under qemu-system-aarch64 and print its decoded defmt log.
    Flash {
        /// The model blob (.cmx) to compile into the firmware.
        model: PathBuf,
        /// virt (qemu), pi3 or pi4.
        #[arg(long, value_parser = ["virt", "pi3", "pi4"])]
        board: String,
        /// Where to write the files (default: firmware-BOARD).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Raw u8 images (HWC, the model's input size each, concatenated) to classify at
        /// start-up; an IDX image file (MNIST format) is converted.
        #[arg(long)]
        images: Option<PathBuf>,
        /// Boot the firmware under qemu-system-aarch64 (with semihosting for the exit
        /// status) instead of writing files; exits non-zero if the firmware reports failure.
        #[arg(long)]
        qemu: bool,
        /// The CPU of qemu's virt machine (e.g. max for the dot product).
        #[arg(long, default_value = "cortex-a72")]
        cpu: String,
        /// Cores the firmware runs on (the others stay parked); every Raspberry Pi since
        /// the Pi 2 has 4, and qemu's virt machine is booted with 4.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
        cores: u8,
        /// Seconds the qemu boot may take.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

/// Sizes rayon's global pool (`--threads`, default every core); the GEMMs of the host's
/// fp32 forward run single-threaded, one image per thread of it.
fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = match threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow!("cannot start {n} threads: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_threads(cli.threads) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let res = match cli.cmd {
        Cmd::Train {
            data,
            val,
            dim,
            depth,
            kernel,
            patch,
            act,
            epochs,
            batch,
            lr,
            weight_decay,
            label_smoothing,
            augment,
            seed,
            mean,
            std,
            device,
            opset,
            checkpoint,
            resume,
            output,
        } => {
            use host_tools::train;
            let opts = train::TrainOptions {
                data,
                val,
                out: output,
                checkpoint,
                resume,
                device,
                gelu: if opset == "20" {
                    convmixer_quantize::onnx_export::GeluForm::GeluOp
                } else {
                    convmixer_quantize::onnx_export::GeluForm::Erf
                },
                arch: train::ArchFlags {
                    dim,
                    depth,
                    kernel,
                    patch,
                    act: act.map(|a| match a {
                        ActArg::Gelu => convmixer_edge::Activation::Gelu,
                        ActArg::GeluTanh => convmixer_edge::Activation::GeluTanh,
                        ActArg::Relu => convmixer_edge::Activation::Relu,
                    }),
                },
                hyper: train::HyperFlags {
                    epochs,
                    batch,
                    lr,
                    weight_decay,
                    label_smoothing,
                    seed,
                    augment,
                },
                mean,
                std,
                progress: true,
            };
            train_cmd(&opts)
        }
        Cmd::Quantize {
            model,
            calib,
            precision,
            calibration,
            bias_correction,
            accuracy_budget,
            sqnr_min,
            data,
            prep,
            output,
        } => {
            let target = target(accuracy_budget, sqnr_min);
            quantize(
                &model,
                calib.as_deref(),
                precision,
                (&calibration, bias_correction),
                (target, data.as_deref()),
                &prep,
                output,
            )
        }
        Cmd::Classify {
            model,
            images,
            top,
            json,
        } => classify(&model, &images, usize::from(top), json),
        Cmd::Eval {
            model,
            data,
            json,
            prep,
        } => eval(&model, &data, json, &prep),
        Cmd::Bench {
            models,
            host,
            json,
            quick,
            log_counter,
        } => {
            if host {
                bench_host::run(&models, json, &bench::root())
            } else {
                bench::run(&models, json, quick, log_counter)
            }
        }
        Cmd::Report {
            model,
            calib,
            data,
            calibration,
            bias_correction,
            accuracy_budget,
            sqnr_min,
            prep,
            json,
            out,
        } => report(
            &model,
            &calib,
            &data,
            (&calibration, bias_correction),
            target(accuracy_budget, sqnr_min),
            &prep,
            json,
            out.as_deref(),
        ),
        Cmd::Flash {
            model,
            board,
            out,
            images,
            qemu,
            cpu,
            cores,
            timeout,
        } => flash(
            &model,
            (&board, cores),
            out,
            images.as_deref(),
            qemu,
            &cpu,
            timeout,
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain into one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "train"))]
fn train_cmd(_: &host_tools::train::TrainOptions) -> Result<()> {
    bail!("this host-tools was built without the `train` feature (burn); build it with `cargo build --release -p host-tools` (the default features)")
}

#[cfg(feature = "train")]
fn train_cmd(opts: &host_tools::train::TrainOptions) -> Result<()> {
    let s = host_tools::train::train(opts)?;
    let last = s.history.last();
    eprintln!(
        "wrote {}: ConvMixer-{}/{}, {} parameters{}; tract vs trained model max |logit difference| {:.2e} over {} images",
        opts.out.display(),
        s.arch.dim,
        s.arch.depth,
        s.arch.params(),
        last.and_then(|l| l.val_acc)
            .map_or(String::new(), |a| format!(", validation accuracy {:.2}%", 100.0 * a)),
        s.export_max_abs_diff,
        s.export_checked
    );
    eprintln!(
        "normalisation (recorded in the file): mean {:?}, std {:?}; next: host-tools quantize {} --calib DIR",
        s.mean,
        s.std,
        opts.out.display()
    );
    Ok(())
}

/// The mixed-precision target of `--accuracy-budget` / `--sqnr-min` (clap makes them
/// exclusive).
fn target(accuracy_budget: Option<f64>, sqnr_min: Option<f64>) -> Option<Target> {
    match (accuracy_budget, sqnr_min) {
        (Some(b), _) => Some(Target::AccuracyBudget(b)),
        (_, Some(db)) => Some(Target::SqnrMin(db)),
        _ => None,
    }
}

/// Refuses targets that are not numbers of points ≥ 0 or finite dB.
fn check_target(target: Option<Target>) -> Result<()> {
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
fn report(
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

fn flash(
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
fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:30}] {pos}/{len} images, {rate} images/s, {eta} left",
        )
        .map(|s| {
            s.with_key(
                "rate",
                |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.1}", st.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn read_labels(path: Option<&Path>) -> Result<Vec<String>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read labels", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

fn quantize(
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
fn read_onnx(model: &Path) -> Result<ModelProto> {
    onnx::load(model)
}

/// The ConvMixer in `proto` (the file `model`), errors naming the file.
fn import_convmixer(model: &Path, proto: &ModelProto) -> Result<onnx::Imported> {
    onnx::import_proto(proto).with_context(|| model.display().to_string())
}

/// The MLP-Mixer in `proto` (the file `model`), errors naming the file.
fn import_mixer(model: &Path, proto: &ModelProto) -> Result<mixer::Mixer> {
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

fn load_blob(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn parse_model<'a>(path: &Path, bytes: &'a [u8]) -> Result<Model<'a>> {
    Model::from_bytes(bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn classify(model: &Path, images: &[PathBuf], top: usize, json: bool) -> Result<()> {
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

fn eval(model: &Path, dir: &Path, json: bool, prep: &Prep) -> Result<()> {
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
