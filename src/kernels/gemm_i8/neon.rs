//! AArch64 NEON int8 GEMMs (pointwise conv, patch embedding, MLP-Mixer MLPs), named by
//! ISA level and tile shape and tested bit for bit against [`reference::gemm_i8`]:
//!
//! * [`gemm_i8_neon_smlal_2x16c4`]: ARMv8.0 (Cortex-A53/A72, Raspberry Pi 3/4):
//!   `SMULL`/`SMLAL` multiply i8 × i8 into i16 lanes, two products per lane (safe: weights
//!   are never −128, so `|2 · 127 · 128| < 2^15`), then `SADALP` widens into i32
//!   accumulators.
//! * [`gemm_i8_neon_sdot_4x16c4`]: ARMv8.2 dot product (Cortex-A76, Raspberry Pi 5):
//!   `SDOT` by element, four i8 products straight into each i32 lane. `SDOT` is emitted
//!   with `asm!` because its intrinsics are not stable Rust yet.
//!
//! Both end in the shared vector epilogue (`quant::neon`). All accumulation is exact
//! integer arithmetic bounded by the reader's accumulator check (`docs/blob-format.md`),
//! so any summation order gives the reference's value.
//!
//! Safety: [`GemmI8::new`] checks the layer (weights, epilogue sections) and
//! [`GemmI8::run`] the activations, once per call, in checked arithmetic; the `unsafe fn`s
//! below say in `# Safety` which of those facts they rely on ("`gemm_fits` holds"), and
//! each `unsafe` block says which check bounds its pointer accesses. The `SDOT` kernels run
//! only where FEAT_DotProd was detected ([`Isa::NeonDot`](crate::kernels::Isa::NeonDot)).
//! Indexing of the small fixed-size register arrays is by loop counters below the arrays'
//! const lengths, allowed function by function with that proof.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::gemm_packed_len_checked;
use crate::kernels::quant::neon::{acc_init, finish_tile, layer_fits, ld1x4, Epi};
use crate::kernels::reference::{self, QuantLayer};
use crate::kernels::{PW_KR, PW_NR};
use crate::Activation;

/// Lengths a GEMM kernel (`k` inputs, `n` outputs per token) may rely on. The unsafe GEMM
/// functions below say "`gemm_fits` holds" for: `x` holds `tokens·k` bytes, `out`
/// `tokens·n`, `l.w` the `gemm_packed_len(n, k)` packed weights, and the `Epi` they get was
/// built from `l` for `n = e.dim` outputs (so `layer_fits`) with their `GELU` equal to
/// `e.gelu`. [`GemmI8::new`] and [`GemmI8::run`] check all of it.
fn gemm_fits(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &[i8],
) -> bool {
    layer_fits(l, act, n)
        && tokens.checked_mul(k).is_some_and(|len| x.len() >= len)
        && tokens.checked_mul(n).is_some_and(|len| out.len() >= len)
        && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len)
}

/// Four bytes of `row` starting at input group `g` as one i32 lane pattern, zero-padded
/// past `dim` (the packed weights are zero there too).
///
/// # Safety
/// `row` must point at `dim` readable bytes.
#[inline(always)]
unsafe fn group4(row: *const i8, g: usize, dim: usize) -> i32 {
    let i = g * PW_KR;
    if i + PW_KR <= dim {
        // SAFETY: i + 4 ≤ dim bytes are readable.
        unsafe { row.add(i).cast::<i32>().read_unaligned() }
    } else {
        let mut b = [0u8; 4];
        for (j, v) in b.iter_mut().enumerate().take(dim.saturating_sub(i)) {
            // SAFETY: i + j < dim.
            *v = unsafe { *row.add(i + j) } as u8;
        }
        i32::from_le_bytes(b)
    }
}

/// int8 GEMM (pointwise conv, patch embedding) for ARMv8.0: tiles of 2 tokens × 16 outputs,
/// inputs in groups of 4 (`…c4`, the packed weight layout), `SMULL`+`SMLAL` pairs into i16,
/// `SADALP` into i32. Same arguments and result as [`reference::gemm_i8`].
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::neon, gemm_packed_len, reference::{self, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (dim, tokens) = (4, 3);
/// let w = vec![1i8; gemm_packed_len(dim, dim)];
/// let bias = [0u8; 16];
/// // Per channel [m_pre, sh_pre, m_post, b_post, sh_post, m_res]: ReLU(acc / 2), out = a.
/// // Field-major: each of the 6 fields for every channel.
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(dim)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let x = [2i8; 12];
/// let (mut fast, mut slow) = ([0i8; 12], [0i8; 12]);
/// neon::gemm_i8_neon_smlal_2x16c4(&x, tokens, dim, dim, &l, Activation::Relu, &mut fast);
/// reference::gemm_i8(&x, tokens, dim, dim, &l, Activation::Relu, &mut slow);
/// assert_eq!(fast, slow);
/// assert_eq!(fast[0], 4); // (4 inputs · 2) / 2
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_neon_smlal_2x16c4(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    match GemmI8::new(l, k, n, act, false) {
        Some(g) if gemm_fits(x, tokens, k, n, l, act, out) => g.run(x, tokens, out),
        _ => reference::gemm_i8(x, tokens, k, n, l, act, out),
    }
}

/// One int8 GEMM layer (`k` inputs, `n` outputs per token) prepared for the NEON kernels:
/// its lengths checked and its epilogue parameters read once, for drivers that call the
/// kernel on a few tokens at a time ([`gemm_i8`](super)).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::neon::GemmI8, gemm_packed_len, reference::{self, QuantLayer}};
/// use convmixer_edge::{le::I32Le, Activation};
/// let (k, n) = (8, 16);
/// let w = vec![1i8; gemm_packed_len(n, k)];
/// let bias = [0u8; 64];
/// // Field-major [m_pre, sh_pre, m_post, b_post, sh_post, m_res] per channel: ReLU(acc / 2).
/// let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let g = GemmI8::new(&l, k, n, Activation::Relu, false).expect("the layer fits");
/// let x = [3i8; 2 * 8];
/// let mut out = [0i8; 2 * 16];
/// g.run(&x, 2, &mut out);
/// assert_eq!(out, [12i8; 32]); // (8 inputs · 3) / 2
/// ```
#[derive(Clone, Copy)]
pub struct GemmI8<'a> {
    l: QuantLayer<'a>,
    e: Epi,
    k: usize,
    gelu: bool,
    dot: bool,
}

impl<'a> GemmI8<'a> {
    /// Prepares `l` for the `SDOT` kernel (`dot`, which needs FEAT_DotProd) or the `SMLAL`
    /// one; `None` where the layer's lengths or zero points do not fit them (or `dot`
    /// without the dot product, or no outputs).
    pub fn new(l: &QuantLayer<'a>, k: usize, n: usize, act: Activation, dot: bool) -> Option<Self> {
        // n > 0 also bounds `run`'s token loop by out.len().
        let fits = n > 0
            && gemm_packed_len_checked(n, k).is_some_and(|len| l.w.len() >= len)
            && (!dot || crate::kernels::Isa::NeonDot.available());
        let e = Epi::new(l, act, n).filter(|_| fits)?;
        Some(GemmI8 {
            l: *l,
            e,
            k,
            gelu: e.gelu,
            dot,
        })
    }

    /// `out[..tokens·n] = ` the layer applied to `x[..tokens·k]`, the bytes of
    /// [`reference::gemm_i8`]; nothing is written if `x` or `out` is shorter than that.
    pub fn run(&self, x: &[i8], tokens: usize, out: &mut [i8]) {
        let (k, n, l, e) = (self.k, self.e.dim, &self.l, &self.e);
        if tokens.checked_mul(k).is_none_or(|len| x.len() < len)
            || tokens.checked_mul(n).is_none_or(|len| out.len() < len)
        {
            return;
        }
        // SAFETY: `new` checked the weights' length, built `e` from `l` for n outputs (so
        // layer_fits) and, for `dot`, found the dot product; with the lengths of x and out
        // checked above, gemm_fits holds, and GELU = self.gelu = e.gelu.
        unsafe {
            match (self.dot, self.gelu) {
                (false, false) => gemm_smlal::<false>(x, tokens, k, l, e, out),
                (false, true) => gemm_smlal::<true>(x, tokens, k, l, e, out),
                (true, false) => gemm_sdot::<false>(x, tokens, k, l, e, out),
                (true, true) => gemm_sdot::<true>(x, tokens, k, l, e, out),
            }
        }
    }
}

/// [`gemm_i8_neon_smlal_2x16c4`] for one activation.
///
/// # Safety
/// `gemm_fits` holds (see there) for `e.dim` outputs.
unsafe fn gemm_smlal<const GELU: bool>(
    x: &[i8],
    tokens: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let mut t = 0;
    while t + 2 <= tokens {
        // SAFETY: the caller's conditions and t + 2 ≤ tokens.
        unsafe { gemm_smlal_tile::<2, GELU>(x, t, k, l, e, out) };
        t += 2;
    }
    if t < tokens {
        // SAFETY: as above, t + 1 ≤ tokens.
        unsafe { gemm_smlal_tile::<1, GELU>(x, t, k, l, e, out) };
    }
}

/// One 16-byte weight row (4 outputs × 4 inputs) of two consecutive input groups times
/// their inputs (`x0`, `x1`: 4 bytes repeated): `SMULL`+`SMLAL` (low halves: outputs 0, 1)
/// and `SMULL2`+`SMLAL2` (high halves: outputs 2, 3) into i16 — exact, two products of
/// |w| ≤ 127 and |x| ≤ 128 per lane — then `SADALP` into the i32 partial sums.
#[inline(always)]
fn smlal_row(
    acc: (int32x4_t, int32x4_t),
    w0: int8x16_t,
    w1: int8x16_t,
    x0: int8x16_t,
    x1: int8x16_t,
) -> (int32x4_t, int32x4_t) {
    // SAFETY: register-only NEON arithmetic (NEON is a compile-time target feature here).
    unsafe {
        let lo = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(x0)),
            vget_low_s8(w1),
            vget_low_s8(x1),
        );
        let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
        (vpadalq_s16(acc.0, lo), vpadalq_s16(acc.1, hi))
    }
}

/// Eight accumulator registers of one token: for each 4-output row `r`, outputs `4r, 4r+1`
/// and `4r+2, 4r+3`, two partial sums each.
type Acc8 = [(int32x4_t, int32x4_t); 4];

/// Two input groups (`$lane0`, `$lane1` of `$x`) of one token into its accumulators.
macro_rules! smlal_pair {
    ($a:ident, $wa:ident, $wb:ident, $x:ident, $lane0:literal, $lane1:literal) => {{
        let x0 = vreinterpretq_s8_s32(vdupq_laneq_s32::<$lane0>($x));
        let x1 = vreinterpretq_s8_s32(vdupq_laneq_s32::<$lane1>($x));
        $a[0] = smlal_row($a[0], $wa.0, $wb.0, x0, x1);
        $a[1] = smlal_row($a[1], $wa.1, $wb.1, x0, x1);
        $a[2] = smlal_row($a[2], $wa.2, $wb.2, x0, x1);
        $a[3] = smlal_row($a[3], $wa.3, $wb.3, x0, x1);
    }};
}

/// One token's 16 sums over one 16-output block `wb` of packed weights with `k` inputs:
/// 16 inputs per step (one 16-byte input load, `DUP` by lane per group, four `LD1` of 64
/// bytes of weights; every operand stays in registers: 8 sums, 8 weight rows, the inputs),
/// then the last `k % 16` inputs two groups of 4 at a time (the last group zero-padded, as
/// its weights are, and alone, its pair zero, where the group count is odd).
///
/// # Safety
/// `row` has `k` readable bytes and `wb` heads a packed block of `16·⌈k/4⌉·4` bytes.
#[inline(always)]
unsafe fn smlal_token(row: *const i8, wb: *const i8, k: usize) -> [int32x4_t; 4] {
    // SAFETY: register-only (NEON is a compile-time target feature here).
    let z = unsafe { vdupq_n_s32(0) };
    let mut a0: Acc8 = [(z, z); 4];
    let mut wp = wb;
    for kb in 0..k / 16 {
        // SAFETY: 16kb + 16 ≤ k bytes of the row are readable; wp = wb + 256·kb and its
        // four 64-byte loads are groups 4kb..4kb + 4, inside the block ((4kb + 4)·64 ≤
        // 16·⌈k/4⌉·4).
        unsafe {
            let x0 = vreinterpretq_s32_s8(vld1q_s8(row.add(16 * kb)));
            let wg = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
            let wh = ld1x4!(wp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
            smlal_pair!(a0, wg, wh, x0, 0, 1);
            let wg = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
            let wh = ld1x4!(wp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
            smlal_pair!(a0, wg, wh, x0, 2, 3);
        }
    }
    let groups = k.div_ceil(PW_KR);
    let mut g = 4 * (k / 16);
    while g < groups {
        let pair = g + 1 < groups;
        // SAFETY: row has k readable bytes (group4 zero-pads past k); groups g and g + 1
        // (when pair) lie inside the block: (g + 2)·64 ≤ 16·⌈k/4⌉·4 when pair, else
        // (g + 1)·64 ≤ it.
        unsafe {
            let zero = vdupq_n_s8(0);
            let x0 = vreinterpretq_s8_s32(vdupq_n_s32(group4(row, g, k)));
            let x1 = if pair {
                vreinterpretq_s8_s32(vdupq_n_s32(group4(row, g + 1, k)))
            } else {
                zero
            };
            for (r, a) in a0.iter_mut().enumerate() {
                let w0 = vld1q_s8(wb.add(g * 64 + r * 16));
                let w1 = if pair {
                    vld1q_s8(wb.add((g + 1) * 64 + r * 16))
                } else {
                    zero
                };
                *a = smlal_row(*a, w0, w1, x0, x1);
            }
        }
        g += 2;
    }
    // SAFETY: register-only pairwise adds of the two partials of each output.
    a0.map(|(p, q)| unsafe { vpaddq_s32(p, q) })
}

/// The ARMv8.0 micro-kernel: `MR` (1 or 2) tokens × 16 outputs. The tokens' sums are
/// computed one after the other ([`smlal_token`]: two tokens at once would need 30 of the
/// 32 registers and spill) and share one epilogue, which loads each channel's parameters
/// once.
///
/// # Safety
/// `gemm_fits` holds and `t + MR ≤ tokens`.
#[inline(always)]
unsafe fn gemm_smlal_tile<const MR: usize, const GELU: bool>(
    x: &[i8],
    t: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    let kp = k.div_ceil(PW_KR) * PW_KR;
    // SAFETY: rows t + m < tokens start at most (tokens − 1)·k ≤ x.len() bytes in
    // (gemm_fits, t + MR ≤ tokens).
    let rows: [*const i8; MR] = core::array::from_fn(|m| unsafe { x.as_ptr().add((t + m) * k) });
    for ob in 0..n.div_ceil(PW_NR) {
        let init = acc_init(e, ob * PW_NR);
        // Block ob spans 16·kp bytes inside the packed weights; each row has k bytes
        // (gemm_fits).
        let mut sums = [init; MR];
        for (s, &row) in sums.iter_mut().zip(&rows) {
            // SAFETY: as above; the rest is register-only.
            unsafe {
                let sum = smlal_token(row, l.w.as_ptr().add(ob * PW_NR * kp), k);
                for (v, p) in s.iter_mut().zip(sum) {
                    *v = vaddq_s32(*v, p);
                }
            }
        }
        // SAFETY: the caller's gemm_fits and t + MR ≤ tokens.
        unsafe { finish_tile::<MR, GELU>(sums, ob * PW_NR, t, e, l, out) };
    }
}

/// `SDOT acc.4s, w.16b, x.4b[lane]`.
macro_rules! sdot_lane {
    ($acc:expr, $w:expr, $x:expr, $lane:literal) => {
        asm!(
            concat!("sdot {a:v}.4s, {w:v}.16b, {x:v}.4b[", $lane, "]"),
            a = inout(vreg) $acc,
            w = in(vreg) $w,
            x = in(vreg) $x,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// int8 GEMM (pointwise conv, patch embedding) for the ARMv8.2 dot product: tiles of 4
/// tokens × 16 outputs, `SDOT` by element over input groups of 4 (16 inputs per `x`
/// register). Same arguments and result as [`reference::gemm_i8`]. Call only where
/// [`Isa::NeonDot`](crate::kernels::Isa::NeonDot) is available (falls back to the reference
/// otherwise).
///
/// ```
/// use convmixer_edge::kernels::{gemm_i8::neon, gemm_packed_len, reference};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) (+ the residual for depthwise layers).
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let rq_no_res: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let k = 40;
/// let w: Vec<i8> = (0..gemm_packed_len(n, k)).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq_no_res), zp_in: 0, zp_z: 0, zp_out: 0, table: &[] };
/// let x: Vec<i8> = (0..6 * k).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let (mut fast, mut slow) = (vec![0i8; 6 * n], vec![0i8; 6 * n]);
/// neon::gemm_i8_neon_sdot_4x16c4(&x, 6, k, n, &l, Activation::Relu, &mut fast);
/// reference::gemm_i8(&x, 6, k, n, &l, Activation::Relu, &mut slow);
/// assert_eq!(fast, slow);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm_i8_neon_sdot_4x16c4(
    x: &[i8],
    tokens: usize,
    k: usize,
    n: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    match GemmI8::new(l, k, n, act, true) {
        Some(g) if gemm_fits(x, tokens, k, n, l, act, out) => g.run(x, tokens, out),
        _ => reference::gemm_i8(x, tokens, k, n, l, act, out),
    }
}

/// [`gemm_i8_neon_sdot_4x16c4`] for one activation.
///
/// # Safety
/// `gemm_fits` holds (see there) for `e.dim` outputs, and the CPU implements FEAT_DotProd.
#[target_feature(enable = "dotprod")]
unsafe fn gemm_sdot<const GELU: bool>(
    x: &[i8],
    tokens: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let mut t = 0;
    while t + 4 <= tokens {
        // SAFETY: the caller's conditions and t + 4 ≤ tokens.
        unsafe { gemm_sdot_tile4::<GELU>(x, t, k, l, e, out) };
        t += 4;
    }
    while t < tokens {
        // SAFETY: as above.
        unsafe { gemm_sdot_tile::<1, GELU>(x, t, k, l, e, out) };
        t += 1;
    }
}

/// `SDOT` of one group of 4 inputs (lane `$lane` of `$x`) into 16 outputs (`$w`: 4
/// registers of 4 outputs × 4 inputs) of one token's accumulators `$a`.
macro_rules! sdot_group {
    ($a:ident, $w:ident, $x:ident, $lane:literal) => {
        sdot_lane!($a.0, $w.0, $x, $lane);
        sdot_lane!($a.1, $w.1, $x, $lane);
        sdot_lane!($a.2, $w.2, $x, $lane);
        sdot_lane!($a.3, $w.3, $x, $lane);
    };
}

/// The 4 tokens × 16 outputs micro-kernel: 16 accumulator registers, 4 input registers
/// (16 inputs of each token) and 4 weight registers (one `LD1` of 64 bytes: 16 outputs ×
/// 4 inputs) per group — 4 + 4 loads for 64 `SDOT`s per 16 inputs.
///
/// # Safety
/// `gemm_fits` holds, `t + 4 ≤ tokens`, and the CPU implements FEAT_DotProd.
#[target_feature(enable = "dotprod")]
unsafe fn gemm_sdot_tile4<const GELU: bool>(
    x: &[i8],
    t: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    let groups = k.div_ceil(PW_KR);
    let kp = groups * PW_KR;
    let full16 = k / 16; // input blocks of 16 that need no padding
                         // SAFETY: rows t..t + 4 ≤ tokens start at most (tokens − 1)·k ≤ x.len() bytes in
                         // (gemm_fits).
    let (r0, r1, r2, r3) = unsafe {
        let x = x.as_ptr();
        (
            x.add(t * k),
            x.add((t + 1) * k),
            x.add((t + 2) * k),
            x.add((t + 3) * k),
        )
    };
    for ob in 0..n.div_ceil(PW_NR) {
        // SAFETY: block ob spans PW_NR·kp bytes inside the packed weights.
        let wb = unsafe { l.w.as_ptr().add(ob * PW_NR * kp) };
        let [b0, b1, b2, b3] = acc_init(e, ob * PW_NR);
        let z = (b0, b1, b2, b3);
        let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
        let mut wp = wb;
        for kb in 0..full16 {
            // SAFETY: 16kb + 16 ≤ k bytes of each row are readable; wp = wb + 256·kb and
            // its four 64-byte loads are groups 4kb..4kb + 4, inside block ob
            // ((4kb + 4)·64 ≤ 16·kp since 16(kb + 1) ≤ k ≤ kp).
            unsafe {
                let (x0, x1, x2, x3) = (
                    vld1q_s8(r0.add(16 * kb)),
                    vld1q_s8(r1.add(16 * kb)),
                    vld1q_s8(r2.add(16 * kb)),
                    vld1q_s8(r3.add(16 * kb)),
                );
                let w = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
                sdot_group!(a0, w, x0, "0");
                sdot_group!(a1, w, x1, "0");
                sdot_group!(a2, w, x2, "0");
                sdot_group!(a3, w, x3, "0");
                let w = ld1x4!(wp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
                sdot_group!(a0, w, x0, "1");
                sdot_group!(a1, w, x1, "1");
                sdot_group!(a2, w, x2, "1");
                sdot_group!(a3, w, x3, "1");
                let w = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
                sdot_group!(a0, w, x0, "2");
                sdot_group!(a1, w, x1, "2");
                sdot_group!(a2, w, x2, "2");
                sdot_group!(a3, w, x3, "2");
                let w = ld1x4!(wp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
                sdot_group!(a0, w, x0, "3");
                sdot_group!(a1, w, x1, "3");
                sdot_group!(a2, w, x2, "3");
                sdot_group!(a3, w, x3, "3");
            }
        }
        let quad = |a: (int32x4_t, int32x4_t, int32x4_t, int32x4_t)| [a.0, a.1, a.2, a.3];
        let mut acc = [quad(a0), quad(a1), quad(a2), quad(a3)];
        if 4 * full16 < groups {
            // SAFETY: the groups past the 16-input blocks lie inside block ob; each row has
            // k bytes.
            unsafe { sdot_tail(&mut acc, wb, &[r0, r1, r2, r3], 4 * full16, groups, k) };
        }
        // SAFETY: the caller's gemm_fits and t + 4 ≤ tokens.
        unsafe { finish_tile::<4, GELU>(acc, ob * PW_NR, t, e, l, out) };
    }
}

/// The dot-product micro-kernel for `MR` tokens × 16 outputs (the last tokens of a layer).
///
/// # Safety
/// `gemm_fits` holds, `t + MR ≤ tokens`, and the CPU implements FEAT_DotProd.
#[target_feature(enable = "dotprod")]
unsafe fn gemm_sdot_tile<const MR: usize, const GELU: bool>(
    x: &[i8],
    t: usize,
    k: usize,
    l: &QuantLayer<'_>,
    e: &Epi,
    out: &mut [i8],
) {
    let n = e.dim;
    let groups = k.div_ceil(PW_KR);
    let kp = groups * PW_KR;
    let full16 = k / 16; // input blocks of 16 that need no padding
                         // SAFETY: rows t + m < tokens start at most (tokens − 1)·k ≤ x.len() bytes in
                         // (gemm_fits, t + MR ≤ tokens).
    let rows: [*const i8; MR] = core::array::from_fn(|m| unsafe { x.as_ptr().add((t + m) * k) });
    for ob in 0..n.div_ceil(PW_NR) {
        // SAFETY: block ob spans PW_NR·kp bytes inside the packed weights.
        let wb = unsafe { l.w.as_ptr().add(ob * PW_NR * kp) };
        let mut acc = [acc_init(e, ob * PW_NR); MR];
        for kb in 0..full16 {
            // SAFETY: (4kb + 4)·64 ≤ 16·kp since 16(kb+1) ≤ k ≤ kp.
            let w: [int8x16x4_t; 4] =
                core::array::from_fn(|q| unsafe { vld1q_s8_x4(wb.add((4 * kb + q) * 64)) });
            for (row, a) in rows.iter().zip(acc.iter_mut()) {
                // SAFETY: 16kb + 16 ≤ k bytes of the row are readable.
                let xv = unsafe { vld1q_s8(row.add(16 * kb)) };
                // SAFETY: register-only SDOTs (FEAT_DotProd: the caller's).
                unsafe {
                    sdot_lane!(a[0], w[0].0, xv, "0");
                    sdot_lane!(a[1], w[0].1, xv, "0");
                    sdot_lane!(a[2], w[0].2, xv, "0");
                    sdot_lane!(a[3], w[0].3, xv, "0");
                    sdot_lane!(a[0], w[1].0, xv, "1");
                    sdot_lane!(a[1], w[1].1, xv, "1");
                    sdot_lane!(a[2], w[1].2, xv, "1");
                    sdot_lane!(a[3], w[1].3, xv, "1");
                    sdot_lane!(a[0], w[2].0, xv, "2");
                    sdot_lane!(a[1], w[2].1, xv, "2");
                    sdot_lane!(a[2], w[2].2, xv, "2");
                    sdot_lane!(a[3], w[2].3, xv, "2");
                    sdot_lane!(a[0], w[3].0, xv, "3");
                    sdot_lane!(a[1], w[3].1, xv, "3");
                    sdot_lane!(a[2], w[3].2, xv, "3");
                    sdot_lane!(a[3], w[3].3, xv, "3");
                }
            }
        }
        if 4 * full16 < groups {
            // SAFETY: as for the tile of 4.
            unsafe { sdot_tail(&mut acc, wb, &rows, 4 * full16, groups, k) };
        }
        // SAFETY: the caller's gemm_fits and t + MR ≤ tokens.
        unsafe { finish_tile::<MR, GELU>(acc, ob * PW_NR, t, e, l, out) };
    }
}

/// Input groups `from..groups` (those past the last whole 16-input block, zero-padded
/// past `k`) of `MR` tokens into their accumulators, one `SDOT` by element per group and
/// 4 outputs; out of line so that its address arithmetic stays out of the tiles' loops.
///
/// # Safety
/// `wb` heads a packed weight block of `64·groups` bytes, each `rows[m]` points at `k`
/// readable bytes, `groups = k.div_ceil(4)`, and the CPU must implement FEAT_DotProd.
#[inline(never)]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tail<const MR: usize>(
    acc: &mut [[int32x4_t; 4]; MR],
    wb: *const i8,
    rows: &[*const i8; MR],
    from: usize,
    groups: usize,
    k: usize,
) {
    for g in from..groups {
        // SAFETY: group g < groups lies inside the block.
        let w: [int8x16_t; 4] =
            core::array::from_fn(|r| unsafe { vld1q_s8(wb.add(g * 64 + r * 16)) });
        for (a, row) in acc.iter_mut().zip(rows) {
            // SAFETY: each row points at k readable bytes.
            let xv = unsafe { vreinterpretq_s8_s32(vdupq_n_s32(group4(*row, g, k))) };
            for (ar, wr) in a.iter_mut().zip(w) {
                // SAFETY: register-only SDOT (FEAT_DotProd: the caller's).
                unsafe { sdot_lane!(*ar, wr, xv, "0") };
            }
        }
    }
}
