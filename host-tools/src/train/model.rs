//! The trainable ConvMixer (burn modules) and its conversion to the importer's
//! [`Imported`], from which [`write_onnx`](convmixer_quantize::onnx_export::write_onnx)
//! writes the ONNX file `host-tools quantize` reads.
//!
//! The module tree is the paper's reference code: patch embedding `Conv(k=p, s=p) → act →
//! BN`, then `depth` × `(x + BN(act(dwconv(x)))) → BN(act(conv1x1(·)))`, global average pool,
//! linear head. BatchNorm stays a separate layer here and in the ONNX file (the quantiser folds
//! it; `docs/batchnorm-folding.md`).

use anyhow::{bail, Result};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::Backend;
use burn::tensor::activation::{gelu, gelu_approximate, relu};
use burn::tensor::Tensor;
use convmixer_edge::Activation;
use convmixer_quantize::onnx::{BatchNorm as OnnxBn, ConvUnit, Imported};

/// The shape of a ConvMixer: input, mixer width and depth, kernels, classes, activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch {
    /// Input channels (1 gray, 3 RGB).
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Mixer width (channels).
    pub dim: usize,
    /// Number of mixer blocks.
    pub depth: usize,
    /// Depthwise kernel size (odd: 'same' padding is then symmetric, as PyTorch's).
    pub kernel: usize,
    /// Patch size (the embedding's kernel and stride).
    pub patch: usize,
    /// Number of classes.
    pub classes: usize,
    /// Activation after every convolution.
    pub act: Activation,
}

impl Arch {
    /// Checks the shape makes a model (and one the quantiser takes).
    pub fn check(&self) -> Result<()> {
        let Arch {
            in_c,
            in_h,
            in_w,
            dim,
            depth: _,
            kernel,
            patch,
            classes,
            act: _,
        } = *self;
        if dim == 0 || classes < 2 || in_c == 0 {
            bail!("--dim must be at least 1 and the data must have at least 2 classes");
        }
        if patch == 0 || in_h < patch || in_w < patch {
            bail!("--patch {patch} does not fit the {in_h}x{in_w} images");
        }
        if kernel == 0 || kernel % 2 == 0 {
            bail!("--kernel {kernel}: the depthwise kernel must be odd ('same' padding)");
        }
        Ok(())
    }

    /// Trainable parameters (BatchNorm's γ and β included, running statistics not).
    pub fn params(&self) -> usize {
        let (d, k, p) = (self.dim, self.kernel, self.patch);
        let unit = |w: usize| w + d + 2 * d; // weights + bias + γ, β
        unit(d * self.in_c * p * p)
            + self.depth * (unit(d * k * k) + unit(d * d))
            + self.classes * d
            + self.classes
    }
}

/// Conv → activation → BatchNorm.
#[derive(Module, Debug)]
pub struct Unit<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

/// One mixer block: residual depthwise unit, then pointwise unit.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    dw: Unit<B>,
    pw: Unit<B>,
}

/// A ConvMixer in burn.
#[derive(Module, Debug)]
pub struct ConvMixer<B: Backend> {
    embed: Unit<B>,
    blocks: Vec<Block<B>>,
    head: Linear<B>,
    #[module(skip)]
    act: Activation,
}

fn unit<B: Backend>(cfg: Conv2dConfig, dim: usize, device: &B::Device) -> Unit<B> {
    Unit {
        conv: cfg.init(device),
        bn: BatchNormConfig::new(dim).init(device),
    }
}

impl<B: Backend> ConvMixer<B> {
    /// A freshly initialised model (burn's default initialisers: Kaiming-uniform convs and
    /// linear as PyTorch's defaults, BN γ=1 β=0). Seed the backend first for a repeatable one.
    pub fn new(a: &Arch, device: &B::Device) -> Self {
        let (d, k, p) = (a.dim, a.kernel, a.patch);
        let embed = unit(
            Conv2dConfig::new([a.in_c, d], [p, p]).with_stride([p, p]),
            d,
            device,
        );
        let blocks = (0..a.depth)
            .map(|_| Block {
                dw: unit(
                    Conv2dConfig::new([d, d], [k, k])
                        .with_groups(d)
                        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2)),
                    d,
                    device,
                ),
                pw: unit(Conv2dConfig::new([d, d], [1, 1]), d, device),
            })
            .collect();
        ConvMixer {
            embed,
            blocks,
            head: LinearConfig::new(d, a.classes).init(device),
            act: a.act,
        }
    }

    fn unit(&self, u: &Unit<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let y = u.conv.forward(x);
        let y = match self.act {
            Activation::Gelu => gelu(y),
            Activation::GeluTanh => gelu_approximate(y),
            Activation::Relu => relu(y),
        };
        u.bn.forward(y)
    }

    /// Logits `[batch, classes]` for normalised NCHW input.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.unit(&self.embed, x);
        for b in &self.blocks {
            x = x.clone() + self.unit(&b.dw, x);
            x = self.unit(&b.pw, x);
        }
        let [n, c, _, _] = x.dims();
        let pooled = x.mean_dims(&[2, 3]).reshape([n, c]);
        self.head.forward(pooled)
    }

    /// The model as the ONNX importer would return it (weights copied out, BN kept), so
    /// that `write_onnx` can write the file `host-tools quantize` reads.
    pub fn to_imported(&self, a: &Arch) -> Result<Imported> {
        let conv_unit = |name: &str, u: &Unit<B>, pads: usize, stride: usize| -> Result<ConvUnit> {
            let w = u.conv.weight.val();
            let dims = w.dims();
            let b = match &u.conv.bias {
                Some(b) => floats(b.val())?,
                None => vec![0.0; dims[0]],
            };
            Ok(ConvUnit {
                name: name.to_string(),
                w: floats(w)?,
                shape: dims,
                b,
                pads: [pads; 4],
                stride,
                bn_pre: None,
                act: self.act,
                bn_post: Some(OnnxBn {
                    gamma: floats(u.bn.gamma.val())?,
                    beta: floats(u.bn.beta.val())?,
                    mean: floats(u.bn.running_mean.value())?,
                    var: floats(u.bn.running_var.value())?,
                    eps: u.bn.epsilon as f32,
                }),
            })
        };
        let embed = conv_unit("embed", &self.embed, 0, a.patch)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            blocks.push((
                conv_unit(&format!("block{i}.dw"), &b.dw, a.kernel / 2, 1)?,
                conv_unit(&format!("block{i}.pw"), &b.pw, 0, 1)?,
            ));
        }
        // burn's Linear stores [d_in, d_out]; the importer's head is [classes][dim].
        let hw = self.head.weight.val();
        let [din, dout] = hw.dims();
        let wt = floats(hw)?;
        let mut head_w = vec![0.0; din * dout];
        for i in 0..din {
            for o in 0..dout {
                head_w[o * din + i] = wt[i * dout + o];
            }
        }
        let head_b = match &self.head.bias {
            Some(b) => floats(b.val())?,
            None => vec![0.0; dout],
        };
        Ok(Imported {
            in_c: a.in_c,
            in_h: a.in_h,
            in_w: a.in_w,
            embed,
            blocks,
            head_w,
            head_b,
            opset: 0,
        })
    }
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read a weight tensor: {e:?}"))
}
