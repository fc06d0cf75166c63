//! x86_64 AVX-512 VNNI int8 GEMM (pointwise conv, patch embedding, MLP-Mixer MLPs), named by
//! ISA and tile shape and tested bit for bit against [`reference::gemm_i8`] by the shared
//! suite: [`gemm_i8_avx512vnni_8x32c4`], 8 tokens × 32 outputs per micro-tile over input
//! groups of 4, reached through [`GemmI8Avx2`](super::x86::GemmI8Avx2) where
//! [`Isa::Avx512Vnni`](crate::kernels::Isa::Avx512Vnni) was detected.
//!
//! The packed weight layout's 16 outputs × 4 inputs of one input group are one 64-byte
//! vector, which is exactly `VPDPBUSD`'s operand: per 32-bit lane (output) it adds the four
//! products of 4 unsigned bytes by 4 signed bytes to the lane's sum. Its unsigned operand is
//! the weights with their sign bit flipped (`w + 128`, one `VPXORD` per weight vector), its
//! signed one the token's 4 inputs broadcast to the 16 lanes, so that each lane gets
//! `Σ (w + 128)·x = Σ w·x + 128·Σ x`; the token's `128·Σ x` (taken when its inputs are
//! copied into the tile buffer) is subtracted at the end. `VPDPBUSD` does not saturate and
//! everything is computed modulo 2³², so the sum is the reference's wrapping sum exactly,
//! whatever the order; the reader's accumulator bound keeps it in range anyway. (The other
//! way round, inputs made unsigned, would need a correction per output, `128·Σ w`, that is
//! either stored per layer or recomputed per tile.) 8 tokens × 2 weight vectors: 16
//! accumulators, per input group 2 weight loads and flips and 8 broadcasts for 16
//! `VPDPBUSD` (256 multiply-adds each way). The tile's sums then go through the AVX2
//! epilogue (`quant::x86`) 8 channels at a time, so the requantisation is the AVX2
//! kernels' exactly.
//!
//! The pointwise conv in place runs the same tiles: each tile's inputs are copied into the
//! tile buffer before its outputs overwrite them.
//!
//! Speed: not measured. The machine these kernels were written on has no AVX-512; they are
//! tested under Bochs' Tiger Lake model (`tools/avx512-emu/run.sh`, CI's
//! `x86-avx512-bochs` stage), which checks results, not time.
//!
//! Safety: as [`super::x86`]: [`GemmI8Avx2::new`](super::x86::GemmI8Avx2::new) checks the
//! layer and the CPU, `run`/`pw_inplace` the activations, once per call; the `unsafe fn`s
//! state in `# Safety` what they rely on, and each `unsafe` block which check bounds its
//! pointer accesses.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::x86::finish_c8;
use crate::kernels::quant::x86::Epi;
use crate::kernels::reference::{self, QuantLayer};
use crate::kernels::{PW_KR, PW_NR};
use crate::Activation;

/// Input bytes of one token tile on the stack (16 KiB): a tile has `min(8, XBUF / kp)`
/// tokens (`kp`: `k` rounded up to 4), so layers with `k ≤ 2048` run 8 tokens per tile and
/// those up to `k ≤ 16384` fewer; larger `k` runs the AVX2 kernel.
pub(super) const XBUF: usize = 16384;

/// Tokens per micro-tile.
const MR: usize = 8;

/// int8 GEMM with AVX-512 VNNI: tiles of 8 tokens × 32 outputs, inputs in groups of 4. Same
/// arguments and result as [`reference::gemm_i8`]; runs the AVX2 kernel where the CPU has no
/// AVX-512 VNNI, and the reference where the layer fits neither.
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::avx512, gemm_packed_len, reference::{self, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n, tokens) = (40, 24, 11);
/// let w: Vec<i8> = (0..gemm_packed_len(n, k)).map(|i| (i % 7) as i8 - 3).collect();
/// let bias = vec![0u8; 4 * n];
/// // Field-major [m_pre, sh_pre, m_post, b_post, sh_post, m_res] per channel: ReLU(acc / 2).
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let x: Vec<i8> = (0..tokens * k).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut fast, mut slow) = (vec![0i8; tokens * n], vec![0i8; tokens * n]);
/// avx512::gemm_i8_avx512vnni_8x32c4(&x, tokens, k, n, &l, Activation::Relu, &mut fast);
/// reference::gemm_i8(&x, tokens, k, n, &l, Activation::Relu, &mut slow);
/// assert_eq!(fast, slow);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_avx512vnni_8x32c4(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    match super::x86::GemmI8Avx2::new(l, k, n, act, true) {
        Some(g) => g.run(x, tokens, out),
        None => reference::gemm_i8(x, tokens, k, n, l, act, out),
    }
}

/// The layer on `tokens` rows: from `x` (`tokens·k` bytes) into `out` (`tokens·e.dim`), or,
/// where `x` is `None`, in place on `out` (then `k = e.dim`).
///
/// # Safety
/// The CPU has AVX2 and AVX-512 F, BW, VL and VNNI; `x` holds `tokens·k` bytes (`None`: `k
/// = e.dim`) and `out` `tokens·e.dim`; `l.w` holds the `gemm_packed_len(e.dim, k)` packed
/// weights; `k` rounded up to 4 is at most [`XBUF`]; `e` was built from `l` (`Epi::new`)
/// with `GELU = e.gelu`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn gemm<const GELU: bool>(
    x: Option<&[i8]>,
    tokens: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    // 1 ≤ tile ≤ 8: kp ≤ XBUF (the caller's).
    let tile = (XBUF / kp.max(1)).clamp(1, MR);
    let mut buf = MaybeUninit::<[i8; XBUF]>::uninit();
    let xb = buf.as_mut_ptr().cast::<i8>();
    let mut t = 0;
    while t < tokens {
        let mt = tile.min(tokens - t);
        let mut corr = [0i32; MR];
        for (m, c) in corr.iter_mut().enumerate().take(mt) {
            // Row t + m < tokens of the inputs: inside x (or out, in place) by the caller's
            // lengths.
            let src = x.unwrap_or(out);
            let Some(row) = src.get((t + m) * k..(t + m + 1) * k) else {
                return;
            };
            // SAFETY: row m < mt ≤ tile of kp bytes at xb + m·kp: inside the buffer (tile·kp
            // ≤ XBUF); AVX-512 (the caller's).
            *c = unsafe { copy_row(row, kp, xb.add(m * kp)) };
        }
        // SAFETY: the buffer holds mt rows of kp bytes (written above), t + mt ≤ tokens;
        // the rest is the caller's.
        unsafe {
            let xb = xb.cast_const();
            match mt {
                8 => tile_rows::<8, GELU>(xb, kp, &corr, t, l, e, out),
                7 => tile_rows::<7, GELU>(xb, kp, &corr, t, l, e, out),
                6 => tile_rows::<6, GELU>(xb, kp, &corr, t, l, e, out),
                5 => tile_rows::<5, GELU>(xb, kp, &corr, t, l, e, out),
                4 => tile_rows::<4, GELU>(xb, kp, &corr, t, l, e, out),
                3 => tile_rows::<3, GELU>(xb, kp, &corr, t, l, e, out),
                2 => tile_rows::<2, GELU>(xb, kp, &corr, t, l, e, out),
                _ => tile_rows::<1, GELU>(xb, kp, &corr, t, l, e, out),
            }
        }
        t += mt;
    }
}

/// Copies `row` to `dst`, zeros up to `kp`, and returns `128 · Σ row` (wrapping): the
/// correction of the flipped weights' sums ([module docs](self)).
///
/// # Safety
/// `dst` points at `kp ≥ row.len()` writable bytes.
#[inline(always)]
unsafe fn copy_row(row: &[i8], kp: usize, dst: *mut i8) -> i32 {
    let mut sum = 0i32;
    for (i, &v) in row.iter().enumerate() {
        // SAFETY: i < row.len() ≤ kp.
        unsafe { dst.add(i).write(v) };
        sum = sum.wrapping_add(i32::from(v));
    }
    for i in row.len()..kp {
        // SAFETY: i < kp.
        unsafe { dst.add(i).write(0) };
    }
    sum.wrapping_mul(128)
}

/// `M` (1..=8) tokens (rows of `kp` bytes at `xb`, corrections `corr`) × all outputs, 32 at a
/// time ([`block`]), then the remaining 16.
///
/// # Safety
/// As [`gemm`], with `t + M ≤ tokens` and `xb` holding the `M` rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_rows<const M: usize, const GELU: bool>(
    xb: *const i8,
    kp: usize,
    corr: &[i32; MR],
    t: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let blocks = e.dim.div_ceil(PW_NR);
    let mut b = 0;
    // SAFETY: blocks b, b + 1 < blocks, i.e. 16b < n; the caller's conditions.
    unsafe {
        while b + 2 <= blocks {
            block::<M, 2, GELU>(xb, kp, corr, t, b, l, e, out);
            b += 2;
        }
        if b < blocks {
            block::<M, 1, GELU>(xb, kp, corr, t, b, l, e, out);
        }
    }
}

/// `M` tokens × the `B` 16-output blocks from `b0`: per input group `B` weight vectors
/// (sign bits flipped) and `M` broadcast input groups into `M·B` accumulators, then each
/// token's correction subtracted and the epilogue 8 channels at a time.
///
/// # Safety
/// As [`tile_rows`], with `16·(b0 + B − 1) < n`.
#[inline(always)]
// Indices: m < M and j < B are loop counters over the const lengths of `acc` (M × B), `v`
// and `sums` (M), and corr (MR ≥ M).
#[allow(clippy::indexing_slicing, clippy::needless_range_loop)]
#[allow(clippy::too_many_arguments)]
unsafe fn block<const M: usize, const B: usize, const GELU: bool>(
    xb: *const i8,
    kp: usize,
    corr: &[i32; MR],
    t: usize,
    b0: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    let groups = kp / PW_KR;
    // SAFETY: block b0 + j < n / 16 rounded up spans bytes (b0 + j)·16·kp + 64g + 0..64, g
    // < groups: inside the packed weights (the caller's gemm_fits); input group g of row m
    // < M at xb + m·kp + 4g + 0..4: inside the caller's rows; AVX-512 (the caller's).
    let acc: [[__m512i; B]; M] = unsafe {
        let flip = _mm512_set1_epi8(-128);
        let w = l.w.as_ptr();
        let mut acc = [[_mm512_setzero_si512(); B]; M];
        for g in 0..groups {
            let wv: [__m512i; B] = core::array::from_fn(|j| {
                let at = w.add((b0 + j) * PW_NR * kp + 64 * g);
                _mm512_xor_si512(_mm512_loadu_si512(at.cast()), flip)
            });
            for (m, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(xb.add(m * kp + 4 * g).cast::<i32>().read_unaligned());
                for (j, a) in a.iter_mut().enumerate() {
                    *a = _mm512_dpbusd_epi32(*a, wv[j], xv);
                }
            }
        }
        acc
    };
    for j in 0..B {
        for half in 0..2 {
            let o0 = (b0 + j) * PW_NR + 8 * half;
            if o0 >= n {
                break;
            }
            // SAFETY: AVX-512 and AVX2 (the caller's); register operations only.
            let v: [__m256i; M] = core::array::from_fn(|m| unsafe {
                let a = _mm512_sub_epi32(acc[m][j], _mm512_set1_epi32(corr[m]));
                if half == 0 {
                    _mm512_castsi512_si256(a)
                } else {
                    _mm512_extracti64x4_epi64::<1>(a)
                }
            });
            // SAFETY: o0 < n; the caller's t + M ≤ tokens, out of tokens·n bytes, e built
            // from l with GELU = e.gelu; AVX2 (the caller's).
            unsafe { finish_c8::<M, GELU>(v, o0, t, l, e, out) };
        }
    }
}
