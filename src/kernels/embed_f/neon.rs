//! AArch64 NEON float patch embedding (always f32 arithmetic, outputs narrowed to the
//! layer's storage), bit-exact with [`reference::embed_f`]: 4 patches at a time gathered as
//! f32 and multiplied by the f32 GEMM tile of `pw_f`.
//!
//! Safety: the safe entry point [`embed`] checks every length once per call, in checked
//! arithmetic, and returns `false` without touching anything where a layer does not fit;
//! the `unsafe fn` below states in `# Safety` what it relies on.

use crate::kernels::float::neon::{arr, Params};
use crate::kernels::pw_f::neon::fgemm_f32_tile;
use crate::kernels::reference::{FloatArith, FloatLayer};
use crate::kernels::{EmbedGeom, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Patch embedding of tokens `range` into `out` (its first token's outputs first) with the
/// NEON kernels (always f32 arithmetic, outputs narrowed to `M`'s storage), 4 patches at a
/// time gathered into `scratch` as f32; `false`, touching nothing, where they do not take
/// it ([`Params::new`], a patch size that does not fit the image, `scratch` shorter than 4
/// patches, `px` shorter than the image, `range` not inside the grid or `out` shorter than
/// `range.len() · dim`).
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
    // Every size in checked arithmetic: a wrapped product must not pass a length check.
    let (p, c) = (g.patch, g.in_c);
    if p == 0 || g.in_h < p || g.in_w < p {
        return false;
    }
    let (wt, ht) = ((g.in_w - p) / p + 1, (g.in_h - p) / p + 1);
    // The kernels write f16 (2 bytes) where M::HALF, else f32.
    let esz = if M::HALF { 2 } else { 4 };
    let Ok(out_b) = bytemuck::try_cast_slice_mut::<M::Act, u8>(out) else {
        return false;
    };
    let geom = (|| {
        let k = p.checked_mul(p)?.checked_mul(c)?;
        let tokens = ht.checked_mul(wt)?;
        let row_bytes = dim.checked_mul(esz)?;
        let ok = k > 0
            && range.start <= range.end
            && range.end <= tokens
            && scratch.len() >= k.checked_mul(4)?
            && px.len() >= g.in_h.checked_mul(g.in_w)?.checked_mul(c)?
            && out_b.len() >= range.len().checked_mul(row_bytes)?;
        let w_elems = dim.div_ceil(16).checked_mul(16)?.checked_mul(k);
        let prm = Params::new::<W, M>(isa, dim, l, w_elems, false)?;
        ok.then_some((k, row_bytes, prm))
    })();
    let Some((k, row_bytes, prm)) = geom else {
        return false;
    };
    // k = p·p·c > 0, so p·c > 0 too: every chunk size below is positive.
    let pc = p * c;
    let mut t = range.start;
    while t < range.end {
        let count = (range.end - t).min(4);
        // Gather patches t..t + count (rows of p·c pixels) into scratch rows of k f32. The
        // pixel rows are inside px: (ty·p + ky) < ht·p ≤ in_h and tx·p + p ≤ in_w, checked
        // above to span in_h·in_w·c bytes.
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
        // Rows past `count` are never written (they repeat the last real one).
        let base = out_b.as_mut_ptr();
        let o0 = t - range.start;
        let outs = core::array::from_fn(|j| base.wrapping_add((o0 + j.min(count - 1)) * row_bytes));
        let s = scratch.as_ptr();
        // SAFETY: count ≤ 4 rows of k f32 in scratch (scratch ≥ 4k, checked above); each
        // outs[j] heads row t + j − range.start < range.len() of out, dim elements of esz
        // bytes (out ≥ range.len()·dim·esz); Params::new checked dim % 16 == 0, the dim·k weights of W::HALF
        // (the padded 16-output blocks: dim is a multiple of 16) and the dim channels.
        unsafe {
            match (W::HALF, M::HALF) {
                (false, false) => embed_rows::<false, false>(s, count, k, outs, dim, &prm, act),
                (false, true) => embed_rows::<false, true>(s, count, k, outs, dim, &prm, act),
                (true, false) => embed_rows::<true, false>(s, count, k, outs, dim, &prm, act),
                (true, true) => embed_rows::<true, true>(s, count, k, outs, dim, &prm, act),
            }
        }
        t += count;
    }
    true
}

/// Patch embedding (always f32 arithmetic): `rows` holds `count ≤ 4` gathered patches of
/// `k` pixel values each (as f32); outputs go to `out[j]` (`n` elements, f32 or f16).
///
/// # Safety
/// `count ≤ 4`, `rows` points at `count·k` readable f32, each `out[j]` with `j < count` at
/// `n` writable elements (f16 if `OUT_HALF`, else f32), `n % 16 == 0`, `n` at most the
/// channel count `p` was built for, and `p.w` holds `n·k` weight elements (f16 if `HALF`).
#[target_feature(enable = "neon")]
unsafe fn embed_rows<const HALF: bool, const OUT_HALF: bool>(
    rows: *const f32,
    count: usize,
    k: usize,
    out: [*mut u8; 4],
    n: usize,
    p: &Params,
    act: Activation,
) {
    // SAFETY: row j < count of rows is rows + j·k .. + k; out[j] only for j < count.
    unsafe {
        if count == 4 {
            let xs = arr!(4, |j| rows.add(j * k));
            fgemm_f32_tile::<4, HALF, OUT_HALF>(xs, out, k, n, p, act);
        } else {
            for (j, o) in out.iter().enumerate().take(count) {
                fgemm_f32_tile::<1, HALF, OUT_HALF>([rows.add(j * k)], [*o], k, n, p, act);
            }
        }
    }
}
