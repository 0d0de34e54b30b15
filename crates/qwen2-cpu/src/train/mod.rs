//! Fine-tuning on the CPU's own kernels: what [`crate::Cpu`] hands a training run on
//! `Autodiff<Flex>` (see `qwen2_core::train_kernels::TrainingKernels`): the projections and the
//! attention as autodiff ops of their own, and a one-pass AdamW.

mod attention;
mod elementwise;
mod linear;
mod norm;
mod optimizer;
mod quantized;
mod strided;

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::prelude::Tensor;
use burn::tensor::FloatDType;
use burn_flex::Flex;
use qwen2_core::model::{Batch, FusedKernels};
use qwen2_core::precision::PrecisionPlan;
use qwen2_core::train_kernels::TrainingKernels;

pub use linear::TrainMatmul;
pub use optimizer::CpuOptimizer;

type Ad = Autodiff<Flex>;

/// The values behind an autodiff tensor, as a plain burn-flex tensor (shares the storage; no
/// node on the tape).
fn inner<const D: usize>(t: &Tensor<Ad, D>) -> Tensor<Flex, D> {
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(
        t.clone().into_primitive().tensor().primitive,
    ))
}

/// The CPU's training kernels.
pub fn kernels() -> TrainingKernels<Ad> {
    TrainingKernels {
        matmul: Some(Arc::new(TrainMatmul::default())),
        fused: Some(Arc::new(TrainFused)),
        optimizer: Some(Arc::new(CpuOptimizer)),
        quantized_base: true,
    }
}

/// The fused ops of a training run: RMSNorm, the cache-free attention, SwiGLU and the loss are
/// ops of their own; the decode paths (a KV cache, one sequence at a time) stay on the generic graph
/// under autodiff.
pub struct TrainFused;

impl FusedKernels<Ad> for TrainFused {
    fn swiglu_supported(&self, dtype: FloatDType) -> bool {
        elementwise::swiglu_supported(dtype)
    }

    fn swiglu(&self, gate: &Tensor<Ad, 2>, up: &Tensor<Ad, 2>) -> Tensor<Ad, 2> {
        elementwise::swiglu(gate, up)
    }

    fn rms_norm(
        &self,
        x: &Tensor<Ad, 2>,
        weight: &Tensor<Ad, 1>,
        eps: f64,
        norm: FloatDType,
        out: FloatDType,
    ) -> Option<Tensor<Ad, 2>> {
        norm::rms_norm(x, weight, eps, norm, out)
    }

    fn cross_entropy_sum(&self, logits: &Tensor<Ad, 2>, targets: &[u32]) -> Option<Tensor<Ad, 1>> {
        elementwise::cross_entropy_sum(logits, targets)
    }

    fn attention_rows(
        &self,
        q: &Tensor<Ad, 2>,
        k: &Tensor<Ad, 2>,
        v: &Tensor<Ad, 2>,
        rows: &Batch,
        heads: usize,
        start: usize,
        cos: &Tensor<Ad, 2>,
        sin: &Tensor<Ad, 2>,
        plan: &PrecisionPlan,
    ) -> Option<Tensor<Ad, 2>> {
        attention::attention_rows(q, k, v, rows, heads, start, cos, sin, plan)
    }

    fn attention_supported(&self, _plan: &PrecisionPlan) -> bool {
        false
    }

    fn rope(
        &self,
        _x: &Tensor<Ad, 2>,
        _heads: usize,
        _cos: &Tensor<Ad, 2>,
        _sin: &Tensor<Ad, 2>,
        _start: usize,
    ) -> Tensor<Ad, 2> {
        unreachable!("attention_supported is false: the graph rotates cached rows itself")
    }

    fn attention(
        &self,
        _q: &Tensor<Ad, 2>,
        _keys: &Tensor<Ad, 3>,
        _values: &Tensor<Ad, 3>,
        _start: usize,
        _plan: &PrecisionPlan,
    ) -> Tensor<Ad, 2> {
        unreachable!("attention_supported is false: the graph attends to the cache itself")
    }
}
