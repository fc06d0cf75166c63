//! Fuzz target `onnx`: the ONNX imports (`convmixer_quantize::onnx::import_bytes` and the
//! MLP-Mixer's `mixer::import_bytes`), and the lowering of what they accept.
//!
//! Input format: the whole input is the ONNX file (a `ModelProto`, as `torch.onnx.export`
//! writes it); every corpus file is a plain `.onnx` file.
//!
//! When the import succeeds and the model is small (at most 2^18 multiply-accumulates per
//! inference, 2^16 input bytes, 2^20 parameters), it is lowered to F16 (no normalisation)
//! and to Int8 (calibrated on 2 synthetic images). Every blob the quantiser writes must be
//! accepted by `Model::from_bytes` (running it is the `blob` target's job); a lowering may
//! fail (with an error), never panic.
#![no_main]

use convmixer_edge::Model;
use convmixer_quantize::{mixer, onnx, quantize, Options, Precision};
use libfuzzer_sys::fuzz_target;

const MAX_MACS: u128 = 1 << 18;
const MAX_INPUT: usize = 1 << 16;
const MAX_PARAMS: usize = 1 << 20;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    run_mixer(data);
    let Ok(m) = onnx::import_bytes(data) else {
        return;
    };
    let dim = m.dim() as u128;
    let p = m.patch().max(1);
    let tokens =
        (m.in_h.saturating_sub(p) / p + 1) as u128 * (m.in_w.saturating_sub(p) / p + 1) as u128;
    let k = m.kernel() as u128;
    let macs = tokens
        * (dim * (p as u128 * p as u128 * m.in_c as u128)
            + m.blocks.len() as u128 * (dim * k * k + dim * dim))
        + m.classes() as u128 * dim;
    let params: usize = [m.embed.w.len(), m.head_w.len()]
        .into_iter()
        .chain(m.blocks.iter().flat_map(|(a, b)| [a.w.len(), b.w.len()]))
        .sum();
    let input = m.in_c.saturating_mul(m.in_h).saturating_mul(m.in_w);
    if macs > MAX_MACS || input > MAX_INPUT || params > MAX_PARAMS {
        return;
    }
    let calib: Vec<Vec<u8>> = (0..2u32)
        .map(|s| {
            (0..input as u32)
                .map(|i| ((i * 37 + s * 101) % 256) as u8)
                .collect()
        })
        .collect();
    let opts = Options::default();
    for (precision, images) in [(Precision::F16, &[][..]), (Precision::Int8, &calib[..])] {
        let Ok(blob) = quantize(&m, precision, images, &opts, &|| {}) else {
            continue;
        };
        let model = Model::from_bytes(&blob).unwrap_or_else(|e| {
            panic!("the runtime rejects the quantiser's {precision:?} blob: {e}")
        });
        assert_eq!(model.input_len(), input, "{precision:?} blob input size");
    }
}

/// The MLP-Mixer import, and the int8 lowering of a small accepted model (the same limits).
fn run_mixer(data: &[u8]) {
    let Ok(m) = mixer::import_bytes(data) else {
        return;
    };
    let (t, d) = (m.tokens() as u128, m.dim as u128);
    let (ht, hc) = m.hidden();
    let k = (m.patch * m.patch * m.in_c) as u128;
    let macs = t * k * d + m.blocks.len() as u128 * 2 * d * t * (ht + hc) as u128;
    let input = m.in_c.saturating_mul(m.in_h).saturating_mul(m.in_w);
    if macs > MAX_MACS || input > MAX_INPUT || m.params() > MAX_PARAMS {
        return;
    }
    let calib: Vec<Vec<u8>> = (0..2u32)
        .map(|s| {
            (0..input as u32)
                .map(|i| ((i * 37 + s * 101) % 256) as u8)
                .collect()
        })
        .collect();
    if let Ok(blob) = mixer::quantize(&m, &calib, &Options::default(), &|| {}) {
        let model = Model::from_bytes(&blob)
            .unwrap_or_else(|e| panic!("the runtime rejects the quantiser's mixer blob: {e}"));
        assert_eq!(model.input_len(), input, "mixer blob input size");
    }
}
