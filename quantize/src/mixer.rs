//! MLP-Mixer ("An all-MLP Architecture for Vision"), the same straight line as the
//! ConvMixer's, in one module:
//!
//! ```text
//! import  →  fold  →  calibrate  →  lower  →  blob bytes
//! (ONNX)     (LN affine into the next linear layer, input normalisation into the embedding)
//! ```
//!
//! # What is imported
//!
//! A `torch.onnx.export` of either layout found in the wild, by either exporter
//! (TorchScript, dynamo):
//!
//! ```text
//! input → Reshape → Transpose → Reshape → MatMul [+ Add]          lucidrains: Rearrange + Linear
//!       | Conv(k=p, s=p) → Reshape → Transpose(0,2,1)              timm: Conv stem, flatten, transpose
//!       → depth × ( x + MLP_tokens(LN(x)),  x + MLP_channels(LN(x)) )
//!       → LN → [Transpose] → ReduceMean(tokens) → Gemm | MatMul [+ Add]
//!
//! LN   = LayerNormalization (opset ≥ 17), or the decomposed ReduceMean → Sub → Pow →
//!        ReduceMean → Add(ε) → Sqrt → Div [→ Mul(γ)] [→ Add(β)] of earlier opsets
//! MLP  = [Transpose] → linear → act → linear → [Transpose]
//!        linear = MatMul [+ Add] on the last axis, or a Conv1d k=1 on the middle one
//!        act    = Gelu, the Erf form of GELU, or Relu (as recognised for ConvMixer)
//! ```
//!
//! Which axis a linear layer mixes is worked out from the Transposes and the op (a MatMul
//! after a transpose, or lucidrains' Conv1d with the tokens as its channels, both mix
//! tokens). Reshape targets may be computed from `Shape` (the TorchScript exporter's
//! Shape/Gather/Div/Unsqueeze/Concat chains): they are evaluated on the known input shape.
//! Anything else is an error naming the node.
//!
//! # Folding (exact)
//!
//! * The channel-mixing LayerNorm's affine goes into the channel MLP's first layer,
//!   `W·(γ⊙n + β) + b = (W·diag γ)·n + (W·β + b)`, and the final LayerNorm's into the head,
//!   through the mean over tokens (`mean(γ⊙n + β) = γ⊙mean(n) + β`).
//! * The token-mixing LayerNorm's affine cannot go into the token MLP: that layer mixes
//!   tokens with one weight matrix for all channels, and γ, β vary per channel, so the fold
//!   would need a different matrix per channel. It stays in the LayerNorm, where the
//!   fixed-point LayerNorm applies a per-channel multiplier and offset anyway, at no cost.
//! * The input normalisation `(pixel/255 − mean)/std` goes into the embedding, which then
//!   takes raw pixels, as ConvMixer's does.
//!
//! # int8
//!
//! The residual stream is int16 (one scale for the whole network: `max|x|/32767` over the
//! calibration set), so that the sums of many MLP outputs do not lose the small ones. Every
//! linear layer is an int8 GEMM (per-output-channel symmetric weights, the ConvMixer
//! pointwise kernels): fc1 reads its GELU from a 256-entry table over its pre-activation
//! range, fc2 and the embedding requantise to int8 through the identity table and add into
//! the stream with a fixed-point multiplier (RES_ADD). LayerNorm is exact integer
//! arithmetic on the stream (`docs/blob-format.md`), writing int8 with one scale per
//! tensor. The whole blob format is in `docs/blob-format.md` ("MLP-Mixer").

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::blob::{mixer_limits, Arch, Header, LayerMask, SectionKind};
use convmixer_edge::{Activation, Precision};
use tract_onnx::pb::NodeProto;

use crate::blob::{i32_bytes, Writer};
use crate::calibrate::asym;
use crate::calibrate::Range;
use crate::onnx::{attr, attr_int, attr_ints, check_finite, describe, linear_weight, Graph};
use crate::quant::{gap_frac_bits, multiplier, post_params, u16_of, u8_of, GeluTable};

/// A LayerNorm over the channels of every token.
#[derive(Clone, Debug, PartialEq)]
pub struct Ln {
    /// γ per channel.
    pub gamma: Vec<f32>,
    /// β per channel.
    pub beta: Vec<f32>,
    /// ε.
    pub eps: f32,
}

/// A linear layer `y = W·x + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Weights `[out][in]`.
    pub w: Vec<f32>,
    /// Bias `[out]`.
    pub b: Vec<f32>,
    /// Inputs.
    pub n_in: usize,
    /// Outputs.
    pub n_out: usize,
}

/// One pre-norm residual MLP: `x + fc2(act(fc1(LN(x))))`, mixing tokens or channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    /// The LayerNorm before it.
    pub norm: Ln,
    /// First layer (`n_in` = tokens or dim).
    pub fc1: Linear,
    /// Activation after the first layer.
    pub act: Activation,
    /// Second layer (`n_out` = tokens or dim).
    pub fc2: Linear,
}

/// One Mixer block: the token-mixing MLP, then the channel-mixing MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Mixes the tokens of every channel.
    pub token: Mlp,
    /// Mixes the channels of every token.
    pub channel: Mlp,
}

/// An MLP-Mixer as read from ONNX ([`import_bytes`]), or after [`fold`].
#[derive(Clone, Debug, PartialEq)]
pub struct Mixer {
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Patch size.
    pub patch: usize,
    /// Mixer width.
    pub dim: usize,
    /// Patch embedding `[dim][c·p·p]`; imported: weights in ONNX Conv order
    /// (`(c·p + ky)·p + kx`) on normalised input, folded: in the runtime's pixel order
    /// (`(ky·p + kx)·c + ci`) on raw pixels.
    pub embed: Linear,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// The final LayerNorm.
    pub norm: Ln,
    /// Classifier `[classes][dim]`.
    pub head: Linear,
    /// Opset of the default domain (imported models).
    pub opset: i64,
    /// Input normalisation mean per channel (0..1 scale), folded into `embed` ([`fold`];
    /// empty before).
    pub mean: Vec<f32>,
    /// Input normalisation std per channel, folded into `embed` ([`fold`]; empty before).
    pub std: Vec<f32>,
}

impl Mixer {
    /// Tokens after the patch embedding.
    pub fn tokens(&self) -> usize {
        (self.in_h / self.patch) * (self.in_w / self.patch)
    }
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.head.n_out
    }
    /// Parameters (weights and biases, LayerNorm affines included).
    pub fn params(&self) -> usize {
        let lin = |l: &Linear| l.w.len() + l.b.len();
        let ln = |n: &Ln| n.gamma.len() + n.beta.len();
        let mlp = |m: &Mlp| ln(&m.norm) + lin(&m.fc1) + lin(&m.fc2);
        lin(&self.embed)
            + self
                .blocks
                .iter()
                .map(|b| mlp(&b.token) + mlp(&b.channel))
                .sum::<usize>()
            + ln(&self.norm)
            + lin(&self.head)
    }
    /// Hidden widths `(token, channel)` (0 without blocks).
    pub fn hidden(&self) -> (usize, usize) {
        self.blocks
            .first()
            .map_or((0, 0), |b| (b.token.fc1.n_out, b.channel.fc1.n_out))
    }
    /// How reports name blob layer `l` (`docs/blob-format.md`: embedding, six layers per
    /// block, final LayerNorm, head).
    pub fn layer_name(&self, l: usize) -> String {
        let depth = self.blocks.len();
        match l {
            0 => "embed".into(),
            l if l == 1 + 6 * depth => "final norm".into(),
            l if l > 1 + 6 * depth => "head".into(),
            l => {
                let what = [
                    "token norm",
                    "token fc1",
                    "token fc2",
                    "channel norm",
                    "channel fc1",
                    "channel fc2",
                ][(l - 1) % 6];
                format!("block {} {what}", (l - 1) / 6)
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// Import

/// Whether the ONNX model `proto` is meant as an MLP-Mixer: it has a LayerNorm (the
/// LayerNormalization op, or a ReduceMean whose mean is subtracted: the decomposed form),
/// which a ConvMixer never has. `host-tools` picks the importer by this, so that each
/// importer's errors stay specific. A model without a graph is not a mixer (the ConvMixer
/// importer then reports what is wrong with it).
pub fn is_mixer(proto: &tract_onnx::pb::ModelProto) -> bool {
    let Some(g) = proto.graph.as_ref() else {
        return false;
    };
    let subtracted: std::collections::HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "Sub")
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    g.node.iter().any(|n| {
        n.op_type == "LayerNormalization"
            || (n.op_type == "ReduceMean"
                && n.output.iter().any(|o| subtracted.contains(o.as_str())))
    })
}

/// Reads an ONNX file (with its external data, if any: [`crate::onnx::load`]) and
/// recognises an MLP-Mixer in it.
pub fn import(path: &std::path::Path) -> Result<Mixer> {
    let proto = crate::onnx::load(path)?;
    import_proto(&proto).with_context(|| format!("{}", path.display()))
}

/// As [`import`], from bytes (a model with external data cannot be read from its bytes
/// alone: that is an error naming the tensor).
pub fn import_bytes(bytes: &[u8]) -> Result<Mixer> {
    if bytes.is_empty() {
        bail!("empty file (not an ONNX model)");
    }
    import_proto(&crate::onnx::parse_model(bytes)?)
}

/// As [`import`], from a parsed model (external data read in).
pub fn import_proto(proto: &tract_onnx::pb::ModelProto) -> Result<Mixer> {
    let (graph, opset) = crate::onnx::graph_and_opset(proto)?;
    let g = Graph::new(graph)?;
    Walker::new(&g).mixer(opset)
}

/// A symbolic batch size in evaluated shape vectors (`Shape` of an activation).
const BATCH: i64 = i64::MIN / 4;
/// Largest element count of a shape vector evaluated at import.
const MAX_SHAPE_LEN: usize = 16;

/// Walks the graph from the input, tracking the shape `[1, a, b]` (batch 1) of the
/// activation it follows.
struct Walker<'a, 'g> {
    g: &'a Graph<'g>,
    producer: HashMap<&'g str, &'g NodeProto>,
    /// Shapes (batch as 1) of the activations walked so far.
    shapes: std::cell::RefCell<HashMap<String, Vec<usize>>>,
}

/// One step of an MLP branch, in order.
#[derive(Debug)]
enum Step {
    Transpose,
    /// A linear layer, and whether it mixes tokens.
    Linear(Linear, bool),
    Act(Activation),
}

impl<'a, 'g> Walker<'a, 'g> {
    fn new(g: &'a Graph<'g>) -> Self {
        let mut producer = HashMap::new();
        for n in g.nodes {
            for o in &n.output {
                producer.insert(o.as_str(), n);
            }
        }
        Walker {
            g,
            producer,
            shapes: Default::default(),
        }
    }

    /// The nodes reading the values of `t` (its `Shape` readers left out: they only feed
    /// shape computations, which [`Walker::ints`] evaluates).
    fn data_users(&self, t: &str) -> Vec<&'g NodeProto> {
        let mut u = self.g.users(t);
        u.retain(|n| n.op_type != "Shape");
        u
    }

    /// The single node reading the values of `t`.
    fn next(&self, t: &str, expected: &str) -> Result<&'g NodeProto> {
        crate::onnx::only_user(self.data_users(t), t, expected)
    }

    fn set_shape(&self, t: &str, s: &[usize]) {
        self.shapes.borrow_mut().insert(t.to_string(), s.to_vec());
    }

    /// The integer vector `name` evaluates to: a constant, or a small shape computation
    /// (`Shape` of a walked activation gives [`BATCH`] for the batch).
    fn ints(&self, name: &str, depth: usize) -> Result<Vec<i64>> {
        if depth > 64 {
            bail!("tensor '{name}': shape computation too deep");
        }
        if let Some(t) = self.g.consts.get(name) {
            return match t.int_values() {
                Some(v) if v.len() <= MAX_SHAPE_LEN => Ok(v),
                _ => bail!("tensor '{name}' is not a small integer vector"),
            };
        }
        let n = self
            .producer
            .get(name)
            .ok_or_else(|| anyhow!("tensor '{name}' is neither a constant nor computed"))?;
        let arg = |i: usize| -> Result<Vec<i64>> {
            let inp = n
                .input
                .get(i)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| anyhow!("{}: missing input {i}", describe(n)))?;
            self.ints(inp, depth + 1)
        };
        let scalar_op = |f: fn(i64, i64) -> Option<i64>| -> Result<Vec<i64>> {
            let (a, b) = (arg(0)?, arg(1)?);
            let len = a.len().max(b.len());
            if !(a.len() == len || a.len() == 1) || !(b.len() == len || b.len() == 1) {
                bail!(
                    "{}: operand lengths {} and {}",
                    describe(n),
                    a.len(),
                    b.len()
                );
            }
            (0..len)
                .map(|i| {
                    let (x, y) = (a[i % a.len()], b[i % b.len()]);
                    if x == BATCH || y == BATCH {
                        bail!("{}: arithmetic on the batch size", describe(n));
                    }
                    f(x, y).ok_or_else(|| {
                        anyhow!("{}: integer overflow or division by zero", describe(n))
                    })
                })
                .collect()
        };
        match n.op_type.as_str() {
            "Shape" => {
                let t = n.input.first().map_or("", |s| s.as_str());
                let mut s: Vec<i64> = if t == self.g.input.name {
                    let (c, h, w) = self.g.input_shape()?;
                    vec![1, c as i64, h as i64, w as i64]
                } else {
                    self.shapes
                        .borrow()
                        .get(t)
                        .ok_or_else(|| {
                            anyhow!("{}: shape of '{t}' is not known here", describe(n))
                        })?
                        .iter()
                        .map(|&d| d as i64)
                        .collect()
                };
                if let Some(b) = s.first_mut() {
                    *b = BATCH;
                }
                let r = s.len() as i64;
                let norm = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = norm(attr_int(n, "start").unwrap_or(0));
                let end = norm(attr_int(n, "end").unwrap_or(r));
                Ok(s.get(start..end.max(start)).unwrap_or_default().to_vec())
            }
            "Constant" | "Identity" | "Cast" | "Unsqueeze" | "Squeeze" | "Floor" => arg(0),
            "Gather" => {
                if attr_int(n, "axis").unwrap_or(0) != 0 {
                    bail!(
                        "{}: Gather on an axis other than 0 in a shape computation",
                        describe(n)
                    );
                }
                let (data, idx) = (arg(0)?, arg(1)?);
                idx.iter()
                    .map(|&i| {
                        let j = if i < 0 { i + data.len() as i64 } else { i };
                        usize::try_from(j)
                            .ok()
                            .and_then(|j| data.get(j).copied())
                            .ok_or_else(|| anyhow!("{}: index {i} out of range", describe(n)))
                    })
                    .collect()
            }
            "Concat" => {
                let mut v = Vec::new();
                for i in 0..n.input.len() {
                    v.extend(arg(i)?);
                }
                if v.len() > MAX_SHAPE_LEN {
                    bail!("{}: shape vector too long", describe(n));
                }
                Ok(v)
            }
            "Slice" => {
                let data = arg(0)?;
                let (starts, ends) = (arg(1)?, arg(2)?);
                let axes = n
                    .input
                    .get(3)
                    .filter(|s| !s.is_empty())
                    .map(|_| arg(3))
                    .transpose()?;
                let steps = n
                    .input
                    .get(4)
                    .filter(|s| !s.is_empty())
                    .map(|_| arg(4))
                    .transpose()?;
                if starts.len() != 1
                    || ends.len() != 1
                    || axes.as_ref().is_some_and(|a| a != &[0])
                    || steps.as_ref().is_some_and(|s| s != &[1])
                {
                    bail!(
                        "{}: only a 1-D slice with step 1 in a shape computation",
                        describe(n)
                    );
                }
                let len = data.len() as i64;
                let c = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
                let (s, e) = (c(starts[0]), c(ends[0]));
                Ok(data.get(s..e.max(s)).unwrap_or_default().to_vec())
            }
            "Div" => scalar_op(|a, b| a.checked_div_euclid(b)),
            "Mul" => scalar_op(|a, b| a.checked_mul(b)),
            "Add" => scalar_op(|a, b| a.checked_add(b)),
            "Sub" => scalar_op(|a, b| a.checked_sub(b)),
            _ => bail!("{}: unsupported op in a shape computation", describe(n)),
        }
    }

    /// The output shape (batch 1) of Reshape node `n` on an input of shape `input`.
    fn reshape(&self, n: &NodeProto, input: &[usize]) -> Result<Vec<usize>> {
        let target = self.ints(n.input.get(1).map_or("", |s| s.as_str()), 0)?;
        let allowzero = attr_int(n, "allowzero").unwrap_or(0) != 0;
        let total: usize = input.iter().product();
        let mut out = Vec::with_capacity(target.len());
        let mut infer = None;
        for (i, &t) in target.iter().enumerate() {
            out.push(match t {
                BATCH if i == 0 => 1,
                -1 if infer.is_none() => {
                    infer = Some(i);
                    1
                }
                0 if !allowzero => *input
                    .get(i)
                    .ok_or_else(|| anyhow!("{}: 0 copies a missing input axis", describe(n)))?,
                t if t > 0 => t as usize,
                _ => bail!(
                    "{}: reshape target {target:?} is not supported",
                    describe(n)
                ),
            });
        }
        let known: usize = out.iter().product();
        if let Some(i) = infer {
            if known == 0 || total % known != 0 {
                bail!(
                    "{}: cannot infer the -1 of {target:?} for {input:?}",
                    describe(n)
                );
            }
            out[i] = total / known;
        }
        if out.iter().product::<usize>() != total {
            bail!(
                "{}: reshape {input:?} to {target:?} changes the element count",
                describe(n)
            );
        }
        if out.first() != Some(&1) {
            bail!(
                "{}: the reshape to {target:?} does not keep the batch axis first",
                describe(n)
            );
        }
        Ok(out)
    }

    fn perm(n: &NodeProto) -> Vec<i64> {
        attr_ints(n, "perm").unwrap_or_default()
    }

    fn mixer(&self, opset: i64) -> Result<Mixer> {
        let (in_c, in_h, in_w) = self.g.input_shape()?;
        if in_c != 1 && in_c != 3 {
            bail!(
                "input '{}' has {in_c} channels (expected 1 or 3)",
                self.g.input.name
            );
        }
        let (embed, patch, mut x) = self.embedding(in_c, in_h, in_w)?;
        let dim = embed.n_out;
        let tokens = (in_h / patch) * (in_w / patch);
        let mut mlps: Vec<(Mlp, bool)> = Vec::new();
        loop {
            // A residual block reads the stream twice: its LayerNorm and its Add. The final
            // LayerNorm is the only reader (the decomposed one reads it twice, no Add).
            if !self.data_users(x).iter().any(|u| u.op_type == "Add") {
                break;
            }
            let (mlp, token, out) = self.residual_mlp(x, tokens, dim)?;
            mlps.push((mlp, token));
            x = out;
        }
        if mlps.len() % 2 != 0 || mlps.iter().enumerate().any(|(i, m)| m.1 != (i % 2 == 0)) {
            let order: Vec<&str> = mlps
                .iter()
                .map(|m| if m.1 { "token" } else { "channel" })
                .collect();
            bail!("the residual MLPs mix {order:?}: expected blocks of a token-mixing MLP then a channel-mixing MLP");
        }
        let mut blocks = Vec::new();
        let mut it = mlps.into_iter();
        while let (Some((token, _)), Some((channel, _))) = (it.next(), it.next()) {
            blocks.push(Block { token, channel });
        }
        if let Some(b) = blocks.first() {
            let (ht, hc) = (b.token.fc1.n_out, b.channel.fc1.n_out);
            for (i, b) in blocks.iter().enumerate() {
                if (b.token.fc1.n_out, b.channel.fc1.n_out) != (ht, hc) {
                    bail!(
                        "block {i}: hidden widths ({}, {}) differ from block 0's ({ht}, {hc})",
                        b.token.fc1.n_out,
                        b.channel.fc1.n_out
                    );
                }
            }
        }
        let users = self.data_users(x);
        let n = users
            .iter()
            .find(|u| matches!(u.op_type.as_str(), "LayerNormalization" | "ReduceMean"))
            .or(users.first())
            .ok_or_else(|| {
                anyhow!("tensor '{x}' is not used, expected the final LayerNorm after it")
            })?;
        let (norm, y) = self.layer_norm(x, n, dim, false)?;
        let head = self.head(y, tokens, dim)?;
        Ok(Mixer {
            in_c,
            in_h,
            in_w,
            patch,
            dim,
            embed,
            blocks,
            norm,
            head,
            opset,
            mean: vec![],
            std: vec![],
        })
    }

    /// The patch embedding; returns it, the patch size and the `[1, T, D]` tensor after it.
    fn embedding(&self, c: usize, h: usize, w: usize) -> Result<(Linear, usize, &'g str)> {
        let input = self.g.input.name.as_str();
        let n = self.next(input, "the patch embedding")?;
        match n.op_type.as_str() {
            "Conv" => self.conv_stem(n, c, h, w),
            "Reshape" => self.rearrange_stem(n, c, h, w),
            _ => bail!("{}: expected the patch embedding (a stride-p Conv, or Reshape → Transpose → Reshape → MatMul)", describe(n)),
        }
    }

    fn conv_stem(
        &self,
        conv: &'g NodeProto,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<(Linear, usize, &'g str)> {
        let wt = self
            .g
            .constant(conv.input.get(1).map_or("", |s| s), "Conv weight")?;
        let [dim, ci, p, p2] = wt.dims.as_slice() else {
            bail!(
                "{}: weight has rank {} (expected 4)",
                describe(conv),
                wt.dims.len()
            );
        };
        let (dim, p) = (*dim, *p);
        let strides = attr_ints(conv, "strides").unwrap_or_default();
        let pads = attr_ints(conv, "pads").unwrap_or(vec![0; 4]);
        let auto = attr(conv, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string());
        if *ci != c
            || p != *p2
            || p == 0
            || dim == 0
            || strides != [p as i64, p as i64]
            || pads.iter().any(|&v| v != 0)
            || !matches!(
                auto.as_deref(),
                None | Some("NOTSET") | Some("VALID") | Some("")
            )
            || attr_int(conv, "group").unwrap_or(1) != 1
            || attr_ints(conv, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
        {
            bail!("{}: the patch embedding must be an unpadded square Conv over {c} channels with stride = kernel (found weights {:?}, strides {strides:?}, pads {pads:?})", describe(conv), wt.dims);
        }
        self.check_grid(h, w, p)?;
        let b = self.bias(conv, 2, dim)?;
        let embed = linear(describe(conv), wt.data.clone(), b, c * p * p, dim)?;
        let (gh, gw) = (h / p, w / p);
        let mut t = conv.output[0].as_str();
        self.set_shape(t, &[1, dim, gh, gw]);
        // Flatten the grid: Reshape to [B, D, T] (or Flatten), then Transpose to [B, T, D].
        let r = self.next(t, "the flatten of the patch grid")?;
        let flat = match r.op_type.as_str() {
            "Reshape" => self.reshape(r, &[1, dim, gh, gw])?,
            "Flatten" if attr_int(r, "axis") == Some(2) => vec![1, dim, gh * gw],
            _ => bail!(
                "{}: expected the flatten of the patch grid (Reshape to [batch, {dim}, {}])",
                describe(r),
                gh * gw
            ),
        };
        if flat != [1, dim, gh * gw] {
            bail!(
                "{}: reshapes the patch grid to {flat:?} (expected [batch, {dim}, {}])",
                describe(r),
                gh * gw
            );
        }
        t = r.output[0].as_str();
        let tr = self.next(t, "the transpose to [batch, tokens, dim]")?;
        if tr.op_type != "Transpose" || Self::perm(tr) != [0, 2, 1] {
            bail!(
                "{}: expected Transpose(perm=[0, 2, 1]) to [batch, tokens, dim]",
                describe(tr)
            );
        }
        let out = tr.output[0].as_str();
        self.set_shape(out, &[1, gh * gw, dim]);
        Ok((embed, p, out))
    }

    /// einops `Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')` + Linear (or any order
    /// of `p1 p2 c`).
    fn rearrange_stem(
        &self,
        r1: &'g NodeProto,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<(Linear, usize, &'g str)> {
        let s6 = self.reshape(r1, &[1, c, h, w])?;
        let [_, c6, gh, p, gw, p2] = s6.as_slice() else {
            bail!(
                "{}: reshapes the image to {s6:?} (expected [batch, C, H/p, p, W/p, p])",
                describe(r1)
            );
        };
        let (gh, p, gw) = (*gh, *p, *gw);
        if *c6 != c || p != *p2 || gh * p != h || gw * p != w {
            bail!(
                "{}: reshapes the image to {s6:?} (expected [batch, {c}, H/p, p, W/p, p])",
                describe(r1)
            );
        }
        self.set_shape(&r1.output[0], &s6);
        let tr = self.next(&r1.output[0], "the patch transpose")?;
        let perm = Self::perm(tr);
        // Output [B, gh, gw, a, b, c'] with {a, b, c'} the channel and the two patch axes.
        let mut inner: Vec<i64> = perm.get(3..).unwrap_or_default().to_vec();
        inner.sort_unstable();
        if tr.op_type != "Transpose"
            || perm.len() != 6
            || perm[..3] != [0, 2, 4]
            || inner != [1, 3, 5]
        {
            bail!("{}: expected the patch Transpose (perm [0, 2, 4, …] with the channel and both patch axes last), found perm {perm:?}", describe(tr));
        }
        let t = tr.output[0].as_str();
        let ts: Vec<usize> = perm.iter().map(|&a| s6[a as usize]).collect();
        self.set_shape(t, &ts);
        let r2 = self.next(t, "the reshape to [batch, tokens, patch]")?;
        if r2.op_type != "Reshape" {
            bail!(
                "{}: expected the Reshape to [batch, tokens, p·p·C]",
                describe(r2)
            );
        }
        let k = p * p * c;
        let s3 = self.reshape(r2, &ts)?;
        if s3 != [1, gh * gw, k] {
            bail!(
                "{}: reshapes the patches to {s3:?} (expected [batch, {}, {k}])",
                describe(r2),
                gh * gw
            );
        }
        let t = r2.output[0].as_str();
        self.set_shape(t, &s3);
        let mm = self.next(t, "the embedding's MatMul")?;
        let (lin, out) = self.matmul(mm, t, k)?;
        // Re-order the patch vector (axes perm[3..] of [B, C, gh, p, gw, p]) to ONNX Conv
        // order [c][ky][kx].
        let sizes = |a: i64| if a == 1 { c } else { p };
        let (a0, a1, a2) = (perm[3], perm[4], perm[5]);
        let mut wc = vec![0f32; lin.w.len()];
        for o in 0..lin.n_out {
            for ci in 0..c {
                for ky in 0..p {
                    for kx in 0..p {
                        let val = |a: i64| match a {
                            1 => ci,
                            3 => ky,
                            _ => kx,
                        };
                        let idx = (val(a0) * sizes(a1) + val(a1)) * sizes(a2) + val(a2);
                        wc[o * k + (ci * p + ky) * p + kx] = lin.w[o * k + idx];
                    }
                }
            }
        }
        self.check_grid(h, w, p)?;
        self.set_shape(out, &[1, gh * gw, lin.n_out]);
        Ok((Linear { w: wc, ..lin }, p, out))
    }

    fn check_grid(&self, h: usize, w: usize, p: usize) -> Result<()> {
        if h % p != 0 || w % p != 0 {
            bail!("input {h}x{w} is not a whole number of {p}x{p} patches");
        }
        Ok(())
    }

    /// Bias input `i` of `n` (`len` values; zeros when absent).
    fn bias(&self, n: &NodeProto, i: usize, len: usize) -> Result<Vec<f32>> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(vec![0.0; len]),
            Some(name) => {
                let t = self.g.constant(name, "bias")?;
                if t.data.len() != len {
                    bail!(
                        "{}: bias has {} values for {len} outputs",
                        describe(n),
                        t.data.len()
                    );
                }
                Ok(t.data.clone())
            }
        }
    }

    /// `MatMul(x, W[k, n]) [+ Add(b)]` on the last axis of `x`; returns the layer and the
    /// tensor after it.
    fn matmul(&self, mm: &'g NodeProto, x: &str, k: usize) -> Result<(Linear, &'g str)> {
        if mm.op_type != "MatMul" || mm.input.first().map(String::as_str) != Some(x) {
            bail!(
                "{}: expected a MatMul of '{x}' by a constant weight",
                describe(mm)
            );
        }
        let wt = self
            .g
            .constant(mm.input.get(1).map_or("", |s| s), "MatMul weight")?;
        let w = linear_weight(wt, false, k, mm)?;
        let n = w.len() / k;
        let mut out = mm.output[0].as_str();
        let mut b = vec![0f32; n];
        if let [add] = self.data_users(out).as_slice() {
            let other = add
                .input
                .iter()
                .find(|i| i.as_str() != out)
                .map_or("", |s| s.as_str());
            if add.op_type == "Add" && add.input.len() == 2 {
                if let Some(t) = self.g.consts.get(other) {
                    if t.data.len() != n || t.dims.iter().rev().skip(1).any(|&d| d != 1) {
                        bail!(
                            "{}: bias of shape {:?} for {n} outputs",
                            describe(add),
                            t.dims
                        );
                    }
                    b = t.data.clone();
                    out = add.output[0].as_str();
                }
            }
        }
        Ok((linear(describe(mm), w, b, k, n)?, out))
    }

    /// A Conv1d with kernel 1 over `[1, a, b]` (channels `a`): mixes axis 1.
    fn conv1d(&self, n: &'g NodeProto, a: usize) -> Result<(Linear, &'g str)> {
        let wt = self
            .g
            .constant(n.input.get(1).map_or("", |s| s), "Conv weight")?;
        let ok_attrs = attr_ints(n, "kernel_shape").is_none_or(|k| k == [1])
            && attr_ints(n, "strides").is_none_or(|s| s == [1])
            && attr_ints(n, "pads").is_none_or(|p| p.iter().all(|&v| v == 0))
            && attr_ints(n, "dilations").is_none_or(|d| d == [1])
            && attr_int(n, "group").unwrap_or(1) == 1;
        let [m, i, 1] = wt.dims.as_slice() else {
            bail!(
                "{}: expected a kernel-1 Conv1d (weights [out, in, 1]), found weights {:?}",
                describe(n),
                wt.dims
            );
        };
        if !ok_attrs || *i != a {
            bail!("{}: expected a kernel-1, stride-1, unpadded Conv1d over {a} channels (weights {:?})", describe(n), wt.dims);
        }
        let b = self.bias(n, 2, *m)?;
        Ok((
            linear(describe(n), wt.data.clone(), b, a, *m)?,
            n.output[0].as_str(),
        ))
    }

    /// `x + MLP(LN(x))` starting at the residual stream `x` (`[1, T, D]`); returns the MLP,
    /// whether it mixes tokens, and the sum.
    fn residual_mlp(&self, x: &'g str, tokens: usize, dim: usize) -> Result<(Mlp, bool, &'g str)> {
        let users = self.data_users(x);
        let ln_start = users
            .iter()
            .find(|u| u.op_type == "LayerNormalization" || u.op_type == "ReduceMean")
            .ok_or_else(|| {
                anyhow!(
                    "tensor '{x}' feeds {}: expected a LayerNorm and the residual Add",
                    users
                        .iter()
                        .map(|u| describe(u))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        let (norm, y) = self.layer_norm(x, ln_start, dim, true)?;
        // The branch, step by step, until it meets the residual Add.
        let mut steps = Vec::new();
        let (mut cur, mut shape, mut transposed) = (y, [tokens, dim], false);
        let add = loop {
            let n = self.g.activation_start(cur)?;
            match n.op_type.as_str() {
                "Add"
                    if n.input.len() == 2
                        && n.input.iter().any(|i| i == x)
                        && n.input.iter().any(|i| i == cur) =>
                {
                    break n
                }
                "Transpose" => {
                    if Self::perm(n) != [0, 2, 1] {
                        bail!(
                            "{}: perm {:?} (expected [0, 2, 1])",
                            describe(n),
                            Self::perm(n)
                        );
                    }
                    steps.push(Step::Transpose);
                    shape = [shape[1], shape[0]];
                    transposed = !transposed;
                    cur = n.output[0].as_str();
                }
                "MatMul" => {
                    let (l, out) = self.matmul(n, cur, shape[1])?;
                    shape[1] = l.n_out;
                    steps.push(Step::Linear(l, transposed));
                    cur = out;
                }
                "Conv" => {
                    let (l, out) = self.conv1d(n, shape[0])?;
                    shape[0] = l.n_out;
                    steps.push(Step::Linear(l, !transposed));
                    cur = out;
                }
                _ => {
                    let (act, out) = self.g.activation(cur, n)?;
                    steps.push(Step::Act(act));
                    cur = out;
                }
            }
            self.set_shape(cur, &[1, shape[0], shape[1]]);
            if steps.len() > 8 {
                bail!("tensor '{y}': the MLP after this LayerNorm does not return to the residual Add within 8 steps");
            }
        };
        if transposed || shape != [tokens, dim] {
            bail!(
                "{}: adds a [{}, {}] branch to the [{tokens}, {dim}] residual stream",
                describe(add),
                shape[0],
                shape[1]
            );
        }
        let lin: Vec<&Step> = steps
            .iter()
            .filter(|s| !matches!(s, Step::Transpose))
            .collect();
        let (fc1, act, fc2, token) = match lin.as_slice() {
            [Step::Linear(a, ta), Step::Act(act), Step::Linear(b, tb)] if ta == tb => (a.clone(), *act, b.clone(), *ta),
            _ => bail!("{}: the residual branch from '{y}' is {:?}; expected linear → activation → linear mixing one axis", describe(add), steps.iter().map(|s| match s { Step::Transpose => "Transpose", Step::Linear(_, true) => "linear(tokens)", Step::Linear(_, false) => "linear(channels)", Step::Act(_) => "activation" }).collect::<Vec<_>>()),
        };
        let out = add.output[0].as_str();
        self.set_shape(out, &[1, tokens, dim]);
        Ok((
            Mlp {
                norm,
                fc1,
                act,
                fc2,
            },
            token,
            out,
        ))
    }

    /// A LayerNorm of `x` over its last axis (`dim` channels) starting at node `n`: the
    /// LayerNormalization op, or the decomposed form. Returns it and its output. `x` must
    /// have no other reader than the LayerNorm and, where `residual`, one Add.
    fn layer_norm(
        &self,
        x: &'g str,
        n: &'g NodeProto,
        dim: usize,
        residual: bool,
    ) -> Result<(Ln, &'g str)> {
        let readers = self.data_users(x);
        let want = usize::from(n.op_type != "LayerNormalization") + 1 + usize::from(residual);
        if readers.len() != want {
            bail!(
                "tensor '{x}' feeds {} ({}); expected only {}",
                readers.len(),
                readers
                    .iter()
                    .map(|u| describe(u))
                    .collect::<Vec<_>>()
                    .join(", "),
                if residual {
                    "a LayerNorm and the residual Add"
                } else {
                    "the final LayerNorm"
                }
            );
        }
        let last_axis = |a: i64| a == -1 || a == 2;
        let vec_of = |name: &str, what: &str| -> Result<Vec<f32>> {
            let t = self.g.constant(name, what)?;
            if t.data.len() != dim {
                bail!(
                    "LayerNorm {what} '{name}' has {} values for {dim} channels",
                    t.data.len()
                );
            }
            let v = t.data.clone();
            check_finite(&format!("LayerNorm {what} '{name}'"), &v)?;
            Ok(v)
        };
        let ln = match n.op_type.as_str() {
            "LayerNormalization" => {
                if !last_axis(attr_int(n, "axis").unwrap_or(-1)) {
                    bail!(
                        "{}: normalises axis {:?} (expected the channel axis, -1)",
                        describe(n),
                        attr_int(n, "axis")
                    );
                }
                let gamma = match n.input.get(1).filter(|s| !s.is_empty()) {
                    Some(g) => vec_of(g, "scale")?,
                    None => vec![1.0; dim],
                };
                let beta = match n.input.get(2).filter(|s| !s.is_empty()) {
                    Some(b) => vec_of(b, "bias")?,
                    None => vec![0.0; dim],
                };
                let eps = attr(n, "epsilon").map_or(1e-5, |a| a.f);
                (Ln { gamma, beta, eps }, n.output[0].as_str())
            }
            "ReduceMean" => self.decomposed_ln(x, n, dim, &vec_of)?,
            _ => bail!("{}: expected a LayerNorm of '{x}'", describe(n)),
        };
        if !(ln.0.eps.is_finite() && ln.0.eps >= 0.0) {
            bail!(
                "{}: epsilon {} is not a finite value ≥ 0",
                describe(n),
                ln.0.eps
            );
        }
        let shape = self.shapes.borrow().get(x).cloned().unwrap_or_default();
        self.set_shape(ln.1, &shape);
        Ok(ln)
    }

    /// The axes of ReduceMean `n` (attribute before opset 18, input after).
    fn reduce_axes(&self, n: &NodeProto) -> Result<Vec<i64>> {
        Ok(match attr_ints(n, "axes") {
            Some(a) => a,
            None => match n.input.get(1).filter(|s| !s.is_empty()) {
                Some(a) => self.ints(a, 0)?,
                None => vec![],
            },
        })
    }

    /// `ReduceMean(x) → Sub(x, ·) → Pow(·, 2) → ReduceMean → Add(ε) → Sqrt → Div(d, ·)
    /// [→ Mul(γ)] [→ Add(β)]`, as the TorchScript exporter writes LayerNorm before opset 17.
    fn decomposed_ln(
        &self,
        x: &'g str,
        mean: &'g NodeProto,
        dim: usize,
        vec_of: &dyn Fn(&str, &str) -> Result<Vec<f32>>,
    ) -> Result<(Ln, &'g str)> {
        let bad = |n: &NodeProto, what: &str| {
            anyhow!(
                "{}: expected {what} of the decomposed LayerNorm of '{x}'",
                describe(n)
            )
        };
        let over_channels = |n: &NodeProto| -> Result<bool> {
            Ok(matches!(self.reduce_axes(n)?.as_slice(), [-1] | [2])
                && attr_int(n, "keepdims").unwrap_or(1) == 1)
        };
        if !over_channels(mean)? {
            bail!("{}: ReduceMean of '{x}' over axes {:?} (a decomposed LayerNorm needs the channel axis, kept)", describe(mean), self.reduce_axes(mean)?);
        }
        let m = mean.output[0].as_str();
        let sub = self.next(m, "the Sub of the decomposed LayerNorm")?;
        if sub.op_type != "Sub"
            || sub.input.first().map(String::as_str) != Some(x)
            || sub.input.get(1).map(String::as_str) != Some(m)
        {
            return Err(bad(sub, "Sub(x, mean)"));
        }
        let d = sub.output[0].as_str();
        let users = self.data_users(d);
        let (pow, div) = match users.as_slice() {
            [a, b] if a.op_type == "Div" => (*b, *a),
            [a, b] => (*a, *b),
            _ => bail!("tensor '{d}' (x − mean) feeds {} nodes; expected the square and the division of a LayerNorm", users.len()),
        };
        let squares = match pow.op_type.as_str() {
            "Pow" => {
                self.ints(pow.input.get(1).map_or("", |s| s), 0).ok() == Some(vec![2])
                    && pow.input[0] == d
            }
            "Mul" => pow.input.len() == 2 && pow.input.iter().all(|i| i == d),
            _ => false,
        };
        if !squares {
            return Err(bad(pow, "the square (Pow(d, 2)) of x − mean"));
        }
        let var = self.next(&pow.output[0], "the variance ReduceMean")?;
        if var.op_type != "ReduceMean" || !over_channels(var)? {
            return Err(bad(var, "the variance ReduceMean over channels"));
        }
        let add = self.next(&var.output[0], "the Add of ε")?;
        let eps_name = add
            .input
            .iter()
            .find(|i| **i != var.output[0])
            .map_or("", |s| s.as_str());
        let eps = match (add.op_type.as_str(), self.g.consts.get(eps_name)) {
            ("Add", Some(t)) if t.data.len() == 1 => t.data[0],
            _ => return Err(bad(add, "Add(variance, ε)")),
        };
        let sqrt = self.next(&add.output[0], "the Sqrt")?;
        if sqrt.op_type != "Sqrt" {
            return Err(bad(sqrt, "the Sqrt"));
        }
        if div.op_type != "Div"
            || div.input.first().map(String::as_str) != Some(d)
            || div.input.get(1) != sqrt.output.first()
        {
            return Err(bad(div, "Div(x − mean, √(var + ε))"));
        }
        let mut out = div.output[0].as_str();
        let (mut gamma, mut beta) = (vec![1.0; dim], vec![0.0; dim]);
        // The affine: Mul by γ, then Add β (each optional), both constants per channel.
        let affine_operand = |n: &NodeProto, t: &str| -> Option<String> {
            let other = n.input.iter().find(|i| i.as_str() != t)?;
            (n.input.len() == 2
                && self
                    .g
                    .consts
                    .get(other.as_str())
                    .is_some_and(|c| c.data.len() == dim))
            .then(|| other.clone())
        };
        if let [mul] = self.data_users(out).as_slice() {
            if mul.op_type == "Mul" {
                if let Some(g) = affine_operand(mul, out) {
                    gamma = vec_of(&g, "scale")?;
                    out = mul.output[0].as_str();
                }
            }
        }
        if let [add] = self.data_users(out).as_slice() {
            if add.op_type == "Add" && !add.input.iter().any(|i| i == x) {
                if let Some(b) = affine_operand(add, out) {
                    beta = vec_of(&b, "bias")?;
                    out = add.output[0].as_str();
                }
            }
        }
        Ok((Ln { gamma, beta, eps }, out))
    }

    /// `[Transpose] → ReduceMean(tokens) → [Squeeze | Reshape | Flatten] → Gemm | MatMul [+ Add]`
    /// from the final LayerNorm's output `y` (`[1, T, D]`) to the graph output.
    fn head(&self, y: &'g str, tokens: usize, dim: usize) -> Result<Linear> {
        let mut n = self.next(y, "the mean over tokens")?;
        let mut token_axis = 1;
        if n.op_type == "Transpose" {
            if Self::perm(n) != [0, 2, 1] {
                bail!(
                    "{}: perm {:?} (expected [0, 2, 1])",
                    describe(n),
                    Self::perm(n)
                );
            }
            token_axis = 2;
            n = self.next(&n.output[0], "the mean over tokens")?;
        }
        if n.op_type != "ReduceMean" {
            bail!("{}: expected the mean over the {tokens} tokens (ReduceMean) after the final LayerNorm", describe(n));
        }
        let axes: Vec<i64> = self
            .reduce_axes(n)?
            .iter()
            .map(|&a| if a < 0 { a + 3 } else { a })
            .collect();
        if axes != [token_axis] {
            bail!(
                "{}: ReduceMean over axes {:?} (expected the token axis {token_axis})",
                describe(n),
                self.reduce_axes(n)?
            );
        }
        let mut cur = n.output[0].as_str();
        let mut n = self.next(cur, "the classifier")?;
        while matches!(n.op_type.as_str(), "Flatten" | "Reshape" | "Squeeze") {
            cur = n.output[0].as_str();
            n = self.next(cur, "the classifier")?;
        }
        let (lin, out) = match n.op_type.as_str() {
            "Gemm" => {
                if attr_int(n, "transA").unwrap_or(0) != 0 {
                    bail!("{}: transA is not supported", describe(n));
                }
                let alpha = f64::from(attr(n, "alpha").map_or(1.0, |a| a.f));
                let beta = attr(n, "beta").map_or(1.0, |a| a.f);
                let trans_b = attr_int(n, "transB").unwrap_or(0) != 0;
                let wt = self
                    .g
                    .constant(n.input.get(1).map_or("", |s| s), "Gemm weight")?;
                let w = linear_weight(wt, trans_b, dim, n)?;
                let classes = w.len() / dim;
                let b = self.bias(n, 2, classes)?.iter().map(|v| v * beta).collect();
                let w = w.iter().map(|&v| (f64::from(v) * alpha) as f32).collect();
                (
                    linear(describe(n), w, b, dim, classes)?,
                    n.output[0].as_str(),
                )
            }
            "MatMul" => self.matmul(n, cur, dim)?,
            _ => bail!("{}: expected the classifier (Gemm or MatMul)", describe(n)),
        };
        if !self.g.outputs.contains(&out) {
            bail!("tensor '{out}' after the classifier is not the graph output (expected nothing after the head)");
        }
        Ok(lin)
    }
}

fn linear(name: String, w: Vec<f32>, b: Vec<f32>, n_in: usize, n_out: usize) -> Result<Linear> {
    if n_in == 0 || n_out == 0 || w.len() != n_in * n_out || b.len() != n_out {
        bail!(
            "{name}: weights of {} values, bias of {} for {n_in} → {n_out}",
            w.len(),
            b.len()
        );
    }
    check_finite(&format!("{name}: weight"), &w)?;
    check_finite(&format!("{name}: bias"), &b)?;
    Ok(Linear { w, b, n_in, n_out })
}

// ----------------------------------------------------------------------------------------
// Float forward passes (f64)

fn layer_norm(x: &[f64], ln: &Ln, out: &mut [f64]) {
    let d = x.len() as f64;
    let mean = x.iter().sum::<f64>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d;
    let r = 1.0 / (var + f64::from(ln.eps)).sqrt();
    for (c, (o, v)) in out.iter_mut().zip(x).enumerate() {
        *o = (v - mean) * r * f64::from(ln.gamma[c]) + f64::from(ln.beta[c]);
    }
}

/// `out (rows × n_out) = x (rows × n_in) · Wᵀ + b` in f64 (the weights widened once per
/// call), on the GEMM of [`crate::forward::gemm_bt`].
fn apply(l: &Linear, x: &[f64], rows: usize, out: &mut [f64]) {
    let w: Vec<f64> = l.w.iter().map(|&v| f64::from(v)).collect();
    crate::forward::gemm_bt(x, &w, rows, l.n_in, l.n_out, out);
    for row in out.chunks_exact_mut(l.n_out).take(rows) {
        for (o, b) in row.iter_mut().zip(&l.b) {
            *o += f64::from(*b);
        }
    }
}

/// What [`forward_with`] shows its observer: a value of blob layer `layer` (see
/// [`Mixer::layer_name`]).
#[derive(Clone, Copy, Debug)]
pub enum Seen {
    /// The residual stream after layer `layer` (the embedding or an fc2) added into it.
    Stream(f64),
    /// A LayerNorm's output.
    Norm(f64),
    /// An fc1's pre-activation and activation.
    Hidden(f64, f64),
    /// An fc2's or the embedding's output (before it is added into the stream).
    Branch(f64),
}

/// The logits of `m` for `x`, observing every intermediate value. `x` is the embedding's
/// input: the normalised NCHW float image for an imported model, raw HWC pixels (as f64)
/// for a folded one (one with its normalisation folded in, [`fold`]).
pub fn forward_with(m: &Mixer, x: &[f64], mut see: impl FnMut(usize, Seen)) -> Vec<f64> {
    let folded = !m.mean.is_empty();
    let (t, d, p, c) = (m.tokens(), m.dim, m.patch, m.in_c);
    let gw = m.in_w / p;
    let k = c * p * p;
    let mut patches = vec![0f64; t * k];
    for (tok, patch) in patches.chunks_exact_mut(k.max(1)).enumerate() {
        let (ty, tx) = (tok / gw, tok % gw);
        for ci in 0..c {
            for ky in 0..p {
                for kx in 0..p {
                    let (yy, xx) = (ty * p + ky, tx * p + kx);
                    if folded {
                        patch[(ky * p + kx) * c + ci] = x[(yy * m.in_w + xx) * c + ci];
                    } else {
                        patch[(ci * p + ky) * p + kx] = x[(ci * m.in_h + yy) * m.in_w + xx];
                    }
                }
            }
        }
    }
    let mut s = vec![0f64; t * d];
    apply(&m.embed, &patches, t, &mut s);
    for v in &s {
        see(0, Seen::Branch(*v));
        see(0, Seen::Stream(*v));
    }
    let mut y = vec![0f64; t * d];
    for (bi, b) in m.blocks.iter().enumerate() {
        for (j, mlp) in [&b.token, &b.channel].into_iter().enumerate() {
            let base = 1 + 6 * bi + 3 * j;
            for (row, out) in s.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
                layer_norm(row, &mlp.norm, out);
            }
            y.iter().for_each(|v| see(base, Seen::Norm(*v)));
            // Rows: channels for the token MLP (the transposed LayerNorm output), tokens
            // for the channel MLP.
            let (rows, n) = if j == 0 { (d, t) } else { (t, d) };
            let xin: Vec<f64> = if j == 0 {
                (0..d)
                    .flat_map(|r| (0..t).map(move |i| (r, i)))
                    .map(|(r, i)| y[i * d + r])
                    .collect()
            } else {
                y.clone()
            };
            let hidden = mlp.fc1.n_out;
            let mut h = vec![0f64; rows * hidden];
            apply(&mlp.fc1, &xin, rows, &mut h);
            for v in h.iter_mut() {
                let a = match mlp.act {
                    Activation::Relu => v.max(0.0),
                    act => crate::quant::gelu(act, *v),
                };
                see(base + 1, Seen::Hidden(*v, a));
                *v = a;
            }
            let mut o = vec![0f64; rows * n];
            apply(&mlp.fc2, &h, rows, &mut o);
            for (r, orow) in o.chunks_exact(n).enumerate() {
                for (i, v) in orow.iter().enumerate() {
                    see(base + 2, Seen::Branch(*v));
                    s[if j == 0 { i * d + r } else { r * d + i }] += v;
                }
            }
            s.iter().for_each(|v| see(base + 2, Seen::Stream(*v)));
        }
    }
    let fl = 1 + 6 * m.blocks.len();
    for (row, out) in s.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        layer_norm(row, &m.norm, out);
    }
    y.iter().for_each(|v| see(fl, Seen::Norm(*v)));
    let mean: Vec<f64> = (0..d)
        .map(|ch| (0..t).map(|tok| y[tok * d + ch]).sum::<f64>() / t as f64)
        .collect();
    let mut logits = vec![0f64; m.classes()];
    apply(&m.head, &mean, 1, &mut logits);
    logits
}

/// The logits of an imported (unfolded) model for a normalised NCHW image.
pub fn forward(m: &Mixer, nchw: &[f32]) -> Vec<f32> {
    let x: Vec<f64> = nchw.iter().map(|&v| f64::from(v)).collect();
    forward_with(m, &x, |_, _| {})
        .iter()
        .map(|&v| v as f32)
        .collect()
}

/// The logits of a folded model for raw HWC pixels.
pub fn forward_pixels(m: &Mixer, px: &[u8]) -> Vec<f32> {
    let x: Vec<f64> = px.iter().map(|&v| f64::from(v)).collect();
    forward_with(m, &x, |_, _| {})
        .iter()
        .map(|&v| v as f32)
        .collect()
}

// ----------------------------------------------------------------------------------------
// Fold

/// Folds the channel-mixing and final LayerNorms' affines into the next linear layer and
/// the input normalisation (`mean`, `std` per input channel, 0..1 pixel scale; empty for
/// none) into the embedding, which then takes raw pixels in the runtime's patch order. The
/// token-mixing LayerNorms keep their affine (module docs). f64 arithmetic, rounded once.
pub fn fold(m: &Mixer, mean: &[f32], std: &[f32]) -> Result<Mixer> {
    if !m.mean.is_empty() {
        bail!("internal: the model is folded already");
    }
    let c = m.in_c;
    let (mean, std) = crate::fold::normalisation(mean, std, c)?;
    let d = m.dim;
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let mut eb = f64s(&m.embed.b);
    let ew = crate::fold::embed_in_pixels(&f64s(&m.embed.w), &mut eb, (d, c, m.patch), &mean, &std);
    let (ew, eb) = (f32s(&ew), f32s(&eb));
    let identity = |ln: &Ln| Ln {
        gamma: vec![1.0; d],
        beta: vec![0.0; d],
        eps: ln.eps,
    };
    // W·(γ⊙n + β) + b = (W·diag γ)·n + (W·β + b): `l` reads the LayerNorm's channels.
    let fold_into = |ln: &Ln, l: &Linear| -> Linear {
        let mut w = l.w.clone();
        let mut b = l.b.clone();
        for o in 0..l.n_out {
            let mut acc = f64::from(l.b[o]);
            for i in 0..l.n_in {
                let v = f64::from(l.w[o * l.n_in + i]);
                w[o * l.n_in + i] = (v * f64::from(ln.gamma[i])) as f32;
                acc += v * f64::from(ln.beta[i]);
            }
            b[o] = acc as f32;
        }
        Linear { w, b, ..l.clone() }
    };
    let blocks = m
        .blocks
        .iter()
        .map(|b| Block {
            token: b.token.clone(),
            channel: Mlp {
                norm: identity(&b.channel.norm),
                fc1: fold_into(&b.channel.norm, &b.channel.fc1),
                ..b.channel.clone()
            },
        })
        .collect();
    let f = Mixer {
        embed: Linear {
            w: ew,
            b: eb,
            ..m.embed.clone()
        },
        blocks,
        norm: identity(&m.norm),
        head: fold_into(&m.norm, &m.head),
        mean,
        std,
        ..m.clone()
    };
    let all = std::iter::once(&f.embed)
        .chain(
            f.blocks
                .iter()
                .flat_map(|b| [&b.token.fc1, &b.token.fc2, &b.channel.fc1, &b.channel.fc2]),
        )
        .chain(std::iter::once(&f.head));
    for l in all {
        if l.w.iter().chain(&l.b).any(|v| !v.is_finite()) {
            bail!("folding the LayerNorm affine or the input normalisation gives a non-finite parameter");
        }
    }
    Ok(f)
}

// ----------------------------------------------------------------------------------------
// Calibration

/// The ranges of one folded model over a calibration set, per blob layer.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// The residual stream, over all layers.
    pub stream: Range,
    /// Per layer: LayerNorm output, fc1 pre-activation, fc2/embedding output.
    pub out: Vec<Range>,
    /// Per layer: fc1 activation output.
    pub act: Vec<Range>,
}

impl Stats {
    /// The union of both ranges, tensor by tensor.
    fn merge(mut self, o: Stats) -> Stats {
        self.stream.merge(&o.stream);
        for (a, b) in self.out.iter_mut().zip(&o.out) {
            a.merge(b);
        }
        for (a, b) in self.act.iter_mut().zip(&o.act) {
            a.merge(b);
        }
        self
    }
}

/// Min/max of every tensor the int8 blob quantises, over `images` (raw HWC pixels), in
/// parallel over the images ([`crate::par`]).
pub fn calibrate<I: AsRef<[u8]> + Sync>(
    f: &Mixer,
    images: &[I],
    progress: &(dyn Fn() + Sync),
) -> Stats {
    let layers = 3 + 6 * f.blocks.len();
    let empty = Stats {
        stream: Range::default(),
        out: vec![Range::default(); layers],
        act: vec![Range::default(); layers],
    };
    let one = |img: &I| {
        let mut s = empty.clone();
        let x: Vec<f64> = img.as_ref().iter().map(|&v| f64::from(v)).collect();
        forward_with(f, &x, |l, seen| match seen {
            Seen::Stream(v) => s.stream.add(v as f32),
            Seen::Norm(v) | Seen::Branch(v) => s.out[l].add(v as f32),
            Seen::Hidden(pre, a) => {
                s.out[l].add(pre as f32);
                s.act[l].add(a as f32);
            }
        });
        s
    };
    crate::par::map_fold(images, empty.clone(), one, Stats::merge, progress)
}

// ----------------------------------------------------------------------------------------
// Lowering to the int8 blob

/// The int8 blob of folded model `f` with calibrated ranges `s` (`labels`: empty or one
/// per class).
pub fn lower(f: &Mixer, s: &Stats, labels: &[String]) -> Result<Vec<u8>> {
    let (ht, hc) = f.hidden();
    if f.blocks.is_empty() {
        bail!("the MLP-Mixer has no blocks (depth 0)");
    }
    let act = f.blocks[0].token.act;
    if f.blocks
        .iter()
        .any(|b| b.token.act != act || b.channel.act != act)
    {
        bail!("the MLPs use different activations (one activation per model)");
    }
    let h = Header {
        arch: Arch::MlpMixer,
        precision: Precision::Int8,
        activation: act,
        in_c: u8_of(f.in_c, "input channels")?,
        patch: u8_of(f.patch, "patch size")?,
        in_h: u16_of(f.in_h, "input height")?,
        in_w: u16_of(f.in_w, "input width")?,
        dim: u16_of(f.dim, "dim")?,
        depth: u16_of(f.blocks.len(), "depth")?,
        kernel: 0,
        pad_top: 0,
        pad_left: 0,
        gap_frac_bits: gap_frac_bits(f.dim),
        classes: u16_of(f.classes(), "classes")?,
        f16_layers: LayerMask::default(),
        token_hidden: u16_of(ht, "token hidden width")?,
        channel_hidden: u16_of(hc, "channel hidden width")?,
    };
    u16_of(f.tokens(), "tokens")?;
    let mut w = Writer::new(h);
    crate::quant::push_norm_and_labels(&mut w, &f.mean, &f.std, labels, f.classes())?;

    // The residual stream: int16, zero point 0, one scale.
    let (lo, hi) = s.stream.with_zero();
    let s_x = f64::from(lo.abs().max(hi)).max(1e-6) / 32767.0;
    let err = |l: usize| move |e: anyhow::Error| anyhow!("{}: {e}", f.layer_name(l));
    // The embedding reads pixel − 128 (scale 1 in pixel units, zero point −128).
    let embed_out = gemm(&mut w, 0, &f.embed, (1.0, -128), &s.out[0], None).map_err(err(0))?;
    res_add(&mut w, 0, embed_out, s_x).map_err(err(0))?;
    let mut l = 1;
    for b in &f.blocks {
        for mlp in [&b.token, &b.channel] {
            let q_ln = norm_layer(&mut w, l, &mlp.norm, s_x, &s.out[l], f.dim).map_err(err(l))?;
            let q_h = gemm(
                &mut w,
                l + 1,
                &mlp.fc1,
                q_ln,
                &s.out[l + 1],
                Some((mlp.act, &s.act[l + 1])),
            )
            .map_err(err(l + 1))?;
            let q_o =
                gemm(&mut w, l + 2, &mlp.fc2, q_h, &s.out[l + 2], None).map_err(err(l + 2))?;
            res_add(&mut w, l + 2, q_o, s_x).map_err(err(l + 2))?;
            l += 3;
        }
    }
    let (s_y, zp_y) = norm_layer(&mut w, l, &f.norm, s_x, &s.out[l], f.dim).map_err(err(l))?;
    // The head as ConvMixer's, its input with one scale for every channel.
    let s_y = vec![s_y; f.dim];
    crate::quant::push_int8_head(
        &mut w,
        l + 1,
        &f.head.w,
        &f.head.b,
        &s_y,
        zp_y,
        h.gap_frac_bits,
    )?;
    w.finish()
}

/// Writes one int8 GEMM layer (WEIGHTS, BIAS, REQUANT, QPARAMS, TABLE) reading an int8
/// tensor quantised as `(scale, zero point)` `q_in`; returns its output's quantisation.
/// With `act` (fc1) the activation is read from a table over the pre-activation range
/// `pre` and the output covers the activation range; without (embedding, fc2) the output
/// covers `pre` through the identity table.
fn gemm(
    w: &mut Writer,
    layer: usize,
    l: &Linear,
    q_in: (f64, i32),
    pre: &Range,
    act: Option<(Activation, &Range)>,
) -> Result<(f64, i32)> {
    let (s_in, zp_in) = q_in;
    let (k, n) = (l.n_in, l.n_out);
    let (lo, hi) = pre.with_zero();
    let table = act.map(|(a, _)| GeluTable::new(a, lo, hi));
    // Output quantisation and the table's input grid.
    let (s_z, zp_z, s_out, zp_out) = match (&table, act) {
        (Some(t), Some((_, r))) => {
            let (alo, ahi) = r.with_zero();
            let (s, zp) = asym(alo, ahi);
            (t.s_z, t.zp_z, s, zp)
        }
        _ => {
            let (s, zp) = asym(lo, hi);
            (s, zp, s, zp)
        }
    };
    let mut wq = vec![0i8; n * k];
    let mut bias = vec![0i32; n];
    let mut rq: Vec<[i32; 6]> = Vec::with_capacity(n);
    for o in 0..n {
        let row: Vec<f64> = (0..k).map(|i| f64::from(l.w[o * k + i]) * s_in).collect();
        let max = row.iter().fold(0f64, |m, v| m.max(v.abs()));
        let s_w = if max > 0.0 { max / 127.0 } else { 1.0 };
        let mut sum_w = 0i64;
        let mut sum_abs = 0i64;
        for (i, v) in row.iter().enumerate() {
            let q = (v / s_w).round().clamp(-127.0, 127.0) as i8;
            wq[o * k + i] = q;
            sum_w += i64::from(q);
            sum_abs += i64::from(q).abs();
        }
        // The stored bias absorbs the input zero point: the kernels multiply raw int8.
        let bq = (f64::from(l.b[o]) / s_w).round() - f64::from(zp_in) * sum_w as f64;
        if bq.abs() + 128.0 * sum_abs as f64 >= 2f64.powi(31) {
            bail!(
                "output {o}: the int32 accumulator could overflow (|bias| {:.3e}, 128·Σ|w| {})",
                bq.abs(),
                128 * sum_abs
            );
        }
        let (m_pre, sh_pre) = multiplier(s_w / s_z)?;
        let post = match &table {
            Some(t) => {
                let (m_post, b_post, sh_post, _) = post_params(t.s_a / s_out, 0.0, 0.0)?;
                [m_post, b_post, sh_post]
            }
            None => [1, 0, 0],
        };
        bias[o] = bq as i32;
        rq.push([m_pre, sh_pre, post[0], post[1], post[2], 0]);
    }
    let table_bytes = match &table {
        Some(t) => t.bytes(),
        None => identity_table(zp_out),
    };
    let packed = crate::quant::pack_gemm(&wq, n, k);
    crate::quant::push_int8_layer(
        w,
        layer,
        packed,
        &bias,
        &rq,
        [zp_in, zp_z, zp_out, 0],
        table_bytes,
    )?;
    Ok((s_out, zp_out))
}

/// The identity TABLE of a layer whose output zero point is `zp` (and whose table index
/// is its output): `TABLE[z + 128] = z − zp`, so that `zp + TABLE[z + 128] = z`.
fn identity_table(zp: i32) -> Vec<u8> {
    let entries: Vec<i16> = (-128..128).map(|z: i32| (z - zp) as i16).collect();
    crate::quant::table_bytes(&entries)
}

/// The RES_ADD of `layer`, whose int8 output `(scale, zp)` is added into the stream of
/// scale `s_x`: `(q − zp)·m / 2^sh` stream steps with `m / 2^sh ≈ scale / s_x`.
fn res_add(w: &mut Writer, layer: usize, q: (f64, i32), s_x: f64) -> Result<()> {
    let r = q.0 / s_x;
    let Some(sh) = (0..=mixer_limits::RES_SH_MAX)
        .rev()
        .find(|&sh| (r * 2f64.powi(sh)).round() <= f64::from(mixer_limits::RES_M_MAX))
    else {
        bail!("its output step is {r:.3e} residual steps (too coarse for the residual add)");
    };
    let m = (r * 2f64.powi(sh)).round() as i32;
    w.push(SectionKind::ResAdd, layer, i32_bytes(&[m, sh, 0, 0]))
}

/// Writes a LAYER_NORM section: the stream (scale `s_x`) normalised per token, then `ln`'s
/// affine, into int8 covering `out`. Returns the output's `(scale, zero point)`.
fn norm_layer(
    w: &mut Writer,
    layer: usize,
    ln: &Ln,
    s_x: f64,
    out: &Range,
    dim: usize,
) -> Result<(f64, i32)> {
    let (lo, hi) = out.with_zero();
    let (s_y, zp) = asym(lo, hi);
    // `V` is dim²·var in stream steps², so ε enters as ε·dim²/s_x².
    let eps = (f64::from(ln.eps) * (dim * dim) as f64 / (s_x * s_x)).round();
    if eps > mixer_limits::LN_EPS_MAX as f64 {
        bail!(
            "epsilon {} is too large for the residual scale {s_x:.3e}",
            ln.eps
        );
    }
    // y = zp + rshr(z·mul + off, shift) with z = 2^16·n: mul = γ/s_y·2^(shift−16),
    // off = β/s_y·2^shift; the finest shift that keeps |mul| < 2^30, |off| ≤ LN_B_MAX.
    let fits = |sh: i32| {
        (0..dim).all(|c| {
            let m = (f64::from(ln.gamma[c]) / s_y * 2f64.powi(sh - 16))
                .round()
                .abs();
            let o = (f64::from(ln.beta[c]) / s_y * 2f64.powi(sh)).round().abs();
            m < 2f64.powi(30) && o <= mixer_limits::LN_B_MAX as f64
        })
    };
    let Some(shift) = (0..=46).rev().find(|&sh| fits(sh)) else {
        bail!("the LayerNorm affine does not fit the fixed point (γ/β too large for the output range)");
    };
    let mut b = Vec::with_capacity(16 + 12 * dim);
    b.extend_from_slice(&(eps as u64).to_le_bytes());
    b.extend_from_slice(&shift.to_le_bytes());
    b.extend_from_slice(&zp.to_le_bytes());
    for c in 0..dim {
        let m = (f64::from(ln.gamma[c]) / s_y * 2f64.powi(shift - 16)).round() as i32;
        b.extend_from_slice(&m.to_le_bytes());
    }
    for c in 0..dim {
        let o = (f64::from(ln.beta[c]) / s_y * 2f64.powi(shift)).round() as i64;
        b.extend_from_slice(&o.to_le_bytes());
    }
    w.push(SectionKind::LayerNorm, layer, b)?;
    Ok((s_y, zp))
}

/// Import → fold → calibrate → lower, for an MLP-Mixer: the int8 blob.
pub fn quantize<I: AsRef<[u8]> + Sync>(
    m: &Mixer,
    calib: &[I],
    opts: &crate::Options,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<u8>> {
    if calib.is_empty() {
        bail!("int8 quantisation needs calibration images (--calib DIR)");
    }
    let f = fold(m, &opts.mean, &opts.std)?;
    let s = calibrate(&f, calib, progress);
    lower(&f, &s, &opts.labels)
}
