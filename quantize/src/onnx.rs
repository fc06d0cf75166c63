//! ONNX import: a PyTorch-exported ConvMixer → [`Imported`] (raw weights and BatchNorms).
//!
//! tract-onnx parses the protobuf; this module walks the node list and recognises the
//! ConvMixer structure as both `torch.onnx.export` back-ends write it:
//!
//! ```text
//! input → [Conv(k=p, s=p) → [BN] → act → [BN]]                      patch embedding
//!       → depth × ( x + ([Pad] → Conv(groups=dim) → [BN] → act → [BN])   residual depthwise
//!                   → Conv 1×1 → [BN] → act → [BN] )                      pointwise
//!       → GlobalAveragePool | ReduceMean(2,3) → [Flatten | Reshape | Squeeze]
//!       → Gemm | MatMul [+ Add]                                          head
//! ```
//!
//! "act" is `Relu`, the `Gelu` op (opset 20), or any small element-wise subgraph (`Div`,
//! `Mul`, `Add`, `Sub`, `Erf`, `Tanh`, `Pow`, `Sqrt` with constant operands) that evaluates
//! to GELU: the TorchScript exporter's `Div → Erf → Add → Mul → Mul` is recognised by
//! *evaluating* it on sample points, so equivalent spellings from other exporters work too.
//! Anything else is an error naming the node, its op type and what was expected.

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::Activation;
use tract_onnx::pb::{self, NodeProto};

mod graph;
mod load;
pub(crate) use graph::{attr, attr_int, attr_ints, check_finite, describe, linear_weight, Graph};
pub use load::{load, parse_model};
/// A decoded ONNX file (tract-onnx's protobuf types).
pub use tract_onnx::pb::ModelProto;

/// A BatchNorm in inference form.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// γ.
    pub gamma: Vec<f32>,
    /// β.
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// ε.
    pub eps: f32,
}

/// One Conv → \[BN\] → act → \[BN\] unit as found in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvUnit {
    /// Name of the Conv node (for messages).
    pub name: String,
    /// Weights in ONNX layout `[out][in/groups][kh][kw]`.
    pub w: Vec<f32>,
    /// `[out, in/groups, kh, kw]`.
    pub shape: [usize; 4],
    /// Bias (zeros if the Conv had none).
    pub b: Vec<f32>,
    /// Padding `[top, left, bottom, right]` (Pad node and Conv pads combined).
    pub pads: [usize; 4],
    /// Stride (the same in both directions).
    pub stride: usize,
    /// BatchNorm between the conv and the activation, if any.
    pub bn_pre: Option<BatchNorm>,
    /// Activation.
    pub act: Activation,
    /// BatchNorm after the activation, if any.
    pub bn_post: Option<BatchNorm>,
}

/// A ConvMixer as read from ONNX, before any folding.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Patch embedding.
    pub embed: ConvUnit,
    /// `(depthwise, pointwise)` per block.
    pub blocks: Vec<(ConvUnit, ConvUnit)>,
    /// Head weights `[classes][dim]`.
    pub head_w: Vec<f32>,
    /// Head bias `[classes]`.
    pub head_b: Vec<f32>,
    /// Opset of the default domain.
    pub opset: i64,
}

impl Imported {
    /// Mixer width.
    pub fn dim(&self) -> usize {
        self.embed.shape[0]
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.head_b.len()
    }
    /// Patch size.
    pub fn patch(&self) -> usize {
        self.embed.shape[2]
    }
    /// Depthwise kernel (0 when depth is 0).
    pub fn kernel(&self) -> usize {
        self.blocks.first().map_or(0, |b| b.0.shape[2])
    }
}

/// Reads an ONNX file (with its external data, if any: [`load`]) and recognises a ConvMixer
/// in it.
pub fn import(path: &std::path::Path) -> Result<Imported> {
    let proto = load(path)?;
    import_proto(&proto).with_context(|| format!("{}", path.display()))
}

/// As [`import`], from the bytes of an ONNX file. A model whose tensors are in external
/// data files cannot be read from its bytes alone: that is an error naming the tensor.
pub fn import_bytes(bytes: &[u8]) -> Result<Imported> {
    import_proto(&parse_model(bytes)?)
}

/// As [`import`], from a parsed model (external data read in).
pub fn import_proto(proto: &pb::ModelProto) -> Result<Imported> {
    let (graph, opset) = graph_and_opset(proto)?;
    Graph::new(graph)?.convmixer(opset)
}

/// The graph of `proto` and the opset of its default domain (0 when it names none).
pub(crate) fn graph_and_opset(proto: &pb::ModelProto) -> Result<(&pb::GraphProto, i64)> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("ONNX model has no graph"))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    Ok((graph, opset))
}

/// Largest padding accepted on one side (far above any ConvMixer's; keeps the sums of pads
/// in range).
const MAX_PAD: i64 = 1 << 16;

impl<'g> Graph<'g> {
    fn convmixer(&self, opset: i64) -> Result<Imported> {
        let (in_c, in_h, in_w) = self.input_shape()?;
        if in_c != 1 && in_c != 3 {
            bail!(
                "input '{}' has {in_c} channels (expected 1 or 3)",
                self.input.name
            );
        }
        let mut cur = self.input.name.as_str();
        let (embed, next) = self.conv_unit(cur, "the patch-embedding Conv")?;
        cur = next;
        let [dim, c, ph, pw] = embed.shape;
        if c != in_c || ph != pw || embed.pads != [0; 4] || embed.stride != ph {
            bail!("{}: the patch embedding must be a square unpadded Conv over {in_c} channels (found weights {:?}, pads {:?})", embed.name, embed.shape, embed.pads);
        }
        let mut blocks = Vec::new();
        loop {
            let users = self.users(cur);
            // A residual block: `cur` feeds the depthwise branch and the Add.
            if users.len() != 2 {
                break;
            }
            let (add, branch) = match (users[0].op_type.as_str(), users[1].op_type.as_str()) {
                ("Add", "Conv" | "Pad") => (users[0], users[1]),
                ("Conv" | "Pad", "Add") => (users[1], users[0]),
                _ => bail!(
                    "tensor '{cur}' feeds {} and {}; expected a residual block (Conv and Add)",
                    describe(users[0]),
                    describe(users[1])
                ),
            };
            let (dw, u) = self.unit_from(branch, "the depthwise Conv")?;
            if !add.input.iter().any(|i| i == u) || !add.input.iter().any(|i| i == cur) {
                bail!(
                    "{}: expected the residual Add of '{cur}' and '{u}'",
                    describe(add)
                );
            }
            let (pwu, next) = self.conv_unit(&add.output[0], "the pointwise Conv")?;
            check_block(&dw, &pwu, dim)?;
            blocks.push((dw, pwu));
            cur = next;
        }
        let (head_w, head_b) = self.head(cur, dim)?;
        let act = embed.act;
        for u in blocks.iter().flat_map(|(a, b)| [a, b]) {
            if u.act != act {
                bail!("{}: activation {:?} differs from the embedding's {:?} (one activation per model)", u.name, u.act, act);
            }
        }
        let k = blocks.first().map(|b| b.0.shape[2]);
        if blocks.iter().any(|b| Some(b.0.shape[2]) != k) {
            bail!("depthwise kernels differ between blocks (one kernel size per model)");
        }
        if in_h < ph || in_w < ph {
            bail!("input {in_h}x{in_w} is smaller than the patch size {ph}");
        }
        Ok(Imported {
            in_c,
            in_h,
            in_w,
            embed,
            blocks,
            head_w,
            head_b,
            opset,
        })
    }

    /// Parses `[Pad] → Conv → [BN] → act → [BN]` starting at the node consuming `t`.
    fn conv_unit(&self, t: &str, what: &str) -> Result<(ConvUnit, &'g str)> {
        let n = self.single_user(t, what)?;
        self.unit_from(n, what)
    }

    fn unit_from(&self, first: &'g NodeProto, what: &str) -> Result<(ConvUnit, &'g str)> {
        let mut node = first;
        let mut pads = [0usize; 4];
        if node.op_type == "Pad" {
            pads = self.pad_node(node)?;
            node = self.single_user(&node.output[0], what)?;
        }
        if node.op_type != "Conv" {
            bail!("{}: expected {what} here", describe(node));
        }
        let conv = node;
        let w = self.constant(conv.input.get(1).map_or("", |s| s), "Conv weight")?;
        let shape: [usize; 4] = w.dims.as_slice().try_into().map_err(|_| {
            anyhow!(
                "{}: weight has rank {} (expected 4)",
                describe(conv),
                w.dims.len()
            )
        })?;
        if shape.contains(&0) {
            bail!(
                "{}: weight shape {shape:?} has a zero dimension",
                describe(conv)
            );
        }
        let b = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => self.constant(name, "Conv bias")?.data.clone(),
            None => vec![0.0; shape[0]],
        };
        if b.len() != shape[0] {
            bail!(
                "{}: bias has {} values for {} output channels",
                describe(conv),
                b.len(),
                shape[0]
            );
        }
        if attr_ints(conv, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1)) {
            bail!(
                "{}: dilated convolutions are not part of ConvMixer",
                describe(conv)
            );
        }
        let strides = attr_ints(conv, "strides").unwrap_or(vec![1, 1]);
        let group = attr_int(conv, "group").unwrap_or(1) as usize;
        let cp = attr_ints(conv, "pads").unwrap_or(vec![0; 4]);
        let auto = attr(conv, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string());
        let (kh, kw) = (shape[2], shape[3]);
        match auto.as_deref() {
            None | Some("NOTSET") | Some("") => {
                if cp.len() != 4 || cp.iter().any(|v| !(0..=MAX_PAD).contains(v)) {
                    bail!(
                        "{}: pads {:?} (expected 4 values in 0..={MAX_PAD})",
                        describe(conv),
                        cp
                    );
                }
                // ONNX pads: [top, left, bottom, right].
                for (p, c) in pads.iter_mut().zip(&cp) {
                    *p += *c as usize;
                }
            }
            Some("VALID") => {}
            Some("SAME_UPPER") => {
                pads = [
                    pads[0] + (kh - 1) / 2,
                    pads[1] + (kw - 1) / 2,
                    pads[2] + kh / 2,
                    pads[3] + kw / 2,
                ];
            }
            Some(other) => bail!(
                "{}: auto_pad {other} is not supported (expected explicit pads)",
                describe(conv)
            ),
        }
        let mut unit = ConvUnit {
            name: if conv.name.is_empty() {
                conv.output[0].clone()
            } else {
                conv.name.clone()
            },
            w: w.data.clone(),
            shape,
            b,
            pads,
            stride: 1,
            bn_pre: None,
            act: Activation::Relu,
            bn_post: None,
        };
        check_finite(&format!("{}: weight", unit.name), &unit.w)?;
        check_finite(&format!("{}: bias", unit.name), &unit.b)?;
        // Encode stride and group into the shape checks done by the caller.
        if group != 1 && group != shape[0] {
            bail!(
                "{}: group {group} (expected 1 or the channel count)",
                describe(conv)
            );
        }
        if strides.len() != 2 || strides[0] != strides[1] || strides[0] < 1 {
            bail!(
                "{}: strides {:?} (expected equal strides in both directions)",
                describe(conv),
                strides
            );
        }
        unit.stride = strides[0] as usize;
        if kh != kw {
            bail!("{}: kernel {kh}x{kw} is not square", describe(conv));
        }
        let mut out = conv.output[0].as_str();
        let mut next = self.activation_start(out)?;
        if next.op_type == "BatchNormalization" {
            unit.bn_pre = Some(self.batchnorm(next, shape[0])?);
            out = next.output[0].as_str();
            next = self.activation_start(out)?;
        }
        let (act, act_out) = self.activation(out, next)?;
        unit.act = act;
        out = act_out;
        let users = self.users(out);
        if let [n] = users.as_slice() {
            if n.op_type == "BatchNormalization" {
                unit.bn_post = Some(self.batchnorm(n, shape[0])?);
                out = n.output[0].as_str();
            }
        }
        Ok((unit, out))
    }

    fn pad_node(&self, n: &NodeProto) -> Result<[usize; 4]> {
        let mode = attr(n, "mode").map(|a| String::from_utf8_lossy(&a.s).to_string());
        if mode.as_deref().is_some_and(|m| m != "constant") {
            bail!("{}: only constant (zero) padding is supported", describe(n));
        }
        let pads: Vec<i64> = match n.input.get(1).filter(|s| !s.is_empty()) {
            Some(p) => self
                .constant(p, "Pad amounts")?
                .int_values()
                .ok_or_else(|| anyhow!("{}: Pad amounts are not integers", describe(n)))?,
            None => attr_ints(n, "pads").unwrap_or_default(),
        };
        if let Some(v) = n.input.get(2).filter(|s| !s.is_empty()) {
            if self
                .constant(v, "Pad value")?
                .data
                .iter()
                .any(|&x| x != 0.0)
            {
                bail!("{}: padding value must be 0", describe(n));
            }
        }
        if n.input.get(3).is_some_and(|s| !s.is_empty()) {
            bail!("{}: Pad with explicit axes is not supported", describe(n));
        }
        // [n0, c0, h0, w0, n1, c1, h1, w1]
        if pads.len() != 8
            || pads.iter().any(|p| !(0..=MAX_PAD).contains(p))
            || pads[0] != 0
            || pads[1] != 0
            || pads[4] != 0
            || pads[5] != 0
        {
            bail!(
                "{}: pads {:?} (expected spatial zero padding of a 4-D tensor, at most {MAX_PAD})",
                describe(n),
                pads
            );
        }
        Ok([
            pads[2] as usize,
            pads[3] as usize,
            pads[6] as usize,
            pads[7] as usize,
        ])
    }

    fn batchnorm(&self, n: &NodeProto, c: usize) -> Result<BatchNorm> {
        if attr_int(n, "training_mode").unwrap_or(0) != 0 {
            bail!(
                "{}: BatchNormalization in training mode (export the model in eval mode)",
                describe(n)
            );
        }
        let get = |i: usize, what: &str| -> Result<Vec<f32>> {
            let name = n
                .input
                .get(i)
                .ok_or_else(|| anyhow!("{}: missing {what}", describe(n)))?;
            let t = self.constant(name, what)?;
            if t.data.len() != c {
                bail!(
                    "{}: {what} has {} values for {c} channels",
                    describe(n),
                    t.data.len()
                );
            }
            let v = t.data.clone();
            check_finite(&format!("{}: {what}", n.name), &v)?;
            Ok(v)
        };
        let bn = BatchNorm {
            gamma: get(1, "scale")?,
            beta: get(2, "bias")?,
            mean: get(3, "running mean")?,
            var: get(4, "running variance")?,
            eps: attr(n, "epsilon").map_or(1e-5, |a| a.f),
        };
        if let Some(i) = bn.var.iter().position(|&v| v < 0.0) {
            bail!(
                "{}: running variance of channel {i} is {} (negative)",
                describe(n),
                bn.var[i]
            );
        }
        if !(bn.eps.is_finite() && bn.eps >= 0.0) {
            bail!(
                "{}: epsilon {} is not a finite value ≥ 0",
                describe(n),
                bn.eps
            );
        }
        // A zero-variance channel (a constant feature: every training input gave it the same
        // value) is valid and folds exactly as long as ε > 0; with ε = 0 it would divide
        // by zero.
        if let Some(i) = bn.var.iter().position(|&v| v + bn.eps <= 0.0) {
            bail!(
                "{}: channel {i} has running variance 0 and epsilon 0 (division by zero)",
                describe(n)
            );
        }
        Ok(bn)
    }

    /// GlobalAveragePool | ReduceMean → [Flatten | Reshape | Squeeze] → Gemm | MatMul [+ Add].
    fn head(&self, x: &'g str, dim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let pool = self.single_user(x, "the global average pool")?;
        match pool.op_type.as_str() {
            "GlobalAveragePool" => {}
            "ReduceMean" => {
                let axes: Vec<i64> = match attr_ints(pool, "axes") {
                    Some(a) => a,
                    None => match pool.input.get(1).filter(|s| !s.is_empty()) {
                        Some(n) => self
                            .constant(n, "ReduceMean axes")?
                            .int_values()
                            .ok_or_else(|| {
                                anyhow!("{}: ReduceMean axes are not integers", describe(pool))
                            })?,
                        None => vec![],
                    },
                };
                let mut a: Vec<i64> = axes
                    .iter()
                    .map(|&v| if v < 0 { v + 4 } else { v })
                    .collect();
                a.sort_unstable();
                if a != [2, 3] {
                    bail!(
                        "{}: ReduceMean over axes {:?} (expected the spatial axes 2 and 3)",
                        describe(pool),
                        axes
                    );
                }
            }
            _ => bail!(
                "{}: expected GlobalAveragePool or ReduceMean after the last block",
                describe(pool)
            ),
        }
        self.classifier(&pool.output[0], dim)
    }
}

fn check_block(dw: &ConvUnit, pw: &ConvUnit, dim: usize) -> Result<()> {
    let [o, i, k, _] = dw.shape;
    if o != dim || i != 1 {
        bail!("{}: expected a depthwise Conv over {dim} channels (weights [{dim}, 1, k, k]), found {:?}", dw.name, dw.shape);
    }
    let [t, l, b, r] = dw.pads;
    if t + b != k - 1 || l + r != k - 1 {
        bail!(
            "{}: padding {:?} is not 'same' for kernel {k}",
            dw.name,
            dw.pads
        );
    }
    if t != (k - 1) / 2 || l != (k - 1) / 2 {
        bail!("{}: padding {:?} puts the extra row first; expected PyTorch's 'same' ({} before, {} after)", dw.name, dw.pads, (k - 1) / 2, k / 2);
    }
    if dw.stride != 1 || pw.stride != 1 {
        bail!(
            "{}: depthwise and pointwise Convs must have stride 1",
            dw.name
        );
    }
    if pw.shape != [dim, dim, 1, 1] {
        bail!(
            "{}: expected a pointwise Conv [{dim}, {dim}, 1, 1], found {:?}",
            pw.name,
            pw.shape
        );
    }
    Ok(())
}

/// Metadata key of the per-channel normalisation mean (`0.1307` or `0.4914,0.4822,0.4465`).
pub const MEAN_KEY: &str = "convmixer_edge.normalize.mean";
/// Metadata key of the per-channel normalisation standard deviation.
pub const STD_KEY: &str = "convmixer_edge.normalize.std";
/// Metadata key of the class names, one per line in class order.
pub const LABELS_KEY: &str = "convmixer_edge.labels";

/// The input normalisation `host-tools train` records in an ONNX model's metadata
/// ([`onnx_export::with_normalisation`](crate::onnx_export::with_normalisation)):
/// `Some((mean, std))`, or `None` when the file has none (PyTorch's exports).
pub fn normalisation(proto: &pb::ModelProto) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    let get = |key: &str| -> Result<Option<Vec<f32>>> {
        let Some(p) = proto.metadata_props.iter().find(|p| p.key == key) else {
            return Ok(None);
        };
        let v = p
            .value
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<Vec<f32>, _>>()
            .map_err(|_| anyhow!("metadata {key} = '{}' is not a list of numbers", p.value))?;
        Ok(Some(v))
    };
    match (get(MEAN_KEY)?, get(STD_KEY)?) {
        (Some(m), Some(s)) => Ok(Some((m, s))),
        (None, None) => Ok(None),
        _ => bail!("metadata has only one of {MEAN_KEY} and {STD_KEY}"),
    }
}

/// The class names `host-tools train` records in an ONNX model's metadata (empty when it
/// has none).
pub fn labels(proto: &pb::ModelProto) -> Vec<String> {
    proto
        .metadata_props
        .iter()
        .find(|p| p.key == LABELS_KEY)
        .map(|p| p.value.lines().map(String::from).collect())
        .unwrap_or_default()
}
