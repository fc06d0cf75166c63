//! Portable scalar reference kernels, one per op. They define the results: every SIMD
//! kernel must match them bit for bit, int8 and float alike (the float kernels fix the
//! summation order, fuse every multiply-add and say where values are rounded).
//!
//! Each op's reference lives in its op's folder (`kernels/<op>/reference.rs`, beside that
//! op's SIMD variants and shared test suite); this module gathers them all under one path.
//!
//! Activations are token-major (`token · dim + channel`); weight layouts are those of
//! `docs/blob-format.md`. Callers pass slices of the documented lengths (the model checks
//! them once, from the validated header).
//!
//! No kernel here panics or overflows on any arguments: each checks once, in checked
//! arithmetic, that the slices it indexes hold the shape's elements (writing nothing where
//! they do not), which also bounds every index it then forms, and reads through `get`;
//! integer accumulation wraps where a validated blob keeps it from overflowing (the
//! reader's accumulator bound), which is what the SIMD kernels' i32 lanes do.
#![forbid(unsafe_code)]

// int8: the shared requantisation and epilogue, then each op.
pub use super::dw_i8::reference::*;
pub use super::gemm_i8::reference::*;
pub use super::head_i8::reference::*;
pub use super::quant::reference::*;
// The MLP-Mixer's int16 residual stream.
pub use super::layer_norm::reference::*;
pub use super::res_add::reference::*;
// Float: the shared arithmetic, then each op.
pub use super::dw_f::reference::*;
pub use super::embed_f::reference::*;
pub use super::float::reference::*;
pub use super::head_f::reference::*;
pub use super::pw_f::reference::*;
