//! # convmixer-edge
//!
//! A `no_std`, heap-free runtime for ConvMixer image classifiers ("Patches Are All You
//! Need?"), quantised to int8 or stored as fp16 / fp32 by `host-tools quantize`.
//!
//! The model blob (`docs/blob-format.md`) is read in place from a `&[u8]` — flash,
//! `include_bytes!`, or a file buffer — and all scratch memory is one caller-provided arena
//! whose size [`Model::arena_len`] tells before anything runs. Nothing allocates, nothing
//! panics on any input bytes: every malformed blob is an [`Error`].
//!
//! ```
//! use convmixer_edge::{include_blob, Model};
//!
//! // The MNIST-digit example model shipped in the repository (28×28 gray, 10 classes).
//! let blob: &[u8] = include_blob!("../examples/mnist/convmixer-mnist-int8.cmx");
//! let model = Model::from_bytes(blob)?;
//! let mut arena = vec![0u8; model.arena_len()]; // a static array on a board
//! let pixels = [0u8; 28 * 28]; // raw u8 pixels, HWC, as a camera delivers them
//! let top3 = model.classify::<3>(&pixels, &mut arena)?;
//! for (class, probability) in &top3 {
//!     println!("{} {probability:.3}", model.label(*class).unwrap_or("?"));
//! }
//! assert_eq!(top3.len(), 3);
//! # Ok::<(), convmixer_edge::Error>(())
//! ```
#![no_std]
// `unsafe` only in the SIMD kernels and CPU feature detection (each kernel op's `neon` and
// `x86` modules, the shared `quant::{neon, x86}` and `float::{neon, x86}`, and
// `kernels::cpu`: allowed where `kernels` declares them); every other module denies it,
// most say `#![forbid(unsafe_code)]`. Inside `unsafe fn`s every unsafe operation still
// needs an `unsafe` block, and every `unsafe` block a `// SAFETY:` comment with its bounds
// argument.
#![deny(unsafe_code, unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]
// The runtime never panics, whatever the blob's bytes: no unwrap/expect/panic-like macros
// and no panicking `[]` in non-test code. The blob reader and the model turn every failed
// lookup into an `Error`; the kernels check their slice lengths once per call and then
// index through `get`, chunks and iterators, or (SIMD register arrays, a few hot loops)
// under a narrow `#[allow(clippy::indexing_slicing)]` that states which check bounds it.
// Test code and doc tests may unwrap.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "std"))]
extern crate std;

/// Seals traits whose implementations the unsafe kernels rely on (`FloatWeights`,
/// `FloatArith`): only this crate implements them.
mod sealed {
    pub trait Sealed {}
}

pub mod blob;
pub mod cores;
pub mod kernels;
pub mod le;
mod model;

#[cfg(test)]
mod cores_tests;
#[cfg(test)]
mod example_tests;

pub use model::{LayerOutput, Model};

/// Weight storage (and arithmetic) of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Precision {
    /// f32 weights, f32 arithmetic (the exact folded graph; used to check BN removal).
    F32 = 0,
    /// f16 weights, f32 arithmetic.
    F16 = 1,
    /// int8 weights and activations, integer arithmetic up to the logits.
    Int8 = 2,
}

/// The activation after every conv.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Activation {
    /// GELU with the exact erf (PyTorch's default `nn.GELU()`).
    Gelu = 0,
    /// ReLU.
    Relu = 1,
    /// GELU with the tanh approximation (`nn.GELU(approximate="tanh")`).
    GeluTanh = 2,
}

/// Everything that can go wrong in the runtime.
///
/// ```
/// use convmixer_edge::{Error, Model};
/// assert_eq!(Model::from_bytes(b"not a model").unwrap_err(), Error::BadMagic);
/// assert_eq!(Model::from_bytes(b"CMXB").unwrap_err(), Error::Truncated);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The blob is shorter than its header or table of contents says.
    Truncated,
    /// The blob does not start with `CMXB`.
    BadMagic,
    /// A format version this runtime does not read.
    UnsupportedVersion(u16),
    /// A precision code this runtime does not know.
    UnsupportedPrecision(u8),
    /// The CRC-32 does not match: the blob is corrupted.
    BadCrc,
    /// The blob is inconsistent; the text says what.
    Malformed(&'static str),
    /// `pixels` has the wrong length.
    InputSize {
        /// `in_h · in_w · in_c` of the model.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// The arena is smaller than [`Model::arena_len`].
    ArenaTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// [`Model::with_isa`] asked for kernels this CPU cannot run.
    IsaUnavailable,
    /// The logits buffer does not have one slot per class.
    OutputSize {
        /// Number of classes.
        expected: usize,
        /// What was given.
        got: usize,
    },
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Truncated => write!(f, "model blob is truncated"),
            Error::BadMagic => write!(f, "not a convmixer-edge model blob (bad magic)"),
            Error::UnsupportedVersion(v) => write!(
                f,
                "unsupported blob version {v} (this runtime reads {})",
                blob::VERSION
            ),
            Error::UnsupportedPrecision(p) => write!(f, "unsupported precision code {p}"),
            Error::BadCrc => write!(f, "model blob is corrupted (CRC-32 mismatch)"),
            Error::Malformed(what) => write!(f, "malformed model blob: {what}"),
            Error::InputSize { expected, got } => {
                write!(
                    f,
                    "input has {got} bytes, the model expects {expected} (H·W·C u8 pixels)"
                )
            }
            Error::ArenaTooSmall { needed, got } => {
                write!(f, "arena has {got} bytes, the model needs {needed}")
            }
            Error::IsaUnavailable => {
                write!(f, "the requested kernels need CPU features this CPU lacks")
            }
            Error::OutputSize { expected, got } => write!(
                f,
                "logits buffer has {got} slots, the model has {expected} classes"
            ),
        }
    }
}

/// Places a model blob in the binary at a 16-byte-aligned address (the blob's sections
/// are 16-byte aligned relative to its start, so SIMD kernels may use aligned loads).
///
/// ```
/// let model: &'static [u8] = convmixer_edge::include_blob!("../examples/mnist/convmixer-mnist-int8.cmx");
/// assert_eq!(model.as_ptr() as usize % 16, 0);
/// assert!(convmixer_edge::Model::from_bytes(model).is_ok());
/// ```
#[macro_export]
macro_rules! include_blob {
    ($path:expr) => {{
        #[repr(C, align(16))]
        struct Aligned<B: ?Sized>(B);
        static ALIGNED: &Aligned<[u8]> = &Aligned(*include_bytes!($path));
        &ALIGNED.0
    }};
}
