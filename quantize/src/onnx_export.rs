//! ONNX export: [`Imported`] → ONNX bytes shaped like `torch.onnx.export` output (the
//! models `host-tools train` writes, and those of the tests and benchmarks, with
//! `random::random_convmixer` behind the `random` feature).
//!
//! The writer is the inverse of [`onnx::import_bytes`](crate::onnx::import_bytes): for
//! every model the importer can return, `import_bytes(&write_onnx(&m, form)?)` gives `m`
//! back, with `opset` set to [`GeluForm::opset`] (and Conv names made unique and
//! non-empty where they were not). The graph follows the PyTorch module
//! layout of the reference ConvMixer (`nn.Sequential` of the patch embedding, `depth`
//! blocks `Sequential(Residual(Sequential(conv, act, BN)), conv, act, BN)`, then pool,
//! flatten and linear), so tensors and initialisers carry the names PyTorch would give
//! them (`0.weight`, `3.0.fn.2.running_var`, `/3/3.1/Conv_output_0`, …):
//!
//! ```text
//! input [batch, C, H, W]
//!   → Conv(k=p, s=p) → [BatchNormalization] → act → [BatchNormalization]
//!   → depth × ( x + (Conv(group=dim, pads 'same') → [BN] → act → [BN]) → Conv 1×1 → [BN] → act → [BN] )
//!   → GlobalAveragePool → Flatten(axis=1) → Gemm(transB=1) → logits [batch, classes]
//! ```

use std::collections::HashSet;

use anyhow::{anyhow, bail, Result};
use convmixer_edge::Activation;
use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

use crate::onnx::{BatchNorm, ConvUnit, Imported, LABELS_KEY, MEAN_KEY, STD_KEY};

/// How GELU is spelled in the written graph (and, with it, the opset).
///
/// ReLU models are written as `Relu` either way; the form then only picks the opset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluForm {
    /// Element-wise ops as the TorchScript exporter writes them (opset 17, IR version 8):
    /// `Div(x, √2) → Erf → Add(1) → Mul(x, ·) → Mul(·, 0.5)` for GELU, and
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` as `Mul`/`Add`/`Tanh` nodes for
    /// the tanh approximation. Scalars are `Constant` nodes.
    Erf,
    /// The `Gelu` op as the dynamo exporter writes it (opset 20, IR version 9), with
    /// `approximate="none"` or `"tanh"`.
    GeluOp,
}

impl GeluForm {
    /// The default-domain opset the form is written with (17 or 20).
    ///
    /// ```
    /// use convmixer_quantize::onnx_export::GeluForm;
    /// assert_eq!(GeluForm::Erf.opset(), 17);
    /// assert_eq!(GeluForm::GeluOp.opset(), 20);
    /// ```
    pub fn opset(self) -> i64 {
        match self {
            GeluForm::Erf => 17,
            GeluForm::GeluOp => 20,
        }
    }

    /// The ONNX IR version written with the form (8 or 9).
    pub fn ir_version(self) -> i64 {
        match self {
            GeluForm::Erf => 8,
            GeluForm::GeluOp => 9,
        }
    }
}

/// Serialises `m` as an ONNX `ModelProto` shaped like `torch.onnx.export` output.
///
/// The graph has one input `input` of type float and shape `[batch, C, H, W]` (`batch` a
/// `dim_param`) and one output `logits` `[batch, classes]`; Conv nodes carry explicit
/// `dilations`, `group`, `kernel_shape`, `pads` and `strides`; BatchNormalization nodes
/// carry `epsilon` (and `momentum`) with scale, bias, mean and variance as initialisers;
/// the head is `GlobalAveragePool → Flatten(axis=1) → Gemm(transB=1)`. All weights are
/// float initialisers in little-endian `raw_data`. GELU is spelled as `gelu` says (which
/// also fixes the opset: [`GeluForm::opset`]). Conv node names are the units' `name`s
/// (unless empty or already taken, then the TorchScript-style `/0/Conv`, …), so the
/// importer returns them unchanged.
///
/// It accepts exactly what [`onnx::import_bytes`](crate::onnx::import_bytes) can return
/// and errors (one line) on anything else: inconsistent weight, bias or BatchNorm sizes,
/// input channels other than 1 or 3, a padded or overlapping patch embedding, a patch
/// larger than the input, a depthwise conv that is not stride 1 with PyTorch's `'same'`
/// padding, mixed activations or kernels, a head whose size is not `classes × dim`,
/// non-finite parameters or negative variances, and more weights than one protobuf can
/// hold (2 GiB).
///
/// ```
/// use convmixer_quantize::onnx;
/// use convmixer_quantize::onnx_export::{write_onnx, GeluForm};
/// use convmixer_quantize::random::{random_convmixer, RandomConfig};
/// use convmixer_quantize::Activation;
///
/// let cfg = RandomConfig {
///     dim: 8, depth: 1, kernel: 3, patch: 2, in_c: 1, in_h: 8, in_w: 8,
///     classes: 3, act: Activation::Gelu, seed: 1,
/// };
/// let mut m = random_convmixer(&cfg)?;
/// let bytes = write_onnx(&m, GeluForm::GeluOp)?; // e.g. std::fs::write("model.onnx", &bytes)
/// assert_eq!(onnx::import_bytes(&bytes)?.blocks, m.blocks);
///
/// m.head_b.pop(); // one bias short of the head's 3 × 8 weights
/// assert!(write_onnx(&m, GeluForm::GeluOp).is_err());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn write_onnx(m: &Imported, gelu: GeluForm) -> Result<Vec<u8>> {
    validate(m)?;
    let dim = m.dim();
    let mut g = Builder {
        form: gelu,
        nodes: Vec::new(),
        inits: Vec::new(),
        names: HashSet::new(),
    };
    let embed_scope = Scope {
        node: "/".to_string(),
        init: String::new(),
    };
    let (mut x, mut next) = g.unit(&m.embed, "input", &embed_scope, 0, 1)?;
    for (dw, pw) in &m.blocks {
        let b = next;
        let res = Scope {
            node: format!("/{b}/{b}.0/fn/fn."),
            init: format!("{b}.0.fn."),
        };
        let (branch, _) = g.unit(dw, &x, &res, 0, dim)?;
        let sum = g.node(
            "Add",
            &format!("/{b}/{b}.0/Add"),
            vec![branch, x.clone()],
            vec![],
        );
        let outer = Scope {
            node: format!("/{b}/{b}."),
            init: format!("{b}."),
        };
        let (out, _) = g.unit(pw, &sum, &outer, 1, 1)?;
        x = out;
        next += 1;
    }
    let pool = g.node(
        "GlobalAveragePool",
        &format!("/{next}/GlobalAveragePool"),
        vec![x],
        vec![],
    );
    let flat = g.node(
        "Flatten",
        &format!("/{}/Flatten", next + 1),
        vec![pool],
        vec![attr_int("axis", 1)],
    );
    let lin = next + 2;
    let classes = m.classes();
    let w = g.init(&format!("{lin}.weight"), &[classes, dim], &m.head_w)?;
    let b = g.init(&format!("{lin}.bias"), &[classes], &m.head_b)?;
    let name = g.unique(&format!("/{lin}/Gemm"));
    g.nodes.push(NodeProto {
        input: vec![flat, w, b],
        output: vec!["logits".to_string()],
        name,
        op_type: "Gemm".to_string(),
        attribute: vec![
            attr_float("alpha", 1.0),
            attr_float("beta", 1.0),
            attr_int("transB", 1),
        ],
        ..Default::default()
    });

    let batch = || dimension::Value::DimParam("batch".to_string());
    let input = value_info(
        "input",
        [
            batch(),
            dim_value(m.in_c)?,
            dim_value(m.in_h)?,
            dim_value(m.in_w)?,
        ],
    );
    let output = value_info("logits", [batch(), dim_value(classes)?]);
    let model = ModelProto {
        ir_version: gelu.ir_version(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: gelu.opset(),
        }],
        producer_name: "convmixer-quantize".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: "main_graph".to_string(),
            initializer: g.inits,
            input: vec![input],
            output: vec![output],
            ..Default::default()
        }),
        ..Default::default()
    };
    let len = model.encoded_len();
    if len > i32::MAX as usize {
        bail!("cannot export: the model needs {len} bytes, more than one ONNX protobuf can hold (2 GiB)");
    }
    Ok(model.encode_to_vec())
}

/// Where a unit's nodes and initialisers are named: module `j` is node path
/// `{node}{j}/Op` and initialiser `{init}{j}.weight`.
struct Scope {
    node: String,
    init: String,
}

struct Builder {
    form: GeluForm,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    /// Node names in use.
    names: HashSet<String>,
}

impl Builder {
    /// Adds a node named `name` with one output `{name}_output_0`; returns the output.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        input: Vec<String>,
        attribute: Vec<AttributeProto>,
    ) -> String {
        let out = format!("{name}_output_0");
        let name = self.unique(name);
        self.nodes.push(NodeProto {
            input,
            output: vec![out.clone()],
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// `name`, or `name_1`, `name_2`, … if taken; marks it taken.
    fn unique(&mut self, name: &str) -> String {
        let mut n = name.to_string();
        let mut i = 0;
        while self.names.contains(&n) {
            i += 1;
            n = format!("{name}_{i}");
        }
        self.names.insert(n.clone());
        n
    }

    /// A float initialiser; returns its name.
    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> Result<String> {
        self.inits.push(float_tensor(name, dims, data)?);
        Ok(name.to_string())
    }

    /// A scalar float `Constant` node; returns its output.
    fn constant(&mut self, name: &str, v: f32) -> Result<String> {
        let t = float_tensor("", &[], &[v])?;
        Ok(self.node(
            "Constant",
            name,
            vec![],
            vec![AttributeProto {
                name: "value".to_string(),
                r#type: AttributeType::Tensor as i32,
                t: Some(t),
                ..Default::default()
            }],
        ))
    }

    /// Writes `Conv → [BN] → act → [BN]` reading `x`, as modules `first, first+1, …` of
    /// `scope`. Returns the output and the next free module index.
    fn unit(
        &mut self,
        u: &ConvUnit,
        x: &str,
        scope: &Scope,
        first: usize,
        group: usize,
    ) -> Result<(String, usize)> {
        let mut j = first;
        let path = |j: usize, op: &str| format!("{}{j}/{op}", scope.node);
        let init = |j: usize, what: &str| format!("{}{j}.{what}", scope.init);
        let [o, _, kh, kw] = u.shape;
        let w = self.init(&init(j, "weight"), &u.shape, &u.w)?;
        let b = self.init(&init(j, "bias"), &[o], &u.b)?;
        let [t, l, bo, r] = u.pads;
        let conv_path = path(j, "Conv");
        let out = format!("{conv_path}_output_0");
        let name = if u.name.is_empty() {
            self.unique(&conv_path)
        } else {
            self.unique(&u.name)
        };
        self.nodes.push(NodeProto {
            input: vec![x.to_string(), w, b],
            output: vec![out.clone()],
            name,
            op_type: "Conv".to_string(),
            attribute: vec![
                attr_ints("dilations", &[1, 1])?,
                attr_int("group", group as i64),
                attr_ints("kernel_shape", &[kh, kw])?,
                attr_ints("pads", &[t, l, bo, r])?,
                attr_ints("strides", &[u.stride, u.stride])?,
            ],
            ..Default::default()
        });
        let mut x = out;
        j += 1;
        if let Some(bn) = &u.bn_pre {
            x = self.batchnorm(bn, &x, &path(j, "BatchNormalization"), &init(j, ""))?;
            j += 1;
        }
        x = self.activation(u.act, &x, &format!("{}{j}/", scope.node))?;
        j += 1;
        if let Some(bn) = &u.bn_post {
            x = self.batchnorm(bn, &x, &path(j, "BatchNormalization"), &init(j, ""))?;
            j += 1;
        }
        Ok((x, j))
    }

    /// `prefix` is the initialiser prefix ending in `.` (`2.` → `2.weight`, …).
    fn batchnorm(&mut self, bn: &BatchNorm, x: &str, name: &str, prefix: &str) -> Result<String> {
        let c = bn.gamma.len();
        let mut input = vec![x.to_string()];
        for (what, v) in [
            ("weight", &bn.gamma),
            ("bias", &bn.beta),
            ("running_mean", &bn.mean),
            ("running_var", &bn.var),
        ] {
            input.push(self.init(&format!("{prefix}{what}"), &[c], v)?);
        }
        let mut attribute = vec![attr_float("epsilon", bn.eps), attr_float("momentum", 0.9)];
        if self.form == GeluForm::Erf {
            attribute.push(attr_int("training_mode", 0));
        }
        Ok(self.node("BatchNormalization", name, input, attribute))
    }

    /// The activation of `x`, its nodes named under `path` (`/2/`, `/3/3.0/fn/fn.1/`).
    fn activation(&mut self, act: Activation, x: &str, path: &str) -> Result<String> {
        let x = x.to_string();
        match (act, self.form) {
            (Activation::Relu, _) => Ok(self.node("Relu", &format!("{path}Relu"), vec![x], vec![])),
            (Activation::Gelu | Activation::GeluTanh, GeluForm::GeluOp) => {
                let approx = if act == Activation::Gelu {
                    "none"
                } else {
                    "tanh"
                };
                Ok(self.node(
                    "Gelu",
                    &format!("{path}Gelu"),
                    vec![x],
                    vec![AttributeProto {
                        name: "approximate".to_string(),
                        r#type: AttributeType::String as i32,
                        s: approx.as_bytes().to_vec(),
                        ..Default::default()
                    }],
                ))
            }
            (Activation::Gelu, GeluForm::Erf) => {
                let mut ops = Ops::new(path);
                let sqrt2 = ops.constant(self, std::f32::consts::SQRT_2)?;
                let d = ops.op(self, "Div", x.clone(), sqrt2);
                let e = ops.unary(self, "Erf", d);
                let one = ops.constant(self, 1.0)?;
                let a = ops.op(self, "Add", e, one);
                let m = ops.op(self, "Mul", x, a);
                let half = ops.constant(self, 0.5)?;
                Ok(ops.op(self, "Mul", m, half))
            }
            (Activation::GeluTanh, GeluForm::Erf) => {
                // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x·x·x)))
                let mut ops = Ops::new(path);
                let x2 = ops.op(self, "Mul", x.clone(), x.clone());
                let x3 = ops.op(self, "Mul", x2, x.clone());
                let kappa = ops.constant(self, 0.044715)?;
                let kx3 = ops.op(self, "Mul", x3, kappa);
                let inner = ops.op(self, "Add", x.clone(), kx3);
                let beta = ops.constant(self, (2.0 / std::f64::consts::PI).sqrt() as f32)?;
                let scaled = ops.op(self, "Mul", inner, beta);
                let t = ops.unary(self, "Tanh", scaled);
                let one = ops.constant(self, 1.0)?;
                let a = ops.op(self, "Add", t, one);
                let m = ops.op(self, "Mul", x, a);
                let half = ops.constant(self, 0.5)?;
                Ok(ops.op(self, "Mul", m, half))
            }
        }
    }
}

/// Names element-wise nodes as the TorchScript exporter does: `/2/Mul`, `/2/Mul_1`, ….
struct Ops<'p> {
    path: &'p str,
    used: Vec<(String, usize)>,
}

impl<'p> Ops<'p> {
    fn new(path: &'p str) -> Self {
        Ops { path, used: vec![] }
    }
    fn name(&mut self, op: &str) -> String {
        let n = match self.used.iter_mut().find(|(o, _)| o == op) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.used.push((op.to_string(), 0));
                0
            }
        };
        if n == 0 {
            format!("{}{op}", self.path)
        } else {
            format!("{}{op}_{n}", self.path)
        }
    }
    fn op(&mut self, b: &mut Builder, op: &str, x: String, y: String) -> String {
        let name = self.name(op);
        b.node(op, &name, vec![x, y], vec![])
    }
    fn unary(&mut self, b: &mut Builder, op: &str, x: String) -> String {
        let name = self.name(op);
        b.node(op, &name, vec![x], vec![])
    }
    fn constant(&mut self, b: &mut Builder, v: f32) -> Result<String> {
        let name = self.name("Constant");
        b.constant(&name, v)
    }
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> Result<TensorProto> {
    let dims: Vec<i64> = dims.iter().map(|&d| to_i64(d)).collect::<Result<_>>()?;
    let mut raw = Vec::with_capacity(data.len() * 4);
    for v in data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorProto {
        dims,
        data_type: DataType::Float as i32,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    })
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| anyhow!("size {v} does not fit an ONNX dimension"))
}

fn dim_value(v: usize) -> Result<dimension::Value> {
    Ok(dimension::Value::DimValue(to_i64(v)?))
}

fn value_info<const N: usize>(name: &str, dims: [dimension::Value; N]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|v| pb::tensor_shape_proto::Dimension {
                            value: Some(v),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> Result<AttributeProto> {
    Ok(AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Ints as i32,
        ints: v.iter().map(|&x| to_i64(x)).collect::<Result<_>>()?,
        ..Default::default()
    })
}

// ----------------------------------------------------------------------------------------
// Validation: what the importer could have returned

fn validate(m: &Imported) -> Result<()> {
    if m.in_c != 1 && m.in_c != 3 {
        bail!("cannot export: {} input channels (expected 1 or 3)", m.in_c);
    }
    let e = &m.embed;
    let [dim, c, ph, pw] = e.shape;
    if dim == 0 {
        bail!(
            "cannot export: the patch embedding '{}' has no output channels",
            e.name
        );
    }
    if c != m.in_c || ph != pw || ph == 0 || e.pads != [0; 4] || e.stride != ph {
        bail!(
            "cannot export: the patch embedding '{}' must be a square unpadded Conv over {} channels with stride = kernel (found weights {:?}, pads {:?}, stride {})",
            e.name, m.in_c, e.shape, e.pads, e.stride
        );
    }
    if ph > m.in_h || ph > m.in_w {
        bail!(
            "cannot export: patch {ph} is larger than the {}x{} input",
            m.in_h,
            m.in_w
        );
    }
    to_i64(m.in_h)?;
    to_i64(m.in_w)?;
    check_unit(e, m.embed.act)?;
    let k = m.kernel();
    for (i, (dw, pwu)) in m.blocks.iter().enumerate() {
        check_unit(dw, m.embed.act)?;
        check_unit(pwu, m.embed.act)?;
        if dw.shape != [dim, 1, k, k] || k == 0 {
            bail!(
                "cannot export: block {i} depthwise Conv '{}' has weights {:?} (expected [{dim}, 1, {k}, {k}])",
                dw.name, dw.shape
            );
        }
        let same = [(k - 1) / 2, (k - 1) / 2, k / 2, k / 2];
        if dw.pads != same || dw.stride != 1 {
            bail!(
                "cannot export: block {i} depthwise Conv '{}' has pads {:?} stride {} (expected PyTorch 'same' {same:?}, stride 1)",
                dw.name, dw.pads, dw.stride
            );
        }
        if pwu.shape != [dim, dim, 1, 1] || pwu.pads != [0; 4] || pwu.stride != 1 {
            bail!(
                "cannot export: block {i} pointwise Conv '{}' has weights {:?}, pads {:?}, stride {} (expected [{dim}, {dim}, 1, 1], no padding, stride 1)",
                pwu.name, pwu.shape, pwu.pads, pwu.stride
            );
        }
    }
    let classes = m.classes();
    if classes == 0 || Some(m.head_w.len()) != classes.checked_mul(dim) {
        bail!(
            "cannot export: the classifier has {} weights and {classes} biases (expected classes x {dim} weights, at least one class)",
            m.head_w.len()
        );
    }
    finite("the classifier weights", &m.head_w)?;
    finite("the classifier bias", &m.head_b)?;
    Ok(())
}

fn check_unit(u: &ConvUnit, act: Activation) -> Result<()> {
    let n = u.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if n != Some(u.w.len()) {
        bail!(
            "cannot export: Conv '{}' has {} weights for shape {:?}",
            u.name,
            u.w.len(),
            u.shape
        );
    }
    let o = u.shape[0];
    if u.b.len() != o {
        bail!(
            "cannot export: Conv '{}' has {} biases for {o} output channels",
            u.name,
            u.b.len()
        );
    }
    if u.stride == 0 {
        bail!("cannot export: Conv '{}' has stride 0", u.name);
    }
    if u.act != act {
        bail!(
            "cannot export: Conv '{}' uses {:?} but the embedding {:?} (one activation per model)",
            u.name,
            u.act,
            act
        );
    }
    finite(&u.name, &u.w)?;
    finite(&u.name, &u.b)?;
    for bn in [&u.bn_pre, &u.bn_post].into_iter().flatten() {
        for (what, v) in [
            ("scale", &bn.gamma),
            ("bias", &bn.beta),
            ("running mean", &bn.mean),
            ("running variance", &bn.var),
        ] {
            if v.len() != o {
                bail!(
                    "cannot export: the BatchNorm of Conv '{}' has {} {what} values for {o} channels",
                    u.name,
                    v.len()
                );
            }
            finite(&u.name, v)?;
        }
        if let Some(v) = bn.var.iter().find(|&&v| v < 0.0) {
            bail!(
                "cannot export: the BatchNorm of Conv '{}' has running variance {v}",
                u.name
            );
        }
        if !bn.eps.is_finite() {
            bail!(
                "cannot export: the BatchNorm of Conv '{}' has epsilon {}",
                u.name,
                bn.eps
            );
        }
    }
    Ok(())
}

fn finite(what: &str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(i) => bail!("cannot export: {what}: parameter {i} is {}", v[i]),
        None => Ok(()),
    }
}

/// Adds the input normalisation `(p/255 − mean_c)/std_c` and the class names to an ONNX
/// file's `metadata_props` (what `host-tools train` writes: `quantize` and `eval` use them
/// when no `--mean`/`--std`/`--labels` is given; [`crate::onnx::normalisation`] and
/// [`crate::onnx::labels`] read them).
///
/// ```
/// use convmixer_quantize::onnx::{self, normalisation};
/// use convmixer_quantize::onnx_export::{with_normalisation, write_onnx, GeluForm};
/// use convmixer_quantize::random::{random_convmixer, RandomConfig};
/// use convmixer_quantize::Activation;
///
/// let cfg = RandomConfig {
///     dim: 8, depth: 1, kernel: 3, patch: 2, in_c: 1, in_h: 8, in_w: 8,
///     classes: 3, act: Activation::Relu, seed: 1,
/// };
/// let bytes = write_onnx(&random_convmixer(&cfg)?, GeluForm::Erf)?;
/// assert_eq!(normalisation(&onnx::parse_model(&bytes)?)?, None);
/// let names = ["a".to_string(), "b".into(), "c".into()];
/// let bytes = with_normalisation(&bytes, &[0.1307], &[0.3081], &names)?;
/// let proto = onnx::parse_model(&bytes)?;
/// assert_eq!(normalisation(&proto)?, Some((vec![0.1307], vec![0.3081])));
/// assert_eq!(onnx::labels(&proto), names.to_vec());
/// assert!(onnx::import_bytes(&bytes).is_ok());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn with_normalisation(
    onnx: &[u8],
    mean: &[f32],
    std: &[f32],
    labels: &[String],
) -> Result<Vec<u8>> {
    let mut m = ModelProto::decode(onnx).map_err(|e| anyhow!("not a valid ONNX protobuf ({e})"))?;
    let join = |v: &[f32]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    m.metadata_props
        .retain(|p| ![MEAN_KEY, STD_KEY, LABELS_KEY].contains(&p.key.as_str()));
    for (key, value) in [
        (MEAN_KEY, join(mean)),
        (STD_KEY, join(std)),
        (LABELS_KEY, labels.join("\n")),
    ] {
        m.metadata_props.push(pb::StringStringEntryProto {
            key: key.to_string(),
            value,
        });
    }
    Ok(m.encode_to_vec())
}
