//! The int8 GEMM's reference (pointwise 1×1 conv, MLP-Mixer linear layers) and the patch
//! embedding (a GEMM over each patch), in plain scalar Rust.
#![forbid(unsafe_code)]

use crate::kernels::quant::reference::{epilogue_i8, QuantLayer};
use crate::kernels::{gemm_index, gemm_packed_len_checked, EmbedGeom, PW_KR, PW_NR};
use crate::Activation;

/// int8 patch embedding on raw `u8` pixels: a GEMM over each token's patch (`[ky][kx][c]`,
/// `taps = p·p·in_c` inputs) whose int8 inputs are `pixel − 128` (the layer's zero point is
/// −128, absorbed by the stored bias), weights packed as
/// [`gemm_index`](crate::kernels::gemm_index) with `k = taps`.
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, reference::{embed_i8, QuantLayer}, EmbedGeom};
/// use convmixer_edge::{le::I32Le, Activation};
/// // One 2×2 grey patch, one output channel with weights 1: Σ (pixel − 128) = 0 + 2 + 4 + 6.
/// let w = vec![1i8; gemm_packed_len(1, 4)];
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&[0; 4]), requant: I32Le(&rq), zp_in: -128, zp_z: 0, zp_out: 0, table: &[] };
/// let g = EmbedGeom { in_h: 2, in_w: 2, in_c: 1, patch: 2 };
/// let mut out = [0i8; 1];
/// embed_i8(&[128, 130, 132, 134], g, 1, &l, Activation::Relu, &mut out);
/// assert_eq!(out, [6]); // 12 / 2
/// ```
pub fn embed_i8(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    let (p, c, taps) = (g.patch, g.in_c, g.taps());
    let grid = g
        .grid(px.len(), dim, out.len())
        .filter(|_| gemm_packed_len_checked(dim, taps).is_some_and(|n| l.w.len() >= n));
    let Some((ht, wt)) = grid else {
        return;
    };
    for ty in 0..ht {
        for tx in 0..wt {
            let t = ty * wt + tx;
            let Some(orow) = out.get_mut(t * dim..(t + 1) * dim) else {
                return;
            };
            for (o, y) in orow.iter_mut().enumerate() {
                let mut acc = l.bias.at(o);
                let mut tap = 0;
                for ky in 0..p {
                    let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                    for v in px.get(row..row + p * c).unwrap_or_default() {
                        let x = i32::from(*v) - 128;
                        let w = l.w.get(gemm_index(o, tap, taps)).copied();
                        acc = acc.wrapping_add(i32::from(w.unwrap_or(0)) * x);
                        tap += 1;
                    }
                }
                *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
            }
        }
    }
}

/// int8 GEMM, the pointwise 1×1 conv (`k = n = dim`) and the patch embedding's core: for
/// each of `tokens` rows of `k` int8 inputs (`x`, row stride `k`), `n` outputs (`out`, row
/// stride `n`) through the epilogue; weights packed as
/// [`gemm_index`](crate::kernels::gemm_index).
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, reference::{gemm_i8, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n) = (3, 2);
/// let w = vec![1i8; gemm_packed_len(n, k)];
/// let bias = [0u8; 8];
/// // Field-major requant records: ReLU(acc / 2).
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let mut out = [0i8; 2];
/// gemm_i8(&[4, 4, 4], 1, k, n, &l, Activation::Relu, &mut out);
/// assert_eq!(out, [6, 6]); // (3 · 4) / 2
/// ```
pub fn gemm_i8(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    // Below these sizes every index formed here is inside its slice, without overflow;
    // n > 0 bounds the token loop by out.len() (no outputs: nothing to do).
    let fits = n > 0
        && tokens.checked_mul(k).is_some_and(|len| x.len() >= len)
        && tokens.checked_mul(n).is_some_and(|len| out.len() >= len)
        && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len);
    if !fits {
        return;
    }
    for t in 0..tokens {
        let (Some(row), Some(orow)) = (x.get(t * k..(t + 1) * k), out.get_mut(t * n..(t + 1) * n))
        else {
            return;
        };
        for (o, y) in orow.iter_mut().enumerate() {
            // Output o's weights of input group j (inputs 4j..4j + 4) are the 4 bytes at
            // gemm_index(o, 4j, k) = base + 64j: the first bytes of the 64-byte chunks of
            // w[base..] (all inside w: the packed length was checked above).
            let base = gemm_index(o, 0, k);
            let wo = l.w.get(base..).unwrap_or_default();
            let mut acc = l.bias.at(o);
            for (xg, wg) in row.chunks(PW_KR).zip(wo.chunks(PW_NR * PW_KR)) {
                for (xv, wv) in xg.iter().zip(wg) {
                    acc = acc.wrapping_add(i32::from(*wv) * i32::from(*xv));
                }
            }
            *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
        }
    }
}
