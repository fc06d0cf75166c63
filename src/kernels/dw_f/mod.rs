//! The float depthwise k×k 'same' conv + residual.
//!
//! * `reference.rs`: [`reference::dw_f`];
//! * `neon.rs`: `dw_neon_f32_c16` (`FMLA .4s`) and `dw_neon_f16_c16` (FEAT_FP16 `FMLA
//!   .8h`);
//! * `x86.rs`: `dw_avx2_f32_8x8` and `dw_avx2_f32_6x16` (`VFMADD231PS`, f32 weights or f16
//!   widened by `VCVTPH2PS`; f32 arithmetic only);
//! * `tests.rs`: the shared suite, every ISA the running CPU has against the reference.
//!
//! The driver [`dw`] runs the SIMD kernel where the ISA, the arithmetic and the shape allow
//! it (NEON: `dim % 16 == 0`; AVX2: `dim % 8 == 0`, `F32Arith`), else the reference: the
//! same bits either way.

pub(super) mod reference;

// The NEON kernels exist only where NEON is a compile-time target feature (so no run-time
// check is needed for it).
#[cfg(all(
    target_arch = "aarch64",
    target_endian = "little",
    target_feature = "neon"
))]
#[allow(unsafe_code)]
pub(super) mod neon;

// The AVX2 kernels run only where Isa::Avx2 was detected (their entry point checks).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) mod x86;

#[cfg(test)]
mod tests;

use super::parts::ChannelsMut;
use super::reference::{FloatArith, FloatLayer};
use super::{Grid, Isa};
use crate::le::FloatWeights;
use crate::Activation;

/// Depthwise conv + residual: [`reference::dw_f`], with NEON or AVX2 when possible.
///
/// ```
/// use convmixer_edge::kernels::{dw_f, reference::*, Grid, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = Grid { ht: 3, wt: 3, dim: 16, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<u8> = (0..9 * 16).flat_map(|i| (i as f32 / 100.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 16].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&ones), scale: F32Le(&ones), shift: F32Le(&ones), unscale: F32Le(&ones) };
/// let x: Vec<f32> = (0..9 * 16).map(|i| i as f32 / 7.0 - 5.0).collect();
/// let (mut a, mut b) = (vec![0f32; 144], vec![0f32; 144]);
/// dw_f::<_, F32Arith>(&x, g, &l, Activation::Gelu, &mut a);
/// dw_f::dw::<_, F32Arith>(&x, g, &l, Activation::Gelu, &mut b, Isa::detect());
/// assert_eq!(a, b);
/// ```
pub fn dw<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut [M::Act],
    isa: Isa,
) {
    dw_channels::<W, M>(x, g, l, act, &mut ChannelsMut::whole(out, g.dim), isa);
}

/// [`dw`] for the view's channels of every token: one core's part of a layer split by
/// channel slices ([`ChannelsMut::split`]; whole 16-channel steps take the SIMD kernels,
/// other ranges the reference). The same bits as the whole layer, whatever the split.
///
/// ```
/// use convmixer_edge::kernels::{dw_f, parts::ChannelsMut, reference::*, Grid, Isa};
/// # use convmixer_edge::{le::F32Le, Activation};
/// let g = Grid { ht: 2, wt: 2, dim: 32, kernel: 3, pad_top: 1, pad_left: 1 };
/// let w: Vec<u8> = (0..9 * 32).flat_map(|i| (i as f32 / 100.0).to_le_bytes()).collect();
/// let ones: Vec<u8> = [1.0f32; 32].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let l = FloatLayer { w: F32Le(&w), bias: F32Le(&ones), scale: F32Le(&ones), shift: F32Le(&ones), unscale: F32Le(&ones) };
/// let x: Vec<f32> = (0..4 * 32).map(|i| i as f32 / 7.0 - 5.0).collect();
/// let (mut a, mut b) = (vec![0f32; 128], vec![0f32; 128]);
/// dw_f::dw::<_, F32Arith>(&x, g, &l, Activation::Relu, &mut a, Isa::detect());
/// for mut part in ChannelsMut::split(&mut b, 32, 16, 2) {
///     dw_f::dw_channels::<_, F32Arith>(&x, g, &l, Activation::Relu, &mut part, Isa::detect());
/// }
/// assert_eq!(a, b);
/// ```
pub fn dw_channels<W: FloatWeights, M: FloatArith>(
    x: &[M::Act],
    g: Grid,
    l: &FloatLayer<'_, W>,
    act: Activation,
    out: &mut ChannelsMut<'_, M::Act>,
    isa: Isa,
) {
    #[cfg(all(
        target_arch = "aarch64",
        target_endian = "little",
        target_feature = "neon"
    ))]
    if neon::dw::<W, M>(x, g, l, act, out, isa) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if x86::dw::<W, M>(x, g, l, act, out, isa) {
        return;
    }
    let _ = isa;
    reference::dw_f_channels::<W, M>(x, g, l, act, out);
}
