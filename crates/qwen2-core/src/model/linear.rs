//! A projection `y = x W + b` with the weight stored `[in, out]` (transposed from HF's `[out, in]`).

use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use crate::error::Result;
use crate::weights::Checkpoint;

/// A backend's own matrix product for the shapes burn's generic matmul serves slowly (on the
/// CPU: the one-row products of every decode step, which are bound by memory bandwidth).
/// It must compute what the plan says: inputs rounded to `compute`, f32 accumulation, the
/// result in `compute`.
pub trait MatmulKernel<B: Backend>: Send + Sync {
    /// `x` `[m, in]` × `weight` `[in, out]` (the weight dtype; possibly a transposed view) →
    /// `[m, out]` in `compute`, or `None` to leave this case to burn's matmul.
    fn matmul(
        &self,
        x: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
        compute: FloatDType,
    ) -> Option<Tensor<B, 2>>;
}

/// A linear projection.
pub struct Linear<B: Backend> {
    /// Weight, `[in, out]` (a transposed view of HF's `[out, in]` memory), in the plan's
    /// weight dtype.
    pub weight: Tensor<B, 2>,
    /// Bias, `[out]`, if the HF module has one.
    pub bias: Option<Tensor<B, 1>>,
    /// A faster product for some shapes, installed by the backend.
    pub kernel: Option<Arc<dyn MatmulKernel<B>>>,
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
        // Kept in HF's [out, in] memory order and used through an [in, out] view: one-row
        // products then stream each output's weights contiguously.
        let w = ckpt.load(&format!("{prefix}.weight"), &[out, inp], dtype, false)?;
        let weight = Tensor::<B, 2>::from_data(w, (device, dtype.into())).transpose();
        let bias = if bias {
            let b = ckpt.load(&format!("{prefix}.bias"), &[out], dtype, false)?;
            Some(Tensor::from_data(b, (device, dtype.into())))
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            kernel: None,
        })
    }

    /// `x`: `[seq, in]` in `compute` dtype → `[seq, out]` in `compute` dtype.
    pub fn forward(&self, x: Tensor<B, 2>, compute: FloatDType) -> Tensor<B, 2> {
        let x = x.cast(compute);
        let fast = self
            .kernel
            .as_ref()
            .and_then(|k| k.matmul(&x, &self.weight, compute));
        let y = match fast {
            Some(y) => y,
            None => x.matmul(self.weight.clone().cast(compute)),
        };
        match &self.bias {
            Some(b) => y + b.clone().cast(compute).unsqueeze_dim(0),
            None => y,
        }
    }
}
