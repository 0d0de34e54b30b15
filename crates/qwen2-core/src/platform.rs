//! The one trait every backend crate implements.

use std::path::Path;
use std::sync::Arc;

use crate::error::Result;
use crate::model::{FusedKernels, MatmulKernel, Qwen2Model};
use crate::precision::{Hardware, PolicyTable, PrecisionPlan};

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

    /// Loads a model and installs [`Platform::matmul_kernel`] and [`Platform::fused_kernels`]; `progress(done, total)` is called
    /// after each loading step.
    fn load_model(
        dir: impl AsRef<Path>,
        plan: PrecisionPlan,
        device: &burn::tensor::Device<Self::B>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Qwen2Model<Self::B>> {
        let mut model = Qwen2Model::load_with_progress(dir, plan, device, progress)?;
        if let Some(kernel) = Self::matmul_kernel() {
            model.set_matmul_kernel(kernel);
        }
        if let Some(kernels) = Self::fused_kernels() {
            model.set_fused_kernels(kernels);
        }
        Ok(model)
    }
}
