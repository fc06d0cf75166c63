//! AArch64 NEON fixed-point LayerNorm, 4 channels per step, bit-exact with
//! [`reference::layer_norm_token_i16`].
//!
//! Safety: the kernel reads only through the slices `reference::LnToken` checked; its
//! `unsafe` blocks say which lengths bound their loads.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::kernels::reference;

/// [`reference::layer_norm_token_i16`], 4 channels per step: the same bits. The token's
/// sums and `inv` are the reference's (`reference::LnToken`); per channel the 128-bit
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
