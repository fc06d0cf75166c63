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

use anyhow::{bail, Context, Result};
use convmixer_edge::Activation;

use crate::onnx::Graph;

mod forward;
mod import;
mod lower;
mod mlp;
mod shapes;

pub use forward::{forward, forward_pixels, forward_pixels_with, forward_with, Seen};
pub use lower::{calibrate, calibrate_with, input_means, lower, Stats};

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
    /// Blob layer of the final LayerNorm (`docs/blob-format.md`: the embedding, six layers
    /// per block, then the final LayerNorm and the head).
    pub fn final_norm(&self) -> usize {
        1 + 6 * self.blocks.len()
    }
    /// Blob layers, the head included.
    pub fn layers(&self) -> usize {
        self.final_norm() + 2
    }
    /// How reports name blob layer `l`.
    pub fn layer_name(&self, l: usize) -> String {
        match l {
            0 => "embed".into(),
            l if l == self.final_norm() => "final norm".into(),
            l if l > self.final_norm() => "head".into(),
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
    import::Walker::new(&g).mixer(opset)
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

/// Import → fold → calibrate (with `opts.calibration`, [`calibrate_with`]; and, with
/// `opts.bias_correction`, [`input_means`]) → lower, for an MLP-Mixer: the int8 blob. f16
/// layers are not there yet for the MLP-Mixer: asking for them is an error.
pub fn quantize<I: AsRef<[u8]> + Sync>(
    m: &Mixer,
    calib: &[I],
    opts: &crate::Options,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<u8>> {
    if calib.is_empty() {
        bail!("int8 quantisation needs calibration images (--calib DIR)");
    }
    if !opts.f16_layers.is_empty() {
        bail!("f16 layers (mixed precision) are for ConvMixer models only");
    }
    let f = fold(m, &opts.mean, &opts.std)?;
    let method = opts.calibration.unwrap_or(crate::calibrate::Method::MinMax);
    let s = calibrate_with(&f, calib, method, progress);
    let means = opts.bias_correction.then(|| input_means(&f, calib));
    lower(&f, &s, means.as_deref(), &opts.labels)
}
