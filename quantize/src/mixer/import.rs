//! The MLP-Mixer importer: a [`Walker`] follows the graph from the input — the patch
//! embedding (timm's Conv stem, or lucidrains' Rearrange + Linear), the residual MLPs
//! ([`super::mlp`]), the final LayerNorm and the head — tracking the shape of the tensor it
//! follows, so that Reshapes computed from `Shape` ([`super::shapes`]) can be evaluated.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::NodeProto;

use super::{Block, Linear, Mixer, Mlp};
use crate::onnx::{attr, attr_int, attr_ints, check_finite, describe, Graph};

/// Walks the graph from the input, tracking the shape `[1, a, b]` (batch 1) of the
/// activation it follows.
pub(super) struct Walker<'a, 'g> {
    pub(super) g: &'a Graph<'g>,
    pub(super) producer: HashMap<&'g str, &'g NodeProto>,
    /// Shapes (batch as 1) of the activations walked so far.
    pub(super) shapes: std::cell::RefCell<HashMap<String, Vec<usize>>>,
}

impl<'a, 'g> Walker<'a, 'g> {
    pub(super) fn new(g: &'a Graph<'g>) -> Self {
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
    pub(super) fn data_users(&self, t: &str) -> Vec<&'g NodeProto> {
        self.g.data_users(t)
    }

    /// The single node reading the values of `t`.
    pub(super) fn next(&self, t: &str, expected: &str) -> Result<&'g NodeProto> {
        self.g.single_data_user(t, expected)
    }

    pub(super) fn set_shape(&self, t: &str, s: &[usize]) {
        self.shapes.borrow_mut().insert(t.to_string(), s.to_vec());
    }

    pub(super) fn perm(n: &NodeProto) -> Vec<i64> {
        attr_ints(n, "perm").unwrap_or_default()
    }

    pub(super) fn mixer(&self, opset: i64) -> Result<Mixer> {
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
    pub(super) fn embedding(
        &self,
        c: usize,
        h: usize,
        w: usize,
    ) -> Result<(Linear, usize, &'g str)> {
        let input = self.g.input.name.as_str();
        let n = self.next(input, "the patch embedding")?;
        match n.op_type.as_str() {
            "Conv" => self.conv_stem(n, c, h, w),
            "Reshape" => self.rearrange_stem(n, c, h, w),
            _ => bail!("{}: expected the patch embedding (a stride-p Conv, or Reshape → Transpose → Reshape → MatMul)", describe(n)),
        }
    }

    pub(super) fn conv_stem(
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
    pub(super) fn rearrange_stem(
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

    pub(super) fn check_grid(&self, h: usize, w: usize, p: usize) -> Result<()> {
        if h % p != 0 || w % p != 0 {
            bail!("input {h}x{w} is not a whole number of {p}x{p} patches");
        }
        Ok(())
    }

    /// `[Transpose] → ReduceMean(tokens) → [Squeeze | Reshape | Flatten] → Gemm | MatMul [+ Add]`
    /// from the final LayerNorm's output `y` (`[1, T, D]`) to the graph output.
    pub(super) fn head(&self, y: &'g str, tokens: usize, dim: usize) -> Result<Linear> {
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
        let (w, b) = self.g.classifier(&n.output[0], dim)?;
        let classes = b.len();
        linear("the classifier".into(), w, b, dim, classes)
    }
}

pub(super) fn linear(
    name: String,
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
) -> Result<Linear> {
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
