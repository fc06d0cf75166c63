//! x86_64 AVX2 int8 GEMM (pointwise conv, patch embedding, MLP-Mixer MLPs), named by ISA and
//! tile shape and tested bit for bit against [`reference::gemm_i8`]:
//! [`gemm_i8_avx2_4x8c4`], 4 tokens × 8 outputs per micro-tile over input groups of 4 (the
//! packed weight layout's `c4`).
//!
//! The multiply is `VPMADDWD` on i16: each 16-byte weight row (4 outputs × 4 inputs) is
//! sign-extended to 16 i16 (`VPMOVSXBW`) and multiplied by the token's 4 inputs (as i16,
//! broadcast to the 4 outputs), which gives per output two i32 partial sums of two exact
//! products each (`|2 · 127 · 128| < 2^31`); `VPADDD` accumulates them. The tokens' inputs
//! are sign-extended to i16 once per tile into a stack buffer, so that the inner loop's
//! input operand is a plain broadcast load; two weight rows (8 outputs) feed the 4 tokens:
//! 8 `VPMADDWD` per 2 weight conversions and 4 broadcasts, 8 accumulator registers. At the
//! end of the inputs `VPHADDD` adds each output's two partial sums (`VPERMQ` puts the 8 in
//! order) and the shared vector epilogue (`quant::x86`) requantises them. (`VPMADDUBSW`,
//! 32 products per instruction, saturates its i16 pair sums for full-range int8, so alone it
//! is not exact; with the sign trick, `VPSIGNB` of the weights by the inputs, the inputs'
//! magnitudes, and `VPMADDWD` by ones to widen, it is exact for weights never −128 (a pair
//! is at most 2 · 128 · 127), but that is as many multiplies plus a sign per weight
//! register, and it measured 3% slower here.) All accumulation is integer and bounded by
//! the reader's accumulator check, so any order gives the reference's value.
//!
//! Speed, measured with `cargo run --release -p kernel-bench` (thread CPU time, best of 30
//! calls through the in-place driver, epilogue and copies included) on one core of the
//! 2-vCPU AMD EPYC (Zen 4, KVM, about 2.8 GHz) these kernels were written on: the
//! pointwise layer of ConvMixer-768/32 (1024 tokens, 768 → 768, ReLU) takes 10.0 ms, 60
//! GMAC/s (72× the scalar kernel's 0.84), about 21 MACs per cycle: 83% of the 26 that a
//! loop of `VPMADDWD` + `VPADDD` alone sustains there (the two weight widenings per group
//! are most of the rest); its patch embedding (147 inputs) 51 GMAC/s.
//!
//! The pointwise conv in place ([`GemmI8Avx2::pw_inplace`]) runs in panels instead,
//! where the driver's scratch holds at least [`PANEL_MR`] tokens of i16 inputs (the model's
//! int8 scratch, sized for the depthwise ring, holds 48 at `dim` = 768): the panel's inputs
//! are widened once into micro-tiles of 6 tokens, each interleaved by input group (so that
//! a tile's broadcasts walk one contiguous stream), then each half-block of 8 outputs passes
//! over all the panel's micro-tiles, 6 tokens × 8 outputs at a time (12 accumulators, 12
//! `VPMADDWD` per 2 weight conversions and 6 broadcasts). The half-block's 6 KiB of
//! weights stay in L1 for the whole panel, which stays in L2, where 4-token tiles over all
//! outputs read the layer's whole weights (590 KB at `dim` = 768) once per 4 tokens. On the
//! Zen 4 below (loaded by other work at the time, A/B in one process) the pointwise layer
//! of ConvMixer-768/32 takes 9.3 ms where the 4-token tiles take 9.9; 89% of it is the
//! 6 × 8 loop, which runs as fast as it does alone on L1-resident data (where 4 × 8 tiles
//! run 8% slower). Pre-widening a half-block's weights to i16 once per panel (no
//! `VPMOVSXBW` in the loop) measured under 1% faster, and tiles of lanes = tokens with the
//! weights pre-broadcast (only `VPMADDWD` + `VPADDD` in the loop) slower, on this core the
//! broadcasts cost no vector ALU slot.
//!
//! Safety: [`GemmI8Avx2::new`] checks the layer (weights, epilogue sections and ranges, the
//! CPU's AVX2) and [`GemmI8Avx2::run`] the activations, once per call, in checked
//! arithmetic; the `unsafe fn`s below say in `# Safety` which of those facts they rely on
//! ("`gemm_fits` holds"), and each `unsafe` block says which check bounds its pointer
//! accesses. Indexing of the small fixed-size register arrays is by loop counters below the
//! arrays' const lengths, allowed function by function with that proof.

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use crate::kernels::gemm_packed_len_checked;
use crate::kernels::quant::x86::{epilogue_c8, finish_partial, Epi};
use crate::kernels::reference::{self, QuantLayer};
use crate::kernels::{Isa, PW_KR, PW_NR};
use crate::Activation;

/// i16 inputs of one token tile held on the stack (16 KiB): a tile has
/// `min(4, XBUF / kp)` tokens (`kp`: `k` rounded up to 4), so layers with `k ≤ 2048` run 4
/// tokens per tile and those up to `k ≤ 8192` fewer; larger `k` runs the reference.
const XBUF: usize = 8192;

/// Tokens per micro-tile.
const MR: usize = 4;

/// int8 GEMM (pointwise conv, patch embedding) with AVX2: tiles of 4 tokens × 8 outputs,
/// inputs in groups of 4. Same arguments and result as [`reference::gemm_i8`]; falls back
/// to it where the layer does not fit (or the CPU lacks AVX2).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::x86, gemm_packed_len, reference::{self, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n, tokens) = (40, 24, 6);
/// let w: Vec<i8> = (0..gemm_packed_len(n, k)).map(|i| (i % 7) as i8 - 3).collect();
/// let bias = vec![0u8; 4 * n];
/// // Field-major [m_pre, sh_pre, m_post, b_post, sh_post, m_res] per channel: ReLU(acc / 2).
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let x: Vec<i8> = (0..tokens * k).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut fast, mut slow) = (vec![0i8; tokens * n], vec![0i8; tokens * n]);
/// x86::gemm_i8_avx2_4x8c4(&x, tokens, k, n, &l, Activation::Relu, &mut fast);
/// reference::gemm_i8(&x, tokens, k, n, &l, Activation::Relu, &mut slow);
/// assert_eq!(fast, slow);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_avx2_4x8c4(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    match GemmI8Avx2::new(l, k, n, act, false) {
        Some(g) if acts_fit(x, tokens, k, n, out) => g.run(x, tokens, out),
        _ => reference::gemm_i8(x, tokens, k, n, l, act, out),
    }
}

/// Whether `x` holds `tokens·k` inputs and `out` `tokens·n` outputs (checked arithmetic).
fn acts_fit(x: &[i8], tokens: usize, k: usize, n: usize, out: &[i8]) -> bool {
    tokens.checked_mul(k).is_some_and(|len| x.len() >= len)
        && tokens.checked_mul(n).is_some_and(|len| out.len() >= len)
}

/// One int8 GEMM layer (`k` inputs, `n` outputs per token) prepared for the AVX2 kernel: its
/// lengths and requantisation ranges checked and its epilogue parameters read once, for
/// drivers that call the kernel on a few tokens at a time ([`gemm_i8`](super)).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::x86::GemmI8Avx2, gemm_packed_len, reference::QuantLayer, Isa};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n) = (8, 16);
/// let w = vec![1i8; gemm_packed_len(n, k)];
/// let bias = [0u8; 64];
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// if let Some(g) = GemmI8Avx2::new(&l, k, n, Activation::Relu, false) {
///     let x = [3i8; 2 * 8];
///     let mut out = [0i8; 2 * 16];
///     g.run(&x, 2, &mut out);
///     assert_eq!(out, [12i8; 32]); // (8 inputs · 3) / 2
/// } else {
///     assert!(!Isa::Avx2.available());
/// }
/// ```
#[derive(Clone, Copy)]
pub struct GemmI8Avx2<'a> {
    l: QuantLayer<'a>,
    e: Epi,
    k: usize,
    /// Whether the AVX-512 VNNI kernel ([`super::avx512`]) computes the sums.
    vnni: bool,
}

impl<'a> GemmI8Avx2<'a> {
    /// Prepares `l` for the AVX2 kernel, or with `vnni` for the AVX-512 VNNI one
    /// ([`super::avx512`], where [`Isa::Avx512Vnni`] is available and `k ≤ 16384`; else
    /// the AVX2 one); `None` where the CPU lacks AVX2 or the layer does not fit it: weights
    /// shorter than the packed length, an epilogue section or field out of the reader's
    /// bounds, no outputs, or `k > 8192`.
    pub fn new(
        l: &QuantLayer<'a>,
        k: usize,
        n: usize,
        act: Activation,
        vnni: bool,
    ) -> Option<Self> {
        let kp = k.div_ceil(PW_KR) * PW_KR;
        let vnni = vnni && kp <= super::avx512::XBUF && Isa::Avx512Vnni.available();
        // n > 0 also bounds `run`'s output loop by out.len().
        let fits = n > 0
            && Isa::Avx2.available()
            && (kp <= XBUF || vnni)
            && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len);
        let e = Epi::new(l, act, n).filter(|_| fits)?;
        Some(GemmI8Avx2 { l: *l, e, k, vnni })
    }

    /// `out[..tokens·n] = ` the layer applied to `x[..tokens·k]`, the bytes of
    /// [`reference::gemm_i8`]; nothing is written if `x` or `out` is shorter than that.
    pub fn run(&self, x: &[i8], tokens: usize, out: &mut [i8]) {
        if !acts_fit(x, tokens, self.k, self.e.dim, out) {
            return;
        }
        if self.vnni {
            // SAFETY: `new` found AVX2 and AVX-512 VNNI, checked the weights' length and
            // kp ≤ avx512::XBUF, and built `e` from `l` for n = e.dim outputs; the lengths
            // of x and out are checked above; GELU = e.gelu.
            unsafe {
                if self.e.gelu {
                    super::avx512::gemm::<true>(Some(x), tokens, self.k, &self.l, &self.e, out)
                } else {
                    super::avx512::gemm::<false>(Some(x), tokens, self.k, &self.l, &self.e, out)
                }
            }
            return;
        }
        // SAFETY: `new` found AVX2, checked the weights' length and kp ≤ XBUF, and built
        // `e` from `l` for n = e.dim outputs (so layer_fits); with the lengths of x and
        // out checked above, gemm_fits holds, and GELU = e.gelu.
        unsafe {
            if self.e.gelu {
                gemm::<true>(x, tokens, self.k, &self.l, &self.e, out)
            } else {
                gemm::<false>(x, tokens, self.k, &self.l, &self.e, out)
            }
        }
    }
}

impl GemmI8Avx2<'_> {
    /// Whether the AVX-512 VNNI kernel computes the sums (for the tests: so that the suite
    /// run under `Isa::Avx512Vnni` cannot pass on the AVX2 kernel).
    #[cfg(test)]
    pub(crate) fn uses_vnni(&self) -> bool {
        self.vnni
    }

    /// The pointwise conv (`k = n`) in place on `a` (`tokens · n` int8) through panels of
    /// up to [`PANEL_BYTES`] of i16 inputs in `scratch` (see the module docs), the bytes of
    /// [`reference::gemm_i8`]. False, touching nothing, where the layer is not square, `a`
    /// is shorter than `tokens · n`, or the scratch holds fewer than [`PANEL_MR`] tokens (the
    /// caller then runs [`GemmI8Avx2::run`] on a few tokens at a time).
    ///
    /// ```
    /// use convmixer_edge::kernels::{gemm_i8::x86::GemmI8Avx2, gemm_packed_len, reference::QuantLayer, Isa};
    /// use convmixer_edge::{le::I32Le, Activation};
    /// let n = 16;
    /// let w = vec![1i8; gemm_packed_len(n, n)];
    /// let bias = [0u8; 64];
    /// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
    /// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
    /// if let Some(g) = GemmI8Avx2::new(&l, n, n, Activation::Relu, false) {
    ///     let mut a = vec![3i8; 20 * n];
    ///     assert!(g.pw_inplace(&mut a, &mut [0i8; 4096], 20));
    ///     assert_eq!(a, vec![24i8; 20 * n]); // (16 inputs · 3) / 2
    ///     assert!(!g.pw_inplace(&mut a, &mut [0i8; 64], 20)); // too little scratch
    /// }
    /// ```
    pub fn pw_inplace(&self, a: &mut [i8], scratch: &mut [i8], tokens: usize) -> bool {
        let (k, n) = (self.k, self.e.dim);
        if self.vnni {
            if k != n || tokens.checked_mul(n).is_none_or(|len| a.len() < len) {
                return false;
            }
            // SAFETY: as in `run`, with k = n and a holding tokens·n bytes (checked above):
            // the in-place form.
            unsafe {
                if self.e.gelu {
                    super::avx512::gemm::<true>(None, tokens, k, &self.l, &self.e, a)
                } else {
                    super::avx512::gemm::<false>(None, tokens, k, &self.l, &self.e, a)
                }
            }
            return true;
        }
        let kp = k.div_ceil(PW_KR) * PW_KR;
        // The panel starts 32-byte aligned in the scratch.
        let skip = scratch.as_ptr().align_offset(32).min(31);
        let Some(scratch) = scratch.get_mut(skip..) else {
            return false;
        };
        let panel = panel_tokens(kp, scratch.len());
        if k != n || panel < PANEL_MR || tokens.checked_mul(n).is_none_or(|len| a.len() < len) {
            return false;
        }
        // SAFETY: `new` found AVX2, checked the weights' length for n = e.dim outputs of k
        // = n inputs and built `e` from `l`; a holds tokens·k bytes (checked above); the
        // scratch holds panel·kp i16 (panel_tokens), panel a positive multiple of PANEL_MR;
        // GELU = e.gelu.
        unsafe {
            let xb = scratch.as_mut_ptr().cast::<i16>();
            if self.e.gelu {
                pw_panels::<true>(a, tokens, k, panel, xb, &self.l, &self.e)
            } else {
                pw_panels::<false>(a, tokens, k, panel, xb, &self.l, &self.e)
            }
        }
        true
    }
}

/// Tokens per micro-tile of the pointwise panels.
pub const PANEL_MR: usize = 6;

/// Most bytes of one panel's i16 inputs (64 tokens at `k` = 768), which stay in L2 while
/// each half-block of weights passes over them.
pub const PANEL_BYTES: usize = 96 * 1024;

/// Tokens per panel for `kp` inputs (`k` rounded up to 4) and `bytes` of scratch: as many
/// as hold `kp` i16 each, at most [`PANEL_BYTES`] of them, a multiple of [`PANEL_MR`].
fn panel_tokens(kp: usize, bytes: usize) -> usize {
    let t = bytes.min(PANEL_BYTES).checked_div(2 * kp).unwrap_or(0);
    t - t % PANEL_MR
}

/// [`widen_row`] into a panel micro-tile: the row's inputs as i16, group `g` (inputs `4g ..
/// 4g + 4`) at `dst + 4·PANEL_MR·g`, zeros from `k` to `kp` (the micro-tile holds its
/// `PANEL_MR` rows interleaved by input group, `4·PANEL_MR` i16 per group).
///
/// # Safety
/// The CPU has AVX2; `row` points at `k ≤ kp` readable bytes, `kp` is a multiple of 4 and
/// `dst + 4·PANEL_MR·g + 0..4` is writable for `g < kp / 4`.
#[inline(always)]
unsafe fn widen_row_il(row: *const i8, k: usize, kp: usize, dst: *mut i16) {
    let mut i = 0;
    // SAFETY: bytes i..i + 16 ≤ k of the row; groups i/4 .. i/4 + 4 ≤ kp/4 (k ≤ kp), then
    // single elements below kp: inside the caller's ranges; AVX2 (the caller's).
    unsafe {
        while i + 16 <= k {
            let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(i).cast()));
            let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let d = dst.add(PANEL_MR * i);
            _mm_storel_epi64(d.cast(), lo);
            _mm_storel_epi64(d.add(4 * PANEL_MR).cast(), _mm_unpackhi_epi64(lo, lo));
            _mm_storel_epi64(d.add(8 * PANEL_MR).cast(), hi);
            _mm_storel_epi64(d.add(12 * PANEL_MR).cast(), _mm_unpackhi_epi64(hi, hi));
            i += 16;
        }
        while i < kp {
            let v = if i < k { i16::from(*row.add(i)) } else { 0 };
            dst.add(4 * PANEL_MR * (i / 4) + i % 4).write_unaligned(v);
            i += 1;
        }
    }
}

/// Inputs up to which [`pw_panels`] widens a half-block's weights to i16 once per panel
/// (a 16 KiB stack buffer at the most): the micro-kernel then loads them instead of
/// sign-extending them for every micro-tile.
const W16_K: usize = 1024;

/// The first weight byte of half-block `h` (outputs `8h..8h + 8`: rows `2(h % 2)`,
/// `2(h % 2) + 1` of 16-output block `h / 2`) in weights packed for `kp` inputs; its input
/// group `g` is the 32 bytes at `+ 64·g`.
#[inline(always)]
fn half_block(w: *const i8, h: usize, kp: usize) -> *const i8 {
    w.wrapping_add((h / 2) * PW_NR * kp + (h % 2) * 32)
}

/// Input group `g` of the half-block at `wb` ([`half_block`]) sign-extended to i16: two
/// vectors of 4 outputs × 4 inputs.
///
/// # Safety
/// AVX2; `wb + 64·g + 0..32` readable.
#[inline(always)]
unsafe fn widen_group(wb: *const i8, g: usize) -> [__m256i; 2] {
    // SAFETY: the caller's range and CPU.
    unsafe {
        let wg = wb.add(64 * g);
        [
            _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.cast())),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.add(16).cast())),
        ]
    }
}

/// Widens the half-block at `wb` ([`half_block`]) to i16: group `g` ([`widen_group`]) as
/// `dst[2g]`, `dst[2g + 1]`.
///
/// # Safety
/// AVX2; `wb + 64·g + 0..32` readable and `dst + 2g + 0..2` writable for `g < kp / 4`.
#[inline(always)]
unsafe fn widen_half_block(wb: *const i8, kp: usize, dst: *mut __m256i) {
    for g in 0..kp / PW_KR {
        // SAFETY: the caller's ranges.
        unsafe {
            let [w0, w1] = widen_group(wb, g);
            dst.add(2 * g).write(w0);
            dst.add(2 * g + 1).write(w1);
        }
    }
}

/// The panel driver of [`GemmI8Avx2::pw_inplace`]: per panel of up to `panel` tokens, the
/// tokens' inputs widened into micro-tiles at `xb`, then per half-block of 8 outputs the
/// micro-tiles in turn ([`tile8`]), writing the outputs over the panel's tokens in `a`.
///
/// # Safety
/// The CPU has AVX2; `a` holds `tokens·k` bytes; `xb` points at `panel·kp` writable i16
/// (`kp`: `k` rounded up to 4), `panel` a positive multiple of `PANEL_MR`; `l.w` holds the
/// `gemm_packed_len(k, k)` packed weights and `e` was built from `l` for `k` outputs with
/// `GELU = e.gelu`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pw_panels<const GELU: bool>(
    a: &mut [i8],
    tokens: usize,
    k: usize,
    panel: usize,
    xb: *mut i16,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    let mut wb = MaybeUninit::<[__m256i; W16_K / 2]>::uninit();
    let wbuf = wb.as_mut_ptr().cast::<__m256i>();
    let mut t0 = 0;
    while t0 < tokens {
        let pt = panel.min(tokens - t0);
        // SAFETY: token t0 + m < tokens of a (k bytes, inside tokens·k) into row m % 6 of
        // micro-tile m / 6 (at xb + (m / 6)·6·kp, 6·kp i16 each): inside panel·kp i16, as
        // pt ≤ panel and panel is a multiple of 6. The tiles read those rows (m + M ≤ pt)
        // and write tokens t0 + m.. of a (k = n outputs each, inside tokens·n): tile8's
        // conditions, with gemm_fits for the layer on a (the caller's). Where kp ≤ W16_K,
        // half-block h's weight rows (group g at (h / 2)·16·kp + (h % 2)·32 + 64g + 0..32,
        // g < kp / 4: inside the packed layer, 8h < n) are widened into wbuf's kp / 2 ≤
        // W16_K / 2 vectors, which tile8 then reads.
        unsafe {
            for m in 0..pt {
                let (tile, r) = (m / PANEL_MR, m % PANEL_MR);
                let dst = xb.add(tile * PANEL_MR * kp + 4 * r);
                widen_row_il(a.as_ptr().add((t0 + m) * k), k, kp, dst);
            }
            let xb = xb.cast_const();
            for h in 0..e.dim.div_ceil(8) {
                let w16 = if kp <= W16_K {
                    widen_half_block(half_block(l.w.as_ptr(), h, kp), kp, wbuf);
                    wbuf.cast_const()
                } else {
                    core::ptr::null()
                };
                let mut m = 0;
                while m + PANEL_MR <= pt {
                    tile8::<PANEL_MR, GELU, true>(w16, xb.add(m * kp), kp, t0 + m, h, l, e, a);
                    m += PANEL_MR;
                }
                let (xr, t) = (xb.add(m * kp), t0 + m);
                match pt - m {
                    5 => tile8::<5, GELU, true>(w16, xr, kp, t, h, l, e, a),
                    4 => tile8::<4, GELU, true>(w16, xr, kp, t, h, l, e, a),
                    3 => tile8::<3, GELU, true>(w16, xr, kp, t, h, l, e, a),
                    2 => tile8::<2, GELU, true>(w16, xr, kp, t, h, l, e, a),
                    1 => tile8::<1, GELU, true>(w16, xr, kp, t, h, l, e, a),
                    _ => {}
                }
            }
        }
        t0 += pt;
    }
}

/// [`gemm_i8_avx2_4x8c4`] for one activation.
///
/// # Safety
/// The CPU has AVX2, `x` holds `tokens·k` bytes and `out` `tokens·e.dim`, `l.w` the
/// `gemm_packed_len(e.dim, k)` packed weights, `k` rounded up to 4 is at most `XBUF`, and `e`
/// was built from `l` (`Epi::new`) with `GELU = e.gelu` ("`gemm_fits` holds").
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemm<const GELU: bool>(
    x: &[i8],
    tokens: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    // 1 ≤ tile ≤ 4: kp ≤ XBUF (the caller's), and kp ≥ 1 where k > 0 (k = 0: kp = 0,
    // XBUF / 1).
    let tile = (XBUF / kp.max(1)).min(MR);
    let mut buf = MaybeUninit::<[i16; XBUF]>::uninit();
    let xb = buf.as_mut_ptr().cast::<i16>();
    let mut t = 0;
    while t < tokens {
        let mt = tile.min(tokens - t);
        // SAFETY: rows t..t + mt < tokens of x (k bytes each, inside x.len() ≥ tokens·k)
        // become rows of kp i16 at xb + m·kp, m < mt ≤ tile: inside the buffer (tile·kp ≤
        // XBUF); the tile reads only those rows; the rest is the caller's gemm_fits.
        unsafe {
            for m in 0..mt {
                widen_row(x.as_ptr().add((t + m) * k), k, kp, xb.add(m * kp));
            }
            match mt {
                4 => gemm_tile::<4, GELU>(xb, t, k, l, e, out),
                3 => gemm_tile::<3, GELU>(xb, t, k, l, e, out),
                2 => gemm_tile::<2, GELU>(xb, t, k, l, e, out),
                _ => gemm_tile::<1, GELU>(xb, t, k, l, e, out),
            }
        }
        t += mt;
    }
}

/// Sign-extends the `k` inputs at `row` to i16 at `dst`, then zeros up to `kp` (the packed
/// weights are zero there too).
///
/// # Safety
/// The CPU has AVX2; `row` points at `k` readable bytes and `dst` at `kp ≥ k` writable i16.
#[inline(always)]
unsafe fn widen_row(row: *const i8, k: usize, kp: usize, dst: *mut i16) {
    let mut i = 0;
    // SAFETY: i + 16 ≤ k bytes of the row and k ≤ kp i16 of dst; then single elements
    // below k (row) and kp (dst).
    unsafe {
        while i + 16 <= k {
            let v = _mm256_cvtepi8_epi16(_mm_loadu_si128(row.add(i).cast()));
            _mm256_storeu_si256(dst.add(i).cast(), v);
            i += 16;
        }
        while i < k {
            *dst.add(i) = i16::from(*row.add(i));
            i += 1;
        }
        while i < kp {
            *dst.add(i) = 0;
            i += 1;
        }
    }
}

/// The micro-kernel of [`gemm`]: `M` (1..=4) tokens × all outputs, 8 at a time
/// ([`tile8`]).
///
/// # Safety
/// `gemm_fits` holds, `t + M ≤ tokens`, and `xb` holds `M` rows of `kp` i16 (stride `kp`,
/// `k` rounded up to 4).
#[inline(always)]
unsafe fn gemm_tile<const M: usize, const GELU: bool>(
    xb: *const i16,
    t: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let kp = k.div_ceil(PW_KR) * PW_KR;
    for h in 0..e.dim.div_ceil(8) {
        // SAFETY: the caller's conditions, 8h < n.
        unsafe { tile8::<M, GELU, false>(core::ptr::null(), xb, kp, t, h, l, e, out) };
    }
}

/// `M` (1..=6) tokens × outputs `8h..8h + 8` (two 16-byte weight rows of each input group:
/// rows `2(h % 2)`, `2(h % 2) + 1` of 16-output block `h / 2`), then the epilogue of those
/// 8 channels for the `M` tokens into rows `t..t + M` of `out`. The tokens' i16 inputs at
/// `xb`: `M` rows of `kp` (stride `kp`), or, where `IL`, a panel micro-tile (input group
/// `g` of row `m` at `4·(PANEL_MR·g + m)`). The weights are read from the packed layer,
/// or, where `w16` is not null, from those rows already widened ([`widen_half_block`]).
///
/// # Safety
/// `gemm_fits` holds (for `out` and the layer), `t + M ≤ tokens`, `8h < n`, `kp` is `k`
/// rounded up to 4 and `xb` holds the `M` rows' `kp` i16 in that layout (`M ≤ PANEL_MR`
/// where `IL`); `w16` is null or holds `kp / 2` aligned vectors.
#[inline(always)]
// Indices: m < M and j < 2 are loop counters over the const lengths of `acc` (M × 2), `v`
// and `sums` (M).
#[allow(clippy::indexing_slicing)]
// The micro-kernel's operands, passed as they are rather than bundled (it is inlined).
#[allow(clippy::too_many_arguments)]
unsafe fn tile8<const M: usize, const GELU: bool, const IL: bool>(
    w16: *const __m256i,
    xb: *const i16,
    kp: usize,
    t: usize,
    h: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let groups = kp / PW_KR;
    let o0 = 8 * h;
    // SAFETY: half-block h of 16-output block h / 2 spans bytes (h / 2)·16·kp + (h % 2)·32
    // + g·64 + 0..32 for g < groups: inside the block's 16·kp bytes, inside the packed
    // weights (gemm_fits, 8h < n); the inputs of row m < M, group g < groups: inside the
    // caller's layout; every intrinsic is AVX2 (the caller's).
    let v: [__m256i; M] = unsafe {
        let wb = half_block(l.w.as_ptr(), h, kp);
        let zero = _mm256_setzero_si256();
        let mut acc = [[zero; 2]; M];
        for g in 0..groups {
            let [w0, w1] = if w16.is_null() {
                widen_group(wb, g)
            } else {
                [w16.add(2 * g).read(), w16.add(2 * g + 1).read()]
            };
            for (m, a) in acc.iter_mut().enumerate() {
                let at = if IL {
                    xb.add(4 * (PANEL_MR * g + m))
                } else {
                    xb.add(m * kp + 4 * g)
                };
                let xv = _mm256_set1_epi64x(at.cast::<i64>().read_unaligned());
                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(w0, xv));
                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(w1, xv));
            }
        }
        // Each output's two partial sums: [o0, o1, o4, o5 | o2, o3, o6, o7], put in order.
        core::array::from_fn(|m| {
            _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[m][0], acc[m][1]))
        })
    };
    // SAFETY: the caller's gemm_fits, t + M ≤ tokens and o0 = 8h < n.
    unsafe { finish_c8::<M, GELU>(v, o0, t, l, e, out) };
}

/// The sums `v` (bias not included) of channels `o0..o0 + 8` of `M` tokens from `t` on,
/// finished into their rows of `out` (`n = e.dim` bytes each): the vector epilogue where
/// all 8 channels exist, else the scalar one for the `n − o0` that do. The last step of
/// both x86 GEMM kernels ([`tile8`], [`super::avx512`]).
///
/// # Safety
/// The CPU has AVX2; `e` was built from `l` for `n` outputs with `GELU = e.gelu`; `o0 < n`,
/// `t + M ≤ tokens` and `out` holds `tokens·n` bytes.
#[inline(always)]
pub(super) unsafe fn finish_c8<const M: usize, const GELU: bool>(
    v: [__m256i; M],
    o0: usize,
    t: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    if o0 + 8 <= n {
        let base = out.as_mut_ptr();
        // All pointers derive from one borrow of `out`: (t + m)·n + o0 + 8 ≤ tokens·n ≤
        // out.len() (the caller's, o0 + 8 ≤ n).
        let ptrs: [*mut i8; M] = core::array::from_fn(|m| base.wrapping_add((t + m) * n + o0));
        // SAFETY: o0 + 8 ≤ n = e.dim; GELU = e.gelu; each pointer heads 8 bytes of
        // `out`; AVX2 (the caller's).
        unsafe {
            let bias = e.bias8(o0);
            let v = v.map(|a| _mm256_add_epi32(a, bias));
            epilogue_c8::<M, GELU>(e, o0, v, None, ptrs);
        }
    } else {
        let mut sums = [[0i32; 8]; M];
        for (s, a) in sums.iter_mut().zip(v) {
            // SAFETY: stores 8 i32 into the local array; AVX2 (the caller's).
            unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), a) };
        }
        let act = if GELU {
            Activation::Gelu
        } else {
            Activation::Relu
        };
        finish_partial::<M>(&sums, o0, t, l, act, out);
    }
}
