//! AArch64 NEON int8 kernels, each named by ISA level and tile shape and tested bit for
//! bit against [`super::reference`].
//!
//! * `…_smlal_…`: ARMv8.0 (Cortex-A53/A72, Raspberry Pi 3/4): `SMULL`/`SMLAL` multiply
//!   i8 × i8 into i16 lanes, two products per lane (safe: weights are never −128, so
//!   `|2 · 127 · 128| < 2^15`), then `SADALP`/`SADDW` widen into i32 accumulators.
//! * `…_sdot_…`: ARMv8.2 dot product (Cortex-A76, Raspberry Pi 5): `SDOT` by element,
//!   four i8 products straight into each i32 lane. `SDOT` is emitted with `asm!` because its
//!   intrinsics are not stable Rust yet.
//!
//! All accumulation is exact integer arithmetic bounded by the reader's accumulator check
//! (`docs/blob-format.md`), so any summation order gives the reference's value; the
//! vector epilogue (`epilogue_c16`) computes [`epilogue_i8`]'s bits for 16 channels at once
//! (partial blocks use [`epilogue_i8`] itself).
//!
//! Safety: every public kernel checks its slice lengths once on entry, in checked
//! arithmetic (falling back to the reference, or doing nothing, where they do not fit), and
//! then reads and writes only inside them: `Epi::new` and [`GemmI8::new`] check the layer's
//! sections, the entry points the activations and scratch. The `unsafe fn`s below them say
//! in `# Safety` which of those facts they rely on, and each `unsafe` block says which check
//! bounds its pointer accesses. NEON is a compile-time target feature (this module exists
//! only then); the `SDOT` kernels run only where FEAT_DotProd was detected
//! ([`super::Isa::NeonDot`]). Indexing of the small fixed-size register arrays (`acc[m][q]`
//! and the like) is by loop counters below the arrays' const lengths, allowed function by
//! function with that proof.

use core::arch::aarch64::*;
use core::arch::asm;

use super::reference::{self, epilogue_i8, QuantLayer};
use super::{Grid, PW_KR, PW_NR};
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

/// Lengths a GEMM kernel (`k` inputs, `n` outputs per token) may rely on. The unsafe GEMM
/// functions below say "`gemm_fits` holds" for: `x` holds `tokens·k` bytes, `out`
/// `tokens·n`, `l.w` the `packed_len(n, k)` packed weights, and the `Epi` they get was built
/// from `l` for `n = e.dim` outputs (so `layer_fits`) with their `GELU` equal to `e.gelu`.
/// [`GemmI8::new`] and [`GemmI8::run`] check all of it.
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
        && packed_len(n, k).is_some_and(|len| l.w.len() >= len)
}

/// [`super::gemm_packed_len`] where it does not overflow.
fn packed_len(n: usize, k: usize) -> Option<usize> {
    let rows = n.div_ceil(PW_NR).checked_mul(PW_NR)?;
    rows.checked_mul(k.div_ceil(PW_KR).checked_mul(PW_KR)?)
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

/// What the vector epilogue relies on for a layer with `n` outputs: `n` biases, exactly
/// `6·n` requant fields (the reference derives `n` from their length), zero points in i8
/// range (the blob reader's rule; [`Epi`] narrows them), and for GELU the table's two
/// 256-byte planes (ReLU layers have none).
fn layer_fits(l: &QuantLayer<'_>, act: Activation, n: usize) -> bool {
    let zp = |z: i32| (-128..=127).contains(&z);
    (act == Activation::Relu || l.table.len() >= 512)
        && n.checked_mul(4).is_some_and(|len| l.bias.0.len() >= len)
        && n.checked_mul(24) == Some(l.requant.0.len())
        && zp(l.zp_in)
        && zp(l.zp_out)
        && zp(l.zp_z)
}

/// What the vector epilogue reads of one layer, as raw pointers (see [`epilogue_c16`]),
/// built once per kernel call, only by [`Epi::new`]: so `bias` always points at `dim` i32,
/// `rq` at `6·dim` i32 and, where `gelu`, `table` at 512 bytes.
#[derive(Clone, Copy)]
struct Epi {
    /// `dim` i32 biases (little-endian = native on aarch64 Linux and bare metal).
    bias: *const i32,
    /// `6 · dim` i32 requant fields, field-major: field `k` of channel `o` at `k·dim + o`.
    rq: *const i32,
    dim: usize,
    /// 512 bytes (low plane, high plane) for GELU (checked by `layer_fits`); unused for ReLU.
    table: *const u8,
    /// Whether the layer's activation is a GELU (whose table `layer_fits` checked).
    gelu: bool,
    /// Whether some channel has `sh_pre < 0` (a saturating left shift before `SQRDMULH`);
    /// layers without one skip the `SQSHL`s.
    lsh: bool,
    zp_in: i8,
    zp_z: i16,
    zp_out: i16,
}

impl Epi {
    /// Pointers into `l` for `dim` outputs with activation `act`, or `None` where
    /// [`layer_fits`] fails (it guarantees the lengths: bias ≥ 4·dim bytes, requant =
    /// 24·dim bytes, table ≥ 512 bytes when GELU; and the zero points' range).
    fn new(l: &QuantLayer<'_>, act: Activation, dim: usize) -> Option<Epi> {
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
    unsafe fn bias16(&self, o0: usize) -> [int32x4_t; 4] {
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
unsafe fn epilogue_c16<const MR: usize, const GELU: bool>(
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
fn acc_init(e: &Epi, o0: usize) -> [int32x4_t; 4] {
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
unsafe fn finish_tile<const MR: usize, const GELU: bool>(
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

/// int8 GEMM (pointwise conv, patch embedding) for ARMv8.0: tiles of 2 tokens × 16 outputs,
/// inputs in groups of 4 (`…c4`, the packed weight layout), `SMULL`+`SMLAL` pairs into i16,
/// `SADALP` into i32. Same arguments and result as [`reference::gemm_i8`].
///
/// ```
/// use convmixer_edge::kernels::{neon, gemm_packed_len, reference::{self, QuantLayer}};
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
/// kernel on a few tokens at a time ([`super::inplace`]).
///
/// ```
/// use convmixer_edge::kernels::{neon::GemmI8, gemm_packed_len, reference::{self, QuantLayer}};
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
            && packed_len(n, k).is_some_and(|len| l.w.len() >= len)
            && (!dot || super::Isa::NeonDot.available());
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
/// [`super::Isa::NeonDot`] is available (falls back to the reference otherwise).
///
/// ```
/// use convmixer_edge::kernels::{gemm_packed_len, neon, reference};
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

/// Largest depthwise kernel the NEON path takes (`k ≤ 9`, so at most 81 taps); larger
/// kernels use the reference.
const DW_MAX_K: usize = 9;

/// `SDOT acc.4s, a.16b, b.16b`: each i32 lane adds the dot product of its 4 byte pairs.
macro_rules! sdot_vec {
    ($acc:expr, $a:expr, $b:expr) => {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) $acc,
            a = in(vreg) $a,
            b = in(vreg) $b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
}

/// One (tap group, kx) of the slice-wise depthwise for consecutive outputs `$a…`: each
/// loads its cache column at `$cp` (advancing it by 64) and adds 4 `SDOT`s.
macro_rules! sdot_cols {
    ($wv:ident, $cp:ident; $($a:ident),+) => {
        $(
            let u = ld1x4!($cp, "v20", "v21", "v22", "v23", "v20.16b-v23.16b");
            sdot_vec!($a[0], $wv.0, u.0);
            sdot_vec!($a[1], $wv.1, u.1);
            sdot_vec!($a[2], $wv.2, u.2);
            sdot_vec!($a[3], $wv.3, u.3);
        )+
    };
}

/// One (tap group, kx) of the slice-wise depthwise for several outputs: `$wv` the packed
/// weights (4 channels × 4 rows per register), `$c` the cache column of the first output;
/// output `$a` reads the cache 64 bytes × its offset further.
macro_rules! dw_sdot_taps {
    ($wv:ident, $c:ident; $($a:ident @ $off:expr),+) => {
        $(
            let u = vld1q_s8_x4($c.add($off));
            sdot_vec!($a[0], $wv.0, u.0);
            sdot_vec!($a[1], $wv.1, u.1);
            sdot_vec!($a[2], $wv.2, u.2);
            sdot_vec!($a[3], $wv.3, u.3);
        )+
    };
}

/// Depthwise 'same' conv + residual in place on `a`, with the ARMv8.2 dot product.
///
/// The taps are grouped by 4 kernel rows, so one `SDOT` (by vector) adds 4 taps of 4
/// channels: each 16-channel slice of the layer is processed on its own (depthwise channels
/// are independent), row by row. For each output row, `ST4` interleaves the 4 input rows of
/// each tap group column by column into a small cache (`[column][channel][4 rows]`, 64
/// bytes per column and group, padding = `zp_in`); the weights of the slice are packed the
/// same way once (`[group][kx][channel][4 rows]`, rows past `k` zero). An output then costs
/// per (group, kx) one 64-byte load of cached inputs and four `SDOT`s; four outputs share
/// each weight load and one vector epilogue. The outputs of a row wait in a row buffer
/// while the row's originals move to a ring of `pad_top` rows (of this slice) that the
/// next rows read.
///
/// Returns false, touching nothing, where it does not apply (no dot product, `dim` not a
/// multiple of 16, `k > 9`, short buffers); the caller then uses the per-token drivers.
/// Gives exactly the bytes of [`reference::dw_i8`] (tested in `inplace`).
///
/// ```
/// use convmixer_edge::kernels::{inplace, neon, reference, Grid, Isa};
/// # use convmixer_edge::{le::I32Le, Activation};
/// # use convmixer_edge::kernels::reference::QuantLayer;
/// # let n = 16;
/// # // Field-major requant records: ReLU(acc / 2) (+ the residual for depthwise layers).
/// # let rq: Vec<u8> = [1 << 30, 0, 1, 0, 0, 1i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let rq_no_res: Vec<u8> = [1 << 30, 0, 1, 0, 0, 0i32].iter().flat_map(|v| v.to_le_bytes().repeat(n)).collect();
/// # let bias = vec![0u8; 4 * n];
/// let g = Grid { ht: 3, wt: 5, dim: n, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<i8> = (0..9 * n).map(|i| (i % 7) as i8 - 3).collect();
/// let l = QuantLayer { w: &w, bias: I32Le(&bias), requant: I32Le(&rq), zp_in: 3, zp_z: 0, zp_out: -5, table: &[] };
/// let x: Vec<i8> = (0..15 * n).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let mut want = vec![0i8; x.len()];
/// reference::dw_i8(&x, g, &l, Activation::Relu, &mut want);
/// let (mut a, mut scratch) = (x.clone(), vec![0i8; inplace::dw_slice_scratch_len(g)]);
/// let ran = neon::dw_i8_inplace_sdot(&mut a, &mut scratch, g, &l, Activation::Relu);
/// assert_eq!(ran, Isa::NeonDot.available());
/// if ran {
///     assert_eq!(a, want);
/// }
/// ```
pub fn dw_i8_inplace_sdot(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    let k = g.kernel;
    let ok = super::Isa::NeonDot.available()
        && g.dim % 16 == 0
        && (1..=DW_MAX_K).contains(&k)
        && g.pad_top < k
        && g.pad_left < k
        && dw_fits(g, l)
        && g.elements().is_some_and(|n| a.len() >= n)
        && scratch.len() >= super::inplace::dw_slice_scratch_len(g);
    let e = Epi::new(l, act, g.dim).filter(|_| ok);
    if let Some(e) = &e {
        // SAFETY: dotprod is available; the lengths are checked above and by Epi::new, which
        // built e from l; GELU = e.gelu.
        unsafe {
            if e.gelu {
                dw_sdot_rows::<true>(a, scratch, g, l, e)
            } else {
                dw_sdot_rows::<false>(a, scratch, g, l, e)
            }
        };
    }
    e.is_some()
}

/// # Safety
/// The conditions `dw_i8_inplace_sdot` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`; the CPU implements FEAT_DotProd.
#[target_feature(enable = "dotprod")]
unsafe fn dw_sdot_rows<const GELU: bool>(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let (d, k, ht, wt, pt, pl) = (g.dim, g.kernel, g.ht, g.wt, g.pad_top, g.pad_left);
    let groups = k.div_ceil(4);
    let cols = wt + k - 1;
    // SAFETY: the four buffers ring (pt·wt·16 bytes), wpack (groups·k·64), cache
    // (groups·cols·64) and rowbuf (wt·16) lie one after the other inside scratch, whose
    // length is at least their sum (dw_slice_scratch_len, checked by the caller).
    let (ring, wpack, cache, rowbuf) = unsafe {
        let ring = scratch.as_mut_ptr();
        let wpack = ring.add(pt * wt * 16);
        let cache = wpack.add(groups * k * 64);
        (ring, wpack, cache, cache.add(groups * cols * 64))
    };
    let ap = a.as_mut_ptr();
    let w = l.w.as_ptr();
    let zp = vdupq_n_s8(e.zp_in);
    let zero = vdupq_n_s8(0);
    // The cache's padding columns (left of 0 and right of wt) are zp_in in every group, row
    // and slice: write them once.
    for gi in 0..groups {
        for col in (0..pl).chain(pl + wt..cols) {
            // SAFETY: (gi·cols + col)·64 + 64 ≤ groups·cols·64.
            unsafe {
                vst1q_s8_x4(
                    cache.add((gi * cols + col) * 64),
                    int8x16x4_t(zp, zp, zp, zp),
                )
            };
        }
    }
    for c0 in (0..d).step_by(16) {
        // SAFETY: for the whole slice c0, every offset below is inside its buffer: weights
        // (ky·k + kx)·d + c0 + 16 ≤ k²·d (dw_fits); activations (t·d + c0 + 16 ≤ tokens·d);
        // ring (slot·wt + x)·16 + 16 ≤ pt·wt·16; wpack (gi·k + kx)·64 + 64 ≤ groups·k·64;
        // cache (gi·cols + col)·64 + 64 ≤ groups·cols·64; rowbuf x·16 + 16 ≤ wt·16.
        unsafe {
            for gi in 0..groups {
                for kx in 0..k {
                    let row = |j: usize| {
                        let ky = 4 * gi + j;
                        if ky < k {
                            vld1q_s8(w.add((ky * k + kx) * d + c0))
                        } else {
                            zero
                        }
                    };
                    let v = int8x16x4_t(row(0), row(1), row(2), row(3));
                    vst4q_s8(wpack.add((gi * k + kx) * 64), v);
                }
            }
            for y in 0..ht {
                for gi in 0..groups {
                    // Input row j of group gi: (base, stride) or None (padding → zp_in).
                    let src = |j: usize| -> Option<(*const i8, usize)> {
                        let ky = 4 * gi + j;
                        let yy = (y + ky).wrapping_sub(pt);
                        if ky >= k || yy >= ht {
                            None
                        } else if yy < y {
                            Some((ring.add((yy % pt) * wt * 16).cast_const(), 16))
                        } else {
                            Some((ap.add(yy * wt * d + c0).cast_const(), d))
                        }
                    };
                    let rows = [src(0), src(1), src(2), src(3)];
                    // Interior columns only: the padding columns hold zp_in for good.
                    for xx in 0..wt {
                        let ld = |r: Option<(*const i8, usize)>| match r {
                            Some((b, stride)) => vld1q_s8(b.add(xx * stride)),
                            None => zp,
                        };
                        let v = int8x16x4_t(ld(rows[0]), ld(rows[1]), ld(rows[2]), ld(rows[3]));
                        vst4q_s8(cache.add((gi * cols + pl + xx) * 64), v);
                    }
                }
                let mut x = 0;
                let bias = e.bias16(c0);
                while x + 4 <= wt {
                    let (mut a0, mut a1, mut a2, mut a3) = (bias, bias, bias, bias);
                    for gi in 0..groups {
                        // Weights of (gi, kx) and the cache columns x + kx .. x + kx + 4 of
                        // the 4 outputs, by LD1 {4 regs} with post-increment: after the 4
                        // column loads the pointer is 3 columns past the next kx's first.
                        let mut wp = wpack.add(gi * k * 64);
                        let mut cp = cache.add((gi * cols + x) * 64);
                        for _ in 0..k {
                            let wv = ld1x4!(wp, "v16", "v17", "v18", "v19", "v16.16b-v19.16b");
                            sdot_cols!(wv, cp; a0, a1, a2, a3);
                            cp = cp.sub(3 * 64);
                        }
                    }
                    let t = y * wt + x;
                    let r: [*const i8; 4] =
                        core::array::from_fn(|m| ap.add((t + m) * d + c0).cast_const());
                    let o: [*mut i8; 4] = core::array::from_fn(|m| rowbuf.add((x + m) * 16));
                    epilogue_c16::<4, GELU>(e, c0, [a0, a1, a2, a3], Some(r), o);
                    x += 4;
                }
                while x < wt {
                    let mut a0 = bias;
                    for gi in 0..groups {
                        for kx in 0..k {
                            let wv = vld1q_s8_x4(wpack.add((gi * k + kx) * 64));
                            let c = cache.add((gi * cols + x + kx) * 64);
                            dw_sdot_taps!(wv, c; a0 @ 0);
                        }
                    }
                    let t = y * wt + x;
                    let r = [ap.add(t * d + c0).cast_const()];
                    epilogue_c16::<1, GELU>(e, c0, [a0], Some(r), [rowbuf.add(x * 16)]);
                    x += 1;
                }
                // Row y of this slice is done: its originals go to the ring (rows below
                // read them), its outputs into the activations.
                for xx in 0..wt {
                    let at = ap.add((y * wt + xx) * d + c0);
                    if pt > 0 {
                        vst1q_s8(ring.add(((y % pt) * wt + xx) * 16), vld1q_s8(at));
                    }
                    vst1q_s8(at, vld1q_s8(rowbuf.add(xx * 16)));
                }
            }
        }
    }
}

/// Depthwise 'same' conv + residual in place on `a`, ARMv8.0 (`SMULL`/`SMLAL`), slice by
/// slice like [`dw_i8_inplace_sdot`]: each 16-channel slice is processed row by row from a
/// cache of the `k` input rows the output row needs (`[slot][column][16 channels]`, rows in
/// slots `row % k`, padding columns `zp_in`; rows outside the grid read a row of `zp_in`).
/// Each output row loads one new input row into the cache, so the cache replaces the ring
/// of the per-token drivers; the outputs of a row wait in a row buffer and are written back
/// once the row is done. Two outputs share each weight load and one vector epilogue.
///
/// Returns false, touching nothing, where it does not apply (`dim` not a multiple of 16,
/// `k > 9`, short buffers); the caller then uses the per-token drivers. Gives exactly the
/// bytes of [`reference::dw_i8`] (tested in `inplace`).
pub fn dw_i8_inplace_smlal(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    act: Activation,
) -> bool {
    let k = g.kernel;
    let ok = g.dim % 16 == 0
        && (1..=DW_MAX_K).contains(&k)
        && g.pad_top < k
        && g.pad_left < k
        && dw_fits(g, l)
        && g.elements().is_some_and(|n| a.len() >= n)
        && scratch.len() >= super::inplace::dw_slice_scratch_len(g);
    let e = Epi::new(l, act, g.dim).filter(|_| ok);
    if let Some(e) = &e {
        // SAFETY: the lengths are checked above and by Epi::new, which built e from l;
        // GELU = e.gelu.
        unsafe {
            if e.gelu {
                dw_smlal_by_k::<true>(a, scratch, g, l, e)
            } else {
                dw_smlal_by_k::<false>(a, scratch, g, l, e)
            }
        }
    }
    e.is_some()
}

/// [`dw_smlal_rows`] specialised for k = 3, 5, 7, 9 (and generic otherwise).
///
/// # Safety
/// The conditions `dw_i8_inplace_smlal` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`.
unsafe fn dw_smlal_by_k<const GELU: bool>(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    // SAFETY: the caller's conditions; K is g.kernel or 0.
    unsafe {
        match g.kernel {
            3 => dw_smlal_rows::<3, GELU>(a, scratch, g, l, e),
            5 => dw_smlal_rows::<5, GELU>(a, scratch, g, l, e),
            7 => dw_smlal_rows::<7, GELU>(a, scratch, g, l, e),
            9 => dw_smlal_rows::<9, GELU>(a, scratch, g, l, e),
            _ => dw_smlal_rows::<0, GELU>(a, scratch, g, l, e),
        }
    }
}

/// # Safety
/// The conditions `dw_i8_inplace_smlal` checks, `e` built from `l` (`Epi::new`) with `GELU`
/// = `e.gelu`; `K` is 0 or `g.kernel`.
#[inline(always)]
unsafe fn dw_smlal_rows<const K: usize, const GELU: bool>(
    a: &mut [i8],
    scratch: &mut [i8],
    g: Grid,
    l: &QuantLayer<'_>,
    e: &Epi,
) {
    let k = if K > 0 { K } else { g.kernel };
    let (d, ht, wt, pt, pl) = (g.dim, g.ht, g.wt, g.pad_top, g.pad_left);
    let below = k - 1 - pt; // input rows below the output row
    let cols = wt + k - 1;
    // SAFETY: cache (k·cols·16 bytes), zrow (cols·16) and rowbuf (wt·16) lie one after the
    // other inside scratch: (k + 1)·cols·16 + wt·16 ≤ dw_slice_scratch_len ≤ scratch.len()
    // (checked by the caller).
    let (cache, zrow, rowbuf) = unsafe {
        let cache = scratch.as_mut_ptr();
        let zrow = cache.add(k * cols * 16);
        (cache, zrow, zrow.add(cols * 16))
    };
    let ap = a.as_mut_ptr();
    let w = l.w.as_ptr();
    // SAFETY: in the whole function, offsets stay inside their buffers: cache (slot·cols + col)·16
    // + 16 ≤ k·cols·16 (slot < k, col < cols); zrow col·16 + 16 ≤ cols·16; rowbuf x·16 + 16
    // ≤ wt·16; activations (row·wt + x)·d + c0 + 16 ≤ tokens·d (row < ht, x < wt, c0 + 16 ≤
    // d); weights (ky·k + kx)·d + c0 + 16 ≤ k²·d (dw_fits). Cache columns read: x + kx ≤
    // cols − 1 for every output x < wt and tap kx < k (the second tap of a pair past k is
    // never loaded).
    unsafe {
        let zp = vdupq_n_s8(e.zp_in);
        let zero = vdupq_n_s8(0);
        for col in 0..cols {
            vst1q_s8(zrow.add(col * 16), zp);
            for slot in 0..k {
                if col < pl || col >= pl + wt {
                    vst1q_s8(cache.add((slot * cols + col) * 16), zp);
                }
            }
        }
        for c0 in (0..d).step_by(16) {
            let load_row = |r: usize| {
                for xx in 0..wt {
                    let v = vld1q_s8(ap.add((r * wt + xx) * d + c0));
                    vst1q_s8(cache.add(((r % k) * cols + pl + xx) * 16), v);
                }
            };
            for r in 0..below.min(ht) {
                load_row(r);
            }
            for y in 0..ht {
                if y + below < ht {
                    load_row(y + below);
                }
                // Input row of kernel row ky: a cache slot, or the zp row outside the grid.
                let mut rows = [zrow.cast_const(); DW_MAX_K];
                for (ky, r) in rows.iter_mut().enumerate().take(k) {
                    let yy = (y + ky).wrapping_sub(pt);
                    if yy < ht {
                        *r = cache.add((yy % k) * cols * 16).cast_const();
                    }
                }
                let bias = e.bias16(c0);
                let mut x = 0;
                while x < wt {
                    let two = x + 1 < wt;
                    let (mut a0, mut a1) = (bias, bias);
                    for (ky, &row) in rows.iter().enumerate().take(k) {
                        let rp = row.add(x * 16);
                        let wr = w.add(ky * k * d + c0);
                        let mut kx = 0;
                        while kx < k {
                            let pair = kx + 1 < k;
                            let w0 = vld1q_s8(wr.add(kx * d));
                            let w1 = if pair {
                                vld1q_s8(wr.add((kx + 1) * d))
                            } else {
                                zero
                            };
                            let x0 = vld1q_s8(rp.add(kx * 16));
                            let x1 = if pair || two {
                                vld1q_s8(rp.add((kx + 1) * 16))
                            } else {
                                zp
                            };
                            a0 = mac_pair(a0, w0, x0, w1, if pair { x1 } else { zp });
                            if two {
                                let x2 = if pair {
                                    vld1q_s8(rp.add((kx + 2) * 16))
                                } else {
                                    zp
                                };
                                a1 = mac_pair(a1, w0, x1, w1, x2);
                            }
                            kx += 2;
                        }
                    }
                    let t = y * wt + x;
                    if two {
                        let r = [
                            ap.add(t * d + c0).cast_const(),
                            ap.add((t + 1) * d + c0).cast_const(),
                        ];
                        let o = [rowbuf.add(x * 16), rowbuf.add((x + 1) * 16)];
                        epilogue_c16::<2, GELU>(e, c0, [a0, a1], Some(r), o);
                        x += 2;
                    } else {
                        let r = [ap.add(t * d + c0).cast_const()];
                        epilogue_c16::<1, GELU>(e, c0, [a0], Some(r), [rowbuf.add(x * 16)]);
                        x += 1;
                    }
                }
                for xx in 0..wt {
                    vst1q_s8(
                        ap.add((y * wt + xx) * d + c0),
                        vld1q_s8(rowbuf.add(xx * 16)),
                    );
                }
            }
        }
    }
}

/// `acc += w0·x0 + w1·x1` on 16 channels: `SMULL`+`SMLAL` (low and high halves) into i16,
/// exact because each lane holds two products of |w| ≤ 127 and |x| ≤ 128, then widened.
#[inline(always)]
fn mac_pair(
    acc: [int32x4_t; 4],
    w0: int8x16_t,
    x0: int8x16_t,
    w1: int8x16_t,
    x1: int8x16_t,
) -> [int32x4_t; 4] {
    // SAFETY: register-only NEON arithmetic.
    unsafe {
        let lo = vmlal_s8(
            vmull_s8(vget_low_s8(w0), vget_low_s8(x0)),
            vget_low_s8(w1),
            vget_low_s8(x1),
        );
        let hi = vmlal_high_s8(vmull_high_s8(w0, x0), w1, x1);
        widen_add(acc, lo, hi)
    }
}

#[inline(always)]
fn widen_add(acc: [int32x4_t; 4], lo: int16x8_t, hi: int16x8_t) -> [int32x4_t; 4] {
    // SAFETY: register-only NEON arithmetic (NEON is a compile-time target feature here).
    unsafe {
        [
            vaddw_s16(acc[0], vget_low_s16(lo)),
            vaddw_high_s16(acc[1], lo),
            vaddw_s16(acc[2], vget_low_s16(hi)),
            vaddw_high_s16(acc[3], hi),
        ]
    }
}

/// Whether a depthwise layer's weights are long enough for the NEON kernels (`Epi::new`
/// checks the other sections).
fn dw_fits(g: Grid, l: &QuantLayer<'_>) -> bool {
    g.kernel
        .checked_mul(g.kernel)
        .and_then(|kk| kk.checked_mul(g.dim))
        .is_some_and(|n| l.w.len() >= n)
}

/// int8 global average pool + head with NEON, same arguments and bits as
/// [`reference::head_i8`]: channel sums by `SADDW` into i16 (256 tokens at a time, which
/// cannot overflow: 256 · 128 = 2^15) then into i32; the class dot products by `MLA .4s`
/// (i32 arithmetic wraps like the reference's, so the summation order is free). Falls back
/// to the reference when the lengths do not fit.
///
/// ```
/// use convmixer_edge::{kernels::{neon, reference}, le::F32Le};
/// let (tokens, dim) = (300, 20);
/// let x: Vec<i8> = (0..tokens * dim).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let w: Vec<i8> = (0..3 * dim).map(|i| (i % 255) as i8 - 127).collect();
/// let (scale, bias) = ([0.5f32; 3], [1.0f32; 3]);
/// let sb: Vec<u8> = scale.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let bb: Vec<u8> = bias.iter().flat_map(|v| v.to_le_bytes()).collect();
/// let (mut m1, mut m2) = ([0i32; 20], [0i32; 20]);
/// let (mut a, mut b) = ([0f32; 3], [0f32; 3]);
/// neon::head_i8_neon(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m1, &mut a);
/// reference::head_i8(&x, tokens, dim, -3, 4, &w, F32Le(&sb), F32Le(&bb), &mut m2, &mut b);
/// assert_eq!((a, m1), (b, m2));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn head_i8_neon(
    x: &[i8],
    tokens: usize,
    dim: usize,
    zp_in: i32,
    frac_bits: u32,
    w: &[i8],
    scale: crate::le::F32Le<'_>,
    bias: crate::le::F32Le<'_>,
    mean: &mut [i32],
    logits: &mut [f32],
) {
    use crate::le::FloatWeights;
    let classes = logits.len();
    let fits = (1..=1 << 22).contains(&tokens)
        && (-128..=127).contains(&zp_in)
        && tokens.checked_mul(dim).is_some_and(|n| x.len() >= n)
        && classes.checked_mul(dim).is_some_and(|n| w.len() >= n)
        && mean.len() >= dim
        && scale.0.len() >= 4 * classes
        && bias.0.len() >= 4 * classes;
    if !fits {
        reference::head_i8(
            x, tokens, dim, zp_in, frac_bits, w, scale, bias, mean, logits,
        );
        return;
    }
    let d16 = dim / 16 * 16;
    // SAFETY: every load reads x[u·dim + d0 .. +16] with u < tokens, d0 + 16 ≤ dim; every
    // store writes mean[d0 .. +16] (d0 + 16 ≤ dim ≤ mean.len()). Lengths checked above.
    unsafe {
        for d0 in (0..d16).step_by(16) {
            let mut s = [vdupq_n_s32(0); 4];
            let mut t = 0;
            while t < tokens {
                let end = (t + 256).min(tokens);
                let (mut lo, mut hi) = (vdupq_n_s16(0), vdupq_n_s16(0));
                for u in t..end {
                    let v = vld1q_s8(x.as_ptr().add(u * dim + d0));
                    lo = vaddw_s8(lo, vget_low_s8(v));
                    hi = vaddw_high_s8(hi, v);
                }
                s[0] = vaddw_s16(s[0], vget_low_s16(lo));
                s[1] = vaddw_high_s16(s[1], lo);
                s[2] = vaddw_s16(s[2], vget_low_s16(hi));
                s[3] = vaddw_high_s16(s[3], hi);
                t = end;
            }
            for (q, v) in s.into_iter().enumerate() {
                vst1q_s32(mean.as_mut_ptr().add(d0 + 4 * q), v);
            }
        }
    }
    // The channels past the last 16-channel block (dim > 0 where there are any), summed
    // token by token (exact, so in any order).
    if let (true, Some(tail)) = (d16 < dim, mean.get_mut(d16..dim)) {
        tail.iter_mut().for_each(|m| *m = 0);
        for row in x.chunks_exact(dim).take(tokens) {
            for (m, v) in tail.iter_mut().zip(row.iter().skip(d16)) {
                *m += i32::from(*v);
            }
        }
    }
    // Σ(x − zp) = Σx − T·zp: both sides are below 2^30 in magnitude, so exact in i32.
    let tz = tokens as i32 * zp_in;
    for m in mean.iter_mut().take(dim) {
        *m = reference::gap_mean(*m - tz, tokens, frac_bits);
    }
    for (c, out) in logits.iter_mut().enumerate() {
        // Inside w (classes·dim ≤ w.len(), checked above), and exactly dim long.
        let Some(row) = w.get(c * dim..(c + 1) * dim) else {
            continue;
        };
        // SAFETY: reads row[d0 .. +16] and mean[d0 .. +16] with d0 + 16 ≤ dim = row.len() ≤
        // mean.len().
        let mut acc = unsafe {
            let mut a = [vdupq_n_s32(0); 4];
            for d0 in (0..d16).step_by(16) {
                let v = vld1q_s8(row.as_ptr().add(d0));
                let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
                let wq = [
                    vmovl_s16(vget_low_s16(lo)),
                    vmovl_high_s16(lo),
                    vmovl_s16(vget_low_s16(hi)),
                    vmovl_high_s16(hi),
                ];
                for (q, (aq, wv)) in a.iter_mut().zip(wq).enumerate() {
                    *aq = vmlaq_s32(*aq, wv, vld1q_s32(mean.as_ptr().add(d0 + 4 * q)));
                }
            }
            vaddvq_s32(vaddq_s32(vaddq_s32(a[0], a[1]), vaddq_s32(a[2], a[3])))
        };
        for (wv, m) in row.iter().zip(mean.iter()).skip(d16) {
            acc = acc.wrapping_add(i32::from(*wv).wrapping_mul(*m));
        }
        *out = scale.at(c) * acc as f32 + bias.at(c);
    }
}

// ----------------------------------------------------------------------------------------
// MLP-Mixer: the fixed-point LayerNorm, 4 channels per step

/// [`reference::layer_norm_token_i16`], 4 channels per step: the same bits. The token's
/// sums and `inv` are the reference's ([`reference::LnToken`]); per channel the 128-bit
/// `d · inv` of the reference is taken as `d · hi · 2^31 + d · lo` with
/// `inv = hi · 2^31 + lo` (`hi`, `lo` < 2^31: two `SMULL`s into i64 lanes), which gives the
/// same `⌊(d · inv + 2^45) / 2^46⌋` as `⌊(d·hi + ⌊d·lo / 2^31⌋ + 2^14) / 2^15⌋` (exact:
/// the dropped low part is below one unit of the 2^31 step, under the outer floor). `d`
/// fits an i32 lane for `dim ≤ 32767`; larger `dim`, `r ≤ 1` (`hi = 2^31`) and the last
/// `dim % 4` channels take the reference's scalar step.
pub fn layer_norm_token_i16_neon(
    x: &[i16],
    dim: usize,
    p: &reference::LayerNormI16<'_>,
    out: &mut [i8],
    stride: usize,
) {
    let Some(tok) = reference::LnToken::new(x, dim, p) else {
        return;
    };
    let (hi, lo) = (tok.inv >> 31, tok.inv & 0x7fff_ffff);
    let vector = dim <= 32767 && hi <= i64::from(i32::MAX);
    let step = stride.max(1);
    let mut c = 0;
    if vector {
        // SAFETY: register-only setup (NEON is a compile-time target feature here).
        let (n, s1, vhi, vlo, round, lim, nlim, half, shift, zp) = unsafe {
            (
                vdupq_n_s32(tok.n as i32),
                vdupq_n_s32(tok.s1 as i32),
                vdup_n_s32(hi as i32),
                vdup_n_s32(lo as i32),
                vdupq_n_s64(1 << 14),
                vdupq_n_s64(1 << 30),
                vdupq_n_s64(-(1 << 30)),
                vdupq_n_s64(tok.half),
                vdupq_n_s64(-i64::from(tok.shift)),
                vdupq_n_s64(tok.zp),
            )
        };
        let quads = tok
            .row
            .chunks_exact(4)
            .zip(tok.muls.chunks_exact(16))
            .zip(tok.offsets.chunks_exact(32));
        for ((xs, ms), os) in quads {
            // SAFETY: xs holds 4 i16 (8 bytes), ms 16 bytes, os 32 bytes: the loads stay
            // inside them (LD1 has no alignment requirement; the u8 loads are
            // reinterpreted). |n·x| < 2^30 and |S1| < 2^30 for dim ≤ 32767, so d fits i32;
            // every i64 lane sum is below 2^63 (|d·hi| < 2^62, |d·lo| < 2^62, |z·m| ≤ 2^61,
            // |offset| ≤ 2^55 for a valid blob; the adds wrap like the reference's).
            let q = unsafe {
                let xv = vmovl_s16(vld1_s16(xs.as_ptr()));
                let d = vsubq_s32(vmulq_s32(xv, n), s1);
                let z = |d: int32x2_t| {
                    let a = vmull_s32(d, vhi);
                    let b = vshrq_n_s64::<31>(vmull_s32(d, vlo));
                    let t = vshrq_n_s64::<15>(vaddq_s64(vaddq_s64(a, b), round));
                    let t = vbslq_s64(vcgtq_s64(t, lim), lim, t);
                    vmovn_s64(vbslq_s64(vcltq_s64(t, nlim), nlim, t))
                };
                let z = vcombine_s32(z(vget_low_s32(d)), z(vget_high_s32(d)));
                let m = vreinterpretq_s32_u8(vld1q_u8(ms.as_ptr()));
                let off0 = vreinterpretq_s64_u8(vld1q_u8(os.as_ptr()));
                let off1 = vreinterpretq_s64_u8(vld1q_u8(os.as_ptr().add(16)));
                let y = |p: int64x2_t, off: int64x2_t| {
                    let v = vaddq_s64(p, vaddq_s64(off, half));
                    vqmovn_s64(vaddq_s64(vshlq_s64(v, shift), zp))
                };
                // `SMULL`/`SMULL2` by `asm!`: with the intrinsics LLVM sees that z is a
                // narrowed i64 and turns the two lanes into scalar `MUL`s.
                let (p0, p1): (int64x2_t, int64x2_t);
                asm!(
                    "smull {p0:v}.2d, {z:v}.2s, {m:v}.2s",
                    "smull2 {p1:v}.2d, {z:v}.4s, {m:v}.4s",
                    p0 = out(vreg) p0,
                    p1 = out(vreg) p1,
                    z = in(vreg) z,
                    m = in(vreg) m,
                    options(pure, nomem, nostack, preserves_flags)
                );
                let y32 = vcombine_s32(y(p0, off0), y(p1, off1));
                let y16 = vqmovn_s32(y32);
                vqmovn_s16(vcombine_s16(y16, y16))
            };
            // SAFETY: register-only lane extract (the 4 results as little-endian bytes).
            let lanes = unsafe { vget_lane_u32::<0>(vreinterpret_u32_s8(q)) }.to_le_bytes();
            if step == 1 {
                if let Some(o) = out.get_mut(c..c + 4) {
                    o.copy_from_slice(&lanes.map(|v| v as i8));
                }
            } else {
                for (i, v) in lanes.into_iter().enumerate() {
                    if let Some(o) = out.get_mut((c + i) * step) {
                        *o = v as i8;
                    }
                }
            }
            c += 4;
        }
    }
    tok.scalar_from(c, out, step);
}

#[cfg(test)]
mod tests {
    //! Property tests: random shapes, weights, zero points and requantisation records;
    //! every NEON kernel must equal the reference byte for byte.
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::kernels::gemm_packed_len;
    use crate::le::I32Le;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
    }

    struct Layer {
        w: Vec<i8>,
        bias: Vec<u8>,
        rq: Vec<u8>,
        table: Vec<u8>,
        zp: [i32; 3],
    }

    impl Layer {
        fn random(r: &mut Rng, wlen: usize, dim: usize, depthwise: bool, gelu: bool) -> Layer {
            let w: Vec<i8> = (0..wlen).map(|_| r.range(-127, 127) as i8).collect();
            let le = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            let bias: Vec<i32> = (0..dim).map(|_| r.range(-50_000, 50_000) as i32).collect();
            // Half the layers shift no channel left (the kernels skip the SQSHLs there).
            let no_left = r.range(0, 1) == 0;
            let rq: Vec<[i32; 6]> = (0..dim)
                .map(|_| {
                    let sh_pre = r.range(-3, 12) as i32;
                    [
                        r.range(1 << 30, (1 << 31) - 1) as i32,
                        if no_left { sh_pre.max(0) } else { sh_pre },
                        r.range(-(1 << 14), 1 << 14) as i32,
                        r.range(-(1 << 20), 1 << 20) as i32,
                        r.range(0, 20) as i32,
                        if depthwise {
                            r.range(-(1 << 12), 1 << 12) as i32
                        } else {
                            0
                        },
                    ]
                })
                .collect();
            let table: Vec<u8> = if gelu {
                (0..256)
                    .flat_map(|_| (r.range(-32768, 32767) as i16).to_le_bytes())
                    .collect()
            } else {
                Vec::new()
            };
            let zp = [
                r.range(-128, 127) as i32,
                r.range(-128, 127) as i32,
                r.range(-128, 127) as i32,
            ];
            Layer {
                w,
                bias: le(&bias),
                rq: le(&(0..6)
                    .flat_map(|k| rq.iter().map(move |v| v[k]))
                    .collect::<Vec<_>>()),
                table,
                zp,
            }
        }
        fn view(&self) -> QuantLayer<'_> {
            QuantLayer {
                w: &self.w,
                bias: I32Le(&self.bias),
                requant: I32Le(&self.rq),
                zp_in: self.zp[0],
                zp_z: self.zp[1],
                zp_out: self.zp[2],
                table: &self.table,
            }
        }
    }

    fn act(gelu: bool) -> Activation {
        if gelu {
            Activation::Gelu
        } else {
            Activation::Relu
        }
    }

    /// The NEON pool + head against the reference: token counts across the 256-token i16
    /// flush, dims with and without a 16-channel tail, full-range activations.
    #[test]
    fn head_matches_the_reference() {
        let mut r = Rng(0x0123_4567_89ab_cdef);
        let f32s = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for case in 0..120 {
            let tokens = if case % 4 == 0 {
                r.range(250, 800)
            } else {
                r.range(1, 70)
            } as usize;
            let dim = r.range(1, 70) as usize;
            let classes = r.range(1, 12) as usize;
            let zp = r.range(-128, 127) as i32;
            let frac = r.range(0, 8) as u32;
            // Long, one-signed runs reach the i16 limits (−128 · 256 = −2^15).
            let (lo, hi) = match case % 3 {
                0 => (-128, -100),
                1 => (100, 127),
                _ => (-128, 127),
            };
            let x: Vec<i8> = (0..tokens * dim).map(|_| r.range(lo, hi) as i8).collect();
            let w: Vec<i8> = (0..classes * dim)
                .map(|_| r.range(-127, 127) as i8)
                .collect();
            let sc = f32s(
                (0..classes)
                    .map(|_| r.range(1, 1000) as f32 / 7e4)
                    .collect(),
            );
            let bi = f32s(
                (0..classes)
                    .map(|_| r.range(-1000, 1000) as f32 / 300.0)
                    .collect(),
            );
            let (mut m1, mut m2) = (vec![0i32; dim], vec![0i32; dim]);
            let (mut a, mut b) = (vec![0f32; classes], vec![0f32; classes]);
            let (s1, b1) = (crate::le::F32Le(&sc), crate::le::F32Le(&bi));
            head_i8_neon(&x, tokens, dim, zp, frac, &w, s1, b1, &mut m1, &mut a);
            reference::head_i8(&x, tokens, dim, zp, frac, &w, s1, b1, &mut m2, &mut b);
            assert_eq!(m1, m2, "case {case}: tokens {tokens} dim {dim}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&a), bits(&b), "case {case}: tokens {tokens} dim {dim}");
        }
    }

    #[test]
    fn layer_norm_matches_the_reference() {
        let mut r = Rng(0x5eed_1a7e_0000_0001);
        for case in 0..400 {
            let dim = match case % 5 {
                0 => r.range(1, 8),
                4 => r.range(200, 400),
                _ => r.range(1, 70),
            } as usize;
            let tokens = r.range(1, 6) as usize;
            // Rows near the i16 limits, small ones, and constant ones (variance 0: r ≤ 1
            // with a small eps takes the scalar step).
            let x: Vec<i16> = (0..tokens * dim)
                .map(|i| match case % 4 {
                    0 => r.range(-32768, 32767) as i16,
                    1 => r.range(-40, 40) as i16,
                    2 => (case as i16).wrapping_mul(37),
                    _ => {
                        if i % 2 == 0 {
                            32767
                        } else {
                            -32768
                        }
                    }
                })
                .collect();
            let mut sec = Vec::new();
            let eps = if case % 3 == 0 {
                0
            } else {
                r.range(0, 1 << 40) as u64
            };
            sec.extend_from_slice(&eps.to_le_bytes());
            sec.extend_from_slice(&(r.range(0, 62) as i32).to_le_bytes());
            sec.extend_from_slice(&(r.range(-128, 127) as i32).to_le_bytes());
            for _ in 0..dim {
                sec.extend_from_slice(&(r.range(-(1 << 30), 1 << 30) as i32).to_le_bytes());
            }
            for _ in 0..dim {
                let o = r.range(-(1 << 40), 1 << 40) * r.range(-(1 << 15), 1 << 15);
                sec.extend_from_slice(&o.to_le_bytes());
            }
            let p = reference::LayerNormI16::from_section(&sec, dim);
            for transposed in [false, true] {
                let (mut a, mut b) = (vec![0i8; tokens * dim], vec![0i8; tokens * dim]);
                reference::layer_norm_rows(
                    &x,
                    tokens,
                    dim,
                    &p,
                    &mut a,
                    transposed,
                    layer_norm_token_i16_neon,
                );
                reference::layer_norm_i16(&x, tokens, dim, &p, &mut b, transposed);
                assert_eq!(
                    a, b,
                    "case {case}: dim {dim} tokens {tokens} transposed {transposed}"
                );
            }
        }
    }

    #[test]
    fn gemm_kernels_match_the_reference() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let dot = crate::kernels::Isa::NeonDot.available();
        if std::env::var("CMX_REQUIRE_DOTPROD").is_ok_and(|v| v == "1") {
            assert!(
                dot,
                "CMX_REQUIRE_DOTPROD is set but the CPU has no dot product"
            );
        }
        for case in 0..300 {
            let mut size = || match case % 6 {
                0 => 16 * r.range(1, 4) as usize,
                1 => 4 * r.range(1, 20) as usize,
                _ => r.range(1, 70) as usize,
            };
            // Square (pointwise) in half the cases, rectangular (embedding-like) otherwise.
            let n = size();
            let k = if case % 4 < 2 { n } else { size() };
            let tokens = r.range(1, 11) as usize;
            let gelu = case % 2 == 0;
            let mut l = Layer::random(&mut r, gemm_packed_len(n, k), n, false, gelu);
            // Zero the packing padding, as the blob reader guarantees.
            let mut w = vec![0i8; gemm_packed_len(n, k)];
            for o in 0..n {
                for i in 0..k {
                    let at = super::super::gemm_index(o, i, k);
                    w[at] = l.w[at];
                }
            }
            l.w = w;
            let x: Vec<i8> = (0..tokens * k).map(|_| r.range(-128, 127) as i8).collect();
            let mut want = vec![0i8; tokens * n];
            reference::gemm_i8(&x, tokens, k, n, &l.view(), act(gelu), &mut want);
            let mut got = vec![0i8; tokens * n];
            gemm_i8_neon_smlal_2x16c4(&x, tokens, k, n, &l.view(), act(gelu), &mut got);
            assert_eq!(got, want, "smlal: k {k} n {n} tokens {tokens}");
            if dot {
                let mut got = vec![0i8; tokens * n];
                gemm_i8_neon_sdot_4x16c4(&x, tokens, k, n, &l.view(), act(gelu), &mut got);
                assert_eq!(got, want, "sdot: k {k} n {n} tokens {tokens}");
            }
        }
    }

    #[test]
    fn slice_wise_depthwise_matches_the_reference() {
        // Without the dot product only the SMLAL driver runs (gemm_kernels_match_the_reference
        // enforces CMX_REQUIRE_DOTPROD where it must be there).
        let dot = crate::kernels::Isa::NeonDot.available();
        let mut r = Rng(0x0bad_cafe_1234_5678);
        for case in 0..120 {
            let kernel = 1 + case % 9;
            let dim = 16 * r.range(1, 3) as usize;
            let (ht, wt) = (r.range(1, 9) as usize, r.range(1, 9) as usize);
            let pad = (kernel - 1) / 2;
            let g = Grid {
                ht,
                wt,
                dim,
                kernel,
                pad_top: pad,
                pad_left: pad,
            };
            let gelu = case % 2 == 1;
            let l = Layer::random(&mut r, kernel * kernel * dim, dim, true, gelu);
            let x: Vec<i8> = (0..g.tokens() * dim)
                .map(|_| r.range(-128, 127) as i8)
                .collect();
            let mut want = vec![0i8; x.len()];
            reference::dw_i8(&x, g, &l.view(), act(gelu), &mut want);
            let scratch_len = super::super::inplace::dw_slice_scratch_len(g);
            let (mut a, mut scratch) = (x.clone(), vec![0i8; scratch_len]);
            let ran = dw_i8_inplace_smlal(&mut a, &mut scratch, g, &l.view(), act(gelu));
            assert!(ran, "{g:?}");
            assert_eq!(a, want, "smlal dw: {g:?}");
            if dot {
                let (mut a, mut scratch) = (x.clone(), vec![0i8; scratch_len]);
                let ran = dw_i8_inplace_sdot(&mut a, &mut scratch, g, &l.view(), act(gelu));
                assert!(ran, "{g:?}");
                assert_eq!(a, want, "sdot dw: {g:?}");
            }
        }
    }
}
