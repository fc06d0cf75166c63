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
    match GemmI8Avx2::new(l, k, n, act) {
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
/// if let Some(g) = GemmI8Avx2::new(&l, k, n, Activation::Relu) {
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
}

impl<'a> GemmI8Avx2<'a> {
    /// Prepares `l` for the AVX2 kernel; `None` where the CPU lacks AVX2 or the layer does
    /// not fit it: weights shorter than the packed length, an epilogue section or field out
    /// of the reader's bounds, no outputs, or `k > 8192`.
    pub fn new(l: &QuantLayer<'a>, k: usize, n: usize, act: Activation) -> Option<Self> {
        // n > 0 also bounds `run`'s output loop by out.len().
        let fits = n > 0
            && Isa::Avx2.available()
            && k.div_ceil(PW_KR) * PW_KR <= XBUF
            && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len);
        let e = Epi::new(l, act, n).filter(|_| fits)?;
        Some(GemmI8Avx2 { l: *l, e, k })
    }

    /// `out[..tokens·n] = ` the layer applied to `x[..tokens·k]`, the bytes of
    /// [`reference::gemm_i8`]; nothing is written if `x` or `out` is shorter than that.
    pub fn run(&self, x: &[i8], tokens: usize, out: &mut [i8]) {
        if !acts_fit(x, tokens, self.k, self.e.dim, out) {
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

/// The micro-kernel: `M` (1..=4) tokens × all outputs, 8 at a time (two 16-byte weight rows
/// of each input group: outputs `8h..8h + 8` are rows `2(h % 2)`, `2(h % 2) + 1` of 16-output
/// block `h / 2`), then the epilogue of those 8 channels for the `M` tokens.
///
/// # Safety
/// `gemm_fits` holds, `t + M ≤ tokens`, and `xb` holds `M` rows of `kp` i16 (stride `kp`,
/// `k` rounded up to 4).
#[inline(always)]
// Indices: m < M and j < 2 are loop counters over the const lengths of `acc` (M × 2), `v`
// and `sums` (M).
#[allow(clippy::indexing_slicing)]
unsafe fn gemm_tile<const M: usize, const GELU: bool>(
    xb: *const i16,
    t: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    let kp = k.div_ceil(PW_KR) * PW_KR;
    let groups = kp / PW_KR;
    let w = l.w.as_ptr();
    let base = out.as_mut_ptr();
    for h in 0..n.div_ceil(8) {
        let o0 = 8 * h;
        // SAFETY: half-block h of 16-output block h / 2 spans bytes (h / 2)·16·kp + (h % 2)·32
        // + g·64 + 0..32 for g < groups: inside the block's 16·kp bytes, inside the packed
        // weights (gemm_fits); xb + m·kp + 4g + 0..4 < M·kp i16 (the caller's); every
        // intrinsic is AVX2 (the caller's).
        let v: [__m256i; M] = unsafe {
            let wb = w.add((h / 2) * PW_NR * kp + (h % 2) * 32);
            let zero = _mm256_setzero_si256();
            let mut acc = [[zero; 2]; M];
            for g in 0..groups {
                let wg = wb.add(64 * g);
                let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.cast()));
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wg.add(16).cast()));
                for (m, a) in acc.iter_mut().enumerate() {
                    let xv =
                        _mm256_set1_epi64x(xb.add(m * kp + 4 * g).cast::<i64>().read_unaligned());
                    a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(w0, xv));
                    a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(w1, xv));
                }
            }
            // Each output's two partial sums: [o0, o1, o4, o5 | o2, o3, o6, o7], put in order.
            core::array::from_fn(|m| {
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc[m][0], acc[m][1]))
            })
        };
        if o0 + 8 <= n {
            // All pointers derive from one borrow of `out`: (t + m)·n + o0 + 8 ≤ tokens·n ≤
            // out.len() (gemm_fits, t + M ≤ tokens, o0 + 8 ≤ n).
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
}
