//! The malformed-input corpus: every way a user can hand the tools a broken input — a
//! damaged or foreign model blob, an ONNX file that is not a ConvMixer we can take, a bad
//! calibration folder, an image of the wrong size — run through the `host-tools` binary as
//! a user runs it, each with the exact one-line error it must produce.
//!
//! Every case must: exit with code 1, print exactly one line, `error: ` and the expected
//! text (temporary paths written `$T`, the examples folder `$EX`), and leave no file behind
//! in the output folder (neither the output nor a temporary file). The inputs are built
//! here from the shipped MNIST model, its blobs and images, so they follow the format when
//! it changes; `cargo test -p host-tools --test corpus -- --nocapture` prints the table.

use std::path::{Path, PathBuf};
use std::process::Command;

use convmixer_edge::blob::{SectionKind, CRC_RANGE};
use convmixer_edge_tests::onnx_edit::{
    edit_f32, graph, mnist_proto, mnist_with_overflowing_bias, set_input_hw,
};
use convmixer_edge_tests::{mnist, patched, section_range};
use prost::Message;
use tract_onnx::pb;

#[path = "corpus/external.rs"]
mod external;

/// One corpus entry: what the input is, the command line, and the exact error.
struct Case {
    kind: &'static str,
    input: String,
    args: Vec<String>,
    expect: String,
}

/// The temporary folder the inputs are written to, and the output folder that must stay
/// empty.
struct Ctx {
    dir: PathBuf,
    out: PathBuf,
    cases: Vec<Case>,
}

impl Ctx {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, bytes).expect("write input");
        s(&p)
    }

    fn out(&self) -> String {
        s(&self.out.join("model.cmx"))
    }

    fn case(&mut self, kind: &'static str, input: &str, args: Vec<String>, expect: &str) {
        self.cases.push(Case {
            kind,
            input: input.into(),
            args,
            expect: expect.into(),
        });
    }

    /// `classify BLOB digit.png` with `bytes` as the blob.
    fn blob(&mut self, input: &str, name: &str, bytes: &[u8], expect: &str) {
        let b = self.write(name, bytes);
        let digit = s(&mnist("heldout/3/0826.png"));
        self.case("blob", input, vec!["classify".into(), b, digit], expect);
    }

    /// `quantize ONNX --precision fp16 -o OUT` with `m` as the model.
    fn onnx(&mut self, input: &str, name: &str, m: &pb::ModelProto, expect: &str) {
        let bytes = m.encode_to_vec();
        self.onnx_bytes(input, name, &bytes, expect);
    }

    fn onnx_bytes(&mut self, input: &str, name: &str, bytes: &[u8], expect: &str) {
        let p = self.write(name, bytes);
        self.onnx_path(input, Path::new(&p), expect);
    }

    /// `quantize PATH --precision fp16 -o OUT`.
    fn onnx_path(&mut self, input: &str, p: &Path, expect: &str) {
        let args = vec![
            "quantize".into(),
            s(p),
            "--precision".into(),
            "fp16".into(),
            "-o".into(),
            self.out(),
        ];
        self.case("onnx", input, args, expect);
    }

    /// `quantize mnist.onnx --calib DIR -o OUT` (int8).
    fn calib(&mut self, input: &str, dir: &Path, expect: &str) {
        let args = vec![
            "quantize".into(),
            s(&mnist("convmixer-mnist.torchscript.onnx")),
            "--calib".into(),
            s(dir),
            "-o".into(),
            self.out(),
        ];
        self.case("calibration", input, args, expect);
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

fn int8_blob() -> Vec<u8> {
    std::fs::read(mnist("convmixer-mnist-int8.cmx")).expect("int8 example blob")
}

fn blob_cases(cx: &mut Ctx) {
    let b = int8_blob();
    let n = b.len();
    let trunc = "$T/{}: model blob is truncated";
    let t = |name: &str| trunc.replace("{}", name);
    cx.blob("empty file", "empty.cmx", &[], &t("empty.cmx"));
    cx.blob(
        "first 20 bytes (inside the header)",
        "head20.cmx",
        &b[..20],
        &t("head20.cmx"),
    );
    cx.blob(
        "header only (64 bytes)",
        "head64.cmx",
        &b[..64],
        &t("head64.cmx"),
    );
    cx.blob(
        "cut in the middle of the payload",
        "half.cmx",
        &b[..n / 2],
        &t("half.cmx"),
    );
    cx.blob(
        "last byte missing",
        "short1.cmx",
        &b[..n - 1],
        &t("short1.cmx"),
    );
    let mut longer = b.clone();
    longer.push(0);
    cx.blob(
        "one byte appended",
        "long1.cmx",
        &longer,
        "$T/long1.cmx: malformed model blob: trailing bytes after the blob",
    );
    let crc = "$T/{}: model blob is corrupted (CRC-32 mismatch)";
    let mut flip = b.clone();
    flip[n / 2] ^= 0x10;
    cx.blob(
        "one bit flipped in the weights",
        "flip-payload.cmx",
        &flip,
        &crc.replace("{}", "flip-payload.cmx"),
    );
    let mut flip = b.clone();
    flip[16] ^= 1;
    cx.blob(
        "one bit flipped in the header (dim)",
        "flip-header.cmx",
        &flip,
        &crc.replace("{}", "flip-header.cmx"),
    );
    let mut flip = b.clone();
    flip[CRC_RANGE.start] ^= 0x80;
    cx.blob(
        "one bit flipped in the CRC itself",
        "flip-crc.cmx",
        &flip,
        &crc.replace("{}", "flip-crc.cmx"),
    );
    cx.blob(
        "wrong magic (CRC valid)",
        "magic.cmx",
        &patched(&b, 0, b"CMXA"),
        "$T/magic.cmx: not a convmixer-edge model blob (bad magic)",
    );
    cx.blob(
        "an older version, 6 (CRC valid)",
        "v6.cmx",
        &patched(&b, 4, &6u16.to_le_bytes()),
        "$T/v6.cmx: unsupported blob version 6 (this runtime reads 7)",
    );
    cx.blob(
        "a future version, 8 (CRC valid)",
        "v8.cmx",
        &patched(&b, 4, &8u16.to_le_bytes()),
        "$T/v8.cmx: unsupported blob version 8 (this runtime reads 7)",
    );
    cx.blob(
        "unknown precision code 3 (CRC valid)",
        "prec3.cmx",
        &patched(&b, 8, &[3]),
        "$T/prec3.cmx: unsupported precision code 3",
    );
    cx.blob(
        "int8 payload declared f16 (CRC valid)",
        "prec-f16.cmx",
        &patched(&b, 8, &[1]),
        "$T/prec-f16.cmx: malformed model blob: gap_frac_bits in a float blob",
    );
    cx.blob(
        "declared dim 47, payload for 48 (CRC valid)",
        "dim.cmx",
        &patched(&b, 16, &47u16.to_le_bytes()),
        "$T/dim.cmx: malformed model blob: section length does not match the shapes",
    );
    cx.blob(
        "declared depth 5, payload for 4 (CRC valid)",
        "depth.cmx",
        &patched(&b, 18, &5u16.to_le_bytes()),
        "$T/depth.cmx: malformed model blob: section count does not match the header",
    );
    cx.blob(
        "declared kernel 7 (padding 3), payload for 5 (CRC valid)",
        "kernel.cmx",
        &patched(&b, 20, &[7, 3, 3]),
        "$T/kernel.cmx: malformed model blob: section length does not match the shapes",
    );
    cx.blob(
        "declared 11 classes, payload for 10 (CRC valid)",
        "classes.cmx",
        &patched(&b, 24, &11u16.to_le_bytes()),
        "$T/classes.cmx: malformed model blob: section length does not match the shapes",
    );
    cx.blob(
        "declared patch 4, payload for 2 (CRC valid)",
        "patch.cmx",
        &patched(&b, 11, &[4]),
        "$T/patch.cmx: malformed model blob: section length does not match the shapes",
    );
    cx.blob(
        "declared 3 input channels, payload for 1 (CRC valid)",
        "in_c.cmx",
        &patched(&b, 10, &[3]),
        "$T/in_c.cmx: malformed model blob: section length does not match the shapes",
    );
    cx.blob(
        "padding that is not 'same' (CRC valid)",
        "pad.cmx",
        &patched(&b, 21, &[0]),
        "$T/pad.cmx: malformed model blob: padding is not 'same'",
    );
    cx.blob(
        "f16 layer bit for a layer the model does not have (CRC valid)",
        "mask.cmx",
        &patched(&b, 44 + 100 / 8, &[1 << (100 % 8)]),
        "$T/mask.cmx: malformed model blob: f16 layer mask",
    );
    cx.blob(
        "table of contents claims one section less (CRC valid)",
        "nsect.cmx",
        &patched(
            &b,
            26,
            &(u16::from_le_bytes([b[26], b[27]]) - 1).to_le_bytes(),
        ),
        "$T/nsect.cmx: malformed model blob: section count does not match the header",
    );
    // An int8 bias so large that bias + Σ|w|·128 could overflow the i32 accumulator.
    let r = section_range(&b, SectionKind::Bias, 1);
    cx.blob(
        "int8 bias of 2^31 − 1 (accumulator could overflow; CRC valid)",
        "bias.cmx",
        &patched(&b, r.start, &i32::MAX.to_le_bytes()),
        "$T/bias.cmx: malformed model blob: accumulator could overflow i32",
    );
    let f16 = std::fs::read(mnist("convmixer-mnist-fp16.cmx")).expect("fp16 blob");
    let r = section_range(&f16, SectionKind::Affine, 1);
    cx.blob(
        "fp16 blob with an unscale of 0.75 (CRC valid)",
        "unscale.cmx",
        &patched(&f16, r.start + 2 * (r.len() / 3), &0.75f32.to_le_bytes()),
        "$T/unscale.cmx: malformed model blob: float layer unscale",
    );
    let onnx = std::fs::read(mnist("convmixer-mnist.torchscript.onnx")).expect("onnx");
    cx.blob(
        "an ONNX file given as the blob",
        "model-is-onnx.cmx",
        &onnx,
        "$T/model-is-onnx.cmx: not a convmixer-edge model blob (bad magic)",
    );
    cx.case(
        "blob",
        "missing blob file",
        vec![
            "classify".into(),
            "/nonexistent/model.cmx".into(),
            s(&mnist("heldout/3/0826.png")),
        ],
        "/nonexistent/model.cmx: cannot read: No such file or directory (os error 2)",
    );
}

fn image_cases(cx: &mut Ctx) {
    let blob = s(&mnist("convmixer-mnist-int8.cmx"));
    let classify = |cx: &mut Ctx, input: &str, name: &str, bytes: Option<&[u8]>, expect| {
        let p = match bytes {
            Some(b) => cx.write(name, b),
            None => name.to_string(),
        };
        cx.case(
            "image",
            input,
            vec!["classify".into(), blob.clone(), p],
            expect,
        );
    };
    let png = |img: image::DynamicImage| {
        let mut v = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
            .expect("png");
        v
    };
    let small = png(image::GrayImage::new(27, 28).into());
    classify(
        cx,
        "27×28 image for a 28×28 model",
        "small.png",
        Some(&small),
        "$T/small.png: image is 28x27 with 1 channel(s), the model expects 28x28 with 1",
    );
    let big = png(image::GrayImage::new(56, 56).into());
    classify(
        cx,
        "56×56 image for a 28×28 model",
        "big.png",
        Some(&big),
        "$T/big.png: image is 56x56 with 1 channel(s), the model expects 28x28 with 1",
    );
    let rgb = png(image::RgbImage::new(28, 28).into());
    classify(
        cx,
        "RGB image for a gray model",
        "rgb.png",
        Some(&rgb),
        "$T/rgb.png: image is 28x28 with 3 channel(s), the model expects 28x28 with 1",
    );
    classify(
        cx,
        "not an image (text named .png)",
        "text.png",
        Some(b"hello"),
        "$T/text.png: cannot decode image: The image format could not be determined",
    );
    classify(
        cx,
        "missing image file",
        "/nonexistent/digit.png",
        None,
        "/nonexistent/digit.png: cannot read: No such file or directory (os error 2)",
    );
}

// ---------------------------------------------------------------------------------------
// ONNX

fn node<'a>(m: &'a mut pb::ModelProto, name: &str) -> &'a mut pb::NodeProto {
    graph(m)
        .node
        .iter_mut()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("node {name}"))
}

fn attr<'a>(n: &'a mut pb::NodeProto, name: &str) -> &'a mut pb::AttributeProto {
    n.attribute
        .iter_mut()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("attribute {name}"))
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn op(op: &str, name: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![format!("{name}_out")],
        attribute: attrs,
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A small ResNet (3×3 stem with padding, a basic residual block, global pool, linear) on
/// the MNIST model's input, as `torch.onnx.export` writes one.
fn resnet() -> pb::ModelProto {
    let mut m = mnist_proto();
    let g = graph(&mut m);
    let c = 8usize;
    let w3 = |name: &str, cin: usize| {
        f32_tensor(
            name,
            &[c as i64, cin as i64, 3, 3],
            &vec![0.01; c * cin * 9],
        )
    };
    let bn = |p: &str| {
        [
            f32_tensor(&format!("{p}.weight"), &[c as i64], &vec![1.0; c]),
            f32_tensor(&format!("{p}.bias"), &[c as i64], &vec![0.0; c]),
            f32_tensor(&format!("{p}.running_mean"), &[c as i64], &vec![0.0; c]),
            f32_tensor(&format!("{p}.running_var"), &[c as i64], &vec![1.0; c]),
        ]
    };
    let conv_attrs = || {
        vec![
            ints("kernel_shape", &[3, 3]),
            ints("pads", &[1, 1, 1, 1]),
            ints("strides", &[1, 1]),
        ]
    };
    let bn_in = |x: &str, p: &str| {
        vec![
            x.to_string(),
            format!("{p}.weight"),
            format!("{p}.bias"),
            format!("{p}.running_mean"),
            format!("{p}.running_var"),
        ]
    };
    let mut nodes = vec![
        op(
            "Conv",
            "/conv1/Conv",
            &["input", "conv1.weight"],
            conv_attrs(),
        ),
        op("BatchNormalization", "/bn1/BN", &[], vec![]),
        op("Relu", "/relu/Relu", &["/bn1/BN_out"], vec![]),
        op(
            "Conv",
            "/layer1/conv1/Conv",
            &["/relu/Relu_out", "layer1.conv1.weight"],
            conv_attrs(),
        ),
        op("BatchNormalization", "/layer1/bn1/BN", &[], vec![]),
        op(
            "Add",
            "/layer1/Add",
            &["/layer1/bn1/BN_out", "/relu/Relu_out"],
            vec![],
        ),
        op("Relu", "/layer1/Relu", &["/layer1/Add_out"], vec![]),
        op(
            "GlobalAveragePool",
            "/avgpool/GlobalAveragePool",
            &["/layer1/Relu_out"],
            vec![],
        ),
        op(
            "Flatten",
            "/Flatten",
            &["/avgpool/GlobalAveragePool_out"],
            vec![],
        ),
        op(
            "Gemm",
            "/fc/Gemm",
            &["/Flatten_out", "fc.weight", "fc.bias"],
            vec![],
        ),
    ];
    nodes[1].input = bn_in("/conv1/Conv_out", "bn1");
    nodes[4].input = bn_in("/layer1/conv1/Conv_out", "layer1.bn1");
    let out = g.output[0].name.clone();
    nodes.last_mut().expect("gemm").output = vec![out];
    g.node = nodes;
    g.initializer = vec![w3("conv1.weight", 1), w3("layer1.conv1.weight", c)];
    g.initializer.extend(bn("bn1"));
    g.initializer.extend(bn("layer1.bn1"));
    g.initializer
        .push(f32_tensor("fc.weight", &[10, c as i64], &vec![0.1; 10 * c]));
    g.initializer.push(f32_tensor("fc.bias", &[10], &[0.0; 10]));
    m
}

fn onnx_cases(cx: &mut Ctx) {
    let base = mnist_proto();
    let bytes = base.encode_to_vec();
    cx.onnx_bytes(
        "empty file",
        "empty.onnx",
        &[],
        "$T/empty.onnx: empty file (not an ONNX model)",
    );
    cx.onnx_bytes(
        "not protobuf (text)",
        "text.onnx",
        b"this is not an ONNX file\n",
        "$T/text.onnx: not a valid ONNX protobuf (failed to decode Protobuf message: ModelProto.metadata_props: invalid wire type: EndGroup (expected LengthDelimited))",
    );
    cx.onnx_bytes(
        "truncated to half",
        "half.onnx",
        &bytes[..bytes.len() / 2],
        "$T/half.onnx: not a valid ONNX protobuf (failed to decode Protobuf message: ModelProto.graph: buffer underflow)",
    );
    let blob = int8_blob();
    cx.onnx_bytes(
        "a model blob given as the ONNX",
        "blob.onnx",
        &blob,
        "$T/blob.onnx: not a valid ONNX protobuf (failed to decode Protobuf message: ModelProto.opset_import: invalid wire type: StartGroup (expected LengthDelimited))",
    );
    cx.onnx(
        "a ResNet (3×3 stem, basic block)",
        "resnet.onnx",
        &resnet(),
        "$T/resnet.onnx: /conv1/Conv: the patch embedding must be a square unpadded Conv over 1 channels (found weights [8, 1, 3, 3], pads [1, 1, 1, 1])",
    );

    let mut m = base.clone();
    node(&mut m, "/3/3.2/Erf").op_type = "Sigmoid".into();
    cx.onnx(
        "unsupported op: Sigmoid in a GELU",
        "sigmoid.onnx",
        &m,
        "$T/sigmoid.onnx: node '/3/3.2/Erf' (Sigmoid): unsupported op in the activation after '/3/3.1/Conv_output_0' (ConvMixer takes Relu, Gelu or the Erf form of GELU)",
    );
    let mut m = base.clone();
    node(&mut m, "/3/3.2/Erf").op_type = "Tanh".into();
    cx.onnx(
        "an activation that is not GELU (tanh for erf)",
        "tanh.onnx",
        &m,
        "$T/tanh.onnx: node '/3/3.2/Div' (Div): the element-wise subgraph after '/3/3.1/Conv_output_0' is not GELU (neither the erf form nor the tanh approximation)",
    );
    let mut m = base.clone();
    let gemm = graph(&mut m)
        .node
        .iter_mut()
        .find(|n| n.op_type == "Gemm")
        .expect("gemm");
    gemm.op_type = "MatMulInteger".into();
    cx.onnx(
        "unsupported op: MatMulInteger head",
        "matmulint.onnx",
        &m,
        "$T/matmulint.onnx: node '/9/Gemm' (MatMulInteger): expected the classifier (Gemm or MatMul)",
    );
    let mut m = base.clone();
    let gap = graph(&mut m)
        .node
        .iter_mut()
        .find(|n| n.op_type == "GlobalAveragePool")
        .expect("pool");
    gap.op_type = "GlobalMaxPool".into();
    cx.onnx(
        "a max pool for the average pool",
        "maxpool.onnx",
        &m,
        "$T/maxpool.onnx: node '/7/GlobalAveragePool' (GlobalMaxPool): expected GlobalAveragePool or ReduceMean after the last block",
    );
    let mut m = base.clone();
    attr(node(&mut m, "/3/3.0/fn/fn.0/Conv"), "group").i = 2;
    cx.onnx(
        "grouped conv, neither depthwise nor dense",
        "group.onnx",
        &m,
        "$T/group.onnx: node '/3/3.0/fn/fn.0/Conv' (Conv): group 2 (expected 1 or the channel count)",
    );
    let mut m = base.clone();
    attr(node(&mut m, "/3/3.0/fn/fn.0/Conv"), "dilations").ints = vec![2, 2];
    cx.onnx(
        "dilated depthwise conv",
        "dilated.onnx",
        &m,
        "$T/dilated.onnx: node '/3/3.0/fn/fn.0/Conv' (Conv): dilated convolutions are not part of ConvMixer",
    );
    let mut m = base.clone();
    edit_f32(&mut m, "3.1.weight", |v| v[5] = f32::NAN);
    cx.onnx(
        "NaN weight",
        "nan.onnx",
        &m,
        "$T/nan.onnx: /3/3.1/Conv: weight element 5 is NaN (expected finite values)",
    );
    let mut m = base.clone();
    edit_f32(&mut m, "0.bias", |v| v[3] = f32::INFINITY);
    cx.onnx(
        "+Inf bias",
        "inf.onnx",
        &m,
        "$T/inf.onnx: /0/Conv: bias element 3 is inf (expected finite values)",
    );
    let mut m = base.clone();
    edit_f32(&mut m, "3.0.fn.2.running_var", |v| v[7] = -0.5);
    cx.onnx(
        "BatchNorm with a negative variance",
        "negvar.onnx",
        &m,
        "$T/negvar.onnx: node '/3/3.0/fn/fn.2/BatchNormalization' (BatchNormalization): running variance of channel 7 is -0.5 (negative)",
    );
    let mut m = base.clone();
    edit_f32(&mut m, "3.3.running_var", |v| v[4] = 0.0);
    attr(node(&mut m, "/3/3.3/BatchNormalization"), "epsilon").f = 0.0;
    cx.onnx(
        "BatchNorm with a zero-variance channel and epsilon 0",
        "zerovar.onnx",
        &m,
        "$T/zerovar.onnx: node '/3/3.3/BatchNormalization' (BatchNormalization): channel 4 has running variance 0 and epsilon 0 (division by zero)",
    );
    let mut m = base.clone();
    edit_f32(&mut m, "2.weight", |v| v[0] = 1e38);
    edit_f32(&mut m, "2.running_var", |v| v[0] = 1e-6);
    cx.onnx(
        "BatchNorm scale γ/√(var+ε) past f32 (γ = 1e38)",
        "bn-overflow.onnx",
        &m,
        "$T/bn-overflow.onnx: embed: folding its BatchNorms gives a non-finite parameter (a scale γ/√(var + ε) times the weights overflows f32)",
    );
    let mut m = base.clone();
    attr(node(&mut m, "/2/BatchNormalization"), "training_mode").i = 1;
    cx.onnx(
        "BatchNorm in training mode",
        "training.onnx",
        &m,
        "$T/training.onnx: node '/2/BatchNormalization' (BatchNormalization): BatchNormalization in training mode (export the model in eval mode)",
    );
    let m = mnist_with_overflowing_bias();
    let p = cx.write("overflow.onnx", &m.encode_to_vec());
    let args = vec![
        "quantize".into(),
        p,
        "--calib".into(),
        s(&mnist("calib")),
        "-o".into(),
        cx.out(),
    ];
    cx.case(
        "onnx",
        "int8 accumulator could overflow (bias 10^9× the weights)",
        args,
        "$T/overflow.onnx: block 0 pointwise channel 0: the int32 accumulator could overflow: |bias| 1.146e13 + 128·Σ|w| 185984 ≥ 2^31 (the bias is huge next to the channel's weights; quantise this model with --precision fp16)",
    );
    let mut m = base.clone();
    set_input_hw(&mut m, 1, 1);
    cx.onnx(
        "patch kernel (2×2) larger than the 1×1 input",
        "tiny-input.onnx",
        &m,
        "$T/tiny-input.onnx: input 1x1 is smaller than the patch size 2",
    );
    let mut m = base.clone();
    let extra = {
        let mut i = graph(&mut m).input[0].clone();
        i.name = "second".into();
        i
    };
    graph(&mut m).input.push(extra);
    cx.onnx(
        "two graph inputs",
        "two-inputs.onnx",
        &m,
        "$T/two-inputs.onnx: the graph has 2 inputs (expected one image input)",
    );
    cx.case(
        "onnx",
        "missing ONNX file",
        vec![
            "quantize".into(),
            "/nonexistent/model.onnx".into(),
            "--precision".into(),
            "fp16".into(),
            "-o".into(),
            cx.out(),
        ],
        "/nonexistent/model.onnx: cannot read: No such file or directory (os error 2)",
    );
}

fn calib_cases(cx: &mut Ctx) {
    let mk = |cx: &Ctx, name: &str| {
        let d = cx.path(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    };
    let digit = std::fs::read(mnist("heldout/3/0826.png")).expect("digit");
    let d = mk(cx, "calib-empty");
    cx.calib(
        "empty folder",
        &d,
        "$T/calib-empty: no images found (expected .png/.jpg/.bmp/.pnm files or an IDX file)",
    );
    let d = mk(cx, "calib-no-images");
    std::fs::write(d.join("notes.txt"), b"labels").expect("write");
    cx.calib(
        "folder with no image files (a .txt)",
        &d,
        "$T/calib-no-images: no images found (expected .png/.jpg/.bmp/.pnm files or an IDX file)",
    );
    let d = mk(cx, "calib-unreadable");
    std::fs::write(d.join("a.png"), &digit).expect("write");
    std::fs::write(d.join("b.png"), &digit[..digit.len() / 2]).expect("write");
    cx.calib(
        "a truncated PNG among good ones",
        &d,
        "$T/calib-unreadable/b.png: cannot decode image: unexpected end of file",
    );
    let d = mk(cx, "calib-dangling");
    std::fs::write(d.join("a.png"), &digit).expect("write");
    std::os::unix::fs::symlink("/nonexistent/b.png", d.join("b.png")).expect("symlink");
    cx.calib(
        "an unreadable file (a dangling link) among good ones",
        &d,
        "$T/calib-dangling/b.png: cannot read: No such file or directory (os error 2)",
    );
    let d = mk(cx, "calib-sizes");
    std::fs::write(d.join("a.png"), &digit).expect("write");
    image::GrayImage::new(32, 32)
        .save(d.join("b.png"))
        .expect("png");
    cx.calib(
        "mixed sizes (28×28 and 32×32)",
        &d,
        "$T/calib-sizes/b.png: image is 32x32 with 1 channel(s), the model expects 28x28 with 1",
    );
    let d = mk(cx, "calib-channels");
    std::fs::write(d.join("a.png"), &digit).expect("write");
    image::RgbImage::new(28, 28)
        .save(d.join("b.png"))
        .expect("png");
    cx.calib(
        "mixed channel counts (gray and RGB)",
        &d,
        "$T/calib-channels/b.png: image is 28x28 with 3 channel(s), the model expects 28x28 with 1",
    );
    cx.calib(
        "missing folder",
        Path::new("/nonexistent/calib"),
        "/nonexistent/calib: cannot read folder: No such file or directory (os error 2)",
    );
    let idx = std::fs::read(mnist("heldout-images.idx3-ubyte")).expect("idx");
    let p = cx.path("calib-trunc.idx3-ubyte");
    std::fs::write(&p, &idx[..1000]).expect("write");
    cx.calib(
        "truncated IDX file",
        &p,
        "$T/calib-trunc.idx3-ubyte: IDX file is truncated (1000 bytes for 1996 images)",
    );
    let mut wrong = idx[..16 + 3 * 32 * 32].to_vec();
    wrong[4..16].copy_from_slice(&[0, 0, 0, 3, 0, 0, 0, 32, 0, 0, 0, 32]);
    let p = cx.path("calib-32.idx3-ubyte");
    std::fs::write(&p, &wrong).expect("write");
    cx.calib(
        "IDX file of 32×32 images",
        &p,
        "$T/calib-32.idx3-ubyte: IDX images are 32x32x1, the model expects 28x28x1",
    );
}

#[test]
fn every_malformed_input_gives_its_exact_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("in");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    let mut cx = Ctx {
        dir,
        out,
        cases: Vec::new(),
    };
    blob_cases(&mut cx);
    image_cases(&mut cx);
    onnx_cases(&mut cx);
    external::cases(&mut cx);
    calib_cases(&mut cx);

    let t = s(&cx.dir);
    let ex = s(&mnist(""));
    let ex = ex.trim_end_matches('/');
    let mut failures = Vec::new();
    println!("| # | kind | input | error |\n| --- | --- | --- | --- |");
    for (i, c) in cx.cases.iter().enumerate() {
        let o = Command::new(env!("CARGO_BIN_EXE_host-tools"))
            .args(&c.args)
            .output()
            .expect("run host-tools");
        let err = String::from_utf8_lossy(&o.stderr)
            .trim_end()
            .replace(&t, "$T")
            .replace(ex, "$EX");
        let got = err.strip_prefix("error: ").unwrap_or(&err);
        println!("| {} | {} | {} | `{got}` |", i + 1, c.kind, c.input);
        let left: Vec<_> = std::fs::read_dir(&cx.out)
            .expect("out dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        if o.status.code() != Some(1) || err.contains('\n') || got != c.expect || !left.is_empty() {
            failures.push(format!(
                "{} ({}): exit {:?}, files left {left:?}\n   got:    {err}\n   expect: error: {}",
                c.input,
                c.kind,
                o.status.code(),
                c.expect
            ));
        }
    }
    assert!(cx.cases.len() >= 30, "{} cases", cx.cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cx.cases.len(),
        failures.join("\n")
    );
}
