//! x86_64 AVX2 float patch embedding (always f32 arithmetic, outputs narrowed to the
//! layer's storage by `VCVTPS2PH` where it is f16), bit-exact with [`reference::embed_f`]:
//! 6 patches at a time gathered as f32 and multiplied by the GEMM tile of `pw_f`,
//! `fgemm_avx2_f32_6x16` (f32 weights, or f16 widened by `VCVTPH2PS`), any `dim`.
//!
//! [`reference::embed_f`]: crate::kernels::reference::embed_f
//!
//! Safety: the safe entry point [`embed`] checks every length once per call, in checked
//! arithmetic, and returns `false` without touching anything where a layer does not fit;
//! the `unsafe fn`s below state in `# Safety` what they rely on.

use crate::kernels::float::x86::Params;
use crate::kernels::pw_f::x86::{fgemm_block, MR};
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{fgemm_packed_len_checked, EmbedGeom, Isa, FGEMM_NR};
use crate::le::FloatWeights;
use crate::Activation;

/// Patch embedding of tokens `range` into `out` (its first token's outputs first) with the
/// AVX2 kernels (always f32 arithmetic, outputs narrowed to `M`'s storage), 6 patches at a
/// time gathered into `scratch` as f32 (1 at a time where it holds fewer than 6); `false`,
/// touching nothing, where they do not take it ([`Params::new`], a patch size that does not
/// fit the image, `scratch` shorter than one patch, `px` shorter than the image, `range`
/// not inside the grid or `out` shorter than `range.len() · dim`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn embed<W: FloatWeights, M: FloatArith>(
    px: &[u8],
    g: EmbedGeom,
    dim: usize,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    scratch: &mut [f32],
    (isa, range): (Isa, core::ops::Range<usize>),
) -> bool {
    // The kernels write f16 (2 bytes) where M::HALF, else f32.
    let esz = if M::HALF { 2 } else { 4 };
    let Ok(out_b) = bytemuck::try_cast_slice_mut::<M::Act, u8>(out) else {
        return false;
    };
    // Every size in checked arithmetic: a wrapped product must not pass a length check.
    let k = g.taps();
    let fits = (|| {
        // The grid's outputs as if `out` held them all; it holds `range`, checked next.
        let (ht, wt) = g.grid(px.len(), dim, usize::MAX)?;
        let prm = Params::new::<W>(isa, dim, l, fgemm_packed_len_checked(dim, k))?;
        let part = range.len().checked_mul(dim)?;
        (k > 0
            && scratch.len() >= k
            && range.start <= range.end
            && range.end <= ht * wt
            && out_b.len() / esz >= part)
            .then_some((wt, prm))
    })();
    let Some((wt, prm)) = fits else {
        return false;
    };
    // grid() checked 0 < p ≤ in_h, in_w, the image inside px and no overflow of any index
    // below those sizes; range.len()·dim outputs are inside out; k = p·p·c > 0, so p·c > 0
    // too.
    let (p, c) = (g.patch, g.in_c);
    let pc = p * c;
    let rows = if scratch.len() / k >= MR { MR } else { 1 };
    let mut t = range.start;
    while t < range.end {
        let count = (range.end - t).min(rows);
        // Gather patches t..t + count (rows of p·c pixels) into scratch rows of k f32.
        for (j, patch) in scratch.chunks_exact_mut(k).take(count).enumerate() {
            let (ty, tx) = ((t + j) / wt, (t + j) % wt);
            for (ky, dst) in patch.chunks_exact_mut(pc).enumerate() {
                let row = ((ty * p + ky) * g.in_w + tx * p) * c;
                if let Some(src) = px.get(row..row + pc) {
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d = f32::from(*v);
                    }
                }
            }
        }
        let s = scratch.as_ptr();
        let o = out_b
            .as_mut_ptr()
            .wrapping_add((t - range.start) * dim * esz);
        // SAFETY: count ≤ rows patches of k f32 in scratch (scratch ≥ rows·k, checked
        // above); rows t − range.start .. + count ≤ range.len() of out, dim elements of esz
        // bytes each (out ≥ range.len()·dim elements, checked above); Params::new checked the CPU's features and
        // the ⌈dim/16⌉·16·k packed weights of W::HALF, and p was built for dim.
        unsafe {
            match (W::HALF, M::HALF) {
                (false, false) => embed_rows::<false, false>(s, count, k, o, &prm, act),
                (false, true) => embed_rows::<false, true>(s, count, k, o, &prm, act),
                (true, false) => embed_rows::<true, false>(s, count, k, o, &prm, act),
                (true, true) => embed_rows::<true, true>(s, count, k, o, &prm, act),
            }
        }
        t += count;
    }
    true
}

/// Patch embedding (always f32 arithmetic) of `count ≤ 6` gathered patches of `k` pixel
/// values each (as f32) at `rows`, into `count` consecutive output rows from `out` (`n`
/// elements each, f32 or f16).
///
/// # Safety
/// `p` holds (so the CPU has AVX2, FMA and F16C), with `n` channels; `count ≤ 6`, `rows`
/// points at `count·k` readable f32, `out` at `count·n` writable elements (f16 if
/// `OUT_HALF`, else f32), and `p.w` holds the `⌈n/16⌉·16·k` packed weight elements (f16 if
/// `HALF`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn embed_rows<const HALF: bool, const OUT_HALF: bool>(
    rows: *const f32,
    count: usize,
    k: usize,
    out: *mut u8,
    p: &Params,
    act: Activation,
) {
    let n = p.dim();
    let esz = if OUT_HALF { 2 } else { 4 };
    // Row j < count of rows is rows + j·k .. + k, of out out + j·n·esz .. + n·esz.
    let xs: [*const f32; MR] = core::array::from_fn(|j| rows.wrapping_add(j * k));
    let os: [*mut u8; MR] = core::array::from_fn(|j| out.wrapping_add(j * n * esz));
    for ob in 0..n.div_ceil(FGEMM_NR) {
        // SAFETY: the rows above, only j < count; 16·ob < n; the rest is the caller's.
        unsafe {
            if count == MR {
                fgemm_block::<MR, HALF, OUT_HALF>(xs, os, k, ob, p, act);
            } else {
                for (x, o) in xs.into_iter().zip(os).take(count) {
                    fgemm_block::<1, HALF, OUT_HALF>([x], [o], k, ob, p, act);
                }
            }
        }
    }
}
