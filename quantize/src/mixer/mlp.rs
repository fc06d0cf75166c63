//! The residual MLPs of the MLP-Mixer importer: `x + MLP(LN(x))`, with the LayerNorm as
//! the LayerNormalization op or its decomposed form, and each linear layer as a MatMul
//! [+ Add] on the last axis or a Conv1d with kernel 1, found between Transposes.

use anyhow::{anyhow, bail, Result};
use convmixer_edge::Activation;
use tract_onnx::pb::NodeProto;

use super::import::{linear, Walker};
use super::{Linear, Ln, Mlp};
use crate::onnx::{attr, attr_int, attr_ints, check_finite, describe, linear_weight};

/// One step of an MLP branch, in order.
#[derive(Debug)]
enum Step {
    Transpose,
    /// A linear layer, and whether it mixes tokens.
    Linear(Linear, bool),
    Act(Activation),
}

impl<'g> Walker<'_, 'g> {
    /// Bias input `i` of `n` (`len` values; zeros when absent).
    pub(super) fn bias(&self, n: &NodeProto, i: usize, len: usize) -> Result<Vec<f32>> {
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
    pub(super) fn matmul(&self, mm: &'g NodeProto, x: &str, k: usize) -> Result<(Linear, &'g str)> {
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
    pub(super) fn conv1d(&self, n: &'g NodeProto, a: usize) -> Result<(Linear, &'g str)> {
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
    pub(super) fn residual_mlp(
        &self,
        x: &'g str,
        tokens: usize,
        dim: usize,
    ) -> Result<(Mlp, bool, &'g str)> {
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
    pub(super) fn layer_norm(
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
    pub(super) fn reduce_axes(&self, n: &NodeProto) -> Result<Vec<i64>> {
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
    pub(super) fn decomposed_ln(
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
}
