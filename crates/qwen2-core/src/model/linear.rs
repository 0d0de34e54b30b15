//! A projection `y = x W + b` with the weight stored `[in, out]` (transposed from HF's `[out, in]`).

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use crate::error::Result;
use crate::weights::Checkpoint;

/// A linear projection.
pub struct Linear<B: Backend> {
    /// Weight, `[in, out]`, in the plan's weight dtype.
    pub weight: Tensor<B, 2>,
    /// Bias, `[out]`, if the HF module has one.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) of an HF `nn.Linear(inp, out)`.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        inp: usize,
        out: usize,
        bias: bool,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Result<Self> {
        let w = ckpt.load(&format!("{prefix}.weight"), &[out, inp], dtype, true)?;
        let weight = Tensor::from_data(w, (device, dtype.into()));
        let bias = if bias {
            let b = ckpt.load(&format!("{prefix}.bias"), &[out], dtype, false)?;
            Some(Tensor::from_data(b, (device, dtype.into())))
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// `x`: `[seq, in]` in `compute` dtype → `[seq, out]` in `compute` dtype.
    pub fn forward(&self, x: Tensor<B, 2>, compute: FloatDType) -> Tensor<B, 2> {
        let y = x.cast(compute).matmul(self.weight.clone().cast(compute));
        match &self.bias {
            Some(b) => y + b.clone().cast(compute).unsqueeze_dim(0),
            None => y,
        }
    }
}
