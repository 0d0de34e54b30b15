//! A projection `y = x Wᵀ + b` with the weight kept in HF's `[out, in]` layout, optionally with a
//! LoRA adapter (`+ scale · (x Aᵀ) Bᵀ`).

use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use qwen2_quant::QuantMatrix;

use super::lora::LoraAdapter;
use super::quantized::{host_quantized_product, ProjectionWeight, WeightQuantization};
use crate::error::Result;
use crate::weights::Checkpoint;

/// A backend's own matrix product for the shapes burn's generic matmul serves slowly (on the
/// CPU: the one-row products of every decode step, which are bound by memory bandwidth, and
/// prefill's many-row products). It must compute what the plan says: inputs rounded to
/// `compute`, f32 accumulation, the result in `compute`; a bias is added as the graph adds it
/// (to the product rounded to `compute`, the sum rounded again).
pub trait MatmulKernel<B: Backend>: Send + Sync {
    /// `x` `[m, in]` × `weight` `[in, out]` (the weight dtype; a transposed view of the
    /// `[out, in]` memory) + `bias` `[out]` (in `compute`) → `[m, out]` in `compute`, or `None`
    /// to leave this case to burn.
    fn matmul(
        &self,
        x: &Tensor<B, 2>,
        weight: &Tensor<B, 2>,
        bias: Option<&Tensor<B, 1>>,
        compute: FloatDType,
    ) -> Option<Tensor<B, 2>>;

    /// `x` `[m, in]` × the quantized `weight`ᵀ (`[out, in]` in ggml blocks) + `bias` `[out]` →
    /// `[m, out]` in `compute`, or `None` to leave it to [`host_quantized_product`] (same
    /// arithmetic, through a copy of `x` on the host).
    fn matmul_quantized(
        &self,
        _x: &Tensor<B, 2>,
        _weight: &QuantMatrix,
        _bias: Option<&Tensor<B, 1>>,
        _compute: FloatDType,
    ) -> Option<Tensor<B, 2>> {
        None
    }

    /// The MLP's `silu(x gateᵀ) * (x upᵀ)` in one pass: `x` `[m, hidden]` in `compute`, `gate`
    /// and `up` `[intermediate, hidden]` → `[m, intermediate]` in `compute`, rounded as the
    /// graph rounds it (each product to `compute`, then as [`super::FusedKernels::swiglu`]);
    /// `None` to leave it to the two projections and the SwiGLU. The graph asks only when no
    /// observer wants the gate or up outputs and neither projection has a bias or an adapter.
    fn matmul_swiglu(
        &self,
        _x: &Tensor<B, 2>,
        _gate: &ProjectionWeight<B>,
        _up: &ProjectionWeight<B>,
        _compute: FloatDType,
    ) -> Option<Tensor<B, 2>> {
        None
    }
}

/// A linear projection.
pub struct Linear<B: Backend> {
    /// Weight, `[out, in]` (HF's layout, so gradients and saved files need no transpose), in
    /// the plan's weight dtype, or kept quantized (inference on backends with quantized kernels).
    pub weight: ProjectionWeight<B>,
    /// Bias, `[out]`, if the HF module has one.
    pub bias: Option<Tensor<B, 1>>,
    /// A faster product for some shapes, installed by the backend.
    pub kernel: Option<Arc<dyn MatmulKernel<B>>>,
    /// A LoRA adapter added to the output, if one is attached.
    pub lora: Option<LoraAdapter<B>>,
}

impl<B: Backend> Linear<B> {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`) of an HF `nn.Linear(inp, out)`,
    /// the weight held as `quant` says (biases are always dense).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        inp: usize,
        out: usize,
        bias: bool,
        dtype: FloatDType,
        quant: WeightQuantization,
        device: &B::Device,
    ) -> Result<Self> {
        let weight = ProjectionWeight::load(
            ckpt,
            &format!("{prefix}.weight"),
            [out, inp],
            dtype,
            quant,
            prefix == "lm_head",
            device,
        )?;
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
            lora: None,
        })
    }

    /// `[in, out]` features of the projection.
    pub fn shape(&self) -> [usize; 2] {
        let [out, inp] = self.weight.dims();
        [inp, out]
    }

    /// The dense weight, `[out, in]`; `None` when the weight is kept quantized.
    pub fn dense_weight(&self) -> Option<&Tensor<B, 2>> {
        self.weight.dense()
    }

    /// `x`: `[rows, in]` in `compute` dtype → `[rows, out]` in `compute` dtype.
    pub fn forward(&self, x: Tensor<B, 2>, compute: FloatDType) -> Tensor<B, 2> {
        let x = x.cast(compute);
        let y = project_weight(
            &x,
            &self.weight,
            self.bias.as_ref(),
            self.kernel.as_ref(),
            compute,
        );
        match &self.lora {
            Some(lora) => y + lora.forward(x, compute),
            None => y,
        }
    }
}

/// `x` `[rows, in]` × `weight`ᵀ (`[out, in]`) + `bias` `[out]` → `[rows, out]` in `compute`:
/// through the kernel where it takes the case, else burn's matmul (a dense weight) or
/// [`host_quantized_product`], and the bias added in `compute`.
pub(crate) fn project_weight<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &ProjectionWeight<B>,
    bias: Option<&Tensor<B, 1>>,
    kernel: Option<&Arc<dyn MatmulKernel<B>>>,
    compute: FloatDType,
) -> Tensor<B, 2> {
    let fast = kernel.and_then(|k| match weight {
        ProjectionWeight::Dense(w) => k.matmul(x, &w.clone().transpose(), bias, compute),
        ProjectionWeight::Quantized(q) => k.matmul_quantized(x, q, bias, compute),
    });
    if let Some(y) = fast {
        return y;
    }
    let y = match weight {
        ProjectionWeight::Dense(w) => x.clone().matmul(w.clone().cast(compute).transpose()),
        ProjectionWeight::Quantized(q) => host_quantized_product(x, q, compute),
    };
    match bias {
        Some(b) => y + b.clone().cast(compute).unsqueeze_dim(0),
        None => y,
    }
}
