//! Shape computations at import: the integer vectors the TorchScript exporter computes
//! from `Shape` (Shape/Gather/Div/Unsqueeze/Concat chains) for its Reshape targets,
//! evaluated on the known input shape, and the Reshapes themselves.

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::NodeProto;

use super::import::Walker;
use crate::onnx::{attr_int, describe};

/// A symbolic batch size in evaluated shape vectors (`Shape` of an activation).
const BATCH: i64 = i64::MIN / 4;
/// Largest element count of a shape vector evaluated at import.
const MAX_SHAPE_LEN: usize = 16;

impl Walker<'_, '_> {
    /// The integer vector `name` evaluates to: a constant, or a small shape computation
    /// (`Shape` of a walked activation gives [`BATCH`] for the batch).
    pub(super) fn ints(&self, name: &str, depth: usize) -> Result<Vec<i64>> {
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
    pub(super) fn reshape(&self, n: &NodeProto, input: &[usize]) -> Result<Vec<usize>> {
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
}
