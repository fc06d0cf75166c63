//! Fuzz target `blob`: `Model::from_bytes`, then `classify` / `logits` with arbitrary pixels.
//!
//! Input format (every byte string is a valid input):
//!
//! ```text
//! [flags: u8][blob_len: u32 LE][blob: blob_len bytes][pixels: the rest]
//! ```
//!
//! A shorter input is read as far as it goes (a missing length is 0, a length past the end
//! takes what is left and leaves no pixels).
//!
//! - flags bit 0 (`0x01`): recompute the blob's CRC-32 before parsing, so that mutations
//!   reach the validation behind the CRC and the kernels. Clear: the bytes as they are
//!   (random bytes then never pass the CRC check).
//! - bit 1 (`0x02`): run `logits` (and check a wrong-size logits buffer is refused);
//!   clear: `classify::<5>`, or `classify::<0>` when bit 3 is set too.
//! - bit 2 (`0x04`): parse the blob at an odd address (the portable reader needs no
//!   alignment).
//! - bits 4..8: the arena starts that many bytes (0..15) into a 16-byte-aligned buffer.
//!
//! `pixels` is repeated (or cut) to the model's `input_len` (zeros when empty). A blob that
//! parses must then: refuse pixels of the wrong length, refuse an arena one byte shorter
//! than `arena_len`, and run with the exact arena on every available `Isa` and, for f16
//! blobs, with both arithmetics, giving bit-identical logits across `Isa`s. The run is
//! skipped (parsing still fuzzed) when the arena would exceed 64 MiB, the image 4 MiB or
//! the network 2^18 multiply-accumulates (the MNIST model, 2.8 M, is only parsed; the
//! instrumented kernels run about 3 M multiply-accumulates a second), to keep each
//! execution fast.
#![no_main]

use convmixer_edge::kernels::Isa;
use convmixer_edge::{Error, Model, Precision};
use libfuzzer_sys::fuzz_target;

const MAX_ARENA: usize = 64 << 20;
const MAX_MACS: u128 = 1 << 18;
const MAX_INPUT: usize = 1 << 22;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or(&[]);
    let mut len = [0u8; 4];
    let n = rest.len().min(4);
    len[..n].copy_from_slice(&rest[..n]);
    let rest = &rest[n..];
    let blob_len = (u32::from_le_bytes(len) as usize).min(rest.len());
    let (blob, pixels) = rest.split_at(blob_len);

    // The blob at a 16-byte-aligned address, or one byte past it (bit 2).
    let at = usize::from(flags & 0x04 != 0);
    let mut storage = vec![0u128; (at + blob.len()).div_ceil(16)];
    let buf = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut storage)[at..at + blob.len()];
    buf.copy_from_slice(blob);
    if flags & 0x01 != 0 && buf.len() >= convmixer_edge::blob::CRC_RANGE.end {
        fix_crc(buf);
    }
    let bytes: &[u8] = buf;
    let Ok(model) = Model::from_bytes(bytes) else {
        return;
    };
    let h = *model.header();
    for c in (0..h.classes.min(64)).chain([h.classes.wrapping_sub(1), h.classes]) {
        let _ = model.label(c);
    }
    let arena_len = model.arena_len();
    if arena_len > MAX_ARENA || model.input_len() > MAX_INPUT || macs(&model) > MAX_MACS {
        return;
    }
    let n = model.input_len();
    let px: Vec<u8> = if pixels.is_empty() {
        vec![0; n]
    } else {
        pixels.iter().copied().cycle().take(n).collect()
    };
    let classes = usize::from(h.classes);

    // The arena: 16-byte-aligned storage, starting `offset` bytes in.
    let offset = usize::from(flags >> 4);
    let mut arena_storage = vec![0u128; (arena_len + offset).div_ceil(16)];
    let arena =
        &mut bytemuck::cast_slice_mut::<u128, u8>(&mut arena_storage)[offset..offset + arena_len];

    // Errors that must be reported before anything runs.
    let mut wrong = px.clone();
    wrong.push(0);
    assert!(
        matches!(
            model.classify::<1>(&wrong, arena),
            Err(Error::InputSize { .. })
        ),
        "pixels of the wrong length accepted"
    );
    assert!(
        matches!(
            model.classify::<1>(&px, &mut arena[..arena_len - 1]),
            Err(Error::ArenaTooSmall { .. })
        ),
        "an arena of arena_len - 1 bytes accepted"
    );

    let arithmetics: &[bool] = if h.precision == Precision::F16 {
        &[false, true]
    } else {
        &[model.f16_arithmetic()]
    };
    for &f16 in arithmetics {
        let mut first: Option<Vec<u32>> = None;
        for isa in Isa::ALL {
            let Ok(m) = model.with_f16_arithmetic(f16).with_isa(isa) else {
                assert!(!isa.available(), "with_isa refused an available Isa");
                continue;
            };
            let logits = if flags & 0x02 != 0 {
                let mut out = vec![0f32; classes + 1];
                assert!(
                    matches!(
                        m.logits(&px, arena, &mut out),
                        Err(Error::OutputSize { .. })
                    ),
                    "a logits buffer of the wrong size accepted"
                );
                m.logits(&px, arena, &mut out[..classes])
                    .expect("logits of a valid blob");
                out.truncate(classes);
                out
            } else if flags & 0x08 != 0 {
                let top = m
                    .classify::<0>(&px, arena)
                    .expect("classify of a valid blob");
                assert!(top.is_empty());
                continue;
            } else {
                let top = m
                    .classify::<5>(&px, arena)
                    .expect("classify of a valid blob");
                assert_eq!(top.len(), classes.min(5), "top-k length");
                assert!(
                    top.iter().all(|&(c, _)| usize::from(c) < classes),
                    "class out of range"
                );
                top.iter().map(|&(c, p)| f32::from(c) + p).collect()
            };
            let bits: Vec<u32> = logits.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => assert_eq!(f, &bits, "{isa:?} differs from Isa::Scalar"),
            }
        }
    }
}

/// Multiply-accumulates of one inference (an upper bound of the work).
fn macs(m: &Model) -> u128 {
    let h = m.header();
    let t = h.tokens() as u128;
    let dim = u128::from(h.dim);
    let k = u128::from(h.kernel);
    let taps0 = h.taps(0) as u128;
    t * (dim * taps0 + u128::from(h.depth) * (dim * k * k + dim * dim))
        + u128::from(h.classes) * dim
}

fn fix_crc(b: &mut [u8]) {
    let r = convmixer_edge::blob::CRC_RANGE;
    let mut d = convmixer_edge::blob::CRC.digest();
    d.update(&b[..r.start]);
    d.update(&b[r.end..]);
    let c = d.finalize().to_le_bytes();
    b[r].copy_from_slice(&c);
}
