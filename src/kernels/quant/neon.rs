//! The NEON int8 epilogue shared by the NEON GEMM and depthwise kernels: the layer's
//! parameters as raw pointers ([`Epi`], checked once per call), the vector epilogue of 16
//! channels for 1..4 tokens (`epilogue_c16`, bit-exact with [`epilogue_i8`]) and the tile
//! finish that falls back to the scalar epilogue for a partial 16-channel block; also the
//! 64-byte load macro (`ld1x4!`) both kernels use.
//!
//! Safety: [`Epi::new`] checks the layer's sections ([`layer_fits`]); the `unsafe fn`s say
//! in `# Safety` what else they rely on and each `unsafe` block which check bounds it. NEON
//! is a compile-time target feature (this module exists only then).

use core::arch::aarch64::*;
use core::arch::asm;

use super::reference::{epilogue_i8, QuantLayer};
use crate::kernels::PW_NR;
use crate::Activation;

/// One `LD1 {vA.16b-vD.16b}, [p], #64`: 64 bytes into 4 consecutive registers (`$r0..$r3`
/// name them), advancing the pointer variable `$p` (the intrinsic `vld1q_s8_x4` becomes two
/// `LDP`s and an address add).
macro_rules! ld1x4 {
    ($p:ident, $r0:tt, $r1:tt, $r2:tt, $r3:tt, $list:tt) => {{
        let (a, b, c, d): (int8x16_t, int8x16_t, int8x16_t, int8x16_t);
        asm!(
            concat!("ld1 {{", $list, "}}, [{p}], #64"),
            p = inout(reg) $p,
            out($r0) a,
            out($r1) b,
            out($r2) c,
            out($r3) d,
            options(readonly, nostack, preserves_flags)
        );
        int8x16x4_t(a, b, c, d)
    }};
}

pub(crate) use ld1x4;

/// What the vector epilogue relies on for a layer with `n` outputs: `n` biases, exactly
/// `6·n` requant fields (the reference derives `n` from their length), zero points in i8
/// range (the blob reader's rule; [`Epi`] narrows them), and for GELU the table's two
/// 256-byte planes (ReLU layers have none).
pub(crate) fn layer_fits(l: &QuantLayer<'_>, act: Activation, n: usize) -> bool {
    let zp = |z: i32| (-128..=127).contains(&z);
    (act == Activation::Relu || l.table.len() >= 512)
        && n.checked_mul(4).is_some_and(|len| l.bias.0.len() >= len)
        && n.checked_mul(24) == Some(l.requant.0.len())
        && zp(l.zp_in)
        && zp(l.zp_out)
        && zp(l.zp_z)
}

/// What the vector epilogue reads of one layer, as raw pointers (see [`epilogue_c16`]),
/// built once per kernel call, only by [`Epi::new`] (its private fields keep any other
/// module from building one): so `bias` always points at `dim` i32, `rq` at `6·dim` i32
/// and, where `gelu`, `table` at 512 bytes.
#[derive(Clone, Copy)]
pub(crate) struct Epi {
    /// `dim` i32 biases (little-endian = native on aarch64 Linux and bare metal).
    bias: *const i32,
    /// `6 · dim` i32 requant fields, field-major: field `k` of channel `o` at `k·dim + o`.
    rq: *const i32,
    /// Output channels.
    pub(crate) dim: usize,
    /// 512 bytes (low plane, high plane) for GELU (checked by `layer_fits`); unused for ReLU.
    table: *const u8,
    /// Whether the layer's activation is a GELU (whose table `layer_fits` checked).
    pub(crate) gelu: bool,
    /// Whether some channel has `sh_pre < 0` (a saturating left shift before `SQRDMULH`);
    /// layers without one skip the `SQSHL`s.
    lsh: bool,
    /// Zero point of the layer input (the depthwise padding value).
    pub(crate) zp_in: i8,
    zp_z: i16,
    zp_out: i16,
}

impl Epi {
    /// Pointers into `l` for `dim` outputs with activation `act`, or `None` where
    /// [`layer_fits`] fails (it guarantees the lengths: bias ≥ 4·dim bytes, requant =
    /// 24·dim bytes, table ≥ 512 bytes when GELU; and the zero points' range).
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
            zp_z: l.zp_z.clamp(-128, 127) as i16,
            zp_out: l.zp_out.clamp(-128, 127) as i16,
        })
    }

    /// The biases of channels `o0..o0 + 16`: the accumulators' starting values.
    ///
    /// # Safety
    /// `o0 + 16 ≤ dim`.
    #[inline(always)]
    pub(crate) unsafe fn bias16(&self, o0: usize) -> [int32x4_t; 4] {
        // SAFETY: o0 + 16 ≤ dim i32 are readable (caller).
        core::array::from_fn(|q| unsafe { vld1q_s32(self.bias.add(o0 + 4 * q)) })
    }
}

/// One `LDP q` of 8 i32 at `$p` once `$dep` is computed (see [`ld4q_after`]).
macro_rules! ld2q_after {
    ($p:expr, $dep:expr) => {{
        let (a, b): (int32x4_t, int32x4_t);
        asm!(
            "ldp {a:q}, {b:q}, [{p}] // after {d:v}",
            p = in(reg) $p,
            d = in(vreg) $dep,
            a = lateout(vreg) a,
            b = lateout(vreg) b,
            options(pure, readonly, nostack, preserves_flags)
        );
        [a, b]
    }};
}

/// Two `LDP q` of 16 i32 at `$p` (one field of 16 channels), issued only once `$dep` (any
/// vector) has been computed: the epilogue loads each stage's parameters through this so
/// that the compiler does not hoist them all to the top, where they would hold registers
/// through the earlier stages (and spill the accumulators).
macro_rules! ld4q_after {
    ($p:expr, $dep:expr) => {{
        let (a, b, c, d): (int32x4_t, int32x4_t, int32x4_t, int32x4_t);
        asm!(
            "ldp {a:q}, {b:q}, [{p}] // after {d:v}",
            "ldp {c:q}, {e:q}, [{p}, #32]",
            p = in(reg) $p,
            d = in(vreg) $dep,
            a = lateout(vreg) a,
            b = lateout(vreg) b,
            c = lateout(vreg) c,
            e = lateout(vreg) d,
            options(pure, readonly, nostack, preserves_flags)
        );
        [a, b, c, d]
    }};
}

/// `$p + $off` (a pointer plus a byte offset) computed where the compiler cannot see it:
/// the epilogue steps from one requant field to the next with it, so that the compiler
/// keeps one pointer per tile instead of one induction variable per field (which it would
/// spill to the stack and update there on every tile). The asm only adds two registers
/// (no memory access, hence `nomem` with a pointer operand); the result is the pointer the
/// same `wrapping_add` would give, and every use of it is bounded where it is loaded.
macro_rules! step {
    ($p:expr, $off:expr) => {{
        let mut p: *const i32 = $p;
        asm!(
            "add {p}, {p}, {o}",
            p = inout(reg) p,
            o = in(reg) $off,
            options(pure, nomem, nostack, preserves_flags)
        );
        p
    }};
}

/// `$acc + $x·$m` on the low (`SMLAL`) or high (`SMLAL2`) 4 i16 lanes, in `asm!` so that
/// the compiler keeps the i16 multiply instead of widening both operands for an i32 `MLA`.
macro_rules! smlal16 {
    ($acc:expr, $x:expr, $m:expr, $op:literal, $arr:literal) => {{
        let mut a: int32x4_t = $acc;
        asm!(
            concat!($op, " {a:v}.4s, {x:v}.", $arr, ", {m:v}.", $arr),
            a = inout(vreg) a,
            x = in(vreg) $x,
            m = in(vreg) $m,
            options(pure, nomem, nostack, preserves_flags)
        );
        a
    }};
}

/// The GELU table lookup of [`gelu_lookup`] for the index registers `$i` (one per token),
/// giving the low-plane bytes `$lo` and high-plane bytes `$hi`, in one `asm!` block: the
/// table's quarters go through the fixed registers v24–v27 (low plane) and v28–v31 (high
/// plane), each loaded once for all tokens.
macro_rules! gelu_tbl {
    ($t:expr; $(($i:ident, $lo:ident, $hi:ident)),+) => {
        asm!(
            "add {pl}, {t}, #128",
            "add {ph}, {t}, #384",
            "movi {c1:v}.16b, #0x40",
            "movi {c2:v}.16b, #0x80",
            "movi {c3:v}.16b, #0xc0",
            // z = 0..63: entries 128..191.
            "ld1 {{v24.16b-v27.16b}}, [{pl}], #64",
            "ld1 {{v28.16b-v31.16b}}, [{ph}], #64",
            $(
                concat!("tbl {", stringify!($lo), ":v}.16b, {{v24.16b-v27.16b}}, {", stringify!($i), ":v}.16b"),
                concat!("tbl {", stringify!($hi), ":v}.16b, {{v28.16b-v31.16b}}, {", stringify!($i), ":v}.16b"),
            )+
            // z = 64..127: entries 192..255.
            "ld1 {{v24.16b-v27.16b}}, [{pl}]",
            "ld1 {{v28.16b-v31.16b}}, [{ph}]",
            "sub {pl}, {pl}, #192",
            "sub {ph}, {ph}, #192",
            $(
                concat!("sub {x:v}.16b, {", stringify!($i), ":v}.16b, {c1:v}.16b"),
                concat!("tbx {", stringify!($lo), ":v}.16b, {{v24.16b-v27.16b}}, {x:v}.16b"),
                concat!("tbx {", stringify!($hi), ":v}.16b, {{v28.16b-v31.16b}}, {x:v}.16b"),
            )+
            // z = −128..−65: entries 0..63.
            "ld1 {{v24.16b-v27.16b}}, [{pl}], #64",
            "ld1 {{v28.16b-v31.16b}}, [{ph}], #64",
            $(
                concat!("sub {x:v}.16b, {", stringify!($i), ":v}.16b, {c2:v}.16b"),
                concat!("tbx {", stringify!($lo), ":v}.16b, {{v24.16b-v27.16b}}, {x:v}.16b"),
                concat!("tbx {", stringify!($hi), ":v}.16b, {{v28.16b-v31.16b}}, {x:v}.16b"),
            )+
            // z = −64..−1: entries 64..127.
            "ld1 {{v24.16b-v27.16b}}, [{pl}]",
            "ld1 {{v28.16b-v31.16b}}, [{ph}]",
            $(
                concat!("sub {x:v}.16b, {", stringify!($i), ":v}.16b, {c3:v}.16b"),
                concat!("tbx {", stringify!($lo), ":v}.16b, {{v24.16b-v27.16b}}, {x:v}.16b"),
                concat!("tbx {", stringify!($hi), ":v}.16b, {{v28.16b-v31.16b}}, {x:v}.16b"),
            )+
            t = in(reg) $t,
            pl = out(reg) _,
            ph = out(reg) _,
            c1 = out(vreg) _,
            c2 = out(vreg) _,
            c3 = out(vreg) _,
            x = out(vreg) _,
            $($i = in(vreg) $i, $lo = out(vreg) $lo, $hi = out(vreg) $hi,)+
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            out("v28") _, out("v29") _, out("v30") _, out("v31") _,
            options(pure, readonly, nostack, preserves_flags)
        )
    };
}

/// 16 lanes of the GELU table (`[lo, hi]` byte planes) for `MR` index vectors, indexed by
/// `z` itself (as `u8`, so `z + 128` needs no add): each 64-byte quarter of both planes is
/// loaded once, in the order `z` = 0..63, 64..127, −128..−65, −64..−1, and applied to every
/// index with `TBL`/`TBX` (a `TBL` gives 0 and a `TBX` leaves the lane alone where the index
/// is past its 64 bytes). Tiles of 4 and 2 tokens share the loads; others go one by one.
///
/// # Safety
/// `table` points at 512 readable bytes.
#[inline(always)]
// Indices: in the MR == 4 branch 0..=3, in the MR == 2 branch 0 and 1, in the loop m < MR:
// all below the const length MR of `idx` and `r` (`% MR` keeps the branches that a given
// MR never takes in bounds too; every instantiation has MR ≥ 1).
#[allow(clippy::indexing_slicing)]
unsafe fn gelu_lookup<const MR: usize>(
    table: *const u8,
    idx: &[uint8x16_t; MR],
) -> [[uint8x16_t; 2]; MR] {
    // SAFETY: eight 64-byte loads inside the 512-byte table; the rest is register-only.
    unsafe {
        let mut r = [[vdupq_n_u8(0); 2]; MR];
        if MR == 4 {
            let (i0, i1, i2, i3) = (idx[0], idx[1], idx[2], idx[3 % MR]);
            let (l0, h0, l1, h1, l2, h2, l3, h3);
            gelu_tbl!(table; (i0, l0, h0), (i1, l1, h1), (i2, l2, h2), (i3, l3, h3));
            r[0] = [l0, h0];
            r[1 % MR] = [l1, h1];
            r[2 % MR] = [l2, h2];
            r[3 % MR] = [l3, h3];
        } else if MR == 2 {
            let (i0, i1) = (idx[0], idx[1 % MR]);
            let (l0, h0, l1, h1);
            gelu_tbl!(table; (i0, l0, h0), (i1, l1, h1));
            r[0] = [l0, h0];
            r[1 % MR] = [l1, h1];
        } else {
            for m in 0..MR {
                let i0 = idx[m];
                let (l0, h0);
                gelu_tbl!(table; (i0, l0, h0));
                r[m] = [l0, h0];
            }
        }
        r
    }
}

/// The int8 epilogue ([`epilogue_i8`]) of 16 channels `o0..o0 + 16` for `MR` tokens, in
/// NEON, bit-exact with the reference. `acc[m][q]` holds the accumulators (bias included)
/// of channels `o0 + 4q..o0 + 4q + 4` of token `m`; `res[m]`, when given, points at the 16
/// residual input bytes of token `m`.
///
/// * `rq(acc, m_pre, sh_pre)`: `SQSHL` by `max(−sh, 0)` (only in layers where some
///   `sh < 0`), `SQRDMULH`, `SRSHL` by `min(−sh, 0)` (a rounding right shift);
/// * GELU: two saturating narrows to i16, `SQADD zp_z`, a saturating narrow to i8 (together
///   equal to `clamp(zp_z + v, −128, 127)`: an i16-saturated `v` stays out of i8 range after
///   adding a zero point), `TBL` on the low and high byte planes by `z` as `u8`, `ZIP`
///   into i16. ReLU: `SQXTN` to i16 (= `min(v, 32767)` … and `max(v, −32768)`), then `SMAX`
///   with 0;
/// * `b_post + a·m_post` by `SMLAL` of i16 lanes (`|m_post| ≤ 2^14`, the reader's rule, so
///   it narrows exactly), `+ (x_res − zp_in)·m_res` by `MLA .4s` (no overflow: the reader
///   bounds the fields so that the sum stays below 2^31), `SRSHL` by `−sh_post`;
/// * `SQXTN` to i16, `SQADD zp_out`, `SQXTN` to i8: `clamp(zp_out + v, −128, 127)`, as
///   above.
///
/// # Safety
/// `o0 + 16 ≤ e.dim`, `GELU` only where `e.gelu` (so that its table exists), each `out[m]`
/// points at 16 writable bytes and each `res[m]` at 16 readable ones. (`e`'s other pointers
/// hold `dim` channels by construction, see [`Epi`].)
#[inline(always)]
// Indices: q < 4, h < 2 and m < MR are loop counters over the const lengths of the arrays
// they index (`sh_pre`, `m_pre`, `a`: 4; `act[m]`, `half[m]`: 2; `acc`, `act`, `half`,
// `res`, `out`: MR), and MR − 1 < MR (every instantiation has MR ≥ 1). `step!` passes a
// pointer to a `nomem` asm that only adds an offset to it (see there).
#[allow(clippy::indexing_slicing, clippy::pointers_in_nomem_asm_block)]
pub(crate) unsafe fn epilogue_c16<const MR: usize, const GELU: bool>(
    e: &Epi,
    o0: usize,
    mut acc: [[int32x4_t; 4]; MR],
    res: Option<[*const i8; MR]>,
    out: [*mut i8; MR],
) {
    // SAFETY: every load below reads channels o0..o0 + 16 ≤ dim of a dim-long field f0..f5
    // (fk = rq + k·dim + o0, inside the 6·dim fields), the 512-byte table (GELU, e.gelu),
    // or res[m][0..16]; every store writes out[m][0..16]; the rest is register-only.
    unsafe {
        let zero = vdupq_n_s32(0);
        // Field k of channels o0..o0 + 16 is at f[k]: one pointer stepped by the field
        // stride (see `step!`).
        let stride = 4 * e.dim;
        let f0 = e.rq.add(o0);
        let f1 = step!(f0, stride);
        let last = acc[MR - 1][3];
        let sh_pre = ld4q_after!(f1, last);
        if e.lsh {
            for q in 0..4 {
                let left = vmaxq_s32(vnegq_s32(sh_pre[q]), zero);
                for a in acc.iter_mut() {
                    a[q] = vqshlq_s32(a[q], left);
                }
            }
        }
        let m_pre = ld4q_after!(f0, last);
        for q in 0..4 {
            // −sh ≤ 0 unless some channel shifted left above.
            let right = vminq_s32(vnegq_s32(sh_pre[q]), zero);
            for a in acc.iter_mut() {
                a[q] = vrshlq_s32(vqrdmulhq_s32(a[q], m_pre[q]), right);
            }
        }
        // The activation a of each token as two i16 vectors (channels 0..8, 8..16).
        let act: [[int16x8_t; 2]; MR] = if GELU {
            let zp_z = vdupq_n_s16(e.zp_z);
            let idx: [uint8x16_t; MR] = core::array::from_fn(|m| {
                let a = &acc[m];
                let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(a[0]), a[1]), zp_z);
                let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(a[2]), a[3]), zp_z);
                vreinterpretq_u8_s8(vqmovn_high_s16(vqmovn_s16(lo), hi))
            });
            let t = gelu_lookup(e.table, &idx);
            core::array::from_fn(|m| {
                let [lo, hi] = t[m];
                [
                    vreinterpretq_s16_u8(vzip1q_u8(lo, hi)),
                    vreinterpretq_s16_u8(vzip2q_u8(lo, hi)),
                ]
            })
        } else {
            let z16 = vdupq_n_s16(0);
            core::array::from_fn(|m| {
                let a = &acc[m];
                [
                    vmaxq_s16(vqmovn_high_s32(vqmovn_s32(a[0]), a[1]), z16),
                    vmaxq_s16(vqmovn_high_s32(vqmovn_s32(a[2]), a[3]), z16),
                ]
            })
        };
        // The affine part per half h (channels 8h..8h + 8), each loading its parameters
        // (and residual bytes) only once its activations exist, which keeps the live
        // registers below 32.
        let f2 = step!(f1, stride);
        let f3 = step!(f2, stride);
        let f4 = step!(f3, stride);
        let f5 = step!(f4, stride);
        let zp_out = vdupq_n_s16(e.zp_out);
        let zp_in = vdup_n_s8(e.zp_in);
        let mut half = [[vdupq_n_s16(0); 2]; MR];
        for h in 0..2 {
            let dep = act[MR - 1][h];
            let mp = ld2q_after!(f2.add(8 * h), dep);
            let m_post = vmovn_high_s32(vmovn_s32(mp[0]), mp[1]);
            let b_post = ld2q_after!(f3.add(8 * h), dep);
            let nsh = ld2q_after!(f4.add(8 * h), dep).map(|v| vnegq_s32(v));
            let m_res = res.map(|_| ld2q_after!(f5.add(8 * h), dep));
            for m in 0..MR {
                let mut v0 = smlal16!(b_post[0], act[m][h], m_post, "smlal", "4h");
                let mut v1 = smlal16!(b_post[1], act[m][h], m_post, "smlal2", "8h");
                if let (Some(res), Some(m_res)) = (res, m_res) {
                    let d = vsubl_s8(vld1_s8(res[m].add(8 * h)), zp_in);
                    v0 = vmlaq_s32(v0, vmovl_s16(vget_low_s16(d)), m_res[0]);
                    v1 = vmlaq_s32(v1, vmovl_high_s16(d), m_res[1]);
                }
                v0 = vrshlq_s32(v0, nsh[0]);
                v1 = vrshlq_s32(v1, nsh[1]);
                half[m][h] = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v0), v1), zp_out);
            }
        }
        for m in 0..MR {
            vst1q_s8(out[m], vqmovn_high_s16(vqmovn_s16(half[m][0]), half[m][1]));
        }
    }
}

/// The accumulators' starting values for the 16-output block at `o0`: its biases when the
/// block is whole (the vector epilogue expects them included), else zeros (the scalar
/// epilogue of a partial block adds them).
#[inline(always)]
pub(crate) fn acc_init(e: &Epi, o0: usize) -> [int32x4_t; 4] {
    if o0 + PW_NR <= e.dim {
        // SAFETY: o0 + 16 ≤ dim, and `e.bias` holds dim i32 (Epi::new).
        unsafe { e.bias16(o0) }
    } else {
        // SAFETY: register-only (NEON is a compile-time target feature here).
        unsafe { [vdupq_n_s32(0); 4] }
    }
}

/// Applies the epilogue to one `MR` tokens × 16 outputs tile of a GEMM with `e.dim` outputs
/// (tokens `t..t + MR`, outputs `o0..`), whose accumulators started at [`acc_init`]: the
/// vector epilogue when all 16 outputs exist, else the scalar one on the `dim − o0` that
/// do.
///
/// # Safety
/// `e` was built from `l` with `GELU` = `e.gelu`, `out` holds `tokens · e.dim` bytes
/// (`gemm_fits`), and `t + MR ≤ tokens`.
#[inline(always)]
pub(crate) unsafe fn finish_tile<const MR: usize, const GELU: bool>(
    acc: [[int32x4_t; 4]; MR],
    o0: usize,
    t: usize,
    e: &Epi,
    l: &QuantLayer<'_>,
    out: &mut [i8],
) {
    let dim = e.dim;
    if o0 + PW_NR <= dim {
        // All pointers derive from one borrow of `out`: (t + m)·dim + o0 + 16 ≤ tokens·dim ≤
        // out.len() (gemm_fits, t + MR ≤ tokens, o0 + 16 ≤ dim).
        let base = out.as_mut_ptr();
        let ptrs: [*mut i8; MR] = core::array::from_fn(|m| base.wrapping_add((t + m) * dim + o0));
        // SAFETY: o0 + 16 ≤ dim; GELU = e.gelu; each pointer heads 16 bytes of `out` (the
        // caller's t + MR ≤ tokens and out.len() ≥ tokens·dim).
        unsafe { epilogue_c16::<MR, GELU>(e, o0, acc, None, ptrs) };
        return;
    }
    finish_partial::<MR, GELU>(&acc, o0, t, l, out);
}

/// The scalar epilogue of a partial 16-output block (`dim − o0 < 16` outputs), out of line
/// so that its address arithmetic stays out of the kernels' loops.
#[cold]
#[inline(never)]
fn finish_partial<const MR: usize, const GELU: bool>(
    acc: &[[int32x4_t; 4]; MR],
    o0: usize,
    t: usize,
    l: &QuantLayer<'_>,
    out: &mut [i8],
) {
    let dim = l.requant.0.len() / 24;
    // The reference's epilogue treats both GELU variants alike (the table holds either).
    let act = if GELU {
        Activation::Gelu
    } else {
        Activation::Relu
    };
    for (m, a) in acc.iter().enumerate() {
        let mut sums = [0i32; PW_NR];
        for (q, v) in a.iter().enumerate() {
            // SAFETY: 4q + 4 ≤ 16 lanes of the local array.
            unsafe { vst1q_s32(sums.as_mut_ptr().add(4 * q), *v) };
        }
        // Row t + m of `out` (inside it for the tiles' callers; a row past the end would be
        // skipped, not a panic).
        let row = (t + m) * dim;
        if let Some(out) = out.get_mut(row..row + dim) {
            finish_block(&sums, o0, l, act, out);
        }
    }
}

/// Applies the epilogue to the outputs `o0..` (at most 16) of one token's row `out`.
#[inline(always)]
fn finish_block(
    sums: &[i32; PW_NR],
    o0: usize,
    l: &QuantLayer<'_>,
    act: Activation,
    out: &mut [i8],
) {
    for (o, (s, y)) in (o0..).zip(sums.iter().zip(out.iter_mut().skip(o0))) {
        let acc = l.bias.at(o).wrapping_add(*s);
        *y = epilogue_i8(acc, 0, &l.requant(o), l, act);
    }
}
