//! The AVX2 int8 epilogue shared by the AVX2 GEMM and depthwise kernels: the layer's
//! parameters as raw pointers ([`Epi`], checked once per call), the vector epilogue of 8
//! channels for 1..=8 tokens (`epilogue_c8`, bit-exact with [`epilogue_i8`]) and the scalar
//! finish of a partial 8-channel block.
//!
//! AVX2 has no `SQRDMULH`, no rounding shift and no 64-bit arithmetic shift; each step of
//! [`epilogue_i8`] is emulated exactly on 8 i32 lanes, relying on the blob reader's ranges
//! ([`layer_fits`] checks them, so a layer outside them runs the reference):
//!
//! * `SQRDMULH(x, m)` = `(x·m + 2^30) >> 31`: `VPMULDQ` multiplies the even lanes (and,
//!   after a 32-bit shift, the odd ones) into i64; the sum's bits 31..62 are the result,
//!   which fits an i32 for `m ≥ 0` (no saturation case: that needs `x = m = −2^31`), so a
//!   logical 64-bit shift extracts them (`VPSRLQ` by 31 for even lanes, `VPSLLQ` by 1 for
//!   odd ones, then `VPBLENDD`);
//! * the saturating left shift for `sh_pre < 0` (by 1..=8): `VPSLLVD`, and where shifting
//!   back (`VPSRAVD`) does not give `x` again, `i32::MAX` or `i32::MIN` by the sign of `x`;
//! * `rshr(v, s)` = `(v + 2^(s−1)) >> s` for `s ≥ 1` is `(v >> s) + ((v >> (s − 1)) & 1)`
//!   (round half up is adding the last bit shifted out), with no overflow; `VPSRAVD` +
//!   `VPSRLVD`, whose count `s − 1` wraps to a huge one (giving 0) for `s = 0`;
//! * GELU: `clamp(zp_z + v, −128, 127)` on a `v` first clamped to ±256 (beyond which the
//!   result saturates anyway), the table by two `VPGATHERDD` of 4 bytes at `lo + i` and
//!   `hi + i − 3` (both inside the 512-byte table), the i16 rebuilt from the two bytes;
//! * `a·m_post + (x_res − zp_in)·m_res + b_post` by `VPMULLD` (exact: the reader bounds the
//!   sum below 2^31), `rshr` by `sh_post`;
//! * `clamp(zp_out + v, −128, 127)` by `VPACKSSDW` (to i16, saturating), `VPADDSW zp_out`,
//!   `VPACKSSWB` (to i8, saturating): an i16-saturated `v` stays out of i8 range after
//!   adding a zero point, so the result is the reference's.
//!
//! Safety: [`Epi::new`] checks the layer's sections; the `unsafe fn`s say in `# Safety` what
//! else they rely on (always: the CPU has AVX2, which their callers, `#[target_feature]`
//! kernels reached only where [`Isa::Avx2`](crate::kernels::Isa::Avx2) was detected,
//! guarantee), and each `unsafe` block which check bounds its pointer accesses. These
//! helpers have no `#[target_feature]` of their own (so that they can be
//! `#[inline(always)]`): they are inlined into the AVX2 kernels.

use core::arch::x86_64::*;

use super::reference::{epilogue_i8, QuantLayer};
use crate::Activation;

/// What the vector epilogue relies on for a layer with `n` outputs: `n` biases, exactly
/// `6·n` requant fields, zero points in i8 range, for GELU the table's two 256-byte planes,
/// and every requantisation field within the blob reader's ranges (`0 ≤ m_pre`,
/// `−8 ≤ sh_pre ≤ 31`, `|m_post| ≤ 2^14`, `|b_post| ≤ 2^29`, `0 ≤ sh_post ≤ 30`,
/// `|m_res| ≤ 2^20`), under which the emulation above is exact.
pub(crate) fn layer_fits(l: &QuantLayer<'_>, act: Activation, n: usize) -> bool {
    let zp = |z: i32| (-128..=127).contains(&z);
    let sections = (act == Activation::Relu || l.table.len() >= 512)
        && n.checked_mul(4).is_some_and(|len| l.bias.0.len() >= len)
        && n.checked_mul(24) == Some(l.requant.0.len())
        && zp(l.zp_in)
        && zp(l.zp_out)
        && zp(l.zp_z);
    sections
        && (0..n).all(|o| {
            let r = l.requant(o);
            r.m_pre >= 0
                && (-8..=31).contains(&r.sh_pre)
                && (-(1 << 14)..=1 << 14).contains(&r.m_post)
                && (-(1 << 29)..=1 << 29).contains(&r.b_post)
                && (0..=30).contains(&r.sh_post)
                && (-(1 << 20)..=1 << 20).contains(&r.m_res)
        })
}

/// What the vector epilogue reads of one layer, as raw pointers, built once per kernel
/// call, only by [`Epi::new`] (its private fields keep any other module from building one):
/// so `bias` always points at `dim` i32, `rq` at `6·dim` i32 and, where `gelu`, `table` at
/// 512 bytes, and every field is within the ranges [`layer_fits`] checks.
#[derive(Clone, Copy)]
pub(crate) struct Epi {
    /// `dim` i32 biases (little-endian, which x86 is).
    bias: *const i32,
    /// `6 · dim` i32 requant fields, field-major: field `k` of channel `o` at `k·dim + o`.
    rq: *const i32,
    /// Output channels.
    pub(crate) dim: usize,
    /// 512 bytes (low plane, high plane) for GELU; unused for ReLU.
    table: *const u8,
    /// Whether the layer's activation is a GELU (whose table `layer_fits` checked).
    pub(crate) gelu: bool,
    /// Whether some channel has `sh_pre < 0` (a saturating left shift); layers without one
    /// skip it.
    lsh: bool,
    /// Zero point of the layer input (the depthwise padding value).
    pub(crate) zp_in: i8,
    zp_z: i32,
    zp_out: i16,
}

impl Epi {
    /// Pointers into `l` for `dim` outputs with activation `act`, or `None` where
    /// [`layer_fits`] fails.
    pub(crate) fn new(l: &QuantLayer<'_>, act: Activation, dim: usize) -> Option<Epi> {
        layer_fits(l, act, dim).then(|| Epi {
            bias: l.bias.0.as_ptr().cast(),
            rq: l.requant.0.as_ptr().cast(),
            dim,
            table: l.table.as_ptr(),
            gelu: act != Activation::Relu,
            lsh: (0..dim).any(|o| l.requant.at(dim + o) < 0),
            // In −128..=127 (layer_fits), so the narrowings are exact.
            zp_in: l.zp_in.clamp(-128, 127) as i8,
            zp_z: l.zp_z,
            zp_out: l.zp_out.clamp(-128, 127) as i16,
        })
    }

    /// The biases of channels `o0..o0 + 8`.
    ///
    /// # Safety
    /// The CPU has AVX2 and `o0 + 8 ≤ dim`.
    #[inline(always)]
    pub(crate) unsafe fn bias8(&self, o0: usize) -> __m256i {
        // SAFETY: o0 + 8 ≤ dim i32 are readable (caller); AVX2 (caller).
        unsafe { _mm256_loadu_si256(self.bias.add(o0).cast()) }
    }
}

/// `rshr(v, s)` on 8 lanes for shift counts `s` in 0..=31 (see the module docs).
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn rshr8(v: __m256i, s: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 arithmetic (the caller's AVX2).
    unsafe {
        let one = _mm256_set1_epi32(1);
        let last = _mm256_srlv_epi32(v, _mm256_sub_epi32(s, one));
        _mm256_add_epi32(_mm256_srav_epi32(v, s), _mm256_and_si256(last, one))
    }
}

/// `SQRDMULH(x, m)` on 8 lanes for `m ≥ 0` (see the module docs); `m_odd` is `m` shifted
/// right by 32 bits in each 64-bit lane.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn sqrdmulh8(x: __m256i, m: __m256i, m_odd: __m256i) -> __m256i {
    // SAFETY: register-only AVX2 arithmetic (the caller's AVX2).
    unsafe {
        let round = _mm256_set1_epi64x(1 << 30);
        let even = _mm256_add_epi64(_mm256_mul_epi32(x, m), round);
        let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64::<32>(x), m_odd), round);
        _mm256_blend_epi32::<0b1010_1010>(
            _mm256_srli_epi64::<31>(even),
            _mm256_slli_epi64::<1>(odd),
        )
    }
}

/// The int8 epilogue ([`epilogue_i8`]) of 8 channels `o0..o0 + 8` for `MR` tokens, bit-exact
/// with the reference. `acc[m]` holds token `m`'s accumulators (bias included) of the 8
/// channels in order; `res[m]`, when given, points at its 8 residual input bytes; `out[m]`
/// at its 8 output bytes.
///
/// # Safety
/// The CPU has AVX2; `o0 + 8 ≤ e.dim`, `GELU` only where `e.gelu` (so that its table
/// exists), each `out[m]` points at 8 writable bytes and each `res[m]` at 8 readable ones.
/// (`e`'s other pointers hold `dim` channels by construction, see [`Epi`].)
#[inline(always)]
// Indices: m < MR and m + 1 < MR (checked in the loop) over the const length MR of `acc`,
// `res`, `out` and `v`.
#[allow(clippy::indexing_slicing)]
pub(crate) unsafe fn epilogue_c8<const MR: usize, const GELU: bool>(
    e: &Epi,
    o0: usize,
    acc: [__m256i; MR],
    res: Option<[*const i8; MR]>,
    out: [*mut i8; MR],
) {
    // SAFETY: every load reads channels o0..o0 + 8 ≤ dim of the dim-long fields k·dim ..
    // (k < 6, inside the 6·dim fields), the 512-byte table (GELU, e.gelu: the gathers read
    // bytes i..i + 4 and 253 + i..257 + i for i ≤ 255, inside it) or res[m][0..8]; every
    // store writes out[m][0..8]; the rest is register-only AVX2 (the caller's).
    unsafe {
        let field = |k: usize| _mm256_loadu_si256(e.rq.add(k * e.dim + o0).cast());
        let zero = _mm256_setzero_si256();
        let sh = field(1);
        let mut v = acc;
        if e.lsh {
            let left = _mm256_max_epi32(_mm256_sub_epi32(zero, sh), zero);
            let max = _mm256_set1_epi32(i32::MAX);
            for x in v.iter_mut() {
                let y = _mm256_sllv_epi32(*x, left);
                let same = _mm256_cmpeq_epi32(_mm256_srav_epi32(y, left), *x);
                let sat = _mm256_xor_si256(_mm256_srai_epi32::<31>(*x), max);
                *x = _mm256_blendv_epi8(sat, y, same);
            }
        }
        let m_pre = field(0);
        let m_odd = _mm256_srli_epi64::<32>(m_pre);
        let right = _mm256_max_epi32(sh, zero);
        for x in v.iter_mut() {
            *x = rshr8(sqrdmulh8(*x, m_pre, m_odd), right);
        }
        // The activation: i16 values in i32 lanes.
        if GELU {
            let zp_z = _mm256_set1_epi32(e.zp_z);
            let (lo, hi) = (_mm256_set1_epi32(-128), _mm256_set1_epi32(127));
            let (lo2, hi2) = (_mm256_set1_epi32(-256), _mm256_set1_epi32(256));
            let c128 = _mm256_set1_epi32(128);
            let (byte, byte1) = (_mm256_set1_epi32(0xff), _mm256_set1_epi32(0xff00));
            let lo_plane = e.table.cast::<i32>();
            let hi_plane = e.table.add(253).cast::<i32>();
            for x in v.iter_mut() {
                let t = _mm256_min_epi32(_mm256_max_epi32(*x, lo2), hi2);
                let z = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(t, zp_z), lo), hi);
                let i = _mm256_add_epi32(z, c128);
                let l8 = _mm256_i32gather_epi32::<1>(lo_plane, i);
                let h8 = _mm256_i32gather_epi32::<1>(hi_plane, i);
                let w = _mm256_or_si256(
                    _mm256_and_si256(l8, byte),
                    _mm256_and_si256(_mm256_srli_epi32::<16>(h8), byte1),
                );
                *x = _mm256_srai_epi32::<16>(_mm256_slli_epi32::<16>(w));
            }
        } else {
            let max16 = _mm256_set1_epi32(i32::from(i16::MAX));
            for x in v.iter_mut() {
                *x = _mm256_min_epi32(_mm256_max_epi32(*x, zero), max16);
            }
        }
        let m_post = field(2);
        let b_post = field(3);
        let sh_post = field(4);
        let m_res = res.map(|_| field(5));
        let zp_in = _mm256_set1_epi32(i32::from(e.zp_in));
        for (m, x) in v.iter_mut().enumerate() {
            let mut s = _mm256_add_epi32(_mm256_mullo_epi32(*x, m_post), b_post);
            if let (Some(res), Some(m_res)) = (res, m_res) {
                let r = _mm256_cvtepi8_epi32(_mm_loadl_epi64(res[m].cast()));
                s = _mm256_add_epi32(s, _mm256_mullo_epi32(_mm256_sub_epi32(r, zp_in), m_res));
            }
            *x = rshr8(s, sh_post);
        }
        // Narrow two tokens at a time: [A0..3, B0..3 | A4..7, B4..7] as i16, + zp_out,
        // then bytes, the dwords put in order: A's 8 bytes, B's 8 bytes.
        let zp_out = _mm256_set1_epi16(e.zp_out);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut m = 0;
        while m < MR {
            let b = if m + 1 < MR { v[m + 1] } else { v[m] };
            let p = _mm256_adds_epi16(_mm256_packs_epi32(v[m], b), zp_out);
            let q = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p, p), order);
            out[m]
                .cast::<i64>()
                .write_unaligned(_mm256_extract_epi64::<0>(q));
            if m + 1 < MR {
                out[m + 1]
                    .cast::<i64>()
                    .write_unaligned(_mm256_extract_epi64::<1>(q));
            }
            m += 2;
        }
    }
}

/// The scalar epilogue of the last, partial 8-channel block (`dim − o0 < 8` channels) of
/// `MR` token rows of a GEMM's output (`out[(t + m)·dim ..]`); `acc` holds the sums without
/// the bias. Out of line so that its address arithmetic stays out of the kernels' loops.
#[cold]
#[inline(never)]
pub(crate) fn finish_partial<const MR: usize>(
    acc: &[[i32; 8]; MR],
    o0: usize,
    t: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    let dim = l.requant.0.len() / 24;
    for (m, a) in acc.iter().enumerate() {
        // Row t + m of `out` (inside it for the kernels' callers; a row past the end would
        // be skipped, not a panic).
        let row = (t + m) * dim;
        let Some(out) = out.get_mut(row..row + dim) else {
            continue;
        };
        for (o, (s, y)) in (o0..).zip(a.iter().zip(out.iter_mut().skip(o0))) {
            let acc = l.bias.at(o).wrapping_add(*s);
            *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
        }
    }
}
