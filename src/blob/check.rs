//! The contents checks of [`super::parse`], after the header and the table of contents:
//! every range rule of the int8 semantics (requantisation, accumulators, tables), the float
//! layers' padding and scales, and the MLP-Mixer's sections, so that the kernels never
//! need a check of their own.

use byteorder::{ByteOrder, LittleEndian as LE};

use super::*;

/// What a read past the end of a section gives. `parse` checks every section's length
/// against its shape before reading any, so this never happens; it stands in for the
/// panic an index would have.
const SHORT: Error = Error::Malformed("section shorter than its shape");

/// Little-endian 4-byte element `i` of `b` (`SHORT` past its end).
fn word(b: &[u8], i: usize) -> Result<[u8; 4], Error> {
    let at = i.checked_mul(4).ok_or(SHORT)?;
    b.get(at..)
        .and_then(|s| s.first_chunk::<4>())
        .copied()
        .ok_or(SHORT)
}

/// Little-endian i32 element `i` of `b` (`SHORT` past its end).
fn i32_at(b: &[u8], i: usize) -> Result<i32, Error> {
    word(b, i).map(i32::from_le_bytes)
}

/// Float GEMM layers (embedding, pointwise): the packing padding must be zero.
fn check_float_padding(b: &Blob<'_>, layer: usize, wbytes: usize) -> Result<(), Error> {
    let h = b.header;
    let dim = usize::from(h.dim);
    let (w, taps) = (b.section(SectionKind::Weights, layer)?, h.taps(layer));
    let padded = dim.div_ceil(FGEMM_NR) * FGEMM_NR;
    for o in dim..padded {
        for i in 0..taps {
            let at = fgemm_index(o, i, taps) * wbytes;
            if w.get(at..at + wbytes).ok_or(SHORT)?.iter().any(|&v| v != 0) {
                return Err(Error::Malformed("non-zero padding in packed GEMM weights"));
            }
        }
    }
    Ok(())
}

/// The third vector of a float layer's AFFINE, the accumulator's `unscale`: a power of two
/// in `2^-24 ..= 1` (its weights and bias are stored multiplied by the inverse).
fn check_unscale(b: &Blob<'_>, layer: usize) -> Result<(), Error> {
    let aff = b.section(SectionKind::Affine, layer)?;
    let third = aff.len() / 3;
    let ok = |c: &[u8]| {
        let bits = LE::read_u32(c);
        // Sign 0, mantissa 0, biased exponent 127 − 24 ..= 127.
        bits & 0x807f_ffff == 0 && ((127 - 24)..=127).contains(&(bits >> 23))
    };
    if aff.get(2 * third..).ok_or(SHORT)?.chunks_exact(4).all(ok) {
        Ok(())
    } else {
        Err(Error::Malformed("float layer unscale"))
    }
}

/// Bounds of the MLP-Mixer's fixed-point LayerNorm and residual add (see the format
/// document): `E ≤ LN_EPS_MAX`, `0 ≤ sh ≤ LN_SH_MAX`, `|B_c| ≤ LN_B_MAX`,
/// `0 ≤ m_add ≤ RES_M_MAX`, `0 ≤ sh_add ≤ RES_SH_MAX`.
pub mod mixer_limits {
    /// Largest `eps` term of a LayerNorm.
    pub const LN_EPS_MAX: u64 = 1 << 62;
    /// Largest output shift of a LayerNorm.
    pub const LN_SH_MAX: i32 = 62;
    /// Largest `|B_c|` of a LayerNorm.
    pub const LN_B_MAX: i64 = 1 << 55;
    /// Largest residual-add multiplier.
    pub const RES_M_MAX: i32 = 1 << 22;
    /// Largest residual-add shift.
    pub const RES_SH_MAX: i32 = 31;
}

/// The requantisation record of output `o` of an `n`-output int8 layer (REQUANT, field-major)
/// within the format's bounds; `m_res` may be non-zero only where `residual` (a depthwise
/// layer).
fn check_requant(rq: &[u8], n: usize, o: usize, residual: bool) -> Result<(), Error> {
    let r = |f: usize| i32_at(rq, f * n + o);
    let (m_pre, sh_pre, m_post, b_post, sh_post, m_res) =
        (r(0)?, r(1)?, r(2)?, r(3)?, r(4)?, r(5)?);
    use limits::*;
    let ok = m_pre >= 0
        && (SH_PRE_MIN..=SH_PRE_MAX).contains(&sh_pre)
        && m_post.unsigned_abs() <= M_POST_MAX as u32
        && b_post.unsigned_abs() <= B_POST_MAX as u32
        && (0..=SH_POST_MAX).contains(&sh_post)
        && m_res.unsigned_abs() <= M_RES_MAX as u32
        && (residual || m_res == 0);
    if ok {
        Ok(())
    } else {
        Err(Error::Malformed("requantisation parameter out of range"))
    }
}

/// The int8 GEMM rules of one layer with `k` inputs and `n` outputs (packed weights; the
/// ConvMixer's embedding and pointwise convs, every MLP-Mixer linear layer): no weight
/// −128 (the SIMD kernels sum two products in i16, safe only for |w| ≤ 127), zero packing
/// padding, requantisation fields in range with `m_res = 0`, and the accumulator bound
/// `|bias′| + 128·Σ|w| < 2^31` per output (inputs are int8 everywhere, the embedding's
/// pixel − 128: every partial sum stays below it, whatever the summation order).
fn check_int8_gemm(b: &Blob<'_>, layer: usize, k: usize, n: usize) -> Result<(), Error> {
    let w = b.section(SectionKind::Weights, layer)?;
    let bias = b.section(SectionKind::Bias, layer)?;
    let rq = b.section(SectionKind::Requant, layer)?;
    if w.contains(&0x80) {
        return Err(Error::Malformed("int8 weight −128"));
    }
    let real: usize = (0..n)
        .map(|o| {
            (0..k)
                .filter(|&i| w.get(gemm_index(o, i, k)).is_some_and(|&v| v != 0))
                .count()
        })
        .sum();
    if w.iter().filter(|&&v| v != 0).count() != real {
        return Err(Error::Malformed("non-zero padding in packed GEMM weights"));
    }
    for o in 0..n {
        check_requant(rq, n, o, false)?;
        let mut sum_abs = 0i64;
        for i in 0..k {
            let v = *w.get(gemm_index(o, i, k)).ok_or(SHORT)? as i8;
            sum_abs += i64::from(v.unsigned_abs());
        }
        if i64::from(i32_at(bias, o)?.unsigned_abs()) + 128 * sum_abs >= 1i64 << 31 {
            return Err(Error::Malformed("accumulator could overflow i32"));
        }
    }
    Ok(())
}

/// The MLP-Mixer's sections: every GEMM layer's int8 rules, the zero points chained from
/// each tensor's producer to its consumer, the LayerNorm and residual-add bounds.
fn validate_mixer(b: &Blob<'_>) -> Result<(), Error> {
    use mixer_limits::*;
    let h = b.header;
    let zp_ok = |z: i32| (-128..=127).contains(&z);
    // The zero point of the int8 tensor the next layer reads (the pixels: −128).
    let mut zp_prev = -128;
    for layer in 0..=h.head_layer() {
        let role = h.mixer_layer(layer).ok_or(Error::Malformed("layer plan"))?;
        match role {
            MixerLayer::Norm => {
                let s = b.section(SectionKind::LayerNorm, layer)?;
                let eps = u64::from_le_bytes(*s.first_chunk::<8>().ok_or(SHORT)?);
                let (sh, zp) = (i32_at(s, 2)?, i32_at(s, 3)?);
                let dim = usize::from(h.dim);
                let offsets = s.get(16 + 4 * dim..).ok_or(SHORT)?;
                let b_ok = offsets.chunks_exact(8).all(|c| {
                    let v = i64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                    v.unsigned_abs() <= LN_B_MAX as u64
                });
                if eps > LN_EPS_MAX || !(0..=LN_SH_MAX).contains(&sh) || !zp_ok(zp) || !b_ok {
                    return Err(Error::Malformed("LayerNorm parameter out of range"));
                }
                zp_prev = zp;
            }
            MixerLayer::Head => {
                let q = b.section(SectionKind::QParams, layer)?;
                if i32_at(q, 0)? != zp_prev {
                    return Err(Error::Malformed("zero point differs from its producer's"));
                }
            }
            _ => {
                let (_, k, n) = h.mixer_gemm(layer).ok_or(Error::Malformed("layer plan"))?;
                let q = b.section(SectionKind::QParams, layer)?;
                let (zp_in, zp_z, zp_out) = (i32_at(q, 0)?, i32_at(q, 1)?, i32_at(q, 2)?);
                if !(zp_ok(zp_z) && zp_ok(zp_out)) || i32_at(q, 3)? != 0 {
                    return Err(Error::Malformed("zero point out of range"));
                }
                if zp_in != zp_prev {
                    return Err(Error::Malformed("zero point differs from its producer's"));
                }
                check_int8_gemm(b, layer, k, n)?;
                if role.adds_residual() {
                    let r = b.section(SectionKind::ResAdd, layer)?;
                    let (m, sh) = (i32_at(r, 0)?, i32_at(r, 1)?);
                    if !(0..=RES_M_MAX).contains(&m)
                        || !(0..=RES_SH_MAX).contains(&sh)
                        || i32_at(r, 2)? != 0
                        || i32_at(r, 3)? != 0
                    {
                        return Err(Error::Malformed("residual-add parameter out of range"));
                    }
                    // The residual stream (int16, zero point 0) is what the next LayerNorm
                    // reads; its int8 producer is the LayerNorm itself.
                } else {
                    zp_prev = zp_out;
                }
            }
        }
    }
    Ok(())
}

pub(super) fn validate_contents(b: &Blob<'_>) -> Result<(), Error> {
    let h = b.header;
    let labels =
        core::str::from_utf8(b.section_by_index(1)?).map_err(|_| Error::Malformed("labels"))?;
    if !labels.is_empty() && labels.split('\n').count() != usize::from(h.classes) {
        return Err(Error::Malformed("label count does not match classes"));
    }
    if h.arch == Arch::MlpMixer {
        return validate_mixer(b);
    }
    if h.precision != Precision::Int8 {
        let wbytes = if h.precision == Precision::F16 { 2 } else { 4 };
        for layer in 0..h.conv_layers() {
            if layer % 2 == 0 {
                check_float_padding(b, layer, wbytes)?;
            }
            check_unscale(b, layer)?;
        }
        return Ok(());
    }
    let zp_ok = |z: i32| (-128..=127).contains(&z);
    for layer in 0..h.conv_layers() {
        let q = b.section(SectionKind::QParams, layer)?;
        let zp_in = i32_at(q, 0)?;
        if !(zp_ok(zp_in) && zp_ok(i32_at(q, 1)?) && zp_ok(i32_at(q, 2)?)) {
            return Err(Error::Malformed("zero point out of range"));
        }
        if layer == 0 && zp_in != -128 {
            return Err(Error::Malformed("embedding input zero point must be -128"));
        }
        if h.f16_layers.contains(layer) {
            // An f16 layer between int8 tensors: finite positive scales, float padding.
            let s = b.section(SectionKind::IoScale, layer)?;
            let ok = |v: f32| v.is_finite() && v > 0.0;
            if !s.chunks_exact(4).all(|c| ok(LE::read_f32(c))) {
                return Err(Error::Malformed("f16 layer scales"));
            }
            if layer % 2 == 0 {
                check_float_padding(b, layer, 2)?;
            }
            check_unscale(b, layer)?;
            continue;
        }
        let taps = h.taps(layer);
        let dim = usize::from(h.dim);
        // The embedding and the pointwise convs are GEMMs with packed weights.
        if layer % 2 == 0 {
            check_int8_gemm(b, layer, taps, dim)?;
            continue;
        }
        // Depthwise: the same rules on tap-major weights (channel o at every `dim`-th
        // byte), with the residual multiplier.
        let w = b.section(SectionKind::Weights, layer)?;
        let bias = b.section(SectionKind::Bias, layer)?;
        let rq = b.section(SectionKind::Requant, layer)?;
        if w.contains(&0x80) {
            return Err(Error::Malformed("int8 weight −128"));
        }
        for o in 0..dim {
            check_requant(rq, dim, o, true)?;
            let sum_abs: i64 = (0..taps)
                .map(|t| {
                    w.get(t * dim + o)
                        .map(|&v| i64::from((v as i8).unsigned_abs()))
                        .ok_or(SHORT)
                })
                .sum::<Result<i64, Error>>()?;
            if i64::from(i32_at(bias, o)?.unsigned_abs()) + 128 * sum_abs >= 1i64 << 31 {
                return Err(Error::Malformed("accumulator could overflow i32"));
            }
        }
    }
    let hq = b.section(SectionKind::QParams, h.head_layer())?;
    if !zp_ok(i32_at(hq, 0)?) {
        return Err(Error::Malformed("zero point out of range"));
    }
    if h.f16_layers.contains(h.head_layer()) {
        let s = b.section(SectionKind::IoScale, h.head_layer())?;
        if !s
            .chunks_exact(4)
            .all(|c| LE::read_f32(c).is_finite() && LE::read_f32(c) > 0.0)
        {
            return Err(Error::Malformed("f16 layer scales"));
        }
    }
    Ok(())
}
