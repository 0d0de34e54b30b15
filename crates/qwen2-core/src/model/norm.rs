//! RMSNorm as HF computes it: mean of squares and normalisation in the norm dtype (f32 in every
//! named plan), then cast to the output dtype and multiplied by the weight.

use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use super::fused::FusedKernels;

use crate::error::Result;
use crate::weights::Checkpoint;

/// Root-mean-square normalisation.
pub struct RmsNorm<B: Backend> {
    /// Per-channel gain, `[hidden]`, in the plan's weight dtype.
    pub weight: Tensor<B, 1>,
    /// Added to the mean of squares.
    pub eps: f64,
    /// A fused RMSNorm, installed by the backend.
    pub kernels: Option<Arc<dyn FusedKernels<B>>>,
}

impl<B: Backend> RmsNorm<B> {
    /// Loads `{prefix}.weight`.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        hidden: usize,
        eps: f64,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Result<Self> {
        let w = ckpt.load(&format!("{prefix}.weight"), &[hidden], dtype, false)?;
        Ok(RmsNorm {
            weight: Tensor::from_data(w, (device, dtype.into())),
            eps,
            kernels: None,
        })
    }

    /// `x`: `[seq, hidden]` (any dtype) → `[seq, hidden]` in `out` dtype; statistics in `norm`.
    pub fn forward(&self, x: Tensor<B, 2>, norm: FloatDType, out: FloatDType) -> Tensor<B, 2> {
        let fused = self
            .kernels
            .as_ref()
            .and_then(|k| k.rms_norm(&x, &self.weight, self.eps, norm, out));
        if let Some(y) = fused {
            return y;
        }
        let x = x.cast(norm);
        let mean_sq = x.clone().square().mean_dim(1);
        let normed = x * (mean_sq + self.eps).sqrt().recip();
        normed.cast(out) * self.weight.clone().cast(out).unsqueeze_dim(0)
    }
}
