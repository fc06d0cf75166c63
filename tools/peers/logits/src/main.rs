//! peers-logits BLOB PIXELS OUT [--f16-arith default|on|off]
//!
//! PIXELS: raw HWC u8 images back to back (`n · in_h · in_w · in_c` bytes, preprocessing
//! as `host-tools classify` does it: the blob normalises the pixels itself).
//! OUT: `n · classes` little-endian f32 logits, image-major.
//! `--f16-arith`: for fp16 blobs, compute in binary16 (`on`), in f32 (`off`) or as
//! `Model::from_bytes` chooses for this CPU (`default`, what `host-tools classify` runs).
//! Prints one line to stderr: precision and the arithmetic used.

use convmixer_edge::Model;
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peers-logits: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut pos, mut arith) = (Vec::new(), "default".to_string());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--f16-arith" {
            arith = it.next().ok_or("--f16-arith needs a value")?;
        } else {
            pos.push(a);
        }
    }
    let [blob, pixels, out] = pos.as_slice() else {
        return Err("usage: peers-logits BLOB PIXELS OUT [--f16-arith default|on|off]".into());
    };
    let bytes = std::fs::read(blob).map_err(|e| format!("{blob}: {e}"))?;
    let mut m = Model::from_bytes(&bytes).map_err(|e| format!("{blob}: {e}"))?;
    m = match arith.as_str() {
        "default" => m,
        "on" => m.with_f16_arithmetic(true),
        "off" => m.with_f16_arithmetic(false),
        other => return Err(format!("--f16-arith {other}: want default, on or off")),
    };
    let px = std::fs::read(pixels).map_err(|e| format!("{pixels}: {e}"))?;
    let n_in = m.input_len();
    if px.len() % n_in != 0 {
        return Err(format!("{pixels}: {} bytes is not a multiple of {n_in}", px.len()));
    }
    let classes = usize::from(m.header().classes);
    let mut arena = vec![0u8; m.arena_len()];
    let mut logits = vec![0f32; classes];
    let mut bytes_out = Vec::with_capacity(px.len() / n_in * classes * 4);
    for img in px.chunks_exact(n_in) {
        m.logits(img, &mut arena, &mut logits).map_err(|e| e.to_string())?;
        for v in &logits {
            bytes_out.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(out, bytes_out).map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "peers-logits: {:?} blob, f16 arithmetic {}",
        m.header().precision,
        m.f16_arithmetic()
    );
    Ok(())
}
