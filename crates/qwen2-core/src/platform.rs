//! The one trait every backend crate implements.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::{FusedKernels, MatmulKernel, Qwen2Model, WeightQuantization};
use crate::precision::{Hardware, PolicyTable, PrecisionPlan};
use crate::train_kernels::TrainingKernels;
use burn::backend::Autodiff;

/// Device memory as a GPU backend's allocator reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceMemory {
    /// Bytes held by live tensors.
    pub bytes_in_use: u64,
    /// Bytes the allocator has reserved on the device (its pools do not shrink, so after a
    /// run this is the run's high-water mark).
    pub bytes_reserved: u64,
}

/// A compute backend qwen2-burn can run on (CPU, wgpu, CUDA, ...).
pub trait Platform {
    /// The burn backend.
    type B: burn::prelude::Backend;

    /// The `--backend` name.
    const NAME: &'static str;

    /// The devices this backend can run on, on this machine, best first. Empty when none.
    fn devices() -> Vec<burn::tensor::Device<Self::B>>;

    /// What the device is and what it can compute.
    fn probe(device: &burn::tensor::Device<Self::B>) -> Hardware;

    /// The rules that resolve `--precision auto` on this backend.
    fn policy_table() -> &'static PolicyTable;

    /// Device memory now, where the backend reports it (GPU backends); `None` on the CPU,
    /// whose memory is the process's resident set.
    fn device_memory(_device: &burn::tensor::Device<Self::B>) -> Option<DeviceMemory> {
        None
    }

    /// This backend's faster matrix products, if it has any (see [`MatmulKernel`]).
    fn matmul_kernel() -> Option<Arc<dyn MatmulKernel<Self::B>>> {
        None
    }

    /// This backend's fused SwiGLU, RoPE and attention, if it has them (see [`FusedKernels`]).
    fn fused_kernels() -> Option<Arc<dyn FusedKernels<Self::B>>> {
        None
    }

    /// This backend's kernels for fine-tuning on `Autodiff<Self::B>` (see [`TrainingKernels`]);
    /// none by default: training runs burn's generic graph and the generic optimizer.
    fn training_kernels() -> TrainingKernels<Autodiff<Self::B>> {
        TrainingKernels::default()
    }

    /// Whether projection weights can stay quantized in memory on this backend (its
    /// [`MatmulKernel::matmul_quantized`] multiplies ggml blocks directly). Elsewhere a GGUF
    /// model is dequantized at load into the plan's dtype and `--quantize` is refused.
    fn multiplies_quantized() -> bool {
        false
    }

    /// Loads a model (every weight dense) and installs [`Platform::matmul_kernel`] and
    /// [`Platform::fused_kernels`]; `progress(done, total)` is called after each loading step.
    fn load_model(
        dir: impl AsRef<Path>,
        plan: PrecisionPlan,
        device: &burn::tensor::Device<Self::B>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Qwen2Model<Self::B>> {
        Self::load_model_quantized(dir, plan, WeightQuantization::Dense, device, progress)
    }

    /// [`Platform::load_model`] with projections held as `quant` says. Without quantized
    /// kernels ([`Platform::multiplies_quantized`]), [`WeightQuantization::Stored`] loads
    /// dense and [`WeightQuantization::To`] is an error.
    fn load_model_quantized(
        dir: impl AsRef<Path>,
        plan: PrecisionPlan,
        quant: WeightQuantization,
        device: &burn::tensor::Device<Self::B>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Qwen2Model<Self::B>> {
        let quant = match quant {
            WeightQuantization::Stored if !Self::multiplies_quantized() => {
                WeightQuantization::Dense
            }
            WeightQuantization::To(t) if !Self::multiplies_quantized() => {
                return Err(Error::Invalid(format!(
                    "--quantize {t}: backend `{}` has no quantized kernels yet (they are later \
                     work); use --backend cpu, or load a GGUF file, which is dequantized at load \
                     on this backend",
                    Self::NAME
                )))
            }
            q => q,
        };
        let mut model = Qwen2Model::load_quantized(dir, plan, quant, device, progress)?;
        if let Some(kernel) = Self::matmul_kernel() {
            model.set_matmul_kernel(kernel);
        }
        if let Some(kernels) = Self::fused_kernels() {
            model.set_fused_kernels(kernels);
        }
        Ok(model)
    }
}
