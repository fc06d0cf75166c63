//! The trainable ConvMixer (burn modules) and its conversion to the importer's
//! [`Imported`], from which [`write_onnx`](convmixer_quantize::onnx_export::write_onnx)
//! writes the ONNX file `host-tools quantize` reads.
//!
//! The module tree is the paper's reference code: patch embedding `Conv(k=p, s=p) → act →
//! BN`, then `depth` × `(x + BN(act(dwconv(x)))) → BN(act(conv1x1(·)))`, global average pool,
//! linear head. BatchNorm stays a separate layer here and in the ONNX file (the quantiser folds
//! it; `docs/batchnorm-folding.md`).

use anyhow::{bail, Result};
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::Backend;
use burn::tensor::activation::{gelu, gelu_approximate, relu};
use burn::tensor::Distribution;
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

/// The pointwise (1×1) convolution as a batched matrix product `W · x` over `[N, C, H·W]`.
/// burn 0.21's ndarray backend runs `Conv2d` as a direct loop nest: with it, training
/// ConvMixer-64/6 (patch 2) on MNIST ran at 15 images/s on 2 cores, with this matmul at 33.
/// (burn's Flex CPU backend was no faster: 24–26 images/s.) The same function and the same
/// initialisation as `Conv2d` (PyTorch's default).
#[derive(Module, Debug)]
pub struct Pointwise<B: Backend> {
    /// `[out, in]`, the ONNX Conv weight without its 1×1 tail.
    weight: Param<Tensor<B, 2>>,
    /// `[out]`.
    bias: Param<Tensor<B, 1>>,
    bn: BatchNorm<B>,
}

/// One mixer block: residual depthwise unit, then pointwise unit.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    dw: Unit<B>,
    pw: Pointwise<B>,
}

/// PyTorch's default initialisation of a convolution with `fan_in` inputs per output
/// (Kaiming-uniform with gain 1/√3, bias likewise): U(±1/√fan_in) for both.
fn uniform_init<B: Backend, const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let b = 1.0 / (fan_in as f64).sqrt();
    Param::from_tensor(Tensor::random(shape, Distribution::Uniform(-b, b), device))
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
                pw: Pointwise {
                    weight: uniform_init([d, d], d, device),
                    bias: uniform_init([d], d, device),
                    bn: BatchNormConfig::new(d).init(device),
                },
            })
            .collect();
        ConvMixer {
            embed,
            blocks,
            head: LinearConfig::new(d, a.classes).init(device),
            act: a.act,
        }
    }

    fn act(&self, y: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.act {
            Activation::Gelu => gelu(y),
            Activation::GeluTanh => gelu_approximate(y),
            Activation::Relu => relu(y),
        }
    }

    fn unit(&self, u: &Unit<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        u.bn.forward(self.act(u.conv.forward(x)))
    }

    fn pointwise(&self, p: &Pointwise<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let [o, _] = p.weight.dims();
        let y = p
            .weight
            .val()
            .unsqueeze::<3>()
            .matmul(x.reshape([n, c, h * w]))
            + p.bias.val().reshape([1, o, 1]);
        p.bn.forward(self.act(y.reshape([n, o, h, w])))
    }

    /// Logits `[batch, classes]` for normalised NCHW input.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let mut x = self.unit(&self.embed, x);
        for b in &self.blocks {
            x = x.clone() + self.unit(&b.dw, x);
            x = self.pointwise(&b.pw, x);
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
                bn_post: Some(bn(&u.bn)?),
            })
        };
        let embed = conv_unit("embed", &self.embed, 0, a.patch)?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let [o, c] = b.pw.weight.dims();
            let pw = ConvUnit {
                name: format!("block{i}.pw"),
                w: floats(b.pw.weight.val())?,
                shape: [o, c, 1, 1],
                b: floats(b.pw.bias.val())?,
                pads: [0; 4],
                stride: 1,
                bn_pre: None,
                act: self.act,
                bn_post: Some(bn(&b.pw.bn)?),
            };
            let dw = conv_unit(&format!("block{i}.dw"), &b.dw, a.kernel / 2, 1)?;
            blocks.push((dw, pw));
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

fn bn<B: Backend>(b: &BatchNorm<B>) -> Result<OnnxBn> {
    Ok(OnnxBn {
        gamma: floats(b.gamma.val())?,
        beta: floats(b.beta.val())?,
        mean: floats(b.running_mean.value())?,
        var: floats(b.running_var.value())?,
        eps: b.epsilon as f32,
    })
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read a weight tensor: {e:?}"))
}
