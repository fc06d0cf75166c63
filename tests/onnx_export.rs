//! The ONNX writer (`onnx_export`): random ConvMixers written as torch-shaped ONNX read back
//! exactly by our importer, run by tract to the same logits as our fp32 path, keep sane
//! activations through 32 blocks, and the benchmark shapes import and quantise.

use std::sync::atomic::{AtomicUsize, Ordering};

use convmixer_edge::{Activation, Model, Precision};
use convmixer_edge_tests::*;
use convmixer_quantize::onnx::{self, Imported};
use convmixer_quantize::onnx_export::{write_onnx, GeluForm};
use convmixer_quantize::random::{random_convmixer, RandomConfig};
use convmixer_quantize::{reference::TractModel, Options};
use prost::Message;
use tract_onnx::pb;

const TOL: f32 = 1e-4;
const FORMS: [GeluForm; 2] = [GeluForm::Erf, GeluForm::GeluOp];

#[allow(clippy::too_many_arguments)]
fn cfg(
    dim: usize,
    depth: usize,
    kernel: usize,
    patch: usize,
    in_c: usize,
    (in_h, in_w): (usize, usize),
    classes: usize,
    act: Activation,
    seed: u64,
) -> RandomConfig {
    RandomConfig {
        dim,
        depth,
        kernel,
        patch,
        in_c,
        in_h,
        in_w,
        classes,
        act,
        seed,
    }
}

/// Small configs covering kernels 3/4/5/7, patches 1–4, 1 and 3 channels, every
/// activation, non-square inputs and inputs the patch does not divide.
fn small_configs() -> Vec<RandomConfig> {
    use Activation::*;
    vec![
        cfg(8, 1, 3, 1, 1, (8, 8), 3, Relu, 1),
        cfg(16, 2, 4, 2, 3, (16, 16), 5, Gelu, 2),
        cfg(24, 3, 5, 3, 1, (18, 18), 7, GeluTanh, 3),
        cfg(32, 2, 7, 4, 3, (32, 32), 10, Gelu, 4),
        cfg(12, 1, 4, 2, 3, (12, 10), 4, GeluTanh, 5),
        cfg(20, 3, 3, 4, 1, (14, 15), 2, Relu, 6),
        cfg(8, 2, 7, 1, 3, (9, 7), 6, Gelu, 7),
    ]
}

/// Deterministic random bytes (SplitMix64), independent of the crate's generator.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 56) as u8
        })
        .collect()
}

fn images(m: &Imported, seed: u64, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| random_bytes(seed * 1000 + i as u64, m.in_c * m.in_h * m.in_w))
        .collect()
}

/// Loads `bytes` in tract through a uniquely named temporary file (removed again).
fn tract(m: &Imported, bytes: &[u8]) -> TractModel {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "convmixer-onnx-export-{}-{}.onnx",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("write temp onnx");
    let t = TractModel::load(&path, m.in_c, m.in_h, m.in_w);
    let _ = std::fs::remove_file(&path);
    t.unwrap_or_else(|e| panic!("tract: {e:#}"))
}

fn fp32_blob(m: &Imported) -> Vec<u8> {
    convmixer_quantize::quantize(m, Precision::F32, &[], &Options::default(), &|| {})
        .expect("fp32 blob")
}

#[test]
fn round_trip_through_the_importer_is_exact() {
    for c in small_configs() {
        let m = random_convmixer(&c).expect("random model");
        // The generator's promises.
        assert_eq!(
            (m.dim(), m.blocks.len(), m.kernel(), m.patch(), m.classes()),
            (c.dim, c.depth, c.kernel, c.patch, c.classes)
        );
        assert_eq!((m.in_c, m.in_h, m.in_w), (c.in_c, c.in_h, c.in_w));
        let (k, p) = (c.kernel, c.patch);
        assert_eq!(m.embed.stride, p);
        assert_eq!(m.embed.pads, [0; 4]);
        for u in std::iter::once(&m.embed).chain(m.blocks.iter().flat_map(|(d, p)| [d, p])) {
            assert_eq!(u.act, c.act);
            assert!(u.bn_pre.is_none(), "{c:?}: bn_pre");
            let bn = u.bn_post.as_ref().expect("bn_post");
            assert!(bn.gamma.iter().all(|g| (0.5..=2.0).contains(&g.abs())));
            assert!(bn.var.iter().all(|v| (0.2..=3.0).contains(v)));
            assert!(bn.mean.iter().all(|v| (-0.5..=0.5).contains(v)));
            assert!(bn.mean.iter().any(|v| *v != 0.0) && bn.beta.iter().any(|v| *v != 0.0));
            assert_eq!(bn.eps, 1e-5);
        }
        let gammas: Vec<f32> = std::iter::once(&m.embed)
            .chain(m.blocks.iter().flat_map(|(d, p)| [d, p]))
            .flat_map(|u| u.bn_post.as_ref().map_or(vec![], |b| b.gamma.clone()))
            .collect();
        assert!(gammas.iter().any(|g| *g < 0.0) && gammas.iter().any(|g| *g > 0.0));
        for (dw, _) in &m.blocks {
            assert_eq!(dw.pads, [(k - 1) / 2, (k - 1) / 2, k / 2, k / 2]);
        }
        for form in FORMS {
            let bytes = write_onnx(&m, form).expect("write");
            let back = onnx::import_bytes(&bytes)
                .unwrap_or_else(|e| panic!("{c:?} {form:?}: import: {e:#}"));
            let want = Imported {
                opset: form.opset(),
                ..m.clone()
            };
            assert_eq!(back, want, "{c:?} {form:?}");
            // Writing is deterministic.
            assert_eq!(write_onnx(&m, form).expect("write"), bytes);
        }
    }
}

#[test]
fn generator_is_deterministic_and_seeded() {
    let c = small_configs()[1].clone();
    let a = random_convmixer(&c).expect("a");
    assert_eq!(random_convmixer(&c).expect("a again"), a);
    let b = random_convmixer(&RandomConfig { seed: 99, ..c }).expect("b");
    assert_ne!(a.embed.w, b.embed.w);
    assert_ne!(a.head_w, b.head_w);
}

fn attr<'n>(n: &'n pb::NodeProto, name: &str) -> &'n pb::AttributeProto {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("{} ({}) has no {name}", n.name, n.op_type))
}

fn dims(v: &pb::ValueInfoProto) -> Vec<String> {
    let Some(pb::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.clone())
    else {
        panic!("{} is not a tensor", v.name)
    };
    assert_eq!(t.elem_type, pb::tensor_proto::DataType::Float as i32);
    t.shape
        .expect("shape")
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) => v.to_string(),
            Some(pb::tensor_shape_proto::dimension::Value::DimParam(p)) => p.clone(),
            None => "?".into(),
        })
        .collect()
}

#[test]
fn written_graph_is_shaped_like_torch_export() {
    for act in [Activation::Gelu, Activation::GeluTanh, Activation::Relu] {
        let c = cfg(16, 2, 4, 2, 3, (16, 12), 5, act, 11);
        let m = random_convmixer(&c).expect("model");
        for form in FORMS {
            let bytes = write_onnx(&m, form).expect("write");
            let p = pb::ModelProto::decode(bytes.as_slice()).expect("protobuf");
            assert_eq!(p.ir_version, form.ir_version());
            assert_eq!(
                p.opset_import
                    .iter()
                    .map(|o| (o.domain.as_str(), o.version))
                    .collect::<Vec<_>>(),
                [("", form.opset())]
            );
            let g = p.graph.expect("graph");
            assert_eq!(g.input.len(), 1);
            assert_eq!(g.input[0].name, "input");
            assert_eq!(dims(&g.input[0]), ["batch", "3", "16", "12"]);
            assert_eq!(g.output.len(), 1);
            assert_eq!(g.output[0].name, "logits");
            assert_eq!(dims(&g.output[0]), ["batch", "5"]);
            for t in &g.initializer {
                assert_eq!(t.data_type, pb::tensor_proto::DataType::Float as i32);
                let n: i64 = t.dims.iter().product();
                assert_eq!(t.raw_data.len() as i64, 4 * n, "{}", t.name);
                assert!(t.float_data.is_empty());
            }
            let names: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
            for n in [
                "0.weight",
                "2.running_var",
                "3.0.fn.0.weight",
                "3.0.fn.2.running_mean",
                "3.1.weight",
                "4.3.bias",
                "7.weight",
                "7.bias",
            ] {
                assert!(names.contains(&n), "{form:?}: initializer {n} missing");
            }
            let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
            let count = |op: &str| ops.iter().filter(|o| **o == op).count();
            assert_eq!(count("Conv"), 5);
            assert_eq!(count("BatchNormalization"), 5);
            let residual = g
                .node
                .iter()
                .filter(|n| n.op_type == "Add" && n.name.ends_with(".0/Add"))
                .count();
            assert_eq!(residual, 2);
            let (gelu_ops, erf_ops, tanh_ops) = (count("Gelu"), count("Erf"), count("Tanh"));
            match (act, form) {
                (Activation::Relu, _) => assert_eq!((count("Relu"), gelu_ops, erf_ops), (5, 0, 0)),
                (_, GeluForm::GeluOp) => {
                    assert_eq!((gelu_ops, erf_ops, tanh_ops), (5, 0, 0));
                    let want = if act == Activation::Gelu {
                        "none"
                    } else {
                        "tanh"
                    };
                    for n in g.node.iter().filter(|n| n.op_type == "Gelu") {
                        assert_eq!(attr(n, "approximate").s, want.as_bytes());
                    }
                }
                (Activation::Gelu, GeluForm::Erf) => {
                    assert_eq!((gelu_ops, erf_ops, tanh_ops), (0, 5, 0));
                    assert_eq!(count("Div"), 5);
                    assert_eq!(count("Constant"), 15);
                }
                (_, GeluForm::Erf) => assert_eq!((gelu_ops, erf_ops, tanh_ops), (0, 0, 5)),
            }
            // The patch embedding, the first depthwise and pointwise Convs.
            let convs: Vec<&pb::NodeProto> =
                g.node.iter().filter(|n| n.op_type == "Conv").collect();
            for (n, group, k, pads, s) in [
                (convs[0], 1, 2, [0, 0, 0, 0], 2),
                (convs[1], 16, 4, [1, 1, 2, 2], 1),
                (convs[2], 1, 1, [0, 0, 0, 0], 1),
            ] {
                assert_eq!(n.input[0] == "input", std::ptr::eq(n, convs[0]));
                assert_eq!(attr(n, "group").i, group);
                assert_eq!(attr(n, "kernel_shape").ints, [k, k]);
                assert_eq!(attr(n, "pads").ints, pads);
                assert_eq!(attr(n, "strides").ints, [s, s]);
                assert_eq!(attr(n, "dilations").ints, [1, 1]);
            }
            for n in g.node.iter().filter(|n| n.op_type == "BatchNormalization") {
                assert_eq!(attr(n, "epsilon").f, 1e-5);
                assert_eq!(n.input.len(), 5);
            }
            // The residual Adds take the branch and the block input; the head is the tail.
            let tail: Vec<&str> = ops[ops.len() - 3..].to_vec();
            assert_eq!(tail, ["GlobalAveragePool", "Flatten", "Gemm"]);
            let flatten = &g.node[g.node.len() - 2];
            assert_eq!(attr(flatten, "axis").i, 1);
            let gemm = &g.node[g.node.len() - 1];
            assert_eq!(attr(gemm, "transB").i, 1);
            assert_eq!(gemm.output, ["logits"]);
            // Every tensor is produced once, and every node input exists before its use.
            let mut known: std::collections::HashSet<&str> =
                names.iter().copied().chain(["input"]).collect();
            for n in &g.node {
                for i in &n.input {
                    assert!(
                        known.contains(i.as_str()),
                        "{}: input {i} not yet defined",
                        n.name
                    );
                }
                for o in &n.output {
                    assert!(known.insert(o.as_str()), "{o} produced twice");
                }
            }
            let node_names: std::collections::HashSet<&str> =
                g.node.iter().map(|n| n.name.as_str()).collect();
            assert_eq!(node_names.len(), g.node.len(), "node names are unique");
        }
    }
}

#[test]
fn tract_runs_the_written_onnx_like_our_fp32_path() {
    let cases: Vec<(RandomConfig, GeluForm)> = small_configs()
        .into_iter()
        .flat_map(|c| FORMS.map(|f| (c.clone(), f)))
        .collect();
    let worst = par_map(&cases, |(c, form)| {
        let m = random_convmixer(c).expect("model");
        let bytes = write_onnx(&m, *form).expect("write");
        let t = tract(&m, &bytes);
        let blob = fp32_blob(&m);
        let mut worst = 0f32;
        for px in images(&m, c.seed, 2) {
            let want = t.run_pixels(&px, &[], &[]).expect("tract run");
            let got = run_blob(&blob, &px);
            let e = max_abs(&got, &want);
            assert!(
                e <= TOL,
                "{c:?} {form:?}: fp32 runtime vs tract {e} > {TOL}"
            );
            assert!(
                want.iter().any(|v| v.abs() > 0.05),
                "{c:?}: degenerate logits {want:?}"
            );
            worst = worst.max(e);
        }
        worst
    });
    eprintln!(
        "fp32 runtime vs tract on written ONNX: worst max-abs {:e} over {} models",
        worst.iter().fold(0f32, |a, &b| a.max(b)),
        worst.len()
    );
}

/// The writer is not limited to the generator's layout: BatchNorms before the activation
/// (`Conv → BN → act`), none at all, and per-unit mixes are written, read back exactly and
/// run by tract like our fp32 path.
#[test]
fn batchnorm_placements_round_trip_and_run() {
    let cases: Vec<(RandomConfig, GeluForm)> = vec![
        (small_configs()[2].clone(), GeluForm::Erf),
        (small_configs()[3].clone(), GeluForm::GeluOp),
        (small_configs()[5].clone(), GeluForm::Erf),
    ];
    par_map(&cases, |(c, form)| {
        let mut m = random_convmixer(c).expect("model");
        let units =
            std::iter::once(&mut m.embed).chain(m.blocks.iter_mut().flat_map(|(d, p)| [d, p]));
        for (i, u) in units.enumerate() {
            match i % 3 {
                0 => u.bn_pre = u.bn_post.take(),
                1 => u.bn_post = None,
                _ => u.bn_pre = u.bn_post.clone(),
            }
        }
        let bytes = write_onnx(&m, *form).expect("write");
        let back = onnx::import_bytes(&bytes).unwrap_or_else(|e| panic!("{c:?}: {e:#}"));
        assert_eq!(
            back,
            Imported {
                opset: form.opset(),
                ..m.clone()
            },
            "{c:?}"
        );
        let t = tract(&m, &bytes);
        let blob = fp32_blob(&m);
        for px in images(&m, 40 + c.seed, 2) {
            let want = t.run_pixels(&px, &[], &[]).expect("tract");
            let e = max_abs(&run_blob(&blob, &px), &want);
            // Moving the BatchNorms breaks the generator's scaling: bound relative to the
            // logits' size.
            let peak = want.iter().fold(1f32, |a, v| a.max(v.abs()));
            eprintln!("{c:?} {form:?}: max |logit| {peak}, fp32 runtime vs tract {e:e}");
            assert!(
                e <= TOL * peak,
                "{c:?} {form:?}: fp32 runtime vs tract {e} (max |logit| {peak})"
            );
        }
    });
}

/// Conv names the importer returns are kept; missing or repeated ones are replaced by
/// unique names, and the model still reads back.
#[test]
fn conv_names_are_kept_or_made_unique() {
    let mut m = random_convmixer(&small_configs()[1]).expect("model");
    m.embed.name = "stem".into();
    m.blocks[0].0.name = String::new();
    m.blocks[1].0.name = "mixer".into();
    m.blocks[1].1.name = "mixer".into();
    let back = onnx::import_bytes(&write_onnx(&m, GeluForm::Erf).expect("write")).expect("import");
    assert_eq!(back.embed.name, "stem");
    assert_eq!(back.blocks[1].0.name, "mixer");
    let names: std::collections::HashSet<&str> = std::iter::once(&back.embed)
        .chain(back.blocks.iter().flat_map(|(d, p)| [d, p]))
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(!names.contains(""));
    // Everything but the names is unchanged.
    let mut renamed = back.clone();
    renamed.blocks[0].0.name = String::new();
    renamed.blocks[1].1.name = "mixer".into();
    renamed.opset = m.opset;
    assert_eq!(renamed, m);
}

/// RMS of a logit vector set.
fn rms(v: &[f32]) -> f32 {
    (v.iter().map(|x| x * x).sum::<f32>() / v.len().max(1) as f32).sqrt()
}

/// Checks that logits of several images are finite, of order 1–10, and differ between
/// images (activations neither exploded nor vanished); returns their RMS.
fn assert_sane(what: &str, logits: &[Vec<f32>]) -> f32 {
    let all: Vec<f32> = logits.iter().flatten().copied().collect();
    assert!(all.iter().all(|v| v.is_finite()), "{what}: {all:?}");
    let r = rms(&all);
    let peak = all.iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!((0.3..=30.0).contains(&r), "{what}: logit rms {r}");
    assert!(peak <= 100.0, "{what}: max |logit| {peak}");
    let spread = (1..logits.len())
        .map(|i| max_abs(&logits[0], &logits[i]))
        .fold(0f32, f32::max);
    assert!(
        spread > 0.1 * r,
        "{what}: logits hardly depend on the image ({spread} vs rms {r})"
    );
    eprintln!("{what}: logit rms {r:.3}, max |logit| {peak:.3}, largest change between images {spread:.3}");
    r
}

/// 32 blocks with random BatchNorms: logits stay finite and of order 1–10, and still depend
/// on the image; on images other than the generator's probes.
#[test]
fn deep_random_models_keep_sane_logits() {
    let acts = [Activation::Gelu, Activation::Relu, Activation::GeluTanh];
    par_map(&acts, |&act| {
        let c = cfg(48, 32, 7, 2, 3, (32, 32), 10, act, 21);
        let m = random_convmixer(&c).expect("model");
        let blob = fp32_blob(&m);
        let ims = images(&m, 5, 4);
        let logits: Vec<Vec<f32>> = ims.iter().map(|px| run_blob(&blob, px)).collect();
        assert_sane(&format!("{act:?} 48/32"), &logits);
        // tract agrees on the written file too (a 65-layer fp32 chain: a looser bound).
        let t = tract(&m, &write_onnx(&m, GeluForm::Erf).expect("write"));
        let e = max_abs(&t.run_pixels(&ims[0], &[], &[]).expect("tract"), &logits[0]);
        eprintln!("{act:?} 48/32: fp32 runtime vs tract {e:e}");
        assert!(e <= 1e-3, "{act:?}: deep model fp32 vs tract {e}");
    });
}

/// The benchmark's shapes: ConvMixer-256/8 (k5, p2, CIFAR-sized) and ConvMixer-768/32
/// (k7, p7, ReLU, 112×112, 1000 classes) are written, read back, run by tract with sane
/// logits, and the 256/8 one quantises to an int8 blob the runtime loads.
#[test]
fn benchmark_shapes_import_and_quantise() {
    let small = cfg(256, 8, 5, 2, 3, (32, 32), 10, Activation::Gelu, 256);
    let big = cfg(768, 32, 7, 7, 3, (112, 112), 1000, Activation::Relu, 768);
    let jobs = [(small, GeluForm::Erf), (big, GeluForm::GeluOp)];
    par_map(&jobs, |(c, form)| {
        let t0 = std::time::Instant::now();
        let m = random_convmixer(c).expect("model");
        let t_gen = t0.elapsed();
        let bytes = write_onnx(&m, *form).expect("write");
        let back = onnx::import_bytes(&bytes).unwrap_or_else(|e| panic!("{c:?}: {e:#}"));
        assert_eq!(
            (
                back.dim(),
                back.blocks.len(),
                back.kernel(),
                back.patch(),
                back.classes()
            ),
            (c.dim, c.depth, c.kernel, c.patch, c.classes)
        );
        assert!(
            back == Imported {
                opset: form.opset(),
                ..m.clone()
            },
            "{c:?}: round trip differs"
        );
        let what = format!("{}/{}", c.dim, c.depth);
        let t = tract(&m, &bytes);
        let ims = images(&m, 9, 3);
        let logits: Vec<Vec<f32>> = ims
            .iter()
            .map(|px| t.run_pixels(px, &[], &[]).expect("tract run"))
            .collect();
        assert_sane(&format!("{what} (tract)"), &logits);
        eprintln!(
            "{what}: generated in {t_gen:.2?}, {} ONNX bytes, all checks {:.2?}",
            bytes.len(),
            t0.elapsed()
        );
        if c.dim == 256 {
            let calib = images(&m, 3, 4);
            let blob = convmixer_quantize::quantize(
                &back,
                Precision::Int8,
                &calib,
                &Options::default(),
                &|| {},
            )
            .expect("int8 quantisation");
            let model = Model::from_bytes(&blob).expect("int8 blob loads");
            let h = model.header();
            assert_eq!(h.precision, Precision::Int8);
            assert_eq!(
                (h.dim, h.depth, h.kernel, h.patch, h.classes, h.in_c),
                (256, 8, 5, 2, 10, 3)
            );
            let q = run_blob(&blob, &ims[0]);
            assert!(q.iter().all(|v| v.is_finite()));
            eprintln!(
                "256/8: int8 vs tract fp32 max-abs {:.3} (fp32 logit rms {:.3})",
                max_abs(&q, &logits[0]),
                rms(&logits[0])
            );
        }
    });
}

#[test]
fn bad_models_and_configs_are_errors() {
    let base = random_convmixer(&small_configs()[1]).expect("model");
    type Edit = fn(&mut Imported);
    let edits: [(&str, Edit); 14] = [
        ("short conv weights", |m| {
            m.embed.w.pop();
        }),
        ("long bias", |m| m.blocks[0].0.b.push(0.0)),
        ("short BN", |m| {
            m.blocks[1].1.bn_post.as_mut().unwrap().var.pop();
        }),
        ("negative variance", |m| {
            m.embed.bn_post.as_mut().unwrap().var[0] = -1.0
        }),
        ("NaN weight", |m| m.blocks[0].1.w[3] = f32::NAN),
        ("infinite head", |m| m.head_w[0] = f32::INFINITY),
        ("mixed activations", |m| {
            m.blocks[1].0.act = Activation::Relu
        }),
        ("two channels", |m| m.in_c = 2),
        ("patch larger than input", |m| m.in_h = 1),
        ("padded embedding", |m| m.embed.pads = [1, 0, 0, 0]),
        ("not 'same' padding", |m| m.blocks[0].0.pads = [2, 2, 1, 1]),
        ("strided depthwise", |m| m.blocks[0].0.stride = 2),
        ("no classes", |m| {
            m.head_b.clear();
            m.head_w.clear();
        }),
        ("head size", |m| {
            m.head_b.pop();
        }),
    ];
    for form in FORMS {
        for (what, edit) in &edits {
            let mut m = base.clone();
            edit(&mut m);
            let e = write_onnx(&m, form).expect_err(what);
            let msg = format!("{e:#}");
            assert!(!msg.contains('\n') && !msg.is_empty(), "{what}: {msg}");
        }
        // Zero-sized shapes everywhere do not panic.
        let mut m = base.clone();
        m.embed.shape = [0; 4];
        m.embed.w.clear();
        m.blocks.clear();
        assert!(write_onnx(&m, form).is_err());
        let mut m = base.clone();
        m.blocks[0].0.shape = [16, 1, 0, 0];
        m.blocks[0].0.w.clear();
        assert!(write_onnx(&m, form).is_err());
        let mut m = base.clone();
        m.embed.shape = [usize::MAX, 3, 2, 2];
        assert!(write_onnx(&m, form).is_err());
    }
    let ok = small_configs()[0].clone();
    for bad in [
        RandomConfig {
            in_c: 2,
            ..ok.clone()
        },
        RandomConfig {
            dim: 0,
            ..ok.clone()
        },
        RandomConfig {
            kernel: 0,
            ..ok.clone()
        },
        RandomConfig {
            patch: 0,
            ..ok.clone()
        },
        RandomConfig {
            classes: 0,
            ..ok.clone()
        },
        RandomConfig {
            patch: 9,
            ..ok.clone()
        },
        RandomConfig {
            dim: usize::MAX,
            ..ok.clone()
        },
        RandomConfig {
            in_h: 1 << 40,
            in_w: 1 << 40,
            patch: 1 << 40,
            ..ok.clone()
        },
        RandomConfig {
            dim: 1 << 20,
            depth: 1 << 20,
            ..ok.clone()
        },
    ] {
        let e = random_convmixer(&bad).expect_err("bad config");
        assert!(!format!("{e:#}").contains('\n'));
    }
    // Depth 0 is a valid (if odd) ConvMixer: written and read back.
    let m = random_convmixer(&RandomConfig { depth: 0, ..ok }).expect("depth 0");
    let back = onnx::import_bytes(&write_onnx(&m, GeluForm::Erf).expect("write")).expect("import");
    assert_eq!(back, m);
}
