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
use convmixer_edge::Precision;
use convmixer_quantize::onnx::{self, ModelProto};
use convmixer_quantize::Options;
use indicatif::{ProgressBar, ProgressStyle};

mod bench;
mod bench_host;
mod bench_mnist;
mod mca;
mod quantize_cmd;
mod run_cmd;

use quantize_cmd::{quantize, report, target};
use run_cmd::{classify, eval, flash};

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
