//! x86_64 AVX2 residual add, 16 values per step, bit-exact with
//! [`reference::res_add_i16`](crate::kernels::reference::res_add_i16).
//!
//! Safety: [`res_add_avx2`] checks the CPU's AVX2, the parameters' ranges and the slices'
//! lengths; its `unsafe` block says which bound its loads and stores.

use core::arch::x86_64::*;

use super::ResAdd;
use crate::kernels::Isa;

/// `dst[i] = res_add_i16(dst[i], q[i], add.zp, add.m, add.sh)` for the first
/// `min(dst.len(), q.len())` values rounded down to 16, which it returns (0 where the CPU
/// lacks AVX2 or `add` is outside the reader's ranges: `zp` in −128..=127, `0 ≤ m ≤ 2^22`,
/// `0 ≤ sh ≤ 31`); the caller adds the rest with the reference. In those ranges
/// `(q − zp)·m` is below 2^30, so `VPMULLD` is exact, `rshr` is `(v >> sh) + ((v >>
/// (sh − 1)) & 1)` (no overflow), the sum with `x` fits an i32, and `VPACKSSDW` saturates
/// it to i16 as the reference clamps it.
///
/// ```
/// use convmixer_edge::kernels::res_add::{x86, ResAdd};
/// use convmixer_edge::kernels::reference::res_add_i16;
/// let q: Vec<i8> = (0..40).map(|i| (i * 37 % 256) as u8 as i8).collect();
/// let x: Vec<i16> = (0..40).map(|i| (i * 1999 % 65536) as u16 as i16).collect();
/// let add = ResAdd { zp: -3, m: 1 << 20, sh: 9 };
/// let mut fast = x.clone();
/// let done = x86::res_add_avx2(&mut fast, &q, add);
/// for (v, (x, q)) in fast.iter().zip(x.iter().zip(&q)).take(done) {
///     assert_eq!(*v, res_add_i16(*x, *q, add.zp, add.m, add.sh));
/// }
/// ```
pub fn res_add_avx2(dst: &mut [i16], q: &[i8], add: ResAdd) -> usize {
    let ok = Isa::Avx2.available()
        && (-128..=127).contains(&add.zp)
        && (0..=1 << 22).contains(&add.m)
        && (0..=31).contains(&add.sh);
    if !ok {
        return 0;
    }
    let n = dst.len().min(q.len()) / 16 * 16;
    // SAFETY: AVX2 and the ranges are checked above; n ≤ both lengths.
    unsafe { add16(dst.as_mut_ptr(), q.as_ptr(), n, add) };
    n
}

/// The residual add of `n` (a multiple of 16) values.
///
/// # Safety
/// The CPU has AVX2; `dst` points at `n` readable and writable i16, `q` at `n` readable
/// bytes; `add` is within the ranges `res_add_avx2` checks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add16(dst: *mut i16, q: *const i8, n: usize, add: ResAdd) {
    // SAFETY: i + 16 ≤ n values of both; the rest is register-only AVX2.
    unsafe {
        let zp = _mm256_set1_epi32(add.zp);
        let m = _mm256_set1_epi32(add.m);
        let sh = _mm_cvtsi32_si128(add.sh);
        let sh1 = _mm_cvtsi32_si128(add.sh - 1);
        let one = _mm256_set1_epi32(1);
        let mut i = 0;
        while i < n {
            let qv = _mm_loadu_si128(q.add(i).cast());
            let xv = _mm256_loadu_si256(dst.add(i).cast());
            let half = |qh: __m128i, xh: __m128i| {
                let p = _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_cvtepi8_epi32(qh), zp), m);
                // rshr(p, sh): for sh = 0 the count sh − 1 is −1, a huge logical shift: 0.
                let last = _mm256_and_si256(
                    if add.sh > 0 {
                        _mm256_srl_epi32(p, sh1)
                    } else {
                        _mm256_setzero_si256()
                    },
                    one,
                );
                let d = _mm256_add_epi32(_mm256_sra_epi32(p, sh), last);
                _mm256_add_epi32(_mm256_cvtepi16_epi32(xh), d)
            };
            let lo = half(qv, _mm256_castsi256_si128(xv));
            let hi = half(_mm_srli_si128::<8>(qv), _mm256_extracti128_si256::<1>(xv));
            // [lo0..3, hi0..3 | lo4..7, hi4..7] saturated to i16, then the quadwords in order.
            let r = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(lo, hi));
            _mm256_storeu_si256(dst.add(i).cast(), r);
            i += 16;
        }
    }
}
