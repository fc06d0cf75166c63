//! The MLP-Mixer's residual add (a RES_ADD section of `docs/blob-format.md`): one int8
//! GEMM output into the int16 residual stream, in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::quant::reference::rshr;

/// Adds one int8 GEMM output `q` (zero point `zp`) into residual value `x`:
/// `sat16(x + rshr((q − zp) · m, sh))`, the RES_ADD of `docs/blob-format.md`.
///
/// ```
/// use convmixer_edge::kernels::reference::res_add_i16;
/// assert_eq!(res_add_i16(1000, 10, 2, 3 << 4, 4), 1000 + 24);
/// assert_eq!(res_add_i16(32767, 127, -128, 1 << 22, 0), 32767);
/// ```
#[inline]
pub fn res_add_i16(x: i16, q: i8, zp: i32, m: i32, sh: i32) -> i16 {
    // |q − zp| ≤ 255 and 0 ≤ m ≤ 2^22 (the reader's bounds): the product is below 2^30;
    // wrapping only keeps other arguments from panicking.
    let d = rshr(i32::from(q).wrapping_sub(zp).wrapping_mul(m), sh);
    i32::from(x)
        .saturating_add(d)
        .clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}
