//! `host-tools train`: full-precision ConvMixer training with burn, written out as the ONNX
//! file `host-tools quantize` reads.
//!
//! The data path: a labelled set ([`labelled_set`](convmixer_quantize::data::labelled_set): ImageFolder, IDX or CIFAR-10 batches)
//! → normalised, augmented batches → [`model::ConvMixer`] on a burn backend (ndarray on the
//! CPU always; CUDA or wgpu with the `cuda` / `wgpu` features) → after every epoch a
//! [`checkpoint::Checkpoint`] (atomic) → at the end [`model::ConvMixer::to_imported`] →
//! [`write_onnx`](convmixer_quantize::onnx_export::write_onnx) (the shape `torch.onnx.export` writes, BatchNorm kept) → a check that
//! tract's run of those bytes gives the trained model's logits → the file (atomic).
//!
//! The recipe is the paper's (its `train.py` for CIFAR-10): AdamW, the one-cycle
//! piecewise-linear learning rate `0 → lr` over the first 40% of the epochs, `→ lr/20`
//! at 80%, `→ 0` at the end, stepped every batch; gradient norm clipped to 1; label
//! smoothing optional. Augmentation: random crop (zero padding of an eighth of the side)
//! with horizontal flips for colour images, the same shifts without flips for grayscale
//! ones (a mirrored digit is another symbol).
//!
//! Determinism: the backend is seeded with `seed` before the weights are initialised, and
//! epoch `e` shuffles and augments with a generator seeded from `(seed, e)`. A run resumed
//! from the checkpoint of epoch `e` therefore computes what the uninterrupted run computes
//! (`host-tools/tests/train.rs` checks that the two ONNX files are identical).

// The burn half (model, checkpoints, the training loop) is the `train` feature (default on):
// `scripts/demo.sh` builds host-tools without it, which leaves burn out of the build.
#[cfg(feature = "train")]
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod model;
#[cfg(feature = "train")]
mod run;
#[cfg(feature = "train")]
pub use run::*;

use std::path::PathBuf;

use convmixer_edge::Activation;
use convmixer_quantize::onnx_export::GeluForm;
use serde::{Deserialize, Serialize};

/// Augmentation of training images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    /// `crop-flip` for colour images, `shift` for grayscale ones.
    Auto,
    /// No augmentation.
    None,
    /// Random shifts by up to an eighth of the side (zero fill).
    Shift,
    /// Random shifts as `shift`, and horizontal flips with probability ½.
    CropFlip,
}

/// Hyper-parameters of a run (kept in its checkpoints; a resumed run keeps them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Epochs in the whole run.
    pub epochs: usize,
    /// Images per batch.
    pub batch: usize,
    /// Peak learning rate of the one-cycle schedule.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Label smoothing α (0 = none).
    pub label_smoothing: f64,
    /// Seed of the initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Augmentation.
    pub augment: Augment,
}

impl Default for Hyper {
    /// The paper's CIFAR-10 settings scaled to a small batch: 25 epochs, batch 128,
    /// lr 0.01, weight decay 0.01, no label smoothing, seed 0, automatic augmentation.
    fn default() -> Self {
        Hyper {
            epochs: 25,
            batch: 128,
            lr: 0.01,
            weight_decay: 0.01,
            label_smoothing: 0.0,
            seed: 0,
            augment: Augment::Auto,
        }
    }
}

/// The compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// burn's ndarray backend (always built).
    Cpu,
    /// burn's CUDA backend (feature `cuda`).
    Cuda,
    /// burn's wgpu backend (feature `wgpu`).
    Wgpu,
}

/// Architecture flags; `None` = the default (fresh run) or the checkpoint's (resumed run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ArchFlags {
    /// Mixer width (default 256).
    pub dim: Option<usize>,
    /// Blocks (default 8).
    pub depth: Option<usize>,
    /// Depthwise kernel (default 5).
    pub kernel: Option<usize>,
    /// Patch size (default 2).
    pub patch: Option<usize>,
    /// Activation (default GELU).
    pub act: Option<Activation>,
}

/// Hyper-parameter flags; `None` = [`Hyper::default`]'s value or the checkpoint's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HyperFlags {
    /// See [`Hyper::epochs`].
    pub epochs: Option<usize>,
    /// See [`Hyper::batch`].
    pub batch: Option<usize>,
    /// See [`Hyper::lr`].
    pub lr: Option<f64>,
    /// See [`Hyper::weight_decay`].
    pub weight_decay: Option<f64>,
    /// See [`Hyper::label_smoothing`].
    pub label_smoothing: Option<f64>,
    /// See [`Hyper::seed`].
    pub seed: Option<u64>,
    /// See [`Hyper::augment`].
    pub augment: Option<Augment>,
}

/// Everything `host-tools train` is told.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// The training set.
    pub data: PathBuf,
    /// The validation set (accuracy reported every epoch).
    pub val: Option<PathBuf>,
    /// The ONNX file to write.
    pub out: PathBuf,
    /// The checkpoint written after every epoch (default: `out` with extension `ckpt`).
    pub checkpoint: Option<PathBuf>,
    /// Continue the run of this checkpoint.
    pub resume: Option<PathBuf>,
    /// Where to compute.
    pub device: Device,
    /// ONNX spelling of GELU: the `Gelu` op at opset 20, or the `Erf` pattern at opset 17.
    pub gelu: GeluForm,
    /// Architecture.
    pub arch: ArchFlags,
    /// Hyper-parameters.
    pub hyper: HyperFlags,
    /// Normalisation mean per channel (default: the training set's).
    pub mean: Option<Vec<f32>>,
    /// Normalisation std per channel (default: the training set's).
    pub std: Option<Vec<f32>>,
    /// Show progress bars.
    pub progress: bool,
}
