//! Malformed inputs: every broken blob is an `Err` (never a panic or an out-of-bounds
//! read), and every ONNX file that is not a ConvMixer gets an error naming the node, its
//! op type and what was expected.

use convmixer_edge::{Error, Model, Precision};
use convmixer_edge_tests::onnx_edit::{edit_f32, graph};
use convmixer_edge_tests::*;
use convmixer_quantize::{onnx, Options};
use prost::Message;
use tract_onnx::pb;

const SMALL: &str = "ts18_d8_dp1_k3_p2_c1_12x12_gelu_cls3_mean";
const TS13: &str = "ts13_d16_dp2_k5_p2_c1_28x28_gelu_cls10";

fn fixture(name: &str) -> std::path::PathBuf {
    root()
        .join("tests/fixtures/fold")
        .join(format!("{name}.onnx"))
}

/// An int8 blob of a small fixture (calibrated on a few synthetic images) and its input size.
fn small_int8() -> (Vec<u8>, usize) {
    let m = onnx::import(&fixture(SMALL)).expect("import");
    let n = m.in_c * m.in_h * m.in_w;
    let calib: Vec<Vec<u8>> = (0..8u32)
        .map(|s| {
            (0..n as u32)
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
        convmixer_quantize::quantize(&m, Precision::Int8, &calib, &opts, &|| {}).expect("blob"),
        n,
    )
}

/// The same fixture as an fp16 blob.
fn small_fp16() -> (Vec<u8>, usize) {
    let m = onnx::import(&fixture(SMALL)).expect("import");
    let n = m.in_c * m.in_h * m.in_w;
    let blob = convmixer_quantize::quantize(&m, Precision::F16, &[], &Options::default(), &|| {})
        .expect("fp16");
    (blob, n)
}

#[test]
fn the_good_blob_runs() {
    let (b, n) = small_int8();
    let m = Model::from_bytes(&b).expect("valid blob");
    let mut arena = vec![0u8; m.arena_len()];
    let top = m
        .classify::<3>(&vec![7u8; n], &mut arena)
        .expect("classify");
    assert_eq!(top.len(), 3);
    assert_eq!(m.label(2), Some("c"));
}

#[test]
fn every_truncation_is_an_error() {
    let (b, _) = small_int8();
    for len in 0..b.len() {
        assert!(
            Model::from_bytes(&b[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut longer = b.clone();
    longer.push(0);
    assert!(
        Model::from_bytes(&longer).is_err(),
        "trailing byte accepted"
    );
}

#[test]
fn every_single_bit_flip_is_caught() {
    // The CRC is checked before any header field is believed: a flip anywhere but in the
    // magic (not a blob) or in blob_len (made longer: truncated) is a CRC mismatch.
    for (b, _) in [small_int8(), small_fp16()] {
        assert_every_bit_flip_is_caught(&b);
    }
}

#[test]
fn header_fields_are_checked_even_with_a_valid_crc() {
    let (b, n) = small_int8();
    let with = |at: usize, bytes: &[u8]| Model::from_bytes(&patched(&b, at, bytes)).err();
    assert_eq!(with(0, b"CMXC"), Some(Error::BadMagic));
    assert_eq!(
        with(4, &1u16.to_le_bytes()),
        Some(Error::UnsupportedVersion(1))
    );
    assert_eq!(with(8, &[9]), Some(Error::UnsupportedPrecision(9)));
    assert!(
        matches!(with(6, &[65]), Some(Error::Malformed(_))),
        "header_len"
    );
    // Shapes that disagree with the payload: dim, depth, kernel, classes, image size.
    // (The image size is not among them: the network is fully convolutional, so a blob
    // whose in_h/in_w are changed is a valid model for another input size.)
    for (at, v) in [
        (16usize, &[9u8, 0][..]),
        (18, &[2, 0]),
        (20, &[5, 2, 2]),
        (24, &[4, 0]),
        (10, &[3]),
    ] {
        assert!(
            matches!(with(at, v), Some(Error::Malformed(_) | Error::Truncated)),
            "field at {at}"
        );
    }
    // The f16 layer mask (header bytes 44..64): a layer past the model's 3 conv layers
    // and its head (layer 3; depth 1). A mask bit on a real layer (or the head) changes the
    // section plan, so the table of contents no longer matches.
    for bit in [4usize, 100, 159] {
        let mut mask = [0u8; 20];
        mask[bit / 8] = 1 << (bit % 8);
        assert_eq!(
            with(44, &mask),
            Some(Error::Malformed("f16 layer mask")),
            "bit {bit}"
        );
    }
    for byte in [1u8, 8] {
        assert!(matches!(
            with(44, &[byte]),
            Some(Error::Malformed(_) | Error::Truncated)
        ));
    }
    // Wrong inputs at run time.
    let m = Model::from_bytes(&b).expect("valid");
    let mut arena = vec![0u8; m.arena_len()];
    assert_eq!(
        m.classify::<1>(&vec![0u8; n - 1], &mut arena).unwrap_err(),
        Error::InputSize {
            expected: n,
            got: n - 1
        }
    );
    let mut small = vec![0u8; m.arena_len() - 16];
    assert!(matches!(
        m.classify::<1>(&vec![0u8; n], &mut small),
        Err(Error::ArenaTooSmall { .. })
    ));
    let mut out = vec![0f32; 2];
    assert_eq!(
        m.logits(&vec![0u8; n], &mut arena, &mut out).unwrap_err(),
        Error::OutputSize {
            expected: 3,
            got: 2
        }
    );
}

/// Mutations that keep the CRC valid reach the deeper validation and the kernels: the
/// runtime must return `Err` or run to completion, never panic.
#[test]
fn random_mutations_with_valid_crc_never_panic() {
    for (b, n) in [small_int8(), small_fp16()] {
        let (ok, err) = mutate_and_run(&b, n, 3000, 256);
        assert!(
            err > 0 && ok > 0,
            "mutations: {ok} accepted, {err} rejected"
        );
    }
}

// ---------------------------------------------------------------------------------------
// ONNX

fn load_proto(name: &str) -> pb::ModelProto {
    pb::ModelProto::decode(std::fs::read(fixture(name)).expect("read").as_slice()).expect("decode")
}

fn import_err(m: &pb::ModelProto) -> String {
    match onnx::import_bytes(&m.encode_to_vec()) {
        Ok(_) => panic!("mutated model accepted"),
        Err(e) => format!("{e:#}"),
    }
}

fn node_mut<'a>(m: &'a mut pb::ModelProto, op: &str, nth: usize) -> &'a mut pb::NodeProto {
    graph(m)
        .node
        .iter_mut()
        .filter(|n| n.op_type == op)
        .nth(nth)
        .expect("node")
}

#[test]
fn not_onnx_and_truncated_files_are_errors() {
    for junk in [&b""[..], b"hello world", &[0xff; 100], b"CMXB\x01\x00"] {
        let e = onnx::import_bytes(junk).expect_err("junk accepted");
        assert!(!format!("{e:#}").is_empty());
    }
    let bytes = std::fs::read(fixture(TS13)).expect("read");
    for len in (0..bytes.len()).step_by(251) {
        let e = onnx::import_bytes(&bytes[..len]).expect_err("truncated file accepted");
        assert!(!format!("{e:#}").contains('\n'), "one-line error");
    }
}

#[test]
fn foreign_graphs_are_named_in_the_error() {
    let base = load_proto(TS13);

    // A max pool instead of the average pool (a ResNet-style head).
    let mut m = base.clone();
    node_mut(&mut m, "GlobalAveragePool", 0).op_type = "GlobalMaxPool".into();
    let e = import_err(&m);
    assert!(e.contains("GlobalMaxPool") && e.contains("expected"), "{e}");

    // An unsupported activation.
    let mut m = base.clone();
    node_mut(&mut m, "Erf", 2).op_type = "Sigmoid".into();
    let e = import_err(&m);
    assert!(e.contains("Sigmoid") || e.contains("GELU"), "{e}");

    // An element-wise subgraph that is not GELU (tanh in place of erf).
    let mut m = base.clone();
    node_mut(&mut m, "Erf", 0).op_type = "Tanh".into();
    let e = import_err(&m);
    assert!(e.contains("not GELU"), "{e}");

    // A grouped conv that is neither depthwise nor dense.
    let mut m = base.clone();
    let dw = node_mut(&mut m, "Conv", 1);
    dw.attribute
        .iter_mut()
        .find(|a| a.name == "group")
        .expect("group")
        .i = 2;
    let e = import_err(&m);
    assert!(e.contains("Conv") && e.contains("group"), "{e}");

    // A dilated conv.
    let mut m = base.clone();
    let dw = node_mut(&mut m, "Conv", 1);
    dw.attribute
        .iter_mut()
        .find(|a| a.name == "dilations")
        .expect("dilations")
        .ints = vec![2, 2];
    let e = import_err(&m);
    assert!(e.contains("dilated"), "{e}");

    // The residual add removed: the depthwise block output goes straight to the 1x1 conv.
    let mut m = base.clone();
    let g = graph(&mut m);
    let add = g
        .node
        .iter()
        .position(|n| n.op_type == "Add" && n.input[0].contains("BatchNormalization"))
        .expect("residual");
    let out = g.node[add].output[0].clone();
    let bn_out = g.node[add].input[0].clone();
    g.node.remove(add);
    for n in &mut g.node {
        for i in &mut n.input {
            if *i == out {
                *i = bn_out.clone();
            }
        }
    }
    let e = import_err(&m);
    assert!(e.contains("expected"), "{e}");

    // Training-mode BN, negative variance, NaN weights.
    let mut m = base.clone();
    edit_f32(&mut m, "3.0.fn.2.running_var", |v| v[0] = -1.0);
    let e = import_err(&m);
    assert!(
        e.contains("BatchNormalization") && e.contains("negative"),
        "{e}"
    );

    let mut m = base.clone();
    edit_f32(&mut m, "3.1.weight", |w| w[5] = f32::NAN);
    let e = import_err(&m);
    assert!(e.contains("not finite") || e.contains("NaN"), "{e}");

    // Two graph inputs.
    let mut m = base.clone();
    let extra = graph(&mut m).input[0].clone();
    let mut extra = extra;
    extra.name = "second".into();
    graph(&mut m).input.push(extra);
    let e = import_err(&m);
    assert!(e.contains("inputs"), "{e}");

    // An unknown op in the head; every error is one line.
    let mut m = base.clone();
    node_mut(&mut m, "Gemm", 0).op_type = "MatMulInteger".into();
    let e = import_err(&m);
    assert!(e.contains("MatMulInteger") && !e.contains('\n'), "{e}");
}

/// A float layer's `unscale` (AFFINE's third vector) must be a power of two in
/// `2^-24 ..= 1`; anything else is refused even with a valid CRC.
#[test]
fn float_unscales_are_checked() {
    let blob = std::fs::read(mnist("convmixer-mnist-fp16.cmx")).expect("fp16 example");
    let r = section_range(&blob, convmixer_edge::blob::SectionKind::Affine, 1);
    let at = r.start + 2 * (r.len() / 3); // channel 0's unscale
    let with = |v: f32| Model::from_bytes(&patched(&blob, at, &v.to_le_bytes())).err();
    for ok in [1.0f32, 0.5, 2f32.powi(-24)] {
        assert_eq!(with(ok), None, "{ok}");
    }
    for bad in [
        2.0f32,
        3.0,
        0.75,
        0.0,
        -0.5,
        2f32.powi(-25),
        f32::NAN,
        f32::INFINITY,
    ] {
        assert_eq!(
            with(bad),
            Some(Error::Malformed("float layer unscale")),
            "{bad}"
        );
    }
}
