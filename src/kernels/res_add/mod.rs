//! The MLP-Mixer's residual add: int8 GEMM outputs into the int16 residual stream
//! ([`reference::res_add_i16`] per element; `x86.rs`: `res_add_avx2`, 16 per step, for the
//! channel MLP's contiguous rows).

pub(super) mod reference;

// The AVX2 kernel runs only where Isa::Avx2 was detected (its entry point checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod x86;

#[cfg(test)]
mod tests;

use super::parts::ChannelsMut;
use super::Isa;

/// How an int8 GEMM output is added into the MLP-Mixer's int16 residual stream (a
/// RES_ADD section plus the GEMM's output zero point): [`reference::res_add_i16`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResAdd {
    /// Zero point of the int8 GEMM output.
    pub zp: i32,
    /// Multiplier (`0 ..= 2^22`).
    pub m: i32,
    /// Rounding right shift (`0 ..= 31`).
    pub sh: i32,
}

/// Adds `rows × n` int8 values `q` (row-major) into the residual stream `resid`
/// (`tokens · dim` i16, token-major): element `(r, j)` goes to `resid[r·n + j]`, or, where
/// `transposed` (the token MLP: rows are channels, `j` tokens), to `resid[j·rows + r]`; with
/// the kernels of `isa` (the same bits on every level).
///
/// ```
/// use convmixer_edge::kernels::{res_add::{add_residual, ResAdd}, Isa};
/// let mut x = [0i16; 4];
/// add_residual(&[1, 2, 3, 4], 2, 2, ResAdd { zp: 0, m: 1, sh: 0 }, &mut x, true, Isa::detect());
/// assert_eq!(x, [1, 3, 2, 4]);
/// ```
pub fn add_residual(
    q: &[i8],
    rows: usize,
    n: usize,
    add: ResAdd,
    resid: &mut [i16],
    transposed: bool,
    isa: Isa,
) {
    if n == 0
        || rows
            .checked_mul(n)
            .is_none_or(|len| q.len() < len || resid.len() < len)
    {
        return;
    }
    add_rows(q, rows, n, 0, rows, add, resid, transposed, isa);
}

/// Adds the `m × n` int8 tile `q` (rows `r .. r + m` of a `rows × n` output) into the
/// residual stream as [`add_residual`] places it: [`reference::res_add_i16`] per element.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn add_rows(
    q: &[i8],
    m: usize,
    n: usize,
    r: usize,
    rows: usize,
    add: ResAdd,
    resid: &mut [i16],
    transposed: bool,
    isa: Isa,
) {
    let one = |x: &mut i16, v: i8| *x = reference::res_add_i16(*x, v, add.zp, add.m, add.sh);
    if transposed {
        add_columns(q, m, n, r, add, &mut ChannelsMut::whole(resid, rows));
    } else {
        let Some(dst) = resid.get_mut(r * n..(r + m) * n) else {
            return;
        };
        // The SIMD level adds a prefix of the row-major tile, the reference the rest.
        let done = match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => x86::res_add_avx2(dst, q, add),
            _ => 0,
        };
        for (x, &v) in dst.iter_mut().zip(q).skip(done) {
            one(x, v);
        }
    }
}

/// The transposed add (the token MLP's): the `m × n` int8 tile `q` holds rows `r .. r + m`
/// (channels of the residual stream, inside the view's channels) of a GEMM whose `n`
/// columns are the stream's tokens; element `(r + i, j)` is added into channel `r + i` of
/// token `j`, [`reference::res_add_i16`] per element. Through a [`ChannelsMut`] view, so
/// that a token MLP split by channel ranges adds each part's rows on its own core. Stops
/// at the first token or row outside the view.
///
/// ```
/// use convmixer_edge::kernels::{parts::ChannelsMut, res_add::{add_columns, ResAdd}};
/// let mut x = [0i16; 2 * 4]; // 2 tokens × 4 channels
/// let mut views = ChannelsMut::split(&mut x, 4, 2, 2);
/// // Rows 2 and 3 (channels 2..4) of a 2-row × 2-token tile.
/// add_columns(&[1, 2, 3, 4], 2, 2, 2, ResAdd { zp: 0, m: 1, sh: 0 }, &mut views[1]);
/// drop(views);
/// assert_eq!(x, [0, 0, 1, 3, 0, 0, 2, 4]);
/// ```
pub fn add_columns(
    q: &[i8],
    m: usize,
    n: usize,
    r: usize,
    add: ResAdd,
    resid: &mut ChannelsMut<'_, i16>,
) {
    let Some(at) = r.checked_sub(resid.channels().start) else {
        return;
    };
    for j in 0..n {
        let Some(dst) = resid.token(j).and_then(|t| t.get_mut(at..at + m)) else {
            return;
        };
        for (i, x) in dst.iter_mut().enumerate() {
            let v = q.get(i * n + j).copied().unwrap_or(0);
            *x = reference::res_add_i16(*x, v, add.zp, add.m, add.sh);
        }
    }
}
