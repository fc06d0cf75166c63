//! The independent fp32 reference: tract running the original ONNX file.

use anyhow::{anyhow, Context, Result};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// A runnable fp32 tract plan for one `[1, C, H, W]` image.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    shape: [usize; 4],
}

impl TractModel {
    /// Loads `path` (with its external data, if any: [`crate::onnx::load`]) with the batch
    /// dimension fixed to 1.
    pub fn load(path: &std::path::Path, c: usize, h: usize, w: usize) -> Result<Self> {
        let proto = crate::onnx::load(path)?;
        Self::from_proto(proto, c, h, w).with_context(|| format!("{}", path.display()))
    }

    /// As [`TractModel::load`], from the bytes of an ONNX file (weights inside it).
    pub fn from_bytes(bytes: &[u8], c: usize, h: usize, w: usize) -> Result<Self> {
        Self::from_proto(crate::onnx::parse_model(bytes)?, c, h, w)
    }

    /// As [`TractModel::load`], from a parsed model (external data read in).
    pub fn from_proto(mut proto: pb::ModelProto, c: usize, h: usize, w: usize) -> Result<Self> {
        // The dynamo exporter annotates every intermediate tensor with the symbolic batch
        // dimension, which tract then refuses to unify with the fixed batch of 1 we ask
        // for. Those annotations carry nothing tract cannot infer: drop them.
        if let Some(g) = proto.graph.as_mut() {
            g.value_info.clear();
            for o in &mut g.output {
                o.r#type = None;
            }
        }
        let plan = tract_onnx::onnx()
            .model_for_proto_model(&proto)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, c, h, w]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| anyhow!("tract cannot run the model: {e:#}"))?;
        Ok(TractModel {
            plan,
            shape: [1, c, h, w],
        })
    }

    /// Logits for one NCHW f32 image.
    pub fn run(&self, nchw: &[f32]) -> Result<Vec<f32>> {
        let input = Tensor::from_shape(&self.shape, nchw).context("input shape")?;
        let out = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| anyhow!("tract run failed: {e:#}"))?;
        let v = out[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(v.iter().copied().collect())
    }

    /// Logits for raw HWC `u8` pixels normalised as `(p/255 − mean_c)/std_c`.
    pub fn run_pixels(&self, hwc: &[u8], mean: &[f32], std: &[f32]) -> Result<Vec<f32>> {
        self.run(&normalise(hwc, self.shape[1], mean, std))
    }
}

/// HWC `u8` → NCHW f32 `(p/255 − mean_c)/std_c` (mean/std: one value per channel, or one
/// for all; empty means 0 and 1).
pub fn normalise(hwc: &[u8], c: usize, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let pick = |v: &[f32], i: usize, d: f32| {
        if v.is_empty() {
            d
        } else {
            v[i.min(v.len() - 1)]
        }
    };
    let hw = hwc.len() / c;
    let mut out = vec![0f32; hwc.len()];
    for i in 0..hw {
        for ch in 0..c {
            out[ch * hw + i] =
                (f32::from(hwc[i * c + ch]) / 255.0 - pick(mean, ch, 0.0)) / pick(std, ch, 1.0);
        }
    }
    out
}
