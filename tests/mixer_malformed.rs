//! Malformed MLP-Mixer inputs: every broken mixer blob is an `Err` (never a panic or an
//! out-of-bounds read), and an ONNX graph the mixer importer does not take is an error
//! naming the node and what was expected.

use convmixer_edge::blob::SectionKind;
use convmixer_edge::{Activation, Error, Model};
use convmixer_edge_tests::*;
use convmixer_quantize::mixer::{self, Block, Linear, Ln, Mixer, Mlp};
use convmixer_quantize::onnx;
use convmixer_quantize::Options;
use prost::Message;
use tract_onnx::pb;

fn rng(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// A small random MLP-Mixer (8x8 gray input, patch 4: 4 tokens; dim 8, depth 1, token
/// hidden 6, channel hidden 16, 3 classes), its int8 blob and its input size.
fn small_mixer_blob() -> (Vec<u8>, usize) {
    let mut r = rng(0x9e37_79b9_7f4a_7c15);
    let mut uniform = move |s: f32| (r() % 2001) as f32 / 1000.0 * s - s;
    let mut lin = |n_in: usize, n_out: usize| Linear {
        w: (0..n_in * n_out)
            .map(|_| uniform(1.0 / (n_in as f32).sqrt()))
            .collect(),
        b: (0..n_out).map(|_| uniform(0.1)).collect(),
        n_in,
        n_out,
    };
    let ln = |g: f32| Ln {
        gamma: (0..8).map(|c| g + 0.05 * c as f32).collect(),
        beta: (0..8).map(|c| 0.02 * c as f32 - 0.05).collect(),
        eps: 1e-5,
    };
    let (embed, t1, t2, c1, c2, head) = (
        lin(16, 8),
        lin(4, 6),
        lin(6, 4),
        lin(8, 16),
        lin(16, 8),
        lin(8, 3),
    );
    let m = Mixer {
        in_c: 1,
        in_h: 8,
        in_w: 8,
        patch: 4,
        dim: 8,
        embed,
        blocks: vec![Block {
            token: Mlp {
                norm: ln(1.0),
                fc1: t1,
                act: Activation::Gelu,
                fc2: t2,
            },
            channel: Mlp {
                norm: ln(0.8),
                fc1: c1,
                act: Activation::Gelu,
                fc2: c2,
            },
        }],
        norm: ln(1.2),
        head,
        opset: 17,
        mean: vec![],
        std: vec![],
    };
    let calib: Vec<Vec<u8>> = (0..8u32)
        .map(|s| {
            (0..64u32)
                .map(|i| ((i * 37 + s * 101) % 256) as u8)
                .collect()
        })
        .collect();
    let opts = Options {
        mean: vec![0.5],
        std: vec![0.25],
        labels: vec!["a".into(), "b".into(), "c".into()],
        ..Default::default()
    };
    (
        mixer::quantize(&m, &calib, &opts, &|| {}).expect("blob"),
        64,
    )
}

/// The small mixer blob is in the blob fuzzer's corpus (`fuzz/corpus/blob/mixer-small`), so
/// that the fuzzer starts from the MLP-Mixer paths too; it must be what the quantiser makes
/// today (regenerate with `CMX_BLESS=1`, as `examples_current`).
#[test]
fn the_fuzz_corpus_has_the_current_small_mixer() {
    let (b, _) = small_mixer_blob();
    let path = root().join("fuzz/corpus/blob/mixer-small");
    if std::env::var_os("CMX_BLESS").is_some() {
        convmixer_quantize::data::write_atomic(&path, &b).expect("write");
    }
    assert!(
        std::fs::read(&path).expect("corpus file") == b,
        "{} is stale: rerun with CMX_BLESS=1",
        path.display()
    );
}

#[test]
fn the_small_mixer_runs() {
    let (b, n) = small_mixer_blob();
    let m = Model::from_bytes(&b).expect("valid blob");
    assert_eq!(m.header().arch, convmixer_edge::blob::Arch::MlpMixer);
    let mut arena = vec![0u8; m.arena_len()];
    let top = m
        .classify::<3>(&vec![7u8; n], &mut arena)
        .expect("classify");
    assert_eq!(top.len(), 3);
    assert_eq!(m.label(2), Some("c"));
}

#[test]
fn every_truncation_and_bit_flip_of_a_mixer_blob_is_an_error() {
    let (b, _) = small_mixer_blob();
    for len in 0..b.len() {
        assert!(
            Model::from_bytes(&b[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    assert_every_bit_flip_is_caught(&b);
}

#[test]
fn mixer_header_and_sections_are_checked_with_a_valid_crc() {
    let (b, _) = small_mixer_blob();
    let with = |at: usize, bytes: &[u8]| Model::from_bytes(&patched(&b, at, bytes)).err();
    let malformed = |e: Option<Error>| matches!(e, Some(Error::Malformed(_) | Error::Truncated));
    assert_eq!(with(36, &[2]), Some(Error::Malformed("architecture code")));
    for at in [37, 42, 43] {
        assert_eq!(
            with(at, &[1]),
            Some(Error::Malformed("reserved header bytes are not zero")),
            "byte {at}"
        );
    }
    assert_eq!(
        with(8, &[1]),
        Some(Error::Malformed("MLP-Mixer blobs are int8 only"))
    );
    assert_eq!(
        with(20, &[3]),
        Some(Error::Malformed("conv fields in an MLP-Mixer blob"))
    );
    assert_eq!(
        with(44, &[1]),
        Some(Error::Malformed("conv fields in an MLP-Mixer blob"))
    );
    assert_eq!(
        with(38, &[0, 0]),
        Some(Error::Malformed("zero dim, classes or hidden width"))
    );
    // Another hidden width, dim or depth changes the section plan: the table of contents
    // no longer matches.
    for (at, v) in [
        (38usize, &[7u8, 0][..]),
        (40, &[15, 0]),
        (16, &[9, 0]),
        (18, &[2, 0]),
    ] {
        assert!(malformed(with(at, v)), "field at {at}");
    }
    // A ConvMixer blob with hidden widths.
    let cm = std::fs::read(mnist("convmixer-mnist-int8.cmx")).expect("blob");
    assert_eq!(
        Model::from_bytes(&patched(&cm, 38, &[4, 0])).err(),
        Some(Error::Malformed("MLP hidden widths in a ConvMixer blob"))
    );

    // Section contents. Layer 1 is the token LayerNorm, 2/3 the token MLP, 4 the channel
    // LayerNorm, 5/6 the channel MLP, 7 the final LayerNorm, 8 the head.
    let sec = |kind, layer| section_range(&b, kind, layer);
    let ln = sec(SectionKind::LayerNorm, 1).start;
    let bad_ln = "LayerNorm parameter out of range";
    assert_eq!(
        with(ln, &((1u64 << 62) + 1).to_le_bytes()),
        Some(Error::Malformed(bad_ln)),
        "eps"
    );
    assert_eq!(
        with(ln + 8, &63i32.to_le_bytes()),
        Some(Error::Malformed(bad_ln)),
        "shift"
    );
    assert_eq!(
        with(ln + 8, &(-1i32).to_le_bytes()),
        Some(Error::Malformed(bad_ln)),
        "shift"
    );
    assert_eq!(
        with(ln + 12, &200i32.to_le_bytes()),
        Some(Error::Malformed(bad_ln)),
        "zero point"
    );
    let off0 = ln + 16 + 4 * 8;
    assert_eq!(
        with(off0, &((1i64 << 55) + 1).to_le_bytes()),
        Some(Error::Malformed(bad_ln)),
        "offset"
    );
    // The token fc1 reads the LayerNorm's output: its zero point must be the LayerNorm's.
    let zp_ln = i32::from_le_bytes(b[ln + 12..ln + 16].try_into().unwrap());
    let q = sec(SectionKind::QParams, 2).start;
    assert_eq!(
        with(q, &(zp_ln + 1).clamp(-128, 127).to_le_bytes())
            .or(with(q, &(zp_ln - 1).to_le_bytes())),
        Some(Error::Malformed("zero point differs from its producer's"))
    );
    assert_eq!(
        with(q + 12, &1i32.to_le_bytes()),
        Some(Error::Malformed("zero point out of range"))
    );
    let head_q = sec(SectionKind::QParams, 8).start;
    assert_eq!(
        with(head_q, &[0x55, 0, 0, 0]),
        Some(Error::Malformed("zero point differs from its producer's"))
    );
    let ra = sec(SectionKind::ResAdd, 3).start;
    let bad_ra = "residual-add parameter out of range";
    assert_eq!(
        with(ra, &((1i32 << 22) + 1).to_le_bytes()),
        Some(Error::Malformed(bad_ra))
    );
    assert_eq!(
        with(ra, &(-1i32).to_le_bytes()),
        Some(Error::Malformed(bad_ra))
    );
    assert_eq!(
        with(ra + 4, &32i32.to_le_bytes()),
        Some(Error::Malformed(bad_ra))
    );
    assert_eq!(
        with(ra + 8, &1i32.to_le_bytes()),
        Some(Error::Malformed(bad_ra))
    );
    // The GEMM rules of the ConvMixer layers: no weight −128, no accumulator overflow.
    let w = sec(SectionKind::Weights, 5).start;
    assert_eq!(with(w, &[0x80]), Some(Error::Malformed("int8 weight −128")));
    let bias = sec(SectionKind::Bias, 6).start;
    assert_eq!(
        with(bias, &i32::MAX.to_le_bytes()),
        Some(Error::Malformed("accumulator could overflow i32"))
    );
    let rq = sec(SectionKind::Requant, 2).start;
    assert_eq!(
        with(rq, &(-1i32).to_le_bytes()),
        Some(Error::Malformed("requantisation parameter out of range"))
    );
}

#[test]
fn random_mutations_of_a_mixer_blob_never_panic() {
    let (b, n) = small_mixer_blob();
    let (ok, err) = mutate_and_run(&b, n, 4000, 512);
    assert!(
        err > 0 && ok > 0,
        "mutations: {ok} accepted, {err} rejected"
    );
}

// ---------------------------------------------------------------------------------------
// ONNX

fn lucid(export: &str) -> pb::ModelProto {
    let p = root().join(format!("examples/mixer-mnist/mixer-lucid.{export}.onnx"));
    pb::ModelProto::decode(std::fs::read(p).expect("read").as_slice()).expect("decode")
}

fn import_err(m: &pb::ModelProto) -> String {
    match mixer::import_bytes(&m.encode_to_vec()) {
        Ok(_) => panic!("mutated model accepted"),
        Err(e) => format!("{e:#}"),
    }
}

fn node_mut<'a>(m: &'a mut pb::ModelProto, op: &str, nth: usize) -> &'a mut pb::NodeProto {
    m.graph
        .as_mut()
        .expect("graph")
        .node
        .iter_mut()
        .filter(|n| n.op_type == op)
        .nth(nth)
        .expect("node")
}

#[test]
fn mixer_detection_and_foreign_inputs() {
    for layout in ["lucid", "timm"] {
        for export in ["torchscript", "dynamo", "torchscript16"] {
            let p = root().join(format!("examples/mixer-mnist/mixer-{layout}.{export}.onnx"));
            assert!(
                mixer::is_mixer(&onnx::load(&p).expect("load")),
                "{layout}/{export}"
            );
        }
    }
    let cm = std::fs::read(mnist("convmixer-mnist.torchscript.onnx")).expect("read");
    assert!(!mixer::is_mixer(&onnx::parse_model(&cm).expect("parse")));
    assert!(onnx::parse_model(b"junk").is_err());
    let e = format!(
        "{:#}",
        mixer::import_bytes(&cm).expect_err("a ConvMixer is not a mixer")
    );
    assert!(e.contains("patch grid"), "{e}");
    for junk in [&b""[..], b"hello world", &[0xff; 100]] {
        let e = mixer::import_bytes(junk).expect_err("junk accepted");
        assert!(!format!("{e:#}").contains('\n'));
    }
    // Truncated exports: an error (one line), never a panic.
    let bytes = std::fs::read(root().join("examples/mixer-mnist/mixer-lucid.torchscript.onnx"))
        .expect("read");
    for len in (0..bytes.len()).step_by(4999) {
        let e = mixer::import_bytes(&bytes[..len]).expect_err("truncated file accepted");
        assert!(!format!("{e:#}").contains('\n'), "{e:#}");
    }
}

#[test]
fn foreign_mixer_graphs_are_named_in_the_error() {
    // A Sigmoid in place of GELU's Erf (TorchScript export).
    let mut m = lucid("torchscript");
    node_mut(&mut m, "Erf", 2).op_type = "Sigmoid".into();
    let e = import_err(&m);
    assert!(
        e.contains("(Sigmoid)") && e.contains("unsupported op in the activation"),
        "{e}"
    );

    // LayerNorm over another axis.
    let mut m = lucid("dynamo");
    let n = node_mut(&mut m, "LayerNormalization", 3);
    n.attribute
        .iter_mut()
        .find(|a| a.name == "axis")
        .expect("axis")
        .i = 1;
    let e = import_err(&m);
    assert!(
        e.contains("(LayerNormalization)") && e.contains("normalises axis"),
        "{e}"
    );

    // A patch transpose that scrambles the grid.
    let mut m = lucid("dynamo");
    let n = node_mut(&mut m, "Transpose", 0);
    n.attribute
        .iter_mut()
        .find(|a| a.name == "perm")
        .expect("perm")
        .ints = vec![0, 4, 2, 3, 5, 1];
    let e = import_err(&m);
    assert!(
        e.contains("(Transpose)") && e.contains("patch Transpose"),
        "{e}"
    );

    // A Conv1d with kernel 3 in the token MLP.
    let mut m = lucid("dynamo");
    let n = node_mut(&mut m, "Conv", 1);
    n.attribute
        .iter_mut()
        .find(|a| a.name == "kernel_shape")
        .expect("kernel")
        .ints = vec![3];
    let e = import_err(&m);
    assert!(e.contains("(Conv)") && e.contains("kernel-1"), "{e}");

    // The mean over channels instead of tokens.
    let mut m = lucid("torchscript");
    let n = node_mut(&mut m, "ReduceMean", 0);
    n.attribute
        .iter_mut()
        .find(|a| a.name == "axes")
        .expect("axes")
        .ints = vec![1];
    let e = import_err(&m);
    assert!(
        e.contains("(ReduceMean)") && e.contains("token axis"),
        "{e}"
    );

    // Decomposed LayerNorm (opset 16) whose variance is over the tokens.
    let mut m = lucid("torchscript16");
    let n = node_mut(&mut m, "ReduceMean", 3);
    n.attribute
        .iter_mut()
        .find(|a| a.name == "axes")
        .expect("axes")
        .ints = vec![1];
    let e = import_err(&m);
    assert!(e.contains("(ReduceMean)") && e.contains("LayerNorm"), "{e}");

    // Every error is one line.
    for e in [import_err(&m)] {
        assert!(!e.contains('\n'), "{e}");
    }
}
