//! The int8 requantisation of `docs/blob-format.md`, in plain scalar Rust: `SQRDMULH`,
//! rounding shifts, the per-channel requantisation record and the epilogue that turns an
//! i32 accumulator into an int8 output (activation by ReLU or the 256-entry table, post
//! affine, residual, saturating narrow). Every int8 op's reference ends in
//! [`epilogue_i8`]; the SIMD variants compute its bits for many channels at once.
#![forbid(unsafe_code)]

use crate::le::I32Le;
use crate::Activation;

/// AArch64 `SQRDMULH`: `saturate((2·a·b + 2^31) >> 32)`.
///
/// ```
/// use convmixer_edge::kernels::reference::sqrdmulh;
/// assert_eq!(sqrdmulh(1 << 20, 1 << 30), 1 << 19);
/// assert_eq!(sqrdmulh(i32::MIN, i32::MIN), i32::MAX);
/// ```
#[inline]
pub fn sqrdmulh(a: i32, b: i32) -> i32 {
    // (2ab + 2^31) >> 32 == (ab + 2^30) >> 31, and |ab| ≤ 2^62 cannot overflow.
    let p = i64::from(a) * i64::from(b) + (1i64 << 30);
    (p >> 31).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Rounding arithmetic shift right (`SRSHR`): `(v + 2^(s−1)) >> s`, round half up.
///
/// ```
/// use convmixer_edge::kernels::reference::rshr;
/// assert_eq!((rshr(5, 1), rshr(-5, 1), rshr(7, 0)), (3, -2, 7));
/// ```
#[inline]
pub fn rshr(v: i32, s: i32) -> i32 {
    if s <= 0 {
        v
    } else {
        // Every shift s ≥ 32 gives 0 (|v + 2^(s−1)| < 2^s), so capping it at 32 changes no
        // result and keeps the shifts below 64.
        let s = s.min(32);
        ((i64::from(v) + (1i64 << (s - 1))) >> s) as i32
    }
}

/// Fixed-point requantisation `rq(x, m, sh)` of the format document: saturating left
/// shift for `sh < 0`, `SQRDMULH` by `m`, rounding right shift for `sh > 0`.
///
/// ```
/// use convmixer_edge::kernels::reference::rq;
/// // m = 2^30 is 0.5; sh = 1 halves again: 100 * 0.25 = 25.
/// assert_eq!(rq(100, 1 << 30, 1), 25);
/// // sh = -2 multiplies by 4 first.
/// assert_eq!(rq(100, 1 << 30, -2), 200);
/// ```
#[inline]
pub fn rq(x: i32, m: i32, sh: i32) -> i32 {
    let x = if sh < 0 {
        // A left shift by 32 already saturates every x ≠ 0, so capping it changes no result
        // (and −i32::MIN cannot overflow).
        let left = sh.unsigned_abs().min(32);
        (i64::from(x) << left).clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    } else {
        x
    };
    rshr(sqrdmulh(x, m), sh)
}

/// One output channel's requantisation record (see the format document).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requant {
    /// Multiplier from the accumulator to the activation input.
    pub m_pre: i32,
    /// Shift paired with `m_pre`.
    pub sh_pre: i32,
    /// Multiplier from the activation output (i16) to the output.
    pub m_post: i32,
    /// Offset in the post-activation product domain (the BatchNorm shift).
    pub b_post: i32,
    /// Rounding right shift of the post-activation sum.
    pub sh_post: i32,
    /// Multiplier of the residual input (depthwise layers), else 0.
    pub m_res: i32,
}

/// Per-layer parameters of one int8 conv layer.
#[derive(Clone, Copy, Debug)]
pub struct QuantLayer<'a> {
    /// Weights, i8, layout as documented.
    pub w: &'a [i8],
    /// Bias per output channel (accumulator units).
    pub bias: I32Le<'a>,
    /// Requant records: 6 i32 fields, field-major (`[field][dim]`, so that a vector
    /// kernel loads one field of consecutive channels at once).
    pub requant: I32Le<'a>,
    /// Zero point of the layer input.
    pub zp_in: i32,
    /// Zero point of the GELU table's input.
    pub zp_z: i32,
    /// Zero point of the output.
    pub zp_out: i32,
    /// GELU table of 256 i16: the 256 low bytes, then the 256 high bytes (planes that a
    /// `TBL` lookup reads directly); empty for ReLU.
    pub table: &'a [u8],
}

impl QuantLayer<'_> {
    /// Requant record of output channel `o`.
    #[inline]
    pub fn requant(&self, o: usize) -> Requant {
        let dim = self.requant.0.len() / 24;
        let r = |k| self.requant.at(k * dim + o);
        Requant {
            m_pre: r(0),
            sh_pre: r(1),
            m_post: r(2),
            b_post: r(3),
            sh_post: r(4),
            m_res: r(5),
        }
    }

    /// GELU table entry `i` (0..256): `lo[i] | hi[i] << 8` as i16 (a byte past the table,
    /// which a validated GELU layer never has, reads as 0).
    #[inline]
    pub fn gelu(&self, i: usize) -> i32 {
        let byte = |j: Option<usize>| j.and_then(|j| self.table.get(j)).copied().unwrap_or(0);
        i32::from(i16::from_le_bytes([
            byte(Some(i)),
            byte(i.checked_add(256)),
        ]))
    }
}

/// The int8 epilogue: accumulator → activation (table or ReLU) → affine (+ residual) → int8.
/// `res` is `x_res − zp_in` for depthwise layers and 0 otherwise.
///
/// ```
/// use convmixer_edge::{kernels::reference::*, le::I32Le, Activation};
/// let l = QuantLayer { w: &[], bias: I32Le(&[]), requant: I32Le(&[]), zp_in: 0, zp_z: 0, zp_out: 3, table: &[] };
/// // ReLU: a = rq(acc) = acc/2; out = zp_out + rshr(a * 4, 2) = 3 + acc/2.
/// let r = Requant { m_pre: 1 << 30, sh_pre: 0, m_post: 4, b_post: 0, sh_post: 2, m_res: 0 };
/// assert_eq!(epilogue_i8(20, 0, &r, &l, Activation::Relu), 13);
/// assert_eq!(epilogue_i8(-20, 0, &r, &l, Activation::Relu), 3);
/// ```
#[inline]
pub fn epilogue_i8(acc: i32, res: i32, r: &Requant, l: &QuantLayer<'_>, act: Activation) -> i8 {
    let pre = rq(acc, r.m_pre, r.sh_pre);
    let a = match act {
        Activation::Relu => pre.clamp(0, i32::from(i16::MAX)),
        Activation::Gelu | Activation::GeluTanh => {
            let z = l.zp_z.saturating_add(pre).clamp(-128, 127);
            l.gelu((z + 128) as usize)
        }
    };
    // |a·m_post| ≤ 2^15·2^14, |res·m_res| < 2^8·2^20 and |b_post| ≤ 2^29 (the reader's
    // bounds): the sum stays below 2^31 and the wrapping forms only keep other parameters
    // from panicking. The saturating add matches the SIMD epilogue's saturating narrows.
    let sum = a
        .wrapping_mul(r.m_post)
        .wrapping_add(res.wrapping_mul(r.m_res))
        .wrapping_add(r.b_post);
    l.zp_out
        .saturating_add(rshr(sum, r.sh_post))
        .clamp(-128, 127) as i8
}
