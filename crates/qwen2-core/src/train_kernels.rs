//! A backend's own kernels for fine-tuning: the optimizer's one-pass update and gradient
//! statistics. The trainer's generic code computes the same values from burn ops, one pass and
//! one fresh tensor per op; a kernel does each in one pass over memory it updates in place.

use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::backend::AutodiffBackend;

use crate::model::{FusedKernels, MatmulKernel};

/// The per-step constants of one AdamW update, as `f32` (the dtype burn's scalar ops round
/// them to), in the order the update applies them to each value:
///
/// ```text
/// g ← g · unscale            (loss scaling, when on)
/// g ← g · clip               (global-norm clipping, when it bites)
/// p ← p · decay              (decoupled weight decay, when on)
/// m ← m + (g − m) · one_minus_beta1
/// v ← v · beta2 + (g · g) · one_minus_beta2
/// p ← p − (m / (√v / bias2_sqrt + eps)) · step_size
/// ```
///
/// That is `torch.optim.AdamW`'s single-tensor path, rounded as the generic trainer rounds it,
/// so a kernel gives the same bits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `1 / loss_scale`, when the loss was scaled.
    pub unscale: Option<f32>,
    /// The clipping factor, when the global norm exceeded the bound.
    pub clip: Option<f32>,
    /// `1 − lr · weight_decay`, when weight decay is on.
    pub decay: Option<f32>,
    /// `1 − β₁`.
    pub one_minus_beta1: f32,
    /// `β₂`.
    pub beta2: f32,
    /// `1 − β₂`.
    pub one_minus_beta2: f32,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f32,
    /// `ε`.
    pub eps: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f32,
}

/// One-pass optimizer work on a backend's tensors.
pub trait OptimizerKernel<B: Backend>: Send + Sync {
    /// Whether every value of `grad` (`[numel]`, f32) times `unscale` is finite, and the sum of
    /// their squares (f32 accumulation, any order), read in one pass; `None` to leave it to the
    /// generic code.
    fn finite_and_sum_squares(
        &self,
        grad: &Tensor<B, 1>,
        unscale: Option<f32>,
    ) -> Option<(bool, f32)>;

    /// One AdamW update of `param`, `m` and `v` (`[numel]` each, f32) in place with `grad`
    /// (`[numel]`, f32), as [`AdamWScalars`] writes it out; `false`, with nothing changed, to
    /// leave it to the generic code.
    fn adamw(
        &self,
        param: &mut Tensor<B, 1>,
        grad: &Tensor<B, 1>,
        m: &mut Tensor<B, 1>,
        v: &mut Tensor<B, 1>,
        scalars: &AdamWScalars,
    ) -> bool;
}

/// What a backend brings to a training run on its autodiff backend `B`: products and fused ops
/// whose backward passes are its own, and the optimizer's one-pass update. Each part is
/// optional; what is missing runs on burn's generic graph.
pub struct TrainingKernels<B: AutodiffBackend> {
    /// Projections (forward and backward).
    pub matmul: Option<Arc<dyn MatmulKernel<B>>>,
    /// RMSNorm, SwiGLU, RoPE and attention (forward and backward).
    pub fused: Option<Arc<dyn FusedKernels<B>>>,
    /// AdamW and the gradient statistics, on the inner backend's tensors.
    pub optimizer: Option<Arc<dyn OptimizerKernel<B::InnerBackend>>>,
    /// Whether `matmul`'s `matmul_quantized` passes gradients through quantized weights (LoRA
    /// on a quantized base needs it: the generic quantized product is a host computation the
    /// graph cannot differentiate).
    pub quantized_base: bool,
}

impl<B: AutodiffBackend> Default for TrainingKernels<B> {
    fn default() -> Self {
        TrainingKernels {
            matmul: None,
            fused: None,
            optimizer: None,
            quantized_base: false,
        }
    }
}
