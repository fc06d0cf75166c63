//! The training loop on burn (the `train` feature): see the parent module.

use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::Backend;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use convmixer_edge::Activation;
use convmixer_quantize::data::{labelled_set, write_atomic, LabelledSet};
use convmixer_quantize::onnx_export::write_onnx;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use super::checkpoint::{Checkpoint, EpochStats, Header};
use super::model::{Arch, ConvMixer};
use super::*;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Per-epoch figures (those of a resumed run's earlier epochs included).
    pub history: Vec<EpochStats>,
    /// Largest |logit| difference between tract's run of the written ONNX and the trained
    /// model, over the checked images.
    pub export_max_abs_diff: f32,
    /// Images the export check ran.
    pub export_checked: usize,
    /// The normalisation the model expects (also in the ONNX file's metadata).
    pub mean: Vec<f32>,
    /// See `mean`.
    pub std: Vec<f32>,
    /// The architecture trained.
    pub arch: Arch,
}

/// Trains (or resumes) a run as `opts` says and writes the ONNX file.
pub fn train(opts: &TrainOptions) -> Result<Summary> {
    match opts.device {
        Device::Cpu => run::<burn::backend::Autodiff<burn::backend::NdArray>>(Default::default(), opts),
        #[cfg(feature = "cuda")]
        Device::Cuda => run::<burn::backend::Autodiff<burn::backend::Cuda>>(Default::default(), opts),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => run::<burn::backend::Autodiff<burn::backend::Wgpu>>(Default::default(), opts),
        #[allow(unreachable_patterns)]
        d => bail!(
            "--device {}: this host-tools was built without it (cargo build --release -p host-tools --features {})",
            format!("{d:?}").to_lowercase(),
            format!("{d:?}").to_lowercase()
        ),
    }
}

fn act_name(a: Activation) -> &'static str {
    match a {
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu-tanh",
        Activation::Relu => "relu",
    }
}

fn act_from(s: &str) -> Result<Activation> {
    Ok(match s {
        "gelu" => Activation::Gelu,
        "gelu-tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        _ => bail!("unknown activation '{s}'"),
    })
}

fn arch_of(h: &Header) -> Result<Arch> {
    let [in_c, in_h, in_w, dim, depth, kernel, patch, classes] = h.arch;
    Ok(Arch {
        in_c,
        in_h,
        in_w,
        dim,
        depth,
        kernel,
        patch,
        classes,
        act: act_from(&h.act)?,
    })
}

/// `(images, CRC-32 of pixels then labels)`: identifies the training data of a run.
fn fingerprint(s: &LabelledSet) -> (usize, u32) {
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    let mut d = crc.digest();
    d.update(&s.pixels);
    for &l in &s.labels {
        d.update(&(l as u32).to_le_bytes());
    }
    (s.len(), d.finalize())
}

/// Per-channel mean and std of the set's pixels in the 0..1 scale.
fn channel_stats(s: &LabelledSet) -> (Vec<f32>, Vec<f32>) {
    let c = s.shape.2;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for px in s.pixels.chunks_exact(c) {
        for ch in 0..c {
            let v = f64::from(px[ch]) / 255.0;
            sum[ch] += v;
            sq[ch] += v * v;
        }
    }
    let n = (s.pixels.len() / c).max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| ((q / n - m * m).max(0.0).sqrt().max(1e-3)) as f32)
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), std)
}

/// The one-cycle schedule at fractional epoch `t`: linear 0 → `lr` over [0, 0.4·E],
/// → `lr/20` at 0.8·E, → 0 at E (the paper's `np.interp` schedule).
pub fn lr_at(t: f64, epochs: usize, lr: f64) -> f64 {
    let e = epochs as f64;
    let pts = [(0.0, 0.0), (0.4 * e, lr), (0.8 * e, lr / 20.0), (e, 0.0)];
    for w in pts.windows(2) {
        let ((t0, v0), (t1, v1)) = (w[0], w[1]);
        if t <= t1 {
            return if t1 > t0 {
                v0 + (v1 - v0) * (t - t0).max(0.0) / (t1 - t0)
            } else {
                v1
            };
        }
    }
    0.0
}

/// The generator of epoch `e` (0-based) of a run seeded `seed`.
fn epoch_rng(seed: u64, e: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (e as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Writes image `img` (HWC u8 of `shape`) into `out` (CHW f32, normalised), shifted by
/// `(dy, dx)` with zero fill and mirrored if `flip`.
fn write_sample(
    img: &[u8],
    (h, w, c): (usize, usize, usize),
    (dy, dx): (isize, isize),
    flip: bool,
    mean: &[f32],
    std: &[f32],
    out: &mut [f32],
) {
    for ch in 0..c {
        let zero = -mean[ch] / std[ch];
        for y in 0..h {
            for x in 0..w {
                let sy = y as isize + dy;
                let sx0 = x as isize + dx;
                let sx = if flip { w as isize - 1 - sx0 } else { sx0 };
                let v = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                    let p = img[(sy as usize * w + sx as usize) * c + ch];
                    (f32::from(p) / 255.0 - mean[ch]) / std[ch]
                } else {
                    zero
                };
                out[(ch * h + y) * w + x] = v;
            }
        }
    }
}

/// A batch of images `idx` of `set` as an NCHW tensor (augmented when `rng` is given).
fn batch<B: Backend>(
    set: &LabelledSet,
    idx: &[usize],
    aug: Augment,
    mut rng: Option<&mut StdRng>,
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let (h, w, c) = set.shape;
    let chw = c * h * w;
    let mut x = vec![0f32; idx.len() * chw];
    let m = (h.min(w) / 8).max(1) as i32;
    for (j, &i) in idx.iter().enumerate() {
        let (mut shift, mut flip) = ((0, 0), false);
        if let Some(r) = rng.as_deref_mut() {
            if matches!(aug, Augment::Shift | Augment::CropFlip) {
                shift = (
                    r.random_range(-m..=m) as isize,
                    r.random_range(-m..=m) as isize,
                );
            }
            if aug == Augment::CropFlip {
                flip = r.random_bool(0.5);
            }
        }
        write_sample(
            set.image(i),
            set.shape,
            shift,
            flip,
            mean,
            std,
            &mut x[j * chw..(j + 1) * chw],
        );
    }
    let y: Vec<i64> = idx.iter().map(|&i| set.labels[i] as i64).collect();
    (
        Tensor::from_data(TensorData::new(x, [idx.len(), c, h, w]), device),
        Tensor::from_data(TensorData::new(y, [idx.len()]), device),
    )
}

/// Top-1 accuracy of `model` (inference mode: BatchNorm's running statistics) on `set`.
pub fn accuracy<B: Backend>(
    model: &ConvMixer<B>,
    set: &LabelledSet,
    mean: &[f32],
    std: &[f32],
    device: &B::Device,
) -> f64 {
    let all: Vec<usize> = (0..set.len()).collect();
    let mut correct = 0i64;
    for idx in all.chunks(256) {
        let (x, y) = batch::<B>(set, idx, Augment::None, None, mean, std, device);
        let pred = model.forward(x).argmax(1).reshape([idx.len()]);
        correct += pred.equal(y).int().sum().into_scalar().elem::<i64>();
    }
    correct as f64 / set.len().max(1) as f64
}

fn epoch_bar(steps: usize, prefix: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(steps as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// Loads a checkpoint's model and optimiser state into a model on the CPU backend and
/// records them again: what `--resume` restores, as bytes (tests compare it with the file).
pub fn reload_checkpoint(path: &Path) -> Result<Checkpoint> {
    type B = burn::backend::Autodiff<burn::backend::NdArray>;
    let b = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let ck = Checkpoint::from_bytes(&b, &path.display().to_string())?;
    let arch = arch_of(&ck.header)?;
    let device = Default::default();
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
    let model = ConvMixer::<B>::new(&arch, &device).load_record(
        recorder
            .load(ck.model.clone(), &device)
            .map_err(|e| anyhow!("{e}"))?,
    );
    let optim = AdamWConfig::new().init::<B, ConvMixer<B>>().load_record(
        recorder
            .load(ck.optim.clone(), &device)
            .map_err(|e| anyhow!("{e}"))?,
    );
    Ok(Checkpoint {
        header: ck.header,
        model: recorder
            .record(model.into_record(), ())
            .map_err(|e| anyhow!("{e}"))?,
        optim: recorder
            .record(optim.to_record(), ())
            .map_err(|e| anyhow!("{e}"))?,
    })
}

/// Resolves a flag against a checkpoint's value: equal or absent, else an error.
fn keep<T: PartialEq + std::fmt::Debug>(flag: &str, given: Option<T>, saved: T) -> Result<T> {
    match given {
        Some(v) if v != saved => bail!(
            "{flag} {v:?} differs from the checkpoint's {saved:?} (a resumed run keeps its settings)"
        ),
        _ => Ok(saved),
    }
}

fn run<B: AutodiffBackend>(device: B::Device, opts: &TrainOptions) -> Result<Summary> {
    let train = labelled_set(&opts.data, None)?;
    let val = match &opts.val {
        Some(v) => {
            let s = labelled_set(v, Some(&train.classes))?;
            if s.shape != train.shape {
                bail!(
                    "{}: validation images are {:?} (h, w, c), the training images {:?}",
                    v.display(),
                    s.shape,
                    train.shape
                );
            }
            Some(s)
        }
        None => None,
    };
    let (h, w, c) = train.shape;
    let data_id = fingerprint(&train);
    let ckpt_path = opts
        .checkpoint
        .clone()
        .unwrap_or_else(|| opts.out.with_extension("ckpt"));
    let recorder = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();

    // The run's settings: from the flags and defaults, or from the checkpoint.
    let resumed = match &opts.resume {
        Some(p) => {
            let b = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            Some(Checkpoint::from_bytes(&b, &p.display().to_string())?)
        }
        None => None,
    };
    let (mut header, arch) = match &resumed {
        Some(ck) => {
            let hd = ck.header.clone();
            let a = arch_of(&hd)?;
            if hd.data != data_id {
                bail!(
                    "{}: the training data differs from the checkpoint's ({} images, CRC {:08x}; the checkpoint was trained on {} images, CRC {:08x})",
                    opts.data.display(),
                    data_id.0,
                    data_id.1,
                    hd.data.0,
                    hd.data.1
                );
            }
            let f = &opts.arch;
            keep("--dim", f.dim, a.dim)?;
            keep("--depth", f.depth, a.depth)?;
            keep("--kernel", f.kernel, a.kernel)?;
            keep("--patch", f.patch, a.patch)?;
            keep("--act", f.act, a.act)?;
            let g = &opts.hyper;
            let s = &hd.hyper;
            keep("--epochs", g.epochs, s.epochs)?;
            keep("--batch", g.batch, s.batch)?;
            keep("--lr", g.lr, s.lr)?;
            keep("--weight-decay", g.weight_decay, s.weight_decay)?;
            keep("--label-smoothing", g.label_smoothing, s.label_smoothing)?;
            keep("--seed", g.seed, s.seed)?;
            keep("--augment", g.augment, s.augment)?;
            keep("--mean", opts.mean.clone(), hd.mean.clone())?;
            keep("--std", opts.std.clone(), hd.std.clone())?;
            (hd, a)
        }
        None => {
            let d = Hyper::default();
            let g = &opts.hyper;
            let hyper = Hyper {
                epochs: g.epochs.unwrap_or(d.epochs),
                batch: g.batch.unwrap_or(d.batch),
                lr: g.lr.unwrap_or(d.lr),
                weight_decay: g.weight_decay.unwrap_or(d.weight_decay),
                label_smoothing: g.label_smoothing.unwrap_or(d.label_smoothing),
                seed: g.seed.unwrap_or(d.seed),
                augment: g.augment.unwrap_or(d.augment),
            };
            if hyper.epochs == 0 || hyper.batch == 0 {
                bail!("--epochs and --batch must be at least 1");
            }
            if !(hyper.lr > 0.0 && hyper.lr.is_finite())
                || !(0.0..1.0).contains(&hyper.label_smoothing)
                || !(hyper.weight_decay >= 0.0)
            {
                bail!("--lr must be positive, --weight-decay at least 0 and --label-smoothing in [0, 1)");
            }
            let f = &opts.arch;
            let a = Arch {
                in_c: c,
                in_h: h,
                in_w: w,
                dim: f.dim.unwrap_or(256),
                depth: f.depth.unwrap_or(8),
                kernel: f.kernel.unwrap_or(5),
                patch: f.patch.unwrap_or(2),
                classes: train.classes.len(),
                act: f.act.unwrap_or(Activation::Gelu),
            };
            a.check()?;
            let (m, s) = channel_stats(&train);
            let per_channel = |v: &Option<Vec<f32>>, d: Vec<f32>, what: &str| -> Result<Vec<f32>> {
                match v {
                    None => Ok(d),
                    Some(v) if v.len() == 1 => Ok(vec![v[0]; c]),
                    Some(v) if v.len() == c => Ok(v.clone()),
                    Some(v) => bail!(
                        "--{what} has {} values, the images have {c} channel(s)",
                        v.len()
                    ),
                }
            };
            let mean = per_channel(&opts.mean, m, "mean")?;
            let std = per_channel(&opts.std, s, "std")?;
            if std.iter().any(|&s| !(s > 0.0 && s.is_finite()))
                || mean.iter().any(|m| !m.is_finite())
            {
                bail!("--std must be positive and --mean finite");
            }
            let hd = Header {
                arch: [
                    a.in_c, a.in_h, a.in_w, a.dim, a.depth, a.kernel, a.patch, a.classes,
                ],
                act: act_name(a.act).into(),
                hyper,
                mean,
                std,
                classes: train.classes.clone(),
                data: data_id,
                epochs_done: 0,
                history: Vec::new(),
            };
            (hd, a)
        }
    };
    let hyper = header.hyper.clone();
    let aug = match hyper.augment {
        Augment::Auto if c == 3 => Augment::CropFlip,
        Augment::Auto => Augment::Shift,
        a => a,
    };
    let (mean, std) = (header.mean.clone(), header.std.clone());

    B::seed(&device, hyper.seed);
    let mut model = ConvMixer::<B>::new(&arch, &device);
    let mut optim = AdamWConfig::new()
        .with_weight_decay(hyper.weight_decay as f32)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(1.0)))
        .init::<B, ConvMixer<B>>();
    if let Some(ck) = resumed {
        let what = opts
            .resume
            .as_deref()
            .unwrap_or(Path::new(""))
            .display()
            .to_string();
        let rec = recorder
            .load(ck.model, &device)
            .map_err(|e| anyhow!("{what}: cannot load the model record: {e}"))?;
        model = model.load_record(rec);
        let rec = recorder
            .load(ck.optim, &device)
            .map_err(|e| anyhow!("{what}: cannot load the optimiser record: {e}"))?;
        optim = optim.load_record(rec);
    }
    let loss_fn = CrossEntropyLossConfig::new()
        .with_smoothing((hyper.label_smoothing > 0.0).then_some(hyper.label_smoothing as f32))
        .init(&device);

    let n = train.len();
    let bs = hyper.batch.min(n);
    let steps = n / bs; // the last partial batch is dropped (a batch of 1 has no BN statistics)
    if opts.progress {
        eprintln!(
            "training ConvMixer-{}/{} (kernel {}, patch {}, {}; {} parameters) on {n} images {h}x{w}x{c}, {} classes{}; {} epochs of {steps} batches of {bs}",
            arch.dim,
            arch.depth,
            arch.kernel,
            arch.patch,
            act_name(arch.act),
            arch.params(),
            arch.classes,
            val.as_ref().map_or(String::from(", no validation set"), |v| format!(", {} validation images", v.len())),
            hyper.epochs,
        );
    }
    for e in header.epochs_done..hyper.epochs {
        let mut rng = epoch_rng(hyper.seed, e);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let bar = if opts.progress {
            epoch_bar(steps, &format!("epoch {}/{}", e + 1, hyper.epochs))
        } else {
            indicatif::ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0i64, 0usize);
        for s in 0..steps {
            let idx = &order[s * bs..(s + 1) * bs];
            let (x, y) = batch::<B>(&train, idx, aug, Some(&mut rng), &mean, &std, &device);
            let logits = model.forward(x);
            let loss = loss_fn.forward(logits.clone(), y.clone());
            let l = loss.clone().into_scalar().elem::<f64>();
            if !l.is_finite() {
                bail!(
                    "epoch {} batch {}: the loss is {l} (lower --lr?)",
                    e + 1,
                    s + 1
                );
            }
            loss_sum += l * bs as f64;
            correct += logits
                .argmax(1)
                .reshape([bs])
                .equal(y)
                .int()
                .sum()
                .into_scalar()
                .elem::<i64>();
            seen += bs;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = lr_at(e as f64 + s as f64 / steps as f64, hyper.epochs, hyper.lr);
            model = optim.step(lr, model, grads);
            bar.inc(1);
            let secs = t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4}  acc {:.2}%  {:.0} img/s",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                seen as f64 / secs.max(1e-9)
            ));
        }
        bar.finish_and_clear();
        let seconds = t0.elapsed().as_secs_f64();
        let val_acc = val
            .as_ref()
            .map(|v| accuracy(&model.valid(), v, &mean, &std, &device));
        let st = EpochStats {
            epoch: e + 1,
            loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            val_acc,
            images_per_s: seen as f64 / seconds.max(1e-9),
            seconds,
        };
        if opts.progress {
            eprintln!(
                "epoch {:>3}/{}  loss {:.4}  train {:.2}%  {}  {:.0} img/s  {:.1} s",
                st.epoch,
                hyper.epochs,
                st.loss,
                100.0 * st.train_acc,
                st.val_acc
                    .map_or(String::from("val -"), |a| format!("val {:.2}%", 100.0 * a)),
                st.images_per_s,
                st.seconds
            );
        }
        header.epochs_done = e + 1;
        header.history.push(st);
        let ck = Checkpoint {
            header: header.clone(),
            model: recorder
                .record(model.clone().into_record(), ())
                .map_err(|e| anyhow!("cannot record the model: {e}"))?,
            optim: recorder
                .record(optim.to_record(), ())
                .map_err(|e| anyhow!("cannot record the optimiser: {e}"))?,
        };
        write_atomic(&ckpt_path, &ck.to_bytes()?)?;
    }

    // Export, check with tract, then write.
    let inner = model.valid();
    let imported = inner.to_imported(&arch)?;
    let onnx = write_onnx(&imported, opts.gelu)?;
    let onnx =
        convmixer_quantize::onnx_export::with_normalisation(&onnx, &mean, &std, &header.classes)?;
    let check_set = val.as_ref().unwrap_or(&train);
    let k = check_set.len().min(16);
    let idx: Vec<usize> = (0..k).collect();
    let (x, _) =
        batch::<B::InnerBackend>(check_set, &idx, Augment::None, None, &mean, &std, &device);
    let burn_logits: Vec<f32> = inner
        .forward(x.clone())
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow!("cannot read logits: {e:?}"))?;
    let xs: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow!("{e:?}"))?;
    let tract = convmixer_quantize::reference::TractModel::from_bytes(&onnx, c, h, w)?;
    let mut max_diff = 0f32;
    let (chw, classes) = (c * h * w, arch.classes);
    for i in 0..k {
        let t = tract.run(&xs[i * chw..(i + 1) * chw])?;
        for (a, b) in t.iter().zip(&burn_logits[i * classes..(i + 1) * classes]) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    if !(max_diff <= 1e-3) {
        bail!("the exported ONNX disagrees with the trained model (max |logit difference| {max_diff:e} under tract); nothing written");
    }
    write_atomic(&opts.out, &onnx)?;
    Ok(Summary {
        history: header.history,
        export_max_abs_diff: max_diff,
        export_checked: k,
        mean,
        std,
        arch,
    })
}
