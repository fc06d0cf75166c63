//! The fp32 forward pass of a folded ConvMixer ([`Folded`]) on the host: what calibration,
//! bias correction, the mixed-precision search and `host-tools report` measure the blob
//! against.
//!
//! The patch embedding, every pointwise conv and the head are GEMMs, computed by the
//! `gemm` crate on one thread ([`gemm_bt`]): its f32 kernels are chosen by CPU feature (FMA
//! on every x86_64 this project targets), each output's sum over `k` is computed in a fixed
//! order, so the values do not depend on how many threads run (the callers parallelise
//! over images). The depthwise conv is a plain loop over
//! channels (contiguous, so the compiler vectorises it).
//!
//! The layer values are handed to the caller a whole layer at a time ([`LayerValues`]);
//! per-channel statistics are then loops over contiguous slices.

use convmixer_edge::Activation;

use crate::fold::{Folded, Layer};

/// One conv layer's values for one image, each `tokens · dim` long, token-major (index
/// `token · dim + channel`, as the runtime's tensors).
#[derive(Clone, Copy, Debug)]
pub struct LayerValues<'a> {
    /// Accumulator before the activation (bias included).
    pub pre: &'a [f32],
    /// Layer output: `scale · act + shift`, plus the residual input for depthwise layers.
    pub out: &'a [f32],
    /// Per channel, the extremes over the tokens of the accumulator, the activation and the
    /// output: taken in the epilogue, while the values are in registers, so that
    /// calibration does not read the layer a second time (the activation itself is not
    /// kept: nothing else needs it).
    pub extremes: &'a Extremes,
}

/// Per channel (each array `dim` long), the smallest and largest value of one layer's
/// accumulator (`pre`), activation (`act`) and output (`out`) over one image's tokens. A
/// NaN never wins a comparison, so a channel whose values are all NaN keeps `lo = +∞ >
/// hi = −∞`.
///
/// ```
/// use convmixer_quantize::forward::Extremes;
/// let e = Extremes::default();
/// assert!(e.pre_lo.is_empty() && e.out_hi.is_empty());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Extremes {
    /// Smallest accumulator value per channel.
    pub pre_lo: Vec<f32>,
    /// Largest accumulator value per channel.
    pub pre_hi: Vec<f32>,
    /// Smallest activation output per channel.
    pub act_lo: Vec<f32>,
    /// Largest activation output per channel.
    pub act_hi: Vec<f32>,
    /// Smallest layer output per channel.
    pub out_lo: Vec<f32>,
    /// Largest layer output per channel.
    pub out_hi: Vec<f32>,
}

/// The activation in f32 with libm's `erff` / `tanhf` (the true function; independent of
/// the runtime's SIMD-friendly float GELU).
///
/// ```
/// use convmixer_edge::Activation;
/// use convmixer_quantize::forward::act_f32;
/// assert_eq!(act_f32(Activation::Relu, -2.0), 0.0);
/// assert!((act_f32(Activation::Gelu, 1.0) - 0.841_344_7).abs() < 1e-6);
/// ```
pub fn act_f32(act: Activation, x: f32) -> f32 {
    match act {
        Activation::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2)),
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/pi)
            0.5 * x * (1.0 + libm::tanhf(C * (x + 0.044_715 * x * x * x)))
        }
    }
}

/// `c (m × n) = a (m × k) · bᵀ` where `b` is `n × k` row-major (an output-major weight
/// matrix); what `c` held is overwritten. On one thread (the callers parallelise over
/// images), so each output's sum is taken in an order that depends only on the CPU's
/// features, never on the number of threads.
///
/// ```
/// let a = [1.0, 2.0, 3.0, 4.0]; // 2 × 2
/// let b = [1.0, 0.0, 1.0, 1.0]; // outputs (1, 0) and (1, 1)
/// let mut c = [10.0; 4];
/// convmixer_quantize::forward::gemm_bt(&a, &b, 2, 2, 2, &mut c);
/// assert_eq!(c, [1.0, 3.0, 3.0, 7.0]);
/// ```
pub fn gemm_bt(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, c: &mut [f32]) {
    let (a, b, c) = (&a[..m * k], &b[..n * k], &mut c[..m * n]);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let (k_, n_) = (k as isize, n as isize);
    // SAFETY: a holds m rows of k (row stride k, column stride 1), b n rows of k, read as
    // the k × n matrix bᵀ (row stride 1, column stride k), c m rows of n: every element
    // the GEMM touches is inside the slices above (their lengths checked by the
    // slicing); read_dst = false, so c is only written: c = 1·(a·bᵀ).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n_,
            false,
            a.as_ptr(),
            1,
            k_,
            b.as_ptr(),
            k_,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
}

/// Adds the bias to `pre` (the GEMM's sums), fills `out = scale·act(pre) + shift` of one
/// layer (plus the residual `res` where given: depthwise layers) and the per-channel
/// [`Extremes`].
fn finish(l: &Layer, act: Activation, dim: usize, v: &mut Values, res: Option<&[f32]>) {
    // One loop per activation and residual, so that each vectorises.
    match (act, res) {
        (Activation::Relu, None) => finish_with::<false>(l, dim, v, &[], relu),
        (Activation::Relu, Some(r)) => finish_with::<true>(l, dim, v, r, relu),
        (Activation::Gelu, None) => finish_with::<false>(l, dim, v, &[], gelu),
        (Activation::Gelu, Some(r)) => finish_with::<true>(l, dim, v, r, gelu),
        (a, None) => finish_with::<false>(l, dim, v, &[], |p| act_f32(a, p)),
        (a, Some(r)) => finish_with::<true>(l, dim, v, r, |p| act_f32(a, p)),
    }
}

#[inline(always)]
fn relu(p: f32) -> f32 {
    if p > 0.0 {
        p
    } else {
        0.0
    }
}

/// GELU with the runtime's rational erf (`reference::erf_f32`'s coefficients, here with
/// separate multiplies and adds so that the loop vectorises: libm's `erff` per value was
/// most of a GELU model's calibration time). Within 4·10⁻⁷ of the exact GELU (absolute,
/// relative above 1).
///
/// ```
/// let g = convmixer_quantize::forward::gelu;
/// for x in [-6.0f32, -1.5, -0.3, 0.0, 0.2, 1.0, 2.5, 9.0] {
///     let exact = convmixer_quantize::forward::act_f32(convmixer_edge::Activation::Gelu, x);
///     assert!((g(x) - exact).abs() <= 4e-7 * exact.abs().max(1.0), "{x}");
/// }
/// ```
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    use convmixer_edge::kernels::reference::{ERF_P, ERF_Q, ERF_ZMAX};
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let z = if z > ERF_ZMAX {
        ERF_ZMAX
    } else if z < -ERF_ZMAX {
        -ERF_ZMAX
    } else {
        z
    };
    let t = z * z;
    let mut p = ERF_P[6];
    for c in ERF_P[..6].iter().rev() {
        p = p * t + c;
    }
    let mut q = ERF_Q[5];
    for c in ERF_Q[..5].iter().rev() {
        q = q * t + c;
    }
    let e = z * p / q;
    let e = if e > 1.0 {
        1.0
    } else if e < -1.0 {
        -1.0
    } else {
        e
    };
    0.5 * x * (1.0 + e)
}

/// [`finish`] with the activation `f`, and the residual `res` (`tokens · dim`) if `RES`.
#[inline(always)]
fn finish_with<const RES: bool>(
    l: &Layer,
    dim: usize,
    v: &mut Values,
    res: &[f32],
    f: impl Fn(f32) -> f32,
) {
    let e = &mut v.extremes;
    for (lo, hi) in [
        (&mut e.pre_lo, &mut e.pre_hi),
        (&mut e.act_lo, &mut e.act_hi),
        (&mut e.out_lo, &mut e.out_hi),
    ] {
        lo.clear();
        lo.resize(dim, f32::INFINITY);
        hi.clear();
        hi.resize(dim, f32::NEG_INFINITY);
    }
    if dim == 0 {
        return;
    }
    let (bias, scale, shift) = (&l.b[..dim], &l.scale[..dim], &l.shift[..dim]);
    let (plo, phi) = (&mut e.pre_lo[..dim], &mut e.pre_hi[..dim]);
    let (alo, ahi) = (&mut e.act_lo[..dim], &mut e.act_hi[..dim]);
    let (olo, ohi) = (&mut e.out_lo[..dim], &mut e.out_hi[..dim]);
    // Compare-and-keep (a NaN never wins), compiled to `minps`/`maxps`. (Built for AVX2
    // the loop was slower, not faster: it is bound by memory, and LLVM turned the kept
    // extremes into masked stores, slow on AMD's cores.)
    let min = |x: f32, m: f32| if x < m { x } else { m };
    let max = |x: f32, m: f32| if x > m { x } else { m };
    let rows = v.pre.chunks_exact_mut(dim).zip(v.out.chunks_exact_mut(dim));
    for (t, (pre, out)) in rows.enumerate() {
        let (pre, out) = (&mut pre[..dim], &mut out[..dim]);
        let r = if RES {
            &res[t * dim..(t + 1) * dim]
        } else {
            &[][..]
        };
        for j in 0..dim {
            let p = pre[j] + bias[j];
            let a = f(p);
            let mut y = scale[j] * a + shift[j];
            if RES {
                y += r[j];
            }
            pre[j] = p;
            out[j] = y;
            (plo[j], phi[j]) = (min(p, plo[j]), max(p, phi[j]));
            (alo[j], ahi[j]) = (min(a, alo[j]), max(a, ahi[j]));
            (olo[j], ohi[j]) = (min(y, olo[j]), max(y, ohi[j]));
        }
    }
}

/// Channels per register block of the portable depthwise conv.
const DW_BLOCK: usize = 32;

/// Channels per block of [`depthwise_avx2`] (two AVX registers), and output tokens per step:
/// 8 accumulators, and a block's 7 input rows (k = 7, 32 tokens: 14 KiB) stay in L1, where
/// 32-channel blocks (28 KiB) were evicted between neighbouring outputs.
const AVX_BLOCK: usize = 16;
const AVX_TOKENS: usize = 4;

/// The depthwise 'same' conv of `x` (`ht × wt × dim`) with taps `w` (`[ky][kx][c]`) into
/// `pre` (overwritten; the bias comes with the epilogue): per output token and block of channels, the valid taps in
/// (ky, kx) order accumulate in registers. Products and sums are rounded separately (no
/// fused multiply-add), so every CPU gives the same floats ([`depthwise_avx2`] where the
/// CPU has AVX2, the portable loop elsewhere).
fn depthwise(x: &[f32], w: &[f32], g: (usize, usize, usize, usize), pre: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected on this CPU just above; `depthwise_avx2` needs nothing
        // else.
        return unsafe { depthwise_avx2(x, w, g, pre) };
    }
    depthwise_portable(x, w, g, pre, 0);
}

/// [`depthwise_portable`] with its full blocks of 16 channels in two AVX registers (the
/// compiler's own vectorisation of the portable loop spilled and shuffled: 5 GMAC/s, a
/// quarter of a ConvMixer-768/32 calibration): the same products and sums in the same
/// order (`_mm256_mul_ps` then `_mm256_add_ps`, never fused), so the same floats.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn depthwise_avx2(
    x: &[f32],
    w: &[f32],
    (ht, wt, dim, k): (usize, usize, usize, usize),
    pre: &mut [f32],
) {
    let full = dim / AVX_BLOCK * AVX_BLOCK;
    if dim % AVX_BLOCK != 0 {
        // The last, partial block of channels (the whole tensor is only as long as its
        // slices below reach: x and pre hold ht·wt·dim, w k²·dim).
        depthwise_portable(x, w, (ht, wt, dim, k), pre, full);
    }
    let pad = k.saturating_sub(1) / 2;
    assert!(x.len() >= ht * wt * dim && pre.len() >= ht * wt * dim && w.len() >= k * k * dim);
    // Each block's inputs are first copied out to `xb` (16 floats a token), and its k²
    // weight rows to `wb`: read in place, rows `dim` floats apart (3 KiB at dim 768) fall
    // into a handful of L1 sets and evict each other between neighbouring outputs.
    let mut xb = vec![0f32; ht * wt * AVX_BLOCK];
    let mut wb = vec![0f32; k * k * AVX_BLOCK];
    for c0 in (0..full).step_by(AVX_BLOCK) {
        for (d, s) in xb.chunks_exact_mut(AVX_BLOCK).zip(x.chunks_exact(dim)) {
            d.copy_from_slice(&s[c0..c0 + AVX_BLOCK]);
        }
        for (d, s) in wb.chunks_exact_mut(AVX_BLOCK).zip(w.chunks_exact(dim)) {
            d.copy_from_slice(&s[c0..c0 + AVX_BLOCK]);
        }
        for ty in 0..ht {
            let mut tx = 0;
            while tx < wt {
                let o = pre.as_mut_ptr().add((ty * wt + tx) * dim + c0);
                // SAFETY: AVX2 (the caller's); the tokens tx, tx + 1 (< wt where taken) of
                // row ty < ht; xb holds ht·wt tokens and wb k² taps of 16 floats, and pre
                // ht·wt·dim floats with c0 + 16 ≤ dim (its length asserted above).
                unsafe {
                    if tx + AVX_TOKENS <= wt {
                        dw_tokens::<AVX_TOKENS>(&xb, &wb, (ht, wt, k, pad), (ty, tx), o, dim);
                        tx += AVX_TOKENS;
                    } else {
                        dw_tokens::<1>(&xb, &wb, (ht, wt, k, pad), (ty, tx), o, dim);
                        tx += 1;
                    }
                }
            }
        }
    }
}

/// `N` neighbouring output tokens `(ty, tx + t)` of [`depthwise_avx2`]'s block (inputs `xb`,
/// taps `wb`, 16 floats each): each tap's weights loaded once for the `N` tokens, `2·N`
/// independent sums (one token's two would wait on the adder's latency), each token's taps
/// still in (ky, kx) order; the sums stored at `o + t·dim`.
///
/// # Safety
/// AVX2; `xb` holds `ht·wt` tokens and `wb` `k²` taps of 16 floats, `ty < ht`, `tx + N ≤ wt`,
/// and `o + t·dim + 0..16` is writable for `t < N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dw_tokens<const N: usize>(
    xb: &[f32],
    wb: &[f32],
    (ht, wt, k, pad): (usize, usize, usize, usize),
    (ty, tx): (usize, usize),
    o: *mut f32,
    dim: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); AVX_BLOCK / 8]; N];
    for ky in 0..k {
        let y = (ty + ky).wrapping_sub(pad);
        if y >= ht {
            continue;
        }
        for kx in 0..k {
            let xx = (tx + kx).wrapping_sub(pad);
            // SAFETY: tap ky·k + kx < k² of wb; token y·wt + xx + t of xb only where
            // xx + t < wt (so inside row y < ht); AVX2 (the caller's).
            unsafe {
                let ws = wb.as_ptr().add((ky * k + kx) * AVX_BLOCK);
                let wv: [__m256; AVX_BLOCK / 8] =
                    core::array::from_fn(|j| _mm256_loadu_ps(ws.add(8 * j)));
                for (t, a) in acc.iter_mut().enumerate() {
                    let xt = xx.wrapping_add(t);
                    if xt >= wt {
                        continue;
                    }
                    let xs = xb.as_ptr().add((y * wt + xt) * AVX_BLOCK);
                    for (j, a) in a.iter_mut().enumerate() {
                        let p = _mm256_mul_ps(wv[j], _mm256_loadu_ps(xs.add(8 * j)));
                        *a = _mm256_add_ps(*a, p);
                    }
                }
            }
        }
    }
    for (t, a) in acc.iter().enumerate() {
        for (j, a) in a.iter().enumerate() {
            // SAFETY: the caller's o + t·dim + 0..16, t < N; AVX2.
            unsafe { _mm256_storeu_ps(o.add(t * dim + 8 * j), *a) };
        }
    }
}

/// The depthwise conv of channels `from..dim` (all of them: `from` = 0).
#[inline(always)]
fn depthwise_portable(
    x: &[f32],
    w: &[f32],
    (ht, wt, dim, k): (usize, usize, usize, usize),
    pre: &mut [f32],
    from: usize,
) {
    let pad = k.saturating_sub(1) / 2;
    // Channel blocks outermost: a block's k² weight rows stay in L1 over the whole grid.
    let mut c0 = from;
    while c0 < dim {
        let n = DW_BLOCK.min(dim - c0);
        for ty in 0..ht {
            for tx in 0..wt {
                let o = (ty * wt + tx) * dim + c0;
                let mut acc = [0f32; DW_BLOCK];
                for ky in 0..k {
                    let y = (ty + ky).wrapping_sub(pad);
                    if y >= ht {
                        continue;
                    }
                    for kx in 0..k {
                        let xx = (tx + kx).wrapping_sub(pad);
                        if xx >= wt {
                            continue;
                        }
                        let s = (y * wt + xx) * dim + c0;
                        let wo = (ky * k + kx) * dim + c0;
                        if n == DW_BLOCK {
                            let (xs, ws) = (&x[s..s + DW_BLOCK], &w[wo..wo + DW_BLOCK]);
                            for j in 0..DW_BLOCK {
                                acc[j] += ws[j] * xs[j];
                            }
                        } else {
                            for j in 0..n {
                                acc[j] += w[wo + j] * x[s + j];
                            }
                        }
                    }
                }
                pre[o..o + n].copy_from_slice(&acc[..n]);
            }
        }
        c0 += n;
    }
}

/// One layer's stored values.
#[derive(Default)]
struct Values {
    pre: Vec<f32>,
    out: Vec<f32>,
    extremes: Extremes,
}

impl Values {
    /// `n` values each (every one is written before it is read: the GEMM and the
    /// depthwise conv overwrite `pre`, [`finish`] all of `out`).
    fn resize(&mut self, n: usize) {
        self.pre.resize(n, 0.0);
        self.out.resize(n, 0.0);
    }

    fn view(&self) -> LayerValues<'_> {
        LayerValues {
            pre: &self.pre,
            out: &self.out,
            extremes: &self.extremes,
        }
    }
}

/// The buffers of one [`forward_layers`] run: the patches and two layers' values. Kept per
/// thread ([`SCRATCH`]) and reused image after image: allocating them afresh (4 × 1 MiB for
/// a 32 × 32 × 256 model, 12 MiB at 224 × 224 × 768) faulted their pages in for every
/// image, and with several threads the allocator grew and trimmed its per-thread heaps
/// around them (`mprotect`, `madvise`), each a cross-core TLB shoot-down.
#[derive(Default)]
struct Scratch {
    patches: Vec<f32>,
    x: Values,
    r: Values,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Runs `f` on raw HWC pixels `px` and returns the logits, showing every conv layer's
/// values to `visit(layer, values)` (layer 0 = embedding, then depthwise and pointwise per
/// block).
pub fn forward_layers(
    f: &Folded,
    px: &[u8],
    visit: impl FnMut(usize, &LayerValues<'_>),
) -> Vec<f32> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => forward_in(f, px, visit, &mut s),
        // `visit` itself runs a forward pass on this thread: that one gets its own buffers.
        Err(_) => forward_in(f, px, visit, &mut Scratch::default()),
    })
}

/// [`forward_layers`] in the buffers `s` (grown as needed; what they held is overwritten).
fn forward_in(
    f: &Folded,
    px: &[u8],
    mut visit: impl FnMut(usize, &LayerValues<'_>),
    s: &mut Scratch,
) -> Vec<f32> {
    let (ht, wt) = f.grid();
    let (dim, p, c, k) = (f.dim, f.patch, f.in_c, f.kernel);
    let tokens = ht * wt;
    let taps = p * p * c;
    let n = tokens * dim;
    // Embedding: the patches (tap order ky, kx, c, as the weights) times the weights.
    let patches = &mut s.patches;
    patches.resize(tokens * taps, 0.0);
    for (t, patch) in patches.chunks_exact_mut(taps.max(1)).enumerate() {
        let (ty, tx) = (t / wt, t % wt);
        for (ky, dst) in patch.chunks_exact_mut(p * c).enumerate() {
            let row = ((ty * p + ky) * f.in_w + tx * p) * c;
            for (d, s) in dst.iter_mut().zip(&px[row..row + p * c]) {
                *d = f32::from(*s);
            }
        }
    }
    let (x, r) = (&mut s.x, &mut s.r);
    x.resize(n);
    r.resize(n);
    gemm_bt(patches, &f.embed.w, tokens, taps, dim, &mut x.pre);
    finish(&f.embed, f.act, dim, x, None);
    visit(0, &x.view());
    for (i, (dw, pw)) in f.blocks.iter().enumerate() {
        depthwise(&x.out, &dw.w, (ht, wt, dim, k), &mut r.pre);
        finish(dw, f.act, dim, r, Some(&x.out));
        visit(1 + 2 * i, &r.view());
        gemm_bt(&r.out, &pw.w, tokens, dim, dim, &mut x.pre);
        finish(pw, f.act, dim, x, None);
        visit(2 + 2 * i, &x.view());
    }
    let mut mean = vec![0f32; dim];
    for row in x.out.chunks_exact(dim.max(1)) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= tokens as f32);
    let mut logits = vec![0f32; f.classes()];
    gemm_bt(&mean, &f.head_w, 1, dim, f.classes(), &mut logits);
    for (l, b) in logits.iter_mut().zip(&f.head_b) {
        *l += b;
    }
    logits
}

/// The logits of `f` for raw HWC pixels `px`.
pub fn forward(f: &Folded, px: &[u8]) -> Vec<f32> {
    forward_layers(f, px, |_, _| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 depthwise gives the portable loop's floats bit for bit: full and partial
    /// channel blocks, odd and even grid widths (its 2-token and 1-token steps), kernels
    /// larger than the grid, even kernels.
    #[test]
    fn depthwise_avx2_equals_the_portable_loop() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            let mut seed = 0x5eed_u64;
            let mut next = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            };
            for (ht, wt, dim, k) in [
                (5, 7, 32, 3),
                (6, 6, 48, 5),
                (3, 9, 100, 7),
                (2, 1, 64, 9),
                (8, 5, 33, 4),
                (1, 2, 31, 3),
            ] {
                let x: Vec<f32> = (0..ht * wt * dim).map(|_| next()).collect();
                let w: Vec<f32> = (0..k * k * dim).map(|_| next()).collect();
                let mut want = vec![f32::NAN; ht * wt * dim];
                depthwise_portable(&x, &w, (ht, wt, dim, k), &mut want, 0);
                let mut got = vec![f32::NAN; ht * wt * dim];
                // SAFETY: AVX2 was detected above.
                unsafe { depthwise_avx2(&x, &w, (ht, wt, dim, k), &mut got) };
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{ht}x{wt}x{dim} k{k}");
            }
            return;
        }
        eprintln!("no AVX2 here: only the portable loop runs");
    }
}
