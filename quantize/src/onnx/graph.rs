//! The ONNX graph as both importers read it ([`crate::onnx`]'s ConvMixer, [`crate::mixer`]'s
//! MLP-Mixer): the constants decoded (initializers, `Constant` nodes, `Identity` aliases),
//! each tensor's consumers, the input, node attributes, and the activations both networks
//! use (`Relu`, `Gelu`, or an element-wise subgraph recognised as GELU by evaluating it).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use convmixer_edge::Activation;
use rayon::prelude::*;
use tract_onnx::pb::{self, tensor_proto::DataType, NodeProto, TensorProto};

use super::load;

pub(crate) struct Graph<'g> {
    pub(crate) nodes: &'g [NodeProto],
    pub(crate) consts: HashMap<&'g str, Tensor>,
    consumers: HashMap<&'g str, Vec<usize>>,
    pub(crate) outputs: Vec<&'g str>,
    pub(crate) input: &'g pb::ValueInfoProto,
}

/// A constant tensor: its values as f32 (every weight a PyTorch export writes is f32, and
/// the fold reads them as such), and, for an integer tensor (pads, axes, shapes), also its
/// exact integers.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub(crate) dims: Vec<usize>,
    pub(crate) data: Vec<f32>,
    /// The exact values of an integer tensor (`None` for float tensors).
    pub(crate) ints: Option<Vec<i64>>,
}

impl Tensor {
    /// The values as integers: an integer tensor's own, or a float tensor's where every
    /// value is a whole number (`None` otherwise).
    pub(crate) fn int_values(&self) -> Option<Vec<i64>> {
        match &self.ints {
            Some(v) => Some(v.clone()),
            None => (self.data.iter().all(|v| v.fract() == 0.0))
                .then(|| self.data.iter().map(|&v| v as i64).collect()),
        }
    }

    /// A tensor of integers.
    fn of_ints(dims: Vec<usize>, ints: Vec<i64>) -> Tensor {
        Tensor {
            dims,
            data: ints.iter().map(|&v| v as f32).collect(),
            ints: Some(ints),
        }
    }
}

pub(crate) fn decode_tensor(t: &TensorProto) -> Result<Tensor> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| anyhow!("tensor '{}' has a negative dimension", t.name))
        })
        .collect::<Result<_>>()?;
    let n = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| anyhow!("tensor '{}' has shape {dims:?}: too many elements", t.name))?;
    if let Some(location) = load::external_location(t) {
        let what = if t.name.is_empty() {
            "its value".to_string()
        } else {
            format!("tensor '{}'", t.name)
        };
        bail!("{what} is stored in the external data file '{location}', which needs the model's folder: read the model from its path");
    }
    let raw = &t.raw_data;
    let ty = DataType::try_from(t.data_type);
    let width = match ty {
        Ok(DataType::Double | DataType::Int64) => 8,
        _ => 4,
    };
    if !raw.is_empty() && Some(raw.len()) != n.checked_mul(width) {
        bail!(
            "tensor '{}' has {} bytes of data for shape {dims:?} ({width} bytes a value)",
            t.name,
            raw.len()
        );
    }
    let words = |w: usize| raw.chunks_exact(w);
    let floats = |data: Vec<f32>| Tensor {
        dims: dims.clone(),
        data,
        ints: None,
    };
    let tensor = match ty {
        Ok(DataType::Float) if !raw.is_empty() => floats(
            words(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Ok(DataType::Float) => floats(t.float_data.clone()),
        // Doubles become f32, as every weight is used.
        Ok(DataType::Double) if !raw.is_empty() => floats(
            words(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
        ),
        Ok(DataType::Double) => floats(t.double_data.iter().map(|&v| v as f32).collect()),
        Ok(DataType::Int64) if !raw.is_empty() => Tensor::of_ints(
            dims.clone(),
            words(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        ),
        Ok(DataType::Int64) => Tensor::of_ints(dims.clone(), t.int64_data.clone()),
        Ok(DataType::Int32) if !raw.is_empty() => Tensor::of_ints(
            dims.clone(),
            words(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        ),
        Ok(DataType::Int32) => Tensor::of_ints(
            dims.clone(),
            t.int32_data.iter().map(|&v| v.into()).collect(),
        ),
        _ => bail!(
            "tensor '{}' has data type {} (expected float, double or integer)",
            t.name,
            t.data_type
        ),
    };
    if tensor.data.len() != n {
        bail!(
            "tensor '{}' holds {} values for shape {:?}",
            t.name,
            tensor.data.len(),
            dims
        );
    }
    Ok(tensor)
}

pub(crate) fn attr<'n>(node: &'n NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

pub(crate) fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

pub(crate) fn attr_int(node: &NodeProto, name: &str) -> Option<i64> {
    attr(node, name).map(|a| a.i)
}

pub(crate) fn describe(node: &NodeProto) -> String {
    let name = if node.name.is_empty() {
        node.output.first().map_or("?", |s| s.as_str())
    } else {
        &node.name
    };
    format!("node '{}' ({})", name, node.op_type)
}

/// The one node of `users` (the readers of tensor `t`), or an error naming what was
/// expected after `t`.
pub(crate) fn only_user<'g>(
    users: Vec<&'g NodeProto>,
    t: &str,
    expected: &str,
) -> Result<&'g NodeProto> {
    match users.as_slice() {
        [n] => Ok(n),
        [] => bail!("tensor '{t}' is not used, expected {expected} after it"),
        many => bail!(
            "tensor '{t}' feeds {} nodes ({}), expected only {expected}",
            many.len(),
            many.iter()
                .map(|n| describe(n))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

const ELEMENTWISE: [&str; 8] = ["Div", "Mul", "Add", "Sub", "Erf", "Tanh", "Pow", "Sqrt"];

impl<'g> Graph<'g> {
    pub(crate) fn new(g: &'g pb::GraphProto) -> Result<Self> {
        // Decoded in parallel: the weights are most of a model file (one thread when
        // `host-tools --threads 1`).
        let decoded: Vec<Result<Tensor>> = g.initializer.par_iter().map(decode_tensor).collect();
        let mut consts = HashMap::new();
        for (t, v) in g.initializer.iter().zip(decoded) {
            consts.insert(t.name.as_str(), v?);
        }
        for n in &g.node {
            // Every node read below has an output: `output[0]` is then always in bounds.
            if n.output.is_empty() {
                bail!("{}: the node has no output", describe(n));
            }
            // The TorchScript exporter de-duplicates equal initializers by aliasing them
            // through `Identity` nodes (e.g. a default BN's running_var = another's weight).
            if n.op_type == "Identity" {
                if let (Some(i), Some(o)) = (n.input.first(), n.output.first()) {
                    if let Some(t) = consts.get(i.as_str()).cloned() {
                        consts.insert(o.as_str(), t);
                    }
                }
                continue;
            }
            if n.op_type == "Constant" {
                let a = attr(n, "value").and_then(|a| a.t.as_ref());
                let t = match (a, attr(n, "value_float"), attr(n, "value_ints")) {
                    (Some(t), _, _) => decode_tensor(t).with_context(|| describe(n))?,
                    (None, Some(f), _) => Tensor {
                        dims: vec![],
                        data: vec![f.f],
                        ints: None,
                    },
                    (None, None, Some(i)) => Tensor::of_ints(vec![i.ints.len()], i.ints.clone()),
                    _ => bail!(
                        "{}: unsupported Constant (expected a tensor, float or ints value)",
                        describe(n)
                    ),
                };
                if let Some(o) = n.output.first() {
                    consts.insert(o.as_str(), t);
                }
            }
        }
        let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for inp in &n.input {
                if !inp.is_empty() {
                    consumers.entry(inp.as_str()).or_default().push(i);
                }
            }
        }
        let inputs: Vec<_> = g
            .input
            .iter()
            .filter(|i| !consts.contains_key(i.name.as_str()))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => bail!("the graph has no input"),
            many => bail!(
                "the graph has {} inputs (expected one image input)",
                many.len()
            ),
        };
        Ok(Graph {
            nodes: &g.node,
            consts,
            consumers,
            outputs: g.output.iter().map(|o| o.name.as_str()).collect(),
            input,
        })
    }

    pub(crate) fn constant(&self, name: &str, what: &str) -> Result<&Tensor> {
        self.consts
            .get(name)
            .ok_or_else(|| anyhow!("{what} '{name}' is not a constant initializer"))
    }

    /// The nodes consuming tensor `t`, ignoring `Constant`s.
    pub(crate) fn users(&self, t: &str) -> Vec<&'g NodeProto> {
        self.consumers
            .get(t)
            .map_or(vec![], |v| v.iter().map(|&i| &self.nodes[i]).collect())
    }

    /// The single node consuming `t`.
    pub(crate) fn single_user(&self, t: &str, expected: &str) -> Result<&'g NodeProto> {
        only_user(self.users(t), t, expected)
    }

    pub(crate) fn input_shape(&self) -> Result<(usize, usize, usize)> {
        let shape = self
            .input
            .r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .and_then(|v| match v {
                pb::type_proto::Value::TensorType(tt) => tt.shape.as_ref(),
                #[allow(unreachable_patterns)]
                _ => None,
            })
            .ok_or_else(|| anyhow!("input '{}' has no tensor shape", self.input.name))?;
        let dims: Vec<Option<usize>> = shape
            .dim
            .iter()
            .map(|d| match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                    Some(v as usize)
                }
                _ => None,
            })
            .collect();
        match dims.as_slice() {
            [_, Some(c), Some(h), Some(w)] => Ok((*c, *h, *w)),
            _ => bail!(
                "input '{}' must be [batch, C, H, W] with fixed C, H, W (found rank {})",
                self.input.name,
                dims.len()
            ),
        }
    }

    /// The nodes reading the values of `t`: its users except `Shape` (which only feed
    /// shape computations, such as a Reshape's target).
    pub(crate) fn data_users(&self, t: &str) -> Vec<&'g NodeProto> {
        let mut u = self.users(t);
        u.retain(|n| n.op_type != "Shape");
        u
    }

    /// The single node reading the values of `t` ([`Graph::data_users`]).
    pub(crate) fn single_data_user(&self, t: &str, expected: &str) -> Result<&'g NodeProto> {
        only_user(self.data_users(t), t, expected)
    }

    /// The classifier of both networks after the pooled features `x` (`dim` of them):
    /// `[Flatten | Reshape | Squeeze]* → Gemm | MatMul [+ Add]`, ending at the graph's
    /// output. Its weights `[classes][dim]` (Gemm's `alpha` and `beta` applied) and bias.
    pub(crate) fn classifier(&self, x: &'g str, dim: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut cur = x;
        let mut n = self.single_data_user(cur, "the classifier")?;
        while matches!(n.op_type.as_str(), "Flatten" | "Reshape" | "Squeeze") {
            cur = n.output[0].as_str();
            n = self.single_data_user(cur, "the classifier")?;
        }
        let (w, b, out) = match n.op_type.as_str() {
            "Gemm" => {
                if attr_int(n, "transA").unwrap_or(0) != 0 {
                    bail!("{}: transA is not supported", describe(n));
                }
                let alpha = attr(n, "alpha").map_or(1.0, |a| a.f);
                let beta = attr(n, "beta").map_or(1.0, |a| a.f);
                let trans_b = attr_int(n, "transB").unwrap_or(0) != 0;
                let wt = self.constant(n.input.get(1).map_or("", |s| s), "Gemm weight")?;
                let w = linear_weight(wt, trans_b, dim, n)?;
                let classes = w.len() / dim;
                let b = match n.input.get(2).filter(|s| !s.is_empty()) {
                    Some(name) => self.constant(name, "Gemm bias")?.data.clone(),
                    None => vec![0.0; classes],
                };
                if b.len() != classes {
                    bail!(
                        "{}: bias has {} values for {classes} classes",
                        describe(n),
                        b.len()
                    );
                }
                let w: Vec<f32> = w
                    .iter()
                    .map(|&v| (f64::from(v) * f64::from(alpha)) as f32)
                    .collect();
                let b: Vec<f32> = b
                    .iter()
                    .map(|&v| (f64::from(v) * f64::from(beta)) as f32)
                    .collect();
                (w, b, n.output[0].as_str())
            }
            "MatMul" => {
                let wt = self.constant(n.input.get(1).map_or("", |s| s), "MatMul weight")?;
                let w = linear_weight(wt, false, dim, n)?;
                let classes = w.len() / dim;
                let mut out = n.output[0].as_str();
                let mut b = vec![0.0f32; classes];
                if let [add] = self.users(out).as_slice() {
                    if add.op_type == "Add" {
                        let other = add
                            .input
                            .iter()
                            .find(|i| i.as_str() != out)
                            .map_or("", |s| s.as_str());
                        let t = self.constant(other, "classifier bias")?;
                        if t.data.len() != classes {
                            bail!(
                                "{}: bias has {} values for {classes} classes",
                                describe(add),
                                t.data.len()
                            );
                        }
                        b = t.data.clone();
                        out = add.output[0].as_str();
                    }
                }
                (w, b, out)
            }
            _ => bail!("{}: expected the classifier (Gemm or MatMul)", describe(n)),
        };
        if !self.outputs.contains(&out) {
            bail!("tensor '{out}' after the classifier is not the graph output (expected nothing after the head)");
        }
        check_finite("classifier weight", &w)?;
        check_finite("classifier bias", &b)?;
        Ok((w, b))
    }

    /// The first node of what follows a conv: its single consumer, or — for the
    /// TorchScript GELU, where `x` feeds both `Div` and `Mul` — the first of several
    /// element-wise consumers (`activation` then checks the whole subgraph).
    pub(crate) fn activation_start(&self, t: &str) -> Result<&'g NodeProto> {
        let users = self.users(t);
        if users.len() > 1
            && users
                .iter()
                .all(|u| ELEMENTWISE.contains(&u.op_type.as_str()))
        {
            return Ok(users[0]);
        }
        self.single_user(t, "an activation")
    }

    /// Recognises the activation starting at tensor `x` whose first consumer is `n`.
    pub(crate) fn activation(&self, x: &'g str, n: &'g NodeProto) -> Result<(Activation, &'g str)> {
        match n.op_type.as_str() {
            "Relu" => return Ok((Activation::Relu, n.output[0].as_str())),
            "Gelu" => {
                let approx =
                    attr(n, "approximate").map(|a| String::from_utf8_lossy(&a.s).to_string());
                let act = match approx.as_deref() {
                    None | Some("none") | Some("") => Activation::Gelu,
                    Some("tanh") => Activation::GeluTanh,
                    Some(o) => bail!("{}: unknown GELU approximation '{o}'", describe(n)),
                };
                return Ok((act, n.output[0].as_str()));
            }
            op if ELEMENTWISE.contains(&op) => {}
            _ => bail!(
                "{}: expected an activation (Relu, Gelu, or the Erf form of GELU)",
                describe(n)
            ),
        }
        // Grow the element-wise subgraph fed only by `x` and constants.
        let mut inside: Vec<&'g str> = vec![x];
        let mut members: Vec<&'g NodeProto> = Vec::new();
        loop {
            let mut grew = false;
            for t in inside.clone() {
                for u in self.users(t) {
                    if members.iter().any(|m| std::ptr::eq(*m, u))
                        || !ELEMENTWISE.contains(&u.op_type.as_str())
                    {
                        continue;
                    }
                    let fed = u.input.iter().all(|i| {
                        inside.contains(&i.as_str()) || self.consts.contains_key(i.as_str())
                    });
                    if fed && members.len() < 16 {
                        members.push(u);
                        inside.push(u.output[0].as_str());
                        grew = true;
                    }
                }
            }
            if !grew {
                break;
            }
        }
        // The subgraph's output: the member output used outside it (or a graph output).
        let exits: Vec<&'g str> = members
            .iter()
            .map(|m| m.output[0].as_str())
            .filter(|o| {
                self.users(o)
                    .iter()
                    .any(|u| !members.iter().any(|m| std::ptr::eq(*m, *u)))
                    || self.outputs.contains(o)
            })
            .collect();
        let out = match exits.as_slice() {
            [o] => *o,
            _ => bail!(
                "{}: the element-wise nodes after '{x}' do not form one activation",
                describe(n)
            ),
        };
        let eval = |v: f64| -> Result<f64> {
            let mut vals: HashMap<&str, f64> = HashMap::from([(x, v)]);
            // Members were collected in a topological order.
            for m in &members {
                let arg = |i: usize| -> Result<f64> {
                    let name = m.input.get(i).map_or("", |s| s.as_str());
                    if let Some(v) = vals.get(name) {
                        return Ok(*v);
                    }
                    match self.consts.get(name) {
                        Some(t) if t.data.len() == 1 => Ok(f64::from(t.data[0])),
                        _ => bail!("{}: operand '{name}' is not a scalar", describe(m)),
                    }
                };
                let r = match m.op_type.as_str() {
                    "Div" => arg(0)? / arg(1)?,
                    "Mul" => arg(0)? * arg(1)?,
                    "Add" => arg(0)? + arg(1)?,
                    "Sub" => arg(0)? - arg(1)?,
                    "Pow" => arg(0)?.powf(arg(1)?),
                    "Sqrt" => arg(0)?.sqrt(),
                    "Tanh" => arg(0)?.tanh(),
                    _ => libm::erf(arg(0)?),
                };
                vals.insert(m.output[0].as_str(), r);
            }
            Ok(vals.get(out).copied().unwrap_or(f64::NAN))
        };
        let gelu = |v: f64| 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2));
        let gelu_tanh = |v: f64| {
            0.5 * v
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        };
        let mut is_erf = true;
        let mut is_tanh = true;
        for i in -40..=40 {
            let v = f64::from(i) * 0.15;
            let got = eval(v)?;
            is_erf &= (got - gelu(v)).abs() <= 1e-6 * (1.0 + v.abs());
            is_tanh &= (got - gelu_tanh(v)).abs() <= 1e-6 * (1.0 + v.abs());
        }
        match (is_erf, is_tanh) {
            (true, _) => Ok((Activation::Gelu, out)),
            (_, true) => Ok((Activation::GeluTanh, out)),
            _ => {
                // Name an op of the subgraph that we do not take, if there is one (e.g. a
                // Sigmoid put in place of the Erf): the likeliest cause.
                let foreign = inside.iter().flat_map(|t| self.users(t)).find(|u| {
                    !ELEMENTWISE.contains(&u.op_type.as_str())
                        && !["Conv", "BatchNormalization"].contains(&u.op_type.as_str())
                });
                match foreign {
                    Some(f) => bail!(
                        "{}: unsupported op in the activation after '{x}' (ConvMixer takes Relu, Gelu or the Erf form of GELU)",
                        describe(f)
                    ),
                    None => bail!(
                        "{}: the element-wise subgraph after '{x}' is not GELU (neither the erf form nor the tanh approximation)",
                        describe(n)
                    ),
                }
            }
        }
    }
}

/// Classifier weights as `[classes][dim]`.
pub(crate) fn linear_weight(
    t: &Tensor,
    trans_b: bool,
    dim: usize,
    n: &NodeProto,
) -> Result<Vec<f32>> {
    let [r, c] = t.dims.as_slice() else {
        bail!(
            "{}: weight has rank {} (expected 2)",
            describe(n),
            t.dims.len()
        );
    };
    // Gemm transB=1 and torch Linear store [classes][dim]; MatMul stores [dim][classes].
    let (classes, rows_are_classes) = if trans_b { (*r, true) } else { (*c, false) };
    let inner = if trans_b { *c } else { *r };
    if classes == 0 {
        bail!("{}: weight {:?} has no classes", describe(n), t.dims);
    }
    if inner != dim {
        bail!(
            "{}: weight {:?} does not take {dim} features",
            describe(n),
            t.dims
        );
    }
    if rows_are_classes {
        return Ok(t.data.clone());
    }
    let mut w = vec![0.0; classes * dim];
    for d in 0..dim {
        for k in 0..classes {
            w[k * dim + d] = t.data[d * classes + k];
        }
    }
    Ok(w)
}

pub(crate) fn check_finite(what: &str, v: &[f32]) -> Result<()> {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{what} element {i} is {} (expected finite values)", v[i]);
    }
    Ok(())
}
